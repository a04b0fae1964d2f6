"""Content digests: the ``Digest`` value type and a streaming hasher that verifies as it goes.

A ``Digest`` is parsed once at the edge (``Digest.parse("sha256:…")``) and passed around as a
value; nothing deeper in the code handles raw ``"sha256:…"`` strings.
"""

from __future__ import annotations

import sys

from pytest_minidock._record import dataclass
from pytest_minidock.errors import DigestMismatch, InvalidDigest

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from typing import IO, Any

__all__ = ["Digest", "Hasher", "sha256", "sha256_bytes", "sha256_file"]

_HEX_LEN = {"sha256": 64, "sha512": 128}
_CHUNK = 1 << 20
_HEX_DIGITS = frozenset("0123456789abcdef")
_ALGO_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_ALGO_SEPARATORS = frozenset(".+_-")


def _is_algorithm(text: str) -> bool:
    """The OCI grammar ``[a-z0-9]+([+._-][a-z0-9]+)*``, without a regular expression."""
    if text in _HEX_LEN:
        return True
    previous_was_separator = True  # no separator first
    for c in text:
        if c in _ALGO_SEPARATORS:
            if previous_was_separator:
                return False
            previous_was_separator = True
        elif c in _ALGO_CHARS:
            previous_was_separator = False
        else:
            return False
    return not previous_was_separator


def sha256(data: bytes | bytearray | memoryview) -> Any:
    """A sha256 object over ``data``. ``hashlib`` loads OpenSSL (~4 ms at import), which a
    command hashing only a manifest and a config need not pay: CPython's own implementation
    (``_sha256``, ``_sha2`` from 3.12) does small inputs as fast, large ones ~4 times slower;
    so it is used while ``hashlib`` is not imported and until ``_WITHOUT_OPENSSL`` bytes were
    hashed that way (~1 ms of hashing, less than the import), OpenSSL's from then on."""
    if "hashlib" not in sys.modules and _spend(len(data)):
        module = _builtin_sha256()
        if module is not None:
            return module.sha256(data)
    import hashlib

    return hashlib.sha256(data)


_WITHOUT_OPENSSL = [1 << 18]
"""Bytes this process may still hash with CPython's own sha256 (see ``sha256``)."""


def _spend(n: int) -> bool:
    """Take ``n`` bytes from ``_WITHOUT_OPENSSL`` if it has them."""
    if n > _WITHOUT_OPENSSL[0]:
        return False
    _WITHOUT_OPENSSL[0] -= n
    return True


def _builtin_sha256() -> Any:
    try:
        return __import__("_sha2" if sys.version_info >= (3, 12) else "_sha256")
    except ImportError:  # a Python built without it
        return None


@dataclass(frozen=True, order=True, slots=True)
class Digest:
    """A validated content digest such as ``sha256:e3b0c4…``; ``str()`` round-trips."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        expected = _HEX_LEN.get(self.algorithm)
        if expected is None:
            raise InvalidDigest(
                f"invalid digest {self.algorithm}:{self.hex}: unsupported algorithm "
                f"{self.algorithm!r} (use sha256 or sha512)"
            )
        if len(self.hex) != expected or not _HEX_DIGITS.issuperset(self.hex):
            raise InvalidDigest(
                f"invalid digest {self.algorithm}:{self.hex}: expected {expected} lower-case hex "
                "characters"
            )

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``algorithm:hex``; raise ``InvalidDigest`` naming the text otherwise."""
        algorithm, sep, hexpart = text.partition(":")
        if not sep or not _is_algorithm(algorithm):
            raise InvalidDigest(f"invalid digest {text!r}: expected 'sha256:<64 hex characters>'")
        return cls(algorithm, hexpart)

    @classmethod
    def from_bytes(cls, data: bytes) -> Digest:
        """The sha256 digest of ``data``."""
        return sha256_bytes(data)

    @property
    def short(self) -> str:
        """The 12-character prefix docker shows as an IMAGE ID."""
        return self.hex[:12]

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def verify(self, data: bytes) -> None:
        """Raise ``DigestMismatch`` unless ``data`` hashes to this digest."""
        if self.algorithm == "sha256":
            got = sha256(data).hexdigest()
        else:
            import hashlib  # here, not at the top: it loads OpenSSL (~4 ms)

            got = hashlib.new(self.algorithm, data).hexdigest()
        if got != self.hex:
            raise DigestMismatch(f"content hashes to {self.algorithm}:{got}, expected {self}")


class Hasher:
    """Streaming hasher: feed chunks, read the ``Digest`` and byte count at the end.

    A sha256 stream is held back while ``sha256`` would hash it without ``hashlib`` (small
    layers, configs, manifests: no OpenSSL import for them), and hashed at ``digest``; past
    that, or once ``hashlib`` is imported, it goes through ``hashlib`` from then on."""

    __slots__ = ("_digest", "_h", "_held", "algorithm", "size")

    def __init__(self, algorithm: str = "sha256") -> None:
        if algorithm not in _HEX_LEN:
            raise InvalidDigest(f"unsupported digest algorithm {algorithm!r}")
        self.algorithm = algorithm
        self._h: Any = None
        self._held: list[bytes] | None = None
        """The chunks so far (copies: callers may reuse their buffers), while held back."""
        self._digest: Digest | None = None
        """The digest of the held chunks, once asked for (not to hash them twice)."""
        if algorithm == "sha256" and "hashlib" not in sys.modules:
            self._held = []
        else:
            import hashlib

            self._h = hashlib.new(algorithm)
        self.size = 0

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add ``chunk`` to the hash."""
        self.size += len(chunk)
        held = self._held
        if held is None:
            self._h.update(chunk)
            return
        self._digest = None
        if self.size <= _WITHOUT_OPENSSL[0] and "hashlib" not in sys.modules:
            held.append(bytes(chunk))
            return
        import hashlib

        h = hashlib.new(self.algorithm)
        for piece in held:
            h.update(piece)
        h.update(chunk)
        self._h = h
        self._held = None

    def digest(self) -> Digest:
        """The digest of everything fed so far."""
        held = self._held
        if held is None:
            return Digest(self.algorithm, self._h.hexdigest())
        if self._digest is None:
            if len(held) > 1:
                held[:] = [b"".join(held)]
            self._digest = Digest(self.algorithm, sha256(held[0] if held else b"").hexdigest())
        return self._digest

    def verify(self, expected: Digest, *, what: str = "content") -> None:
        """Raise ``DigestMismatch`` (naming ``what``) unless the content hashes to ``expected``."""
        got = self.digest()
        if got != expected:
            raise DigestMismatch(f"{what} hashes to {got}, expected {expected}")


def sha256_bytes(data: bytes) -> Digest:
    """The sha256 ``Digest`` of ``data``."""
    return Digest("sha256", sha256(data).hexdigest())


def sha256_file(fileobj: IO[bytes]) -> tuple[Digest, int]:
    """Hash a binary file object from its current position to EOF; return (digest, size)."""
    h = Hasher()
    for chunk in iter(lambda: fileobj.read(_CHUNK), b""):
        h.update(chunk)
    return h.digest(), h.size
