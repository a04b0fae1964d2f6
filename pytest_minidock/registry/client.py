"""``RegistryClient``, the facade the ``Engine`` holds, and ``Repository``, the distribution API
calls on one repository (manifests, blobs, uploads, tags).

The client owns what outlives one transfer: the transport and its pooled connections, one
``Session`` per endpoint (with its cached tokens), the hosts configuration and the credentials
seam. ``credentials`` is any ``CredentialSource``; without one, logins are read from docker's
``config.json`` (and its credential helpers) when a registry asks for them.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urljoin, urlsplit

from pytest_minidock._record import dataclass
from pytest_minidock.digest import Digest
from pytest_minidock.errors import InvalidDigest, RegistryAuthError, RegistryError
from pytest_minidock.registry import failures
from pytest_minidock.registry.auth import Credentials, repository_scope
from pytest_minidock.registry.dockerconfig import DockerConfig, server_key
from pytest_minidock.registry.hosts import DOCKER_HUB_DOMAIN, RegistryHosts, canonical_domain
from pytest_minidock.registry.policy import RegistryOptions
from pytest_minidock.registry.session import Session, login_name
from pytest_minidock.registry.transport import StdlibTransport, drain

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pytest_minidock.image.model import Platform
    from pytest_minidock.reference import Reference
    from pytest_minidock.registry.auth import CredentialSource
    from pytest_minidock.registry.hosts import Endpoint
    from pytest_minidock.registry.progress import ProgressCallback
    from pytest_minidock.registry.pull import PullResult
    from pytest_minidock.registry.push import PushResult
    from pytest_minidock.registry.transport import Body, Response, Transport
    from pytest_minidock.store.store import Store

__all__ = ["Fetched", "LoginResult", "RegistryClient", "Repository", "docker_credentials"]

MAX_MANIFEST_SIZE = 4 << 20
"""Largest manifest or index accepted (distribution's own limit)."""
_OCTET = "application/octet-stream"


def docker_credentials(registry: str) -> Credentials | None:
    """The ``CredentialSource`` over docker's ``config.json``, read afresh at each lookup."""
    return DockerConfig.load().get(registry)


@dataclass(frozen=True, slots=True)
class Fetched:
    """A manifest or index as the registry served it."""

    raw: bytes
    media_type: str
    digest: Digest
    """The digest of ``raw`` (verified against the digest asked for, or the registry's header)."""


@dataclass(frozen=True, slots=True)
class LoginResult:
    """What ``login`` or ``logout`` did."""

    server: str
    """docker's key for the registry: ``https://index.docker.io/v1/`` or ``host[:port]``."""
    stored_in: str = ""
    """The ``config.json`` path, or ``docker-credential-NAME`` when a helper holds the secret."""
    changed: bool = True
    """For ``logout``: False when there was no login to remove."""

    @property
    def in_plain_text(self) -> bool:
        """Whether the password sits (base64-encoded) in ``config.json``."""
        return bool(self.stored_in) and not self.stored_in.startswith("docker-credential-")


def _read_limited(response: Response, limit: int, ctx: failures.Context) -> bytes:
    length = response.header("Content-Length")
    if length is not None and length.isdigit() and int(length) > limit:
        drain(response, 0)
        raise failures.bad_content(ctx, f"sent {length} bytes, more than the {limit} allowed")
    try:
        data = response.read(limit + 1)
    finally:
        response.close()
    if len(data) > limit:
        raise failures.bad_content(ctx, f"sent more than the {limit} bytes allowed")
    return data


class Repository:
    """The distribution API on one repository of one endpoint."""

    def __init__(self, session: Session, path: str, reference: str, *, push: bool = False) -> None:
        self.session = session
        self.path = path
        self.reference = reference
        actions = ("pull", "push") if push else ("pull",)
        self.scopes: tuple[str, ...] = (repository_scope(path, actions),)
        self.ctx = failures.Context(
            str(session.endpoint),
            reference,
            "push" if push else "pull",
            login=login_name(session.endpoint),
        )

    def _v2(self, suffix: str) -> str:
        return f"/v2/{self.path}/{suffix}"

    # -- manifests -------------------------------------------------------------------------
    def get_manifest(self, ref: str, accept: Sequence[str], *, expected: Digest | None) -> Fetched:
        """GET a manifest or index by tag or digest, verified against ``expected`` (or the
        registry's ``Docker-Content-Digest``)."""
        ctx = self.ctx.doing("pull", "manifest")
        response = self.session.request(
            "GET",
            self._v2(f"manifests/{ref}"),
            ctx,
            scopes=self.scopes,
            headers={"Accept": ", ".join(accept)},
        )
        header = response.header("Docker-Content-Digest")
        content_type = (response.header("Content-Type") or "").split(";")[0].strip()
        raw = _read_limited(response, MAX_MANIFEST_SIZE, ctx)
        claimed = expected
        if claimed is None and header:
            try:
                claimed = Digest.parse(header.strip())
            except InvalidDigest as exc:
                raise failures.bad_content(
                    ctx, f"sent an invalid Docker-Content-Digest header {header!r}"
                ) from exc
        algorithm = claimed.algorithm if claimed is not None else "sha256"
        got = Digest(algorithm, hashlib.new(algorithm, raw).hexdigest())
        if claimed is not None and got != claimed:
            raise failures.bad_digest(ctx, claimed, got)
        media_type = content_type
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise failures.bad_content(ctx, "sent a manifest that is not JSON") from exc
        if isinstance(obj, dict) and isinstance(obj.get("mediaType"), str):
            media_type = obj["mediaType"]
        elif isinstance(obj, dict) and media_type in ("", "application/json", _OCTET, "text/plain"):
            media_type = "application/vnd.oci.image.index.v1+json" if "manifests" in obj else ""
            media_type = media_type or "application/vnd.oci.image.manifest.v1+json"
        if isinstance(obj, dict) and obj.get("schemaVersion") == 1:
            raise failures.bad_content(
                ctx,
                "only has a schema 1 manifest (deprecated since 2017)",
                "push the image again with a current client to get a schema 2 or OCI manifest",
            )
        return Fetched(raw, media_type, got)

    def put_manifest(self, ref: str, raw: bytes, media_type: str) -> Digest | None:
        """PUT a manifest under a tag or digest; return the digest the registry reports."""
        ctx = self.ctx.doing("push", "manifest")
        response = self.session.request(
            "PUT",
            self._v2(f"manifests/{ref}"),
            ctx,
            scopes=self.scopes,
            headers={"Content-Type": media_type},
            body=raw,
            expect=(200, 201, 202),
        )
        header = response.header("Docker-Content-Digest")
        drain(response)
        if not header:
            return None
        try:
            return Digest.parse(header.strip())
        except InvalidDigest as exc:
            raise failures.bad_content(
                ctx, f"answered with an invalid Docker-Content-Digest {header!r}"
            ) from exc

    # -- blobs -----------------------------------------------------------------------------
    def blob_size(self, digest: Digest, what: str = "") -> int | None:
        """HEAD a blob: its size if the repository has it, else None."""
        ctx = self.ctx.doing(self.ctx.action, what or f"blob {digest}")
        response = self.session.request(
            "HEAD",
            self._v2(f"blobs/{digest}"),
            ctx,
            scopes=self.scopes,
            expect=(200, 404),
        )
        length = response.header("Content-Length")
        status = response.status
        drain(response)
        if status == 404:
            return None
        return int(length) if length is not None and length.isdigit() else -1

    def open_blob(self, digest: Digest, ctx: failures.Context, *, offset: int = 0) -> Response:
        """GET a blob from ``offset`` (a ``Range`` request): 200 (whole) or 206 (the rest)."""
        headers = {"Range": f"bytes={offset}-"} if offset else None
        return self.session.request(
            "GET",
            self._v2(f"blobs/{digest}"),
            ctx,
            scopes=self.scopes,
            headers=headers,
            expect=(200, 206),
        )

    # -- uploads ---------------------------------------------------------------------------
    def _location(self, response: Response, url: str, ctx: failures.Context) -> str:
        location = response.header("Location")
        drain(response)
        if not location:
            raise failures.bad_content(ctx, "started an upload without a Location header")
        return urljoin(url, location)

    def mount(
        self, digest: Digest, source: str, ctx: failures.Context, scopes: tuple[str, ...]
    ) -> str | None:
        """Cross-repository mount from ``source``: None when mounted, else an upload location."""
        path = self._v2("blobs/uploads/") + "?" + urlencode({"mount": str(digest), "from": source})
        response = self.session.request("POST", path, ctx, scopes=scopes, expect=(201, 202))
        if response.status == 201:
            drain(response)
            return None
        return self._location(response, self.session.url(path), ctx)

    def start_upload(self, ctx: failures.Context) -> str:
        """POST a new upload session; return its location."""
        path = self._v2("blobs/uploads/")
        response = self.session.request("POST", path, ctx, scopes=self.scopes, expect=(202,))
        return self._location(response, self.session.url(path), ctx)

    def upload_chunk(self, location: str, body: Body, start: int, ctx: failures.Context) -> str:
        """PATCH one chunk at ``start``; return the location for the next request."""
        length = 0 if body is None else len(body) if isinstance(body, bytes) else body.length
        response = self.session.request(
            "PATCH",
            location,
            ctx,
            scopes=self.scopes,
            headers={
                "Content-Type": _OCTET,
                "Content-Range": f"{start}-{start + length - 1}",
            },
            body=body,
            expect=(202,),
            retry=False,
        )
        return self._location(response, location, ctx)

    def upload_status(self, location: str, ctx: failures.Context) -> tuple[int, str] | None:
        """GET an upload session: the offset it has reached and the location to continue at, or
        None when the registry no longer knows it (or cannot say where it is)."""
        try:
            response = self.session.request(
                "GET", location, ctx, scopes=self.scopes, expect=(204,), retry=False
            )
        except RegistryError:
            return None
        received = response.header("Range")
        where = response.header("Location")
        drain(response)
        offset = _upload_offset(received)
        if offset is None:
            return None
        return offset, urljoin(location, where) if where else location

    def finish_upload(
        self, location: str, digest: Digest, body: Body, ctx: failures.Context
    ) -> None:
        """PUT the last (or only) bytes and close the upload as blob ``digest``."""
        parts = urlsplit(location)
        joiner = "&" if parts.query else "?"
        url = f"{location}{joiner}{urlencode({'digest': str(digest)})}"
        response = self.session.request(
            "PUT",
            url,
            ctx,
            scopes=self.scopes,
            headers={"Content-Type": _OCTET},
            body=body,
            expect=(201, 204),
            retry=False,
        )
        header = response.header("Docker-Content-Digest")
        drain(response)
        if header and header.strip() != str(digest):
            raise failures.bad_content(ctx, f"stored the upload as {header.strip()}, not {digest}")

    # -- tags ------------------------------------------------------------------------------
    def tags(self) -> list[str]:
        """Every tag of the repository (following ``Link: <…>; rel="next"`` pages)."""
        ctx = self.ctx.doing("list the tags of")
        path: str | None = self._v2("tags/list")
        out: list[str] = []
        pages = 0
        while path is not None and pages < 10000:
            pages += 1
            response = self.session.request("GET", path, ctx, scopes=self.scopes)
            link = response.header("Link")
            data = _read_limited(response, 64 << 20, ctx)
            try:
                obj = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise failures.bad_content(ctx, "sent a tag list that is not JSON") from exc
            tags = obj.get("tags") if isinstance(obj, dict) else None
            if tags is not None and not (
                isinstance(tags, list) and all(isinstance(t, str) for t in tags)
            ):
                raise failures.bad_content(ctx, "sent a malformed tag list")
            out.extend(tags or [])
            path = _next_link(link, self.session.url(path))
        return out


def _upload_offset(header: str | None) -> int | None:
    """The bytes an upload session holds, from its ``Range: 0-LAST`` header. distribution says
    ``0-0`` for an empty session as well as for one byte: read as 0 (chunks are never 1 byte)."""
    text = (header or "").strip().removeprefix("bytes=")
    start, sep, end = text.partition("-")
    if not sep or not start.isdigit() or not end.isdigit() or int(start) != 0:
        return None
    last = int(end)
    return 0 if last == 0 else last + 1


def _next_link(header: str | None, base: str) -> str | None:
    """The ``rel="next"`` target of a ``Link`` header, absolute."""
    if not header:
        return None
    for part in header.split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' in params.replace(" ", "") or "rel=next" in params.replace(" ", ""):
            target = target.strip()
            if target.startswith("<") and target.endswith(">"):
                return urljoin(base, target[1:-1])
    return None


class RegistryClient:
    """Pulls, pushes, tag lists and logins, sharing connections and tokens between them."""

    def __init__(
        self,
        *,
        credentials: CredentialSource | None = None,
        hosts: RegistryHosts | None = None,
        transport: Transport | None = None,
        options: RegistryOptions | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.credentials: CredentialSource = credentials or docker_credentials
        self.hosts = hosts if hosts is not None else RegistryHosts.load()
        self.options = options if options is not None else RegistryOptions.from_env()
        self.transport: Transport = transport or StdlibTransport(timeout=self.options.timeout)
        self.sleep = sleep
        self._sessions: dict[tuple[str, str, bool], Session] = {}
        self._schemes: dict[str, str] = {}
        self._lock = threading.Lock()

    def session(self, endpoint: Endpoint) -> Session:
        """The shared session for ``endpoint`` (credentials looked up under its name)."""
        key = (endpoint.name, endpoint.host, endpoint.mirror)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                lookup_name = endpoint.host if endpoint.mirror else endpoint.name
                source = self.credentials
                session = Session(
                    self.transport,
                    endpoint,
                    credentials=lambda: source(lookup_name),
                    policy=self.options.retry,
                    hosts=self.hosts,
                    timeout=self.options.timeout,
                    sleep=self.sleep,
                    schemes=self._schemes,
                )
                self._sessions[key] = session
            return session

    def repository(
        self, endpoint: Endpoint, path: str, reference: str, *, push: bool = False
    ) -> Repository:
        return Repository(self.session(endpoint), path, reference, push=push)

    # -- operations ------------------------------------------------------------------------
    def pull(
        self,
        store: Store,
        ref: Reference,
        *,
        platform: Platform | None = None,
        progress: ProgressCallback | None = None,
    ) -> PullResult:
        """Pull ``ref`` into ``store`` (see ``pull.pull_image``)."""
        from pytest_minidock.registry.pull import pull_image

        return pull_image(self, store, ref, platform=platform, progress=progress)

    def push(
        self, store: Store, ref: Reference, *, progress: ProgressCallback | None = None
    ) -> PushResult:
        """Push the store's image named ``ref`` (see ``push.push_image``)."""
        from pytest_minidock.registry.push import push_image

        return push_image(self, store, ref, progress=progress)

    def list_tags(self, ref: Reference) -> list[str]:
        """The tags of ``ref``'s repository (mirrors are not asked)."""
        endpoint = self.hosts.endpoint(ref.domain)
        return self.repository(endpoint, ref.path, ref.name).tags()

    def login(
        self,
        registry: str | None,
        username: str,
        password: str,
        *,
        config: DockerConfig | None = None,
    ) -> LoginResult:
        """Check the credentials against the registry, then store them as docker does.

        With neither ``username`` nor ``password``, the stored login is checked instead (and
        ``RegistryAuthError`` says there is none).
        """
        name = canonical_domain(registry or DOCKER_HUB_DOMAIN)
        cfg = config if config is not None else DockerConfig.load()
        key = server_key(name)
        if not username and not password:
            stored = cfg.get(name)
            if stored is None:
                command = f"minidock login -u USER {login_arg(name)}".strip()
                raise RegistryAuthError(
                    f"not logged in to {name}: give a user name and password ('{command}')"
                )
            creds = stored
        else:
            creds = Credentials(username=username, password=password)
        endpoint = self.hosts.endpoint(name)
        session = Session(
            self.transport,
            endpoint,
            credentials=lambda: creds,
            policy=self.options.retry,
            hosts=self.hosts,
            timeout=self.options.timeout,
            sleep=self.sleep,
            schemes=self._schemes,
        )
        ctx = failures.Context(str(endpoint), name, "log in to", login=login_name(endpoint))
        drain(session.request("GET", "/v2/", ctx))
        if session.auth.challenge is not None and session.auth.credentials is None:
            raise RegistryAuthError(f"cannot log in to {name}: no credentials were given")
        if username or password:
            with self._lock:  # later transfers look the new login up
                for stale in [k for k in self._sessions if k[0] == name]:
                    del self._sessions[stale]
            return LoginResult(key, cfg.store(name, creds))
        return LoginResult(key, "", changed=False)

    def logout(self, registry: str | None, *, config: DockerConfig | None = None) -> LoginResult:
        """Forget the stored login for ``registry`` (default Docker Hub)."""
        name = canonical_domain(registry or DOCKER_HUB_DOMAIN)
        cfg = config if config is not None else DockerConfig.load()
        removed = cfg.erase(name)
        with self._lock:
            for key in [k for k in self._sessions if k[0] == name]:
                del self._sessions[key]
        return LoginResult(server_key(name), str(cfg.path) if removed else "", changed=removed)

    def close(self) -> None:
        """Close pooled connections."""
        self.transport.close()


def login_arg(name: str) -> str:
    """The registry argument ``minidock login`` needs for ``name`` (none for Docker Hub)."""
    return "" if name == DOCKER_HUB_DOMAIN else name
