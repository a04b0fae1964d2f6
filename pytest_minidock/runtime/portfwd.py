"""Published ports without nftables on the host: the user-space relay of rootless mode.

An ordinary user cannot add DNAT rules on the host, and the containers' network lives in a
network namespace the user owns (the holder's, see ``holder``). So a published port is a socket
bound on the host side by the owner, which makes the reservation atomic as for root, and each
connection is carried in by a relay: it accepts on the host socket, connects inside, and copies
bytes both ways until both directions are closed, passing half-closes on (``shutdown(SHUT_WR)``).
UDP datagrams are relayed per client address through one connected inside socket each.

Two ways of connecting inside:

- **in place** (``relay_published``, what rootless containers use): the relay runs in the
  container's monitor (or the launcher), in a thread that moved into the holder's network
  namespace (``holder.enter_network``); its ``DirectConnector`` connects from there, without
  blocking the relay, to the container's address and port, found in the network state when the
  first connection comes (the owner leases the address while PID 1 is being made). The host
  socket, passed in by the owner, is accepted on all the same: a socket belongs to the namespace
  it was made in, not to the thread's.
- **through a connector** (``Connector``): a thread entering the namespace connects there and
  passes the connected socket back over a ``SOCK_SEQPACKET`` pair with ``SCM_RIGHTS`` (or an
  errno), for a relay living outside.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import selectors
import socket
import struct
import sys

from pytest_minidock.errors import RuntimeFailure

# Neither ``typing`` nor ``threading`` at import: a launcher (``python -S``) imports this module
# for its first container with published ports, and those two cost it ~10 ms (the threads are
# made, and ``threading`` imported, only by a relay or connector).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Final

__all__ = [
    "Connector",
    "DirectConnector",
    "Published",
    "Relay",
    "connect_via",
    "relay_published",
    "serve_connector",
]

_REQUEST: Final = struct.Struct("!4sH")  # proto ("tcp "/"udp "), port; the address follows
_BUFFER: Final = 256 * 1024
_UDP_IDLE: Final = 60.0
_CONNECT_TIMEOUT: Final = 5.0


def serve_connector(control: socket.socket) -> None:
    """The connector's loop (run inside the network namespace): answer each request on
    ``control`` with a connected socket, or with an errno when it cannot connect. Returns when
    the other end closes."""
    while True:
        try:
            request = control.recv(512)
        except OSError:
            return
        if not request:
            return
        proto, port = _REQUEST.unpack_from(request)
        host = request[_REQUEST.size :].decode()
        kind = socket.SOCK_STREAM if proto == b"tcp " else socket.SOCK_DGRAM
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, kind | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(5.0)
            sock.connect((host, port))
            sock.settimeout(None)
        except OSError as exc:
            sock.close()
            code = exc.errno or errno.EHOSTUNREACH
            control.sendmsg([struct.pack("!i", code)])
            continue
        fds = array.array("i", [sock.fileno()])
        control.sendmsg([struct.pack("!i", 0)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
        sock.close()


def connect_via(control: socket.socket, proto: str, host: str, port: int) -> socket.socket:
    """Ask the connector at the other end of ``control`` for a socket connected to
    ``host:port`` inside its namespace. Raises ``OSError`` with the connector's errno."""
    control.send(_REQUEST.pack(f"{proto:<4}".encode(), port) + host.encode())
    fds = array.array("i")
    data, ancdata, _flags, _addr = control.recvmsg(4, socket.CMSG_SPACE(fds.itemsize))
    if not data:
        raise ConnectionAbortedError(errno.ECONNABORTED, "the connector is gone")
    (code,) = struct.unpack("!i", data)
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if code:
        for fd in fds:
            os.close(fd)
        raise OSError(code, f"{proto} {host}:{port}: {os.strerror(code)}")
    if len(fds) != 1:
        raise RuntimeFailure("the connector sent no socket")
    return socket.socket(fileno=fds[0])


