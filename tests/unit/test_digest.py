"""Digest parsing, round trips and the streaming hasher."""

from __future__ import annotations

import hashlib
import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_minidock.digest import Digest, Hasher, sha256_bytes, sha256_file
from pytest_minidock.errors import DigestMismatch, InvalidDigest

EMPTY = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_parse_and_str_round_trip() -> None:
    d = Digest.parse(EMPTY)
    assert str(d) == EMPTY
    assert d.short == "e3b0c44298fc"
    assert d == sha256_bytes(b"")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "expected 'sha256:"),
        ("e3b0c44298fc", "expected 'sha256:"),
        ("sha256:abc", "64 lower-case hex"),
        ("sha256:" + "E" * 64, "64 lower-case hex"),
        ("md5:" + "a" * 32, "unsupported algorithm"),
        ("SHA256:" + "a" * 64, "expected 'sha256:"),
    ],
)
def test_invalid_digests_name_the_text(text: str, fragment: str) -> None:
    with pytest.raises(InvalidDigest, match=fragment):
        Digest.parse(text)


@given(st.binary(max_size=4096))
def test_hasher_matches_hashlib_in_any_chunking(data: bytes) -> None:
    h = Hasher()
    for i in range(0, len(data), 7):
        h.update(data[i : i + 7])
    assert h.digest().hex == hashlib.sha256(data).hexdigest()
    assert h.size == len(data)
    assert Digest.parse(str(h.digest())) == h.digest()
    assert sha256_file(io.BytesIO(data)) == (h.digest(), len(data))


def test_verify_raises_digest_mismatch() -> None:
    d = sha256_bytes(b"a")
    d.verify(b"a")
    with pytest.raises(DigestMismatch, match=str(d)):
        d.verify(b"b")
    h = Hasher()
    h.update(b"b")
    with pytest.raises(DigestMismatch, match="layer x hashes to"):
        h.verify(d, what="layer x")


@pytest.mark.parametrize("size", [0, 1, 1 << 16, (1 << 16) + 1])
def test_sha256_bytes_equals_hashlib_on_both_sides_of_the_small_limit(
    size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small inputs are hashed by CPython's own sha256 while ``hashlib`` is not imported (and
    the budget lasts), larger ones by OpenSSL's: the same digests."""
    import sys

    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    expected = hashlib.sha256(data).hexdigest()
    monkeypatch.delitem(sys.modules, "hashlib")
    assert sha256_bytes(data).hex == expected
    Digest("sha256", expected).verify(data)
    with pytest.raises(DigestMismatch):
        Digest("sha256", expected).verify(data + b"!")


@pytest.mark.parametrize(
    ("algorithm", "valid"),
    [
        ("sha256", True),
        ("multihash+base58", True),
        ("sha256+b64u", True),
        ("a.b_c-d", True),
        ("", False),
        ("-sha", False),
        ("sha-", False),
        ("sha--256", False),
        ("SHA256", False),
        ("sha256\n", False),
        ("sha 256", False),
    ],
)
def test_algorithm_grammar(algorithm: str, valid: bool) -> None:
    """OCI's ``[a-z0-9]+([+._-][a-z0-9]+)*``, checked without a regular expression."""
    from pytest_minidock.digest import _is_algorithm

    assert _is_algorithm(algorithm) is valid


# --------------------------------------------------------------------------------------------
# Without OpenSSL: small streams are held back and hashed by CPython's own sha256
# --------------------------------------------------------------------------------------------

_BUDGET = 1000


@pytest.fixture
def no_hashlib(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that has not imported ``hashlib``, with ``_BUDGET`` bytes to hash without it."""
    import sys

    from pytest_minidock import digest

    monkeypatch.delitem(sys.modules, "hashlib")
    monkeypatch.setattr(digest, "_WITHOUT_OPENSSL", [_BUDGET])


def _data(size: int) -> bytes:
    return bytes(i * 7 % 251 for i in range(size))


@pytest.mark.usefixtures("no_hashlib")
@pytest.mark.parametrize("size", [0, 1, _BUDGET - 1, _BUDGET, _BUDGET + 1, 3 * _BUDGET + 5])
@pytest.mark.parametrize("piece", [1, 7, _BUDGET, 1 << 20])
def test_hasher_equals_hashlib_around_the_budget(size: int, piece: int) -> None:
    import sys

    data = _data(size)
    h = Hasher()
    buffer = bytearray(piece)
    for i in range(0, size, piece):
        chunk = data[i : i + piece]
        buffer[: len(chunk)] = chunk
        h.update(memoryview(buffer)[: len(chunk)])  # a reused buffer, as readinto gives
    buffer[:] = b"\xff" * piece
    assert h.size == size
    assert h.digest().hex == hashlib.sha256(data).hexdigest()
    assert h.digest() == h.digest()
    assert ("hashlib" in sys.modules) is (size > _BUDGET)


@pytest.mark.usefixtures("no_hashlib")
def test_digests_between_updates_and_across_the_budget() -> None:
    import sys

    h = Hasher()
    seen = b""
    for n in range(300):
        chunk = _data(n % 13)
        h.update(chunk)
        seen += chunk
        if n % 50 == 0:
            assert h.digest().hex == hashlib.sha256(seen).hexdigest()
    assert "hashlib" in sys.modules  # 1790 bytes: past the budget
    assert h.digest().hex == hashlib.sha256(seen).hexdigest()
    assert h.size == len(seen)


@pytest.mark.usefixtures("no_hashlib")
def test_a_held_stream_moves_to_hashlib_once_imported() -> None:
    h = Hasher()
    h.update(b"abc")
    import hashlib as imported  # by anything else in the process

    h.update(b"def")
    assert h.digest().hex == imported.sha256(b"abcdef").hexdigest()


@pytest.mark.usefixtures("no_hashlib")
def test_the_budget_is_per_process() -> None:
    """What ``sha256`` hashes without OpenSSL comes off one budget; past it, OpenSSL."""
    import sys

    from pytest_minidock.digest import sha256

    part = _data(_BUDGET // 2 + 1)
    assert sha256(part).hexdigest() == hashlib.sha256(part).hexdigest()
    assert "hashlib" not in sys.modules
    h = Hasher()
    h.update(part)
    assert h.digest().hex == hashlib.sha256(part).hexdigest()  # the second half: too much
    assert "hashlib" in sys.modules


def test_sha512_hasher() -> None:
    data = _data(5000)
    h = Hasher("sha512")
    h.update(data[:10])
    h.update(data[10:])
    assert h.digest() == Digest("sha512", hashlib.sha512(data).hexdigest())


_HASH_IN_A_NEW_PROCESS = """
import io, sys
from pytest_minidock.digest import Hasher, sha256_bytes, sha256_file

size = int(sys.argv[1])
h = Hasher()
for i in range(0, size, 1000):
    h.update(b"x" * min(1000, size - i))
print(h.digest().hex, sha256_bytes(b"config").hex, sha256_file(io.BytesIO(b"y" * 5000))[0].hex)
print("hashlib" in sys.modules, "_hashlib" in sys.modules)
"""


@pytest.mark.parametrize(("size", "openssl"), [(100_000, False), (2_000_000, True)])
def test_small_inputs_do_not_load_openssl(size: int, openssl: bool) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _HASH_IN_A_NEW_PROCESS, str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    digests, modules = out.stdout.splitlines()
    assert digests.split() == [
        hashlib.sha256(b"x" * size).hexdigest(),
        hashlib.sha256(b"config").hexdigest(),
        hashlib.sha256(b"y" * 5000).hexdigest(),
    ]
    assert modules == f"{openssl} {openssl}"
