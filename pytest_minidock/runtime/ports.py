"""Published ports: docker's ``-p``/``-P`` parsed, host ports reserved without a race, the DNAT
handed to ``network.Networks``, and the output of ``minidock port``.

How a published port works (docker's ``userland-proxy=false`` design, measured in
``benchmarks/bench_ports.py``):

1. ``reserve`` binds one socket per host port, port 0 letting the kernel pick a free one. Binding
   *is* the check: two workers can never get the same port, and a taken port fails at once with
   ``PortInUse`` naming it, closing whatever this call had bound. The sockets (TCP ones are bound
   but never listen) are the reservation: whoever lives as long as the container (its monitor)
   keeps them open, so nothing else on the host can take the port meanwhile.
2. ``publish`` adds the ports to the root's nftables maps: ``prerouting``/``output`` DNAT a new
   connection to ``IP:PORT`` (or any local address for ``0.0.0.0``) to the container's address.
   The reservation never sees a packet: DNAT rewrites the destination before the socket lookup.
   For 127.0.0.1 the bridge has ``route_localnet=1`` and loopback sources going out of it are
   masqueraded to the gateway, so replies come back.
3. The kernel forwards: TCP (half-closes included) and UDP at veth speed, no copying process.

Rootless (an ordinary user: no nftables on the host), the same reservation is relayed in by the
container's monitor (``portfwd.relay_published``), which accepts on it: a TCP reservation then
listens from the start, with ``SO_REUSEADDR``, so that the port can be reserved again at once
after its container is gone (the relay's connections close first and linger in TIME_WAIT on the
host port); a listening socket still refuses every other bind of its port, reusing or not.

No pyroute2 here: ``network`` owns the kernel.
"""

from __future__ import annotations

import _socket
import errno
import ipaddress

from pytest_minidock._record import dataclass
from pytest_minidock.errors import NetworkError, PortInUse, UsageError
from pytest_minidock.runtime.network import PortMapping

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from types import TracebackType
    from typing import Any, Final

    from pytest_minidock.runtime.network import Networks

__all__ = [
    "DEFAULT_HOST_IP",
    "PortSpec",
    "PublishedPorts",
    "expose_all",
    "format_port",
    "parse_port_key",
    "parse_publish",
    "ports_inspect",
    "publish",
    "reserve",
    "unpublish",
]

