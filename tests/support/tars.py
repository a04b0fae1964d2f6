"""Building tar layers member by member in tests (regular files, dirs, links, devices)."""

from __future__ import annotations

import io
import tarfile

T = 1_500_000_000
"""The mtime every built member carries."""

Member = tuple[tarfile.TarInfo, bytes | None]


def info(name: str, kind: bytes, mode: int, **attrs: object) -> tarfile.TarInfo:
    """A member header of any ``kind`` (``tarfile.FIFOTYPE``, ...)."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = T
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def f(name: str, data: bytes = b"", mode: int = 0o644, **attrs: object) -> Member:
    """A regular file."""
    return info(name, tarfile.REGTYPE, mode, size=len(data), **attrs), data


def d(name: str, mode: int = 0o755, **attrs: object) -> Member:
    """A directory."""
    return info(name, tarfile.DIRTYPE, mode, **attrs), None


def sym(name: str, target: str) -> Member:
    """A symlink."""
    return info(name, tarfile.SYMTYPE, 0o777, linkname=target), None


def hard(name: str, target: str) -> Member:
    """A hardlink to an earlier member."""
    return info(name, tarfile.LNKTYPE, 0o644, linkname=target), None


def dev(name: str, kind: bytes = tarfile.CHRTYPE, major: int = 1, minor: int = 3) -> Member:
    """A device node (character by default: 1:3 is /dev/null)."""
    return info(name, kind, 0o666, devmajor=major, devminor=minor), None


def tar_bytes(*members: Member) -> bytes:
    """A PAX tar of ``members`` in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def files_tar(members: dict[str, bytes]) -> bytes:
    """A PAX tar of regular files (mode 0644, mtime 0), ``{name: content}`` in order."""
    return tar_bytes(*(f(name, data, mtime=0) for name, data in members.items()))
