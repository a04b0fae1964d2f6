"""Each kind of step the builder executes: its inputs (for the key) and how it runs.

``prepare`` reads what a step's key depends on -- context file digests (``COPY``/``ADD``),
heredocs, downloads, the keys of stages and IDs of images read with ``--from`` or bound with
``RUN --mount`` -- and returns them with a function that executes the step on a ``State``:

* ``COPY``/``ADD`` and ``WORKDIR`` write their layer here (``files``), no container involved;
* ``RUN`` resolves its mounts (``mounts``), wraps a shell-form command in ``SHELL`` (a heredoc
  starting with ``#!`` runs as a script file), and hands a ``RunRequest`` to the
  ``StepRunner``; a non-zero exit is a ``BuildStepFailed`` naming ``FILE:LINE``, the command,
  the exit code and the last lines of output.

The builder (``builder._Build``) provides the services these need (``BuildServices``).
"""

from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import time

from pytest_minidock._record import dataclass
from pytest_minidock.build.cache import LayerRef
from pytest_minidock.build.config import DEFAULT_SHELL, join_workdir
from pytest_minidock.build.context import fetch_url, located
from pytest_minidock.digest import sha256_bytes
from pytest_minidock.dockerfile.flags import BindMount, CacheMount, SshMount
from pytest_minidock.dockerfile.instructions import Add, Copy, ExecForm, Run, Workdir
from pytest_minidock.errors import BuildError, BuildStepFailed
from pytest_minidock.image.model import Descriptor

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path
    from typing import Any, Protocol

    from pytest_minidock.build.context import BuildContext, ContextSource
    from pytest_minidock.build.files import LayerTree
    from pytest_minidock.build.mounts import RunMounts
    from pytest_minidock.build.plan import Pairs
    from pytest_minidock.build.request import BuildRequest
    from pytest_minidock.build.rootfs import LayerView
    from pytest_minidock.build.runner import RunMount, StepRunner
    from pytest_minidock.digest import Digest
    from pytest_minidock.dockerfile.instructions import Instruction, Location
    from pytest_minidock.image.model import ImageConfig
    from pytest_minidock.store.store import Store
else:
    Protocol = object  # (the protocol is a plain class at run time)

__all__ = ["BuildServices", "Prepared", "State", "prepare", "write_layer"]

_TAIL_LINES = 20
_IN_MEMORY = 256 << 10
"""Layer tars up to this size are made in memory, larger ones in a temp file."""


class BuildServices(Protocol):
    """What executing steps needs from the build they belong to."""

    store: Store
    runner: StepRunner
    request: BuildRequest

    @property
    def mounts(self) -> RunMounts:
        """``RUN --mount`` resolution (made on first use)."""
        ...

    @property
    def context(self) -> BuildContext:
        """The build context (opened on first use)."""
        ...

    def temp(self, prefix: str, *, directory: bool = True) -> Path:
        """A temp path in the store, removed when the build ends."""
        ...

    def event(
        self, kind: str, number: int, name: str, text: str = "", elapsed: float = 0.0
    ) -> None:
        """Report progress."""
        ...

    def source_image(self, name: str, stage_index: int, location: Location) -> tuple[str, Any]:
        """``--from=name``: its input digest and its layers (waiting for a stage)."""
        ...

    def stage_index(self, location: Location) -> int:
        """The index of the stage the instruction at ``location`` belongs to."""
        ...

    def volatile(self) -> None:
        """The build read something no file signature covers (a download)."""
        ...


@dataclass
class State:
    """The image a stage has built so far: config, layers, the key of this state."""

    config: ImageConfig
    layers: list[LayerRef]
    chain: Digest
    cmd_set: bool = False
    view: LayerView | None = None

    def layer_view(self, store: Store) -> LayerView:
        """A merged view of its layers (made once per layer list)."""
        if self.view is None:
            from pytest_minidock.build.rootfs import LayerView

            self.view = LayerView(
                [store.snapshot(layer.diff_id, layer.descriptor) for layer in self.layers]
            )
        return self.view


