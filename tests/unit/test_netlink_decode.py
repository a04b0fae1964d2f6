"""The hand-made decoding of rtnetlink dumps (``netlink.attributes``, ``network._link_row`` and
its siblings) agrees with pyroute2's message classes, the reference decoder, on this host's own
links, addresses and routes (a dump needs no privilege), and on made-up messages for the corner
cases a host may not show (a point-to-point peer address, a table above 255, torn attributes)."""

from __future__ import annotations

import socket
import struct

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from pytest_minidock.runtime import network
from pytest_minidock.runtime.netlink import attr, attr_str, attr_u32, attributes, message, nested


def _decoded(cls: type, chunk: bytes) -> object:
    msg = cls(chunk)
    msg.decode()
    return msg


def _dump(body: bytes, mtype: int) -> list[bytes]:
    with network._Netlink.open() as nl:
        return nl.dump(body, mtype)


def test_links_decode_as_pyroute2_decodes_them() -> None:
    chunks = _dump(network._link(), network._RTM_GETLINK)
    assert chunks, "a host has at least lo"
    for chunk in chunks:
        ref = _decoded(ifinfmsg, chunk)
        assert network._link_row(chunk) == (
            ref["index"],  # type: ignore[index]
            ref.get_attr("IFLA_IFNAME"),  # type: ignore[attr-defined]
            ref.get_attr("IFLA_MTU"),  # type: ignore[attr-defined]
            ref.get_attr("IFLA_MASTER") or 0,  # type: ignore[attr-defined]
        )
    assert any(row[1] == "lo" for row in map(network._link_row, chunks))


def test_addresses_decode_as_pyroute2_decodes_them() -> None:
    query = network._IFADDR.pack(socket.AF_INET, 0, 0, 0, 0)
    chunks = _dump(query, network._RTM_GETADDR)
    assert chunks, "a host has at least 127.0.0.1"
    for chunk in chunks:
        ref = _decoded(ifaddrmsg, chunk)
        ip = ref.get_attr("IFA_ADDRESS") or ref.get_attr("IFA_LOCAL")  # type: ignore[attr-defined]
        assert network._addr_row(chunk) == (ref["index"], ip, ref["prefixlen"])  # type: ignore[index]
    assert ("127.0.0.1", 8) in [row[1:] for row in map(network._addr_row, chunks)]


def test_routes_decode_as_pyroute2_decodes_them() -> None:
    chunks = _dump(network._ROUTES, network._RTM_GETROUTE)
    assert chunks, "a host has at least its local routes"
    for chunk in chunks:
        ref = _decoded(rtmsg, chunk)
        assert network._route_row(chunk) == (
            ref.get_attr("RTA_DST") or "",  # type: ignore[attr-defined]
            ref["dst_len"],  # type: ignore[index]
            ref.get_attr("RTA_OIF") or 0,  # type: ignore[attr-defined]
            ref.get_attr("RTA_TABLE"),  # type: ignore[attr-defined]
        )


def test_made_up_messages_decode_as_pyroute2_decodes_them() -> None:
    # a point-to-point address: IFA_ADDRESS is the peer, IFA_LOCAL our own
    head = struct.pack("=BBBBi", socket.AF_INET, 32, 0, 0, 7)
    body = head + attr(2, socket.inet_aton("10.9.0.1")) + attr(1, socket.inet_aton("10.9.0.2"))
    chunk = message(network._RTM_NEWADDR, 0, 1, body)
    ref = _decoded(ifaddrmsg, chunk)
    assert network._addr_row(chunk) == (7, ref.get_attr("IFA_ADDRESS"), 32)  # type: ignore[attr-defined]
    assert network._addr_row(chunk)[1] == "10.9.0.2"
    # a route in table 1000 (the header says RT_TABLE_COMPAT, 252), via link 3
    head = network._RTMSG.pack(socket.AF_INET, 16, 0, 0, 252, 4, 0, 1, 0)
    body = head + attr(1, socket.inet_aton("10.8.0.0")) + attr_u32(4, 3) + attr_u32(15, 1000)
    chunk = message(network._RTM_NEWROUTE, 0, 1, body)
    ref = _decoded(rtmsg, chunk)
    assert network._route_row(chunk) == ("10.8.0.0", 16, 3, ref.get_attr("RTA_TABLE"))  # type: ignore[attr-defined]
    assert network._route_row(chunk)[3] == 1000
    # a link without a master or an MTU
    chunk = message(network._RTM_NEWLINK, 0, 1, network._link(9, attr_str(3, "mdtest0")))
    assert network._link_row(chunk) == (9, "mdtest0", 0, 0)


def test_attributes_clear_flags_keep_the_first_of_a_type_and_stop_at_a_torn_one() -> None:
    data = b"\0" * 4 + nested(5, attr_u32(1, 2)) + attr(6, b"a") + attr(6, b"b")
    found = attributes(data, 4)
    assert found[5] == attr_u32(1, 2)  # NLA_F_NESTED cleared from the type
    assert found[6] == b"a"
    torn = attr(7, b"abcd")[:-2]  # says 8 bytes, has 6
    assert attributes(attr(1, b"x") + torn, 0) == {1: b"x"}
    assert attributes(b"\x02\x00\x01\x00", 0) == {}  # a length below the header's own
