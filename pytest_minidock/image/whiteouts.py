"""OCI whiteouts as overlayfs stores them in an unpacked layer: what deletes or hides lower files.

A layer tar marks a deleted path with a ``.wh.NAME`` entry and a directory that hides the lower
layers' one with ``.wh..wh..opq``; unpacked for overlay (``store.snapshots``), these become a 0:0
character device (or an empty file with the ``user.``/``trusted.overlay.whiteout`` xattr) and the
``overlay.opaque=y`` xattr. Readers of unpacked layers (``spec.lookup_in_layers``, the builder's
merged view) recognise them here.
"""

from __future__ import annotations

import os
import stat

__all__ = ["is_opaque", "is_whiteout", "xattr"]


def xattr(path: bytes, name: str) -> bytes | None:
    """The value of extended attribute ``name`` of ``path`` (not followed), None if unset."""
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def is_whiteout(path: bytes, st: os.stat_result) -> bool:
    """An overlay whiteout: a 0:0 character device, or an empty file with the whiteout xattr."""
    if stat.S_ISCHR(st.st_mode):
        return st.st_rdev == 0
    return (
        stat.S_ISREG(st.st_mode)
        and st.st_size == 0
        and (
            xattr(path, "user.overlay.whiteout") is not None
            or xattr(path, "trusted.overlay.whiteout") is not None
        )
    )


def is_opaque(path: bytes) -> bool:
    """An opaque directory hides the lower layers' one. ``x`` only marks xattr whiteouts inside."""
    return xattr(path, "trusted.overlay.opaque") == b"y" or (
        xattr(path, "user.overlay.opaque") == b"y"
    )
