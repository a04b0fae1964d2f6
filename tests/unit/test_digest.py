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
    """Small inputs are hashed by CPython's own sha256 while ``hashlib`` is not imported."""
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
