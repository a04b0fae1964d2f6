"""Build memos: a rebuild that nothing changed for, answered without building (or importing the
builder).

A fully cached rebuild still parses the Dockerfile, expands it, hashes the context (from the stat
cache) and looks every step's key up: cheap in-process, but a short-lived ``minidock build``
pays the import of all that first. So after a successful build the CLI writes a memo, under the
store root (``buildcache/memo/``), keyed by the request as given (context, Dockerfile, tags,
build arguments, target, platform, network). It holds the image ID and what the answer rests on:

* the ``lstat`` signature (type and mode, inode, device, size, mtime and ctime; or absence) of
  every context path the build looked at -- the Dockerfile, both possible ``.dockerignore``
  files, each source, every file and directory below a copied directory, every directory a
  wildcard listed. Any change to a file's content, mode, owner or link target, any entry added to
  or removed from a listed directory, changes one of them;
* the signature of the store's ``index.json``, as the build left it: every name (the tags, the
  base images, ``--from`` images) still points where it did exactly when it is unchanged (the
  index is replaced by rename on every edit);
* the paths that must still exist: each step's cache entry (``builder prune`` makes the next
  build run the steps again, as docker does) and the blobs of every image the build exported.

``check`` answers from a memo only when all of that still holds; anything else -- a memo that is
missing, unreadable or of another version included -- is a miss, and the CLI builds as usual.
A memo is not written when a path it rests on changed in the clock tick the build started in
(git's "racily clean" rule, as the stat cache), nor for builds that read what no signature covers
(``ADD`` of a URL), nor for ``--no-cache``, ``--pull`` or a Dockerfile from stdin.

This module is imported before anything else of a build, so it imports only what the
interpreter has loaded at start (``os``, ``marshal``): not even ``typing``. A memo is a
``marshal`` dump of plain values (it is read by the interpreter that wrote it: its key names the
package version, and a memo another Python cannot read is a miss); its file name is a 64-bit
FNV-1a hash of its key, and the key itself is checked inside.
"""

from __future__ import annotations

import marshal
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from typing import Any, TypeAlias

__all__ = ["Signature", "check", "forget", "memo_key", "signature", "write"]

VERSION = 2
_NAME = "io.containerd.image.name"  # the index annotation naming an image (``image.model``)
Signature: TypeAlias = "tuple[int, int, int, int, int, int]"
"""``(st_mode, st_ino, st_dev, st_size, st_mtime_ns, st_ctime_ns)`` of an ``lstat``."""


def signature(st: os.stat_result) -> Signature:
    """The signature of one ``lstat`` result."""
    return (st.st_mode, st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _lstat(path: str, follow: bool = False) -> Signature | None:
    try:
        return signature(os.stat(path) if follow else os.lstat(path))
    except OSError:
        return None


def memo_key(**request: Any) -> str:
    """The key of a build request (plain values: str, int, bool, None, lists and dicts of
    them; paths absolute, build args a dict), the same for the same request in any process."""
    return repr([VERSION, _canonical(request)])


def _canonical(value: Any) -> Any:
    """``value`` with every dict turned into its items, sorted by key (``repr`` of it is then
    canonical: the same values give the same text, whatever their order of insertion)."""
    if isinstance(value, dict):
        return [(str(k), _canonical(v)) for k, v in sorted(value.items())]
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _memo_path(root: str, key: str) -> str:
    h = 0xCBF29CE484222325  # 64-bit FNV-1a: no import (zlib's CRC-32 would cost one)
    for byte in key.encode("utf-8", "surrogateescape"):
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return os.path.join(root, "buildcache", "memo", f"{h:016x}.memo")


def check(root: str, key: str) -> dict[str, Any] | None:
    """The memo of ``key`` if everything it rests on is unchanged, else None."""
    try:
        with open(_memo_path(root, key), "rb") as f:
            memo = marshal.loads(f.read())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    try:
        if memo["version"] != VERSION or memo["key"] != key:
            return None
        index_path, index_sig = memo["index"]
        if _index_signature(index_path) != index_sig:
            return None
        for follow, field in ((False, "paths"), (True, "followed")):
            for path, sig in memo[field]:
                if _lstat(path, follow) != sig:
                    return None
        for path in memo["required"]:
            if not os.path.exists(path):
                return None
        if not isinstance(memo["image"], str) or not all(
            tuple(type(x) for x in e) == (str, int, str, str) for e in memo["events"]
        ):
            return None
    except (KeyError, TypeError, ValueError):
        return None
    return dict(memo)


def _index_signature(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def write(
    root: str,
    key: str,
    *,
    image: str,
    index: str,
    paths: Mapping[str, Signature | None],
    followed: Mapping[str, Signature | None],
    required: Iterable[str],
    started_ns: int,
    names: Mapping[str, str],
    events: Sequence[tuple[str, int, str, str]],
) -> bool:
    """Record the build of ``key``; False if it cannot be trusted or cannot be written.

    ``names``: image name -> manifest digest, the tags it wrote and the images it read by name;
    the index must map each of them so (another process may have moved one since), and must not
    change while that is checked. A path it rests on that changed in the clock tick the build
    started in, or later, makes it untrustworthy too. ``paths`` are signatures of ``lstat``,
    ``followed`` of ``stat`` (files read through any symlink: the Dockerfile, ignore files)."""
    for sig in (*paths.values(), *followed.values()):
        if sig is not None and max(sig[4], sig[5]) >= started_ns:
            return False
    import json  # a build ran: the store has imported it already

    before = _index_signature(index)
    try:
        with open(index, "rb") as f:
            manifests = json.loads(f.read()).get("manifests") or []
        current = {
            m["annotations"][_NAME]: m["digest"]
            for m in manifests
            if _NAME in (m.get("annotations") or {})
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return False
    if any(current.get(name) != digest for name, digest in names.items()):
        return False
    if _index_signature(index) != before:
        return False
    memo = {
        "version": VERSION,
        "key": key,
        "image": image,
        "index": (index, before),
        "paths": _listed(paths),
        "followed": _listed(followed),
        "required": sorted(set(required)),
        "events": [tuple(e) for e in events],
    }
    target = _memo_path(root, key)
    tmp = f"{target}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(marshal.dumps(memo))
        _unlink(target)  # not renamed over it: see cache.BuildCache.put (a miss meanwhile)
        os.rename(tmp, target)
    except OSError:
        _unlink(tmp)
        return False
    return True


def _listed(paths: Mapping[str, Signature | None]) -> list[tuple[str, Signature | None]]:
    return sorted(paths.items(), key=lambda item: item[0])


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def forget(root: str) -> int:
    """Remove every memo (``builder prune``); how many there were."""
    directory = os.path.join(root, "buildcache", "memo")
    count = 0
    try:
        names = os.listdir(directory)
    except OSError:
        return 0
    for name in names:
        count += _unlink(os.path.join(directory, name))
    return count
