"""Published ports without nftables: a user-space relay for rootless mode.

An ordinary user cannot add DNAT rules on the host, and the containers' network lives in a
network namespace the user owns. So a published port is a socket bound on the host side (by the
process outside, which makes the reservation atomic, as for root), and each connection is carried
in by two cooperating parts:

- the **connector** lives inside the network namespace. Asked over a ``SOCK_SEQPACKET`` pair
  for ``tcp 10.88.0.2 80``, it connects there and passes the connected socket back with
  ``SCM_RIGHTS`` (or an errno when the connection is refused);
- the **relay** lives outside. It accepts on the host socket, asks the connector, and copies bytes
  both ways until both directions are closed, passing half-closes on (``shutdown(SHUT_WR)``).
  UDP datagrams are relayed per client address through one connected inside socket each.

This module is groundwork for issue 8 (rootless mode): it is tested between the host and a network
namespace a privileged test makes; wiring it to rootless networks is the next step.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import selectors
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any, Final

from pytest_minidock.errors import RuntimeFailure

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Connector", "Relay", "connect_via", "serve_connector"]

_REQUEST: Final = struct.Struct("!4sH")  # proto ("tcp "/"udp "), port; the address follows
_BUFFER: Final = 256 * 1024
_UDP_IDLE: Final = 60.0


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
    """Host-side listening sockets relayed through a ``Connector``: ``publish`` binds (or takes)
    a host socket for a target; a thread runs the relay until ``close``."""

    def __init__(self, connector: Connector) -> None:
        self._connector = connector
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._lock = threading.Lock()
        self._pending: list[Callable[[], object]] = []
        self._listeners: dict[int, socket.socket] = {}
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="minidock-relay", daemon=True)
        self._thread.start()

    # -- public ----------------------------------------------------------------------------
    def publish(
        self, proto: str, host_socket: socket.socket, target_host: str, target_port: int
    ) -> tuple[str, int]:
        """Relay connections (TCP) or datagrams (UDP) arriving on ``host_socket`` (bound by the
        caller; a TCP one listening) to ``target_host:target_port`` inside; returns the host
        address."""
        host_socket.setblocking(False)
        target = (proto, target_host, target_port)
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
        name = host_socket.getsockname()
        return str(name[0]), int(name[1])

    def close(self) -> None:
        """Stop relaying: close the host sockets and every relayed connection."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        self._thread.join(timeout=5)
        for key in list(self._selector.get_map().values()):
            with contextlib.suppress(OSError):
                if isinstance(key.fileobj, socket.socket):
                    key.fileobj.close()
        self._selector.close()
        for sock in self._listeners.values():
            sock.close()
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

    def _loop(self) -> None:
        while not self._closed:
            for key, events in self._selector.select(timeout=_UDP_IDLE):
                kind, data = key.data
                try:
                    self._dispatch(kind, data, key, events)
                except OSError:
                    if kind in ("pipe-in", "pipe-out"):
                        self._drop_pair(data)
            with self._lock:
                pending, self._pending = self._pending, []
            for fn in pending:
                fn()

    def _dispatch(self, kind: str, data: Any, key: selectors.SelectorKey, events: int) -> None:
        if kind == "wake":
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 4096)
        elif kind == "accept":
            listener, (_proto, host, port) = data
            self._accept(listener, host, port)
        elif kind == "udp-in":
            self._udp_in(*data)
        elif kind == "udp-back":
            self._udp_back(*data)
        else:  # "pair": a TCP connection pair, readable or writable
            self._pump(data, key, events)

    def _accept(self, listener: socket.socket, host: str, port: int) -> None:
        try:
            client, _ = listener.accept()
        except BlockingIOError:
            return
        try:
            inside = self._connector.connect("tcp", host, port)
        except OSError:
            client.close()  # refused inside: the client sees its connection closed
            return
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
                sock.close()

    def _udp_in(
        self,
        listener: socket.socket,
        target: tuple[str, str, int],
        clients: dict[tuple[str, int], socket.socket],
    ) -> None:
        try:
            data, addr = listener.recvfrom(65535)
        except BlockingIOError:
            return
        inside = clients.get(addr)
        if inside is None:
            try:
                inside = self._connector.connect("udp", target[1], target[2])
            except OSError:
                return
            inside.setblocking(False)
            clients[addr] = inside
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
