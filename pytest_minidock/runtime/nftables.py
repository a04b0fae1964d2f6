"""The nftables rules of minidock's networks, compiled to nf_tables netlink batches (and rendered
as the equivalent ``nft -f`` script, which is what people and tests read).

One table per root, ``ip minidock_<key>`` (see ``network``), nothing in anyone else's tables:

* base chains ``prerouting``/``output`` (nat, priority -100) jump to ``ports``, which DNATs new
  connections through the maps ``dnat_tcp``/``dnat_udp`` (key: host address . port) and
  ``dnat_tcp_any``/``dnat_udp_any`` (key: port, for ``0.0.0.0``, local destinations only);
* ``postrouting`` (nat, 100) masquerades what leaves a bridge for elsewhere, loopback clients of
  published ports and hairpin connections; ``forward`` (filter, 0) isolates the networks.

Each rule is built from small pieces that carry both their ``nft`` words and their register-level
expressions (as ``nft --debug=netlink`` shows them), so the script and the batch cannot drift. A
batch is one transaction: the kernel applies all of it or nothing. Publishing a port adds map
elements and unpublishing deletes them, by key: exact, and neither touches a rule.
"""

from __future__ import annotations

import _socket
import _thread
import ipaddress
import json
import os
import struct

from pytest_minidock._record import dataclass
from pytest_minidock.runtime.netlink import (
    NLM_F_APPEND,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    Socket,
    attr,
    attr_be32,
    attr_str,
    message,
    nested,
)

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Final

__all__ = ["Batch", "Bridge", "Dnat", "commit", "delete_table", "elements", "ruleset"]

_NETLINK_NETFILTER: Final = 12
_SUBSYS: Final = 10  # NFNL_SUBSYS_NFTABLES
_BATCH_BEGIN: Final = 0x10
_BATCH_END: Final = 0x11
_NEWTABLE, _DELTABLE, _NEWCHAIN, _NEWRULE, _DELRULE = 0, 2, 3, 6, 8
_NEWSET, _NEWSETELEM, _DELSETELEM = 9, 12, 14
_NFPROTO_IPV4: Final = 2
_LIST_ELEM: Final = 1
_ACCEPT, _DROP, _JUMP = 1, 0, -3
_REG_VERDICT, _REG_1, _REG32_01 = 0, 1, 9
_CONCAT: Final = 7 << 6 | 13  # ipv4_addr . inet_service
_INET_SERVICE: Final = 13
# what nft 1.0 stores in a map's user data (byte orders, ``typeof``), so that it lists the maps
# the way it would have written them
_UDATA_CONCAT: Final = bytes.fromhex(
    "000400000000010400000000030800040d0000000100040800040d0000000100060400000000"
)
_UDATA_PORT: Final = bytes.fromhex("000402000000010400000000040800040d0000000100060400000000")
_HOOKS: Final = {  # chain: (type, hook number, priority)
    "prerouting": ("nat", 0, -100),
    "output": ("nat", 3, -100),
    "postrouting": ("nat", 4, 100),
    "forward": ("filter", 2, 0),
}
_PROTO_NUMBERS: Final = {"tcp": 6, "udp": 17}
MAPS: Final = ("dnat_tcp", "dnat_tcp_any", "dnat_udp", "dnat_udp_any")


@dataclass(frozen=True, slots=True)
class Bridge:
    """A network's rules: its bridge, subnet and whether it is internal (no way out)."""

    name: str
    subnet: str
    internal: bool = False


@dataclass(frozen=True, slots=True)
class Dnat:
    """A published port: ``host_ip:host_port`` (``proto``) to ``ip:port`` (the container's)."""

    proto: str
    host_ip: str
    host_port: int
    ip: str
    port: int


@dataclass(frozen=True, slots=True)
class Batch:
    """One nf_tables transaction: ``lines`` (``nft -f`` words) and the message of each."""

    lines: tuple[str, ...]
    messages: tuple[tuple[int, int, bytes], ...]  # (NFT_MSG_*, flags, body)

    @property
    def script(self) -> str:
        return "".join(line + "\n" for line in self.lines)

    def encode(self, first_seq: int) -> tuple[bytes, list[int]]:
        """The netlink bytes (batch begin, messages, end) and the messages' sequence numbers."""
        head = struct.pack("=BBH", 0, 0, _socket.htons(_SUBSYS))
        out = [message(_BATCH_BEGIN, NLM_F_REQUEST, first_seq, head)]
        seqs = []
        for i, (kind, flags, body) in enumerate(self.messages, start=first_seq + 1):
            seqs.append(i)
            out.append(message(_SUBSYS << 8 | kind, NLM_F_REQUEST | 0x4 | flags, i, body))
        out.append(message(_BATCH_END, NLM_F_REQUEST, first_seq + len(self.messages) + 1, head))
        return b"".join(out), seqs


