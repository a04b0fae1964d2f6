"""Layer blob streams: the parallel, reproducible gzip writer and the prefetching and verifying
readers.

The writer cuts the tar stream into fixed ``CHUNK``-byte pieces and deflates them on a small
thread pool, each primed with the previous 32 KiB (pigz style). Chunk boundaries depend only on
the stream, never on file boundaries or the number of threads, so the same bytes always give a
byte-identical blob.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import threading
import zlib
from collections import deque

from pytest_minidock._record import dataclass
from pytest_minidock.digest import Digest, Hasher
from pytest_minidock.errors import DigestMismatch, StoreError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    import queue
    from collections.abc import Callable
    from concurrent.futures import Future, ThreadPoolExecutor
    from pathlib import Path
    from typing import IO, Final, cast
else:

    def cast(_type: object, value: object) -> object:  # typing's, without its import
        return value


__all__ = [
    "CHUNK",
    "ChunkSink",
    "GzipPipeline",
    "LayerBlob",
    "Prefetch",
    "QueueReader",
    "TeeReader",
    "VerifyingReader",
    "decompressing",
    "deflate_chunk",
]

CHUNK: Final = 1 << 20
"""Size of every read, of every piece of the tar stream handed to the compressor, and of
decompression reads."""

_WINDOW: Final = 32 * 1024
_EMPTY_FINAL_BLOCK: Final = b"\x03\x00"  # a final, empty, fixed-Huffman deflate block


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A compressed layer written to disk, with both of its digests."""

    path: Path
    """Where the compressed blob was written (the ``out`` the caller gave), fsynced: ready for
    ``BlobStore.publish``."""
    digest: Digest
    """sha256 of the compressed (gzip) bytes: the layer's blob digest in a manifest."""
    size: int
    """Compressed size in bytes."""
    diff_id: Digest
    """sha256 of the uncompressed tar stream: the layer's entry in ``rootfs.diff_ids``."""
    uncompressed_size: int
    """Size of the uncompressed tar stream in bytes."""


