"""Container networks: bridges, veth pairs, address leases, /etc/hosts peers and the nftables rules
for outbound NAT and published ports.

On disk, under ``ROOT/networks/``: the state (JSON) holds every network of the root with its
endpoints (the address leases) and every published port; it is written in place into the older of
two checksummed copies (``state.0``/``state.1``, see ``Networks._save``) under the filelock
``lock`` by whichever process changes it, so xdist workers and the CLI never hand out one address
twice. Subnets are chosen under a second, machine-wide lock (``/run/minidock/subnets.lock`` for
root) because roots share the host's address space; an ordinary user's lock is theirs
(``holder.user_dir``), as the network namespace all their roots' networks live in.

Rootless, the kernel work (the ``Kernel`` seam) is done by the user's network holder, a process
owning a user namespace and a network namespace (``holder.HolderKernel``: the same calls over a
unix socket); the state, the locks and /etc/hosts stay with the calling process.

In the kernel, every object is named so that it can be found again after a crash:

* bridge ``md-<12 hex of the network ID>`` with the gateway address and ``route_localnet=1``;
* veth ``mdv<12 hex of H(container, network)>`` on the host, ``eth<N>`` in the container;
* nftables table ``ip minidock_<10 hex of H(root)>``: one table per root, nothing in anyone
  else's tables (docker's, iptables-nft's). Base chains ``prerouting``/``output`` (DNAT through
  the maps ``dnat_tcp``/``dnat_udp``, keyed by host address and port, and ``dnat_tcp_any``/
  ``dnat_udp_any`` for ``0.0.0.0``), ``postrouting`` (masquerade) and ``forward``.

Rules are nf_tables netlink batches (``nftables``: one transaction each, sent over one socket per
process) built from the same pieces as their ``nft -f`` script (``render_ruleset``, what people
and tests read). No ``nft`` process runs: one cost ~9 ms to add and ~20 ms to delete, where a
batch of map elements costs ~0.1 ms either way. The whole table is rendered from the state when
networks come and go; publishing a port adds map elements and unpublishing deletes exactly those
keys, so no rule is ever touched for a container.

Links and addresses are made by hand-encoded rtnetlink messages (``netlink``) over a plain socket
(``_Netlink``), in microseconds where pyroute2's message classes took 0.05-1.4 ms each, and the
dumps that choosing a subnet, the uplink's MTU and the clean-up read (links, IPv4 addresses and
routes) are decoded by hand too (``_link_row``, ``_addr_row``, ``_route_row``: the few fields
used). pyroute2 is no longer imported here: its import alone cost every session that made a
network 40-60 ms (a fifth of its package, entered through a stand-in ``__init__``; ~0.4 s whole).
It stays the better tool where exhaustive decoding matters more than time, and that is the
tests: ``tests/unit/test_netlink_decode.py`` checks these decoders against its message classes
on the host's own dumps.

The container's side is configured through a socket opened in its namespace by a short-lived thread
that ``setns()``-es there and back, so no process is forked and the calling thread never changes
namespace. Its ``eth0`` gets no IPv6 address (as docker's IPv4-only networks), and host ends are in
hairpin mode. A link is deleted by a daemon thread while the caller waits only until the kernel
announces it gone (~2 ms of the ~20 ms it takes: the rest is an RCU grace period). The veth of a
container leaving its network is not deleted at all once its namespace is dead (the kernel deletes
the pair with it: ``release_link``), and the pytest plugin's removals do not wait for the rest
(``releases_in_background``, ``settle``).

A container being started is attached in two halves (``lease``, then ``connect``) so that its
lease, forwarded ports and /etc/hosts lines are written while its process is being made, and only
the veth waits for its network namespace.
"""

from __future__ import annotations

import _socket
import _thread
import contextlib
import errno
import functools
import ipaddress
import itertools
import json
import os
import re
import select
import struct
import time
from pathlib import Path

from pytest_minidock import _record
from pytest_minidock._record import dataclass, field, replace
from pytest_minidock.digest import sha256 as _sha256
from pytest_minidock.errors import (
    MinidockError,
    NetworkError,
    NetworkNotFound,
    PortInUse,
    PrivilegeError,
    SubnetExhausted,
    UsageError,
)
from pytest_minidock.runtime import nftables
from pytest_minidock.runtime.netlink import (
    NLM_F_CREATE,
    NLM_F_EXCL,
    NLM_F_REPLACE,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    Socket,
    attr,
    attr_str,
    attr_u32,
    attributes,
    chunks,
    error_of,
    message,
)
from pytest_minidock.runtime.state import Owner, now_iso

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
    from typing import Any, Final, Protocol
else:
    Protocol = object  # (the protocol is a plain class at run time)

__all__ = [
    "DEFAULT_POOLS",
    "LINK_MTU",
    "PREDEFINED",
    "Attachment",
    "BridgeMissing",
    "Cleaned",
    "Endpoint",
    "Kernel",
    "Lease",
    "LinuxKernel",
    "Network",
    "Networks",
    "PortMapping",
    "allocate_address",
    "batch_from_wire",
    "bridge_name",
    "check_subnet",
    "choose_subnet",
    "mac_for",
    "releases_in_background",
    "render_hosts",
    "render_ruleset",
    "settle",
    "strip_managed",
    "veth_name",
]