class _Builder:
    def __init__(self, table: str) -> None:
        self.table = table
        self.t = f"ip {table}"
        self.lines: list[str] = []
        self.messages: list[tuple[int, int, bytes]] = []

    def add(self, line: str, kind: int, flags: int, *attrs: bytes) -> None:
        self.lines.append(line)
        head = struct.pack("=BBH", _NFPROTO_IPV4, 0, 0)
        self.messages.append((kind, flags, head + b"".join(attrs)))

    def batch(self) -> Batch:
        return Batch(tuple(self.lines), tuple(self.messages))

    def table_add(self) -> None:
        name = attr_str(1, self.table)
        self.add(f"add table {self.t}", _NEWTABLE, NLM_F_CREATE, name, attr_be32(2, 0))

    def table_delete(self) -> None:
        self.add(f"delete table {self.t}", _DELTABLE, 0, attr_str(1, self.table))

    def chain(self, name: str) -> None:
        attrs = [attr_str(1, self.table), attr_str(3, name)]
        text = f"add chain {self.t} {name}"
        if name in _HOOKS:
            kind, hook, prio = _HOOKS[name]
            attrs += [
                nested(4, attr_be32(1, hook), attr_be32(2, prio)),
                attr_be32(5, _ACCEPT),
                attr_str(7, kind),
            ]
            text += f" {{ type {kind} hook {name} priority {prio}; policy accept; }}"
        self.add(text, _NEWCHAIN, NLM_F_CREATE, *attrs)

    def map(self, name: str) -> None:
        if name.endswith("_any"):
            key_type, key_len, udata, key = _INET_SERVICE, 2, _UDATA_PORT, "inet_service"
        else:
            key_type, key_len, udata, key = _CONCAT, 8, _UDATA_CONCAT, "ipv4_addr . inet_service"
        self.add(
            f"add map {self.t} {name} {{ type {key} : ipv4_addr . inet_service; }}",
            _NEWSET,
            NLM_F_CREATE,
            attr_str(1, self.table),
            attr_str(2, name),
            attr_be32(3, 0x8),  # NFT_SET_MAP
            attr_be32(4, key_type),
            attr_be32(5, key_len),
            attr_be32(6, _CONCAT),
            attr_be32(7, 8),
            attr_be32(10, MAPS.index(name) + 1),  # NFTA_SET_ID: required, unique in a batch
            attr(13, udata),
        )

    def flush_chain(self, name: str) -> None:
        self.add(
            f"flush chain {self.t} {name}", _DELRULE, 0, attr_str(1, self.table), attr_str(2, name)
        )

    def flush_map(self, name: str) -> None:
        self.add(
            f"flush map {self.t} {name}", _DELSETELEM, 0, attr_str(1, self.table), attr_str(2, name)
        )

    def rule(self, chain: str, *parts: _Part) -> None:
        text = " ".join(p.text for p in parts if p.text)
        exprs = b"".join(e for p in parts for e in p.exprs)
        self.add(
            f"add rule {self.t} {chain} {text}",
            _NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            attr_str(1, self.table),
            attr_str(2, chain),
            nested(4, exprs),
        )

    def elements(self, verb: str, ports: Sequence[Dnat]) -> None:
        groups: dict[str, list[tuple[str, bytes]]] = {}
        for d in sorted(ports, key=lambda d: (d.proto, d.host_ip, d.host_port)):
            any_ip = d.host_ip == "0.0.0.0"
            port = struct.pack(">H", d.host_port)
            if any_ip:
                text, key = f"{d.host_port}", port
            else:
                text, key = f"{d.host_ip} . {d.host_port}", _ip(d.host_ip) + port + b"\0\0"
            parts = [nested(1, attr(1, key))]  # NFTA_SET_ELEM_KEY: NFTA_DATA_VALUE
            if verb == "add":
                text += f" : {d.ip} . {d.port}"
                value = _ip(d.ip) + struct.pack(">H", d.port) + b"\0\0"
                parts.append(nested(2, attr(1, value)))  # NFTA_SET_ELEM_DATA
            name = f"dnat_{d.proto}_any" if any_ip else f"dnat_{d.proto}"
            groups.setdefault(name, []).append((text, nested(_LIST_ELEM, *parts)))
        for name, items in groups.items():
            self.add(
                f"{verb} element {self.t} {name} {{ {', '.join(t for t, _ in items)} }}",
                _NEWSETELEM if verb == "add" else _DELSETELEM,
                NLM_F_CREATE if verb == "add" else 0,
                attr_str(1, self.table),
                attr_str(2, name),
                nested(3, *(e for _, e in items)),
            )


# -- rule pieces: nft words and expressions --------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Part:
    text: str
    exprs: tuple[bytes, ...]