@dataclass
class Prepared:
    """A step's inputs (for its key) and how to execute it."""

    inputs: Pairs = ()
    independent: bool = False
    content: str = ""
    execute: Callable[[State, int, str], LayerRef | None] | None = None


def _sha(*parts: str) -> str:
    """The hex sha256 of ``parts``, each followed by a NUL."""
    return sha256_bytes(b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in parts)).hex


def _source_mtime() -> int:
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return int(epoch) if epoch.isdigit() else 0


def prepare(build: BuildServices, inst: Instruction, step: Any, state: State) -> Prepared:
    if isinstance(inst, Copy | Add):
        return _prepare_copy(build, inst, state)
    if isinstance(inst, Run):
        return _prepare_run(build, inst, step, state)
    if isinstance(inst, Workdir):
        return Prepared(execute=lambda st, n, name: _workdir(build, inst, st))
    return Prepared()


def _workdir(build: BuildServices, inst: Workdir, state: State) -> LayerRef | None:
    from pytest_minidock.build.files import LayerTree, Owner, ensure_dir, resolve_user_ids

    path = join_workdir(state.config.config.working_dir, inst.path)
    view = state.layer_view(build.store)
    real = view.realpath(path)
    if real is None:
        raise located(inst.location, f"WORKDIR {path}: a path on the way is not a directory")
    found = view.resolve(real)
    if found is not None:
        if not found.is_dir:
            raise located(inst.location, f"WORKDIR {path} exists and is not a directory")
        return None
    user = state.config.config.user
    try:
        owner = resolve_user_ids(user, view) if user else Owner(0, 0)
    except ValueError as exc:
        raise located(inst.location, f"WORKDIR {path}: {exc}") from None
    tree = LayerTree()
    ensure_dir(tree, real, view, owner)
    return write_layer(build, tree, f"WORKDIR {path}")


