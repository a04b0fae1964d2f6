"""Container networks: bridges, veth pairs, address leases, /etc/hosts peers and the nftables rules
for outbound NAT and published ports. The only module that imports pyroute2 (lazily: ~100-300 ms).

On disk, under ``ROOT/networks/``: ``state.json`` holds every network of the root with its endpoints
(the address leases) and every published port; it is rewritten atomically (temp file + rename)
under the filelock ``lock`` by whichever process changes it, so xdist workers and the CLI never hand
out one address twice. Subnets are chosen under a second, machine-wide lock
(``/run/minidock/subnets.lock`` for root) because roots share the host's address space.

In the kernel, every object is named so that it can be found again after a crash:

* bridge ``md-<12 hex of the network ID>`` with the gateway address and ``route_localnet=1``;
* veth ``mdv<12 hex of H(container, network)>`` on the host, ``eth<N>`` in the container;
* nftables table ``ip minidock_<10 hex of H(root)>``: one table per root, nothing in anyone
  else's tables (docker's, iptables-nft's). Base chains ``prerouting``/``output`` (DNAT through
  the maps ``dnat_tcp``/``dnat_udp``, keyed by host address and port, and ``dnat_tcp_any``/
  ``dnat_udp_any`` for ``0.0.0.0``), ``postrouting`` (masquerade) and ``forward``.

Rules go through ``nft -f -`` (one atomic transaction per run) rather than pyroute2's nftables
module, which offers masquerade and address matches but no DNAT, fib or map lookups (they would be
assembled by hand from register-level expressions). The whole table is rendered from the state
(``render_ruleset``, a pure function) when networks come and go; publishing a port only adds map
elements. Measured here: an ``nft`` run that only adds costs ~9 ms, one that deletes ~20 ms (the
kernel waits for an RCU grace period when nft closes its socket), so ``publish`` never deletes.

Links and addresses are made by sending pyroute2's message classes over a plain netlink socket
(``_Netlink``): a request costs its encoding (0.05-1.4 ms; the nested veth message is the dearest)
and the kernel's work, where ``IPRoute``'s asyncio core adds ~1 ms to each. The container's side is
configured through a socket opened in its namespace by a short-lived thread that ``setns()``-es
there and back, so no process is forked and the calling thread never changes namespace. Its
``eth0`` gets no IPv6 address (as docker's IPv4-only networks), and host ends are in hairpin mode.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import ipaddress
import itertools
import json
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from pytest_minidock import _record
from pytest_minidock._record import dataclass, field, replace
from pytest_minidock.errors import (
    MinidockError,
    NetworkError,
    NetworkNotFound,
    PortInUse,
    PrivilegeError,
    UsageError,
)
from pytest_minidock.runtime.state import Owner, now_iso

if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

__all__ = [
    "DEFAULT_POOLS",
    "LINK_MTU",
    "PREDEFINED",
    "Attachment",
    "BridgeMissing",
    "Cleaned",
    "Endpoint",
    "Kernel",
    "LinuxKernel",
    "Network",
    "Networks",
    "PortMapping",
    "allocate_address",
    "bridge_name",
    "check_subnet",
    "choose_subnet",
    "mac_for",
    "render_hosts",
    "render_ruleset",
    "strip_managed",
    "veth_name",
]

DEFAULT_POOLS: Final = ("10.210.0.0/15", "172.26.0.0/15", "192.168.240.0/20")
"""Where subnets are taken from (as /24s) when none is asked for; see ``choose_subnet``."""
PREDEFINED: Final = ("bridge", "host", "none")
DEFAULT_NETWORK: Final = "bridge"
_NAME_RE: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
_ALIAS_RE: Final = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9_.-]*")
_GLOBAL_LOCK: Final = Path("/run/minidock/subnets.lock")
LINK_MTU: Final = 65535
"""The MTU of bridges and veths: host ↔ container traffic moves in 64 KiB segments, as on
loopback (1500 halves the throughput of a published port). The way out keeps the uplink's MTU
as the metric of the containers' default route (``Network.mtu``)."""
HOSTS_BEGIN: Final = (
    "# minidock network: this container and its peers (rewritten as they come and go)"
)
HOSTS_END: Final = "# end of minidock network"


# -- values ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PortMapping:
    """One published port: ``host_ip:host_port`` on the host to ``container_port`` (``proto``)."""

    proto: str  # tcp | udp
    host_ip: str  # 0.0.0.0 = every local address
    host_port: int
    container_port: int

    def __str__(self) -> str:
        return f"{self.host_ip}:{self.host_port}/{self.proto}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A container on a network: its lease, links and the /etc/hosts file kept up to date."""

    container_id: str
    name: str
    ip: str
    mac: str
    host_ifname: str
    ifname: str
    aliases: tuple[str, ...] = ()
    hostname: str = ""
    hosts_file: str = ""
    hosts_base: str = ""
    pid: int = 0

    def names(self) -> list[str]:
        """What peers call it: its name, aliases and short ID (docker's DNS names)."""
        return _unique([self.name, *self.aliases, self.container_id[:12]])


@dataclass(frozen=True, slots=True)
class Network:
    """A network recorded on disk (driver ``bridge``) or a pseudo network (``host``/``null``)."""

    id: str
    name: str
    driver: str = "bridge"
    bridge: str = ""
    subnet: str = ""
    gateway: str = ""
    internal: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    owner: Owner | None = None
    created: str = ""
    mtu: int = 1500  # of the containers' default route: the uplink's (at most 1500)
    last_ip: str = ""
    endpoints: tuple[Endpoint, ...] = ()

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def user_defined(self) -> bool:
        """Name resolution between members: on user-defined networks only, as docker does."""
        return self.name not in PREDEFINED

    def endpoint(self, cid: str) -> Endpoint | None:
        return next((e for e in self.endpoints if e.container_id == cid), None)

    def to_json(self) -> dict[str, Any]:
        obj = _fields(self)
        obj["owner"] = _fields(self.owner) if self.owner is not None else None
        obj["endpoints"] = [_fields(e) for e in self.endpoints]
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Network:
        obj = dict(obj)
        owner = obj.pop("owner", None)
        endpoints = tuple(
            Endpoint(**{**e, "aliases": tuple(e.get("aliases", ()))})
            for e in obj.pop("endpoints", [])
        )
        known = {f.name for f in _record.fields(cls)}
        return cls(
            owner=Owner(**owner) if owner else None,
            endpoints=endpoints,
            **{k: v for k, v in obj.items() if k in known},
        )


@dataclass(frozen=True, slots=True)
class Attachment:
    """What ``attach`` made: the container's address on the network and the links behind it."""

    network: str
    network_id: str
    container_id: str
    ip: str
    prefixlen: int
    gateway: str
    mac: str
    host_ifname: str
    ifname: str
    aliases: tuple[str, ...]

    def inspect(self) -> dict[str, Any]:
        """Docker's ``NetworkSettings.Networks[NAME]`` entry."""
        return {
            "Aliases": list(self.aliases),
            "NetworkID": self.network_id,
            "EndpointID": _endpoint_id(self.network_id, self.container_id),
            "Gateway": self.gateway,
            "IPAddress": self.ip,
            "IPPrefixLen": self.prefixlen,
            "MacAddress": self.mac,
            "DNSNames": _unique([*self.aliases, self.container_id[:12]]),
        }


