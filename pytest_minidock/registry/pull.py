"""Pull: resolve a reference to one platform's manifest, fetch its blobs into the store, name it.

1. GET the manifest by tag or digest (OCI and Docker schema 2 manifests and indexes), verified
   against the digest asked for or the registry's ``Docker-Content-Digest``. An index selects the
   platform's manifest (``platforms``), skipping attestations; that manifest is fetched by digest
   and verified too.
2. The config and the layers the store lacks are downloaded on a thread pool. Each blob streams
   into a temp file in the store while it is hashed; a connection that breaks is resumed with a
   ``Range`` request where the registry allows it (else started again), with backoff. A blob is
   published only when its size and digest are right.
3. The image is named (``Store.write_image``) only once everything is there. A failed pull leaves
   no name and no partial blob: temp files are removed, and blobs already verified stay
   unreferenced until the next garbage collection (a retried pull reuses them).

Mirrors are tried first, in order; any registry error from a mirror moves on to the next source.
Layers are unpacked on first use (``Store.snapshot``), not here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from typing import IO, TYPE_CHECKING

from pytest_minidock._record import dataclass
from pytest_minidock.digest import Digest, Hasher
from pytest_minidock.errors import ImageError, RegistryError, StoreError
from pytest_minidock.image import mediatypes as mt
from pytest_minidock.image.model import ImageConfig, Index, Manifest
from pytest_minidock.reference import Reference
from pytest_minidock.registry import failures
from pytest_minidock.registry import progress as events
from pytest_minidock.registry.parallel import Cancelled, run_all
from pytest_minidock.registry.platforms import available, host_platform, normalize, select_manifest
from pytest_minidock.registry.progress import Progress, serialised
from pytest_minidock.registry.transport import network_errors
from pytest_minidock.store.locking import gc_shared
from pytest_minidock.store.store import StoreLayer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pytest_minidock.image.model import Descriptor, Platform
    from pytest_minidock.registry.client import Fetched, RegistryClient, Repository
    from pytest_minidock.registry.hosts import Endpoint
    from pytest_minidock.registry.progress import ProgressCallback
    from pytest_minidock.registry.transport import Response
    from pytest_minidock.store.store import ImageRecord, Store

__all__ = ["ACCEPT", "PullResult", "pull_image"]

ACCEPT = (mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST, mt.OCI_MANIFEST, mt.DOCKER_MANIFEST)
"""What a pull accepts, in order of preference (docker's list)."""

_LAYERS = frozenset(
    {
        mt.OCI_LAYER_GZIP,
        mt.DOCKER_LAYER_GZIP,
        mt.OCI_LAYER,
        mt.DOCKER_LAYER,
        mt.DOCKER_FOREIGN_LAYER,
        mt.OCI_NONDIST_LAYER_GZIP,
    }
)
_CHUNK = 1 << 20
_REPORT_EVERY = 1 << 19
_WRITE_BACK_EVERY = 4 << 20
"""Bytes written between background write-backs of a blob being downloaded."""
_PROGRESS_RESETS_RETRIES = 1 << 20
"""An attempt that got this many bytes before breaking does not count against the retries."""


@dataclass(frozen=True, slots=True)
class PullResult:
    """What a pull did."""

    reference: Reference
    """The name the image got: the tag pulled, or ``name@digest`` for a pull by digest."""
    record: ImageRecord
    digest: Digest
    """The digest of the platform's manifest (what ``name@digest`` pins)."""
    index_digest: Digest | None
    """The digest of the index the manifest was chosen from, if any."""
    downloaded: int
    """Blobs downloaded (0 when the store had them all)."""
    bytes: int
    """Bytes downloaded."""
    up_to_date: bool
    """True when the name already pointed at this image and nothing was downloaded."""
    source: str
    """Where it came from: the registry's host, or the mirror's."""

    @property
    def id(self) -> Digest:
        """The image ID (the config's digest)."""
        return self.record.id


class _WriteBack:
    """Writes a growing file's data to disk in the background, one ``fdatasync`` at a time, so
    that the ``fsync`` publishing it finds little left to do: the disk works while the network
    does, instead of after it.

    A failed write-back is kept in ``error``: Linux reports a write-back error once per open
    file, so the final ``fsync`` on the same descriptor would return success after it."""

    __slots__ = ("_fd", "_thread", "error")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._thread: threading.Thread | None = None
        self.error: OSError | None = None

    def kick(self) -> None:
        """Start writing back what was written so far, unless a write-back is running."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="minidock-writeback", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            os.fdatasync(self._fd)
        except OSError as exc:  # raised by the commit: the final fsync will not see it again
            if self.error is None:
                self.error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


class _BlobSink:
    """One blob being written to a temp file in the store: hashed as it grows, written back to
    disk in the background, restartable, published only when its size and digest are right."""

    def __init__(self, store: Store, digest: Digest) -> None:
        self._store = store
        self.digest = digest
        self.path = store.blobs.temp_path("pull")
        self._file: IO[bytes] | None = open(self.path, "xb", buffering=0)  # noqa: SIM115 - closed in commit/discard
        self._hasher = Hasher(digest.algorithm)
        self._writeback = _WriteBack(self._file.fileno())
        self._unflushed = 0
        self.published = False

    @property
    def size(self) -> int:
        return self._hasher.size

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        assert self._file is not None
        view = memoryview(chunk)
        while view:  # an unbuffered file may write less than asked
            done = self._file.write(view)
            view = view[done or 0 :]
        self._hasher.update(chunk)
        self._unflushed += len(chunk)
        if self._unflushed >= _WRITE_BACK_EVERY:
            self._unflushed = 0
            self._writeback.kick()

    def restart(self) -> None:
        """Throw away what was written (the registry ignored a ``Range`` request)."""
        assert self._file is not None
        self._writeback.wait()
        self._file.seek(0)
        self._file.truncate()
        self._hasher = Hasher(self.digest.algorithm)
        self._unflushed = 0

    def commit(self, ctx: failures.Context, size: int) -> None:
        """Verify size and digest, fsync, and publish into the store."""
        assert self._file is not None
        if self._hasher.size != size:
            raise failures.bad_size(ctx, size, self._hasher.size)
        got = self._hasher.digest()
        if got != self.digest:
            raise failures.bad_digest(ctx, self.digest, got)
        self._writeback.wait()
        try:
            if self._writeback.error is not None:
                raise self._writeback.error
            os.fsync(self._file.fileno())
        except OSError as exc:  # the bytes may not be on disk: never publish them
            raise StoreError(
                f"cannot write blob {self.digest} to {self.path}: {exc.strerror or exc}"
            ) from exc
        self._file.close()
        self._file = None
        self._store.blobs.publish(self.path, self.digest)
        self.published = True

    def discard(self) -> None:
        self._writeback.wait()
        if self._file is not None:
            self._file.close()
            self._file = None
        if not self.published:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def _resumes(response: Response, offset: int) -> bool:
    """Whether a response to ``Range: bytes=OFFSET-`` really continues at ``offset``."""
    if response.status != 206:
        return False
    text = (response.header("Content-Range") or "").strip()
    unit, _, rest = text.partition(" ")
    start = rest.partition("-")[0]
    return unit == "bytes" and start.isdigit() and int(start) == offset


class _PulledImage:
    """The ``Image`` being committed: registry JSON over blobs already in the store."""

    def __init__(
        self, store: Store, raw_manifest: bytes, manifest: Manifest, raw_config: bytes
    ) -> None:
        self._store = store
        self._raw_manifest = raw_manifest
        self._manifest = manifest
        self._raw_config = raw_config
        self._config = ImageConfig.from_json(raw_config)

    def raw_manifest(self) -> bytes:
        return self._raw_manifest

    def manifest(self) -> Manifest:
        return self._manifest

    def raw_config(self) -> bytes:
        return self._raw_config

    def config(self) -> ImageConfig:
        return self._config

    def layers(self) -> list[StoreLayer]:
        return [
            StoreLayer(d, diff_id, self._store.blobs)
            for d, diff_id in zip(self._manifest.layers, self._config.diff_ids, strict=True)
        ]


class _Pull:
    """One attempt at pulling ``ref`` from one endpoint."""

    def __init__(
        self,
        *,
        client: RegistryClient,
        store: Store,
        ref: Reference,
        endpoint: Endpoint,
        platform: Platform | None,
        report: ProgressCallback,
    ) -> None:
        self.client = client
        self.store = store
        self.ref = ref
        self.endpoint = endpoint
        self.platform = platform
        self.report = report
        self.repo: Repository = client.repository(endpoint, ref.path, str(ref))
        self.policy = client.options.retry
        self.downloaded = 0
        self.bytes = 0
        self._count_lock = threading.Lock()

    # -- resolving -----------------------------------------------------------------------------
    def resolve(self) -> tuple[Fetched, Manifest, Digest | None]:
        """The platform's manifest (raw and parsed) and the index it came from, if any."""
        ctx = self.repo.ctx.doing("pull", "manifest")
        target = str(self.ref.digest) if self.ref.digest is not None else str(self.ref.tag)
        fetched = self.repo.get_manifest(target, ACCEPT, expected=self.ref.digest)
        index_digest: Digest | None = None
        if fetched.media_type in mt.INDEX_TYPES:
            index_digest = fetched.digest
            try:
                index = Index.from_json(fetched.raw, what="manifest list")
            except ImageError as exc:
                raise failures.bad_content(ctx, f"sent a malformed manifest list: {exc}") from exc
            want = self.platform or host_platform()
            chosen = select_manifest(index, want)
            if chosen is None:
                raise failures.no_platform(ctx, str(normalize(want)), available(index))
            fetched = self.repo.get_manifest(str(chosen.digest), ACCEPT, expected=chosen.digest)
            if len(fetched.raw) != chosen.size:
                raise failures.bad_size(ctx, chosen.size, len(fetched.raw))
            if fetched.media_type in mt.INDEX_TYPES:
                raise failures.bad_content(
                    ctx, "lists another manifest list for the platform (nested indexes)"
                )
        if fetched.media_type not in mt.MANIFEST_TYPES:
            raise failures.bad_content(
                ctx,
                f"serves {fetched.media_type or 'an unknown media type'}, not an image manifest",
                "minidock pulls OCI and Docker schema 2 images",
            )
        try:
            manifest = Manifest.from_json(fetched.raw)
        except ImageError as exc:
            raise failures.bad_content(ctx, f"sent a malformed manifest: {exc}") from exc
        if manifest.config.media_type not in mt.CONFIG_TYPES:
            raise failures.bad_content(
                ctx,
                f"serves an artifact, not a container image (config type "
                f"{manifest.config.media_type})",
            )
        for layer in manifest.layers:
            if layer.media_type not in _LAYERS:
                raise failures.bad_content(
                    ctx,
                    f"serves layer {layer.digest} as {layer.media_type}, which minidock cannot "
                    "unpack",
                    "gzip and uncompressed tar layers are supported (not zstd yet)",
                )
        return fetched, manifest, index_digest

    # -- downloading ---------------------------------------------------------------------------
    def download(self, desc: Descriptor, what: str, cancel: threading.Event) -> None:
        """Fetch one blob into the store, resuming broken connections; verify, then publish.

        Progress is reported for layers only (as docker does), not for the config.
        """
        ctx = self.repo.ctx.doing("download", what)
        short = desc.digest.hex[:12]
        report = self.report if what != "config" else _quiet
        sink = _BlobSink(self.store, desc.digest)
        failed = 0
        try:
            report(Progress(short, events.DOWNLOADING, 0, desc.size))
            while True:
                if cancel.is_set():
                    raise Cancelled
                offset = sink.size
                response = self.repo.open_blob(desc.digest, ctx, offset=offset)
                before = sink.size
                try:
                    if offset and not _resumes(response, offset):
                        sink.restart()
                    elif not offset and response.status == 206:
                        raise failures.bad_content(
                            ctx, "answered a plain GET with a partial response (206)"
                        )
                    self._copy(
                        response, sink=sink, desc=desc, ctx=ctx, report=report, cancel=cancel
                    )
                except network_errors() as exc:
                    failed = 1 if sink.size - before >= _PROGRESS_RESETS_RETRIES else failed + 1
                    delay = self.policy.delay(failed) if failures.retryable_exception(exc) else None
                    if delay is None:
                        raise failures.connection_error(
                            ctx, exc, attempts=failed, timeout=self.client.options.timeout
                        ) from exc
                    report(
                        Progress(short, events.RETRYING, sink.size, desc.size, f"in {delay:.1f}s")
                    )
                    self.client.sleep(delay)
                    continue
                finally:
                    response.close()
                break
            report(Progress(short, events.VERIFYING, sink.size, desc.size))
            sink.commit(ctx, desc.size)
            with self._count_lock:
                self.downloaded += 1
                self.bytes += desc.size
            report(Progress(short, events.DOWNLOAD_COMPLETE, desc.size, desc.size))
        finally:
            sink.discard()

    def _copy(
        self,
        response: Response,
        *,
        sink: _BlobSink,
        desc: Descriptor,
        ctx: failures.Context,
        report: ProgressCallback,
        cancel: threading.Event,
    ) -> None:
        short = desc.digest.hex[:12]
        reported = sink.size
        # receives come in pieces of ~64 KiB: gather them in a buffer, write and hash by the MiB;
        # a transport that can receive into it (``readinto1``) spares an allocation per receive
        readinto = getattr(response, "readinto1", None)
        buffer = memoryview(bytearray(_CHUNK))
        filled = 0
        try:
            while True:
                if readinto is not None:
                    n = readinto(buffer[filled:])
                else:
                    chunk = response.read1(_CHUNK - filled)
                    n = len(chunk)
                    buffer[filled : filled + n] = chunk
                if not n:
                    return
                if sink.size + filled + n > desc.size:
                    raise failures.bad_size(ctx, desc.size, sink.size + filled + n)
                filled += n
                if filled == _CHUNK:
                    sink.write(buffer)
                    filled = 0
                    if sink.size - reported >= _REPORT_EVERY:
                        reported = sink.size
                        report(Progress(short, events.DOWNLOADING, sink.size, desc.size))
                if cancel.is_set():
                    raise Cancelled
        finally:  # what arrived before a failure counts: a retry resumes after it
            if filled:
                sink.write(buffer[:filled])
            buffer.release()
            if sink.size != reported:
                report(Progress(short, events.DOWNLOADING, sink.size, desc.size))

    def download_all(self, todo: Sequence[tuple[Descriptor, str]]) -> None:
        """Download blobs on a pool; the first failure stops the others and is raised."""
        tasks = [functools.partial(self.download, desc, what) for desc, what in todo]
        run_all(tasks, self.client.options.download_workers, "minidock-pull")

    # -- the whole pull ------------------------------------------------------------------------
    def run(self) -> PullResult:
        ref = self.ref
        self.report(
            Progress(ref.tag or str(ref.digest), events.PULLING_FROM, detail=ref.familiar_name)
        )
        fetched, manifest, index_digest = self.resolve()
        name = ref if ref.digest is None else Reference(ref.domain, ref.path, None, ref.digest)
        previous = _named(self.store, name)
        blobs = self.store.blobs
        with gc_shared(self.store.paths.gc_lock):
            todo: list[tuple[Descriptor, str]] = []
            seen: set[Digest] = set()
            if not blobs.exists(manifest.config.digest):
                todo.append((manifest.config, "config"))
                seen.add(manifest.config.digest)
            for layer in manifest.layers:
                short = layer.digest.hex[:12]
                if layer.digest in seen:
                    continue
                seen.add(layer.digest)
                if blobs.exists(layer.digest):
                    self.report(Progress(short, events.ALREADY_EXISTS, layer.size, layer.size))
                else:
                    self.report(Progress(short, events.PULLING_FS_LAYER, 0, layer.size))
                    todo.append((layer, f"layer {layer.digest}"))
            if todo:
                self.download_all(todo)
            ctx = self.repo.ctx.doing("pull", "config")
            raw_config = blobs.read(manifest.config.digest)
            try:
                image = _PulledImage(self.store, fetched.raw, manifest, raw_config)
            except ImageError as exc:
                raise failures.bad_content(ctx, f"sent a malformed image config: {exc}") from exc
            config = image.config()
            if len(config.diff_ids) != len(manifest.layers):
                raise failures.bad_content(
                    ctx,
                    f"sent an image whose manifest has {len(manifest.layers)} layers but whose "
                    f"config lists {len(config.diff_ids)}",
                )
            if self.platform is not None and index_digest is None:
                have = normalize(config.platform)
                want = normalize(self.platform)
                if (have.os, have.architecture, have.variant) != (
                    want.os,
                    want.architecture,
                    want.variant,
                ):
                    raise failures.no_platform(ctx, str(want), [str(have)])
            record = self.store.write_image(image, [name], unpack=False)
        for layer in manifest.layers:
            short = layer.digest.hex[:12]
            if any(d.digest == layer.digest for d, _ in todo):
                self.report(Progress(short, events.PULL_COMPLETE, layer.size, layer.size))
        return PullResult(
            reference=name,
            record=record,
            digest=fetched.digest,
            index_digest=index_digest,
            downloaded=self.downloaded,
            bytes=self.bytes,
            up_to_date=previous == fetched.digest and not todo,
            source=self.endpoint.host,
        )


def _quiet(event: Progress) -> None:
    return None


def _named(store: Store, name: Reference) -> Digest | None:
    """The manifest digest ``name`` points at in the store, if any."""
    for record in store.images():
        if name in record.names:
            return record.manifest.digest
    return None


def pull_image(
    client: RegistryClient,
    store: Store,
    ref: Reference,
    *,
    platform: Platform | None = None,
    progress: ProgressCallback | None = None,
) -> PullResult:
    """Pull ``ref`` (default tag ``latest``) for ``platform`` (default: this machine's).

    ``platform`` given explicitly is also enforced for a single-platform image. Raises a
    ``RegistryError`` subclass naming the registry and reference when it cannot.
    """
    ref = ref.with_default_tag()
    report = serialised(progress)
    endpoints = client.hosts.pull_endpoints(ref.domain)
    for i, endpoint in enumerate(endpoints):
        try:
            attempt = _Pull(
                client=client,
                store=store,
                ref=ref,
                endpoint=endpoint,
                platform=platform,
                report=report,
            )
            return attempt.run()
        except RegistryError:
            if i == len(endpoints) - 1:
                raise
    raise AssertionError("unreachable: the registry itself is always the last endpoint")
