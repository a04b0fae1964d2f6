"""Push: the store's image named by a tag goes to that tag's registry and repository.

Each blob (the config and the layers, on a thread pool) is first checked with ``HEAD`` and skipped
when the repository has it. A blob that another repository of the same registry is known to hold
(the store has an image of it under that name) is mounted from there (``POST
…/blobs/uploads/?mount=DIGEST&from=REPO``) instead of sent again. Others are uploaded in one
``PUT`` when they are at most ``RegistryOptions.chunk_size`` bytes, else in ``PATCH`` chunks of that
size with ``Content-Range``, closed by a ``PUT ?digest=``. When a request of an upload fails for
a transient reason (connection, timeout, 5xx, 429), the client waits (backoff) and asks the session
where it is (``GET`` on its location: ``204`` with ``Range: 0-LAST``) and goes on from there; when
the registry no longer knows the session, the blob may have arrived with only the answer lost
(``HEAD`` says), else the upload starts again in a new session. The manifest is
``PUT`` last, so the tag never points at an image whose blobs are not all there, and the digest
the registry reports must be the manifest's own.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import TYPE_CHECKING

from pytest_minidock._record import dataclass
from pytest_minidock.errors import ImageNotFound, RegistryError, StoreError, UsageError
from pytest_minidock.registry import failures
from pytest_minidock.registry import progress as events
from pytest_minidock.registry.auth import repository_scope
from pytest_minidock.registry.parallel import Cancelled, run_all
from pytest_minidock.registry.progress import Progress, serialised
from pytest_minidock.registry.transport import FileSlice
from pytest_minidock.store.locking import gc_shared

if TYPE_CHECKING:
    from pytest_minidock.digest import Digest
    from pytest_minidock.image.model import Descriptor
    from pytest_minidock.reference import Reference
    from pytest_minidock.registry.client import RegistryClient
    from pytest_minidock.registry.progress import ProgressCallback
    from pytest_minidock.store.store import Store

__all__ = ["PushResult", "push_image"]

_MOUNT_CANDIDATES = 3
_PROGRESS_RESETS_RETRIES = 1 << 20
"""An attempt that sent this many bytes before failing does not count against the retries."""


class _Sent:
    """How far an upload session got: the bytes the registry acknowledged, and the location
    for the next request."""

    __slots__ = ("location", "offset")

    def __init__(self, offset: int, location: str) -> None:
        self.offset = offset
        self.location = location


@dataclass(frozen=True, slots=True)
class PushResult:
    """What a push did."""

    reference: Reference
    digest: Digest
    """The manifest's digest (``name@digest`` pulls exactly this image)."""
    size: int
    """The manifest's size in bytes."""
    pushed: int
    """Blobs uploaded."""
    mounted: int
    """Blobs mounted from another repository of the registry."""
    existed: int
    """Blobs the repository already had."""
    bytes: int
    """Bytes uploaded."""


def _mount_sources(store: Store, ref: Reference) -> dict[Digest, list[str]]:
    """Blob digest → other repositories on ``ref``'s registry whose images (in the store) use it."""
    out: dict[Digest, list[str]] = {}
    for record in store.images():
        paths = sorted({n.path for n in record.names if n.domain == ref.domain} - {ref.path})
        if not paths:
            continue
        manifest = store.image_of(record).manifest()
        for desc in (manifest.config, *manifest.layers):
            known = out.setdefault(desc.digest, [])
            known.extend(p for p in paths if p not in known)
    return out


