"""Content-addressed blobs under ``ROOT/blobs/<algorithm>/<hex>``, written crash-safely.

A blob becomes visible only whole and verified: bytes go to a temp file in ``ROOT/tmp``, are
hashed as they are written, checked against the expected digest, fsynced, and renamed into place
(then the directory is fsynced). Two processes writing the same blob at once both succeed: the
rename is atomic and both files hold the same bytes. Temp files left by a crashed writer are
removed by ``remove_stale_temps``.

Every way into ``ROOT/blobs`` goes through ``BlobStore.publish``, and every file it renames has
had its bytes fsynced by its writer: ``BlobWriter.commit``, ``blobio.GzipPipeline.finish`` (gzip
layers, from a tree or a tar stream, large or in memory), ``layers.copy_tar`` (uncompressed
layers) and the registry pull's blob sink. Without that, a power loss could keep the rename but
not the bytes: an empty or truncated file under a valid digest.

A writer about to publish several blobs and then something that refers to them (an image: its
layers, config and manifest, then the index) may ask for ``durable=False`` renames and call
``sync`` once before writing the reference: one directory fsync instead of one per blob, and
the renames are durable before anything durable names them.
"""

from __future__ import annotations

import contextlib
import os
import time

from pytest_minidock.digest import Digest, Hasher
from pytest_minidock.errors import BlobNotFound, DigestMismatch, MinidockError, StoreError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path
    from types import TracebackType
    from typing import IO, Any

__all__ = ["BlobStore", "BlobWriter", "fsync_dir", "pid_alive", "remove_tree"]

_CHUNK = 1 << 20
STALE_TEMP_SECONDS = 24 * 3600


def fsync_dir(path: Path) -> None:
    """fsync a directory so that a rename inside it is durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (any owner)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BlobWriter:
    """A file-like sink for one blob: ``write()`` chunks, then ``commit()`` verifies and publishes.

    Used as a context manager, an exception (or a missing ``commit``) removes the temp file, so no
    half-written blob is ever left behind.
    """

    def __init__(self, store: BlobStore, expected: Digest | None, expected_size: int | None):
        self._store = store
        self._expected = expected
        self._expected_size = expected_size
        self._hasher = Hasher(expected.algorithm if expected else "sha256")
        self.temp_path = store.temp_path("blob")
        try:
            self._file: IO[bytes] | None = open(self.temp_path, "xb")  # noqa: SIM115
        except OSError as exc:
            raise self._error(exc) from exc
        self.digest: Digest | None = None

    def _error(self, exc: OSError, what: str = "blob") -> StoreError:
        expected = self._expected
        name = what if expected is None or str(expected) in what else f"{what} {expected}"
        return StoreError(f"cannot write {name} to {self.temp_path}: {exc.strerror or exc}")

    def write(self, chunk: bytes | bytearray | memoryview) -> int:
        assert self._file is not None, "blob writer already closed"
        self._hasher.update(chunk)
        try:
            self._file.write(chunk)
        except OSError as exc:  # ENOSPC, EIO: the ``with`` block (or ``abort``) drops the temp
            raise self._error(exc) from exc
        return len(chunk)

    @property
    def size(self) -> int:
        return self._hasher.size

    def commit(self, *, what: str = "blob", durable: bool = True) -> Digest:
        """Verify digest and size, fsync and rename into place; return the blob's digest.
        ``durable=False``: the rename is made durable by the store's next ``sync``."""
        assert self._file is not None, "blob writer already closed"
        try:
            try:
                self._file.flush()
                os.fsync(self._file.fileno())  # the bytes are on disk before the name is
                self._file.close()
            except OSError as exc:
                raise self._error(exc, what) from exc
            self._file = None
            if self._expected_size is not None and self._hasher.size != self._expected_size:
                raise DigestMismatch(
                    f"{what} {self._expected or ''}: got {self._hasher.size} bytes, expected "
                    f"{self._expected_size}".replace("  ", " ")
                )
            if self._expected is not None:
                self._hasher.verify(self._expected, what=what)
            digest = self._hasher.digest()
            self._store.publish(self.temp_path, digest, durable=durable)
        except BaseException:
            self.abort()  # a failed fsync, a wrong size or digest: no temp, no blob
            raise
        self.digest = digest
        return digest

    def abort(self) -> None:
        """Drop the temp file (idempotent)."""
        if self._file is not None:
            file, self._file = self._file, None
            with contextlib.suppress(OSError):  # closing flushes: it may fail as a write did
                file.close()
        with contextlib.suppress(FileNotFoundError):
            self.temp_path.unlink()

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.digest is None:
            self.abort()


