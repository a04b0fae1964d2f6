"""``Engine``: the one place that wires the store, the builder, registries and the runtime together.

The pytest plugin and the ``minidock`` CLI only translate their users' words into calls on an
``Engine``. Every method takes image references and container names or IDs as docker does.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pytest_minidock.errors import ImageInUse, RuntimeFailure, UsageError

TYPE_CHECKING = False  # not ``typing``'s: importing typing costs a command ~6 ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from pytest_minidock.digest import Digest
    from pytest_minidock.registry.auth import Credentials, CredentialSource
    from pytest_minidock.registry.client import LoginResult, RegistryClient
    from pytest_minidock.registry.hosts import RegistryHosts
    from pytest_minidock.registry.policy import RegistryOptions
    from pytest_minidock.registry.progress import ProgressCallback
    from pytest_minidock.registry.pull import PullResult
    from pytest_minidock.registry.push import PushResult
    from pytest_minidock.registry.transport import Transport
    from pytest_minidock.runtime.container import ExecResult, Runtime, Started, Stdio
    from pytest_minidock.runtime.state import ContainerRecord
    from pytest_minidock.spec import Overrides
    from pytest_minidock.store.store import ImageRecord, Store

__all__ = ["Engine", "open_store"]


def open_store(root: Path | str | None = None) -> Store:
    """The image store at ``root`` (default: this user's), wired for this process: rootless
    with a full subordinate id map, it unpacks and removes snapshots in the containers' user
    namespace (``userns.snapshot_owner``), so that image files keep their owners there."""
    from pytest_minidock.capabilities import host_root
    from pytest_minidock.store.store import Store

    if host_root():  # (root: no runtime import, no fork)
        return Store(root)
    from pytest_minidock.runtime.userns import snapshot_owner

    return Store(root, as_owner=snapshot_owner())


class Engine:
    """Images and containers under one root: build, pull, run, exec, inspect, remove."""

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        session: str = "",
        syscalls: Any = None,
        cgroups: Any = None,
        launcher: bool | None = None,
    ) -> None:
        """``launcher``: start attached containers through a small per-process launcher (cheap
        forks; see ``runtime.launcher``). None: on unless ``MINIDOCK_LAUNCHER=0``; the CLI passes
        False (one short-lived process: a launcher would only add its start-up)."""
        from pytest_minidock.store.paths import default_root

        self.root = Path(root) if root is not None else default_root()
        self.session = session
        self._syscalls = syscalls
        self._cgroups = cgroups
        self._launcher = launcher
        self._store: Store | None = None
        self._runtime: Runtime | None = None

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.root)
        return self._store

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            from pytest_minidock.runtime.container import Runtime

            self._runtime = Runtime(
                self.root,
                syscalls=self._syscalls,
                cgroups=self._cgroups,
                session=self.session,
                launcher=self._launcher,
            )
        return self._runtime

    # -- images --------------------------------------------------------------------------------
    def image_in_use(self, image_id: Digest) -> bool:
        """Whether any container (running or not) was made from this image."""
        return any(r.config.get("ImageID") == str(image_id) for r in self.runtime.state.all())

    def remove_image(self, name: str, *, force: bool = False) -> list[str]:
        """``docker rmi``: refuses images that containers use, unless ``force``."""
        try:
            return self.store.remove(name, force=force, in_use=self.image_in_use)
        except ImageInUse as exc:
            users = [
                r.short_id
                for r in self.runtime.state.all()
                if r.config.get("ImageID") == str(self.store.resolve(name).id)
            ]
            raise ImageInUse(f"{exc} (container {', '.join(users)})") from None

    # -- registries ----------------------------------------------------------------------------
    PULL_POLICIES = ("missing", "always", "never")
    """When ``ensure_image`` pulls: if the image is not in the store, every time, never."""
    credentials: CredentialSource | None = None
    """Asked for registry credentials before docker's ``config.json`` (the pytest plugin's hook
    goes here): a callable from a registry name (``docker.io``, ``127.0.0.1:5000``) to
    ``Credentials`` or None."""
    registry_transport: Transport | None = None
    """The HTTP seam for registries (default: ``registry.transport``'s HTTP/1.1 with keep-alive
    pooling)."""
    registry_options: RegistryOptions | None = None
    """Timeouts, retries, parallelism (default: ``RegistryOptions.from_env()``)."""
    registry_hosts: RegistryHosts | None = None
    """Mirrors and insecure registries (default: ``RegistryHosts.load()``)."""
    _registry: RegistryClient | None = None

    @property
    def registry(self) -> RegistryClient:
        """The registry client: connections and tokens shared by this engine's transfers."""
        if self._registry is None:
            from pytest_minidock.registry.auth import chain
            from pytest_minidock.registry.client import RegistryClient, docker_credentials

            def hooked(registry: str) -> Credentials | None:
                return None if self.credentials is None else self.credentials(registry)

            self._registry = RegistryClient(
                credentials=chain(hooked, docker_credentials),
                hosts=self.registry_hosts,
                transport=self.registry_transport,
                options=self.registry_options,
            )
        return self._registry

    def pull(
        self,
        ref: str,
        *,
        platform: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> PullResult:
        """``docker pull``: fetch ``ref`` (default tag ``latest``) into the store and name it.

        ``platform`` (``linux/arm64``) picks from a manifest list; default: this machine's.
        ``result.record`` is the image in the store, ``result.id`` its ID.
        """
        from pytest_minidock.reference import Reference
        from pytest_minidock.registry.platforms import parse_platform

        wanted = parse_platform(platform) if platform else None
        return self.registry.pull(
            self.store, Reference.parse(ref), platform=wanted, progress=progress
        )

    def push(self, ref: str, *, progress: ProgressCallback | None = None) -> PushResult:
        """``docker push``: send the image named ``ref`` to its registry."""
        from pytest_minidock.reference import Reference

        return self.registry.push(self.store, Reference.parse(ref), progress=progress)

    def login(self, registry: str | None, username: str, password: str) -> LoginResult:
        """``docker login``: check the credentials with the registry (default Docker Hub), then
        store them in docker's ``config.json`` or its credential helper. With no user name and
        password, check the stored login instead."""
        return self.registry.login(registry, username, password)

    def logout(self, registry: str | None = None) -> LoginResult:
        """``docker logout``: forget the stored login (``result.changed`` is False if none)."""
        return self.registry.logout(registry)

    def list_tags(self, repository: str) -> list[str]:
        """The tags of a repository in its registry (``127.0.0.1:5000/tools/busybox``)."""
        from pytest_minidock.reference import Reference

        return self.registry.list_tags(Reference.parse(repository))

    def ensure_image(
        self,
        ref: str,
        policy: str = "missing",
        *,
        platform: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> ImageRecord:
        """The image ``ref`` names, pulled as ``policy`` says: ``missing`` (when the store has
        no such image), ``always`` or ``never`` (``ImageNotFound`` if it is not there). Image
        IDs are only ever looked up locally."""
        from pytest_minidock.errors import ImageNotFound
        from pytest_minidock.reference import is_image_id_prefix

        if policy not in self.PULL_POLICIES:
            raise UsageError(
                f"invalid pull policy {policy!r}: use one of {', '.join(self.PULL_POLICIES)}"
            )
        full_id = ref.startswith("sha256:") or (len(ref) == 64 and is_image_id_prefix(ref))
        if policy != "always" or full_id:
            try:
                return self.store.resolve(ref)
            except ImageNotFound:
                found = self._named_by_digest(ref)
                if found is not None:
                    return found
                if policy == "never" or full_id:
                    raise ImageNotFound(
                        f"no such image: {ref} (the pull policy is {policy!r}: pull it first "
                        f"with 'minidock pull {ref}')"
                    ) from None
        return self.pull(ref, platform=platform, progress=progress).record

    def _named_by_digest(self, ref: str) -> ImageRecord | None:
        """An image named ``name@digest`` where the digest is an index's (pulled by digest)."""
        from pytest_minidock.errors import InvalidReference
        from pytest_minidock.reference import Reference

        try:
            wanted = Reference.parse(ref)
        except InvalidReference:
            return None
        if wanted.digest is None:
            return None
        bare = Reference(wanted.domain, wanted.path, None, wanted.digest)
        for record in self.store.images():
            if bare in record.names:
                return record
        return None

    # -- containers ----------------------------------------------------------------------------
    def create(
        self,
        image: str,
        overrides: Overrides | None = None,
        *,
        name: str | None = None,
        auto_remove: bool = False,
        keep: bool = False,
        detached: bool = False,
        environ: dict[str, str] | None = None,
    ) -> ContainerRecord:
        """``docker create``: a container from ``image`` with ``overrides``, not started."""
        from pytest_minidock.runtime.state import new_id
        from pytest_minidock.spec import Overrides, make_spec

        overrides = overrides or Overrides()
        record = self.store.resolve(image)
        img = self.store.image_of(record)
        lowerdirs = [
            str(self.store.snapshot(layer.diff_id, layer.descriptor)) for layer in img.layers()
        ]
        cid = new_id()
        spec = make_spec(image, str(record.id), img.config(), overrides, default_hostname=cid[:12])
        return self.runtime.create(
            spec,
            lowerdirs,
            name=name,
            auto_remove=auto_remove,
            keep=keep,
            detached=detached,
            cid=cid,
        )

    def start(
        self, container: str, *, stdio: Stdio | None = None, detached: bool = False
    ) -> Started:
        """``docker start``: start a created or stopped container."""
        # its snapshots were recorded when it was made, perhaps before a reboot: checked once
        self.store.recheck_lowerdirs(self.runtime.lower_dirs(container))
        return self.runtime.start(container, stdio=stdio, detached=detached)

    def run(
        self,
        image: str,
        overrides: Overrides | None = None,
        *,
        name: str | None = None,
        auto_remove: bool = False,
        keep: bool = False,
        detached: bool = False,
        stdio: Stdio | None = None,
    ) -> Started:
        """``docker run``: create and start; returns once the payload runs.

        ``detached``: the container outlives this process (the CLI's ``-d``); otherwise it dies
        with this process, even if it is killed.
        """
        record = self.create(
            image, overrides, name=name, auto_remove=auto_remove, keep=keep, detached=detached
        )
        try:
            return self.runtime.start(record.id, stdio=stdio, detached=detached)
        except RuntimeFailure:
            if not auto_remove:
                with contextlib.suppress(RuntimeFailure):
                    self.runtime.state.update(record.id, status="exited")
            raise

    def wait(self, container: str, timeout: float | None = None) -> int:
        return self.runtime.wait(container, timeout)

    def stop(self, container: str, timeout: float | None = None) -> int:
        return self.runtime.stop(container, timeout)

    def kill(self, container: str, sig: int = 9) -> None:  # 9: SIGKILL (no signal import)
        self.runtime.kill(container, sig)

    def remove(self, container: str, *, force: bool = False, volumes: bool = False) -> str:
        return self.runtime.remove(container, force=force, volumes=volumes)

    def exec(
        self,
        container: str,
        argv: Sequence[str],
        *,
        env: Sequence[str] = (),
        workdir: str | None = None,
        user: str | None = None,
        stdio: Stdio | None = None,
        capture: bool = False,
    ) -> ExecResult:
        return self.runtime.exec(
            container, argv, env=env, workdir=workdir, user=user, stdio=stdio, capture=capture
        )

    def containers(self, *, all: bool = False) -> list[ContainerRecord]:
        """``docker ps [-a]``: running containers, or all of them."""
        records = self.runtime.state.all()
        out = []
        for record in records:
            current = record
            if record.state.status == "running" and not record.state.running():
                with contextlib.suppress(RuntimeFailure):
                    self.runtime.wait(record.id, timeout=0.2)  # records the exit of a dead one
                    current = self.runtime.state.read(record.id)
            if all or current.state.running():
                out.append(current)
        return out

    def container(self, name: str) -> ContainerRecord:
        return self.runtime.state.find(name)

    def copy(self, src: str, dest: str, *, archive: bool = False) -> None:
        """``docker cp [-a]``: ``CONTAINER:PATH HOSTPATH`` or ``HOSTPATH CONTAINER:PATH``.

        Copies belong to the user at the destination (root in a container, the caller on the
        host); ``archive`` keeps the source's uid/gid instead.
        """
        from pytest_minidock.runtime.fs import copy_from_container, copy_to_container

        def split(arg: str) -> tuple[str, str] | None:
            name, sep, path = arg.partition(":")
            if sep and name and not arg.startswith(("/", ".")):
                return name, path
            return None

        left, right = split(src), split(dest)
        if (left is None) == (right is None):
            raise UsageError(
                "copying between containers is not supported; one side of cp must "
                "be CONTAINER:PATH and the other a host path"
            )
        if left is not None:
            record = self.container(left[0])
            copy_from_container(record, self.runtime.sys, left[1], Path(dest), archive=archive)
        else:
            assert right is not None
            record = self.container(right[0])
            copy_to_container(record, self.runtime.sys, Path(src), right[1], archive=archive)

    def commit(
        self,
        container: str,
        reference: str | None = None,
        *,
        changes: Sequence[str] = (),
        message: str = "",
        author: str = "",
    ) -> Any:
        """``docker commit``: the container's changes become a new layer on its image."""
        from pytest_minidock._record import replace as dc_replace
        from pytest_minidock.image.changes import apply_changes
        from pytest_minidock.image.model import History
        from pytest_minidock.reference import Reference
        from pytest_minidock.runtime.fs import commit_exclusions
        from pytest_minidock.store.layers import layer_from_overlay_upper
        from pytest_minidock.store.store import now_rfc3339

        record = self.container(container)
        if (record.dir / "rootfs.copied").exists():
            raise UsageError(
                f"cannot commit container {record.name}: it runs on a plain copy of its image "
                "(no overlayfs), so its changes are not kept apart from the image"
            )
        base = self.store.image(record.config["ImageID"])
        config = base.config()
        layers = list(base.manifest().layers)
        refs = [Reference.parse(reference)] if reference else []
        tmp = self.store.blobs.temp_path("layer")
        try:
            blob = layer_from_overlay_upper(
                record.dir / "upper", tmp, mtime=None, exclude=commit_exclusions(record)
            )
            desc = self.store.add_layer_blob(blob)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        created = now_rfc3339()
        spec = record.config.get("Spec", {})
        new_cc = apply_changes(config.config, list(changes)) if changes else config.config
        new_config = dc_replace(
            config,
            diff_ids=(*config.diff_ids, blob.diff_id),
            config=new_cc,
            created=created,
            author=author or config.author,
            history=(
                *config.history,
                History(
                    created=created,
                    created_by=" ".join(spec.get("argv", [])),
                    comment=message,
                    author=author,
                ),
            ),
        )
        return self.store.commit_layers(new_config, [*layers, desc], refs)

    # -- networks ------------------------------------------------------------------------------
    def network_create(
        self,
        name: str,
        *,
        subnet: str | None = None,
        gateway: str | None = None,
        internal: bool = False,
        labels: dict[str, str] | None = None,
        owner_session: str | None = None,
    ) -> dict[str, Any]:
        """``docker network create``: a bridge network; with ``owner_session``, it belongs to
        this process (and session) and is removed by the next clean-up once they are gone."""
        from pytest_minidock.runtime.network import Networks
        from pytest_minidock.runtime.state import Owner

        owner = None if owner_session is None else Owner.current(owner_session)
        networks = Networks(self.root)
        net = networks.create(
            name, subnet=subnet, gateway=gateway, internal=internal, labels=labels, owner=owner
        )
        return networks.inspect(net.name)

    def network_remove(self, name: str, *, force: bool = False) -> None:
        """``docker network rm``: refused while containers are attached, unless ``force``."""
        from pytest_minidock.runtime.network import Networks

        Networks(self.root).remove(name, force=force)

    def network_inspect(self, name: str) -> dict[str, Any]:
        from pytest_minidock.runtime.network import Networks

        return Networks(self.root).inspect(name)

    def port(self, container: str) -> list[Any]:
        """``docker port``: the container's published ports (``PortMapping``s)."""
        from pytest_minidock.runtime.network import Networks

        return Networks(self.root).ports(self.container(container).id)

    def cleanup(self, *, networks: bool = True) -> list[str]:
        """Remove what crashed sessions left behind (see ``Runtime.cleanup_leftovers``)."""
        return self.runtime.cleanup_leftovers(networks=networks)

    def env_file(self, path: str) -> tuple[str, ...]:
        from pytest_minidock.spec import parse_env_file

        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UsageError(f"open {path}: {exc.strerror}") from exc
        return parse_env_file(text, path, dict(os.environ))

    # -- build ---------------------------------------------------------------------------------
    _builder: Builder | None = None

    @property
    def builder(self) -> Builder:
        """The Dockerfile builder over this engine's store, running ``RUN`` steps as containers."""
        if self._builder is None:
            from pytest_minidock.build.builder import Builder

            self._builder = Builder(
                self.store, _BuildStepRunner(self), resolve_image=self._build_image
            )
        return self._builder

    def _build_image(self, ref: str, policy: str, platform: str | None) -> ImageRecord:
        """A base or ``--from`` image for the builder: the store first, then the registry."""
        ensure = getattr(self, "ensure_image", None)
        if ensure is None:
            return self.store.resolve(ref)
        record: ImageRecord = ensure(ref, policy, platform=platform)
        return record

    def build(
        self,
        context: Path | str,
        *,
        dockerfile: Path | str | None = None,
        tags: Sequence[str] = (),
        buildargs: dict[str, str] | None = None,
        target: str | None = None,
        no_cache: bool = False,
        pull: bool = False,
        network: str | None = None,
        progress: BuildProgress | None = None,
        secrets: dict[str, str | Path | SecretSource] | None = None,
        platform: str | None = None,
        dockerfile_text: str | None = None,
    ) -> BuildResult:
        """``docker build``: the image the Dockerfile (default ``CONTEXT/Dockerfile``; a relative
        ``dockerfile`` is within the context, as in docker's API) describes, named by every tag.
        ``result.record`` is it in the store, ``result.id`` its ID, ``result.steps`` says which
        steps came from the cache.

        ``network``: of ``RUN`` steps (default ``default``, the bridge, as docker's);
        ``secrets``: ``id -> file`` for ``RUN --mount=type=secret``; ``progress``: called with
        each ``BuildEvent`` (``build.progress.PlainProgress(sys.stderr)`` prints like
        ``--progress=plain``). Raises
        ``DockerfileError`` or ``BuildError`` (``BuildStepFailed`` for a failing ``RUN``), naming
        ``FILE:LINE``.
        """
        from pytest_minidock.build.builder import BuildRequest, SecretSource
        from pytest_minidock.reference import Reference

        given = secrets or {}
        request = BuildRequest(
            Path(context),
            dockerfile=Path(context) / dockerfile if dockerfile is not None else None,
            tags=tuple(Reference.parse(t).with_default_tag() for t in tags),
            build_args=dict(buildargs or {}),
            target=target,
            no_cache=no_cache,
            pull=pull,
            network=network or "default",
            secrets={
                k: v if isinstance(v, SecretSource) else SecretSource(path=Path(v))
                for k, v in given.items()
            },
            platform=platform,
            dockerfile_text=dockerfile_text,
        )
        return self.builder.build(request, progress)

    def builder_prune(self, *, all: bool = False) -> CachePruneReport:
        """``docker builder prune [-a]``: forget build cache entries whose layers no image uses
        (every entry, cache mount and file-digest cache with ``all``), then collect garbage."""
        report: CachePruneReport = self.builder.prune(everything=all)
        return report


if TYPE_CHECKING:
    from collections.abc import Callable

    from pytest_minidock.build.builder import Builder, BuildResult, SecretSource
    from pytest_minidock.build.cache import CachePruneReport
    from pytest_minidock.build.progress import BuildEvent
    from pytest_minidock.build.runner import RunOutcome, RunRequest

    BuildProgress = Callable[[BuildEvent], None]


class _BuildStepRunner:
    """The builder's ``StepRunner``: each ``RUN`` in a temporary container on the image's layers.

    The container gets the step's command, environment, working directory, user, network and
    mounts; its output streams to the builder; when the command succeeds its overlay upper
    directory becomes the step's layer, leaving out the runtime's stubs and everything the
    build mounted (cache, bind, tmpfs and secret mounts, and directories made only to hold
    them). The container is removed whatever happens.
    """

    def __init__(self, engine: Engine) -> None:
        import threading

        self.engine = engine
        self._lock = threading.Lock()  # one create/start/remove at a time (stages run in threads)

    def run(
        self, request: RunRequest, layer_out: Path, output: Callable[[bytes], None]
    ) -> RunOutcome:
        import threading

        from pytest_minidock._record import replace
        from pytest_minidock.build.runner import RunOutcome
        from pytest_minidock.errors import MinidockError
        from pytest_minidock.runtime.container import Stdio
        from pytest_minidock.runtime.state import new_id
        from pytest_minidock.spec import Mount, Overrides, make_spec

        runtime = self.engine.runtime
        config = request.config
        cc = replace(
            config.config,
            volumes=(),
            healthcheck=None,
            entrypoint=None,
            cmd=None,
            working_dir=request.workdir,
            user=request.user,
        )
        overrides = Overrides(
            command=request.argv,
            entrypoint=("",),
            env=request.env,
            network=request.network,
            privileged=request.privileged,
        )
        cid = new_id()
        spec = make_spec(
            "minidock-build",
            request.image_id,
            replace(config, config=cc),
            overrides,
            default_hostname=cid[:12],
        )
        mounts = tuple(
            Mount(m.kind, m.target, m.source, m.readonly, m.options) for m in request.mounts
        )
        spec = replace(spec, mounts=mounts)
        empty: Path | None = None
        lowerdirs = [str(p) for p in request.layers]
        if not lowerdirs:  # FROM scratch: overlay needs a lower layer
            empty = self.engine.store.blobs.temp_path("buildempty")
            empty.mkdir()
            lowerdirs = [str(empty)]
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        record = None
        try:
            with self._lock:
                record = runtime.create(spec, lowerdirs, cid=cid)
                # An engine without a launcher (the CLI) forks RUN containers itself, but not
                # while stages build in threads: forking a multi-threaded process is best left
                # alone, so those starts go through a launcher (starts are serialised here).
                saved = runtime.launcher
                if self.engine._launcher is False and threading.active_count() > 1:
                    runtime.launcher = True
                try:
                    runtime.start(record.id, stdio=Stdio(stdout=write_fd, stderr=write_fd))
                except MinidockError as exc:
                    output(f"{exc}\n".encode())
                    return RunOutcome(int(getattr(exc, "exit_code", 125)))
                finally:
                    runtime.launcher = saved
                    os.close(write_fd)
                    write_fd = -1
            with _OutputPump(read_fd, output):
                code = runtime.wait(record.id)
            if code != 0:
                return RunOutcome(code)
            blob = self._layer(record, request, layer_out)
            return RunOutcome(0, blob)
        finally:
            if write_fd >= 0:
                os.close(write_fd)
            os.close(read_fd)
            if record is not None:
                with self._lock, contextlib.suppress(MinidockError):
                    runtime.remove(record.id, force=True)
            if empty is not None:
                empty.rmdir()

    def _layer(self, record: ContainerRecord, request: RunRequest, out: Path) -> Any:
        from pytest_minidock.runtime.fs import commit_exclusions
        from pytest_minidock.store.layers import MTIME_FROM_ENV, layer_from_overlay_upper

        runtime_stubs = commit_exclusions(record)
        upper = record.dir / "upper"
        holders: set[str] = set()
        for mount in request.mounts:
            parent = os.path.dirname(mount.target.rstrip("/"))
            while parent not in ("/", ""):
                holders.add(parent)
                parent = os.path.dirname(parent)

        def in_image(path: str) -> bool:
            return any(os.path.lexists(f"{low}{path}") for low in request.layers)

        def exclude(path: str) -> bool:
            if runtime_stubs(path):
                return True
            if path in holders and not in_image(path):
                try:
                    children = os.listdir(f"{upper}{path}")
                except OSError:
                    return False
                return all(exclude(f"{path}/{child}") for child in children)
            return False

        mtime = MTIME_FROM_ENV if os.environ.get("SOURCE_DATE_EPOCH") else None
        return layer_from_overlay_upper(upper, out, mtime=mtime, exclude=exclude)


class _OutputPump:
    """Copies a container's output from a pipe to a callback in a thread, until the pipe's end
    or shortly after the container was seen to exit (a writer may keep the pipe open)."""

    def __init__(self, fd: int, output: Callable[[bytes], None]) -> None:
        import threading

        self.fd = fd
        self.output = output
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="minidock-build-output")

    def __enter__(self) -> _OutputPump:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def _pump(self) -> None:
        import select

        quiet_since: float | None = None
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                self.output(chunk)
                quiet_since = None
                continue
            if self.done.is_set():
                import time

                now = time.monotonic()
                if quiet_since is None:
                    quiet_since = now
                elif now - quiet_since > 0.1:
                    return
