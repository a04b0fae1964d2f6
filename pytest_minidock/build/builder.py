"""The builder: a Dockerfile and a context in, an ordinary image in the store out.

For each stage the target needs (and only those), in a thread of its own so independent stages
build at the same time:

1. **Base.** ``FROM`` an earlier stage waits for that stage; ``FROM scratch`` starts empty;
   anything else is looked up in the store first and, if it is missing (or ``pull`` is set), got
   through the injected image resolver (``Engine.ensure_image``: the registry client). A base
   image's ``ONBUILD`` triggers become the stage's first steps.
2. **Expand** the stage (``dockerfile.expand_stage``) with the base image's environment.
3. For each step: gather its inputs (``steps.prepare``: context file digests, heredocs,
   downloads, the keys of the stages and the IDs of the images it reads), compute its key with
   the pure ``plan``, and look the key up in the ``BuildCache``. A hit reuses the stored layer
   and history without running anything. A miss takes the key's lock (single flight across
   processes), looks again, and only then executes: ``COPY``/``ADD``/``WORKDIR`` write their
   layer without a container (``files``), ``RUN`` goes through the ``StepRunner`` with its
   mounts (``mounts``); the cache entry is written after the layer is in the store. Keys
   come from definitions, as in buildkit: a step whose entry was lost (its layer collected)
   runs again, and the steps after it still find theirs.
4. The stage's config follows every instruction (``config.apply_instruction``).

The target stage becomes an image named by every tag; other stages are kept as unnamed images
(docker's classic builder does the same), so their layers stay cached until ``image prune``.
A fully cached rebuild writes nothing: when the tags already name the identical image, even
the index is left alone. The whole build holds the shared side of the store's GC lock, so a
concurrent ``prune`` cannot collect a cached layer between its lookup and the final commit.
Progress goes to a callback as ``BuildEvent`` values; errors are ``BuildError`` (or
``DockerfileError``) naming ``FILE:LINE``. The result says what it rests on
(``BuildResult.inputs``: the signature of every context path looked at, the names resolved, the
cache entries and blobs used) for ``build.memo``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from pytest_minidock._record import dataclass, replace
from pytest_minidock.build.cache import BuildCache, CacheEntry, LayerRef
from pytest_minidock.build.config import (
    apply_instruction,
    created_by,
)
from pytest_minidock.build.context import BuildContext, _fs_clock_ns, located
from pytest_minidock.build.plan import StepDefinition, base_key, canonical_instruction, step_key
from pytest_minidock.build.request import (
    BuildInputs,
    BuildRequest,
    BuildResult,
    ImageResolver,
    SecretSource,
    StepReport,
    host_platform,
)
from pytest_minidock.build.steps import Prepared, State, prepare
from pytest_minidock.digest import Digest
from pytest_minidock.dockerfile.expand import (
    expand_from,
    expand_stage,
    unconsumed_build_args,
)
from pytest_minidock.dockerfile.flags import (
    BindMount,
    CacheMount,
)
from pytest_minidock.dockerfile.instructions import (
    Copy,
    Instruction,
    Location,
    Run,
)
from pytest_minidock.dockerfile.stages import Dockerfile, Stage, parse_dockerfile, read_dockerfile
from pytest_minidock.errors import (
    BuildError,
    BuildStepFailed,
    DockerfileError,
    MinidockError,
)
from pytest_minidock.image.model import Descriptor, History, ImageConfig

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from pytest_minidock.build.memo import Signature
    from pytest_minidock.build.mounts import RunMounts
    from pytest_minidock.build.progress import ProgressCallback
    from pytest_minidock.build.runner import StepRunner
    from pytest_minidock.image.model import ContainerConfig
    from pytest_minidock.reference import Reference
    from pytest_minidock.store.store import ImageRecord, Store

__all__ = [
    "BuildRequest",
    "BuildResult",
    "Builder",
    "ImageResolver",
    "SecretSource",
    "StepReport",
    "host_platform",
]

_MAX_NAME = 100


@dataclass(frozen=True, slots=True)
class _StageResult:
    """A built stage: its config, its layers and the key of its final state."""

    stage: Stage
    config: ImageConfig
    layers: tuple[LayerRef, ...]
    chain: Digest
    base_id: Digest | None = None
    changed: bool = True
    fresh: bool = False
    """A step of it (or of a stage it builds on) ran in this build: its config holds a new
    creation time, so no image in the store can be it (unless ``SOURCE_DATE_EPOCH`` sets
    every time)."""


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_NAME else text[: _MAX_NAME - 3] + "..."


class Builder:
    """Builds Dockerfiles into images of ``store``, running ``RUN`` steps with ``runner``."""

    def __init__(
        self,
        store: Store,
        runner: StepRunner,
        *,
        resolve_image: Callable[[str, str, str | None], ImageRecord] | None = None,
        cache: BuildCache | None = None,
        jobs: int | None = None,
    ) -> None:
        self.store = store
        self.runner = runner
        self.resolve_image = resolve_image
        self.cache = cache or BuildCache(store.root)
        self.jobs = jobs or max(2, os.cpu_count() or 2)
        self._stat_caches: dict[Path, Any] = {}

    def build(self, request: BuildRequest, progress: ProgressCallback | None = None) -> BuildResult:
        """Build ``request``; return the image (named by every tag) and the step reports."""
        from pytest_minidock.store.locking import gc_shared

        with gc_shared(self.store.paths.gc_lock):
            run = _Build(self, request, progress)
            try:
                return run.build()
            finally:
                run.close()

    def prune(self, *, everything: bool = False) -> Any:
        """``builder prune``: drop cache entries whose layer no image in the store uses (all of
        them with ``everything``, and cache mounts too), then collect the store's garbage."""
        from pytest_minidock.build.cache import CachePruneReport

        keep: set[Digest] = set()
        for record in self.store.images():
            keep.update(record.diff_ids)
        report = self.cache.prune(everything=everything, keep=keep)
        self._stat_caches.clear()
        from pytest_minidock.build.memo import forget

        forget(str(self.store.root))  # they would miss now anyway: their entries are gone
        freed = self.store.gc()
        return CachePruneReport(report.entries, report.mounts, report.reclaimed + freed)