def _expr(name: str, *attrs: bytes) -> bytes:
    data = (nested(2, *attrs),) if attrs else ()
    return nested(_LIST_ELEM, attr_str(1, name), *data)


def _ip(text: str) -> bytes:
    return ipaddress.IPv4Address(text).packed


def _cmp(value: bytes, *, neq: bool = False, reg: int = _REG_1) -> bytes:
    return _expr("cmp", attr_be32(1, reg), attr_be32(2, 1 if neq else 0), nested(3, attr(1, value)))


def _meta(key: int, reg: int = _REG_1) -> bytes:
    return _expr("meta", attr_be32(2, key), attr_be32(1, reg))


def _payload(base: int, offset: int, length: int, reg: int = _REG_1) -> bytes:
    return _expr(
        "payload", attr_be32(1, reg), attr_be32(2, base), attr_be32(3, offset), attr_be32(4, length)
    )


def _bitwise(mask: bytes) -> bytes:
    return _expr(
        "bitwise",
        attr_be32(1, _REG_1),
        attr_be32(2, _REG_1),
        attr_be32(3, len(mask)),
        nested(4, attr(1, mask)),
        nested(5, attr(1, bytes(len(mask)))),
    )


def _verdict(code: int, chain: str = "") -> bytes:
    verdict = [attr_be32(1, code)]
    if chain:
        verdict.append(attr_str(2, chain))
    return _expr("immediate", attr_be32(1, _REG_VERDICT), nested(2, nested(2, *verdict)))


def ifname(direction: str, name: str, *, neq: bool = False, prefix: bool = False) -> _Part:
    """``iifname``/``oifname`` [``!=``] ``"name"`` (with ``prefix``: ``"name*"``)."""
    key = 6 if direction == "iifname" else 7  # NFT_META_IIFNAME, NFT_META_OIFNAME
    value = name.encode() if prefix else name.encode().ljust(16, b"\0")
    text = f"{direction} {'!= ' if neq else ''}{json.dumps(name + ('*' if prefix else ''))}"
    return _Part(text, (_meta(key), _cmp(value, neq=neq)))


def saddr(subnet: str) -> _Part:
    """``ip saddr SUBNET``, as nft compiles it: the prefix's bytes, or the masked address."""
    net = ipaddress.IPv4Network(subnet)
    if net.prefixlen == 0:
        return _Part(f"ip saddr {net}", ())
    size = net.prefixlen // 8 if net.prefixlen % 8 == 0 else 4
    exprs = [_payload(1, 12, size)]
    if net.prefixlen % 8:
        exprs.append(_bitwise(net.netmask.packed[:size]))
    exprs.append(_cmp(net.network_address.packed[:size]))
    return _Part(f"ip saddr {net}", tuple(exprs))


def _ct_bits(key: int, mask: int) -> tuple[bytes, ...]:
    load = _expr("ct", attr_be32(2, key), attr_be32(1, _REG_1))
    return (load, _bitwise(struct.pack("=I", mask)), _cmp(bytes(4), neq=True))


CT_DNAT: Final = _Part("ct status dnat", _ct_bits(2, 0x20))  # NFT_CT_STATUS, IPS_DST_NAT
CT_ESTABLISHED: Final = _Part("ct state established,related", _ct_bits(0, 0x06))
ACCEPT: Final = _Part("accept", (_verdict(_ACCEPT),))
DROP: Final = _Part("drop", (_verdict(_DROP),))
MASQUERADE: Final = _Part("masquerade", (_expr("masq"),))
_FIB_LOCAL: Final = (
    _expr("fib", attr_be32(3, 2), attr_be32(2, 3), attr_be32(1, _REG_1)),  # daddr, addrtype
    _cmp(struct.pack("=I", 2)),  # RTN_LOCAL
)


def jump(chain: str) -> _Part:
    return _Part(f"jump {chain}", (_verdict(_JUMP, chain),))


def dnat_map(proto: str, *, any_ip: bool) -> _Part:
    """``dnat ip to ip daddr . PROTO dport map @dnat_PROTO``, or for the ``_any`` map (local
    destinations only) ``fib daddr type local dnat ip to PROTO dport map @dnat_PROTO_any``."""
    l4 = (_meta(16), _cmp(bytes([_PROTO_NUMBERS[proto]])))  # meta l4proto PROTO
    dport = _payload(2, 2, 2, reg=_REG32_01 if not any_ip else _REG_1)
    name = f"dnat_{proto}_any" if any_ip else f"dnat_{proto}"
    lookup = _expr("lookup", attr_str(1, name), attr_be32(2, _REG_1), attr_be32(3, _REG_1))
    nat = _expr(
        "nat",
        attr_be32(1, 1),  # NFT_NAT_DNAT
        attr_be32(2, _NFPROTO_IPV4),
        attr_be32(3, _REG_1),  # address: the first 4 bytes of the map's value
        attr_be32(5, _REG32_01),  # port: the next
    )
    if any_ip:
        text = f"fib daddr type local dnat ip to {proto} dport map @{name}"
        return _Part(text, (*_FIB_LOCAL, *l4, dport, lookup, nat))
    text = f"dnat ip to ip daddr . {proto} dport map @{name}"
    return _Part(text, (*l4, _payload(1, 16, 4), dport, lookup, nat))