class Connector:
    """A connector thread over a socket pair; the thread must run in the target namespace, so
    it is started by ``enter`` (e.g. ``setns`` to a netns file), called in the thread first."""

    def __init__(self, enter: Callable[[], None]) -> None:
        import threading

        self._outside, self._inside = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._lock = threading.Lock()
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                enter()
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                return
            ready.set()
            serve_connector(self._inside)

        self._thread = threading.Thread(target=main, name="minidock-connector", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self.close()
            raise RuntimeFailure(f"the port connector could not start: {failure[0]}")

    def connect(self, proto: str, host: str, port: int) -> socket.socket:
        """A socket connected to ``host:port`` (``proto`` ``tcp`` or ``udp``) in the namespace."""
        with self._lock:
            return connect_via(self._outside, proto, host, port)

    def close(self) -> None:
        """Stop the connector (it returns when its end of the pair is closed)."""
        with contextlib.suppress(OSError):
            self._outside.shutdown(socket.SHUT_RDWR)
        self._outside.close()
        self._thread.join(timeout=5)
        self._inside.close()


class DirectConnector:
    """Connects from the calling process's own network namespace (a relay living inside it)."""

    def connect(self, proto: str, host: str, port: int) -> socket.socket:
        """A socket connected to ``host:port`` (blocking, at most a few seconds)."""
        sock = self._socket(proto, host)
        try:
            sock.settimeout(_CONNECT_TIMEOUT)
            sock.connect((host, port))
            sock.settimeout(None)
        except BaseException:
            sock.close()
            raise
        return sock

    def start(self, proto: str, host: str, port: int) -> socket.socket:
        """A non-blocking socket whose connection to ``host:port`` is under way (writable once
        it is made or failed: ``SO_ERROR`` says which)."""
        sock = self._socket(proto, host)
        sock.setblocking(False)
        code = sock.connect_ex((host, port))
        if code not in (0, errno.EINPROGRESS):
            sock.close()
            raise OSError(code, f"{proto} {host}:{port}: {os.strerror(code)}")
        return sock

    @staticmethod
    def _socket(proto: str, host: str) -> socket.socket:
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.socket(family, kind | socket.SOCK_CLOEXEC)


class _Pipe:
    """One direction of a TCP relay: bytes read from ``src`` and not yet written to ``dst``."""

    __slots__ = ("buffer", "dst", "eof", "shut", "src")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.buffer = b""
        self.eof = False
        self.shut = False


class Relay:
    """Host-side listening sockets relayed into a namespace: ``publish`` takes a host socket and
    its target; a thread runs the relay until ``close`` (``withdraw`` stops one group of
    sockets). ``connector``: a ``Connector`` (the relay is outside) or a ``DirectConnector``
    (the relay's thread is inside: ``enter``, called first in the thread, takes it there; TCP
    connections are then made without blocking the relay). ``paused``: the thread waits for
    ``resume`` before it touches a socket (a monitor that closes every fd but those it keeps
    starts the relay before, and resumes it after)."""

    def __init__(
        self,
        connector: Connector | DirectConnector,
        *,
        paused: bool = False,
        enter: Callable[[], None] | None = None,
    ) -> None:
        import threading

        self._connector = connector
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._lock = threading.Lock()
        self._pending: list[Callable[[], object]] = []
        self._listeners: dict[int, socket.socket] = {}
        self._groups: dict[str, set[socket.socket]] = {}
        self._closed = False
        self._go = threading.Event()
        if not paused:
            self._go.set()
        self._enter = enter
        self._entered = threading.Event()
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._loop, name="minidock-relay", daemon=True)
        self._thread.start()
        self._entered.wait()
        if self._failure:
            self._closed = True
            self._go.set()
            self._thread.join(timeout=5)
            self._selector.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise RuntimeFailure(f"the port relay could not start: {self._failure[0]}")

    # -- public ----------------------------------------------------------------------------
    def publish(
        self,
        proto: str,
        host_socket: socket.socket,
        target_host: str,
        target_port: int,
        *,
        resolve: Callable[[], tuple[str, int] | None] | None = None,
        group: str = "",
    ) -> tuple[str, int]:
        """Relay connections (TCP) or datagrams (UDP) arriving on ``host_socket`` (bound by the
        caller; a TCP one listening) to ``target_host:target_port`` inside, or to where
        ``resolve()`` says when a connection comes (None: nowhere yet, the client is closed);
        returns the host address. ``group``: what ``withdraw`` stops together."""
        host_socket.setblocking(False)
        target = (proto, target_host, target_port, resolve, group)
        if proto == "tcp":
            self._call(
                lambda: self._selector.register(
                    host_socket, selectors.EVENT_READ, ("accept", (host_socket, target))
                )
            )
        else:
            clients: dict[tuple[str, int], socket.socket] = {}
            self._call(
                lambda: self._selector.register(
                    host_socket, selectors.EVENT_READ, ("udp-in", (host_socket, target, clients))
                )
            )
        self._listeners[host_socket.fileno()] = host_socket
        with self._lock:
            self._groups.setdefault(group, set()).add(host_socket)
        name = host_socket.getsockname()
        return str(name[0]), int(name[1])

    def fds(self) -> set[int]:
        """The descriptors the relay uses now (its own and the host sockets)."""
        own = {self._wake_r, self._wake_w, self._selector.fileno()}
        return own | set(self._listeners)

    def resume(self) -> None:
        """Let a ``paused`` relay run."""
        self._go.set()

    def withdraw(self, group: str, timeout: float = 5.0) -> None:
        """Stop relaying ``group``'s host sockets and close them and its connections (done by
        the relay's thread; returns once it is)."""
        import threading

        done = threading.Event()

        def drop() -> None:
            try:
                with self._lock:
                    socks = self._groups.pop(group, set())
                for sock in socks:
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.unregister(sock)
                    self._listeners.pop(sock.fileno(), None)
                    sock.close()
            finally:
                done.set()

        if self._closed or not self._thread.is_alive():
            drop()
            return
        self._go.set()
        self._call(drop)
        done.wait(timeout)

    def close(self) -> None:
        """Stop relaying: close the host sockets and every relayed connection."""
        if self._closed:
            return
        self._closed = True
        self._go.set()
        self._wake()
        self._thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            with contextlib.suppress(OSError):
                if isinstance(key.fileobj, socket.socket):
                    key.fileobj.close()
        self._selector.close()
        for sock in self._listeners.values():
            sock.close()
        with self._lock:
            for socks in self._groups.values():
                for sock in socks:
                    sock.close()
            self._groups.clear()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # -- the loop --------------------------------------------------------------------------
    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def _call(self, fn: Callable[[], object]) -> None:
        with self._lock:
            self._pending.append(fn)
        self._wake()

    def _track(self, group: str, *socks: socket.socket) -> None:
        with self._lock:
            found = self._groups.get(group)
            if found is not None:
                found.update(socks)

    def _untrack(self, group: str, *socks: socket.socket) -> None:
        with self._lock:
            found = self._groups.get(group)
            if found is not None:
                found.difference_update(socks)

    def _loop(self) -> None:
        try:
            if self._enter is not None:  # (this thread's namespace: the process's may differ)
                self._enter()
        except BaseException as exc:  # reported by __init__
            self._failure.append(exc)
        finally:
            self._entered.set()
        if self._failure:
            return
        self._go.wait()
        while not self._closed:
            for key, events in self._selector.select(timeout=_UDP_IDLE):
                kind, data = key.data
                try:
                    self._dispatch(kind, data, key, events)
                except OSError:
                    if kind == "pair":
                        self._drop_pair(data)
                    elif kind == "connecting":
                        client, inside, group = data
                        with contextlib.suppress(KeyError, ValueError):
                            self._selector.unregister(inside)
                        self._untrack(group, client, inside)
                        client.close()
                        inside.close()
            with self._lock:
                pending, self._pending = self._pending, []
            for fn in pending:  # (a socket closed meanwhile must not end the relay)
                with contextlib.suppress(KeyError, ValueError, OSError):
                    fn()

    def _dispatch(self, kind: str, data: Any, key: selectors.SelectorKey, events: int) -> None:
        if kind == "wake":
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        elif kind == "accept":
            listener, target = data
            self._accept(listener, target)
        elif kind == "connecting":
            self._connected(*data)
        elif kind == "udp-in":
            self._udp_in(*data)
        elif kind == "udp-back":
            self._udp_back(*data)
        else:  # "pair": a TCP connection pair, readable or writable
            self._pump(data, key, events)

    def _accept(self, listener: socket.socket, target: tuple[Any, ...]) -> None:
        try:
            client, _ = listener.accept()
        except BlockingIOError:
            return
        _proto, host, port, resolve, group = target
        try:
            if resolve is not None:
                found = resolve()
                if found is None:
                    raise ConnectionRefusedError(errno.ECONNREFUSED, "no target yet")
                host, port = found
            if isinstance(self._connector, DirectConnector):  # connected without waiting here
                inside = self._connector.start("tcp", host, port)
                self._track(group, client, inside)
                self._selector.register(
                    inside, selectors.EVENT_WRITE, ("connecting", (client, inside, group))
                )
                return
            inside = self._connector.connect("tcp", host, port)
        except OSError:
            client.close()  # refused inside: the client sees its connection closed
            return
        self._track(group, client, inside)
        self._pair(client, inside, group)

    def _connected(self, client: socket.socket, inside: socket.socket, group: str) -> None:
        """A ``DirectConnector`` connection is made (or failed: the client is closed)."""
        self._selector.unregister(inside)
        if inside.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self._untrack(group, client, inside)
            inside.close()
            client.close()
            return
        self._pair(client, inside, group)

    def _pair(self, client: socket.socket, inside: socket.socket, group: str) -> None:
        client.setblocking(False)
        inside.setblocking(False)
        pair = (_Pipe(client, inside), _Pipe(inside, client))
        self._selector.register(client, selectors.EVENT_READ, ("pair", pair))
        self._selector.register(inside, selectors.EVENT_READ, ("pair", pair))

    def _interest(self, pair: tuple[_Pipe, _Pipe]) -> None:
        """Re-register both sockets of a pair for what they wait on now."""
        for sock in (pair[0].src, pair[1].src):
            events = 0
            for pipe in pair:
                if pipe.src is sock and not pipe.eof and not pipe.buffer:  # room to read
                    events |= selectors.EVENT_READ
                if pipe.dst is sock and pipe.buffer:
                    events |= selectors.EVENT_WRITE
            key = self._selector.get_map().get(sock.fileno())
            if events and key is None:
                self._selector.register(sock, events, ("pair", pair))
            elif events and key is not None and key.events != events:
                self._selector.modify(sock, events, ("pair", pair))
            elif not events and key is not None:
                self._selector.unregister(sock)

    def _pump(self, pair: tuple[_Pipe, _Pipe], key: selectors.SelectorKey, events: int) -> None:
        sock = key.fileobj
        for pipe in pair:
            if pipe.src is sock and events & selectors.EVENT_READ and not pipe.buffer:
                try:
                    chunk = pipe.src.recv(_BUFFER)
                except BlockingIOError:
                    chunk = None
                if chunk == b"":
                    pipe.eof = True
                elif chunk:
                    pipe.buffer = chunk
            if pipe.buffer:  # flush at once: most sends complete without waiting
                with contextlib.suppress(BlockingIOError):
                    pipe.buffer = pipe.buffer[pipe.dst.send(pipe.buffer) :]
            if pipe.eof and not pipe.buffer and not pipe.shut:
                pipe.shut = True
                with contextlib.suppress(OSError):
                    pipe.dst.shutdown(socket.SHUT_WR)  # pass the half-close on
        if all(p.shut for p in pair):
            self._drop_pair(pair)
            return
        self._interest(pair)

    def _drop_pair(self, pair: object) -> None:
        for pipe in pair:  # type: ignore[attr-defined]
            for sock in (pipe.src, pipe.dst):
                with contextlib.suppress(KeyError, ValueError):
                    self._selector.unregister(sock)
                with self._lock:
                    for socks in self._groups.values():
                        socks.discard(sock)
                sock.close()

    def _udp_in(
        self,
        listener: socket.socket,
        target: tuple[Any, ...],
        clients: dict[tuple[str, int], socket.socket],
    ) -> None:
        try:
            data, addr = listener.recvfrom(65535)
        except BlockingIOError:
            return
        inside = clients.get(addr)
        if inside is None:
            _proto, host, port, resolve, group = target
            try:
                if resolve is not None:
                    found = resolve()
                    if found is None:
                        return
                    host, port = found
                inside = self._connector.connect("udp", host, port)
            except OSError:
                return
            inside.setblocking(False)
            clients[addr] = inside
            self._track(group, inside)
            self._selector.register(
                inside, selectors.EVENT_READ, ("udp-back", (inside, listener, addr))
            )
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            inside.send(data)

    def _udp_back(
        self, inside: socket.socket, listener: socket.socket, addr: tuple[str, int]
    ) -> None:
        with contextlib.suppress(BlockingIOError, ConnectionRefusedError):
            listener.sendto(inside.recv(65535), addr)