DEFAULT_POOLS: Final = ("10.210.0.0/15", "172.26.0.0/15", "192.168.240.0/20")
"""Where subnets are taken from (as /24s) when none is asked for; see ``choose_subnet``."""
PREDEFINED: Final = ("bridge", "host", "none")
DEFAULT_NETWORK: Final = "bridge"
_RESERVED: Final = frozenset((*PREDEFINED, "default"))
"""Names no user network can have: the pre-defined ones and ``default`` (the bridge's alias)."""
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
class Lease:
    """What ``Networks.lease`` recorded for a container whose process is being made: its
    endpoint on ``network`` (as the network was then) and the ports forwarded to it."""

    network: Network
    endpoint: Endpoint
    mappings: tuple[PortMapping, ...] = ()

    def attachment(self) -> Attachment:
        """The attachment ``connect`` will complete (what ``inspect`` shows)."""
        return _attachment(self.network, self.endpoint)


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
    written: bytes = b""  # what the latest copy on disk holds
    seq: int = 0  # its sequence number, and the slot it is in
    slot: int = 1

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
    return str(_sha256("\0".join(parts).encode()).hexdigest())


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
    raise SubnetExhausted(f"no free address left in subnet {subnet}")


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


def _ruleset(
    table: str, networks: Sequence[Network], ports: Sequence[tuple[PortMapping, str]]
) -> nftables.Batch:
    bridges = [
        nftables.Bridge(n.bridge, n.subnet, n.internal)
        for n in sorted(networks, key=lambda n: n.name)
    ]
    return nftables.ruleset(table, bridges, _dnats(ports))


def render_ruleset(
    table: str, networks: Sequence[Network], ports: Sequence[tuple[PortMapping, str]]
) -> str:
    """The ``nft -f`` script equivalent to the transaction that makes ``table`` hold exactly the
    rules of ``networks`` and ``ports`` ((mapping, container address) pairs); with neither, it
    deletes the table. (The kernel gets it as one nf_tables netlink batch, see ``nftables``.)

    Base chains are added (a no-op when they exist), then flushed and refilled in the same
    transaction: no packet ever sees a half-made table, and hooks are not re-registered.
    """
    return _ruleset(table, networks, ports).script


def batch_from_wire(lines: Sequence[str], messages: Sequence[Sequence[Any]]) -> nftables.Batch:
    """The nf_tables transaction a rootless owner sent its holder: ``lines`` and the messages
    as ``[kind, flags, body in hex]`` (``holder.HolderKernel.nft``)."""
    return nftables.Batch(
        tuple(str(line) for line in lines),
        tuple((int(kind), int(flags), bytes.fromhex(str(body))) for kind, flags, body in messages),
    )


def _dnats(ports: Sequence[tuple[PortMapping, str]]) -> list[nftables.Dnat]:
    return [nftables.Dnat(m.proto, m.host_ip, m.host_port, ip, m.container_port) for m, ip in ports]


_SLOT_MAGIC: Final = b"mdnet\x00\x00\x01"
_MOVED: Final = b"moved: this root's network state is in state.0 and state.1 (a newer minidock)\n"
_SLOT_HEAD: Final = struct.Struct(">8sQQ32s")


def _read_slot(path: Path, slot: int) -> tuple[int, int, bytes] | None:
    """(sequence number, slot, JSON) of a whole copy of the state in ``path``, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        raw = os.read(fd, max(os.fstat(fd).st_size, _SLOT_HEAD.size))
    finally:
        os.close(fd)
    if len(raw) < _SLOT_HEAD.size:
        return None
    magic, seq, length, digest = _SLOT_HEAD.unpack_from(raw)
    data = raw[_SLOT_HEAD.size : _SLOT_HEAD.size + length]
    if magic != _SLOT_MAGIC or len(data) != length or _sha256(data).digest() != digest:
        return None
    return seq, slot, data


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

    def release_link(self, name: str) -> None:
        """Delete the veth ``name`` of a container leaving its network, whose name is not
        needed again at once (``LinuxKernel.release_link``); gone already is fine."""
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

    def nft(self, batch: nftables.Batch) -> None:
        """Apply an nf_tables transaction; ``NetworkError`` if the kernel refuses it."""
        ...


_NLM_F_DUMP: Final = 0x300
_RTM_NEWLINK: Final = 16
_RTM_DELLINK: Final = 17
_RTM_GETLINK: Final = 18
_RTM_NEWADDR: Final = 20
_RTM_GETADDR: Final = 22
_RTM_NEWROUTE: Final = 24
_RTM_GETROUTE: Final = 26
_RTMGRP_LINK: Final = 1
_IFF_UP: Final = 1
_CLONE_NEWNET: Final = 0x40000000
_IFLA_ADDRESS, _IFLA_IFNAME, _IFLA_MTU, _IFLA_MASTER = 1, 3, 4, 10
_IFLA_LINKINFO, _IFLA_AF_SPEC, _IFLA_NET_NS_FD, _IFLA_LINK_NETNSID = 18, 26, 28, 37
_NSID_GONE: Final = -1
"""``IFLA_LINK_NETNSID`` of a link whose peer's network namespace is dead (being cleaned up)."""
_RTM_NEWNSID, _RTM_GETNSID, _NETNSA_NSID = 88, 90, 1
_RTGENMSG: Final = struct.pack("=Bxxx", 0)  # rtgenmsg (AF_UNSPEC), padded
_IFINFO: Final = struct.Struct("=BxHiII")
_IFADDR: Final = struct.Struct("=BBBBi")
_RTMSG: Final = struct.Struct("=BBBBBBBBI")
_U32: Final = struct.Struct("=I")
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_DST, _RTA_OIF, _RTA_TABLE = 1, 4, 15
_RT_TABLE_MAIN: Final = 254
# IFLA_AF_SPEC { AF_INET6 { IFLA_INET6_ADDR_GEN_MODE: none } }: no IPv6 link-local address
_NO_IPV6: Final = attr(_IFLA_AF_SPEC, attr(_socket.AF_INET6, attr(8, b"\x01")))


@functools.cache
def _syscalls() -> Any:
    """The syscall seam's ``setns`` (this module may not use ctypes itself)."""
    from pytest_minidock.runtime._sys import LinuxSyscalls

    return LinuxSyscalls()


def _u32(payload: bytes | None) -> int:
    return int(_U32.unpack_from(payload)[0]) if payload is not None and len(payload) >= 4 else 0


