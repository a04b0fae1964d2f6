"""A ``Transport`` that breaks chosen requests to a real registry, for the resume tests.

``FaultyTransport`` wraps the real ``StdlibTransport`` and records every request (method, path,
headers, status). A ``Fault`` picks requests by method and path and does one of:

- ``before``: raise ``ConnectionResetError`` without sending anything (the registry never saw it);
- ``after``: send the request, then drop the answer and raise (the registry did the work, the
  client never learnt of it);
- ``cut``: send the request and let only ``cut_after`` bytes of the response body through, then
  raise ``http.client.IncompleteRead`` (a download whose connection breaks half-way).

Each fault fires ``times`` times, on the ``nth`` matching request and the ones after it. Requests
to hosts other than this machine are refused (``ConnectionRefusedError``): tests never leave it.
"""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pytest_minidock.registry.hosts import is_loopback
from pytest_minidock.registry.transport import StdlibTransport

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pytest_minidock.registry.transport import Body, Response


@dataclass
class Fault:
    method: str
    path_contains: str
    kind: str
    """``before``, ``after`` or ``cut``."""
    nth: int = 1
    """The first matching request (1-based) that fails."""
    times: int = 1
    cut_after: int = 0
    seen: int = 0
    fired: int = 0


@dataclass
class Sent:
    method: str
    path: str
    scheme: str
    headers: dict[str, str]
    status: int | None = None
    content_range: str | None = None
    length: int = 0


class _CutResponse:
    """A response whose body breaks after ``limit`` bytes."""

    def __init__(self, inner: Response, limit: int) -> None:
        self._inner = inner
        self._left = limit
        self.status = inner.status
        self.reason = inner.reason

    def header(self, name: str) -> str | None:
        return self._inner.header(name)

    def read(self, amt: int | None = None) -> bytes:
        return self.read1(amt if amt is not None else 1 << 30)

    def read1(self, amt: int) -> bytes:
        if self._left <= 0:
            raise http.client.IncompleteRead(b"", None)
        data = self._inner.read1(min(amt, self._left))
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._inner.close()


@dataclass
class FaultyTransport:
    faults: list[Fault] = field(default_factory=list)
    inner: StdlibTransport = field(default_factory=lambda: StdlibTransport(timeout=10))
    sent: list[Sent] = field(default_factory=list)
    loopback_only: bool = True
    """Refuse (as if nobody listened) requests to hosts other than this machine."""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method == method and fault.path_contains in path:
                    fault.seen += 1
                    if fault.seen >= fault.nth and fault.fired < fault.times:
                        fault.fired += 1
                        return fault
        return None

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
        path = parts.path
        if self.loopback_only and not is_loopback(parts.netloc):
            raise ConnectionRefusedError(
                111, f"the tests talk to loopback only, not {parts.netloc}"
            )
        length = 0 if body is None else len(body) if isinstance(body, bytes) else body.length
        record = Sent(method, path, parts.scheme, dict(headers), length=length)
        with self._lock:
            self.sent.append(record)
        fault = self._fault(method, path)
        if fault is not None and fault.kind == "before":
            raise ConnectionResetError(104, "connection reset by the test")
        response = self.inner.request(method, url, headers, body, verify_tls=verify_tls)
        record.status = response.status
        record.content_range = response.header("Content-Range")
        if fault is not None and fault.kind == "after":
            response.close()
            raise ConnectionResetError(104, "answer lost by the test")
        if fault is not None and fault.kind == "cut":
            return _CutResponse(response, fault.cut_after)
        return response

    def close(self) -> None:
        self.inner.close()

    def requests(self, method: str, path_contains: str = "") -> list[Sent]:
        with self._lock:
            return [s for s in self.sent if s.method == method and path_contains in s.path]