DEFAULT_HOST_IP: Final = "127.0.0.1"
"""Where ``-p 8080:80`` listens: only this host (docker's default is every address)."""
_PROTOS: Final = ("tcp", "udp")


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One container port to publish, as ``-p`` asked for it.

    ``host_port`` 0 means a free port chosen at ``reserve``; ``host_port_end`` above
    ``host_port`` means "any free port of that range" (docker's ``-p 8000-8010:80``).
    ``host_ip`` empty means the default (``DEFAULT_HOST_IP``).
    """

    container_port: int
    proto: str = "tcp"
    host_ip: str = ""
    host_port: int = 0
    host_port_end: int = 0

    def __str__(self) -> str:
        host = str(self.host_port or "")
        if self.host_port_end > self.host_port:
            host += f"-{self.host_port_end}"
        ip = f"{self.host_ip}:" if self.host_ip else ""
        return f"{ip}{host}:{self.container_port}/{self.proto}" if ip or host else self.key

    @property
    def key(self) -> str:
        """``80/tcp``: the container side, as docker names exposed ports."""
        return f"{self.container_port}/{self.proto}"


def _port_range(text: str) -> tuple[int, int]:
    """``8000`` or ``8000-8010`` as (start, end); ValueError if not ports or a reversed range."""
    start, dash, end = text.partition("-")
    if not start.isdigit() or (dash and not end.isdigit()):
        raise ValueError(text)
    first, last = int(start), int(end) if dash else int(start)
    if last > 65535 or last < first:
        raise ValueError(text)
    return first, last


def parse_publish(text: str) -> list[PortSpec]:
    """``-p [IP:][HOSTPORT:]CONTAINERPORT[/tcp|udp]``, ranges too, with docker's errors."""
    raw = text.strip()
    parts = raw.split(":")
    container = parts[-1]
    host = parts[-2] if len(parts) >= 2 else ""
    ip = ":".join(parts[:-2]) if len(parts) >= 3 else ""
    port_text, _, proto = container.partition("/")
    proto = (proto or "tcp").lower()
    if ip.startswith("["):
        ip = ip.removeprefix("[").removesuffix("]")
    if ip:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            raise UsageError(f"invalid IP address: {ip}") from None
        if address.version != 4:
            raise UsageError(f"invalid IP address {ip} in {raw!r}: only IPv4 can be published")
    if not port_text:
        raise UsageError(f"no port specified: {raw}<empty>")
    try:
        first, last = _port_range(port_text)
        if first == 0:
            raise ValueError(port_text)
    except ValueError:
        raise UsageError(f"invalid containerPort: {port_text}") from None
    host_first = host_last = 0
    if host:
        try:
            host_first, host_last = _port_range(host)
        except ValueError:
            raise UsageError(f"invalid hostPort: {host}") from None
        if last - first != host_last - host_first and last != first:
            raise UsageError(
                f"invalid ranges specified for container and host Ports: {port_text} and {host}"
            )
    if proto not in _PROTOS:
        raise UsageError(f"invalid proto: {proto} (tcp and udp can be published)")
    if last == first and host_last != host_first:  # any free port of the host range
        return [PortSpec(first, proto, ip, host_first, host_last)]
    return [
        PortSpec(first + i, proto, ip, host_first + i if host else 0)
        for i in range(last - first + 1)
    ]


def parse_port_key(text: str) -> tuple[int, str]:
    """``80``, ``80/tcp`` or ``53/udp`` as (port, proto)."""
    port, _, proto = text.strip().partition("/")
    proto = (proto or "tcp").lower()
    if not port.isdigit() or not 0 < int(port) <= 65535 or proto not in _PROTOS:
        raise UsageError(f"invalid port {text!r}: expected PORT[/tcp|udp]")
    return int(port), proto


def expose_all(exposed: Iterable[str], host_ip: str = "") -> list[PortSpec]:
    """``-P``: every EXPOSEd port (``80/tcp``, ``53/udp``, ``8000-8002``) to a free host port."""
    out: list[PortSpec] = []
    for item in exposed:
        ports, _, proto = item.strip().partition("/")
        proto = (proto or "tcp").lower()
        try:
            first, last = _port_range(ports)
        except ValueError:
            raise UsageError(f"invalid exposed port {item!r}") from None
        if proto not in _PROTOS:
            raise UsageError(f"invalid exposed port {item!r}: tcp and udp can be published")
        out += [PortSpec(p, proto, host_ip) for p in range(first, last + 1)]
    return _unique_specs(out)


def _unique_specs(specs: Iterable[PortSpec]) -> list[PortSpec]:
    return list(dict.fromkeys(specs))


@dataclass(frozen=True, slots=True)
class PublishedPorts:
    """Reserved host ports: ``mappings`` (host port resolved) and the ``sockets`` holding them.

    Keep the sockets open for as long as the container lives (pass ``fds()`` to its monitor),
    then ``close()``; the ports are free again once every copy of them is closed.
    """

    mappings: tuple[PortMapping, ...]
    sockets: tuple[_socket.socket, ...]

    def fds(self) -> list[int]:
        return [s.fileno() for s in self.sockets]

    def close(self) -> None:
        for s in self.sockets:
            s.close()

    def __enter__(self) -> PublishedPorts:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _bind(ip: str, port: int, proto: str, *, relayed: bool = False) -> _socket.socket:
    kind = _socket.SOCK_STREAM if proto == "tcp" else _socket.SOCK_DGRAM
    sock = _socket.socket(_socket.AF_INET, kind | _socket.SOCK_CLOEXEC)
    try:
        listen = relayed and proto == "tcp"
        if listen:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        sock.bind((ip, port))
        if listen:
            sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve(
    specs: Sequence[PortSpec],
    default_host_ip: str = DEFAULT_HOST_IP,
    *,
    relayed: bool | None = None,
) -> PublishedPorts:
    """Bind a socket for each spec's host port, atomically: all of them, or ``PortInUse``/
    ``NetworkError`` with everything closed again. ``relayed``: the ports are relayed rather
    than forwarded by nftables (default: rootless, i.e. not root on the host), see the module's
    doc."""
    if relayed is None:  # (as the networks' kernel is chosen: ``Networks.kernel``)
        from pytest_minidock.capabilities import host_root

        relayed = not host_root()
    sockets: list[_socket.socket] = []
    mappings: list[PortMapping] = []
    try:
        for spec in specs:
            ip = spec.host_ip or default_host_ip
            last = max(spec.host_port, spec.host_port_end)
            candidates = range(spec.host_port, last + 1)
            for port in candidates:
                try:
                    sock = _bind(ip, port, spec.proto, relayed=relayed)
                except OSError as exc:
                    if exc.errno == errno.EADDRINUSE:
                        if port != last:
                            continue
                        if len(candidates) > 1:
                            raise PortInUse(
                                f"ports {ip}:{spec.host_port}-{last}/{spec.proto} are all in use"
                            ) from None
                        raise PortInUse(
                            f"port {ip}:{port}/{spec.proto} is already in use: choose another "
                            "host port (or 0 for a free one)"
                        ) from None
                    raise NetworkError(
                        f"cannot bind {ip}:{port}/{spec.proto}: {exc.strerror}"
                    ) from exc
                sockets.append(sock)
                chosen = sock.getsockname()[1]
                mappings.append(PortMapping(spec.proto, ip, chosen, spec.container_port))
                break
    except BaseException:
        for s in sockets:
            s.close()
        raise
    return PublishedPorts(tuple(mappings), tuple(sockets))


def publish(
    networks: Networks, container_id: str, network: str, reserved: PublishedPorts
) -> list[PortMapping]:
    """Forward the reserved host ports to the container's address on ``network``."""
    return networks.publish(container_id, network, reserved.mappings)


def unpublish(networks: Networks, container_id: str) -> None:
    """Stop forwarding the container's ports (its reservation sockets are the caller's)."""
    networks.unpublish(container_id)


def format_port(mappings: Sequence[PortMapping], port: str | None = None, name: str = "") -> str:
    """``minidock port NAME [PORT]``'s output: ``80/tcp -> 127.0.0.1:32768`` lines, or with
    ``PORT`` the host addresses only; ``UsageError`` if ``PORT`` is not published."""
    ordered = sorted(mappings, key=lambda m: (m.container_port, m.proto, m.host_ip, m.host_port))
    if port is None:
        lines = [f"{m.container_port}/{m.proto} -> {m.host_ip}:{m.host_port}" for m in ordered]
    else:
        number, proto = parse_port_key(port)
        lines = [
            f"{m.host_ip}:{m.host_port}"
            for m in ordered
            if (m.container_port, m.proto) == (number, proto)
        ]
        if not lines:
            raise UsageError(f"no public port '{number}/{proto}' published for {name}")
    return "".join(line + "\n" for line in lines)


def ports_inspect(
    mappings: Sequence[PortMapping], exposed: Iterable[str] = ()
) -> dict[str, list[dict[str, str]] | None]:
    """Docker's ``NetworkSettings.Ports``: ``{"80/tcp": [{"HostIp", "HostPort"}], "53/udp":
    None}`` (None for an exposed port that is not published)."""
    out: dict[str, Any] = {}
    for spec in expose_all(exposed):
        out.setdefault(spec.key, None)
    for m in sorted(mappings, key=lambda m: (m.container_port, m.proto, m.host_port)):
        entry = {"HostIp": m.host_ip, "HostPort": str(m.host_port)}
        key = f"{m.container_port}/{m.proto}"
        if out.get(key) is None:
            out[key] = []
        out[key].append(entry)
    return out