def _text(payload: bytes | None) -> str:
    return payload.split(b"\0", 1)[0].decode(errors="replace") if payload else ""


def _ipv4(payload: bytes | None) -> str:
    return _socket.inet_ntoa(payload) if payload is not None and len(payload) == 4 else ""


# rtnetlink dump replies, decoded by hand: only the few fields used here (``netlink.attributes``)
def _link_row(chunk: bytes) -> tuple[int, str, int, int]:
    """(index, name, MTU, index of its master or 0) of an ``RTM_NEWLINK`` message."""
    index = int(_IFINFO.unpack_from(chunk, 16)[2])
    found = attributes(chunk, 16 + _IFINFO.size)
    name = _text(found.get(_IFLA_IFNAME))
    return index, name, _u32(found.get(_IFLA_MTU)), _u32(found.get(_IFLA_MASTER))


def _addr_row(chunk: bytes) -> tuple[int, str, int]:
    """(link index, IPv4 address, prefix length) of an ``RTM_NEWADDR`` message; the address is
    ``IFA_ADDRESS`` (the peer's on a point-to-point link), else ``IFA_LOCAL``."""
    _, prefixlen, _, _, index = _IFADDR.unpack_from(chunk, 16)
    found = attributes(chunk, 16 + _IFADDR.size)
    ip = _ipv4(found.get(_IFA_ADDRESS)) or _ipv4(found.get(_IFA_LOCAL))
    return int(index), ip, int(prefixlen)


def _route_row(chunk: bytes) -> tuple[str, int, int, int]:
    """(destination or "", destination prefix length, output link index or 0, table) of an IPv4
    ``RTM_NEWROUTE`` message (``RTA_TABLE`` when present: the header's table has 8 bits)."""
    _, dst_len, _, _, table, _, _, _, _ = _RTMSG.unpack_from(chunk, 16)
    found = attributes(chunk, 16 + _RTMSG.size)
    if _RTA_TABLE in found:
        table = _u32(found[_RTA_TABLE])
    return _ipv4(found.get(_RTA_DST)), int(dst_len), _u32(found.get(_RTA_OIF)), int(table)


# rtnetlink messages, encoded by hand (see ``netlink``)
def _link(index: int = 0, *attrs: bytes, up: bool | None = None) -> bytes:
    """An ``ifinfomsg`` for link ``index`` (0: a new one) with ``attrs``; ``up`` sets IFF_UP."""
    flags = _IFF_UP if up else 0
    change = 0 if up is None else _IFF_UP
    return _IFINFO.pack(0, 0, index, flags, change) + b"".join(attrs)


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def _addr_msg(index: int, ip: str, prefixlen: int) -> bytes:
    net = ipaddress.IPv4Network(f"{ip}/{prefixlen}", strict=False)
    packed = ipaddress.IPv4Address(ip).packed
    head = struct.pack("=BBBBi", _socket.AF_INET, prefixlen, 0, 0, index)
    # IFA_LOCAL, IFA_ADDRESS, IFA_BROADCAST
    return head + attr(2, packed) + attr(1, packed) + attr(4, net.broadcast_address.packed)


def _route_msg(gateway: str, oif: int, mtu: int) -> bytes:
    """A static default route via ``gateway`` on ``oif`` (main table) with MTU ``mtu``."""
    head = struct.pack("=BBBBBBBBI", _socket.AF_INET, 0, 0, 0, 254, 4, 0, 1, 0)
    gw = ipaddress.IPv4Address(gateway).packed
    # RTA_GATEWAY, RTA_OIF, RTA_METRICS { RTAX_MTU }
    return head + attr(5, gw) + attr_u32(4, oif) + attr(8, attr_u32(2, mtu))


def _linkinfo(kind: str, data: bytes = b"") -> bytes:
    info = attr_str(1, kind) + (attr(2, data) if data else b"")  # IFLA_INFO_KIND, _DATA
    return attr(_IFLA_LINKINFO, info)


def _in_background(work: Callable[[], None]) -> Callable[[], None]:
    """Run ``work`` (which must catch its errors) in a new thread without waiting for the thread
    to start, as ``threading.Thread.start`` does (~1 ms on a busy machine); the result waits for
    it to end. Like a daemon thread, it does not hold up the interpreter's exit. Where no thread
    can be made, ``work`` runs here and now: a process that unshared its PID namespace (a
    container's monitor, which removes ``--rm`` containers) gets EINVAL for every new thread."""
    done = _thread.allocate_lock()
    done.acquire()

    def run() -> None:
        try:
            work()
        finally:
            done.release()

    try:
        _thread.start_new_thread(run, ())
    except RuntimeError:  # "can't start new thread"
        run()

    def join() -> None:
        with done:
            pass

    return join


_unwaited = _thread._local()
"""Per thread: the depth of ``releases_in_background`` in effect, and the process's pid."""
_pending_lock = _thread.allocate_lock()
_pending: list[tuple[int, Callable[[], None]]] = []
"""(pid, join) of the veth deletions left running by ``releases_in_background`` (``settle``;
a forked child has none of their threads)."""
_settled_at_exit: list[int] = []
"""The pid of the process that registered ``settle`` to run at its exit."""


@contextlib.contextmanager
def releases_in_background() -> Iterator[None]:
    """Within this, in the calling thread, the veth of a container leaving its network
    (``LinuxKernel.release_link``: ``Networks.detach``, as a removal does) is deleted by a
    thread that nobody waits for, where ``detach`` otherwise returns once the kernel has unlisted
    it: ~2-10 ms after the request, the time of an RCU grace period (``synchronize_net``), which
    a removal spent waiting. The requests are made as the (outermost) block ends, after the
    rest of the removal (the kernel's work would compete with it). ``settle`` waits for those
    threads, and so does this process's exit. Meanwhile the link may still be listed (its name
    still taken: ``add_endpoint`` makes way for a new one of the same name). A deletion that
    fails is left to the kernel: the pair goes with the container's network namespace. The
    pytest plugin removes its containers so, and settles as the session ends."""
    depth = _unwaited_depth()
    if not depth:
        _unwaited.later = []
    _unwaited.depth, _unwaited.pid = depth + 1, os.getpid()
    try:
        yield
    finally:
        _unwaited.depth = depth
        if not depth:  # the outermost: now the deletions, not to compete with the rest
            later: list[tuple[int, str]] = _unwaited.later
            _unwaited.later = []
            for index, name in later:
                _delete_unwaited(index, name)


