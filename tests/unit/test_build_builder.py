"""The builder with a fake StepRunner (no root, no containers): images and their config, the
cache (hits run nothing, keys follow inputs, single flight across processes, nothing poisoned by
a killed builder), multi-stage builds, ADD, RUN mounts, progress, and errors naming FILE:LINE."""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.build.builder import Builder, BuildRequest, BuildResult, SecretSource
from pytest_minidock.build.progress import BuildEvent, PlainProgress
from pytest_minidock.build.runner import RunOutcome, RunRequest
from pytest_minidock.errors import BuildError, BuildStepFailed, DockerfileError, StageNotFound
from pytest_minidock.image.model import ContainerConfig
from pytest_minidock.image.model import Healthcheck as ImageHealthcheck
from pytest_minidock.reference import Reference
from pytest_minidock.store.layers import layer_from_dir
from pytest_minidock.store.store import Store
from tests.support.httpfiles import serve_directory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent.parent
PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
GROUP = "root:x:0:\nnogroup:x:65534:\n"


def make_base(root: Path, name: str = "base:1", on_build: tuple[str, ...] = ()) -> Store:
    """A store with a tiny base image: /etc/passwd, /etc/group, /bin/sh, /srv; CMD ["sh"]."""
    store = Store(root)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for rel, data in (("etc/passwd", PASSWD), ("etc/group", GROUP), ("bin/sh", "#!fake\n")):
            info = tarfile.TarInfo(rel)
            info.size = len(data)
            info.mode = 0o755
            tar.addfile(info, io.BytesIO(data.encode()))
        info = tarfile.TarInfo("srv")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
    buf.seek(0)
    config = ContainerConfig(env=("PATH=/bin",), cmd=("sh",), on_build=on_build)
    store.import_tarball(buf, [Reference.parse(name)], changes=config)
    return store


class FakeRunner:
    """Runs ``RUN`` scripts made of ``echo TEXT > /path``, ``echo TEXT``, ``sleep S`` and
    ``exit N`` commands (separated by ``&&``, ``;`` or new lines) without any container."""

    def __init__(self, log: Path | None = None, *, sleep: bool = True) -> None:
        self.requests: list[RunRequest] = []
        self.sleep = sleep
        self.log = log
        self.spans: list[tuple[float, float]] = []
        self.secrets: list[str] = []
        self._lock = threading.Lock()

    @property
    def calls(self) -> int:
        return len(self.requests)

    def run(
        self, request: RunRequest, layer_out: Path, output: Callable[[bytes], None]
    ) -> RunOutcome:
        started = time.monotonic()
        with self._lock:
            self.requests.append(request)
        if self.log is not None:
            with open(self.log, "a") as f:
                f.write(f"{os.getpid()} {' '.join(request.argv)}\n")
        self.secrets.extend(
            Path(m.source).read_text()
            for m in request.mounts
            if m.target.startswith("/run/secrets/")
        )
        script = request.argv[-1]
        with tempfile.TemporaryDirectory() as tmp:
            for part in re.split(r"&&|;|\n", script):
                command = part.strip()
                if match := re.fullmatch(r"echo (.*?) > (\S+)", command):
                    path = Path(tmp + match.group(2))
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(match.group(1) + "\n")
                elif match := re.fullmatch(r"echo (.*)", command):
                    output(match.group(1).encode() + b"\n")
                elif match := re.fullmatch(r"sleep ([0-9.]+)", command):
                    if self.sleep:
                        time.sleep(float(match.group(1)))
                elif match := re.fullmatch(r"exit ([0-9]+)", command):
                    output(b"about to fail\n")
                    return RunOutcome(int(match.group(1)))
            blob = layer_from_dir(Path(tmp), layer_out)
        with self._lock:
            self.spans.append((started, time.monotonic()))
        return RunOutcome(0, blob)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return make_base(tmp_path / "root")


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "app.py").write_text("print('app')\n")
    (root / "conf").mkdir()
    (root / "conf" / "a.ini").write_text("a=1\n")
    (root / "conf" / "b.ini").write_text("b=2\n")
    (root / "notes.log").write_text("ignored\n")
    (root / ".dockerignore").write_text("*.log\n")
    return root


