"""Push: the store's image named by a tag goes to that tag's registry and repository.

Each blob (the config and the layers, on a thread pool) is first checked with ``HEAD`` and skipped
when the repository has it. A blob that another repository of the same registry is known to hold
(the store has an image of it under that name) is mounted from there (``POST
…/blobs/uploads/?mount=DIGEST&from=REPO``) instead of sent again. Others are uploaded in one
``PUT`` when they are at most ``RegistryOptions.chunk_size`` bytes, else in ``PATCH`` chunks of that
size with ``Content-Range``, closed by a ``PUT ?digest=``. An upload that fails for a transient
reason (connection, 5xx, 429) starts again in a new upload session, with backoff. The manifest is
``PUT`` last, so the tag never points at an image whose blobs are not all there, and the digest
the registry reports must be the manifest's own.
"""

from __future__ import annotations

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
        while True:
            if cancel.is_set():
                raise Cancelled
            try:
                location = location or self.repo.start_upload(ctx)
                self._send(location, desc=desc, ctx=ctx, short=short, report=report, cancel=cancel)
                break
            except RegistryError as exc:
                failed += 1
                delay = self.policy.delay(failed) if failures.transient(exc) else None
                if delay is None:
                    raise
                report(Progress(short, events.RETRYING, 0, desc.size, f"in {delay:.1f}s"))
                self.client.sleep(delay)
                location = None
        report(Progress(short, events.PUSHED, desc.size, desc.size))
        self._count("pushed")
        self._count("bytes", desc.size)

    def _send(
        self,
        location: str,
        *,
        desc: Descriptor,
        ctx: failures.Context,
        short: str,
        report: ProgressCallback,
        cancel: threading.Event,
    ) -> None:
        path = self.store.blobs.path(desc.digest)
        chunk = max(1, self.client.options.chunk_size)
        report(Progress(short, events.PUSHING, 0, desc.size))
        if desc.size <= chunk:
            self.repo.finish_upload(location, desc.digest, FileSlice(path, 0, desc.size), ctx)
            return
        offset = 0
        while offset < desc.size:
            n = min(chunk, desc.size - offset)
            location = self.repo.upload_chunk(location, FileSlice(path, offset, n), offset, ctx)
            offset += n
            report(Progress(short, events.PUSHING, offset, desc.size))
            if cancel.is_set():
                raise Cancelled
        self.repo.finish_upload(location, desc.digest, None, ctx)

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
