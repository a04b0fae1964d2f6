"""The Dockerfile builder end to end as root: RUN steps in real containers on busybox, the
result run with ``Engine.run``, the cache across builds, failures that leave nothing behind,
and ``minidock build`` as a process (issue 5)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pytest_minidock.api import Engine
from pytest_minidock.build.progress import BuildEvent, PlainProgress
from pytest_minidock.errors import BuildStepFailed
from pytest_minidock.runtime.logs import read_logs
from pytest_minidock.spec import Overrides
from tests.conftest import ROOTLESS, make_busybox_root

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pytest_minidock.build.builder import BuildResult

pytestmark = [pytest.mark.privileged, pytest.mark.rootless]


@pytest.fixture(scope="session")
def build_root(tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path) -> Path:
    """A store holding busybox:latest, shared by the build tests."""
    return make_busybox_root(tmp_path_factory.mktemp("build-root"), busybox_rootfs)


@pytest.fixture
def engine(build_root: Path) -> Iterator[Engine]:
    eng = Engine(build_root)
    before = {r.id for r in eng.runtime.state.all()}
    yield eng
    for record in eng.runtime.state.all():
        if record.id not in before:
            eng.remove(record.id, force=True)
    assert str(build_root) not in Path("/proc/self/mountinfo").read_text()


@pytest.fixture
def ctx(tmp_path: Path) -> Path:
    root = tmp_path / "ctx"
    root.mkdir()
    return root


def write(ctx: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = ctx / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


def run(engine: Engine, image: str, *command: str, **overrides: Any) -> tuple[int, str]:
    """Run a container of ``image`` to its end: exit code and output."""
    started = engine.run(image, Overrides(command=tuple(command) or None, **overrides))
    try:
        code = engine.wait(started.id, timeout=30)
        records = read_logs(engine.container(started.id).dir / "log")
        return code, b"".join(r.data for r in records).decode()
    finally:
        engine.remove(started.id, force=True)


class Spy:
    """Counts the containers the engine's runtime creates."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.created = 0
        original = engine.runtime.create

        def create(*args: Any, **kwargs: Any) -> Any:
            self.created += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(engine.runtime, "create", create)


MULTI_STAGE = {
    "Dockerfile": """\
        # syntax=docker/dockerfile:1
        ARG BASE=busybox
        FROM ${BASE} AS build
        ARG VERSION=1.2.3
        WORKDIR /src
        COPY app.sh .
        RUN <<EOF
        set -e
        mkdir -p /out
        sed "s/@VERSION@/$VERSION/" app.sh > /out/app
        chmod 755 /out/app
        EOF

        FROM busybox
        LABEL org.opencontainers.image.title=demo
        ENV GREETING=hello APP_HOME=/srv/app
        WORKDIR $APP_HOME
        COPY --from=build /out/app /usr/local/bin/app
        COPY --chown=nobody:nogroup data/ data/
        RUN echo "built in $(pwd) as $(id -u)" > /srv/app/built.txt
        EXPOSE 8080
        HEALTHCHECK --interval=30s CMD ["true"]
        STOPSIGNAL SIGTERM
        USER nobody
        ENTRYPOINT ["app"]
        CMD ["world"]
        """,
    "app.sh": """\
        #!/bin/sh
        echo "$GREETING $1 v@VERSION@ uid=$(id -u) pwd=$(pwd)"
        cat data/x.txt built.txt
        """,
    "data/x.txt": "data file\n",
    "build.log": "ignored\n",
    ".dockerignore": "*.log\n",
}


def test_a_multi_stage_dockerfile_builds_and_runs(engine: Engine, ctx: Path) -> None:
    write(ctx, MULTI_STAGE)
    result = engine.build(ctx, tags=["demo:1"], buildargs={"VERSION": "2.0"})
    record = engine.store.resolve("demo:1")
    assert record.id == result.id
    cc = engine.store.image("demo:1").config().config
    assert cc.entrypoint == ("app",)
    assert cc.cmd == ("world",)
    assert cc.user == "nobody"
    assert cc.working_dir == "/srv/app"
    assert cc.exposed_ports == ("8080/tcp",)
    assert cc.labels == {"org.opencontainers.image.title": "demo"}
    assert "GREETING=hello" in cc.env
    assert cc.healthcheck is not None
    assert cc.healthcheck.test == ("CMD", "true")
    assert cc.stop_signal == "SIGTERM"
    code, out = run(engine, "demo:1")
    assert code == 0
    assert out == "hello world v2.0 uid=65534 pwd=/srv/app\ndata file\nbuilt in /srv/app as 0\n"
    assert run(engine, "demo:1", "there")[1].startswith("hello there v2.0")
    code, out = run(engine, "demo:1", "-c", "ls -ln data; ls /srv/app", entrypoint=("sh",))
    if not ROOTLESS:  # (rootless, the store unpacks layers as the user: owners are lost)
        assert " 65534 " in out.splitlines()[1]  # --chown
    assert "build.log" not in out


