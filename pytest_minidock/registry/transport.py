"""HTTP for the registry client: the ``Transport`` seam and its socket implementation.

A transport sends one request and returns the response with its body unread; it does no retries,
no redirects and no authentication (``session`` does those) and raises ``OSError`` or
``ProtocolError`` as they come (``failures`` translates them). ``StdlibTransport`` speaks
HTTP/1.1 itself over ``socket`` (and ``ssl``, imported for the first ``https`` URL only): the
registry API needs requests with a length-delimited body and responses framed by
``Content-Length``, ``chunked`` or the end of the connection, and ``http.client`` would cost a
``minidock pull`` ~30 ms of imports (``email``, ``ssl``) before the first byte. It keeps idle
keep-alive connections per scheme, host and TLS mode, so a pull's many requests reuse a few
connections; a pooled connection the server has closed meanwhile is replaced transparently.
Request bodies are ``bytes`` or a ``FileSlice`` (sent with ``sendfile``), both of which can be
sent again on a retry.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from pytest_minidock._record import dataclass

if TYPE_CHECKING:
    import ssl
    from collections.abc import Mapping
    from pathlib import Path

__all__ = [
    "Body",
    "FileSlice",
    "IncompleteRead",
    "ProtocolError",
    "RemoteDisconnected",
    "Response",
    "StdlibTransport",
    "Transport",
    "drain",
    "network_errors",
]

_DRAIN_LIMIT = 1 << 16
_RECV = 1 << 16
_MAX_HEAD = 1 << 20
"""The most bytes of status line and headers accepted (a registry sends a few hundred)."""
_INLINE_BODY = 1 << 16
"""Request bodies up to this size go out in the same ``send`` as the head."""


class ProtocolError(Exception):
    """The peer does not speak HTTP/1.x as it should (``http.client.HTTPException``'s role)."""


class IncompleteRead(ProtocolError):
    """A body that ended before its announced length: ``partial`` bytes arrived in the read
    that failed, ``expected`` more were due (None when unknown)."""

    def __init__(self, partial: bytes, expected: int | None = None) -> None:
        super().__init__(partial, expected)
        self.partial = partial
        self.expected = expected

    def __str__(self) -> str:
        more = f", {self.expected} more expected" if self.expected is not None else ""
        return f"IncompleteRead({len(self.partial)} bytes read{more})"


class RemoteDisconnected(ConnectionResetError, ProtocolError):
    """The server closed the connection without answering."""


_OWN_ERRORS: tuple[type[BaseException], ...] = (OSError, ProtocolError)


def network_errors() -> tuple[type[BaseException], ...]:
    """What a transport raises for a failed exchange: ``OSError`` and ``ProtocolError``, plus
    ``http.client.HTTPException`` once ``http.client`` is loaded (a transport built on it)."""
    foreign = sys.modules.get("http.client")
    if foreign is None:
        return _OWN_ERRORS
    return (*_OWN_ERRORS, foreign.HTTPException)


@dataclass(frozen=True, slots=True)
class FileSlice:
    """``length`` bytes of the file at ``path`` from ``offset``: a body that can be sent again."""

    path: Path
    offset: int
    length: int


Body = bytes | FileSlice | None


class Response(Protocol):
    """A response whose body is read by the caller, who must ``close()`` it."""

    @property
    def status(self) -> int: ...

    @property
    def reason(self) -> str: ...

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (case-insensitive; repeated headers joined by ``, ``),
        or None."""

    def read(self, amt: int | None = None) -> bytes:
        """Up to ``amt`` bytes of the body (all of it when None)."""

    def read1(self, amt: int) -> bytes:
        """What has arrived of the body, up to ``amt`` bytes, waiting for at most one receive;
        ``b""`` at its end. A body cut short raises ``IncompleteRead``."""

    def close(self) -> None:
        """Release the connection (back to the pool when the body was read to the end)."""


class Transport(Protocol):
    """Sends one HTTP request; the seam tests replace with a scripted fake."""

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body = None,
        *,
        verify_tls: bool = True,
    ) -> Response:
        """Send the request and return the response with its body unread."""

    def close(self) -> None:
        """Close every idle connection."""


_Key = tuple[str, str, bool]


class _Connection:
    """One socket (plain or TLS) and the bytes received beyond what was consumed."""

    __slots__ = ("buf", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock: socket.socket | None = sock
        self.buf = b""

    def recv(self, n: int) -> bytes:
        """Buffered bytes first, else at most one receive of up to ``n`` bytes."""
        if self.buf:
            data, self.buf = self.buf[:n], self.buf[n:]
            return data
        assert self.sock is not None
        return self.sock.recv(n)

    def recv_into(self, view: memoryview) -> int:
        """``recv`` into ``view``: buffered bytes first, else at most one receive."""
        if self.buf:
            n = min(len(view), len(self.buf))
            view[:n] = self.buf[:n]
            self.buf = self.buf[n:]
            return n
        assert self.sock is not None
        return self.sock.recv_into(view)

    def line(self, limit: int = _MAX_HEAD, *, status: bool = False) -> bytes:
        """One CRLF-terminated line (without it); RemoteDisconnected at a clean EOF first.
        A ``status`` line must start with ``HTTP/``: anything else fails as soon as it shows
        (a TLS server's alert has no line end to wait for)."""
        while True:
            if status and self.buf[:5] != b"HTTP/"[: len(self.buf)]:
                raise ProtocolError(f"not an HTTP/1.x status line: {self.buf[:40]!r}")
            end = self.buf.find(b"\n")
            if end >= 0:
                line, self.buf = self.buf[:end], self.buf[end + 1 :]
                return line.rstrip(b"\r")
            if len(self.buf) > limit:
                raise ProtocolError("a response line is too long")
            assert self.sock is not None
            data = self.sock.recv(_RECV)
            if not data:
                raise (
                    IncompleteRead(self.buf)
                    if self.buf
                    else RemoteDisconnected("the server closed the connection without answering")
                )
            self.buf += data

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


def _read_head(conn: _Connection) -> tuple[int, str, bytes, dict[str, str]]:
    """Status, reason, protocol version and headers (lower-case names) of the next response."""
    first = conn.line(status=True)
    version, _, rest = first.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {first[:80]!r}")
    headers: dict[str, str] = {}
    last = ""
    size = len(first)
    while True:
        line = conn.line()
        size += len(line)
        if size > _MAX_HEAD:
            raise ProtocolError("the response's headers are too long")
        if not line:
            break
        text = line.decode("latin-1")
        if text[0] in " \t" and last:  # an obsolete folded continuation
            headers[last] += " " + text.strip()
            continue
        name, sep, value = text.partition(":")
        if not sep:
            raise ProtocolError(f"malformed header line {text[:80]!r}")
        last = name.strip().lower()
        value = value.strip()
        headers[last] = f"{headers[last]}, {value}" if last in headers else value
    return int(code), reason.decode("latin-1").strip(), version, headers


class _HttpResponse:
    """A ``Response`` reading its body from the connection, which goes back to the pool when
    the body was read to the end and the server keeps the connection open."""

    def __init__(
        self,
        conn: _Connection,
        method: str,
        key: _Key,
        pool: StdlibTransport,
    ) -> None:
        status, reason, version, headers = _read_head(conn)
        while 100 <= status < 200 and status != 101:  # interim answers (100 Continue)
            status, reason, version, headers = _read_head(conn)
        self._conn: _Connection | None = conn
        self._key = key
        self._pool = pool
        self.status = status
        self.reason = reason
        self._headers = headers
        connection = headers.get("connection", "").lower()
        self._will_close = "close" in connection or (
            version == b"HTTP/1.0" and "keep-alive" not in connection
        )
        self._chunked = False
        self._chunk_left = 0
        self._remaining: int | None = None
        """Body bytes still due (None: until the connection closes, or chunked)."""
        self._done = False
        length = headers.get("content-length")
        if method == "HEAD" or status in (204, 304) or status < 200:
            self._remaining = 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._chunked = True
        elif length is not None:
            text = length.split(",")[0].strip()
            if not text.isdigit():
                raise ProtocolError(f"invalid Content-Length {length!r}")
            self._remaining = int(text)
        else:
            self._will_close = True
        if self._remaining == 0:
            self._done = True

    def header(self, name: str) -> str | None:
        return self._headers.get(name.lower())

    def read(self, amt: int | None = None) -> bytes:
        parts: list[bytes] = []
        got = 0
        while amt is None or got < amt:
            chunk = self.read1(_RECV * 16 if amt is None else amt - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def read1(self, amt: int) -> bytes:
        conn = self._conn
        if self._done or amt <= 0:
            return b""
        if conn is None:
            raise ValueError("read from a closed response")
        if self._chunked:
            return self._read_chunked(conn, amt)
        if self._remaining is None:  # delimited by the end of the connection
            data = conn.recv(amt)
            if not data:
                self._done = True
            return data
        data = conn.recv(min(amt, self._remaining))
        if not data:
            raise IncompleteRead(b"", self._remaining)
        self._remaining -= len(data)
        if self._remaining == 0:
            self._done = True
        return data

    def readinto1(self, buffer: memoryview) -> int:
        """``read1`` into ``buffer`` (no allocation per receive): the bytes received, 0 at the
        end of the body."""
        amt = len(buffer)
        conn = self._conn
        if self._done or amt <= 0:
            return 0
        if conn is None:
            raise ValueError("read from a closed response")
        if self._chunked:
            data = self._read_chunked(conn, amt)
            buffer[: len(data)] = data
            return len(data)
        if self._remaining is None:
            n = conn.recv_into(buffer)
            if not n:
                self._done = True
            return n
        n = conn.recv_into(buffer[: min(amt, self._remaining)])
        if not n:
            raise IncompleteRead(b"", self._remaining)
        self._remaining -= n
        if self._remaining == 0:
            self._done = True
        return n

    def _read_chunked(self, conn: _Connection, amt: int) -> bytes:
        if self._chunk_left == 0:
            try:
                size_line = conn.line(1024)
            except RemoteDisconnected as exc:
                raise IncompleteRead(b"") from exc
            text = size_line.split(b";")[0].strip()
            try:
                self._chunk_left = int(text, 16)
            except ValueError:
                raise ProtocolError(f"invalid chunk size {size_line[:40]!r}") from None
            if self._chunk_left == 0:
                while conn.line(8192):  # trailers, up to the empty line
                    pass
                self._done = True
                return b""
        data = conn.recv(min(amt, self._chunk_left))
        if not data:
            raise IncompleteRead(b"", self._chunk_left)
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and conn.line(16):  # the CRLF closing the chunk
            raise ProtocolError("a chunk is longer than its size says")
        return data

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        reusable = not self._will_close
        if reusable and not self._done:
            if self._chunked or (self._remaining or 0) <= _DRAIN_LIMIT:
                self._conn = conn  # read what is left of a short body: the connection is kept
                try:
                    self.read(_DRAIN_LIMIT)
                except (OSError, ProtocolError):
                    reusable = False
                self._conn = None
            else:
                reusable = False
        if reusable and self._done and not conn.buf:
            self._pool._checkin(self._key, conn)
        else:
            conn.close()


_CONTEXTS: dict[bool, ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def _tls_context(verify: bool) -> ssl.SSLContext:
    """One TLS client context per mode for the process. Loading the system's CA certificates
    costs ~50 ms, so only verifying contexts do it, once."""
    import ssl

    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(verify)
        if ctx is None:
            if verify:
                ctx = ssl.create_default_context()
            else:  # loopback or explicitly insecure registries: no certificates to load
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["http/1.1"])
            _CONTEXTS[verify] = ctx
        return ctx


def _address(netloc: str, scheme: str) -> tuple[str, int]:
    parts = urlsplit(f"{scheme}://{netloc}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"invalid port in {netloc!r}") from None
    return parts.hostname or netloc, port or (443 if scheme == "https" else 80)


def _open(host: str, port: int, timeout: float) -> socket.socket:
    """``socket.create_connection``, but an ASCII name goes to ``getaddrinfo`` as bytes: a str
    makes it load the ``idna`` codec (~3 ms of every command)."""
    name: str | bytes = host.encode("ascii") if host.isascii() else host
    error: OSError | None = None
    for family, kind, proto, _, address in socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            sock.settimeout(timeout)
            sock.connect(address)
        except OSError as exc:
            sock.close()
            error = exc
            continue
        return sock
    raise error if error is not None else OSError(f"no address for {host}")


class StdlibTransport:
    """HTTP/1.1 over ``socket`` (and ``ssl``) with a keep-alive pool per (scheme, host, TLS
    mode)."""

    def __init__(self, *, timeout: float = 30.0, max_idle: int = 8) -> None:
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: dict[_Key, list[_Connection]] = {}
        self._lock = threading.Lock()
        self.connections_made = 0
        """How many TCP connections were opened (the benchmark and tests read it)."""
        # idle connections are closed when the transport goes away, even without close()
        weakref.finalize(self, _close_idle, self._idle, self._lock)

    def _connect(self, key: _Key) -> _Connection:
        scheme, netloc, verify = key
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {scheme!r}")
        host, port = _address(netloc, scheme)
        sock = _open(host, port, self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if scheme == "https":
                sock = _tls_context(verify).wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self.connections_made += 1
        return _Connection(sock)

    def _checkout(self, key: _Key) -> _Connection | None:
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if conn.sock is not None:
                    return conn
        return None

    def _checkin(self, key: _Key, conn: _Connection) -> None:
        with self._lock:
            idle = self._idle.setdefault(key, [])
            if len(idle) < self.max_idle:
                idle.append(conn)
                return
        conn.close()

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body = None,
        *,
        verify_tls: bool = True,
    ) -> Response:
        parts = urlsplit(url)
        key: _Key = (
            parts.scheme,
            parts.netloc.lower(),
            verify_tls if parts.scheme == "https" else True,
        )
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        head = _head(method, target, parts.netloc, headers, body)
        while True:
            conn = self._checkout(key)
            reused = conn is not None
            if conn is None:
                conn = self._connect(key)
            try:
                _send(conn, head, body)
                return _HttpResponse(conn, method, key, self)
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
                conn.close()
                if reused:  # the server closed an idle keep-alive connection: use another
                    continue
                raise
            except BaseException:
                conn.close()
                raise

    def close(self) -> None:
        _close_idle(self._idle, self._lock)


def _close_idle(idle: dict[_Key, list[_Connection]], lock: threading.Lock) -> None:
    with lock:
        conns = [conn for pool in idle.values() for conn in pool]
        idle.clear()
    for conn in conns:
        conn.close()


def _head(method: str, target: str, netloc: str, headers: Mapping[str, str], body: Body) -> bytes:
    lines = [f"{method} {target} HTTP/1.1"]
    names = set()
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name:
            raise ValueError(f"invalid HTTP header {name!r}")
        names.add(name.lower())
        lines.append(f"{name}: {value}")
    if "host" not in names:
        lines.insert(1, f"Host: {netloc}")
    length = 0 if body is None else len(body) if isinstance(body, bytes) else body.length
    if "content-length" not in names and (body is not None or method in ("PUT", "POST", "PATCH")):
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send(conn: _Connection, head: bytes, body: Body) -> None:
    sock = conn.sock
    assert sock is not None
    if body is None or (isinstance(body, bytes) and len(body) <= _INLINE_BODY):
        sock.sendall(head + (body or b""))
        return
    sock.sendall(head)
    if isinstance(body, bytes):
        sock.sendall(body)
        return
    with open(body.path, "rb") as f:
        sent = sock.sendfile(f, body.offset, body.length)
    if sent != body.length:
        raise OSError(f"{body.path} shrank while it was being sent ({sent} of {body.length})")


def drain(response: Response, limit: int = _DRAIN_LIMIT) -> bytes:
    """Read up to ``limit`` bytes of an (error) body and close the response."""
    try:
        with contextlib.suppress(*network_errors()):
            return response.read(limit)
        return b""
    finally:
        response.close()