def build(
    store: Store,
    ctx: Path,
    dockerfile: str,
    runner: FakeRunner | None = None,
    **kwargs: object,
) -> BuildResult:
    (ctx / "Dockerfile").write_text(textwrap.dedent(dockerfile))
    builder = Builder(store, runner or FakeRunner())
    return builder.build(BuildRequest(ctx, **kwargs))  # type: ignore[arg-type]


def layer_files(store: Store, result: BuildResult, index: int) -> dict[str, tuple[str, int, int]]:
    """name -> (content, mode, uid) of the index-th layer of the built image."""
    layer = store.image_of(result.record).layers()[index]
    out = {}
    with layer.open() as raw, tarfile.open(fileobj=gzip.GzipFile(fileobj=raw)) as tar:
        for m in tar:
            data = tar.extractfile(m).read().decode() if m.isreg() else m.linkname  # type: ignore[union-attr]
            out[m.name] = (data, m.mode, m.uid)
    return out


FULL = """\
    FROM base:1
    MAINTAINER someone@example.com
    ARG VERSION=1.0
    ENV APP_HOME=/srv/app VERSION=$VERSION
    LABEL org.example.version=$VERSION maintainer="a b"
    WORKDIR $APP_HOME
    COPY --chown=nobody:nogroup app.py ./
    COPY conf/ conf/
    COPY <<EOF /etc/motd
    hello $VERSION
    EOF
    ARG BUILD_ID=7
    RUN echo built > /srv/app/built && echo done
    SHELL ["/bin/sh", "-ec"]
    RUN echo shelled
    USER nobody
    EXPOSE 8080 53/udp
    VOLUME /data
    HEALTHCHECK --interval=5s CMD ["wget", "-q", "localhost"]
    STOPSIGNAL SIGINT
    ONBUILD COPY . /src
    ENTRYPOINT ["python"]
    CMD ["app.py"]
    """


def test_a_dockerfile_builds_an_image_with_dockers_config_and_history(
    store: Store, ctx: Path
) -> None:
    runner = FakeRunner()
    result = build(store, ctx, FULL, runner, tags=(Reference.parse("app:1"),))
    assert store.resolve("app:1").id == result.id
    image = store.image_of(result.record)
    config = image.config()
    cc = config.config
    assert cc.env == ("PATH=/bin", "APP_HOME=/srv/app", "VERSION=1.0")
    assert cc.labels == {"org.example.version": "1.0", "maintainer": "a b"}
    assert cc.working_dir == "/srv/app"
    assert cc.user == "nobody"
    assert cc.exposed_ports == ("53/udp", "8080/tcp")
    assert cc.volumes == ("/data",)
    assert cc.healthcheck == ImageHealthcheck(
        ("CMD", "wget", "-q", "localhost"), interval=5_000_000_000
    )
    assert cc.stop_signal == "SIGINT"
    assert cc.shell == ("/bin/sh", "-ec")
    assert cc.on_build == ("COPY . /src",)
    assert (cc.entrypoint, cc.cmd) == (("python",), ("app.py",))
    assert config.author == "someone@example.com"
    # history: one entry per step, docker's wording, empty_layer for config-only steps
    created = [h.created_by for h in config.history[1:]]
    assert created[:4] == [
        "MAINTAINER someone@example.com",
        "ARG VERSION=1.0",
        "ENV APP_HOME=/srv/app VERSION=1.0",
        "LABEL org.example.version=1.0 maintainer=a b",
    ]
    assert created[4] == "WORKDIR /srv/app"
    assert re.fullmatch(r"COPY file:[0-9a-f]{64} in \./", created[5])
    assert re.fullmatch(r"COPY dir:[0-9a-f]{64} in conf/", created[6])
    # (ENV VERSION hides the ARG of that name: only BUILD_ID is a build arg of the RUNs)
    assert created[9] == "RUN |1 BUILD_ID=7 /bin/sh -c echo built > /srv/app/built && echo done"
    assert created[11] == "RUN |1 BUILD_ID=7 /bin/sh -ec echo shelled"
    assert [h.empty_layer for h in config.history[1:6]] == [True, True, True, True, False]
    assert len(config.diff_ids) == 1 + sum(not h.empty_layer for h in config.history[1:])
    # the layers
    # WORKDIR made /srv/app (its parent is written as the image has it, as docker does)
    assert layer_files(store, result, 1) == {"srv": ("", 0o755, 0), "srv/app": ("", 0o755, 0)}
    assert layer_files(store, result, 2)["srv/app/app.py"] == ("print('app')\n", 0o644, 65534)
    conf = layer_files(store, result, 3)
    assert {"srv/app/conf/a.ini", "srv/app/conf/b.ini"} <= set(conf)
    assert layer_files(store, result, 4)["etc/motd"][0] == "hello 1.0\n"
    assert layer_files(store, result, 5)["srv/app/built"][0] == "built\n"
    # what RUN was given
    first, second = runner.requests
    assert first.argv == ("/bin/sh", "-c", "echo built > /srv/app/built && echo done")
    assert second.argv == ("/bin/sh", "-ec", "echo shelled")
    assert first.env == ("BUILD_ID=7",)
    assert (first.workdir, first.user, first.network) == ("/srv/app", "", "default")
    assert len(first.layers) == 5
    assert all(p.is_dir() for p in first.layers)


