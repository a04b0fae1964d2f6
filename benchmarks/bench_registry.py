"""Push and pull against a local registry: minidock (library and CLI) next to skopeo, podman and
docker, for a small (busybox) and a ~100 MB image.

Run: ``.venv/bin/python -m benchmarks.bench_registry [--runs 10] [--big-runs 5] [--size-mb 100]
[--with-docker]`` (root for podman and docker). In one run:

- the registry is Debian's ``docker-registry`` on 127.0.0.1 (``tests.support.registry``). Every
  push sample goes to a freshly started, empty registry (started untimed), so every blob is really
  uploaded; pulls come from one registry holding both images, into an empty store each time;
- images: ``small`` is busybox from Debian's busybox-static (one layer); ``big`` is busybox plus
  three layers of real files from /usr, ``--size-mb`` MB uncompressed in all;
- minidock: ``Engine.push``/``Engine.pull`` in this process (what pytest uses), the same plus
  unpacking every layer (``pull+unpack``: what docker and podman do during a pull), and the
  ``minidock`` command as a whole process;
- skopeo: ``skopeo copy`` between our store (an OCI layout) and the registry, and from the registry
  into a fresh OCI layout directory (no unpacking);
- podman: a private ``--root``; the images are loaded from a ``minidock save`` archive first. Pulls
  unpack layers; pushes recompress them (podman keeps layers uncompressed);
- docker: a running dockerd, or with ``--with-docker`` a private one (``benchmarks.bench_runtime``),
  stopped by PID afterwards. Missing tools print "not installed" and never fail the run.

Ratios are the other tool's p50 divided by ours (>1x: ours is faster). Then:

- what limits the big pull: our pull's MB/s next to, on the same blobs, sha256 in one thread, the
  disk (write + fsync, as ``cp``/``dd conv=fsync``), the registry sending to ``curl -o /dev/null``
  (the network here), and curl into files (a plain downloader): the issue asks for pulls "limited
  by disk or network, not by our hashing";
- the small image's whole ``minidock push/pull`` commands next to issue 7's docker and podman
  numbers (docker push 103 ms, pull 139 ms; podman push 85 ms, pull 253 ms).

The measured processes run with cached bytecode (``PYTHONPYCACHEPREFIX`` in the work directory) and
without ``PYTHONDONTWRITEBYTECODE``; unset it in the shell too for comparable library numbers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks._stats import Timing, measure
from benchmarks.bench_runtime import (
    Other,
    PrivateDockerd,
    commit,
    find_docker,
    load,
    ratio,
    umount_under,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from pytest_minidock.api import Engine
    from tests.support.registry import RegistryServer

WARMUPS = 1
CHILD_ENV: dict[str, str] = {}
"""The environment of measured processes (set in ``main``)."""
IMAGES = ("small", "big")


# -- images --------------------------------------------------------------------------------------
def usr_files(budget: int) -> Iterator[str]:
    """Regular files under /usr, sorted, until ``budget`` bytes of content."""
    total = 0
    for dirpath, dirnames, filenames in os.walk("/usr"):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            size = os.path.getsize(path)
            if total + size > budget:
                continue
            total += size
            yield path
            if total >= budget * 0.99:
                return


def make_store(work: Path, size_mb: int) -> tuple[Path, dict[str, int]]:
    """A store with ``small:small`` and ``big:big``; returns (root, compressed size per image)."""
    from dataclasses import replace

    from pytest_minidock.api import Engine
    from pytest_minidock.image.changes import apply_changes
    from pytest_minidock.image.model import ContainerConfig, Descriptor
    from pytest_minidock.reference import Reference
    from tests.support.rootfs import BUSYBOX_CHANGES, busybox_tar

    root = work / "root"
    engine = Engine(root)
    store = engine.store
    rootfs = busybox_tar(work / "busybox.tar")
    with open(rootfs, "rb") as f:
        store.import_tarball(
            f,
            [Reference.parse("small:small")],
            source="busybox-static",
            changes=apply_changes(ContainerConfig(), BUSYBOX_CHANGES),
        )
    base = store.image("small:small")
    files = list(usr_files(size_mb * 1_000_000))
    layers = list(base.manifest().layers)
    diff_ids = list(base.config().diff_ids)
    for part in range(3):
        tar_path = work / f"usr-{part}.tar"
        with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
            for path in files[part::3]:
                with contextlib.suppress(OSError):
                    tar.add(path, arcname=path.lstrip("/"), recursive=False)
        with open(tar_path, "rb") as f:
            blob = store.add_layer(f, source=str(tar_path), unpack=False)
        tar_path.unlink()
        layers.append(Descriptor(store.layer_media_type, blob.digest, blob.size))
        diff_ids.append(blob.diff_id)
    config = replace(base.config(), diff_ids=tuple(diff_ids))
    store.commit_layers(config, layers, [Reference.parse("big:big")])
    sizes = {
        name: sum(d.size for d in store.image(f"{name}:{name}").manifest().layers)
        for name in IMAGES
    }
    return root, sizes


# -- registries ----------------------------------------------------------------------------------
class Registries:
    """Fresh registries for push samples; each stopped (by PID) before the next starts."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.count = 0
        self.current: RegistryServer | None = None

    def fresh(self) -> RegistryServer:
        from tests.support.registry import start_registry

        self.stop()
        self.count += 1
        directory = self.work / f"push-registry-{self.count}"
        self.current = start_registry(directory)
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            shutil.rmtree(self.current.root, ignore_errors=True)
            self.current = None