def _unwaited_depth() -> int:
    depth: int = getattr(_unwaited, "depth", 0)
    return depth if getattr(_unwaited, "pid", 0) == os.getpid() else 0


def settle() -> None:
    """Wait for the veth deletions that ``releases_in_background`` left running."""
    me = os.getpid()
    while True:
        with _pending_lock:
            mine = [i for i, (pid, _) in enumerate(_pending) if pid == me]
            if not mine:
                return
            _, join = _pending.pop(mine[-1])
        join()


def _delete_unwaited(index: int, name: str) -> None:
    """Delete link ``index`` (``name``) in a thread; ``settle`` (and the exit) wait for it."""

    def delete() -> None:
        with contextlib.suppress(OSError), _Netlink.open() as nl:
            nl.request(f"deleting {name}", (_link(index), _RTM_DELLINK, 0))

    join = _in_background(delete)
    me = os.getpid()
    with _pending_lock:
        _pending.append((me, join))
        first, _settled_at_exit[:] = me not in _settled_at_exit, [me]
    if first:
        import atexit

        atexit.register(settle)


class _Netlink:
    """An rtnetlink socket in the namespace it was opened in (``groups``: the multicast groups
    it listens to as well)."""

    def __init__(self, sock: Socket) -> None:
        self.nl = sock

    @classmethod
    def open(cls, groups: int = 0) -> _Netlink:
        return cls(Socket(0, groups))  # NETLINK_ROUTE

    @classmethod
    def open_in(cls, ns_fd: int) -> _Netlink:
        """A socket in the netns ``ns_fd``, opened by a thread that enters it and leaves again."""
        return cls.opening_in(ns_fd)()

    @classmethod
    def opening_in(cls, ns_fd: int) -> Callable[[], _Netlink]:
        """``open_in`` started: the thread runs while the caller does other work (making the
        links this socket will configure); call the result for the socket."""
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

        joined = _in_background(enter)

        def join() -> _Netlink:
            joined()
            # opened but could not leave again is fine: the thread, and its namespace, have ended
            for item in box:
                if isinstance(item, _Netlink):
                    return item
            if box and isinstance(box[0], BaseException):
                raise box[0]
            raise OSError("the thread entering the namespace died")

        return join

    def close(self) -> None:
        self.nl.close()

    def __enter__(self) -> _Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.nl.close()

    def request(self, what: str, *requests: tuple[bytes, int, int]) -> None:
        """Send ``(body, type, flags)`` requests in one batch; raise the first error."""
        self.nl.request(what, [(mtype, flags, body) for body, mtype, flags in requests])

    def dump(self, body: bytes, mtype: int) -> list[bytes]:
        """The messages answering a dump request ``mtype`` with ``body`` (the ``RTM_NEW*``
        messages as they came: ``_link_row`` and its siblings read what is needed of them)."""
        seq = self.nl.seq()
        self.nl.sock.send(message(mtype, NLM_F_REQUEST | _NLM_F_DUMP, seq, body))
        out: list[bytes] = []
        while True:
            for t, s, chunk in chunks(self.nl.recv()):
                if s != seq:
                    continue
                if t == NLMSG_DONE:
                    return out
                if t == NLMSG_ERROR:
                    if code := error_of(chunk):
                        raise OSError(code, os.strerror(code))
                    continue
                out.append(chunk)

    def link_index(self, name: str) -> int | None:
        found = self.link(name)
        return found[0] if found is not None else None

    def link(self, name: str) -> tuple[int, int | None] | None:
        """(index, ``IFLA_LINK_NETNSID``) of link ``name``, None if there is none. The ID is
        that of the namespace of its peer (a veth's other end) as this namespace knows it: None
        for a link without a peer elsewhere, ``_NSID_GONE`` once the peer's namespace is dead
        (the kernel deletes the pair with it, a few ms later)."""
        seq = self.nl.seq()
        body = _link(0, attr_str(_IFLA_IFNAME, name))
        self.nl.sock.send(message(_RTM_GETLINK, NLM_F_REQUEST, seq, body))
        while True:
            for t, s, chunk in chunks(self.nl.recv()):
                if s != seq:
                    continue
                if t == _RTM_NEWLINK:
                    index = int(struct.unpack_from("=i", chunk, 20)[0])
                    nsid = attributes(chunk, 16 + _IFINFO.size).get(_IFLA_LINK_NETNSID)
                    peer = (
                        int(struct.unpack_from("=i", nsid)[0]) if nsid and len(nsid) >= 4 else None
                    )
                    return index, peer
                if t == NLMSG_ERROR:
                    code = error_of(chunk)
                    if code == errno.ENODEV:
                        return None
                    raise OSError(code, f"{os.strerror(code)} (looking up {name})")

    def peer_gone(self, nsid: int | None) -> bool:
        """Whether the network namespace of ID ``nsid`` (a link's peer's, see ``link``) is dead:
        unhashed already (``_NSID_GONE``), or its last reference is gone and its clean-up not
        started yet (``RTM_GETNSID`` finds no live namespace of that ID). The kernel then deletes
        the links in it, and their peers, on its own. None (no peer elsewhere): False."""
        if nsid is None:
            return False
        if nsid == _NSID_GONE:
            return True
        seq = self.nl.seq()
        body = _RTGENMSG + attr(_NETNSA_NSID, struct.pack("=i", nsid))
        self.nl.sock.send(message(_RTM_GETNSID, NLM_F_REQUEST, seq, body))
        while True:
            for t, s, chunk in chunks(self.nl.recv()):
                if s != seq:
                    continue
                if t == _RTM_NEWNSID:
                    return False
                if t == NLMSG_ERROR:
                    return error_of(chunk) == errno.ENOENT

    def wait_deleted(self, index: int, done: Callable[[], bool], timeout: float = 30) -> None:
        """Until the kernel announces that link ``index`` is gone (``RTM_DELLINK`` to the link
        group this socket listens to) or ``done()``; a full queue ends the wait at ``done()``."""
        deadline = time.monotonic() + timeout
        while not done():
            ready, _, _ = select.select([self.nl.sock], [], [], 0.002)
            if not ready:
                if time.monotonic() > deadline:
                    raise OSError(errno.ETIMEDOUT, f"link {index} was not deleted in {timeout}s")
                continue
            try:
                buf = self.nl.sock.recv(1 << 18, _socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError as exc:  # ENOBUFS: announcements were lost; wait for the deleter
                if exc.errno != errno.ENOBUFS:
                    raise
                continue
            for t, _, chunk in chunks(buf):
                if t == _RTM_DELLINK and struct.unpack_from("=i", chunk, 20)[0] == index:
                    return


class LinuxKernel:
    """``Kernel`` for real: rtnetlink and nf_tables netlink (hand-encoded messages, hand-decoded
    dumps) and ``/proc/sys``.

    Each rtnetlink call opens its own socket (~20 us): nothing to close, nothing shared with a
    fork. nf_tables batches go through one socket per process (``nftables.commit``).
    """

    def occupied(self) -> list[tuple[ipaddress.IPv4Network, str]]:
        with _Netlink.open() as nl:
            return self._occupied(nl)

    def _occupied(self, nl: _Netlink) -> list[tuple[ipaddress.IPv4Network, str]]:
        names = {row[0]: row[1] for row in map(_link_row, nl.dump(_link(), _RTM_GETLINK))}
        out: list[tuple[ipaddress.IPv4Network, str]] = []
        query = _IFADDR.pack(_socket.AF_INET, 0, 0, 0, 0)
        for index, ip, prefixlen in map(_addr_row, nl.dump(query, _RTM_GETADDR)):
            if not ip:
                continue
            net = ipaddress.IPv4Network(f"{ip}/{prefixlen}", strict=False)
            out.append((net, f"address {ip}/{prefixlen} on {names.get(index, '?')}"))
        for dst, dst_len, oif, _ in map(_route_row, nl.dump(_ROUTES, _RTM_GETROUTE)):
            if not dst or dst_len == 0:
                continue
            net = ipaddress.IPv4Network(f"{dst}/{dst_len}", strict=False)
            dev = names.get(oif, "")
            out.append((net, f"route {net}{' dev ' + dev if dev else ''}"))
        return out

    def uplink_mtu(self) -> int:
        with _Netlink.open() as nl:
            oifs = {
                oif
                for _, dst_len, oif, table in map(_route_row, nl.dump(_ROUTES, _RTM_GETROUTE))
                if dst_len == 0 and table == _RT_TABLE_MAIN
            }
            links = [_link_row(chunk) for chunk in nl.dump(_link(), _RTM_GETLINK)]
        return min([1500, *(mtu for index, _, mtu, _ in links if index in oifs)])

    def link_exists(self, name: str) -> bool:
        with _Netlink.open() as nl:
            return nl.link_index(name) is not None

    def create_bridge(self, name: str, mac: str, address: str, prefixlen: int, mtu: int) -> None:
        with _Netlink.open() as nl:
            index = nl.link_index(name)
            if index is None:
                body = _link(
                    0,
                    attr_str(_IFLA_IFNAME, name),
                    attr(_IFLA_ADDRESS, _mac(mac)),
                    attr_u32(_IFLA_MTU, mtu),
                    _linkinfo("bridge"),
                )
                nl.request(
                    f"creating bridge {name}", (body, _RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL)
                )
                index = nl.link_index(name)
                if index is None:
                    raise OSError(errno.ENODEV, f"bridge {name} vanished after it was made")
            _write_sysctl(f"net/ipv4/conf/{name}/route_localnet", "1")
            nl.request(
                f"configuring bridge {name}",
                (_addr_msg(index, address, prefixlen), _RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE),
                (_link(index, up=True), _RTM_NEWLINK, 0),
            )

    def delete_link(self, name: str) -> None:
        """Delete link ``name``; return once the kernel has taken it off its lists.

        Deleting a veth or a bridge takes ~20 ms, most of it after the link is gone from the
        listing (``netdev_run_todo`` waits for an RCU grace period before freeing it): a daemon
        thread makes the request and waits for that, while this one returns as soon as the
        kernel announces the deletion (~2 ms; the name is free again by then)."""
        self._delete(name, dying=False)

    def release_link(self, name: str) -> None:
        """``delete_link`` for a veth whose name is not needed again soon (a container leaving
        its network): when its peer's network namespace is dead already (the container has
        exited), the kernel is deleting the pair with that namespace, so nothing is asked and
        nothing waited for (that deletion waits for an RCU grace period first: ~4-10 ms, which
        a removal spent waiting); the name may stay taken for those ms (``add_endpoint`` makes
        way for a new link of the same name). Otherwise as ``delete_link``."""
        self._delete(name, dying=True)

    def _delete(self, name: str, *, dying: bool) -> None:
        if dying and _unwaited_depth():  # (releases_in_background)
            with _Netlink.open() as nl:
                found = nl.link(name)
                if found is not None and not nl.peer_gone(found[1]):
                    _unwaited.later.append((found[0], name))
            return
        with _Netlink.open(groups=_RTMGRP_LINK) as watch:
            found = watch.link(name)
            if found is None:
                return
            index, peer_ns = found
            if dying and watch.peer_gone(peer_ns):
                return
            box: list[BaseException | None] = []

            def delete() -> None:
                try:
                    with _Netlink.open() as nl:
                        nl.request(f"deleting {name}", (_link(index), _RTM_DELLINK, 0))
                    box.append(None)
                except BaseException as exc:  # reported to the caller, if it still waits
                    box.append(exc)

            _in_background(delete)
            watch.wait_deleted(index, lambda: bool(box))
        if box and isinstance(box[0], OSError) and box[0].errno != errno.ENODEV:
            raise box[0]  # (ENODEV: deleted meanwhile, e.g. as its netns went away)

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
            inner_socket = _Netlink.opening_in(ns_fd)  # (its thread runs meanwhile)
            try:
                with _Netlink.open() as nl:
                    master = nl.link_index(bridge)
                    if master is None:
                        raise BridgeMissing(f"bridge {bridge} does not exist")
                    peer = _link(
                        0,
                        attr_str(_IFLA_IFNAME, ifname),
                        attr_u32(_IFLA_NET_NS_FD, ns_fd),
                        attr(_IFLA_ADDRESS, _mac(mac)),
                        attr_u32(_IFLA_MTU, mtu),
                    )
                    body = _link(
                        0,
                        attr_str(_IFLA_IFNAME, host_ifname),
                        attr_u32(_IFLA_MASTER, master),
                        attr_u32(_IFLA_MTU, mtu),
                        _linkinfo("veth", attr(1, peer)),  # VETH_INFO_PEER
                        up=True,
                    )
                    # hairpin: with br_netfilter (docker loads it), a member reaching its own
                    # published port through the host is DNAT-ed on the bridge and must go back
                    # out its port (IFLA_INFO_SLAVE_DATA { IFLA_BRPORT_MODE }, as `ip link set
                    # dev X type bridge_slave hairpin on`)
                    hairpin = attr_str(4, "bridge") + attr(5, attr(4, b"\x01"))
                    create = (
                        (body, _RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL),
                        (
                            _link(
                                0,
                                attr_str(_IFLA_IFNAME, host_ifname),
                                attr(_IFLA_LINKINFO, hairpin),
                            ),
                            _RTM_NEWLINK,
                            0,
                        ),
                    )
                    try:
                        nl.request(f"creating veth {host_ifname}", *create)
                    except FileExistsError:
                        # this container's veth on this network, left: by a ``release_link``
                        # whose namespace is still being cleaned up, or a crash; gone, then again
                        self.delete_link(host_ifname)
                        nl.request(f"creating veth {host_ifname}", *create)
            except BaseException:
                with contextlib.suppress(BaseException):
                    inner_socket().close()
                raise
            try:
                with inner_socket() as inner:
                    index = inner.link_index(ifname)
                    if index is None:
                        raise OSError(19, f"{ifname} did not arrive in the namespace of {pid}")
                    requests = [
                        # IPv4 only, as docker does on networks without IPv6: no link-local
                        # address (whose DAD the hairpin's echo would fail)
                        (_link(index, _NO_IPV6), _RTM_NEWLINK, 0),
                        (_link(1, up=True), _RTM_NEWLINK, 0),  # lo
                        (_link(index, up=True), _RTM_NEWLINK, 0),
                        (_addr_msg(index, ip, prefixlen), _RTM_NEWADDR, NLM_F_CREATE),
                    ]
                    if gateway:
                        route = _route_msg(gateway, index, route_mtu)
                        requests.append((route, _RTM_NEWROUTE, NLM_F_CREATE))
                    inner.request(f"configuring {ifname} in process {pid}", *requests)
                # A link that came up without a carrier (the host end, before its peer; the
                # bridge, before its first port forwarded) keeps the noop queue, which drops
                # every packet, until the kernel's link-watch work activates it: ms later on a
                # busy machine, and an ARP request lost meanwhile is retried after 1 s. Asking
                # for a link makes the kernel do that work now (``linkwatch_sync_dev`` in
                # ``rtnl_getlink``): the host end first (whose carrier brings the bridge's).
                with _Netlink.open() as nl:
                    nl.link_index(host_ifname)
                    nl.link_index(bridge)
            except BaseException:
                with contextlib.suppress(OSError):
                    self.delete_link(host_ifname)
                raise
        finally:
            os.close(ns_fd)

    def ports_of(self, bridges: Iterable[str]) -> dict[str, list[str]]:
        with _Netlink.open() as nl:
            links = [_link_row(chunk) for chunk in nl.dump(_link(), _RTM_GETLINK)]
        by_index = {index: name for index, name, _, _ in links}
        wanted = set(bridges)
        out: dict[str, list[str]] = {b: [] for b in wanted if b in by_index.values()}
        for _, name, _, master in links:
            if by_index.get(master) in wanted:
                out[by_index[master]].append(name)
        return out

    def enable_forwarding(self) -> None:
        _write_sysctl("net/ipv4/ip_forward", "1")

    def nft(self, batch: nftables.Batch) -> None:
        try:
            nftables.commit(batch)
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EACCES):
                raise _os_error("cannot change minidock's nftables rules", exc) from exc
            raise NetworkError(f"nftables refused minidock's rules: {exc.strerror}") from exc


