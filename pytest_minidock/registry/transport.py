"""HTTP for the registry client: the ``Transport`` seam and its ``http.client`` implementation.

A transport sends one request and returns the response with its body unread; it does no retries,
no redirects and no authentication (``session`` does those) and raises ``OSError`` or
``http.client.HTTPException`` as they come (``failures`` translates them). ``StdlibTransport``
keeps idle keep-alive connections per scheme, host and TLS mode, so a pull's many requests reuse a
few connections; a pooled connection the server has closed meanwhile is replaced transparently.
Request bodies are ``bytes`` or a ``FileSlice`` (sent with ``sendfile`` where the socket allows),
both of which can be sent again on a retry.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import threading
import weakref
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlsplit

from pytest_minidock._record import dataclass

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

__all__ = ["Body", "FileSlice", "Response", "StdlibTransport", "Transport"]

_BLOCK = 1 << 20
_DRAIN_LIMIT = 1 << 16
_STALE = (
    http.client.RemoteDisconnected,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


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
        """The value of header ``name`` (case-insensitive), or None."""

    def read(self, amt: int | None = None) -> bytes:
        """Up to ``amt`` bytes of the body (all of it when None)."""

    def read1(self, amt: int) -> bytes:
        """What has arrived of the body, up to ``amt`` bytes, waiting for at most one receive;
        ``b""`` at its end. A body cut short raises ``http.client.IncompleteRead``."""

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


class _HttpResponse:
    """A ``Response`` over ``http.client.HTTPResponse`` that returns its connection to the pool."""

    def __init__(
        self,
        raw: http.client.HTTPResponse,
        conn: http.client.HTTPConnection,
        key: _Key,
        pool: StdlibTransport,
    ) -> None:
        self._raw = raw
        self._conn: http.client.HTTPConnection | None = conn
        self._key = key
        self._pool = pool
        self.status = raw.status
        self.reason = raw.reason

    def header(self, name: str) -> str | None:
        return self._raw.getheader(name)

    def read(self, amt: int | None = None) -> bytes:
        if amt is None:
            return self._raw.read()  # raises IncompleteRead for a short body
        parts: list[bytes] = []
        got = 0
        while got < amt:
            chunk = self.read1(amt - got)
            if not chunk:
                break
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    def read1(self, amt: int) -> bytes:
        # one receive at most: what arrived before a stall is returned, so a resumed download
        # continues exactly where the bytes stopped
        data = self._raw.read1(amt)
        if not data and amt and self._raw.length:
            # http.client reports a body that ended before its Content-Length as a clean end
            raise http.client.IncompleteRead(b"", self._raw.length)
        return data

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        raw = self._raw
        reusable = not raw.will_close
        if reusable and not raw.isclosed():
            remaining = raw.length
            if remaining is not None and remaining <= _DRAIN_LIMIT:
                try:
                    raw.read()
                except (OSError, http.client.HTTPException):
                    reusable = False
            else:
                reusable = False
        raw.close()
        if reusable and raw.isclosed():
            self._pool._checkin(self._key, conn)
        else:
            conn.close()


_CONTEXTS: dict[bool, ssl.SSLContext] = {}
_CONTEXTS_LOCK = threading.Lock()


def _tls_context(verify: bool) -> ssl.SSLContext:
    """One TLS client context per mode for the process. Loading the system's CA certificates
    costs ~50 ms, so only verifying contexts do it, once."""
    with _CONTEXTS_LOCK:
        ctx = _CONTEXTS.get(verify)
        if ctx is None:
            if verify:
                ctx = ssl.create_default_context()
            else:  # loopback or explicitly insecure registries: no certificates to load
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            _CONTEXTS[verify] = ctx
        return ctx


class StdlibTransport:
    """HTTP/1.1 over ``http.client`` with a keep-alive pool per (scheme, host, TLS mode)."""

    def __init__(self, *, timeout: float = 30.0, max_idle: int = 8) -> None:
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: dict[_Key, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self.connections_made = 0
        """How many TCP connections were opened (the benchmark and tests read it)."""
        # idle connections are closed when the transport goes away, even without close()
        weakref.finalize(self, _close_idle, self._idle, self._lock)

    def _context(self, verify: bool) -> ssl.SSLContext:
        return _tls_context(verify)

    def _checkout(self, key: _Key, *, fresh: bool) -> tuple[http.client.HTTPConnection, bool]:
        if not fresh:
            with self._lock:
                idle = self._idle.get(key)
                while idle:
                    conn = idle.pop()
                    if conn.sock is not None:
                        return conn, True
        scheme, netloc, verify = key
        parts = urlsplit(f"{scheme}://{netloc}")
        host = parts.hostname or netloc
        made: http.client.HTTPConnection
        if scheme == "https":
            made = http.client.HTTPSConnection(
                host,
                parts.port,
                timeout=self.timeout,
                context=self._context(verify),
                blocksize=_BLOCK,
            )
        elif scheme == "http":
            made = http.client.HTTPConnection(
                host, parts.port, timeout=self.timeout, blocksize=_BLOCK
            )
        else:
            raise ValueError(f"unsupported URL scheme {scheme!r}")
        with self._lock:
            self.connections_made += 1
        return made, False

    def _checkin(self, key: _Key, conn: http.client.HTTPConnection) -> None:
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
        for fresh in (False, True):
            conn, reused = self._checkout(key, fresh=fresh)
            try:
                _send(conn, method, target, headers, body)
                raw = conn.getresponse()
            except _STALE:
                conn.close()
                if reused:  # the server closed an idle keep-alive connection: use a new one
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            return _HttpResponse(raw, conn, key, self)
        raise AssertionError("unreachable: a fresh connection either answers or raises")

    def close(self) -> None:
        _close_idle(self._idle, self._lock)


def _close_idle(idle: dict[_Key, list[http.client.HTTPConnection]], lock: threading.Lock) -> None:
    with lock:
        conns = [conn for pool in idle.values() for conn in pool]
        idle.clear()
    for conn in conns:
        conn.close()


def _send(
    conn: http.client.HTTPConnection,
    method: str,
    target: str,
    headers: Mapping[str, str],
    body: Body,
) -> None:
    conn.putrequest(method, target, skip_accept_encoding=True)
    names = {k.lower() for k in headers}
    for name, value in headers.items():
        conn.putheader(name, value)
    length = 0 if body is None else len(body) if isinstance(body, bytes) else body.length
    if "content-length" not in names and (body is not None or method in ("PUT", "POST", "PATCH")):
        conn.putheader("Content-Length", str(length))
    if isinstance(body, FileSlice):
        conn.endheaders()
        sock = conn.sock
        assert sock is not None, "endheaders() connects"
        with open(body.path, "rb") as f:
            sent = sock.sendfile(f, body.offset, body.length)
        if sent != body.length:
            raise OSError(f"{body.path} shrank while it was being sent ({sent} of {body.length})")
    else:
        conn.endheaders(message_body=body or None)


def drain(response: Response, limit: int = _DRAIN_LIMIT) -> bytes:
    """Read up to ``limit`` bytes of an (error) body and close the response."""
    try:
        with contextlib.suppress(OSError, http.client.HTTPException):
            return response.read(limit)
        return b""
    finally:
        response.close()