def quiet(argv: Sequence[str], timeout: float = 600) -> None:
    proc = subprocess.run(
        argv,
        check=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        env=CHILD_ENV or None,
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {' | '.join(err[-3:])}")


def sample(name: str, runs: int, setup: Callable[[], object], fn: Callable[[], object]) -> Timing:
    for _ in range(WARMUPS):
        setup()
        fn()
    return measure(name, fn, runs, setup)


def guarded(what: str, fn: Callable[[], Timing]) -> Timing | None:
    try:
        return fn()
    except Exception as exc:
        print(f"{what}: failed: {exc}")
        return None


# -- one tool at a time --------------------------------------------------------------------------
class Bench:
    def __init__(self, work: Path, root: Path, runs: dict[str, int]) -> None:
        from pytest_minidock.api import Engine

        self.work = work
        self.root = root
        self.runs = runs
        self.engine: Engine = Engine(root)
        self.registries = Registries(work)
        self.target = ""
        self.counter = 0
        self.results: dict[tuple[str, str, str], Timing | None] = {}

    def fresh_dir(self, prefix: str) -> Path:
        self.counter += 1
        path = self.work / f"{prefix}-{self.counter}"
        shutil.rmtree(self.work / f"{prefix}-{self.counter - 1}", ignore_errors=True)
        return path

    def record(self, tool: str, op: str, image: str, timing: Timing | None) -> None:
        self.results[(tool, op, image)] = timing
        if timing is not None:
            print(timing.line())

    # minidock ------------------------------------------------------------------------------
    def ours_push(self, image: str) -> None:
        from pytest_minidock.reference import Reference

        store = self.engine.store
        local = f"{image}:{image}"

        def setup() -> None:
            if self.target:
                with contextlib.suppress(Exception):
                    store.remove(self.target)
            registry = self.registries.fresh()
            self.target = registry.ref(f"bench/{image}:v1")
            store.tag(local, Reference.parse(self.target))

        lib = sample(
            f"minidock push {image} (library)",
            self.runs[image],
            setup,
            lambda: self.engine.push(self.target),
        )
        self.record("minidock", "push", image, lib)
        minidock = str(Path(sys.executable).parent / "minidock")
        cli = sample(
            f"minidock push {image} (CLI process)",
            self.runs[image],
            setup,
            lambda: quiet([minidock, "--root", str(self.root), "push", self.target]),
        )
        self.record("minidock CLI", "push", image, cli)
        with contextlib.suppress(Exception):
            store.remove(self.target)
        self.target = ""

    def ours_pull(self, image: str, ref: str) -> None:
        from pytest_minidock.api import Engine

        holder: list[Engine] = []

        def setup() -> None:
            holder[:] = [Engine(self.fresh_dir("pull-root"))]

        lib = sample(
            f"minidock pull {image} (library)",
            self.runs[image],
            setup,
            lambda: holder[0].pull(ref),
        )
        self.record("minidock", "pull", image, lib)

        def pull_unpack() -> None:
            holder[0].pull(ref)
            holder[0].store.lowerdirs(ref)

        unpacked = sample(
            f"minidock pull+unpack {image} (library)", self.runs[image], setup, pull_unpack
        )
        self.record("minidock", "pull+unpack", image, unpacked)
        minidock = str(Path(sys.executable).parent / "minidock")
        target: list[Path] = []

        def cli_setup() -> None:
            target[:] = [self.fresh_dir("pull-root")]

        cli = sample(
            f"minidock pull {image} (CLI process)",
            self.runs[image],
            cli_setup,
            lambda: quiet([minidock, "--root", str(target[0]), "pull", "-q", ref]),
        )
        self.record("minidock CLI", "pull", image, cli)

    # skopeo --------------------------------------------------------------------------------
    def skopeo(self, skopeo: str, image: str, pull_ref: str) -> None:
        def setup() -> None:
            self.target = self.registries.fresh().ref(f"bench/{image}:v1")

        push = guarded(
            "skopeo push",
            lambda: sample(
                f"skopeo copy oci→registry {image}",
                self.runs[image],
                setup,
                lambda: quiet(
                    [
                        skopeo,
                        "copy",
                        "--dest-tls-verify=false",
                        f"oci:{self.root}:{image}",
                        f"docker://{self.target}",
                    ]
                ),
            ),
        )
        self.record("skopeo", "push", image, push)
        target: list[Path] = []

        def pull_setup() -> None:
            target[:] = [self.fresh_dir("skopeo-pull")]

        pull = guarded(
            "skopeo pull",
            lambda: sample(
                f"skopeo copy registry→oci {image}",
                self.runs[image],
                pull_setup,
                lambda: quiet(
                    [
                        skopeo,
                        "copy",
                        "--src-tls-verify=false",
                        f"docker://{pull_ref}",
                        f"oci:{target[0]}:{image}",
                    ]
                ),
            ),
        )
        self.record("skopeo", "pull", image, pull)

    # podman and docker ---------------------------------------------------------------------
    def other(self, tool: Other, pull_refs: dict[str, str], tls: list[str]) -> None:
        """Pushes of the loaded images, then (with every local copy removed, so that each layer
        is really downloaded) pulls."""
        for image in IMAGES:
            self.other_push(tool, image, tls)
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            tool.output("rmi", "-f", *(f"{image}:{image}" for image in IMAGES))
        for image in IMAGES:
            self.other_pull(tool, image, pull_refs[image], tls)

    def other_push(self, tool: Other, image: str, tls: list[str]) -> None:
        def setup() -> None:
            self.target = self.registries.fresh().ref(f"bench/{image}:v1")
            tool.output("tag", f"{image}:{image}", self.target)

        def push_once() -> None:
            quiet(tool.cmd("push", *tls, self.target))
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                tool.output("rmi", self.target)

        push = guarded(
            f"{tool.name} push",
            lambda: sample(f"{tool.name} push {image}", self.runs[image], setup, push_once),
        )
        self.record(tool.name, "push", image, push)

    def other_pull(self, tool: Other, image: str, pull_ref: str, tls: list[str]) -> None:
        def setup() -> None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                tool.output("rmi", "-f", pull_ref)
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                tool.output("image", "prune", "-a", "-f")  # no layer may be left to reuse
            images = tool.output("images", "-q").split()
            if images:
                raise RuntimeError(
                    f"{tool.name} still holds images {images}: layers would be reused"
                )

        pull = guarded(
            f"{tool.name} pull",
            lambda: sample(
                f"{tool.name} pull {image}",
                self.runs[image],
                setup,
                lambda: quiet(tool.cmd("pull", *tls, "-q", pull_ref)),
            ),
        )
        self.record(tool.name, "pull", image, pull)


# -- what limits a big pull ----------------------------------------------------------------------
def pull_ceilings(
    engine: Engine, image: str, ref: str, work: Path, *, runs: int, workers: int
) -> dict[str, Timing]:
    """The pieces a pull is made of, each alone on the same blobs (seconds per whole image):

    - ``sha256``: hashing the blobs' bytes, already in memory, in one thread (``hashlib``);
    - ``disk``: writing those bytes to new files on the pull roots' filesystem and fsyncing them
      (what ``cp`` + ``sync`` or ``dd conv=fsync`` do), one thread per blob as the pull does;
    - ``network``: the registry sending the blobs to ``curl -o /dev/null``, ``workers`` at once
      (process start included: a few ms);
    - ``curl→disk``: the same into files, then fsynced: a plain downloader's pull.
    """
    import hashlib
    import threading

    layers = engine.store.image(f"{image}:{image}").manifest().layers
    data = [engine.store.blobs.read(d.digest, verify=False) for d in layers]
    out: dict[str, Timing] = {}

    def hash_all() -> None:
        for blob in data:
            hashlib.sha256(blob).digest()

    out["sha256"] = measure("sha256 of the blobs (1 thread)", hash_all, runs)
    target = work / "ceiling"

    def clear() -> None:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()

    def write_one(i: int, blob: bytes) -> None:
        fd = os.open(target / f"blob-{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view[: 1 << 20]) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def write_all() -> None:
        threads = [
            threading.Thread(target=write_one, args=(i, blob)) for i, blob in enumerate(data)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    out["disk"] = measure("write+fsync of the blobs", write_all, runs, clear)
    curl = shutil.which("curl")
    if curl is not None:
        host, _, rest = ref.partition("/")
        repo = rest.rpartition(":")[0]
        urls = [f"http://{host}/v2/{repo}/blobs/{d.digest}" for d in layers]

        def fetch(into_files: bool) -> None:
            procs: list[subprocess.Popen[bytes]] = []
            pending = list(enumerate(urls))
            while pending or procs:
                while pending and len(procs) < workers:
                    i, url = pending.pop(0)
                    dest = str(target / f"curl-{i}") if into_files else "/dev/null"
                    procs.append(subprocess.Popen([curl, "-sf", "-o", dest, url]))
                procs.pop(0).wait()
            if into_files:
                for i in range(len(urls)):
                    fd = os.open(target / f"curl-{i}", os.O_RDONLY)
                    os.fsync(fd)
                    os.close(fd)

        out["network"] = measure(f"curl x{workers} -> /dev/null", lambda: fetch(False), runs, clear)
        out["curl→disk"] = measure(
            f"curl x{workers} -> files, fsync", lambda: fetch(True), runs, clear
        )
    shutil.rmtree(target, ignore_errors=True)
    return out


def print_ceilings(ours: Timing | None, ceilings: dict[str, Timing], size: int) -> None:
    """Our big pull's MB/s next to each piece's, to see which one limits it."""
    print(f"\n== what limits the big pull ({size / 1e6:.1f} MB of blobs; MB/s at p50)")

    def rate(t: Timing | None) -> str:
        return "-" if t is None else f"{size / t.median / 1e6:7.0f}"

    print(f"{'minidock pull (library)':<34}{rate(ours)}")
    labels = {
        "sha256": "sha256, 1 thread (hashlib)",
        "disk": "disk: write + fsync",
        "network": "network: registry -> curl",
        "curl→disk": "curl -> files + fsync",
    }
    for key, label in labels.items():
        print(f"{label:<34}{rate(ceilings.get(key))}")
    print(
        "a pull hashes, writes and receives at once (per blob: the receiving thread hashes, the "
        "kernel writes back in the background); it is bound by the slowest of disk and network "
        "when it runs near their MB/s, and by our hashing only if sha256 were the lowest line."
    )


def load_into(tool: Other, root: Path, work: Path) -> None:
    """Load both images into docker or podman from a ``minidock save`` archive."""
    from pytest_minidock.cli import main as minidock

    archive = work / f"images-for-{tool.name}.tar"
    with contextlib.redirect_stdout(io.StringIO()):
        if minidock(["--root", str(root), "save", "-o", str(archive), "small:small", "big:big"]):
            raise RuntimeError("minidock save failed")
    tool.output("load", "-i", str(archive), timeout=600)


def podman_tool(work: Path) -> Other | None:
    podman = shutil.which("podman")
    if podman is None:
        return None
    base = [
        podman,
        "--root",
        str(work / "podman" / "root"),
        "--runroot",
        str(work / "podman" / "run"),
        "--events-backend",
        "file",
    ]
    if not os.path.isdir("/run/systemd/system"):
        base += ["--cgroup-manager", "cgroupfs"]
    return Other("podman", base)


# -- main ----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10, help="samples for the small image")
    parser.add_argument("--big-runs", type=int, default=5, help="samples for the big image")
    parser.add_argument("--size-mb", type=int, default=100, help="big image, uncompressed")
    parser.add_argument(
        "--with-docker", action="store_true", help="start a private dockerd for the docker rows"
    )
    args = parser.parse_args()
    for name in ("MINIDOCK_REGISTRY_MIRRORS", "MINIDOCK_REGISTRY_TIMEOUT"):
        os.environ.pop(name, None)
    work = Path(tempfile.mkdtemp(prefix="minidock-bench-reg-"))
    docker_config = work / "docker-config"  # no user logins, no credential helpers
    docker_config.mkdir()
    (docker_config / "config.json").write_text("{}")
    os.environ["DOCKER_CONFIG"] = str(docker_config)
    # the measured minidock processes use cached bytecode, as an installed package has it
    CHILD_ENV.update(os.environ)
    CHILD_ENV.pop("PYTHONDONTWRITEBYTECODE", None)
    CHILD_ENV["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    private: PrivateDockerd | None = None
    bench: Bench | None = None
    pull_registry: RegistryServer | None = None
    try:
        from tests.support.registry import start_registry

        t0 = time.perf_counter()
        root, sizes = make_store(work, args.size_mb)
        print(
            f"images: small {sizes['small'] / 1e6:.1f} MB, big {sizes['big'] / 1e6:.1f} MB "
            f"compressed (made in {time.perf_counter() - t0:.0f}s)   cores: {os.cpu_count()}   "
            f"commit: {commit()}   load: {load()}"
        )
        runs = {"small": args.runs, "big": args.big_runs}
        bench = Bench(work, root, runs)
        pull_registry = start_registry(work / "pull-registry")
        pull_refs = {name: pull_registry.ref(f"bench/{name}:v1") for name in IMAGES}
        from pytest_minidock.reference import Reference

        for name in IMAGES:
            bench.engine.store.tag(f"{name}:{name}", Reference.parse(pull_refs[name]))
            bench.engine.push(pull_refs[name])

        print("\n== minidock")
        for name in IMAGES:
            bench.ours_push(name)
            bench.ours_pull(name, pull_refs[name])
        ceilings = pull_ceilings(
            bench.engine,
            "big",
            pull_refs["big"],
            work,
            runs=max(3, args.big_runs),
            workers=bench.engine.registry.options.download_workers,
        )
        for timing in ceilings.values():
            print(timing.line())

        print("\n== skopeo")
        skopeo = shutil.which("skopeo")
        if skopeo is None:
            print("skopeo: not installed")
        else:
            for name in IMAGES:
                bench.skopeo(skopeo, name, pull_refs[name])

        print("\n== podman")
        podman = podman_tool(work) if os.geteuid() == 0 else None
        if podman is None:
            print("podman: not installed (or not root)")
        else:
            try:
                load_into(podman, root, work)
                bench.other(podman, pull_refs, ["--tls-verify=false"])
            except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
                print(f"podman: failed: {exc}")

        print("\n== docker")
        docker, private, note = find_docker(args.with_docker, work)
        print(note)
        if docker is not None:
            try:
                load_into(docker, root, work)
                bench.other(docker, pull_refs, [])
            except (subprocess.SubprocessError, OSError, RuntimeError) as exc:
                print(f"docker: failed: {exc}")
        summary(bench.results, sizes)
        print_ceilings(bench.results.get(("minidock", "pull", "big")), ceilings, sizes["big"])
        print_targets(bench.results)
        print(f"load average at the end: {load()}")
    finally:
        if bench is not None:
            bench.registries.stop()
        if pull_registry is not None:
            pull_registry.stop()
        if private is not None:
            private.stop()
        umount_under(work)  # podman's storage mounts its overlay directory onto itself
        shutil.rmtree(work, ignore_errors=True)


ROWS = {
    # operation: the result of each tool shown in its row (None: not comparable)
    "push": {t: "push" for t in ("minidock", "minidock CLI", "skopeo", "podman", "docker")},
    "pull": {"minidock": "pull", "minidock CLI": "pull", "skopeo": "pull"},
    "pull+unpack": {"minidock": "pull+unpack", "podman": "pull", "docker": "pull"},
}
TOOLS = ("minidock", "minidock CLI", "skopeo", "podman", "docker")


def summary(results: dict[tuple[str, str, str], Timing | None], sizes: dict[str, int]) -> None:
    print("\n== summary (ms, p50 / p90; MB/s of compressed blobs at our p50)")
    others = ("skopeo", "podman", "docker")
    header = f"{'operation':<18}" + "".join(f"{t:>15}" for t in TOOLS)
    header += "".join(f"{t + '/ours':>13}" for t in others) + "     MB/s"
    print(header)
    print("-" * len(header))
    for image in IMAGES:
        for op, shown in ROWS.items():
            ours = results.get(("minidock", shown["minidock"], image))
            if ours is None:
                continue
            timings = {
                tool: results.get((tool, shown[tool], image)) if tool in shown else None
                for tool in TOOLS
            }
            cells = [
                "-" if t is None else f"{t.median * 1e3:.0f} / {t.pct(90) * 1e3:.0f}"
                for t in timings.values()
            ]
            medians = {t: (None if v is None else v.median) for t, v in timings.items()}
            ratios = [ratio(medians[t], ours.median) for t in others]
            rate = sizes[image] / ours.median / 1e6
            print(
                f"{op + ' ' + image:<18}"
                + "".join(f"{c:>15}" for c in cells)
                + "".join(f"{r:>13}" for r in ratios)
                + f"{rate:9.0f}"
            )
    print(
        "docker and podman unpack layers while pulling, so their pulls sit in the pull+unpack "
        "rows; skopeo does not unpack (pull rows). Ratios: their p50 / ours (>1x: ours faster)."
    )


ISSUE_TARGETS = {("docker", "push"): 103, ("docker", "pull"): 139, ("podman", "push"): 85}
ISSUE_TARGETS[("podman", "pull")] = 253
"""Issue 7's measurements for the small image (ms, whole commands), to beat."""


def print_targets(results: dict[tuple[str, str, str], Timing | None]) -> None:
    """The small image's whole ``minidock push/pull`` commands next to issue 7's numbers."""
    print("\n== issue 7's targets, small image (whole commands, ms at p50)")
    for op in ("push", "pull"):
        ours = results.get(("minidock CLI", op, "small"))
        mine = "-" if ours is None else f"{ours.median * 1e3:.0f}"
        known = ", ".join(
            f"{tool} {ISSUE_TARGETS[(tool, op)]} (issue)"
            + (f" / {t.median * 1e3:.0f} (here)" if (t := results.get((tool, op, "small"))) else "")
            for tool in ("docker", "podman")
        )
        print(f"minidock {op} {mine:>6}   vs {known}")


if __name__ == "__main__":
    main()
