"""A scripted, misbehaving registry for the failure tests: stdlib ``http.server`` on 127.0.0.1.

Routes map ``(METHOD, PATH)`` to a list of ``Reply`` objects: each request takes the first one
while more than one is left, then the last one repeats. A reply can wait before answering,
send only part of its body (then close the connection or stall), ignore ``Range`` requests, or
redirect. Every request is recorded in ``seen`` with its headers. ``tiny_image`` makes a small
valid image (one gzip layer) to serve with ``serve_image``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to wait before answering (a dead or very slow server)."""
    send: int | None = None
    """Send only this many bytes of the body (Content-Length stays the whole length)."""
    then: str = "close"
    """After a partial body: ``close`` the connection or ``stall`` until the server stops."""
    ranges: bool = True
    """Answer ``Range: bytes=N-`` with 206 and the rest of the body."""


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class TinyImage:
    manifest: bytes
    config: bytes
    layer: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def config_digest(self) -> str:
        return sha256(self.config)

    @property
    def layer_digest(self) -> str:
        return sha256(self.layer)


def tiny_image(
    content: bytes = b"hello from a tiny image\n", *, docker: bool = False, arch: str = "amd64"
) -> TinyImage:
    """A one-layer image with ``/hello.txt``; Docker schema 2 media types with ``docker``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        info.mtime = 1700000000
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = raw.getvalue()
    layer = gzip.compress(tar_bytes, mtime=0)
    config = json.dumps(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Cmd": ["cat", "/hello.txt"]},
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar_bytes)]},
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    media = DOCKER_MANIFEST if docker else OCI_MANIFEST
    config_type = (
        "application/vnd.docker.container.image.v1+json"
        if docker
        else "application/vnd.oci.image.config.v1+json"
    )
    layer_type = (
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        if docker
        else "application/vnd.oci.image.layer.v1.tar+gzip"
    )
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media,
            "config": {"mediaType": config_type, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": layer_type, "digest": sha256(layer), "size": len(layer)}],
        },
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    return TinyImage(manifest, config, layer, media)


class FakeRegistry:
    """The scripted server; ``stop()`` releases stalled handlers and closes the socket."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], list[Reply]] = {}
        self.seen: list[Seen] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _any(self) -> None:
                fake._handle(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="fake-registry", daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def url(self, path: str) -> str:
        return f"http://{self.host}{path}"

    def add(self, method: str, path: str, *replies: Reply) -> None:
        with self._lock:
            self.routes[(method, path)] = list(replies)

    def requests(self, method: str, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.method == method and urlsplit(s.path).path == path]

    def serve_image(self, repo: str, tag: str, image: TinyImage) -> None:
        """Honest routes for ``image`` under ``repo:tag`` (and by digest)."""
        headers = {"Content-Type": image.media_type, "Docker-Content-Digest": image.digest}
        for ref in (tag, image.digest):
            for method in ("GET", "HEAD"):
                self.add(
                    method,
                    f"/v2/{repo}/manifests/{ref}",
                    Reply(body=image.manifest, headers=headers),
                )
        for blob in (image.config, image.layer):
            for method in ("GET", "HEAD"):
                self.add(method, f"/v2/{repo}/blobs/{sha256(blob)}", Reply(body=blob))

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        if length:
            h.rfile.read(length)
        path = urlsplit(h.path).path
        with self._lock:
            self.seen.append(Seen(h.command, h.path, dict(h.headers.items())))
            replies = self.routes.get((h.command, path))
            if replies:
                reply = replies.pop(0) if len(replies) > 1 else replies[0]
            else:
                reply = Reply(
                    404,
                    json.dumps(
                        {"errors": [{"code": "NAME_UNKNOWN", "message": "no such thing"}]}
                    ).encode(),
                    {"Content-Type": "application/json"},
                )
        if reply.delay:
            self.stopping.wait(reply.delay)
            if self.stopping.is_set():
                h.close_connection = True
                return
        status, body = reply.status, reply.body
        headers = dict(reply.headers)
        wanted = h.headers.get("Range")
        if wanted and reply.ranges and status == 200 and h.command == "GET":
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
            status, body = 206, body[start:]
        h.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for name, value in headers.items():
            h.send_header(name, value)
        h.end_headers()
        if h.command == "HEAD":
            return
        data = body if reply.send is None else body[: reply.send]
        try:
            h.wfile.write(data)
            h.wfile.flush()
        except OSError:
            h.close_connection = True
            return
        if reply.send is not None and reply.send < len(body):
            if reply.then == "stall":
                self.stopping.wait(60)
            h.close_connection = True

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