# -- rootless containers' published ports ---------------------------------------------------------
class Published:
    """One container's host sockets relayed in place (``relay_published``)."""

    def __init__(self, relay: Relay, group: str) -> None:
        self.relay = relay
        self.group = group

    def fds(self) -> set[int]:
        """The descriptors to keep open (a monitor closes all others)."""
        return self.relay.fds()

    def resume(self) -> None:
        """Start relaying (when made ``paused``)."""
        self.relay.resume()

    def close(self) -> None:
        """Stop relaying the container's ports and close its copies of the host sockets (the
        ports are free once the monitor's own copies are closed too)."""
        self.relay.withdraw(self.group)


_shared: list[tuple[int, Relay]] = []  # (pid, relay): the process's relay (not a forked copy's)


def relay_published(
    root: str, container_id: str, port_fds: Sequence[int], *, paused: bool = False
) -> Published | None:
    """Relay the published host ports of a rootless container, held by ``port_fds`` (bound
    outside, in the host's network namespace, by its owner), to the container's address and
    ports: a thread of this process (one for all the containers it relays, the launcher's
    included), moved into the holder's network namespace, accepts on copies of them and
    connects from there.

    None when there is nothing to relay: no ports, or not rootless (this process did not join
    a holder: nftables forwards root's ports). ``paused``: see ``Relay``. Call ``close`` on the
    result when the container has exited, before its port sockets are closed."""
    if not port_fds:
        return None
    # not imported: not joined either (a root owner's monitor or launcher forwards its ports
    # through nftables and spares its start the import, ~1-2 ms)
    holder = sys.modules.get("pytest_minidock.runtime.holder")
    if holder is None or not holder.joined():
        return None
    from pytest_minidock.runtime.network import Networks

    networks = Networks(root)
    pid = os.getpid()
    if _shared and _shared[0][0] == pid:
        relay = _shared[0][1]
    else:
        relay = Relay(DirectConnector(), paused=paused, enter=holder.enter_network)
        _shared[:] = [(pid, relay)]
    for fd in port_fds:
        host = socket.socket(fileno=os.dup(fd))
        try:
            proto = "tcp" if host.type == socket.SOCK_STREAM else "udp"
            if proto == "tcp":
                host.listen(128)
            ip, port = host.getsockname()[:2]
            resolve = _resolver(networks, container_id, proto, str(ip), int(port))
            relay.publish(proto, host, str(ip), int(port), resolve=resolve, group=container_id)
        except BaseException:
            host.close()
            relay.withdraw(container_id)
            raise
    return Published(relay, container_id)


def _resolver(
    networks: Any, container_id: str, proto: str, ip: str, port: int
) -> Callable[[], tuple[str, int] | None]:
    """Where a published port leads (the container's address and port), from the network state
    once there, then remembered."""
    found: list[tuple[str, int]] = []

    def resolve() -> tuple[str, int] | None:
        if not found:
            target = networks.target_of(container_id, proto, ip, port)
            if target is None:
                return None
            found.append(target)
        return found[0]

    return resolve