def test_an_unchanged_rebuild_is_all_cache_hits_and_runs_no_container(
    engine: Engine, ctx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(ctx, MULTI_STAGE)
    first = engine.build(ctx, tags=["demo:2"])
    spy = Spy(engine, monkeypatch)
    events: list[BuildEvent] = []
    again = engine.build(ctx, tags=["demo:2"], progress=events.append)
    assert again.id == first.id
    assert again.executed == ()
    assert {e.kind for e in events} == {"cached", "info"}
    fresh = Engine(engine.root)  # another process, as far as caches go
    monkeypatch.setattr(fresh.runtime, "create", engine.runtime.create)
    assert fresh.build(ctx, tags=["demo:2"]).id == first.id
    assert spy.created == 0


def _executed(result: BuildResult) -> list[str]:
    return [s.name.split("] ", 1)[1] for s in result.steps if not s.cached]


def test_a_change_to_one_copy_source_rebuilds_from_that_step_on(
    engine: Engine, ctx: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        ctx,
        {
            "Dockerfile": """\
                FROM busybox
                WORKDIR /app
                COPY a.txt .
                RUN cat a.txt > a.copy
                COPY b.txt .
                RUN cat a.txt b.txt > all.txt
                CMD ["cat", "all.txt"]
                """,
            "a.txt": "a1\n",
            "b.txt": "b1\n",
        },
    )
    engine.build(ctx, tags=["steps:1"])
    spy = Spy(engine, monkeypatch)
    (ctx / "b.txt").write_text("b2\n")
    result = engine.build(ctx, tags=["steps:1"])
    assert _executed(result) == [
        "COPY b.txt .",
        "RUN cat a.txt b.txt > all.txt",
        'CMD ["cat", "all.txt"]',
    ]
    assert spy.created == 1
    assert run(engine, "steps:1") == (0, "a1\nb2\n")


def test_run_mounts_cache_secret_bind_tmpfs(engine: Engine, ctx: Path, tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("s3cr3t")
    write(
        ctx,
        {
            "Dockerfile": """\
                FROM busybox
                RUN --mount=type=cache,target=/var/cache/demo,id=demo-cache \\
                    echo run >> /var/cache/demo/log && wc -l < /var/cache/demo/log > /runs
                RUN --mount=type=secret,id=token \\
                    --mount=type=bind,source=conf,target=/mnt/conf \\
                    --mount=type=tmpfs,target=/scratch \\
                    test "$(cat /run/secrets/token)" = s3cr3t && touch /scratch/x \\
                    && cat /mnt/conf/a.ini > /a.copy && ! touch /mnt/conf/new 2>/dev/null
                """,
            "conf/a.ini": "a=1\n",
        },
    )
    engine.build(ctx, tags=["mounts:1"], secrets={"token": str(secret)})
    assert run(engine, "mounts:1", "cat", "/runs")[1].strip() == "1"
    engine.build(ctx, tags=["mounts:1"], secrets={"token": str(secret)}, no_cache=True)
    assert run(engine, "mounts:1", "cat", "/runs")[1].strip() == "2"  # the cache mount persisted
    paths = "/var/cache/demo /scratch /run/secrets/token /run/secrets /mnt/conf /mnt"
    code, out = run(
        engine,
        "mounts:1",
        "sh",
        "-c",
        f"cat /a.copy; for p in {paths}; do test -e $p && echo left: $p; done; true",
    )
    assert (code, out) == (0, "a=1\n")  # no mount, nor a directory made for one, was committed
    assert not (ctx / "conf" / "new").exists()


def test_add_unpacks_a_tar_as_root_with_its_owners(engine: Engine, ctx: Path) -> None:
    with tarfile.open(ctx / "bundle.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("pkg/owned.txt")
        info.size = 3
        info.uid, info.gid = 1234, 5678
        tar.addfile(info, io.BytesIO(b"hi\n"))
    write(ctx, {"Dockerfile": "FROM busybox\nADD bundle.tar.gz /opt/\n"})
    engine.build(ctx, tags=["add:1"])
    out = run(engine, "add:1", "sh", "-c", "stat -c '%u:%g %n' /opt/pkg/owned.txt")
    assert out == (0, "1234:5678 /opt/pkg/owned.txt\n")


def test_a_failing_run_names_file_line_and_exit_code_and_leaves_nothing_behind(
    engine: Engine, ctx: Path
) -> None:
    write(
        ctx,
        {
            "Dockerfile": """\
                FROM busybox
                RUN echo fine > /fine
                RUN --mount=type=cache,target=/c echo about to fail; echo on stderr >&2; exit 7
                """,
        },
    )
    images = {r.id for r in engine.store.images()}
    containers = {r.id for r in engine.runtime.state.all()}
    out = io.StringIO()
    with pytest.raises(BuildStepFailed) as info:
        engine.build(ctx, tags=["broken:1"], progress=PlainProgress(out))
    failure = info.value
    assert (failure.path, failure.line, failure.exit_code) == (str(ctx / "Dockerfile"), 3, 7)
    assert failure.output == ("about to fail", "on stderr")
    assert f"{ctx / 'Dockerfile'}:3: RUN failed:" in str(failure)
    assert "exit code: 7" in str(failure)
    assert "ERROR: process" in out.getvalue()
    assert {r.id for r in engine.runtime.state.all()} == containers  # no temp container
    assert {r.id for r in engine.store.images()} == images  # no half image
    assert not any(p.name.startswith("build") for p in engine.store.paths.tmp.iterdir())
    assert str(engine.root) not in Path("/proc/self/mountinfo").read_text()
    # a missing command is a failed RUN too (docker: 127)
    write(ctx, {"Dockerfile": 'FROM busybox\nRUN ["/no/such/program"]\n'})
    with pytest.raises(BuildStepFailed) as missing:
        engine.build(ctx)
    assert missing.value.exit_code == 127
    assert missing.value.line == 2


def _cli(root: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MINIDOCK_ROOT"}
    return subprocess.run(
        [sys.executable, "-m", "pytest_minidock", "--root", str(root), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
        check=False,
    )


def test_minidock_build_through_the_cli(engine: Engine, ctx: Path) -> None:
    write(
        ctx,
        {
            "Dockerfile": """\
                FROM busybox
                ARG WHO=nobody
                COPY hello.txt /
                RUN echo "hello $WHO" >> /hello.txt
                CMD ["cat", "/hello.txt"]
                """,
            "hello.txt": "from the context\n",
        },
    )
    res = _cli(
        engine.root,
        "build",
        "-t",
        "x",
        "--build-arg",
        "WHO=cli",
        "--progress",
        "plain",
        ".",
        cwd=ctx,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == ""
    assert '#3 [stage-0 3/4] RUN echo "hello $WHO" >> /hello.txt' in res.stderr
    assert "writing image sha256:" in res.stderr
    assert run(engine, "x") == (0, "from the context\nhello cli\n")
    quiet = _cli(engine.root, "build", "-q", "-t", "x", "--build-arg", "WHO=cli", ".", cwd=ctx)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == str(engine.store.resolve("x").id)
    assert quiet.stderr == ""
    # -f is relative to the working directory; the library's dockerfile to the context
    write(ctx, {"dockerfiles/alt.Dockerfile": 'FROM busybox\nCMD ["echo", "alt"]\n'})
    alt = _cli(
        engine.root, "build", "-q", "-f", "ctx/dockerfiles/alt.Dockerfile", "ctx", cwd=ctx.parent
    )
    assert alt.returncode == 0, alt.stderr
    same = engine.build(ctx, dockerfile="dockerfiles/alt.Dockerfile")
    assert alt.stdout.strip() == str(same.id)
    failing = _cli(engine.root, "build", "-f", "missing.Dockerfile", ".", cwd=ctx)
    assert failing.returncode == 1
    assert "Error: cannot read Dockerfile 'missing.Dockerfile'" in failing.stderr
    prune = _cli(engine.root, "builder", "prune", "-a", "-f", cwd=ctx)
    assert prune.returncode == 0, prune.stderr
    assert "Total reclaimed space:" in prune.stdout
    again = _cli(engine.root, "build", "--progress", "plain", "-t", "x", ".", cwd=ctx)
    assert again.returncode == 0, again.stderr
    assert "CACHED" not in again.stderr  # pruned: everything ran again


@pytest.mark.netns
def test_run_steps_are_on_the_default_bridge_unless_told_otherwise(
    engine: Engine, ctx: Path
) -> None:
    """As docker's: RUN steps get the default bridge (outbound access for apt-get and pip);
    ``--network none`` leaves them only their loopback."""
    seen = {}
    for network in (None, "none"):
        write(
            ctx, {"Dockerfile": f"FROM busybox\nRUN echo {network} && cat /proc/net/dev > /nets\n"}
        )
        result = engine.build(ctx, tags=[f"nets:{network}"], network=network)
        code, out = run(engine, str(result.id), "cat", "/nets")
        assert code == 0
        seen[network] = {line.split(":")[0].strip() for line in out.splitlines() if ":" in line}
    assert seen[None] == {"lo", "eth0"}
    assert seen["none"] == {"lo"}