_ROUTES: Final = _RTMSG.pack(_socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)


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

    Every change is a read-modify-write of the state under the root's filelock, followed by
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
        self._global_lock_path = global_lock

    @property
    def kernel(self) -> Kernel:
        """``LinuxKernel`` for root; rootless (an ordinary user, or a process that joined the
        user's holder's user namespace, as a container's monitor does), the holder's
        (``holder.HolderKernel``), started on first use: the user's networks live in its
        network namespace."""
        if self._kernel is None:
            from pytest_minidock.capabilities import host_root

            if host_root():  # (false once ``holder.enter`` joined its user namespace)
                self._kernel = LinuxKernel()
            else:
                from pytest_minidock.runtime import holder

                self._kernel = holder.HolderKernel()
        return self._kernel

    @property
    def _global_lock(self) -> Path:
        """The lock under which subnets are chosen: machine-wide for root (roots share the
        host's addresses), per user otherwise (the user's networks share their holder's)."""
        if self._global_lock_path is None:
            from pytest_minidock.capabilities import host_root

            if host_root():
                self._global_lock_path = _GLOBAL_LOCK
            else:
                from pytest_minidock.runtime.holder import user_dir

                self._global_lock_path = Path(user_dir()) / "subnets.lock"
        return self._global_lock_path

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
        """Write the state now (before kernel work, so that a crash leaves a record of it).

        It goes in place into the older of two slot files, ``state.0``/``state.1`` (header:
        magic, sequence number, length and SHA-256 of the JSON), so that a reader always finds
        one whole copy, the latest: a torn one (a crash, or a read during the write) fails its
        checksum. No file is made or renamed: on ext4 a rename over a file makes the kernel write
        the new one's data out first (0.5-5 ms here), and making a file costs a journal entry
        (~1-4 ms while the disk is busy), where a write in place costs ~20 us."""
        data = state.to_json()
        if data == state.written:
            return
        slot, seq = 1 - state.slot, state.seq + 1
        frame = _SLOT_HEAD.pack(_SLOT_MAGIC, seq, len(data), _sha256(data).digest())
        fd = os.open(self.dir / f"state.{slot}", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            os.pwrite(fd, frame + data, 0)  # (a shorter copy leaves old bytes after it: unread)
        finally:
            os.close(fd)
        if seq == 1 and (self.dir / "state.json").exists():  # an older version's: read no more
            # (and not JSON any more: an older minidock sharing this root fails loudly, where
            # without the file it would see no networks and hand their addresses out again)
            (self.dir / "state.json").write_bytes(_MOVED)
        state.written, state.seq, state.slot = data, seq, slot

    def _read(self) -> _State:
        """The latest whole copy of the state (see ``_save``); empty if there is none yet."""
        for attempt in range(50):
            copies = [c for c in (_read_slot(self.dir / f"state.{i}", i) for i in (0, 1)) if c]
            if copies:
                seq, slot, data = max(copies)
                break
            if not any((self.dir / f"state.{i}").exists() for i in (0, 1)):
                try:  # written by an older version
                    data = (self.dir / "state.json").read_bytes()
                except FileNotFoundError:
                    return _State(written=_State().to_json())
                seq, slot = 0, 1
                break
            time.sleep(0.0002 * (attempt + 1))  # both torn: two saves during one read
        else:
            raise NetworkError(
                f"{self.dir}/state.0 and state.1 are corrupt: remove them (minidock forgets "
                "this root's networks) and run `minidock network prune`"
            )
        try:
            state = _State.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            raise NetworkError(f"the network state in {self.dir} is corrupt: {exc}") from exc
        state.written, state.seq, state.slot = data, seq, slot
        return state

    def state_json(self) -> dict[str, Any]:
        """The state as it is recorded (its latest whole copy), as JSON: for tests and people."""
        obj: dict[str, Any] = json.loads(self._read().written)
        return obj

    def _render(self, state: _State) -> None:
        ports = [(p.mapping, p.ip) for p in state.ports]
        self.kernel.nft(_ruleset(self.table, state.networks, ports))

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
        if name in _RESERVED:
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
                nid = os.urandom(32).hex()
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

    def unplug(self, name: str, leaving: Collection[str]) -> bool:
        """Delete the bridge of network ``name`` ahead of its ``remove``, if no container but
        those ``leaving`` (being removed) has an endpoint on it; whether it did.

        Deleting a bridge takes ~20-40 ms, most of it the kernel's (RCU grace periods), so a
        session that is about to remove its containers and then their network unplugs it first
        and overlaps the two. The state is not touched (no lock is taken): ``remove`` then
        finds the bridge gone, as it would after a reboot, and a crash meanwhile leaves a
        network that the next ``cleanup`` removes like any other whose owner is gone."""
        if name in _RESERVED:
            return False
        try:
            net = self._read().find(name)
        except NetworkNotFound:
            return False
        if not net.bridge or any(e.container_id not in leaving for e in net.endpoints):
            return False
        try:
            self.kernel.delete_link(net.bridge)
        except OSError:
            return False
        return True

    def remove(self, name: str, *, force: bool = False) -> None:
        """``docker network rm``: refused while containers are attached, unless ``force``
        (which detaches them). The pre-defined networks cannot be removed."""
        if name in _RESERVED:
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
        remakes its links (same address) when its process changed. (A container being started
        takes the two halves separately: ``lease`` while its process is made, then ``connect``.)
        """
        self._check_attachable(network, aliases)
        with self._locked() as state:
            net = state.find(network)
            old = net.endpoint(container_id)
            if old is not None and old.pid == pid and self.kernel.link_exists(old.host_ifname):
                return _attachment(net, old)
            original = net
            net, ep = self._lease(
                state, net, container_id, pid, name=name, aliases=aliases,
                hosts_file=hosts_file, hostname=hostname,
            )  # fmt: skip
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

    def lease(
        self,
        network: str,
        container_id: str,
        *,
        name: str,
        aliases: Sequence[str] = (),
        hosts_file: Path | str | None = None,
        hostname: str = "",
        mappings: Sequence[PortMapping] = (),
    ) -> Lease:
        """The first half of ``attach`` for a container whose process is being made: its address
        lease and /etc/hosts lines, and its published ``mappings`` forwarded already (as
        ``publish``), in one transaction on the state and one on the nftables maps. ``connect``
        then makes its links; ``detach`` undoes either half."""
        self._check_attachable(network, aliases, make_default=False)
        for attempt in range(2):
            with self._locked() as state:
                default = network in (DEFAULT_NETWORK, "default")
                if attempt or not default or any(n.name == DEFAULT_NETWORK for n in state.networks):
                    net = state.find(network)
                    original = net
                    net, ep = self._lease(
                        state, net, container_id, 0, name=name, aliases=aliases,
                        hosts_file=hosts_file, hostname=hostname,
                    )  # fmt: skip
                    try:
                        self._publish(state, net, container_id, mappings)
                    except BaseException:
                        state.put(original)
                        raise
                    self._write_hosts(state, net)
                    return Lease(net, ep, tuple(mappings))
            self.default()  # not made yet: outside the lock, which making it takes
        raise AssertionError("unreachable")  # pragma: no cover

    def connect(self, lease: Lease, pid: int) -> Attachment:
        """The second half of ``attach``: the veth pair of a ``lease`` into the network namespace
        of ``pid`` (no lock, no state written: the lease recorded everything)."""
        net, ep = lease.network, lease.endpoint
        try:
            try:
                self._add_endpoint(net, ep, pid)
            except BridgeMissing:  # lost (a reboot, someone deleted it): make it again
                with self._locked() as state:
                    self._make_bridge(state.find(net.id))
                    self._render(state)
                self._add_endpoint(net, ep, pid)
        except OSError as exc:
            what = f"cannot attach container {ep.name} to network {net.name}"
            raise _os_error(what, exc) from exc
        return _attachment(net, ep)

    def _check_attachable(
        self, network: str, aliases: Sequence[str], *, make_default: bool = True
    ) -> None:
        if network in ("host", "none"):
            raise NetworkError(
                f"containers cannot be attached to network {network}: it has no endpoints"
            )
        for alias in aliases:
            if not _ALIAS_RE.fullmatch(alias):
                raise UsageError(f"invalid network alias {alias!r}")
        if make_default and network in (DEFAULT_NETWORK, "default"):
            self.default()

    def _lease(
        self,
        state: _State,
        net: Network,
        container_id: str,
        pid: int,
        *,
        name: str,
        aliases: Sequence[str],
        hosts_file: Path | str | None,
        hostname: str,
    ) -> tuple[Network, Endpoint]:
        """Record the container's endpoint on ``net`` in ``state`` (its old address if it had
        one, whose veth is deleted); the network as it is now, and the endpoint."""
        old = net.endpoint(container_id)
        mine = [n.endpoint(container_id) for n in state.networks if n.id != net.id]
        in_use = {e.ifname for e in mine if e is not None}
        ifname = next(f"eth{i}" for i in itertools.count() if f"eth{i}" not in in_use)
        if old is not None:
            self.kernel.delete_link(old.host_ifname)
            ip = old.ip
        else:
            used = [e.ip for e in net.endpoints]
            ip = allocate_address(ipaddress.IPv4Network(net.subnet), net.gateway, used, net.last_ip)
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
        others = tuple(e for e in net.endpoints if e.container_id != container_id)
        net = replace(net, endpoints=(*others, ep), last_ip=ip)
        state.put(net)
        return net, ep

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
            self.kernel.release_link(ep.host_ifname)
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
        root's table: one nf_tables transaction that only adds). The caller holds the host ports
        (see ``ports.reserve``); a mapping some other container has already is ``PortInUse``."""
        if not mappings:
            return []
        with self._locked() as state:
            self._publish(state, state.find(network), container_id, mappings)
            return list(mappings)

    def _publish(
        self, state: _State, net: Network, container_id: str, mappings: Sequence[PortMapping]
    ) -> None:
        if not mappings:
            return
        ep = net.endpoint(container_id)
        if ep is None:
            raise NetworkError(
                f"container {container_id[:12]} is not attached to network {net.name}"
            )
        new = [_Published(container_id, net.id, ep.ip, m) for m in mappings]
        for p in new:
            clash = next((q for q in state.ports if _same_host_port(p.mapping, q.mapping)), None)
            if clash is not None and clash.container_id != container_id:
                raise PortInUse(f"port {p.mapping} is already in use")
        keys = {_host_key(p.mapping) for p in new}
        stale = [p for p in state.ports if _host_key(p.mapping) in keys]
        if stale:
            self._unpublish(state, stale)
        state.ports += new
        try:
            batch = nftables.elements("add", self.table, _dnats([(p.mapping, p.ip) for p in new]))
            try:
                self.kernel.nft(batch)
            except NetworkError:  # the table is gone or drifted: make it whole again
                self._render(state)
        except BaseException:
            state.ports = [p for p in state.ports if p not in new]
            raise

    def unpublish(self, container_id: str) -> None:
        """Remove the DNAT of every port the container publishes (fine if there are none)."""
        with self._locked() as state:
            gone = [p for p in state.ports if p.container_id == container_id]
            if gone:
                self._unpublish(state, gone)

    def _unpublish(self, state: _State, gone: Sequence[_Published]) -> None:
        """Delete the map elements of ``gone`` (exactly those keys; the table is rendered whole
        if one is missing)."""
        state.ports = [p for p in state.ports if p not in gone]
        batch = nftables.elements("delete", self.table, _dnats([(p.mapping, p.ip) for p in gone]))
        try:
            self.kernel.nft(batch)
        except NetworkError:
            self._render(state)

    def target_of(
        self, container_id: str, proto: str, host_ip: str, host_port: int
    ) -> tuple[str, int] | None:
        """Where the container's published ``host_ip:host_port`` (``proto``) leads: its address
        and port (a rootless relay connects there), or None if it publishes no such port."""
        wanted = PortMapping(proto, host_ip, host_port, 0)
        for p in self._read().ports:
            if p.container_id == container_id and _same_host_port(p.mapping, wanted):
                return p.ip, p.mapping.container_port
        return None

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
