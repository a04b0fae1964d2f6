"""The nf_tables batches of ``runtime.nftables`` and the netlink framing of ``runtime.netlink``,
decoded again here (no kernel): one message per ``nft`` line, the bytes nft itself sends for map
elements, masks for prefixes that are not whole bytes."""

from __future__ import annotations

import socket
import struct

from pytest_minidock.runtime import netlink, nftables
from pytest_minidock.runtime.network import Network, PortMapping, bridge_name, render_ruleset

NESTED = 0x8000


def attrs(data: bytes) -> list[tuple[int, bytes]]:
    """The (type, payload) of each attribute in ``data``."""
    out = []
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        out.append((kind & ~NESTED, data[off + 4 : off + length]))
        off += (length + 3) & ~3
    return out


def attr_map(data: bytes) -> dict[int, bytes]:
    return dict(attrs(data))


def exprs(rule_body: bytes) -> list[tuple[str, dict[int, bytes]]]:
    """A NEWRULE body's expressions: (name, {attribute: payload})."""
    found = attr_map(rule_body[4:])[4]  # after nfgenmsg: NFTA_RULE_EXPRESSIONS
    out = []
    for _, elem in attrs(found):
        fields = attr_map(elem)
        name = fields[1].rstrip(b"\0").decode()
        out.append((name, attr_map(fields.get(2, b""))))
    return out


def be32(value: bytes) -> int:
    return int(struct.unpack(">i", value)[0])


DNATS = [
    nftables.Dnat("tcp", "127.0.0.1", 8080, "10.77.0.2", 80),
    nftables.Dnat("udp", "0.0.0.0", 5353, "10.77.0.2", 53),
]


def test_one_message_per_line_and_the_batch_is_framed() -> None:
    batch = nftables.ruleset("t", [nftables.Bridge("md-aaaaaaaaaaaa", "10.1.0.0/24")], DNATS)
    assert len(batch.lines) == len(batch.messages)
    assert batch.script.splitlines() == list(batch.lines)
    data, seqs = batch.encode(100)
    assert seqs == list(range(101, 101 + len(batch.messages)))
    chunks = list(netlink.chunks(data))
    assert [c[0] for c in (chunks[0], chunks[-1])] == [0x10, 0x11]  # batch begin, end
    assert chunks[0][2][16:20] == struct.pack("=BBH", 0, 0, socket.htons(10))  # nf_tables
    assert [c[1] for c in chunks] == list(range(100, 102 + len(batch.messages)))
    for (mtype, _, chunk), (kind, _, _) in zip(chunks[1:-1], batch.messages, strict=True):
        assert mtype == (10 << 8) | kind
        flags = struct.unpack_from("=H", chunk, 6)[0]
        assert flags & (netlink.NLM_F_REQUEST | netlink.NLM_F_ACK) == 5


def test_map_elements_are_the_bytes_nft_sends() -> None:
    # nft --debug=netlink: "element 0100007f 0000901f : 02004d0a 00005000" (little-endian words)
    add = nftables.elements("add", "t", DNATS)
    assert add.lines == (
        "add element ip t dnat_tcp { 127.0.0.1 . 8080 : 10.77.0.2 . 80 }",
        "add element ip t dnat_udp_any { 5353 : 10.77.0.2 . 53 }",
    )
    (kind, _, body), (_, _, any_body) = add.messages
    assert kind == 12  # NFT_MSG_NEWSETELEM
    fields = attr_map(body[4:])
    assert fields[1] == b"t\0"
    assert fields[2] == b"dnat_tcp\0"
    (_, elem), *_ = attrs(fields[3])
    elem_fields = attr_map(elem)
    assert attr_map(elem_fields[1])[1] == bytes.fromhex("7f0000011f900000")  # key
    assert attr_map(elem_fields[2])[1] == bytes.fromhex("0a4d000200500000")  # value
    (_, any_elem), *_ = attrs(attr_map(any_body[4:])[3])
    assert attr_map(attr_map(any_elem)[1])[1] == bytes.fromhex("14e9")  # a 2-byte key
    # deleting names the keys only: exactly those elements go
    delete = nftables.elements("delete", "t", DNATS[:1])
    assert delete.lines == ("delete element ip t dnat_tcp { 127.0.0.1 . 8080 }",)
    (kind, _, body), *_ = delete.messages
    assert kind == 14  # NFT_MSG_DELSETELEM
    (_, elem), *_ = attrs(attr_map(body[4:])[3])
    assert set(attr_map(elem)) == {1}


