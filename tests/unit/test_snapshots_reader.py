"""The layer extractor's own tar reader: it reads what tarfile reads, the same way, and hands
every other form (GNU long names, sparse files, global PAX headers) over to tarfile mid-stream."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import tarfile
import time
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.errors import StoreError
from pytest_minidock.store import snapshots
from pytest_minidock.store.snapshots import ExtractPolicy, extract_layer
from tests.support import tars
from tests.support.tars import Member, d, f, hard, sym
from tests.support.trees import Entry, listing

if TYPE_CHECKING:
    from pathlib import Path

ROOTLESS = ExtractPolicy(devices=False, chown=False, whiteout="xattr")
LONG = "deep/" + "d" * 120 + "/" + "n" * 90
ODD = "caf\u00e9/\udcff-raw"  # non-ASCII, and an undecodable byte


def _tar(members: list[Member], fmt: int, pax_headers: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf,
        mode="w",
        format=fmt,
        encoding="utf-8",
        errors="surrogateescape",
        pax_headers=pax_headers,
    ) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _members() -> list[Member]:
    return [
        d("deep/", 0o750),
        f(LONG, b"long name" * 100, 0o640),
        sym("deep/link", "../" + "t" * 150),
        hard("deep/hard", LONG),
        f(ODD, b"odd", 0o600),
        d("big/", 0o755, uid=2**30, gid=2**30),
        f("big/mtime", b"m", mtime=2**33 + 5),  # too large for its ustar field
        (tars.info("fifo", tarfile.FIFOTYPE, 0o644), None),
        f("x/" + "y" * 95 + "/z", b"ustar prefix"),
        f("empty", b""),
        (tars.info("xattr", tarfile.REGTYPE, 0o644, pax_headers={"SCHILY.xattr.user.k": "v"}), b""),
    ]


def _listing(root: Path) -> dict[str, Entry]:
    recent = time.time_ns() - 3600 * 10**9
    # directories the tar does not list are made now: their times differ
    return {
        rel: (mode, mtime if mtime < recent else 0, detail, xattrs)
        for rel, (mode, mtime, detail, xattrs) in listing(root).items()
    }


def _extract(tmp_path: Path, name: str, data: bytes) -> dict[str, object]:
    dest = tmp_path / name
    dest.mkdir()
    extract_layer(io.BytesIO(data), dest, policy=ROOTLESS, source="test")
    return dict(_listing(dest))


@pytest.fixture
def handovers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The member names at which the reader handed the stream over to tarfile."""
    seen: list[str] = []
    real = snapshots._Extractor._run_tarfile

    def spy(self: snapshots._Extractor, stream: snapshots._Prefixed) -> None:
        seen.append(self._member)
        real(self, stream)

    monkeypatch.setattr(snapshots._Extractor, "_run_tarfile", spy)
    return seen


def _with_tarfile(
    tmp_path: Path, name: str, data: bytes, monkeypatch: pytest.MonkeyPatch
) -> dict[str, object]:
    """The extraction when every member goes to tarfile (the reader reads none)."""
    with monkeypatch.context() as m:
        m.setattr(snapshots, "_PLAIN", frozenset())
        return _extract(tmp_path, name, data)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_the_reader_extracts_what_tarfile_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: int, handovers: list[str]
) -> None:
    members = _members()
    if fmt == tarfile.GNU_FORMAT:  # (GNU has no xattr records; the rest in GNU's own headers)
        members = [m for m in members if not m[0].pax_headers]
    data = _tar(members, fmt)
    ours = _extract(tmp_path, "ours", data)
    # PAX (docker's, buildkit's, ours): all read here; GNU from its first long name on
    assert handovers == ([] if fmt == tarfile.PAX_FORMAT else ["deep"])
    theirs = _with_tarfile(tmp_path, "theirs", data, monkeypatch)
    assert ours == theirs
    assert ours[LONG][2] == b"long name" * 100  # type: ignore[index]
    assert ours[os.path.normpath("x/" + "y" * 95 + "/z")][2] == b"ustar prefix"  # type: ignore[index]


def test_ustar_and_v7_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v7_dir = tars.info("v7dir/", tarfile.AREGTYPE, 0o711)  # a directory as old tars wrote it
    data = _tar([f("a/" + "p" * 120 + "/b", b"prefixed"), (v7_dir, None)], tarfile.USTAR_FORMAT)
    ours = _extract(tmp_path, "ours", data)
    assert ours == _with_tarfile(tmp_path, "theirs", data, monkeypatch)
    assert stat.S_ISDIR(ours["v7dir"][0])  # type: ignore[index]
    assert stat.S_IMODE(ours["v7dir"][0]) == 0o711  # type: ignore[index]


def test_a_global_header_or_a_gnu_long_name_midway_goes_to_tarfile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, handovers: list[str]
) -> None:
    plain = _tar([f("first", b"1"), d("dir/")], tarfile.PAX_FORMAT)[: 3 * 512]  # no end blocks
    gnu = _tar([f("dir/" + "g" * 200, b"gnu long name"), f("last", b"3")], tarfile.GNU_FORMAT)
    data = plain + gnu  # plain members, then GNU ones: the reader hands over at the third
    ours = _extract(tmp_path, "ours", data)
    assert handovers == ["dir"]  # (the member read last before it)
    assert ours == _with_tarfile(tmp_path, "theirs", data, monkeypatch)
    assert ours["first"][2] == b"1"  # type: ignore[index]
    assert ours["dir/" + "g" * 200][2] == b"gnu long name"  # type: ignore[index]
    assert ours["last"][2] == b"3"  # type: ignore[index]
    glob = _tar([f("a", b"a"), sym("s", "a")], tarfile.PAX_FORMAT, pax_headers={"comment": "x"})
    assert _extract(tmp_path, "g1", glob) == _with_tarfile(tmp_path, "g2", glob, monkeypatch)


