"""What a directory tree holds, for comparing trees in tests."""

from __future__ import annotations

import os
import stat

Entry = tuple[int, int, bytes | str | None, list[str]]
"""A path's ``st_mode``, ``st_mtime_ns``, content (a file's bytes, a symlink's target, else
None) and sorted extended attribute names (none read through a symlink)."""


def listing(root: str | os.PathLike[str]) -> dict[str, Entry]:
    """Every path below ``root`` (and ``root`` itself, as ``.``), relative to it."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            detail: bytes | str | None = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    detail = fh.read()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            xattrs = [] if stat.S_ISLNK(st.st_mode) else sorted(os.listxattr(path))
            rel = os.path.normpath(os.path.relpath(path, root))
            out[rel] = (st.st_mode, st.st_mtime_ns, detail, xattrs)
    return out