class ChunkSink:
    """Cuts the tar stream into exactly ``CHUNK``-byte pieces (the last one shorter).

    Fixed boundaries make the compressed output independent of how the stream was produced.
    File data is read straight into the chunk buffer, which grows as the stream needs, up to
    ``CHUNK`` (a small layer never pays for a whole chunk of zeroed memory).
    """

    __slots__ = ("_buf", "_emit", "_pos")

    def __init__(self, emit: Callable[[bytes], None]) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._emit = emit

    def _room(self, n: int) -> None:
        """Make the buffer hold ``n`` more bytes after ``_pos`` (``_pos + n <= CHUNK``)."""
        have = len(self._buf)
        if have < self._pos + n:
            self._buf += bytes(max(self._pos + n, min(CHUNK, 2 * have)) - have)

    def _ship(self) -> None:
        with memoryview(self._buf) as view:
            self._emit(bytes(view[: self._pos]))
        self._pos = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            n = min(len(view), CHUNK - self._pos)
            self._room(n)
            self._buf[self._pos : self._pos + n] = view[:n]
            self._pos += n
            view = view[n:]
            if self._pos == CHUNK:
                self._ship()

    def copy_file(self, path: bytes, size: int) -> None:
        """Append exactly ``size`` bytes of the regular file at ``path``."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb", buffering=0, closefd=True) as f:
            remaining = size
            while remaining:
                want = min(CHUNK - self._pos, remaining)
                self._room(want)
                with memoryview(self._buf) as view:
                    n = f.readinto(view[self._pos : self._pos + want])
                if not n:
                    raise StoreError(
                        f"{os.fsdecode(path)} shrank while it was being put in a layer"
                    )
                self._pos += n
                remaining -= n
                if self._pos == CHUNK:
                    self._ship()

    def flush(self) -> None:
        if self._pos:
            self._ship()


def deflate_chunk(chunk: bytes, zdict: bytes, level: int) -> bytes:
    """Raw-deflate one chunk, primed with the previous one's tail, ending on a byte boundary."""
    if zdict:
        comp = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY, zdict)
    else:
        comp = zlib.compressobj(level, zlib.DEFLATED, -15, 8, zlib.Z_DEFAULT_STRATEGY)
    return comp.compress(chunk) + comp.flush(zlib.Z_SYNC_FLUSH)


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class GzipPipeline:
    """gzip writer: hashes the raw stream, deflates chunks on a pool, hashes and writes output.

    ``finish`` fsyncs ``out`` before it returns: the blob is then ready to be renamed into the
    store (``BlobStore.publish``), which must never name a file whose bytes may still be lost.
    On an exception the caller removes ``out``."""

    def __init__(self, out: Path, level: int, workers: int | None = None) -> None:
        self._level = level
        self._workers = default_workers() if workers is None else workers
        self._out = open(out, "wb", buffering=0)  # noqa: SIM115 - closed in __exit__
        self._path = out
        self._raw = Hasher()
        self._crc = 0
        self._gz = Hasher()
        self._tail = b""
        self._pending: deque[Future[bytes]] = deque()
        self._pool: ThreadPoolExecutor | None = None
        """Started by the second chunk: a one-chunk layer (most of a build's) is deflated here,
        with no thread (nor the ``concurrent.futures`` import)."""
        self._held: tuple[bytes, bytes] | None = None
        """The first chunk and its priming tail, until a second one comes or the stream ends."""
        xfl = b"\x04" if level == 1 else b"\x02" if level == 9 else b"\x00"
        try:
            # magic, CM=deflate, no flags, MTIME=0, XFL, OS=unknown: no name, no time.
            self._write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + xfl + b"\xff")
        except BaseException:  # no ``__exit__`` for a constructor that raised
            self._out.close()
            raise

    def __enter__(self) -> GzipPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            for fut in self._pending:
                fut.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._out.close()

    def _write(self, data: bytes) -> None:
        self._gz.update(data)
        view = memoryview(data)
        while view:
            n = self._out.write(view)
            if n is None:  # pragma: no cover - only for non-blocking files
                continue
            view = view[n:]

    def feed(self, chunk: bytes) -> None:
        self._raw.update(chunk)
        self._crc = zlib.crc32(chunk, self._crc)
        if self._workers <= 0:
            self._write(deflate_chunk(chunk, self._tail, self._level))
        elif self._pool is None and self._held is None:
            self._held = (chunk, self._tail)
        else:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(
                    self._workers, thread_name_prefix="minidock-deflate"
                )
                assert self._held is not None
                held, tail = self._held
                self._held = None
                self._pending.append(self._pool.submit(deflate_chunk, held, tail, self._level))
            self._pending.append(self._pool.submit(deflate_chunk, chunk, self._tail, self._level))
            while len(self._pending) > 2 * self._workers:
                self._write(self._pending.popleft().result())
        self._tail = chunk[-_WINDOW:]

    def finish(self) -> LayerBlob:
        if self._held is not None:
            held, tail = self._held
            self._held = None
            self._write(deflate_chunk(held, tail, self._level))
        while self._pending:
            self._write(self._pending.popleft().result())
        trailer = struct.pack("<II", self._crc & 0xFFFFFFFF, self._raw.size & 0xFFFFFFFF)
        self._write(_EMPTY_FINAL_BLOCK + trailer)
        # Durable before anyone renames it into the store: a blob whose name survives a power
        # loss but whose bytes do not would be an empty or truncated file under a valid digest.
        os.fsync(self._out.fileno())
        return LayerBlob(
            path=self._path,
            digest=self._gz.digest(),
            size=self._gz.size,
            diff_id=self._raw.digest(),
            uncompressed_size=self._raw.size,
        )


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


class Prefetch(io.RawIOBase):
    """Reads ``inner`` in ``CHUNK`` pieces on a background thread, a few chunks ahead.

    For a gzip layer this runs inflate (which releases the GIL) in parallel with whatever the
    reader does with the bytes, e.g. creating files. Closing it (or dropping it: the thread holds
    no reference to it) stops the thread and closes ``inner`` and then ``also``.
    """

    _AHEAD: Final = 4

    def __init__(self, inner: io.BufferedIOBase, also: io.BufferedIOBase, what: str) -> None:
        super().__init__()
        self._inner = inner
        self._also = also
        import queue  # only for reading layers: not at import

        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(self._AHEAD)
        self._stop = threading.Event()
        self._pending = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(
            target=pump,
            args=(inner, self._queue, self._stop, what),
            name="minidock-inflate",
            daemon=True,
        )
        self._thread.start()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        if not self._pending:
            if self._eof:
                return 0
            item = self._queue.get()
            if isinstance(item, BaseException):
                self._eof = True
                raise item
            if not item:
                self._eof = True
                return 0
            self._pending = memoryview(item)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if self.closed:
            return
        import queue

        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.1)
        self._thread.join()
        try:
            self._inner.close()
        finally:
            self._also.close()
            super().close()