def test_an_unchanged_rebuild_is_all_cache_hits_and_runs_nothing(store: Store, ctx: Path) -> None:
    runner = FakeRunner()
    first = build(store, ctx, FULL, runner, tags=(Reference.parse("app:1"),))
    assert runner.calls == 2
    assert not any(s.cached for s in first.steps)
    again = build(store, ctx, FULL, runner, tags=(Reference.parse("app:1"),))
    assert runner.calls == 2
    assert all(s.cached for s in again.steps)
    assert len(again.steps) == len(first.steps)
    assert again.id == first.id  # the same image, history times included
    fresh = Builder(Store(store.root), FakeRunner())  # another process, as far as caches go
    assert fresh.build(BuildRequest(ctx)).id == first.id


def test_changing_one_copy_source_rebuilds_from_that_step_on(store: Store, ctx: Path) -> None:
    runner = FakeRunner()
    first = build(store, ctx, FULL, runner)
    (ctx / "conf" / "b.ini").write_text("b=3\n")
    second = build(store, ctx, FULL, runner)
    cached = [s.cached for s in second.steps]
    copy_conf = next(i for i, s in enumerate(second.steps) if "COPY conf/" in s.name)
    assert cached[:copy_conf] == [True] * copy_conf
    assert cached[copy_conf:] == [False] * (len(cached) - copy_conf)
    assert runner.calls == 4
    assert second.id != first.id
    # an ignored file or a file's times never count
    (ctx / "notes.log").write_text("changed, but ignored\n")
    os.utime(ctx / "app.py", (1, 1))
    assert all(s.cached for s in build(store, ctx, FULL, runner).steps)


def test_no_cache_runs_every_step(store: Store, ctx: Path) -> None:
    runner = FakeRunner()
    build(store, ctx, FULL, runner)
    again = build(store, ctx, FULL, runner, no_cache=True)
    assert runner.calls == 4
    assert not any(s.cached for s in again.steps)