class _Build:
    """The state of one ``Builder.build`` call."""

    def __init__(
        self, builder: Builder, request: BuildRequest, progress: ProgressCallback | None
    ) -> None:
        self.builder = builder
        self.store = builder.store
        self.cache = builder.cache
        self.runner = builder.runner
        self.request = request
        self.progress = progress
        self.platform = request.platform or host_platform()
        self.build_args = dict(request.build_args)
        self.lock = threading.Lock()
        self.number = 0
        self.reports: list[StepReport] = []
        self.futures: dict[int, _Future] = {}
        self.threads: list[threading.Thread] = []
        self.cancel = threading.Event()
        self.failure: BaseException | None = None
        self.slots = threading.BoundedSemaphore(builder.jobs)
        self.temps: list[Path] = []
        self._context: BuildContext | None = None
        self._mounts: RunMounts | None = None
        self.started_ns = _fs_clock_ns()
        self.seen: dict[str, Signature | None] = {}
        self.followed: dict[str, Signature | None] = {}
        self.names: dict[str, str] = {}
        """Image names the build resolved, and the manifest digest each named (for the memo)."""
        """The context paths the build looked at (``BuildInputs.paths``)."""
        self.memoizable = request.dockerfile_text is None and not request.pull
        context = Path(request.context)
        dockerfile = request.dockerfile or context / "Dockerfile"
        self.dockerfile_path = dockerfile
        if request.dockerfile_text is not None:
            self.dockerfile: Dockerfile = parse_dockerfile(
                request.dockerfile_text, str(request.dockerfile or "Dockerfile")
            )
        else:
            self._saw(dockerfile)
            self.dockerfile = read_dockerfile(dockerfile)

    # -- housekeeping -------------------------------------------------------------------------
    @property
    def context(self) -> BuildContext:
        with self.lock:
            if self._context is None:
                root = Path(self.request.context)
                try:
                    resolved = root.resolve(strict=True)
                except OSError as exc:
                    raise BuildError(
                        f"build context {root}: {exc.strerror or exc}; give an existing directory"
                    ) from exc
                stat_cache = self.builder._stat_caches.get(resolved)
                if stat_cache is None:
                    stat_cache = self.cache.stat_cache(resolved)
                    self.builder._stat_caches[resolved] = stat_cache
                dockerfile = (
                    None if self.request.dockerfile_text is not None else self.dockerfile_path
                )
                if dockerfile is not None:  # the ignore files it may read, or their absence
                    self._saw(f"{dockerfile}.dockerignore")
                self._saw(resolved / ".dockerignore")
                self._context = BuildContext(
                    resolved, dockerfile, stat_cache=stat_cache, seen=self.seen
                )
            return self._context

    def _saw(self, path: Path | str) -> None:
        """Note the signature (or absence) of the file at ``path``, following symlinks, among
        what the build's result rests on."""
        from pytest_minidock.build.memo import signature

        path = os.path.abspath(path)
        try:
            self.followed[path] = signature(os.stat(path))
        except OSError:
            self.followed[path] = None

    def volatile(self) -> None:
        """The build read something no file signature covers (a download): no memo."""
        self.memoizable = False

    @property
    def mounts(self) -> RunMounts:
        if self._mounts is None:
            from pytest_minidock.build.mounts import RunMounts

            with self.lock:
                if self._mounts is None:
                    self._mounts = RunMounts(
                        self.store,
                        self.cache,
                        self.request.secrets,
                        self.temp,
                        lambda: self.context,
                    )
        return self._mounts

    def temp(self, prefix: str, *, directory: bool = True) -> Path:
        path = self.store.blobs.temp_path(prefix)
        if directory:
            path.mkdir(parents=True)
        with self.lock:
            self.temps.append(path)
        return path

    def close(self) -> None:
        self.cancel.set()
        for thread in self.threads:
            thread.join()
        from pytest_minidock.store.blobs import remove_tree

        for path in self.temps:
            try:  # a temp file, or one the store has taken in already: no shutil for those
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:  # a directory (or what only the store's helper can remove)
                remove_tree(path)
        if self._context is not None:
            self._context.stat_cache.save()

    def event(
        self, kind: str, number: int, name: str, text: str = "", elapsed: float = 0.0
    ) -> None:
        if self.progress is not None:
            from pytest_minidock.build.progress import BuildEvent

            self.progress(BuildEvent(kind, number, name, text, elapsed))  # type: ignore[arg-type]

    def next_number(self) -> int:
        with self.lock:
            self.number += 1
            return self.number

    # -- stages -------------------------------------------------------------------------------
    def build(self) -> BuildResult:
        df = self.dockerfile
        target = df.stage(self.request.target) if self.request.target else df.target
        warnings = []
        unused = unconsumed_build_args(df, self.build_args)
        if unused:
            warnings.append(
                f"one or more build args were not consumed: {', '.join(unused)} "
                "(no ARG declares them)"
            )
        for message in warnings:
            self.event("info", self.next_number(), "[warning]", message)
        for stage in self._needed(target):
            if stage.index != target.index:
                self._start(stage)
        result = self._run_stage(target)
        others = []
        for index in sorted(self.futures):
            if index != target.index:
                others.append(self.futures[index].result())
        return self._export(result, others, tuple(warnings))

    def _needed(self, target: Stage) -> list[Stage]:
        """The stages ``target`` depends on (by a first look at ``FROM``/``--from``), and it."""
        seen: dict[int, Stage] = {}
        todo = [target]
        while todo:
            stage = todo.pop()
            if stage.index in seen:
                continue
            seen[stage.index] = stage
            todo.extend(self._dependencies(stage))
        return [seen[i] for i in sorted(seen)]

    def _earlier(self, name: str, before: int) -> Stage | None:
        found = self.dockerfile.find_stage(name)
        if found is not None and found.index < before:
            return found
        return None

    def _dependencies(self, stage: Stage) -> list[Stage]:
        deps: list[Stage] = []
        try:
            base, _, _ = expand_from(
                self.dockerfile, stage, self.build_args, platform=self.platform
            )
            expanded = expand_stage(self.dockerfile, stage, self.build_args, platform=self.platform)
        except DockerfileError:
            return deps  # reported when the stage itself is built
        if not base.isdigit():
            found = self._earlier(base, stage.index)
            if found is not None:
                deps.append(found)
        for step in expanded.steps:
            inst = step.instruction
            names: list[str] = []
            if isinstance(inst, Copy) and inst.from_:
                names.append(inst.from_)
            if isinstance(inst, Run):
                names.extend(
                    m.from_
                    for m in inst.mounts
                    if isinstance(m, BindMount | CacheMount) and m.from_
                )
            for name in names:
                found = self._earlier(name, stage.index)
                if found is not None:
                    deps.append(found)
        return deps

    def _start(self, stage: Stage) -> _Future:
        with self.lock:
            future = self.futures.get(stage.index)
            if future is not None:
                return future
            future = _Future()
            self.futures[stage.index] = future

        def work() -> None:
            try:
                future.set(self._run_stage(stage))
            except BaseException as exc:
                with self.lock:
                    if self.failure is None:
                        self.failure = exc
                self.cancel.set()
                future.fail(exc)

        thread = threading.Thread(target=work, name=f"minidock-build-{stage.display_name}")
        with self.lock:
            self.threads.append(thread)
        thread.start()
        return future

    def stage_result(self, stage: Stage) -> _StageResult:
        return self._start(stage).result()

    def _resolve_image(
        self, ref: str, location: Location, what: str, platform: str | None = None
    ) -> ImageRecord:
        """An image by reference: the store's, or pulled when the policy says so."""
        record = self._find_image(ref, location, what, platform)
        from pytest_minidock.errors import InvalidReference
        from pytest_minidock.reference import Reference

        try:  # a name (not an ID, nor a digest): noted for the memo, as its image now
            name = Reference.parse(ref).with_default_tag()
        except InvalidReference:
            name = None
        if name is not None and name.digest is None:
            with self.lock:
                self.names[str(name)] = str(record.manifest.digest)
        return record

    def _find_image(
        self, ref: str, location: Location, what: str, platform: str | None
    ) -> ImageRecord:
        policy = "always" if self.request.pull else "missing"
        if self.builder.resolve_image is not None:
            try:
                return self.builder.resolve_image(ref, policy, platform or self.platform)
            except MinidockError as exc:
                problem = (
                    f"{what} {ref!r} could not be pulled (--pull): {exc}"
                    if self.request.pull
                    else f"{what} {ref!r} is not in the store and could not be pulled: {exc}"
                )
                raise located(location, problem) from exc
        try:
            return self.store.resolve(ref)
        except MinidockError as exc:
            raise located(
                location,
                f"{what} {ref!r} is not in the store (and this builder cannot pull): import or "
                f"pull it first, e.g. 'minidock pull {ref}'",
            ) from exc

    def _image_layers(self, record: ImageRecord) -> tuple[ImageConfig, tuple[LayerRef, ...]]:
        image = self.store.image_of(record)
        layers = tuple(LayerRef(layer.descriptor, layer.diff_id) for layer in image.layers())
        return image.config(), layers

    def _run_stage(self, stage: Stage) -> _StageResult:
        df = self.dockerfile
        base, platform, _ = expand_from(df, stage, self.build_args, platform=self.platform)
        platform = platform or self.platform
        dep = None if base.isdigit() else self._earlier(base, stage.index)
        base_id: Digest | None = None
        fresh = False
        if dep is not None:
            parent = self.stage_result(dep)
            config, layers = parent.config, parent.layers
            start = base_key(str(parent.chain), platform)
            fresh = parent.fresh
        elif base.lower() == "scratch":
            os_name, _, arch = platform.partition("/")
            arch, _, variant = arch.partition("/")
            config = ImageConfig(diff_ids=(), architecture=arch, os=os_name, variant=variant)
            layers = ()
            start = base_key("scratch", platform)
        else:
            record = self._resolve_image(base, stage.location, "base image", platform)
            config, layers = self._image_layers(record)
            base_id = record.id
            start = base_key(str(record.id), platform)
        instructions = stage.instructions
        triggers = self._triggers(config, stage)
        if triggers:
            instructions = (*triggers, *instructions)
            config = replace(config, config=replace(config.config, on_build=()))
        expanded = expand_stage(
            df,
            replace(stage, instructions=instructions),
            self.build_args,
            base_env=config.config.env,
            platform=platform,
        )
        state = State(config, list(layers), start)
        total = len(expanded.steps)
        for index, step in enumerate(expanded.steps, 1):
            if self.cancel.is_set():
                raise self.failure or BuildError("build cancelled: another stage failed")
            cached = self._step(
                stage=stage,
                index=index,
                total=total,
                inst=step.instruction,
                original=step.original,
                step=step,
                state=state,
            )
            fresh = fresh or not cached
        return _StageResult(
            stage,
            state.config,
            tuple(state.layers),
            state.chain,
            base_id,
            changed=total > 0 or bool(triggers),
            fresh=fresh,
        )

    def _triggers(self, config: ImageConfig, stage: Stage) -> tuple[Instruction, ...]:
        """The base image's ``ONBUILD`` triggers as instructions located at the ``FROM`` line."""
        if not config.config.on_build:
            return ()
        out: list[Instruction] = []
        for expression in config.config.on_build:
            location = Location(
                stage.location.path,
                stage.location.line,
                stage.location.end_line,
                f"ONBUILD {expression} (a trigger of the base image of: {stage.location.text})",
            )
            try:
                parsed = parse_dockerfile(f"FROM scratch\n{expression}\n", stage.location.path)
            except DockerfileError as exc:
                raise located(
                    location, f"invalid ONBUILD trigger of the base image: {exc}"
                ) from exc
            out.extend(replace(i, location=location) for i in parsed.stages[0].instructions)
        return tuple(out)

    # -- steps --------------------------------------------------------------------------------
    def _step(
        self,
        *,
        stage: Stage,
        index: int,
        total: int,
        inst: Instruction,
        original: Instruction,
        step: Any,
        state: State,
    ) -> bool:
        """Look the step up, run it on a miss; whether it came from the cache."""
        name = f"[{stage.display_name} {index}/{total}] {_short(original.location.text)}"
        number = self.next_number()
        started = time.monotonic()
        try:  # the config change is pure: check it before anything runs
            applied = apply_instruction(state.config.config, inst, cmd_set=state.cmd_set)
        except ValueError as exc:
            raise located(inst.location, str(exc)) from None
        announced = False
        try:
            prepared = prepare(self, inst, step, state)
            definition = StepDefinition(
                canonical_instruction(inst), step.args, prepared.inputs, prepared.independent
            )
            planned = step_key(state.chain, definition)
            use_cache = not self.request.no_cache
            entry = self._lookup(planned.key) if use_cache else None
            cached = entry is not None
            if entry is None:
                with self.cache.lock(planned.key):  # single flight: one process runs the step
                    entry = self._lookup(planned.key) if use_cache else None
                    cached = entry is not None
                    if entry is None:
                        self.event("start", number, name)
                        announced = True
                        entry = self._execute(
                            inst=inst,
                            step=step,
                            state=state,
                            prepared=prepared,
                            key=planned.key,
                            number=number,
                            name=name,
                        )
            if cached:
                self.event("cached", number, name)
            else:
                self.event("done", number, name, elapsed=time.monotonic() - started)
        except BaseException as exc:
            if not announced:
                self.event("start", number, name)
            if not isinstance(exc, BuildStepFailed):  # that one reported its own error
                self.event("error", number, name, str(exc), time.monotonic() - started)
            raise
        self._apply(state, applied, entry, planned.chain)
        with self.lock:
            self.reports.append(
                StepReport(
                    number,
                    stage.display_name,
                    index,
                    name,
                    planned.key,
                    cached,
                    time.monotonic() - started,
                    entry.layer is not None,
                )
            )
        return cached

    def _lookup(self, key: Digest) -> CacheEntry | None:
        entry = self.cache.get(key)
        if entry is None:
            return None
        if entry.layer is not None and not self.store.blobs.exists(entry.layer.descriptor.digest):
            return None  # its layer was collected: a miss
        return entry

    def _apply(
        self,
        state: State,
        applied: tuple[ContainerConfig, bool, str | None],
        entry: CacheEntry,
        chain: Digest,
    ) -> None:
        cc, cmd_set, author = applied
        config = state.config
        diff_ids = config.diff_ids
        if entry.layer is not None:
            state.layers.append(entry.layer)
            diff_ids = (*diff_ids, entry.layer.diff_id)
            state.view = None
        history = replace(entry.history, empty_layer=entry.layer is None)
        state.config = replace(
            config,
            config=cc,
            diff_ids=diff_ids,
            history=(*config.history, history),
            created=history.created or config.created,
            author=author if author is not None else config.author,
        )
        state.cmd_set = cmd_set
        state.chain = chain

    def _execute(
        self,
        *,
        inst: Instruction,
        step: Any,
        state: State,
        prepared: Prepared,
        key: Digest,
        number: int,
        name: str,
    ) -> CacheEntry:
        from pytest_minidock.store.store import now_rfc3339

        layer: LayerRef | None = None
        if prepared.execute is not None:
            with self.slots:
                if self.cancel.is_set():
                    raise self.failure or BuildError("build cancelled: another stage failed")
                layer = prepared.execute(state, number, name)
        history = History(
            created=now_rfc3339(),
            created_by=created_by(
                inst, shell=state.config.config.shell, args=step.args, content=prepared.content
            ),
        )
        entry = CacheEntry(key, layer, history, name)
        self.cache.put(entry)  # only now: the layer is already in the store
        return entry

    def source_image(self, name: str, stage_index: int, location: Location) -> tuple[str, Any]:
        """``--from``: the stage (waiting for it) or image it names; its input digest and
        ``(layers)`` to read from."""
        found = self.dockerfile.find_stage(name)
        if found is not None and found.index < stage_index:
            result = self.stage_result(found)
            return str(result.chain), result.layers
        if found is not None or name.isdigit():
            raise located(
                location,
                f"--from={name} names stage {name} which is not defined before this one; "
                "a stage can only use the stages above it",
            )
        record = self._resolve_image(name, location, "--from image")
        _, layers = self._image_layers(record)
        return str(record.id), layers

    def stage_index(self, location: Location) -> int:
        """The index of the stage the instruction at ``location`` belongs to."""
        last = 0
        for stage in self.dockerfile.stages:
            if stage.location.line <= location.line:
                last = stage.index
        return last

    # -- the result ---------------------------------------------------------------------------
    def _export(
        self, result: _StageResult, others: Sequence[_StageResult], warnings: tuple[str, ...]
    ) -> BuildResult:
        number = self.next_number()
        started = time.monotonic()
        for other in others:
            if other.changed and other.layers:
                self._commit(other, ())
        record = self._commit(result, self.request.tags)
        text = f"writing image {record.id}"
        if self.request.tags:
            text += "; naming to " + ", ".join(str(t) for t in self.request.tags)
        self.event("info", number, "exporting to image", text, time.monotonic() - started)
        with self.lock:
            steps = tuple(sorted(self.reports, key=lambda r: r.number))
        inputs = None
        if self.memoizable:
            blobs = self.store.blobs
            inputs = BuildInputs(
                started_ns=self.started_ns,
                paths=dict(self.seen),
                followed=dict(self.followed),
                required=(
                    *(str(self.cache.entry_path(s.key)) for s in steps),
                    str(blobs.path(record.manifest.digest)),
                    str(blobs.path(record.id)),
                    *(str(blobs.path(layer.descriptor.digest)) for layer in result.layers),
                ),
                index=str(self.store.paths.index),
                names=dict(self.names),
            )
        return BuildResult(record, steps, warnings, inputs)

    def _commit(self, result: _StageResult, tags: Sequence[Reference]) -> ImageRecord:
        if not result.changed and result.base_id is not None:
            record = self.store.resolve(str(result.base_id))
            for tag in tags:
                record = self.store.tag(str(record.id), tag)
            return record
        config = result.config
        if not config.created:
            from pytest_minidock.store.store import now_rfc3339

            config = replace(config, created=now_rfc3339())
        layers = [layer.descriptor for layer in result.layers]
        if not result.fresh or os.environ.get("SOURCE_DATE_EPOCH"):
            existing = self._existing(config, layers, tags)
            if existing is not None:
                return existing
        return self.store.commit_layers(config, layers, list(tags))

    def _existing(
        self, config: ImageConfig, layers: Sequence[Descriptor], tags: Sequence[Reference]
    ) -> ImageRecord | None:
        """The image already in the store with this manifest and every one of ``tags`` (a fully
        cached rebuild): then nothing needs writing."""
        from pytest_minidock.image import mediatypes as mt
        from pytest_minidock.image.model import Manifest

        raw = config.to_json()
        manifest = Manifest(
            config=Descriptor(mt.OCI_CONFIG, Digest.from_bytes(raw), len(raw)),
            layers=tuple(layers),
        )
        record = self.store.find(manifest=Digest.from_bytes(manifest.to_json()))
        if record is None:
            return None
        names = {n.with_default_tag() for n in record.names}
        if all(t.with_default_tag() in names for t in tags):
            return record
        return None


class _Future:
    """A stage's result, set by its thread, awaited by the stages that use it."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._value: _StageResult | None = None
        self._error: BaseException | None = None

    def set(self, value: _StageResult) -> None:
        self._value = value
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._done.set()

    def result(self) -> _StageResult:
        self._done.wait()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value