def pump(
    inner: io.BufferedIOBase,
    out: queue.Queue[bytes | BaseException],
    stop: threading.Event,
    what: str,
) -> None:
    """Body of the ``Prefetch`` thread: chunks, then b"" at EOF, or the error that ended it."""
    import queue

    def put(item: bytes | BaseException) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    try:
        while True:
            data = inner.read(CHUNK)
            if not put(data) or not data:
                return
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        error = StoreError(f"{what} is corrupt: {exc}")
        error.__cause__ = exc
        put(error)
    except BaseException as exc:  # handed to the reader, raised there
        put(exc)


class VerifyingReader(io.RawIOBase):
    """Passes bytes through, and at EOF checks they hash to the expected digest."""

    def __init__(self, inner: io.BufferedIOBase, expected: Digest, what: str) -> None:
        super().__init__()
        self._inner = inner
        self._expected = expected
        self._what = what
        import hashlib  # for layers: large, and it loads OpenSSL (~4 ms)

        self._h = hashlib.new(expected.algorithm)
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        n = self._inner.readinto(buffer)
        if n:
            self._h.update(memoryview(buffer)[:n])
        elif not self._done:
            self._done = True
            got = self._h.hexdigest()
            if got != self._expected.hex:
                raise DigestMismatch(
                    f"{self._what} uncompresses to {self._expected.algorithm}:{got}, "
                    f"expected diff_id {self._expected}"
                )
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._inner.close()
            finally:
                super().close()


class QueueReader:
    """A read-only stream fed chunk by chunk through a queue (None ends it)."""

    def __init__(self, q: queue.Queue[bytes | None]) -> None:
        self._q = q
        self._buf = b""
        self._eof = False

    def read(self, n: int = -1) -> bytes:
        while not self._eof and (n < 0 or len(self._buf) < n):
            chunk = self._q.get()
            if chunk is None:
                self._eof = True
            else:
                self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def drain(self) -> None:
        while not self._eof:
            if self._q.get() is None:
                self._eof = True


class TeeReader:
    """Reads ``src`` in large chunks, serving reads and copying every chunk into a queue
    (``head``, bytes the caller already read from ``src``, first)."""

    def __init__(self, src: IO[bytes], q: queue.Queue[bytes | None], head: bytes = b"") -> None:
        self._src = src
        self._q = q
        self._buf = memoryview(b"")
        self._eof = False
        if head:  # bytes already read from ``src``: served (and queued) first
            self._q.put(head)
            self._buf = memoryview(head)

    def _fill(self) -> None:
        chunk = self._src.read(CHUNK)
        if not chunk:
            self._eof = True
            return
        self._q.put(chunk)
        self._buf = memoryview(chunk)

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        want = n
        while (want < 0 or want > 0) and not (self._eof and not self._buf):
            if not self._buf:
                self._fill()
                continue
            take = len(self._buf) if want < 0 else min(want, len(self._buf))
            parts.append(bytes(self._buf[:take]))
            self._buf = self._buf[take:]
            if want > 0:
                want -= take
        return b"".join(parts)

    def drain(self) -> None:
        """Copy the rest of the source into the queue (tar padding after the end marker)."""
        self._buf = memoryview(b"")
        while not self._eof:
            self._fill()
            self._buf = memoryview(b"")


def decompressing(src: IO[bytes], source: str) -> IO[bytes]:
    """Wrap ``src`` so that gzip, bzip2 and xz input reads as a plain tar."""
    buffered = cast("io.BufferedReader", src)
    if not hasattr(src, "peek"):
        buffered = io.BufferedReader(cast("io.RawIOBase", src), buffer_size=CHUNK)
    head = buffered.peek(6)[:6]
    if head[:2] == b"\x1f\x8b":
        import gzip

        return cast("IO[bytes]", gzip.GzipFile(fileobj=buffered, mode="rb"))
    if head[:3] == b"BZh":
        import bz2

        return cast("IO[bytes]", bz2.BZ2File(buffered, "rb"))
    if head == b"\xfd7zXZ\x00":
        import lzma

        return cast("IO[bytes]", lzma.LZMAFile(buffered, "rb"))
    if head[:4] == b"\x28\xb5\x2f\xfd":
        raise StoreError(f"{source}: zstd-compressed tars are not supported; decompress it first")
    return cast("IO[bytes]", buffered)