def _record(key: str, value: str) -> bytes:
    """One ``"<len> <key>=<value>\\n"`` PAX record."""
    body = f" {key}={value}\n".encode()
    size = len(body) + 1
    while len(str(size)) + len(body) != size:
        size = len(str(size)) + len(body)
    return str(size).encode() + body


def _pax(records: dict[str, str], following: tarfile.TarInfo, data: bytes) -> bytes:
    """An extended header with exactly ``records``, then ``following`` and its ``data``."""
    payload = b"".join(_record(k, v) for k, v in records.items())
    head = tarfile.TarInfo("././@PaxHeader")
    head.type = tarfile.XHDTYPE
    head.size = len(payload)
    out = head.tobuf(tarfile.USTAR_FORMAT) + payload + bytes(-len(payload) % 512)
    out += following.tobuf(tarfile.USTAR_FORMAT) + data + bytes(-len(data) % 512)
    return out + bytes(1024)


def test_a_gnu_sparse_file_goes_to_tarfile(tmp_path: Path) -> None:
    sparse_map = b"1\n0\n5\n"  # PAX sparse format 1.0: one hole-free run of 5 bytes at 0
    body = sparse_map + bytes(512 - len(sparse_map)) + b"hello"
    info = tarfile.TarInfo("GNUSparseFile.0/sparse.bin")
    info.size = len(body)
    records = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": "sparse.bin",
        "GNU.sparse.realsize": "10",
    }
    got = _extract(tmp_path, "sparse", _pax(records, info, body))
    assert got["sparse.bin"][2] == b"hello" + bytes(5)  # type: ignore[index]


def test_pax_numbers_and_names_as_tarfile_takes_them(tmp_path: Path) -> None:
    info = tarfile.TarInfo("short")
    info.size = 2
    records = {"path": "from/pax//", "mtime": "1500000000.5", "uid": "nope", "size": "2"}
    reader = snapshots._TarReader(io.BytesIO(_pax(records, info, b"hi")))
    member = reader.next()
    assert member is not None
    assert (member.name, member.mtime, member.uid, member.size) == ("from/pax", 1500000000.5, 0, 2)
    view = memoryview(bytearray(8))
    assert reader.readinto(view) == 2
    assert bytes(view[:2]) == b"hi"
    assert reader.next() is None


def test_base256_numbers_and_signed_checksums(tmp_path: Path) -> None:
    big = tars.info("big", tarfile.REGTYPE, 0o644, uid=2**40, size=1)
    data = _tar([(big, b"b")], tarfile.GNU_FORMAT)
    member = snapshots._TarReader(io.BytesIO(data)).next()
    assert member is not None
    assert (member.uid, member.size) == (2**40, 1)
    header = bytearray(tarfile.TarInfo("x" + "\u00ff" * 20).tobuf(tarfile.GNU_FORMAT)[:512])
    header[148:156] = b"        "
    signed = 256 + sum(b - 256 if b >= 128 else b for b in header[:148] + header[156:])
    header[148:156] = b"%06o\0 " % signed
    member = snapshots._TarReader(io.BytesIO(bytes(header) + bytes(1024))).next()
    assert member is not None
    assert member.name == "x" + "\u00ff" * 20


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty file"),
        (b"x" * 300, "truncated header"),
        (tarfile.TarInfo("a").tobuf()[:-1] + b"!", "bad checksum"),
        (_pax({"path": "a"}, tarfile.TarInfo("a"), b"")[:512] + b"9 x\n" * 128, "PAX record"),
        (_pax({"path": "a"}, tarfile.TarInfo("a"), b"")[:1024] + bytes(1024), "end of archive"),
    ],
    ids=["empty", "short", "checksum", "pax-record", "pax-then-end"],
)
def test_broken_tars_are_store_errors(tmp_path: Path, data: bytes, problem: str) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(StoreError, match=f"not a valid tar.*{problem}"):
        extract_layer(io.BytesIO(data), dest, policy=ROOTLESS, source="test")
    assert os.listdir(dest) == []


def test_only_end_blocks_is_an_empty_layer(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    assert extract_layer(io.BytesIO(bytes(10240)), dest, policy=ROOTLESS, source="t") == 0
    assert os.listdir(dest) == []


def test_a_layer_this_package_writes_is_unpacked_without_importing_tarfile(
    tmp_path: Path,
) -> None:
    """COPY and WORKDIR layers (build.files) and their snapshots: no tarfile (nor shutil)."""
    code = f"""
import io, sys
from pathlib import Path
from pytest_minidock.build.files import LayerTree, TarEntry
from pytest_minidock.store.snapshots import ExtractPolicy, extract_layer
tree = LayerTree()
tree.add(TarEntry("app", "dir", 0o755))
tree.add(TarEntry("app/" + "n" * 150, "file", 0o644, size=2, data=b"hi"))
tree.add(TarEntry("app/link", "symlink", 0o777, link="/x"))
buf = io.BytesIO()
tree.write(buf, 0)
buf.seek(0)
policy = ExtractPolicy(devices=False, chown=False, whiteout="xattr")
assert extract_layer(buf, Path({str(tmp_path)!r}), policy=policy, source="t") == 2
print(sorted(m for m in ("tarfile", "shutil") if m in sys.modules))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
    assert (tmp_path / "app" / ("n" * 150)).read_bytes() == b"hi"