def test_a_rebuild_that_ran_steps_writes_its_image_unless_times_are_pinned(
    store: Store, ctx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tags = (Reference.parse("app:1"),)
    index = store.paths.index
    first = build(store, ctx, FULL, tags=tags, no_cache=True)
    before = index.stat().st_ino
    again = build(store, ctx, FULL, tags=tags, no_cache=True)
    assert again.id != first.id  # new creation times: a new image, the tag moved to it
    assert index.stat().st_ino != before
    assert store.resolve("app:1").id == again.id
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    pinned = build(store, ctx, FULL, tags=tags, no_cache=True)
    before = index.stat().st_ino
    same = build(store, ctx, FULL, tags=tags, no_cache=True)
    assert same.id == pinned.id  # every time pinned: the very image the store holds
    assert index.stat().st_ino == before  # found, not written again


def test_build_args_count_where_docker_counts_them(store: Store, ctx: Path) -> None:
    dockerfile = """\
        FROM base:1
        RUN echo before
        ARG MODE=debug
        RUN echo mode $MODE
        ARG UNUSED
        COPY app.py /
        """
    runner = FakeRunner()
    build(store, ctx, dockerfile, runner, build_args={"MODE": "a"})
    second = build(store, ctx, dockerfile, runner, build_args={"MODE": "b"})
    # the RUN before the ARG does not see it; from its declaration on it counts
    assert [s.cached for s in second.steps] == [True, False, False, False, False]
    assert runner.requests[-1].env == ("MODE=b",)
    third = build(store, ctx, dockerfile, runner, build_args={"MODE": "b", "UNUSED": "x"})
    assert [s.cached for s in third.steps] == [True, True, True, False, False]
    assert runner.calls == 3
    warned = build(store, ctx, dockerfile, runner, build_args={"NOBODY": "x"})
    assert warned.warnings == (
        "one or more build args were not consumed: NOBODY (no ARG declares them)",
    )


MULTI = """\
    FROM base:1 AS deps
    RUN sleep 0.4 && echo deps > /deps.txt
    FROM base:1 AS unused
    RUN echo unused > /unused.txt
    FROM base:1 AS assets
    RUN sleep 0.4 && echo assets > /assets.txt
    FROM base:1
    COPY --from=deps /deps.txt /
    COPY --from=assets /assets.txt /
    """


def test_multi_stage_skips_unneeded_stages_and_builds_independent_ones_at_once(
    store: Store, ctx: Path
) -> None:
    runner = FakeRunner()
    result = build(store, ctx, MULTI, runner)
    scripts = sorted(r.argv[-1] for r in runner.requests)
    assert scripts == [
        "sleep 0.4 && echo assets > /assets.txt",
        "sleep 0.4 && echo deps > /deps.txt",
    ]
    (a_start, a_end), (b_start, b_end) = runner.spans
    assert a_start < b_end, "the two stages ran one after the other"
    assert b_start < a_end, "the two stages ran one after the other"
    assert layer_files(store, result, 1) == {"deps.txt": ("deps\n", 0o644, 0)}
    assert layer_files(store, result, 2) == {"assets.txt": ("assets\n", 0o644, 0)}
    assert {s.stage for s in result.steps} == {"deps", "assets", "stage-3"}
    # --target builds that stage and what it needs, by name or index
    only = build(store, ctx, MULTI, runner, target="unused")
    assert runner.calls == 3
    assert {s.stage for s in only.steps} == {"unused"}
    assert build(store, ctx, MULTI, runner, target="1").id == only.id
    with pytest.raises(StageNotFound, match="no build stage with name 'nope'"):
        build(store, ctx, MULTI, runner, target="nope")


def test_from_an_earlier_stage_and_from_scratch(store: Store, ctx: Path) -> None:
    result = build(
        store,
        ctx,
        """\
        FROM scratch AS files
        COPY app.py /app.py
        FROM base:1 AS first
        ENV A=1
        FROM first
        COPY --from=files /app.py /opt/
        COPY --from=0 /app.py /opt/by-index.py
        """,
    )
    config = store.image_of(result.record).config()
    assert "A=1" in config.config.env
    assert layer_files(store, result, 1) == {
        "opt": ("", 0o755, 0),
        "opt/app.py": ("print('app')\n", 0o644, 0),
    }
    assert layer_files(store, result, 2)["opt/by-index.py"][0] == "print('app')\n"


def test_copy_link_does_not_depend_on_what_is_below(store: Store, ctx: Path) -> None:
    runner = FakeRunner()
    dockerfile = "FROM base:1\nENV A={}\nCOPY --link app.py /opt/\nRUN echo after\n"
    build(store, ctx, dockerfile.format(1), runner)
    again = build(store, ctx, dockerfile.format(2), runner)
    assert [s.cached for s in again.steps] == [False, True, False]


def test_onbuild_triggers_of_the_base_image_run_first(tmp_path: Path, ctx: Path) -> None:
    store = make_base(
        tmp_path / "root", "parent:1", ("ENV FROM_PARENT=yes", "COPY app.py /onbuild/")
    )
    result = build(store, ctx, "FROM parent:1\nRUN echo child\n")
    config = store.image_of(result.record).config()
    assert "FROM_PARENT=yes" in config.config.env
    assert config.config.on_build == ()  # triggers do not pass on to grandchildren
    assert "onbuild/app.py" in layer_files(store, result, 1)
    assert [s.name.split("] ", 1)[1] for s in result.steps][:2] == [
        "ONBUILD ENV FROM_PARENT=yes (a trigger of the base image of: FROM parent:1)",
        "ONBUILD COPY app.py /onbuild/ (a trigger of the base image of: FROM parent:1)",
    ]


def test_errors_name_file_and_line(store: Store, ctx: Path) -> None:
    df = str(ctx / "Dockerfile")
    with pytest.raises(BuildError, match=rf"{df}:3: COPY failed: source 'missing.txt' not found"):
        build(store, ctx, "FROM base:1\nENV A=1\nCOPY missing.txt /\n")
    with pytest.raises(BuildError, match=rf"{df}:2: base image 'nothere:1' is not in the store"):
        build(store, ctx, "# comment\nFROM nothere:1\nRUN true\n")
    with pytest.raises(BuildError, match=rf"{df}:2: --from image 'nostage' is not in the store"):
        build(store, ctx, "FROM base:1\nCOPY --from=nostage /x /\n")
    with pytest.raises(BuildError, match=rf"{df}:2: COPY failed: unable to find user ghost"):
        build(store, ctx, "FROM base:1\nCOPY --chown=ghost app.py /\n")
    with pytest.raises(BuildError, match=rf"{df}:2: invalid port 'http' for EXPOSE"):
        build(store, ctx, "FROM base:1\nEXPOSE http\n")
    with pytest.raises(BuildError, match=rf"{df}:2: RUN --mount=type=ssh is not supported"):
        build(store, ctx, "FROM base:1\nRUN --mount=type=ssh ssh-add -l\n")
    with pytest.raises(BuildError, match=rf"{df}:2: secret 'token' is required"):
        build(store, ctx, "FROM base:1\nRUN --mount=type=secret,id=token,required echo x\n")
    with pytest.raises(DockerfileError, match=rf"{df}:2: unknown instruction 'RUNN'"):
        build(store, ctx, "FROM base:1\nRUNN true\n")


def test_a_failing_run_names_file_line_command_exit_code_and_last_output(
    store: Store, ctx: Path
) -> None:
    events: list[BuildEvent] = []
    (ctx / "Dockerfile").write_text("FROM base:1\n\nRUN echo step one && exit 3\n")
    with pytest.raises(BuildStepFailed) as info:
        Builder(store, FakeRunner()).build(BuildRequest(ctx), events.append)
    failure = info.value
    assert (failure.path, failure.line, failure.exit_code) == (str(ctx / "Dockerfile"), 3, 3)
    assert failure.command == "/bin/sh -c echo step one && exit 3"
    assert failure.output == ("step one", "about to fail")
    message = str(failure)
    assert message.startswith(f"{ctx / 'Dockerfile'}:3: RUN failed: process ")
    assert "exit code: 3 | RUN echo step one && exit 3" in message
    assert message.endswith("  step one\n  about to fail")
    assert [e.kind for e in events][-2:] == ["output", "error"]
    assert list(store.paths.tmp.iterdir()) == []  # no half layer left behind
    assert len(store.images()) == 1  # and no image


def test_a_collected_layer_is_a_miss_not_an_error(store: Store, ctx: Path) -> None:
    runner = FakeRunner()
    dockerfile = "FROM base:1\nRUN echo x > /x\nENV B=1\n"
    first = build(store, ctx, dockerfile, runner)
    layer = store.image_of(first.record).layers()[1]
    store.blobs.delete(layer.descriptor.digest)
    again = build(store, ctx, dockerfile, runner)
    assert runner.calls == 2
    assert [s.cached for s in again.steps] == [False, True]


def test_builder_prune_forgets_the_cache(store: Store, ctx: Path) -> None:
    runner = FakeRunner()
    builder = Builder(store, runner)
    (ctx / "Dockerfile").write_text("FROM base:1\nRUN --mount=type=cache,target=/c echo x > /x\n")
    first = builder.build(BuildRequest(ctx))
    kept = builder.prune()  # the image still uses the layer: its entry stays
    assert kept.entries == 0
    assert builder.build(BuildRequest(ctx)).id == first.id
    report = builder.prune(everything=True)
    assert report.entries == 1
    assert report.mounts == 1
    assert report.reclaimed > 0
    builder.build(BuildRequest(ctx))
    assert runner.calls == 2


def _archive(path: Path) -> None:
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("pkg/file.txt")
        info.size = 5
        info.uid = 7
        tar.addfile(info, io.BytesIO(b"hello"))


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    directory = tmp_path / "www"
    directory.mkdir()
    with serve_directory(directory) as base:
        yield base, directory


def test_add_unpacks_local_archives_and_downloads_urls(
    store: Store, ctx: Path, served: tuple[str, Path]
) -> None:
    base, www = served
    _archive(ctx / "bundle.tgz")
    (www / "tool.sh").write_text("#!/bin/sh\necho v1\n")
    dockerfile = f"FROM base:1\nADD bundle.tgz /opt/\nADD {base}/tool.sh /usr/bin/\n"
    runner = FakeRunner()
    result = build(store, ctx, dockerfile, runner)
    assert layer_files(store, result, 1)["opt/pkg/file.txt"] == ("hello", 0o644, 7)
    assert layer_files(store, result, 2)["usr/bin/tool.sh"] == ("#!/bin/sh\necho v1\n", 0o600, 0)
    assert result.inputs is None  # a download: nothing a build memo could check
    assert all(s.cached for s in build(store, ctx, dockerfile, runner).steps)
    local = build(store, ctx, "FROM base:1\nADD bundle.tgz /opt/\n", runner)
    assert local.inputs is not None
    assert str(ctx / "bundle.tgz") in local.inputs.paths
    (www / "tool.sh").write_text("#!/bin/sh\necho v2\n")
    changed = build(store, ctx, dockerfile, runner)
    assert [s.cached for s in changed.steps] == [True, False]
    with pytest.raises(BuildError, match=rf"{ctx / 'Dockerfile'}:2: ADD failed: downloading"):
        build(store, ctx, f"FROM base:1\nADD {base}/missing /x\n")


def test_run_mounts_reach_the_runner_and_stay_out_of_the_key(
    store: Store, ctx: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t")
    os.environ["MINIDOCK_TEST_TOKEN"] = "from-env"
    try:
        runner = FakeRunner()
        dockerfile = """\
            FROM base:1 AS tools
            RUN echo tool > /tool
            FROM base:1
            RUN --mount=type=secret,id=token \\
                --mount=type=secret,id=envtok,env=TOKEN \\
                --mount=type=cache,target=/root/.cache,id=pip \\
                --mount=type=tmpfs,target=/scratch,size=1m \\
                --mount=type=bind,source=conf,target=/conf \\
                --mount=type=bind,from=tools,source=/tool,target=/usr/bin/tool \\
                echo mounted
            """
        secrets = {
            "token": SecretSource(path=secret),
            "envtok": SecretSource(env="MINIDOCK_TEST_TOKEN"),
        }
        build(store, ctx, dockerfile, runner, secrets=secrets)
        request = runner.requests[-1]
        mounts = {m.target: m for m in request.mounts}
        assert runner.secrets == ["s3cr3t"]  # what the file held while the step ran
        assert mounts["/run/secrets/token"].readonly
        assert "TOKEN=from-env" in request.env
        cache = mounts["/root/.cache"]
        assert cache.kind == "bind"
        assert not cache.readonly
        assert Path(cache.source).is_relative_to(store.root / "buildcache" / "mounts")
        assert mounts["/scratch"] == replace(
            mounts["/scratch"], kind="tmpfs", options="size=1048576"
        )
        assert mounts["/conf"].source == str(ctx / "conf")
        assert mounts["/conf"].readonly
        assert mounts["/usr/bin/tool"].kind == "bind"
        # the secret files are gone after the step
        assert not Path(mounts["/run/secrets/token"].source).exists()
        # a different secret value does not make a different step
        secret.write_text("rotated")
        again = build(store, ctx, dockerfile, runner, secrets=secrets)
        assert all(s.cached for s in again.steps)
        # but bind-mounted context content does
        (ctx / "conf" / "a.ini").write_text("a=2\n")
        changed = build(store, ctx, dockerfile, runner, secrets=secrets)
        assert {s.stage: s.cached for s in changed.steps} == {"tools": True, "stage-1": False}
        # the cache mount is the same directory every time
        assert {
            m.source for r in runner.requests for m in r.mounts if m.target == "/root/.cache"
        } == {cache.source}
    finally:
        del os.environ["MINIDOCK_TEST_TOKEN"]


def test_shebang_heredocs_run_as_scripts_and_network_follows_the_flags(
    store: Store, ctx: Path
) -> None:
    runner = FakeRunner()
    build(
        store,
        ctx,
        """\
        FROM base:1
        RUN <<EOF
        #!/usr/bin/env python3
        print("hi")
        EOF
        RUN --network=host echo on the host
        RUN --network=default echo on the build's network
        """,
        runner,
        network="host",
    )
    script, host, default = runner.requests
    assert script.argv == ("/dev/pipes/EOF",)
    assert script.mounts[0].target == "/dev/pipes/EOF"
    assert script.mounts[0].readonly
    assert (script.network, host.network, default.network) == ("host", "host", "host")
    build(store, ctx, "FROM base:1\nRUN --network=host echo on\nRUN echo default\n", runner)
    assert [r.network for r in runner.requests[-2:]] == ["host", "default"]  # the bridge, as docker


def test_plain_progress_reads_like_buildkit(store: Store, ctx: Path) -> None:
    (ctx / "Dockerfile").write_text("FROM base:1\nCOPY app.py /\nRUN echo hello from run\n")
    out = io.StringIO()
    builder = Builder(store, FakeRunner())
    builder.build(BuildRequest(ctx), PlainProgress(out))
    text = out.getvalue()
    assert "#1 [stage-0 1/2] COPY app.py /\n#1 DONE " in text
    assert re.search(
        r"#2 \[stage-0 2/2\] RUN echo hello from run\n#2 \d\.\d{3} hello from run\n", text
    )
    assert "#3 exporting to image\n#3 writing image sha256:" in text
    out = io.StringIO()
    builder.build(BuildRequest(ctx), PlainProgress(out))
    assert "#1 [stage-0 1/2] COPY app.py /\n#1 CACHED\n" in out.getvalue()


# -- several processes -------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from tests.unit.test_build_builder import FakeRunner
    from pytest_minidock.build.builder import Builder, BuildRequest
    from pytest_minidock.store.store import Store

    root, ctx, log, go = sys.argv[1:5]
    Path(go + "." + str(__import__("os").getpid())).touch()  # ready
    while not Path(go).exists():
        time.sleep(0.005)
    result = Builder(Store(root), FakeRunner(Path(log))).build(BuildRequest(Path(ctx)))
    print(result.id, sum(not s.cached for s in result.steps))
    """
)

SLOW = "FROM base:1\nRUN sleep {} && echo one > /one\nCOPY app.py /\nRUN echo two > /two\n"


def _worker(store: Store, ctx: Path, log: Path, go: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            WORKER.format(repo=str(REPO)),
            str(store.root),
            str(ctx),
            str(log),
            str(go),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_two_processes_building_the_same_thing_build_it_once(
    store: Store, ctx: Path, tmp_path: Path
) -> None:
    (ctx / "Dockerfile").write_text(SLOW.format(1.0))
    log, go = tmp_path / "ran.log", tmp_path / "go"
    workers = [_worker(store, ctx, log, go) for _ in range(2)]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.*"))) < 2:  # both interpreters up and waiting
        assert time.monotonic() < deadline
        time.sleep(0.01)
    go.touch()  # the RUN sleeps 1 s: whichever process is second must wait for the first
    outputs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err for _, err in outputs]
    (id_a, ran_a), (id_b, ran_b) = (out.split() for out, _ in outputs)
    assert id_a == id_b
    assert int(ran_a) + int(ran_b) == 3  # each of the three steps ran in exactly one process
    ran = log.read_text().splitlines()
    assert len(ran) == 2, ran  # each RUN once, in whichever process got there first


def test_a_builder_killed_mid_step_leaves_no_poisoned_entry(
    store: Store, ctx: Path, tmp_path: Path
) -> None:
    (ctx / "Dockerfile").write_text(SLOW.format(60))
    log, go = tmp_path / "ran.log", tmp_path / "go"
    go.touch()
    worker = _worker(store, ctx, log, go)
    deadline = time.monotonic() + 60
    while not (log.exists() and log.read_text()):  # the RUN is running (and sleeping)
        assert time.monotonic() < deadline
        assert worker.poll() is None, worker.stderr
        time.sleep(0.02)
    worker.send_signal(signal.SIGKILL)
    worker.communicate(timeout=30)
    entries = store.root / "buildcache" / "entries"
    assert list(entries.iterdir()) == []  # the step it was running left nothing behind
    # the same build again: the step is a miss (no entry), its lock is free at once
    runner = FakeRunner(sleep=False)
    started = time.monotonic()
    result = Builder(store, runner).build(BuildRequest(ctx))
    assert time.monotonic() - started < 30
    assert runner.calls == 2
    assert not any(s.cached for s in result.steps)
    assert len(list(entries.iterdir())) == 3
    assert all(json.loads(p.read_bytes())["version"] == 1 for p in entries.iterdir())