@dataclass(frozen=True, slots=True)
class Cleaned:
    """What ``cleanup`` removed: endpoints and published ports (container IDs) and networks."""

    endpoints: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    networks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class _Published:
    container_id: str
    network_id: str
    ip: str
    mapping: PortMapping


@dataclass(slots=True)
class _State:
    networks: list[Network] = field(default_factory=list)
    ports: list[_Published] = field(default_factory=list)
    written: bytes = b""  # what state.json holds

    def to_json(self) -> bytes:
        # compact, so that the C encoder does it: this runs twice in every attach
        return json.dumps(
            {
                "version": 1,
                "networks": [n.to_json() for n in self.networks],
                "ports": [
                    {
                        "container_id": p.container_id,
                        "network_id": p.network_id,
                        "ip": p.ip,
                        **_fields(p.mapping),
                    }
                    for p in self.ports
                ],
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> _State:
        obj = json.loads(data)
        ports = []
        for p in obj.get("ports", []):
            mapping = PortMapping(p["proto"], p["host_ip"], p["host_port"], p["container_port"])
            ports.append(_Published(p["container_id"], p["network_id"], p["ip"], mapping))
        return cls([Network.from_json(n) for n in obj.get("networks", [])], ports)

    def find(self, text: str) -> Network:
        if text == "default":
            text = DEFAULT_NETWORK
        for n in self.networks:
            if text in (n.name, n.id):
                return n
        matches = [n for n in self.networks if len(text) >= 2 and n.id.startswith(text)]
        if len(matches) == 1:
            return matches[0]
        raise NetworkNotFound(f"network {text} not found")

    def put(self, net: Network) -> None:
        self.networks = [net if n.id == net.id else n for n in self.networks]


# -- pure helpers ---------------------------------------------------------------------------------
def _fields(obj: Any) -> dict[str, Any]:
    """A dataclass's fields, shallow (``dataclasses.asdict`` deep-copies: 10x slower here)."""
    return {f.name: getattr(obj, f.name) for f in _record.fields(obj)}


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def _hex(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _endpoint_id(network_id: str, cid: str) -> str:
    return _hex("endpoint", network_id, cid)


def bridge_name(network_id: str) -> str:
    """``md-`` and 12 hex digits of the network ID: 15 characters, Linux's limit."""
    return f"md-{network_id[:12]}"


def veth_name(cid: str, network_id: str) -> str:
    """The host end of a container's veth on a network (stable, so crashes leave no orphan)."""
    return f"mdv{_hex(cid, network_id)[:12]}"


def mac_for(ip: str) -> str:
    """A locally administered MAC derived from an IPv4 address (as docker does): a reused address
    keeps its MAC, so no neighbour cache holds a stale entry for it."""
    a, b, c, d = ipaddress.IPv4Address(ip).packed
    return f"02:6d:{a:02x}:{b:02x}:{c:02x}:{d:02x}"


def _overlaps(subnet: ipaddress.IPv4Network, other: ipaddress.IPv4Network) -> bool:
    return subnet.overlaps(other)


def check_subnet(
    subnet: ipaddress.IPv4Network, occupied: Iterable[tuple[ipaddress.IPv4Network, str]]
) -> None:
    """Raise ``NetworkError`` naming what ``subnet`` overlaps among ``occupied`` (net, what)."""
    for net, what in occupied:
        if _overlaps(subnet, net):
            raise NetworkError(
                f"subnet {subnet} overlaps {what}: choose another --subnet (or none, to have "
                "one chosen)"
            )


def choose_subnet(
    occupied: Iterable[tuple[ipaddress.IPv4Network, str]],
    pools: Sequence[str] = DEFAULT_POOLS,
    prefixlen: int = 24,
) -> ipaddress.IPv4Network:
    """The first /``prefixlen`` of ``pools`` that overlaps nothing in ``occupied``.

    ``occupied`` is every address and route of the host (default routes excluded) and every
    subnet of a minidock network; a route as wide as 10.0.0.0/8 rules out a whole pool.
    """
    taken = sorted({n for n, _ in occupied}, key=lambda n: (int(n.network_address), n.prefixlen))
    for pool in pools:
        for candidate in ipaddress.IPv4Network(pool).subnets(new_prefix=prefixlen):
            if not any(candidate.overlaps(t) for t in taken):
                return candidate
    raise NetworkError(
        f"no free subnet left in the address pools {', '.join(pools)}: remove unused networks "
        "(minidock network prune) or give --subnet"
    )


def allocate_address(
    subnet: ipaddress.IPv4Network, gateway: str, used: Iterable[str], last: str = ""
) -> str:
    """The next free host address after ``last`` (round robin, wrapping), never the gateway.

    Going round instead of taking the lowest free address keeps a just-released address (and the
    conntrack entries and neighbour caches that still name it) out of use for as long as possible.
    """
    taken = {int(ipaddress.IPv4Address(a)) for a in (*used, gateway)}
    first = int(subnet.network_address) + 1  # hosts: all but the network and broadcast address
    count = subnet.num_addresses - 2
    start = 0
    if last and ipaddress.IPv4Address(last) in subnet:
        start = (int(ipaddress.IPv4Address(last)) - first + 1) % count
    for i in range(count):
        candidate = first + (start + i) % count
        if candidate not in taken:
            return str(ipaddress.IPv4Address(candidate))
    raise NetworkError(f"no free address left in subnet {subnet}")


def strip_managed(text: str) -> str:
    """``text`` (an /etc/hosts) without the block that ``render_hosts`` adds."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line == HOSTS_BEGIN:
            skipping = True
        elif line == HOSTS_END and skipping:
            skipping = False
        elif not skipping:
            out.append(line)
    return "\n".join(out) + "\n" if out else ""


def render_hosts(
    base: str,
    own: Sequence[tuple[str, Sequence[str]]],
    peers: Sequence[tuple[str, Sequence[str]]],
) -> str:
    """A container's /etc/hosts: ``base`` (localhost lines, its hostname) plus a managed block.

    ``own`` are the container's (address, names) on its networks, ``peers`` the other members'
    of its user-defined networks. With an address of its own, a ``127.0.1.1`` line of ``base`` is
    dropped (the hostname then resolves to that address, as with docker).
    """
    lines = strip_managed(base).splitlines()
    if own:
        lines = [ln for ln in lines if ln.split()[:1] != ["127.0.1.1"]]
    block = [f"{ip}\t{' '.join(names)}" for ip, names in own if names]
    block += [f"{ip}\t{' '.join(names)}" for ip, names in peers if names]
    if block:
        lines += [HOSTS_BEGIN, *block, HOSTS_END]
    return "\n".join(lines) + "\n"


def _q(name: str) -> str:
    return json.dumps(name)  # an nft string literal: "md-1234"


def render_ruleset(
    table: str, networks: Sequence[Network], ports: Sequence[tuple[PortMapping, str]]
) -> str:
    """The ``nft -f`` script that makes ``table`` hold exactly the rules of ``networks`` and
    ``ports`` ((mapping, container address) pairs); with neither, it deletes the table.

    Base chains are added (a no-op when they exist), then flushed and refilled in the same
    transaction: no packet ever sees a half-made table, and hooks are not re-registered.
    """
    t = f"ip {table}"
    if not networks and not ports:
        return f"add table {t}\ndelete table {t}\n"
    out = [
        f"add table {t}",
        f"add chain {t} prerouting {{ type nat hook prerouting priority -100; policy accept; }}",
        f"add chain {t} output {{ type nat hook output priority -100; policy accept; }}",
        f"add chain {t} postrouting {{ type nat hook postrouting priority 100; policy accept; }}",
        f"add chain {t} forward {{ type filter hook forward priority 0; policy accept; }}",
        f"add chain {t} ports",
    ]
    for proto in ("tcp", "udp"):
        out.append(
            f"add map {t} dnat_{proto} "
            "{ type ipv4_addr . inet_service : ipv4_addr . inet_service; }"
        )
        out.append(
            f"add map {t} dnat_{proto}_any {{ type inet_service : ipv4_addr . inet_service; }}"
        )
    for chain in ("prerouting", "output", "postrouting", "forward", "ports"):
        out.append(f"flush chain {t} {chain}")
    for m in ("dnat_tcp", "dnat_udp", "dnat_tcp_any", "dnat_udp_any"):
        out.append(f"flush map {t} {m}")
    out += [
        f"add rule {t} prerouting jump ports",
        f"add rule {t} output jump ports",
        # connections to published ports, from anywhere (another network's members included)
        f"add rule {t} forward ct status dnat accept",
    ]
    for proto in ("tcp", "udp"):
        out.append(f"add rule {t} ports dnat ip to ip daddr . {proto} dport map @dnat_{proto}")
        local = f"add rule {t} ports fib daddr type local"
        out.append(f"{local} dnat ip to {proto} dport map @dnat_{proto}_any")
    for net in sorted(networks, key=lambda n: n.name):
        br, sub = _q(net.bridge), net.subnet
        # replies to 127.0.0.1 clients of a published port must come back to the host
        out.append(f"add rule {t} postrouting oifname {br} ip saddr 127.0.0.0/8 masquerade")
        # a member reaching a published port of a peer on the same bridge (hairpin)
        out.append(
            f"add rule {t} postrouting oifname {br} ip saddr {sub} ct status dnat masquerade"
        )
        if net.internal:
            out.append(f"add rule {t} forward iifname {br} oifname != {br} drop")
            out.append(f"add rule {t} forward oifname {br} iifname != {br} drop")
        else:
            out.append(f"add rule {t} postrouting ip saddr {sub} oifname != {br} masquerade")
            out.append(f'add rule {t} forward iifname {br} oifname "md-*" oifname != {br} drop')
            out.append(f"add rule {t} forward iifname {br} accept")
            out.append(f"add rule {t} forward oifname {br} ct state established,related accept")
    out += _port_elements("add", t, ports)
    return "\n".join(out) + "\n"


def _port_elements(verb: str, t: str, ports: Sequence[tuple[PortMapping, str]]) -> list[str]:
    """``add``/``delete element`` lines for ``ports`` ((mapping, container address) pairs)."""
    groups: dict[str, list[str]] = {}
    for m, ip in sorted(ports, key=lambda p: (p[0].proto, p[0].host_ip, p[0].host_port)):
        any_ip = m.host_ip == "0.0.0.0"
        key = f"{m.host_port}" if any_ip else f"{m.host_ip} . {m.host_port}"
        value = f" : {ip} . {m.container_port}" if verb == "add" else ""
        name = f"dnat_{m.proto}_any" if any_ip else f"dnat_{m.proto}"
        groups.setdefault(name, []).append(key + value)
    return [f"{verb} element {t} {name} {{ {', '.join(e)} }}" for name, e in groups.items()]


def _root_key(root: Path) -> str:
    return _hex("root", str(root.resolve()))[:10]


def _write_in_place(path: str, text: str) -> None:
    """Rewrite a file that is bind-mounted into a container: same inode, never renamed.

    Nothing is written when the content is unchanged, and the new content is written over the
    old before the file is cut to its length, so a reader in the container never finds it empty
    (``O_TRUNC`` first would let a name lookup at that moment fail). A file that is gone (its
    container was removed) is left gone."""
    data = text.encode()
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if os.pread(fd, len(data) + 1, 0) == data:
            return
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, data[offset:], offset)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


# -- the kernel seam ------------------------------------------------------------------------------
class BridgeMissing(NetworkError):
    """``Kernel.add_endpoint`` found no bridge to put the veth in (``attach`` makes it again)."""


class Kernel(Protocol):
    """Everything ``Networks`` asks of the kernel; ``LinuxKernel`` does it, tests may fake it."""

    def occupied(self) -> list[tuple[ipaddress.IPv4Network, str]]:
        """Every IPv4 address (as its subnet) and non-default route of the host, with a label."""
        ...

    def uplink_mtu(self) -> int:
        """The MTU of the interface of the default route (1500 without one)."""
        ...

    def link_exists(self, name: str) -> bool: ...

    def create_bridge(self, name: str, mac: str, address: str, prefixlen: int, mtu: int) -> None:
        """Make (or complete) bridge ``name`` with ``address``, up, ``route_localnet=1``."""
        ...

    def delete_link(self, name: str) -> None:
        """Delete link ``name`` (a bridge or a veth with its peer); gone already is fine."""
        ...

    def add_endpoint(
        self,
        pid: int,
        *,
        bridge: str,
        host_ifname: str,
        ifname: str,
        mac: str,
        ip: str,
        prefixlen: int,
        gateway: str | None,
        mtu: int,
        route_mtu: int,
    ) -> None:
        """Make a veth pair (``mtu``), one end in ``bridge``, the other ``ifname`` in ``pid``'s
        netns with ``ip``, ``lo`` and ``ifname`` up and (with ``gateway``) a default route whose
        MTU is ``route_mtu``. ``BridgeMissing`` if there is no ``bridge``."""
        ...

    def ports_of(self, bridges: Iterable[str]) -> dict[str, list[str]]:
        """The names of the links enslaved to each of ``bridges`` (that exist)."""
        ...

    def enable_forwarding(self) -> None: ...

    def nft(self, script: str) -> None:
        """Run an ``nft -f`` script (one transaction); ``NetworkError`` if nft refuses it."""
        ...


_NLM_F_REQUEST: Final = 0x1
_NLM_F_ACK: Final = 0x4
_NLM_F_DUMP: Final = 0x300
_NLM_F_REPLACE: Final = 0x100
_NLM_F_EXCL: Final = 0x200
_NLM_F_CREATE: Final = 0x400
_NLMSG_ERROR: Final = 2
_NLMSG_DONE: Final = 3
_RTM_NEWLINK: Final = 16
_RTM_DELLINK: Final = 17
_RTM_GETLINK: Final = 18
_RTM_NEWADDR: Final = 20
_RTM_GETADDR: Final = 22
_RTM_NEWROUTE: Final = 24
_RTM_GETROUTE: Final = 26
_IFF_UP: Final = 1
_CLONE_NEWNET: Final = 0x40000000
_RECV: Final = 1 << 18
_NO_IPV6: Final = (
    "IFLA_AF_SPEC",
    {"attrs": [("AF_INET6", {"attrs": [("IFLA_INET6_ADDR_GEN_MODE", 1)]})]},  # mode "none"
)


@functools.cache
def _syscalls() -> Any:
    """The syscall seam's ``setns`` (this module may not use ctypes itself)."""
    from pytest_minidock.runtime._sys import LinuxSyscalls

    return LinuxSyscalls()


def _nl_chunks(buf: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(type, sequence number, message) of each netlink message in ``buf``."""
    off = 0
    while off + 16 <= len(buf):
        length, mtype, _flags, seq, _pid = struct.unpack_from("=IHHII", buf, off)
        if length < 16:
            return
        yield mtype, seq, buf[off : off + length]
        off += (length + 3) & ~3


def _nl_error(chunk: bytes) -> int:
    return -int(struct.unpack_from("=i", chunk, 16)[0])


class _Netlink:
    """An rtnetlink socket in the namespace it was opened in, speaking pyroute2's messages."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()
        self._seq = itertools.count(1)

    @classmethod
    def open(cls) -> _Netlink:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        sock.settimeout(30)  # the kernel answers at once; never hang a test run on it
        sock.bind((0, 0))
        return cls(sock)

    @classmethod
    def open_in(cls, ns_fd: int) -> _Netlink:
        """A socket in the netns ``ns_fd``, opened by a thread that enters it and leaves again."""
        setns = _syscalls().setns
        box: list[_Netlink | BaseException] = []

        def enter() -> None:
            try:
                own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    setns(ns_fd, _CLONE_NEWNET)
                    try:
                        box.append(cls.open())
                    finally:
                        setns(own, _CLONE_NEWNET)
                finally:
                    os.close(own)
            except BaseException as exc:  # reported to the caller below
                box.append(exc)

        thread = threading.Thread(target=enter, name="minidock-netns", daemon=True)
        thread.start()
        thread.join()
        # opened but could not leave again is fine: the thread, and its namespace, have ended
        for item in box:
            if isinstance(item, _Netlink):
                return item
        if box and isinstance(box[0], BaseException):
            raise box[0]
        raise OSError("the thread entering the namespace died")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> _Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _encode(self, msg: Any, mtype: int, flags: int) -> tuple[int, bytes]:
        seq = next(self._seq)
        msg["header"]["type"] = mtype
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = seq
        msg.encode()
        return seq, bytes(msg.data)

    def request(self, what: str, *requests: tuple[Any, int, int]) -> None:
        """Send ``(message, type, flags)`` requests in one batch; raise the first error."""
        seqs: set[int] = set()
        data = []
        for msg, mtype, flags in requests:
            seq, raw = self._encode(msg, mtype, _NLM_F_REQUEST | _NLM_F_ACK | flags)
            seqs.add(seq)
            data.append(raw)
        self.sock.send(b"".join(data))
        error = 0
        while seqs:
            for mtype, seq, chunk in _nl_chunks(self.sock.recv(_RECV)):
                if mtype == _NLMSG_ERROR and seq in seqs:
                    seqs.discard(seq)
                    error = error or _nl_error(chunk)
        if error:
            raise OSError(error, f"{os.strerror(error)} ({what})")

    def dump(self, msg: Any, mtype: int) -> list[Any]:
        seq, raw = self._encode(msg, mtype, _NLM_F_REQUEST | _NLM_F_DUMP)
        self.sock.send(raw)
        out: list[Any] = []
        while True:
            for t, s, chunk in _nl_chunks(self.sock.recv(_RECV)):
                if s != seq:
                    continue
                if t == _NLMSG_DONE:
                    return out
                if t == _NLMSG_ERROR:
                    if code := _nl_error(chunk):
                        raise OSError(code, os.strerror(code))
                    continue
                m = type(msg)(chunk)
                m.decode()
                out.append(m)

    def link_index(self, name: str) -> int | None:
        seq, raw = self._encode(_link_msg(attrs=[("IFLA_IFNAME", name)]), _RTM_GETLINK, 1)
        self.sock.send(raw)
        while True:
            for t, s, chunk in _nl_chunks(self.sock.recv(_RECV)):
                if s != seq:
                    continue
                if t == _RTM_NEWLINK:
                    return int(struct.unpack_from("=i", chunk, 20)[0])
                if t == _NLMSG_ERROR:
                    code = _nl_error(chunk)
                    if code == 19:  # ENODEV
                        return None
                    raise OSError(code, f"{os.strerror(code)} (looking up {name})")


def _link_msg(index: int = 0, up: bool | None = None, attrs: Sequence[tuple[str, Any]] = ()) -> Any:
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    m = ifinfmsg()
    m["index"] = index
    if up is not None:
        m["flags"] = _IFF_UP if up else 0
        m["change"] = _IFF_UP
    m["attrs"] = list(attrs)
    return m


def _addr_msg(index: int, ip: str, prefixlen: int) -> Any:
    from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg

    net = ipaddress.IPv4Network(f"{ip}/{prefixlen}", strict=False)
    m = ifaddrmsg()
    m["family"] = socket.AF_INET
    m["prefixlen"] = prefixlen
    m["index"] = index
    m["attrs"] = [
        ("IFA_LOCAL", ip),
        ("IFA_ADDRESS", ip),
        ("IFA_BROADCAST", str(net.broadcast_address)),
    ]
    return m


def _route_msg(gateway: str, oif: int, mtu: int) -> Any:
    from pyroute2.netlink.rtnl.rtmsg import rtmsg

    m = rtmsg()
    m["family"] = socket.AF_INET
    m["table"] = 254  # main
    m["proto"] = 4  # static
    m["scope"] = 0  # universe
    m["type"] = 1  # unicast
    m["attrs"] = [
        ("RTA_GATEWAY", gateway),
        ("RTA_OIF", oif),
        ("RTA_METRICS", {"attrs": [("RTAX_MTU", mtu)]}),
    ]
    return m


class LinuxKernel:
    """``Kernel`` for real: rtnetlink (pyroute2's messages), ``nft`` and ``/proc/sys``.

    Each call opens its own netlink socket (~20 us): nothing to close, nothing shared with a fork.
    """

    def occupied(self) -> list[tuple[ipaddress.IPv4Network, str]]:
        with _Netlink.open() as nl:
            return self._occupied(nl)

    def _occupied(self, nl: _Netlink) -> list[tuple[ipaddress.IPv4Network, str]]:
        from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
        from pyroute2.netlink.rtnl.rtmsg import rtmsg

        names = {m["index"]: m.get_attr("IFLA_IFNAME") for m in nl.dump(_link_msg(), _RTM_GETLINK)}
        out: list[tuple[ipaddress.IPv4Network, str]] = []
        query = ifaddrmsg()
        query["family"] = socket.AF_INET
        for m in nl.dump(query, _RTM_GETADDR):
            ip = m.get_attr("IFA_ADDRESS") or m.get_attr("IFA_LOCAL")
            net = ipaddress.IPv4Network(f"{ip}/{m['prefixlen']}", strict=False)
            out.append((net, f"address {ip}/{m['prefixlen']} on {names.get(m['index'], '?')}"))
        query = rtmsg()
        query["family"] = socket.AF_INET
        for m in nl.dump(query, _RTM_GETROUTE):
            dst = m.get_attr("RTA_DST")
            if not dst or m["dst_len"] == 0:
                continue
            net = ipaddress.IPv4Network(f"{dst}/{m['dst_len']}", strict=False)
            dev = names.get(m.get_attr("RTA_OIF"), "")
            out.append((net, f"route {net}{' dev ' + dev if dev else ''}"))
        return out

    def uplink_mtu(self) -> int:
        from pyroute2.netlink.rtnl.rtmsg import rtmsg

        query = rtmsg()
        query["family"] = socket.AF_INET
        with _Netlink.open() as nl:
            oifs = {
                m.get_attr("RTA_OIF")
                for m in nl.dump(query, _RTM_GETROUTE)
                if m["dst_len"] == 0 and m.get_attr("RTA_TABLE") == 254
            }
            links = nl.dump(_link_msg(), _RTM_GETLINK)
        mtus = [int(m.get_attr("IFLA_MTU")) for m in links if m["index"] in oifs]
        return min([1500, *mtus])

    def link_exists(self, name: str) -> bool:
        with _Netlink.open() as nl:
            return nl.link_index(name) is not None

    def create_bridge(self, name: str, mac: str, address: str, prefixlen: int, mtu: int) -> None:
        with _Netlink.open() as nl:
            self._create_bridge(nl, name, mac=mac, address=address, prefixlen=prefixlen, mtu=mtu)

    def _create_bridge(
        self, nl: _Netlink, name: str, *, mac: str, address: str, prefixlen: int, mtu: int
    ) -> None:
        index = nl.link_index(name)
        if index is None:
            info = {"attrs": [("IFLA_INFO_KIND", "bridge")]}
            attrs = [
                ("IFLA_IFNAME", name),
                ("IFLA_ADDRESS", mac),
                ("IFLA_MTU", mtu),
                ("IFLA_LINKINFO", info),
            ]
            nl.request(
                f"creating bridge {name}",
                (_link_msg(attrs=attrs), _RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL),
            )
            index = nl.link_index(name)
            if index is None:
                raise OSError(19, f"bridge {name} vanished after it was made")
        _write_sysctl(f"net/ipv4/conf/{name}/route_localnet", "1")
        nl.request(
            f"configuring bridge {name}",
            (_addr_msg(index, address, prefixlen), _RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_REPLACE),
            (_link_msg(index, up=True), _RTM_NEWLINK, 0),
        )

    def delete_link(self, name: str) -> None:
        with _Netlink.open() as nl:
            index = nl.link_index(name)
            if index is None:
                return
            try:
                nl.request(f"deleting {name}", (_link_msg(index), _RTM_DELLINK, 0))
            except OSError as exc:
                if exc.errno != 19:  # ENODEV: deleted meanwhile (its netns went away)
                    raise

    def add_endpoint(
        self,
        pid: int,
        *,
        bridge: str,
        host_ifname: str,
        ifname: str,
        mac: str,
        ip: str,
        prefixlen: int,
        gateway: str | None,
        mtu: int,
        route_mtu: int,
    ) -> None:
        try:
            ns_fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NetworkError(f"no process {pid}: its container has exited") from None
        try:
            ours = os.stat("/proc/thread-self/ns/net")
            theirs = os.fstat(ns_fd)
            if (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino):
                raise NetworkError(
                    f"process {pid} shares this host's network namespace: it needs its own "
                    "(start it with CLONE_NEWNET) before it can be attached"
                )
            with _Netlink.open() as nl:
                master = nl.link_index(bridge)
                if master is None:
                    raise BridgeMissing(f"bridge {bridge} does not exist")
                peer = {
                    "attrs": [
                        ("IFLA_IFNAME", ifname),
                        ("IFLA_NET_NS_FD", ns_fd),
                        ("IFLA_ADDRESS", mac),
                        ("IFLA_MTU", mtu),
                    ]
                }
                info = {
                    "attrs": [
                        ("IFLA_INFO_KIND", "veth"),
                        ("IFLA_INFO_DATA", {"attrs": [("VETH_INFO_PEER", peer)]}),
                    ]
                }
                attrs = [
                    ("IFLA_IFNAME", host_ifname),
                    ("IFLA_MASTER", master),
                    ("IFLA_MTU", mtu),
                    ("IFLA_LINKINFO", info),
                ]
                nl.request(
                    f"creating veth {host_ifname}",
                    (_link_msg(up=True, attrs=attrs), _RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL),
                )
            try:
                # hairpin: with br_netfilter (docker loads it), a member reaching its own published
                # port through the host is DNAT-ed on the bridge and must go back out its port
                _write_sysctl(f"/sys/class/net/{host_ifname}/brport/hairpin_mode", "1")
                with _Netlink.open_in(ns_fd) as inner:
                    index = inner.link_index(ifname)
                    if index is None:
                        raise OSError(19, f"{ifname} did not arrive in the namespace of {pid}")
                    requests = [
                        # IPv4 only, as docker does on networks without IPv6: no link-local
                        # address (whose DAD the hairpin's echo would fail)
                        (_link_msg(index, attrs=[_NO_IPV6]), _RTM_NEWLINK, 0),
                        (_link_msg(1, up=True), _RTM_NEWLINK, 0),  # lo
                        (_link_msg(index, up=True), _RTM_NEWLINK, 0),
                        (_addr_msg(index, ip, prefixlen), _RTM_NEWADDR, _NLM_F_CREATE),
                    ]
                    if gateway:
                        route = _route_msg(gateway, index, route_mtu)
                        requests.append((route, _RTM_NEWROUTE, _NLM_F_CREATE))
                    inner.request(f"configuring {ifname} in process {pid}", *requests)
            except BaseException:
                with contextlib.suppress(OSError):
                    self.delete_link(host_ifname)
                raise
        finally:
            os.close(ns_fd)

    def ports_of(self, bridges: Iterable[str]) -> dict[str, list[str]]:
        with _Netlink.open() as nl:
            links = nl.dump(_link_msg(), _RTM_GETLINK)
        by_index = {m["index"]: m.get_attr("IFLA_IFNAME") for m in links}
        wanted = set(bridges)
        out: dict[str, list[str]] = {b: [] for b in wanted if b in by_index.values()}
        for m in links:
            master = by_index.get(m.get_attr("IFLA_MASTER"))
            if master in wanted:
                out[master].append(m.get_attr("IFLA_IFNAME"))
        return out

    def enable_forwarding(self) -> None:
        _write_sysctl("net/ipv4/ip_forward", "1")

    def nft(self, script: str) -> None:
        nft = shutil.which("nft", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
        if nft is None:
            raise NetworkError("nft not found: install nftables (needed for networks)")
        done = subprocess.run(
            [nft, "-f", "-"], input=script.encode(), capture_output=True, check=False
        )
        if done.returncode:
            message = done.stderr.decode(errors="replace").strip()
            raise NetworkError(f"nft refused minidock's rules: {message}")


def _write_sysctl(key: str, value: str) -> None:
    """Set ``/proc/sys/KEY`` (or the sysfs file ``KEY`` when absolute) unless it is set."""
    path = key if key.startswith("/") else f"/proc/sys/{key}"
    with open(path) as f:
        if f.read().strip() == value:
            return
    with open(path, "w") as f:
        f.write(value)


# -- the manager ----------------------------------------------------------------------------------
class Networks:
    """The networks of a minidock root: create, inspect, attach containers, publish, clean up.

    Every change is a read-modify-write of ``state.json`` under the root's filelock, followed by
    the kernel work, so parallel processes (xdist workers, the CLI) see one consistent truth.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        kernel: Kernel | None = None,
        pools: Sequence[str] = DEFAULT_POOLS,
        global_lock: Path | None = None,
    ) -> None:
        self.root = Path(root)
        self.dir = self.root / "networks"
        self.table = f"minidock_{_root_key(self.root)}"
        self.pools = tuple(pools)
        self._kernel = kernel
        if global_lock is None:
            global_lock = _GLOBAL_LOCK if os.geteuid() == 0 else self.dir / "subnets.lock"
        self._global_lock = global_lock

    @property
    def kernel(self) -> Kernel:
        if self._kernel is None:
            self._kernel = LinuxKernel()
        return self._kernel

    # -- state -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[_State]:
        """Hold the root's network lock; yield the state, written back when the body ends.

        It is written back on errors too: every change to it follows a kernel change that was
        made (or precedes one and is undone if that fails), so it always names what exists.
        """
        from pytest_minidock.store.locking import exclusive

        self.dir.mkdir(parents=True, exist_ok=True)
        with exclusive(self.dir / "lock", what="networks"):
            state = self._read()
            try:
                yield state
            finally:
                self._save(state)

    def _save(self, state: _State) -> None:
        """Write the state now (before kernel work, so that a crash leaves a record of it)."""
        data = state.to_json()
        if data != state.written:
            tmp = self.dir / f".state.json.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.dir / "state.json")
            state.written = data

    def _read(self) -> _State:
        try:
            data = (self.dir / "state.json").read_bytes()
        except FileNotFoundError:
            return _State(written=_State().to_json())
        try:
            state = _State.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise NetworkError(f"{self.dir / 'state.json'} is corrupt: {exc}") from exc
        state.written = data
        return state

    def _render(self, state: _State) -> None:
        ports = [(p.mapping, p.ip) for p in state.ports]
        self.kernel.nft(render_ruleset(self.table, state.networks, ports))

    # -- networks ----------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        subnet: str | None = None,
        gateway: str | None = None,
        internal: bool = False,
        labels: Mapping[str, str] | None = None,
        owner: Owner | None = None,
    ) -> Network:
        """``docker network create``: a bridge with a subnet that overlaps nothing on the host.

        ``owner``: the session the network belongs to (``cleanup`` removes it once that process
        is gone); None for networks that persist, like the CLI's.
        """
        if name in (*PREDEFINED, "default"):
            raise UsageError(f"{name} is a pre-defined network and cannot be created")
        return self._create(
            name, subnet=subnet, gateway=gateway, internal=internal, labels=labels, owner=owner
        )

    def _create(
        self,
        name: str,
        *,
        subnet: str | None = None,
        gateway: str | None = None,
        internal: bool = False,
        labels: Mapping[str, str] | None = None,
        owner: Owner | None = None,
    ) -> Network:
        if not _NAME_RE.fullmatch(name):
            raise UsageError(
                f'invalid network name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed'
            )
        wanted = _parse_subnet(subnet) if subnet else None
        if gateway and wanted is None:
            raise UsageError("--gateway needs --subnet")
        from pytest_minidock.store.locking import exclusive

        with self._locked() as state:
            if any(n.name == name for n in state.networks):
                raise NetworkError(f"network with name {name} already exists")
            self._global_lock.parent.mkdir(parents=True, exist_ok=True)
            with exclusive(self._global_lock, what="choosing a subnet"):
                occupied = [
                    (ipaddress.IPv4Network(n.subnet), f"network {n.name}") for n in state.networks
                ]
                occupied += self.kernel.occupied()
                if wanted is not None:
                    check_subnet(wanted, occupied)
                    chosen = wanted
                else:
                    chosen = choose_subnet(occupied, self.pools)
                gw = _parse_gateway(gateway, chosen) if gateway else str(next(chosen.hosts()))
                nid = secrets.token_hex(32)
                net = Network(
                    id=nid,
                    name=name,
                    bridge=bridge_name(nid),
                    subnet=str(chosen),
                    gateway=gw,
                    internal=internal,
                    labels=dict(labels or {}),
                    owner=owner,
                    created=now_iso(),
                    mtu=self.kernel.uplink_mtu(),
                )
                state.networks.append(net)
                self._save(state)
                try:
                    self._make_bridge(net)
                    self._render(state)
                except BaseException:
                    state.networks.remove(net)
                    with contextlib.suppress(Exception):
                        self.kernel.delete_link(net.bridge)
                    raise
            return net

    def _make_bridge(self, net: Network) -> None:
        try:
            self.kernel.create_bridge(
                net.bridge, mac_for(net.gateway), net.gateway, _prefixlen(net), LINK_MTU
            )
            if not net.internal:
                self.kernel.enable_forwarding()
        except OSError as exc:
            raise _os_error(f"cannot make the bridge of network {net.name}", exc) from exc

    def default(self) -> Network:
        """The built-in ``bridge`` network, made on first use (as docker's ``docker0``)."""
        try:
            return self.get(DEFAULT_NETWORK)
        except NetworkNotFound:
            pass
        try:
            return self._create(DEFAULT_NETWORK)
        except NetworkError as exc:
            try:
                return self.get(DEFAULT_NETWORK)  # another process made it meanwhile
            except NetworkNotFound:
                raise exc from None

    def get(self, name: str) -> Network:
        """A network by name, full ID or unique ID prefix (``default`` is ``bridge``)."""
        if name in ("host", "none"):
            return self._pseudo(name)
        return self._read().find(name)

    def _pseudo(self, name: str) -> Network:
        return Network(
            id=_hex("pseudo", str(self.root.resolve()), name),
            name=name,
            driver="host" if name == "host" else "null",
        )

    def list(self) -> builtins.list[Network]:
        """Every network: this root's (``bridge`` once made) and the pseudo ``host``/``none``."""
        nets = [*self._read().networks, self._pseudo("host"), self._pseudo("none")]
        return sorted(nets, key=lambda n: n.name)

    def inspect(self, name: str) -> dict[str, Any]:
        """``docker network inspect``'s object for one network."""
        net = self.get(name)
        config = [{"Subnet": net.subnet, "Gateway": net.gateway}] if net.subnet else []
        return {
            "Name": net.name,
            "Id": net.id,
            "Created": net.created,
            "Scope": "local",
            "Driver": net.driver,
            "EnableIPv6": False,
            "IPAM": {"Driver": "default", "Options": {}, "Config": config},
            "Internal": net.internal,
            "Attachable": False,
            "Ingress": False,
            "ConfigFrom": {"Network": ""},
            "ConfigOnly": False,
            "Containers": {
                e.container_id: {
                    "Name": e.name,
                    "EndpointID": _endpoint_id(net.id, e.container_id),
                    "MacAddress": e.mac,
                    "IPv4Address": f"{e.ip}/{_prefixlen(net)}",
                    "IPv6Address": "",
                }
                for e in net.endpoints
            },
            "Options": {"com.docker.network.bridge.name": net.bridge} if net.bridge else {},
            "Labels": dict(net.labels),
        }

    def remove(self, name: str, *, force: bool = False) -> None:
        """``docker network rm``: refused while containers are attached, unless ``force``
        (which detaches them). The pre-defined networks cannot be removed."""
        if name in (*PREDEFINED, "default"):
            raise NetworkError(f"{name} is a pre-defined network and cannot be removed")
        with self._locked() as state:
            net = state.find(name)
            if net.endpoints and not force:
                names = ", ".join(sorted(e.name for e in net.endpoints))
                raise NetworkError(
                    f"network {net.name} has active endpoints ({names}): stop those containers "
                    "or disconnect them first"
                )
            self._remove_network(state, net)

    def _remove_network(self, state: _State, net: Network, *, nft: bool = True) -> None:
        for e in net.endpoints:
            self._drop_endpoint(state, net, e, nft=False)
        net = state.find(net.id)
        try:
            self.kernel.delete_link(net.bridge)
        except OSError as exc:
            raise NetworkError(f"cannot delete bridge {net.bridge}: {exc}") from exc
        state.networks = [n for n in state.networks if n.id != net.id]
        state.ports = [p for p in state.ports if p.network_id != net.id]
        if nft:
            self._render(state)

    def prune(self) -> builtins.list[str]:
        """``docker network prune``: remove the user-defined networks no container uses."""
        removed = []
        with self._locked() as state:
            for net in list(state.networks):
                if net.user_defined and not net.endpoints:
                    self._remove_network(state, net)
                    removed.append(net.name)
        return removed

    def destroy(self) -> None:
        """Remove every network of this root, ``bridge`` included, with endpoints and rules (for a
        root that goes away, and for tests)."""
        with self._locked() as state:
            for net in list(state.networks):
                self._remove_network(state, net, nft=False)
            state.ports = []
            self._render(state)

    # -- endpoints ---------------------------------------------------------------------------
    def attach(
        self,
        network: str,
        container_id: str,
        pid: int,
        *,
        name: str,
        aliases: Sequence[str] = (),
        hosts_file: Path | str | None = None,
        hostname: str = "",
    ) -> Attachment:
        """Put the network namespace of ``pid`` on ``network`` (``bridge``/``default`` is made on
        first use): an address lease, a veth pair (``eth0``, ``eth1`` … inside), a default route
        via the gateway on the first network, and the /etc/hosts of every member rewritten.

        Attaching a container that is attached already gives its existing attachment back, or
        remakes its links (same address) when its process changed.
        """
        if network in ("host", "none"):
            raise NetworkError(
                f"containers cannot be attached to network {network}: it has no endpoints"
            )
        for alias in aliases:
            if not _ALIAS_RE.fullmatch(alias):
                raise UsageError(f"invalid network alias {alias!r}")
        if network in (DEFAULT_NETWORK, "default"):
            self.default()
        with self._locked() as state:
            net = state.find(network)
            old = net.endpoint(container_id)
            if old is not None and old.pid == pid and self.kernel.link_exists(old.host_ifname):
                return _attachment(net, old)
            mine = [n.endpoint(container_id) for n in state.networks if n.id != net.id]
            in_use = {e.ifname for e in mine if e is not None}
            ifname = next(f"eth{i}" for i in itertools.count() if f"eth{i}" not in in_use)
            if old is not None:
                self.kernel.delete_link(old.host_ifname)
                ip = old.ip
            else:
                used = [e.ip for e in net.endpoints]
                ip = allocate_address(
                    ipaddress.IPv4Network(net.subnet), net.gateway, used, net.last_ip
                )
            # the base lines: as recorded when it joined its first network, else the file's
            base = next((e.hosts_base for e in mine if e is not None and e.hosts_base), "")
            if old is not None and old.hosts_base:
                base = old.hosts_base
            if not base and hosts_file is not None:
                with contextlib.suppress(OSError):
                    base = strip_managed(Path(hosts_file).read_text())
            ep = Endpoint(
                container_id=container_id,
                name=name.removeprefix("/"),
                ip=ip,
                mac=mac_for(ip),
                host_ifname=veth_name(container_id, net.id),
                ifname=old.ifname if old is not None else ifname,
                aliases=tuple(_unique(aliases)),
                hostname=hostname,
                hosts_file=str(hosts_file) if hosts_file is not None else "",
                hosts_base=base,
                pid=pid,
            )
            original = net
            others = tuple(e for e in net.endpoints if e.container_id != container_id)
            net = replace(net, endpoints=(*others, ep), last_ip=ip)
            state.put(net)
            # (a crash from here on leaves at most a veth that no lease claims, on our bridge:
            # cleanup deletes those, and the kernel does when the container's netns goes)
            try:
                try:
                    self._add_endpoint(net, ep, pid)
                except BridgeMissing:  # lost (a reboot, someone deleted it): make it again
                    self._make_bridge(net)
                    self._render(state)
                    self._add_endpoint(net, ep, pid)
            except OSError as exc:
                state.put(original)
                what = f"cannot attach container {ep.name} to network {net.name}"
                raise _os_error(what, exc) from exc
            except BaseException:
                state.put(original)
                raise
            self._write_hosts(state, net)
            return _attachment(net, ep)

    def _add_endpoint(self, net: Network, ep: Endpoint, pid: int) -> None:
        self.kernel.add_endpoint(
            pid,
            bridge=net.bridge,
            host_ifname=ep.host_ifname,
            ifname=ep.ifname,
            mac=ep.mac,
            ip=ep.ip,
            prefixlen=_prefixlen(net),
            gateway=net.gateway if ep.ifname == "eth0" else None,
            mtu=LINK_MTU,
            route_mtu=net.mtu,
        )

    def attachments(self, container_id: str) -> builtins.list[Attachment]:
        """The container's attachments, in the order of their interfaces (``eth0`` first)."""
        out = []
        for net in self._read().networks:
            if (e := net.endpoint(container_id)) is not None:
                out.append(_attachment(net, e))
        return sorted(out, key=lambda a: int(a.ifname[3:] or 0))

    def detach(self, container_id: str, network: str | None = None) -> None:
        """Free the container's leases (on ``network``, or on all), delete its veths, unpublish
        its ports, and rewrite the peers' /etc/hosts. Detaching twice is fine."""
        with self._locked() as state:
            nets = [state.find(network)] if network is not None else list(state.networks)
            for net in nets:
                if (e := net.endpoint(container_id)) is not None:
                    self._drop_endpoint(state, net, e)
            self._write_hosts_of(state, {n.id for n in nets})

    def _drop_endpoint(
        self, state: _State, net: Network, ep: Endpoint, *, nft: bool = True
    ) -> None:
        """Delete the endpoint's veth and lease and its ports (with ``nft``, their rules too;
        without, the caller renders the table afterwards)."""
        try:
            self.kernel.delete_link(ep.host_ifname)
        except OSError as exc:
            raise NetworkError(f"cannot delete veth {ep.host_ifname}: {exc}") from exc
        net = state.find(net.id)
        cid = ep.container_id
        state.put(replace(net, endpoints=tuple(e for e in net.endpoints if e.container_id != cid)))
        gone = [
            p for p in state.ports if p.container_id == ep.container_id and p.network_id == net.id
        ]
        if gone and nft:
            self._unpublish(state, gone)
        state.ports = [p for p in state.ports if p not in gone]
        if ep.hosts_file:  # its own file: without this network's lines
            with contextlib.suppress(OSError):
                _write_in_place(ep.hosts_file, _hosts_text(state, cid, ep.hosts_base))

    # -- /etc/hosts --------------------------------------------------------------------------
    def hosts_for(self, container_id: str) -> str:
        """The /etc/hosts the container should have now (what ``attach`` writes)."""
        state = self._read()
        base = next((e.hosts_base for n in state.networks if (e := n.endpoint(container_id))), "")
        return _hosts_text(state, container_id, base)

    def _write_hosts(self, state: _State, net: Network) -> None:
        self._write_hosts_of(state, {net.id})

    def _write_hosts_of(self, state: _State, network_ids: set[str]) -> None:
        done: set[str] = set()
        for net in state.networks:
            if net.id not in network_ids:
                continue
            for e in net.endpoints:
                if e.hosts_file and e.container_id not in done:
                    done.add(e.container_id)
                    text = _hosts_text(state, e.container_id, e.hosts_base)
                    with contextlib.suppress(OSError):  # its container is being removed
                        _write_in_place(e.hosts_file, text)

    # -- published ports ---------------------------------------------------------------------
    def publish(
        self, container_id: str, network: str, mappings: Sequence[PortMapping]
    ) -> builtins.list[PortMapping]:
        """DNAT ``mappings`` to the container's address on ``network`` (map elements in this
        root's table: one ``nft`` run that only adds). The caller holds the host ports (see
        ``ports.reserve``); a mapping some other container has already is ``PortInUse``."""
        if not mappings:
            return []
        with self._locked() as state:
            net = state.find(network)
            ep = net.endpoint(container_id)
            if ep is None:
                raise NetworkError(
                    f"container {container_id[:12]} is not attached to network {net.name}"
                )
            new = [_Published(container_id, net.id, ep.ip, m) for m in mappings]
            for p in new:
                clash = next(
                    (q for q in state.ports if _same_host_port(p.mapping, q.mapping)), None
                )
                if clash is not None and clash.container_id != container_id:
                    raise PortInUse(f"port {p.mapping} is already in use")
            keys = {_host_key(p.mapping) for p in new}
            stale = [p for p in state.ports if _host_key(p.mapping) in keys]
            if stale:
                self._unpublish(state, stale)
            state.ports += new
            try:
                script = _port_elements("add", f"ip {self.table}", [(p.mapping, p.ip) for p in new])
                try:
                    self.kernel.nft("\n".join(script) + "\n")
                except NetworkError:  # the table is gone or drifted: make it whole again
                    self._render(state)
            except BaseException:
                state.ports = [p for p in state.ports if p not in new]
                raise
            return list(mappings)

    def unpublish(self, container_id: str) -> None:
        """Remove the DNAT of every port the container publishes (fine if there are none)."""
        with self._locked() as state:
            gone = [p for p in state.ports if p.container_id == container_id]
            if gone:
                self._unpublish(state, gone)

    def _unpublish(self, state: _State, gone: Sequence[_Published]) -> None:
        state.ports = [p for p in state.ports if p not in gone]
        script = _port_elements("delete", f"ip {self.table}", [(p.mapping, p.ip) for p in gone])
        try:
            self.kernel.nft("\n".join(script) + "\n")
        except NetworkError:
            self._render(state)

    def ports(self, container_id: str) -> builtins.list[PortMapping]:
        """The ports the container publishes, by container port then protocol."""
        found = [p.mapping for p in self._read().ports if p.container_id == container_id]
        return sorted(found, key=lambda m: (m.container_port, m.proto, m.host_ip, m.host_port))

    # -- crash recovery ----------------------------------------------------------------------
    def cleanup(self, is_alive: Callable[[str], bool]) -> Cleaned:
        """Remove what dead containers and dead sessions left: the endpoints (leases, veths) and
        published ports of containers for which ``is_alive(id)`` is false, the networks whose
        owner process is gone and that no live container uses, veths on our bridges that no
        endpoint claims; then make the nftables table match the state again."""
        endpoints: list[str] = []
        networks: list[str] = []
        with self._locked() as state:
            dead_ports = [p for p in state.ports if not is_alive(p.container_id)]
            state.ports = [p for p in state.ports if p not in dead_ports]
            for net in list(state.networks):
                for e in net.endpoints:
                    if not is_alive(e.container_id):
                        self._drop_endpoint(state, net, e, nft=False)
                        endpoints.append(e.container_id)
            self._write_hosts_of(state, {n.id for n in state.networks})
            for net in list(state.networks):
                if net.owner is not None and not net.owner.alive() and not net.endpoints:
                    self._remove_network(state, net, nft=False)
                    networks.append(net.name)
            claimed = {e.host_ifname for n in state.networks for e in n.endpoints}
            for ports in self.kernel.ports_of(n.bridge for n in state.networks).values():
                for link in ports:
                    if link not in claimed:
                        with contextlib.suppress(OSError):
                            self.kernel.delete_link(link)
            self._render(state)
        return Cleaned(
            tuple(_unique(endpoints)),
            tuple(_unique(p.container_id for p in dead_ports)),
            tuple(networks),
        )


def _hosts_text(state: _State, cid: str, base: str) -> str:
    own: list[tuple[str, list[str]]] = []
    peers: list[tuple[str, list[str]]] = []
    for net in state.networks:
        me = net.endpoint(cid)
        if me is None:
            continue
        own.append((me.ip, _unique([me.hostname, *me.names()])))
        if net.user_defined:
            peers += [
                (e.ip, e.names())
                for e in sorted(net.endpoints, key=lambda e: e.name)
                if e.container_id != cid
            ]
    return render_hosts(base, own, peers)


def _os_error(what: str, exc: OSError) -> MinidockError:
    """``PrivilegeError`` for a missing capability, else ``NetworkError``."""
    if exc.errno in (errno.EPERM, errno.EACCES):
        return PrivilegeError(f"{what}: {exc.strerror}: networks need root (CAP_NET_ADMIN)")
    return NetworkError(f"{what}: {exc}")


def _attachment(net: Network, ep: Endpoint) -> Attachment:
    return Attachment(
        network=net.name,
        network_id=net.id,
        container_id=ep.container_id,
        ip=ep.ip,
        prefixlen=_prefixlen(net),
        gateway=net.gateway,
        mac=ep.mac,
        host_ifname=ep.host_ifname,
        ifname=ep.ifname,
        aliases=ep.aliases,
    )


def _prefixlen(net: Network) -> int:
    return ipaddress.IPv4Network(net.subnet).prefixlen


def _host_key(m: PortMapping) -> tuple[str, str, int]:
    return (m.proto, m.host_ip, m.host_port)


def _same_host_port(a: PortMapping, b: PortMapping) -> bool:
    return (
        a.proto == b.proto
        and a.host_port == b.host_port
        and (a.host_ip == b.host_ip or "0.0.0.0" in (a.host_ip, b.host_ip))
    )


def _parse_subnet(text: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise UsageError(
            f"invalid subnet {text!r}: expected an IPv4 CIDR such as 10.5.0.0/24"
        ) from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise UsageError(f"invalid subnet {text}: only IPv4 networks are supported")
    if str(net) != text.strip():
        raise UsageError(f"invalid subnet {text}: it should be {net}")
    if net.prefixlen > 30:
        raise UsageError(f"invalid subnet {text}: a network needs at least /30")
    return net


def _parse_gateway(text: str, subnet: ipaddress.IPv4Network) -> str:
    try:
        gw = ipaddress.IPv4Address(text)
    except ValueError:
        raise UsageError(f"invalid gateway {text!r}: expected an IPv4 address") from None
    if gw not in subnet or gw in (subnet.network_address, subnet.broadcast_address):
        raise UsageError(f"gateway {text} is not a host address of subnet {subnet}")
    return str(gw)