class BlobStore:
    """The blobs of a store: existence, streaming reads, verified writes and deletion."""

    def __init__(self, blobs_dir: Path, tmp_dir: Path) -> None:
        self.dir = blobs_dir
        self.tmp_dir = tmp_dir
        self._unsynced: set[Path] = set()
        """Directories holding renames made with ``durable=False``, until ``sync``."""

    def path(self, digest: Digest) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        return self.dir / digest.algorithm / digest.hex

    def exists(self, digest: Digest) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: Digest) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is missing from the store {self.dir}") from None

    def open(self, digest: Digest) -> IO[bytes]:
        """Open a blob for reading; ``BlobNotFound`` names it when absent."""
        try:
            return open(self.path(digest), "rb")
        except FileNotFoundError:
            raise BlobNotFound(f"blob {digest} is missing from the store {self.dir}") from None

    def read(self, digest: Digest, *, verify: bool = True) -> bytes:
        """The whole blob (for small JSON blobs); verified against its digest by default."""
        with self.open(digest) as f:
            data = f.read()
        if verify:
            try:
                digest.verify(data)
            except DigestMismatch as exc:
                raise DigestMismatch(f"blob {self.path(digest)} is corrupt: {exc}") from None
        return data

    def temp_path(self, prefix: str) -> Path:
        """A fresh temp path in the store's tmp dir, naming this pid (for stale clean-up)."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        return self.tmp_dir / f"{prefix}-{os.getpid()}-{os.urandom(8).hex()}"

    def writer(
        self, expected: Digest | None = None, expected_size: int | None = None
    ) -> BlobWriter:
        """A ``BlobWriter``; with ``expected`` the commit fails unless the bytes hash to it."""
        return BlobWriter(self, expected, expected_size)

    def write_bytes(
        self, data: bytes, expected: Digest | None = None, *, durable: bool = True
    ) -> Digest:
        """Store ``data`` (skipping the write when the blob exists); return its digest."""
        digest = Digest.from_bytes(data) if expected is None else expected
        if expected is not None:
            expected.verify(data)
        if self.exists(digest):
            return digest
        with self.writer(digest, len(data)) as w:
            w.write(data)
            return w.commit(durable=durable)

    def ingest(
        self,
        src: IO[bytes],
        expected: Digest | None = None,
        expected_size: int | None = None,
        *,
        what: str = "blob",
    ) -> tuple[Digest, int]:
        """Copy a stream into the store, verifying it; return (digest, size)."""
        with self.writer(expected, expected_size) as w:
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                w.write(chunk)
            digest = w.commit(what=what)
            return digest, w.size

    def publish(self, temp_path: Path, digest: Digest, *, durable: bool = True) -> Path:
        """Rename an already verified temp file into place as the blob ``digest`` (made
        durable now, or with ``durable=False`` by the next ``sync``). The caller has fsynced
        ``temp_path``'s bytes (see the module docstring); on failure ``temp_path`` is removed."""
        final = self.path(digest)
        try:
            if not final.parent.is_dir():  # a new algorithm's directory: its entry durable too
                final.parent.mkdir(parents=True, exist_ok=True)
                fsync_dir(final.parent.parent)
            os.chmod(temp_path, 0o444)
            os.replace(temp_path, final)
            if durable:
                fsync_dir(final.parent)
            else:
                self._unsynced.add(final.parent)
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                temp_path.unlink()
            raise StoreError(f"cannot store blob {digest} at {final}: {exc.strerror}") from exc
        return final

    def sync(self) -> None:
        """Make durable the renames of every ``durable=False`` publish so far, and those of
        other processes into the sha256 directory (a blob found there and reused, rather than
        written again, may be one whose writer has not synced it yet)."""
        dirs = {self.dir / "sha256", *self._unsynced}
        self._unsynced.clear()
        for directory in sorted(dirs):
            try:
                fsync_dir(directory)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StoreError(f"cannot sync {directory}: {exc.strerror}") from exc

    def delete(self, digest: Digest) -> int:
        """Remove a blob; return the bytes freed (0 if it was already gone)."""
        path = self.path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def __iter__(self) -> Iterator[Digest]:
        """Every blob present, by digest (files with names that are not digests are skipped)."""
        if not self.dir.is_dir():
            return
        for algo_dir in sorted(self.dir.iterdir()):
            if not algo_dir.is_dir():
                continue
            for entry in sorted(algo_dir.iterdir()):
                try:
                    yield Digest(algo_dir.name, entry.name)
                except ValueError:
                    continue

    def remove_stale_temps(
        self,
        *,
        now: float | None = None,
        remove: Callable[[Sequence[Path]], None] | None = None,
    ) -> int:
        """Remove temp files whose writer process is gone (or that are a day old); return count.
        ``remove``: how to remove one (default ``remove_tree``; the store passes its own when
        temps may hold files the user may not remove itself)."""
        if not self.tmp_dir.is_dir():
            return 0
        now = time.time() if now is None else now
        removed = 0
        for entry in self.tmp_dir.iterdir():
            parts = entry.name.split("-")
            pid = int(parts[1]) if len(parts) >= 3 and parts[1].isdigit() else None
            try:
                age = now - entry.lstat().st_mtime
            except FileNotFoundError:
                continue
            if (pid is not None and pid != os.getpid() and not pid_alive(pid)) or (
                age > STALE_TEMP_SECONDS
            ):
                try:
                    if remove is None:
                        remove_tree(entry)
                    else:
                        remove([entry])
                except MinidockError:
                    continue  # never read again; the next clean-up tries once more
                removed += 1
        return removed


def remove_tree(path: Path) -> None:
    """Remove a file or a directory tree, also read-only directories a layer made (as root or
    not); a path that is already gone is fine. Raise ``StoreError`` naming what could not be
    removed: a tree left half-deleted must not pass for removed."""
    import shutil

    def onerror(func: Any, p: str, exc_info: Any) -> None:
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        if func in (os.unlink, os.remove, os.rmdir):
            # a read-only directory (mode 0555 in a layer) refuses removing its entries
            os.chmod(os.path.dirname(p), 0o700)
            func(p)
        elif func in (os.open, os.scandir, os.lstat):
            # a directory we may not list (or enter): open it up, then remove it whole
            os.chmod(p, 0o700)
            shutil.rmtree(p, onerror=onerror)
        else:
            raise exc

    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, onerror=onerror)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    except OSError as exc:
        where = exc.filename or path
        raise StoreError(f"cannot remove {where}: {exc.strerror or exc}") from exc
