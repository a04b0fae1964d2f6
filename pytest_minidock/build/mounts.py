"""``RUN --mount``: each mount resolved to a host path or a tmpfs for the ``StepRunner``.

* ``type=cache``: a directory under ``ROOT/buildcache/mounts`` kept between builds and shared by
  ``id`` (``sharing=locked`` holds a lock for the step, ``private`` takes a fresh directory when
  another step uses it); seeded from ``from=``/``source=`` when it is first made.
* ``type=bind``: a directory or file of the context (bound read-only as it is, or copied when
  ``.dockerignore`` hides something in it or it is read-write: changes are thrown away) or of
  another stage or image (copied out of its layers).
* ``type=tmpfs``: an empty tmpfs of ``size`` bytes.
* ``type=secret``: the secret's bytes in a file only for this step (mode, uid and gid as
  asked) and/or in an environment variable; never part of the step's key or layer.
* ``type=ssh`` is refused with an error saying to use a secret mount instead.
"""

from __future__ import annotations

import os
import posixpath

from pytest_minidock._record import replace
from pytest_minidock.build.context import located
from pytest_minidock.build.rootfs import LayerView, clean_path
from pytest_minidock.build.runner import RunMount
from pytest_minidock.capabilities import host_root
from pytest_minidock.dockerfile.flags import BindMount, CacheMount, SecretMount, TmpfsMount
from pytest_minidock.errors import MinidockError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable, Mapping, Sequence
    from pathlib import Path
    from typing import Any

    from pytest_minidock.build.cache import BuildCache, LayerRef
    from pytest_minidock.build.context import BuildContext
    from pytest_minidock.build.request import SecretSource
    from pytest_minidock.dockerfile.instructions import Location
    from pytest_minidock.store.store import Store

__all__ = ["RunMounts"]


class RunMounts:
    """Makes the mounts of ``RUN`` steps for one build."""

    def __init__(
        self,
        store: Store,
        cache: BuildCache,
        secrets: Mapping[str, SecretSource],
        temp: Callable[[str], Path],
        context: Callable[[], BuildContext],
    ) -> None:
        self.store = store
        self.cache = cache
        self.secrets = secrets
        self.temp = temp
        self.context = context

    def _view(self, layers: Sequence[LayerRef]) -> LayerView:
        return LayerView([self.store.snapshot(layer.diff_id, layer.descriptor) for layer in layers])

    def make(
        self,
        mount: Any,
        target: str,
        *,
        source: tuple[str, Any] | None,
        env: list[str],
        stack: contextlib.ExitStack,
        location: Location,
    ) -> list[RunMount]:
        """The mounts a ``RUN --mount`` makes (``target`` resolved against the workdir), with
        secrets put in ``env`` and clean-ups on ``stack``."""
        if isinstance(mount, TmpfsMount):
            options = f"size={mount.size}" if mount.size is not None else ""
            return [RunMount("tmpfs", target, options=options)]
        if isinstance(mount, SecretMount):
            secret = self.secrets.get(mount.id)
            if secret is None:
                if mount.required:
                    raise located(
                        location,
                        f"secret {mount.id!r} is required but was not given: pass "
                        f"--secret id={mount.id},src=FILE",
                    )
                return []
            data = secret.read()
            out: list[RunMount] = []
            if mount.env:
                env.append(f"{mount.env}={data.decode('utf-8', 'surrogateescape')}")
            if mount.target:
                where = self.temp("buildsecret")
                path = where / "secret"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.chmod(path, mount.mode)
                if host_root():
                    os.chown(path, mount.uid, mount.gid)
                stack.callback(lambda: path.unlink(missing_ok=True))
                out.append(RunMount("bind", target, str(path), readonly=True))
            return out
        if isinstance(mount, CacheMount):
            return [self._cache(mount, source, stack, target)]
        assert isinstance(mount, BindMount)
        return [self._bind(mount, source, target, location)]

    def _cache(
        self,
        mount: CacheMount,
        source: tuple[str, Any] | None,
        stack: contextlib.ExitStack,
        target: str,
    ) -> RunMount:
        from pytest_minidock.build.files import materialize, view_item
        from pytest_minidock.store.locking import exclusive

        lock_path = self.cache.mount_lock_path(mount.id)
        if mount.sharing == "locked":
            stack.enter_context(exclusive(lock_path, timeout=-1, what=f"cache mount {mount.id}"))
        elif mount.sharing == "private":
            try:
                stack.enter_context(exclusive(lock_path, timeout=0, what=f"cache mount {mount.id}"))
            except MinidockError:  # in use: this run gets a cache of its own
                path = self.temp("buildcachemount")
                os.chmod(path, mount.mode)
                if host_root():
                    os.chown(path, mount.uid, mount.gid)
                return RunMount("bind", target, str(path), readonly=mount.readonly)
        path, created = self.cache.mount_dir(
            mount.id, mode=mount.mode, uid=mount.uid, gid=mount.gid
        )
        if created and source is not None:
            view = self._view(source[1])
            entry = view.resolve(clean_path(mount.source or "/"))
            if entry is not None and entry.is_dir:
                item = view_item(view, entry, "")
                materialize(item.entries, path)
        return RunMount("bind", target, str(path), readonly=mount.readonly)

    def _bind(
        self, mount: BindMount, source: tuple[str, Any] | None, target: str, location: Location
    ) -> RunMount:
        from pytest_minidock.build.files import context_entry, materialize, view_item

        rel = clean_path(mount.source or "/")
        if source is not None:
            view = self._view(source[1])
            entry = view.resolve(rel)
            if entry is None:
                raise located(
                    location,
                    f"RUN --mount=type=bind: {mount.source or '/'} not found in {mount.from_!r}",
                )
            item = view_item(view, entry, posixpath.basename(rel))
            where = self.temp("buildbind")
            if item.is_dir:
                materialize(item.entries, where)
                return RunMount("bind", target, str(where), readonly=mount.readonly)
            (file_entry,) = item.entries
            materialize([replace(file_entry, path="file")], where)
            return RunMount("bind", target, str(where / "file"), readonly=mount.readonly)
        ctx = self.context()
        real = ctx.real(rel.lstrip("/"))
        if real is None:
            raise located(
                location,
                f"RUN --mount=type=bind: {mount.source or '.'} is not in the build context",
            )
        host = ctx.root / real if real else ctx.root
        if mount.readonly and not ctx.filtered(rel):
            return RunMount("bind", target, str(host), readonly=True)
        (found,) = ctx.sources([rel.lstrip("/") or "."], location, "RUN --mount=type=bind")
        where = self.temp("buildbind")
        if found.is_dir:
            materialize([context_entry(e, e.rel) for e in found.entries], where)
            return RunMount("bind", target, str(where), readonly=mount.readonly)
        materialize([context_entry(found.entries[0], "file")], where)
        return RunMount("bind", target, str(where / "file"), readonly=mount.readonly)
