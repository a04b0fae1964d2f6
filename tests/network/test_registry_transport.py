"""The registry client's own HTTP/1.1 (``registry.transport``) against a scripted socket server
on 127.0.0.1: framing by ``Content-Length``, ``chunked`` and the end of the connection, ``HEAD``
and ``204``, interim ``100`` answers, folded and repeated headers, keep-alive reuse, a pooled
connection the server closed, truncated bodies, and ``sendfile`` bodies."""

from __future__ import annotations

import socket
import threading
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.registry.transport import (
    FileSlice,
    IncompleteRead,
    ProtocolError,
    RemoteDisconnected,
    StdlibTransport,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

pytestmark = pytest.mark.network


class Server:
    """One thread per connection; ``answers`` are taken in order, one per request."""

    def __init__(self, answers: list[bytes | None]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
                answer = self.answers.pop(0) if self.answers else None
                if answer is None:  # close without answering
                    return
                conn.sendall(answer)
                if b"connection: close" in answer.lower():
                    return

    def stop(self) -> None:
        self._sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(*answers: bytes | None) -> Server:
        server = Server(list(answers))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def ok(body: bytes, *headers: str) -> bytes:
    extra = "".join(f"{h}\r\n" for h in headers)
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_content_length_bodies_reuse_the_connection(serve: Callable[..., Server]) -> None:
    server = serve(ok(b"one"), ok(b"two"), ok(b"three"))
    transport = StdlibTransport(timeout=5)
    for expected in (b"one", b"two", b"three"):
        response = transport.request("GET", server.url + "/v2/", {"User-Agent": "t"})
        assert (response.status, response.reason) == (200, "OK")
        assert response.read() == expected
        response.close()
    assert server.connections == transport.connections_made == 1
    first = server.requests[0].decode()
    assert first.startswith("GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1:")
    assert "User-Agent: t\r\n" in first
    transport.close()


def test_chunked_bodies_with_extensions_and_trailers(serve: Callable[..., Server]) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    server = serve(chunked, ok(b"after"))
    transport = StdlibTransport(timeout=5)
    response = transport.request("GET", server.url + "/a", {})
    assert response.read1(3) == b"hel"
    assert response.read() == b"lo, world"
    response.close()
    again = transport.request("GET", server.url + "/b", {})
    assert again.read() == b"after"
    again.close()
    assert server.connections == 1  # the chunked response was read to its end: reused


def test_head_204_and_interim_answers_have_no_body(serve: Callable[..., Server]) -> None:
    server = serve(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nDocker-Content-Digest: sha256:ab\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\nRange: 0-99\r\n\r\n",
        ok(b"x"),
    )
    transport = StdlibTransport(timeout=5)
    head = transport.request("HEAD", server.url + "/blob", {})
    assert head.header("content-length") == "1234"
    assert head.header("DOCKER-CONTENT-DIGEST") == "sha256:ab"
    assert head.read() == b""
    head.close()
    status = transport.request("GET", server.url + "/upload", {})
    assert (status.status, status.header("Range"), status.read()) == (204, "0-99", b"")
    status.close()
    last = transport.request("GET", server.url + "/x", {})
    assert last.read() == b"x"
    last.close()
    assert server.connections == 1


def test_folded_and_repeated_headers(serve: Callable[..., Server]) -> None:
    server = serve(
        b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm="r",\r\n'
        b'  service="s"\r\nWWW-Authenticate: Basic realm="b"\r\nContent-Length: 0\r\n\r\n'
    )
    transport = StdlibTransport(timeout=5)
    response = transport.request("GET", server.url + "/v2/", {})
    assert response.status == 401
    assert response.header("WWW-Authenticate") == 'Bearer realm="r", service="s", Basic realm="b"'
    response.close()


def test_a_body_delimited_by_the_end_of_the_connection(serve: Callable[..., Server]) -> None:
    server = serve(b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nuntil the end")
    transport = StdlibTransport(timeout=5)
    response = transport.request("GET", server.url + "/", {})
    assert response.read() == b"until the end"
    response.close()
    assert transport._idle == {} or all(not v for v in transport._idle.values())


def test_a_truncated_body_raises_incomplete_read(serve: Callable[..., Server]) -> None:
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nabc")
    transport = StdlibTransport(timeout=5)
    response = transport.request("GET", server.url + "/", {})
    assert response.read1(100) == b"abc"
    with pytest.raises(IncompleteRead) as info:
        response.read1(100)
    assert info.value.expected == 7
    response.close()


def test_a_server_that_answers_nothing_or_garbage(serve: Callable[..., Server]) -> None:
    server = serve(None)
    with pytest.raises(RemoteDisconnected):
        StdlibTransport(timeout=5).request("GET", server.url + "/", {})
    garbage = serve(b"\x15\x03\x01\x00\x02\x02\x46")  # a TLS alert, as a TLS server would send
    with pytest.raises(ProtocolError, match=r"not an HTTP/1\.x status line"):
        StdlibTransport(timeout=5).request("GET", garbage.url + "/", {})


def test_a_pooled_connection_the_server_closed_is_replaced(serve: Callable[..., Server]) -> None:
    server = serve(ok(b"first"), None, ok(b"second"))  # the server drops the idle connection
    transport = StdlibTransport(timeout=5)
    first = transport.request("GET", server.url + "/", {})
    assert first.read() == b"first"
    first.close()
    second = transport.request("GET", server.url + "/", {})
    assert second.read() == b"second"
    second.close()
    assert transport.connections_made == 2


def test_a_stalled_answer_times_out(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(TimeoutError):
            StdlibTransport(timeout=0.2).request("GET", f"http://127.0.0.1:{port}/", {})


def test_bodies_from_bytes_and_file_slices(serve: Callable[..., Server], tmp_path: Path) -> None:
    data = bytes(range(256)) * 1024
    path = tmp_path / "blob"
    path.write_bytes(data)
    server = serve(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n", ok(b""))
    transport = StdlibTransport(timeout=5)
    sent = transport.request(
        "PATCH", server.url + "/u?x=1", {"Content-Range": "100-1099"}, FileSlice(path, 100, 1000)
    )
    assert sent.status == 202
    sent.close()
    put = transport.request("PUT", server.url + "/m", {}, b"{}")
    put.close()
    patch, manifest = server.requests
    head, _, body = patch.partition(b"\r\n\r\n")
    assert head.startswith(b"PATCH /u?x=1 HTTP/1.1\r\n")
    assert b"Content-Length: 1000" in head
    assert body == data[100:1100]
    assert manifest.endswith(b"Content-Length: 2\r\n\r\n{}")