# -- batches ------------------------------------------------------------------------------------
def ruleset(table: str, bridges: Sequence[Bridge], ports: Sequence[Dnat]) -> Batch:
    """The transaction that makes ``table`` hold exactly the rules of ``bridges`` (in their
    order) and ``ports``; with neither, it deletes the table.

    Base chains and maps are added (a no-op when they exist), then flushed and refilled in the
    same transaction: no packet ever sees a half-made table, and hooks are not re-registered.
    """
    b = _Builder(table)
    b.table_add()
    if not bridges and not ports:
        b.table_delete()
        return b.batch()
    for chain in (*_HOOKS, "ports"):
        b.chain(chain)
    for m in MAPS:
        b.map(m)
    for chain in ("prerouting", "output", "postrouting", "forward", "ports"):
        b.flush_chain(chain)
    for m in ("dnat_tcp", "dnat_udp", "dnat_tcp_any", "dnat_udp_any"):
        b.flush_map(m)
    b.rule("prerouting", jump("ports"))
    b.rule("output", jump("ports"))
    # connections to published ports, from anywhere (another network's members included)
    b.rule("forward", CT_DNAT, ACCEPT)
    for proto in ("tcp", "udp"):
        b.rule("ports", dnat_map(proto, any_ip=False))
        b.rule("ports", dnat_map(proto, any_ip=True))
    for br in bridges:
        sub = br.subnet
        # replies to 127.0.0.1 clients of a published port must come back to the host
        b.rule("postrouting", ifname("oifname", br.name), saddr("127.0.0.0/8"), MASQUERADE)
        # a member reaching a published port of a peer on the same bridge (hairpin)
        b.rule("postrouting", ifname("oifname", br.name), saddr(sub), CT_DNAT, MASQUERADE)
        if br.internal:
            b.rule(
                "forward", ifname("iifname", br.name), ifname("oifname", br.name, neq=True), DROP
            )
            b.rule(
                "forward", ifname("oifname", br.name), ifname("iifname", br.name, neq=True), DROP
            )
        else:
            b.rule("postrouting", saddr(sub), ifname("oifname", br.name, neq=True), MASQUERADE)
            b.rule(
                "forward",
                ifname("iifname", br.name),
                ifname("oifname", "md-", prefix=True),
                ifname("oifname", br.name, neq=True),
                DROP,
            )
            b.rule("forward", ifname("iifname", br.name), ACCEPT)
            b.rule("forward", ifname("oifname", br.name), CT_ESTABLISHED, ACCEPT)
    b.elements("add", ports)
    return b.batch()


def elements(verb: str, table: str, ports: Sequence[Dnat]) -> Batch:
    """``add``/``delete element`` of the maps for ``ports`` (one message per map)."""
    b = _Builder(table)
    b.elements(verb, ports)
    return b.batch()


def delete_table(table: str) -> Batch:
    b = _Builder(table)
    b.table_add()
    b.table_delete()
    return b.batch()


# -- the socket ---------------------------------------------------------------------------------
_lock = _thread.allocate_lock()  # (threading's own Lock, without threading's import)
_sockets: list[Socket] = []


def commit(batch: Batch) -> None:
    """Apply ``batch`` in one transaction over this process's nf_tables socket (opened once, and
    again in a forked child); ``OSError`` naming the first refused line if the kernel refuses it."""
    if not batch.messages:
        return
    with _lock:
        if not _sockets or _sockets[0].pid != os.getpid():
            _sockets[:] = [Socket(_NETLINK_NETFILTER)]
        sock = _sockets[0]
        first = sock.seqs(len(batch.messages) + 2)
        data, seqs = batch.encode(first)
        errors = sock.transact(data, seqs, others=(first, first + len(seqs) + 1))
    if errors:
        seq, code = min(errors.items())
        index = seq - first - 1
        line = batch.lines[index] if 0 <= index < len(batch.lines) else "the batch"
        raise OSError(code, f"{os.strerror(code)}: {line}")


def close() -> None:
    """Close this process's socket (the next ``commit`` opens another)."""
    with _lock:
        for sock in _sockets:
            if sock.pid == os.getpid():
                sock.close()
        _sockets.clear()