def write_layer(build: BuildServices, tree: LayerTree, what: str) -> LayerRef:
    """Write ``tree`` as a layer into the store (blob and snapshot); a small one (a
    ``WORKDIR``, a ``COPY`` of a few small files) through memory, not a temp file."""
    tmp = None if tree.tar_size() <= _IN_MEMORY else build.temp("buildtar", directory=False)
    try:
        with io.BytesIO() if tmp is None else open(tmp, "w+b") as f:
            tree.write(f, _source_mtime())
            f.seek(0)
            blob = build.store.add_layer(f, source=what, unpack=True)
    except OSError as exc:
        raise BuildError(f"cannot write the layer of {what}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    desc = Descriptor(build.store.layer_media_type, blob.digest, blob.size)
    return LayerRef(desc, blob.diff_id)


# -- COPY and ADD -------------------------------------------------------------------------
def _prepare_copy(build: BuildServices, inst: Copy | Add, state: State) -> Prepared:
    keyword = inst.keyword
    location = inst.location
    from_ = inst.from_ if isinstance(inst, Copy) else None
    parents = inst.parents if isinstance(inst, Copy) else False
    prepared = Prepared(independent=inst.link)
    inputs: list[tuple[str, str]] = []
    sources = list(inst.sources)
    urls: list[str] = []
    if isinstance(inst, Add):
        for source in list(sources):
            lowered = source.lower()
            if lowered.startswith(("git@", "git://")) or (
                lowered.startswith(("http://", "https://")) and lowered.endswith(".git")
            ):
                raise located(
                    location,
                    f"ADD {source}: git sources are not supported; clone the repository "
                    "into the context and COPY it",
                )
            if lowered.startswith(("http://", "https://")):
                urls.append(source)
                sources.remove(source)
            elif "://" in source:
                raise located(location, f"ADD {source}: only http and https URLs are supported")
    checksum = inst.checksum if isinstance(inst, Add) else None
    if checksum and (len(urls) != 1 or sources):
        raise located(location, "ADD --checksum is only for a single http(s) source")
    many = len(inst.sources) + len(inst.contents) > 1
    stage_layers: Any = None
    context_sources: list[ContextSource] = []
    if from_ is not None:
        digest, stage_layers = build.source_image(from_, build.stage_index(location), location)
        inputs.append((f"from:{from_}", digest))
    elif sources:
        context_sources = build.context.sources(sources, location, keyword, excludes=inst.excludes)
        inputs.extend((f"context:{s.rel}", s.digest) for s in context_sources)
        if len(context_sources) > 1:
            many = True
    for content in inst.contents:
        inputs.append((f"heredoc:{content.path}", _sha(content.data)))
    downloads = []
    for url in urls:
        build.volatile()
        out = build.temp("buildurl", directory=False)
        download = fetch_url(url, out, location, checksum=checksum)
        downloads.append(download)
        inputs.append((f"url:{url}", download.digest))
    prepared.inputs = tuple(inputs)
    prepared.content = f"multi:{_sha(*(f'{k}={d}' for k, d in inputs))}"

    def execute(st: State, number: int, name: str) -> LayerRef | None:
        from pytest_minidock.build.files import (
            CopyItem,
            LayerTree,
            TarEntry,
            context_items,
            copy_into,
            image_items,
            parse_chmod,
            resolve_owner,
        )
        from pytest_minidock.build.rootfs import LayerView

        view = None if inst.link else st.layer_view(build.store)
        items: list[CopyItem] = []
        if stage_layers is not None:
            view_from = LayerView(
                [build.store.snapshot(ly.diff_id, ly.descriptor) for ly in stage_layers]
            )
            items.extend(image_items(inst, view_from, from_ or ""))
        for source in context_sources:
            items.extend(
                context_items(inst, source, parents=parents, spool=lambda: build.temp("buildtarx"))
            )
        for content in inst.contents:
            data = content.data.encode("utf-8", "surrogateescape")
            entry = TarEntry("", "file", 0o644, size=len(data), data=data)
            items.append(CopyItem(content.path, False, (entry,)))
        for download in downloads:
            if not download.name and (inst.dest.endswith("/") or many):
                raise located(
                    location,
                    f"ADD cannot name the file downloaded from {urls[0]}: give a file "
                    "name as the destination",
                )
            entry = TarEntry("", "file", 0o600, size=download.size, host=os.fsencode(download.path))
            items.append(CopyItem(download.name or "download", False, (entry,)))
        if len(items) == 1:  # docker's history: COPY file:<hex> / dir:<hex> / multi:<hex>
            kind = "dir" if items[0].is_dir else "file"
            prepared.content = f"{kind}:{prepared.content.partition(':')[2]}"
        try:
            owner = resolve_owner(inst.chown, view) if inst.chown else None
            chmod = parse_chmod(inst.chmod) if inst.chmod else None
            tree = LayerTree()
            copy_into(
                tree,
                items,
                inst.dest,
                workdir=st.config.config.working_dir,
                view=view,
                chown=owner,
                chmod=chmod,
                parents=parents,
                many=many,
            )
        except (BuildError, ValueError) as exc:
            raise located(location, f"{keyword} failed: {exc}") from None
        return write_layer(build, tree, f"{keyword} at {location}")

    prepared.execute = execute
    return prepared


# -- RUN ----------------------------------------------------------------------------------
def _prepare_run(build: BuildServices, inst: Run, step: Any, state: State) -> Prepared:
    location = inst.location
    prepared = Prepared()
    inputs: list[tuple[str, str]] = []
    stage_index = build.stage_index(location)
    sources: dict[int, tuple[str, Any]] = {}
    for i, mount in enumerate(inst.mounts):
        if isinstance(mount, SshMount):
            raise located(
                location,
                "RUN --mount=type=ssh is not supported: copy the key material in with a "
                "secret mount (--mount=type=secret) instead",
            )
        if isinstance(mount, BindMount | CacheMount) and mount.from_:
            digest, layers = build.source_image(mount.from_, stage_index, location)
            sources[i] = (digest, layers)
            inputs.append((f"mount:{mount.target}:from:{mount.from_}", digest))
        elif isinstance(mount, BindMount):
            what = f"RUN --mount=type=bind,source={mount.source or '.'}"
            inputs.append(
                (
                    f"mount:{mount.target}:context:{mount.source}",
                    build.context.tree_digest(mount.source or ".", location, what),
                )
            )
    prepared.inputs = tuple(inputs)

    def execute(st: State, number: int, name: str) -> LayerRef | None:
        return _run(
            build, inst=inst, step=step, state=st, sources=sources, number=number, name=name
        )

    prepared.execute = execute
    return prepared


def _run(
    build: BuildServices,
    *,
    inst: Run,
    step: Any,
    state: State,
    sources: Mapping[int, tuple[str, Any]],
    number: int,
    name: str,
) -> LayerRef:
    from pytest_minidock.build.runner import RunMount, RunRequest

    config = state.config.config
    location = inst.location
    env = [f"{k}={v}" for k, v in step.run_env]
    mounts: list[RunMount] = []
    with contextlib.ExitStack() as stack:
        for i, mount in enumerate(inst.mounts):
            target = join_workdir(config.working_dir, mount.target or "")
            mounts.extend(
                build.mounts.make(
                    mount,
                    target,
                    source=sources.get(i),
                    env=env,
                    stack=stack,
                    location=location,
                )
            )
        shebang = inst.shebang_heredoc()
        if shebang is not None:
            script = build.temp("buildscript")
            path = script / "script"
            path.write_text(shebang.chomped())
            os.chmod(path, 0o755)
            target = f"/dev/pipes/{shebang.name}"
            mounts.append(RunMount("bind", target, str(path), readonly=True))
            argv: tuple[str, ...] = (target,)
        elif isinstance(inst.command, ExecForm):
            argv = inst.command.argv
        else:
            argv = (*(config.shell or DEFAULT_SHELL), inst.shell_script() or "")
        network = inst.network or "default"
        if network == "default":
            network = build.request.network
        request = RunRequest(
            argv=argv,
            env=tuple(env),
            config=state.config,
            layers=tuple(
                build.store.snapshot(layer.diff_id, layer.descriptor) for layer in state.layers
            ),
            workdir=config.working_dir or "/",
            user=config.user,
            network=network,
            mounts=tuple(mounts),
            privileged=inst.security == "insecure",
            location=location,
            image_id=str(state.chain),
        )
        tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        started = time.monotonic()
        pending = bytearray()

        def output(chunk: bytes) -> None:
            pending.extend(chunk)
            while b"\n" in pending:
                line, _, rest = bytes(pending).partition(b"\n")
                pending[:] = rest
                text = line.decode("utf-8", "replace").rstrip("\r")
                tail.append(text)
                build.event("output", number, name, text, time.monotonic() - started)

        layer_out = build.temp("buildrun", directory=False)
        outcome = build.runner.run(request, layer_out, output)
        if pending:
            output(b"\n")
        if outcome.exit_code != 0 or outcome.layer is None:
            with contextlib.suppress(FileNotFoundError):
                layer_out.unlink()
            shown = (
                json.dumps(list(argv)) if isinstance(inst.command, ExecForm) else (" ".join(argv))
            )
            failure = BuildStepFailed(
                location.path,
                location.line,
                shown,
                outcome.exit_code,
                output=tuple(tail),
                text=location.text,
            )
            build.event(
                "error",
                number,
                name,
                f"process {shown!r} did not complete successfully: exit code: {outcome.exit_code}",
                time.monotonic() - started,
            )
            raise failure
        desc = build.store.add_layer_blob(outcome.layer)
        return LayerRef(desc, outcome.layer.diff_id)