class _Push:
    def __init__(
        self, client: RegistryClient, store: Store, ref: Reference, report: ProgressCallback
    ) -> None:
        self.client = client
        self.store = store
        self.ref = ref
        self.report = report
        endpoint = client.hosts.endpoint(ref.domain)
        self.repo = client.repository(endpoint, ref.path, str(ref), push=True)
        self.policy = client.options.retry
        self.sources = _mount_sources(store, ref)
        self._lock = threading.Lock()
        self.counts = {"pushed": 0, "mounted": 0, "existed": 0, "bytes": 0}

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def upload(self, desc: Descriptor, what: str, shown: bool, cancel: threading.Event) -> None:
        """Make sure the repository has the blob ``desc``."""
        ctx = self.repo.ctx.doing("push", what)
        short = desc.digest.hex[:12]
        report = self.report if shown else _quiet
        report(Progress(short, events.PREPARING, 0, desc.size))
        on_disk = self.store.blobs.size(desc.digest)
        if on_disk != desc.size:
            raise StoreError(
                f"cannot push {self.ref}: the store's blob {desc.digest} is {on_disk} bytes, its "
                f"manifest says {desc.size}; run 'minidock system check'"
            )
        if self.repo.blob_size(desc.digest, what) is not None:
            report(Progress(short, events.LAYER_EXISTS, desc.size, desc.size))
            self._count("existed")
            return
        location: str | None = None
        for source in self.sources.get(desc.digest, [])[:_MOUNT_CANDIDATES]:
            scopes = (*self.repo.scopes, repository_scope(source, ("pull",)))
            location = self.repo.mount(desc.digest, source, ctx, scopes)
            if location is None:
                report(Progress(short, events.MOUNTED_FROM, desc.size, desc.size, source))
                self._count("mounted")
                return
            break  # the registry started an ordinary upload instead: use it
        failed = 0
        sent = _Sent(0, location or "")
        while True:
            if cancel.is_set():
                raise Cancelled
            start = sent.offset
            try:
                sent.location = sent.location or self.repo.start_upload(ctx)
                self._send(sent, desc=desc, ctx=ctx, short=short, report=report, cancel=cancel)
                break
            except RegistryError as exc:
                failed = 1 if sent.offset - start >= _PROGRESS_RESETS_RETRIES else failed + 1
                delay = self.policy.delay(failed) if failures.transient(exc) else None
                if delay is None:
                    raise
                detail = f"in {delay:.1f}s"
                report(Progress(short, events.RETRYING, sent.offset, desc.size, detail))
                self.client.sleep(delay)
                if not sent.location:
                    continue
                resumed = self._resume_point(sent.location, desc, ctx)
                if resumed is None:
                    break  # the blob arrived: only the answer was lost
                sent = resumed
        report(Progress(short, events.PUSHED, desc.size, desc.size))
        self._count("pushed")
        self._count("bytes", desc.size)

    def _resume_point(self, location: str, desc: Descriptor, ctx: failures.Context) -> _Sent | None:
        """After a failed upload request: where to go on. The session's offset (``GET`` on its
        location) when the registry still knows it; None when the blob arrived after all (the
        answer to the closing ``PUT`` was lost); else a new session from the start."""
        status = self.repo.upload_status(location, ctx)
        if status is not None and status[0] <= desc.size:
            return _Sent(*status)
        with contextlib.suppress(RegistryError):
            if self.repo.blob_size(desc.digest, ctx.what) == desc.size:
                return None
        return _Sent(0, "")

    def _send(
        self,
        sent: _Sent,
        *,
        desc: Descriptor,
        ctx: failures.Context,
        short: str,
        report: ProgressCallback,
        cancel: threading.Event,
    ) -> None:
        """Upload the blob from ``sent.offset`` on, in one ``PUT`` when it fits in a chunk
        (and nothing was sent yet), else in ``PATCH`` chunks; ``sent`` follows the progress."""
        path = self.store.blobs.path(desc.digest)
        chunk = max(1, self.client.options.chunk_size)
        report(Progress(short, events.PUSHING, sent.offset, desc.size))
        if sent.offset == 0 and desc.size <= chunk:
            self.repo.finish_upload(sent.location, desc.digest, FileSlice(path, 0, desc.size), ctx)
            return
        while sent.offset < desc.size:
            n = min(chunk, desc.size - sent.offset)
            body = FileSlice(path, sent.offset, n)
            sent.location = self.repo.upload_chunk(sent.location, body, sent.offset, ctx)
            sent.offset += n
            report(Progress(short, events.PUSHING, sent.offset, desc.size))
            if cancel.is_set():
                raise Cancelled
        self.repo.finish_upload(sent.location, desc.digest, None, ctx)

    def run(self) -> PushResult:
        ref = self.ref
        try:
            record = self.store.resolve(str(ref))
        except ImageNotFound:
            raise ImageNotFound(
                f"an image does not exist locally with the tag {ref.familiar()}: tag one first "
                f"('minidock tag IMAGE {ref.familiar()}')"
            ) from None
        with gc_shared(self.store.paths.gc_lock):
            image = self.store.image_of(record)
            manifest = image.manifest()
            raw = image.raw_manifest()
            todo: list[tuple[Descriptor, str, bool]] = [(manifest.config, "config", False)]
            seen = {manifest.config.digest}
            for layer in manifest.layers:
                if layer.digest not in seen:
                    seen.add(layer.digest)
                    todo.append((layer, f"layer {layer.digest}", True))
            tasks = [functools.partial(self.upload, d, what, shown) for d, what, shown in todo]
            run_all(tasks, self.client.options.upload_workers, "minidock-push")
            ctx = self.repo.ctx.doing("push", "manifest")
            assert ref.tag is not None
            reported = self.repo.put_manifest(ref.tag, raw, record.manifest.media_type)
        if reported is not None and reported != record.manifest.digest:
            raise failures.bad_digest(ctx, record.manifest.digest, reported)
        return PushResult(
            reference=ref,
            digest=record.manifest.digest,
            size=len(raw),
            pushed=self.counts["pushed"],
            mounted=self.counts["mounted"],
            existed=self.counts["existed"],
            bytes=self.counts["bytes"],
        )


def _quiet(event: Progress) -> None:
    return None


def push_image(
    client: RegistryClient,
    store: Store,
    ref: Reference,
    *,
    progress: ProgressCallback | None = None,
) -> PushResult:
    """Push the store's image named ``ref`` (default tag ``latest``) to ``ref``'s repository."""
    if ref.digest is not None:
        raise UsageError(
            f"cannot push {ref}: push a tag (name:tag), not a digest; the digest is what the "
            "registry computes"
        )
    return _Push(client, store, ref.with_default_tag(), serialised(progress)).run()