def test_maps_and_chains_carry_what_the_kernel_needs() -> None:
    batch = nftables.ruleset("t", [nftables.Bridge("md-a", "10.1.0.0/24")], [])
    sets = [attr_map(body[4:]) for kind, _, body in batch.messages if kind == 9]
    assert [s[2] for s in sets] == [f"{m}\0".encode() for m in nftables.MAPS]
    assert {be32(s[10]) for s in sets} == {1, 2, 3, 4}  # NFTA_SET_ID: required, unique
    assert all(be32(s[3]) == 8 for s in sets)  # NFT_SET_MAP
    chains = {
        attr_map(body[4:])[3]: attr_map(body[4:]) for kind, _, body in batch.messages if kind == 3
    }
    hook = attr_map(chains[b"prerouting\0"][4])
    assert (be32(hook[1]), be32(hook[2])) == (0, -100)
    assert chains[b"forward\0"][7] == b"filter\0"
    assert 4 not in chains[b"ports\0"]  # a regular chain: no hook


def test_a_dnat_rule_looks_up_the_map_and_rewrites_address_and_port() -> None:
    batch = nftables.ruleset("t", [nftables.Bridge("md-a", "10.1.0.0/24")], [])
    index = batch.lines.index("add rule ip t ports dnat ip to ip daddr . tcp dport map @dnat_tcp")
    names = [name for name, _ in exprs(batch.messages[index][2])]
    assert names == ["meta", "cmp", "payload", "payload", "lookup", "nat"]
    _, nat = exprs(batch.messages[index][2])[-1]
    assert (be32(nat[1]), be32(nat[3]), be32(nat[5])) == (1, 1, 9)  # dnat, reg 1, reg 9


def test_prefixes_are_matched_as_nft_compiles_them() -> None:
    whole = [name for name, _ in exprs(_rule_with_saddr("10.1.0.0/24"))]
    assert whole[:2] == ["payload", "cmp"]
    masked = exprs(_rule_with_saddr("10.1.16.0/20"))
    assert [name for name, _ in masked][:3] == ["payload", "bitwise", "cmp"]
    assert be32(masked[0][1][4]) == 4  # the whole address, masked
    assert attr_map(masked[1][1][4])[1] == bytes.fromhex("fffff000")


def _rule_with_saddr(subnet: str) -> bytes:
    batch = nftables.ruleset("t", [nftables.Bridge("md-a", subnet)], [])
    index = batch.lines.index(
        f'add rule ip t postrouting ip saddr {subnet} oifname != "md-a" masquerade'
    )
    return batch.messages[index][2]


def test_nothing_left_deletes_the_table() -> None:
    batch = nftables.ruleset("minidock_k", [], [])
    assert batch.lines == ("add table ip minidock_k", "delete table ip minidock_k")
    assert [kind for kind, _, _ in batch.messages] == [0, 2]
    assert nftables.delete_table("minidock_k") == batch


def test_render_ruleset_is_the_batchs_script() -> None:
    nid = "a" * 64
    net = Network(
        id=nid, name="a", bridge=bridge_name(nid), subnet="10.1.0.0/24", gateway="10.1.0.1"
    )
    ports = [(PortMapping("tcp", "127.0.0.1", 8080, 80), "10.1.0.2")]
    batch = nftables.ruleset(
        "t",
        [nftables.Bridge(net.bridge, net.subnet)],
        [nftables.Dnat("tcp", "127.0.0.1", 8080, "10.1.0.2", 80)],
    )
    assert render_ruleset("t", [net], ports) == batch.script


def test_netlink_attributes_are_padded() -> None:
    assert netlink.attr_str(3, "md-a") == struct.pack("=HH", 9, 3) + b"md-a\0\0\0\0"
    assert netlink.attr_be32(2, -100) == struct.pack("=HH", 8, 2) + bytes.fromhex("ffffff9c")
    assert netlink.nested(4, netlink.attr_u32(1, 1))[:4] == struct.pack("=HH", 12, 4 | NESTED)
    msg = netlink.message(16, 1, 7, b"abc")
    assert len(msg) == 20
    assert struct.unpack_from("=IHHII", msg) == (19, 16, 1, 7, 0)
