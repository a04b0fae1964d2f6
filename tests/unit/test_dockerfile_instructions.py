"""Typed instructions and stages: every instruction, its flags, and every error message."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_minidock.dockerfile.flags import (
    BindMount,
    CacheMount,
    SecretMount,
    SshMount,
    TmpfsMount,
    parse_flags,
    parse_mount,
    parse_ram_bytes,
)
from pytest_minidock.dockerfile.instructions import (
    Add,
    Arg,
    ArgDecl,
    Cmd,
    Copy,
    Entrypoint,
    Env,
    ExecForm,
    Expose,
    Healthcheck,
    Instruction,
    KeyValue,
    Label,
    Location,
    Maintainer,
    Onbuild,
    Run,
    Shell,
    ShellForm,
    SourceContent,
    StopSignal,
    User,
    Volume,
    Workdir,
)
from pytest_minidock.dockerfile.stages import Dockerfile, parse_dockerfile, read_dockerfile
from pytest_minidock.errors import DockerfileError, DockerfileSyntaxError, StageNotFound

if TYPE_CHECKING:
    from pathlib import Path


def one(line: str) -> Instruction:
    """The single instruction after ``FROM scratch``."""
    (instruction,) = parse_dockerfile(f"FROM scratch\n{line}\n").stages[0].instructions
    return instruction


def error(text: str, path: str = "Dockerfile") -> DockerfileSyntaxError:
    with pytest.raises(DockerfileSyntaxError) as info:
        parse_dockerfile(text, path)
    return info.value


# -- each instruction --------------------------------------------------------------------------


def test_from_with_name_and_platform() -> None:
    df = parse_dockerfile("FROM --platform=linux/arm64 golang:1.22 As Build\nfrom scratch\n")
    build, final = df.stages
    assert (build.name, build.index, build.base, build.platform) == (
        "build",
        0,
        "golang:1.22",
        "linux/arm64",
    )
    assert (final.name, final.index, final.base, final.platform) == (None, 1, "scratch", None)
    assert (build.display_name, final.display_name) == ("build", "stage-1")
    assert str(build.location) == "Dockerfile:1"


def test_arg_global_and_per_stage() -> None:
    df = parse_dockerfile('ARG A B=2\nARG C="x y"\nFROM a\nARG A D=\n')
    assert [a.args for a in df.global_args] == [
        (ArgDecl("A"), ArgDecl("B", "2")),
        (ArgDecl("C", '"x y"'),),
    ]
    (stage_arg,) = df.stages[0].instructions
    assert isinstance(stage_arg, Arg)
    assert stage_arg.args == (ArgDecl("A"), ArgDecl("D", ""))


def test_env_forms() -> None:
    assert one('ENV a=1 b="two words"') == Env(
        location=Location("Dockerfile", 2, 2, 'ENV a=1 b="two words"'),
        pairs=(KeyValue("a", "1"), KeyValue("b", '"two words"')),
    )
    legacy = one("ENV PATH /usr/local/bin:$PATH  now")
    assert isinstance(legacy, Env)
    assert legacy.legacy
    assert legacy.pairs == (KeyValue("PATH", "/usr/local/bin:$PATH  now"),)


def test_label_maintainer_workdir_user_stopsignal() -> None:
    label = one('LABEL org.opencontainers.image.title="x" version=1')
    assert isinstance(label, Label)
    assert label.pairs == (
        KeyValue("org.opencontainers.image.title", '"x"'),
        KeyValue("version", "1"),
    )
    assert one("LABEL maintainer me <me@x>") == Label(
        location=Location("Dockerfile", 2, 2, "LABEL maintainer me <me@x>"),
        pairs=(KeyValue("maintainer", "me <me@x>"),),
        legacy=True,
    )
    assert isinstance(one("MAINTAINER me <me@x>"), Maintainer)
    workdir = one("WORKDIR /app dir")
    assert isinstance(workdir, Workdir)
    assert workdir.path == "/app dir"
    user = one("USER app:app")
    assert isinstance(user, User)
    assert user.user == "app:app"
    signal = one("STOPSIGNAL SIGINT")
    assert isinstance(signal, StopSignal)
    assert signal.signal == "SIGINT"


def test_cmd_entrypoint_shell_forms() -> None:
    cmd = one('CMD ["redis-server", "--port", "6379"]')
    assert isinstance(cmd, Cmd)
    assert cmd.command == ExecForm(("redis-server", "--port", "6379"))
    shell_cmd = one("CMD echo $HOME")
    assert isinstance(shell_cmd, Cmd)
    assert shell_cmd.command == ShellForm("echo $HOME")
    empty = one("CMD")
    assert isinstance(empty, Cmd)
    assert empty.command == ShellForm("")
    reset = one("ENTRYPOINT []")
    assert isinstance(reset, Entrypoint)
    assert reset.command == ExecForm(())
    shell = one('SHELL ["/bin/bash", "-eo", "pipefail", "-c"]')
    assert isinstance(shell, Shell)
    assert shell.shell == ("/bin/bash", "-eo", "pipefail", "-c")


def test_expose_and_volume() -> None:
    expose = one("EXPOSE 80 443/udp ${PORT}")
    assert isinstance(expose, Expose)
    assert expose.ports == ("80", "443/udp", "${PORT}")
    assert one('VOLUME ["/data", "/logs"]') == Volume(
        location=Location("Dockerfile", 2, 2, 'VOLUME ["/data", "/logs"]'), paths=("/data", "/logs")
    )
    volume = one("VOLUME /a /b")
    assert isinstance(volume, Volume)
    assert volume.paths == ("/a", "/b")


def test_run_forms_and_flags() -> None:
    run = one("RUN --network=none --security=insecure make test")
    assert isinstance(run, Run)
    assert (run.command, run.network, run.security, run.mounts) == (
        ShellForm("make test"),
        "none",
        "insecure",
        (),
    )
    exec_run = one('RUN ["/bin/sh", "-c", "true"]')
    assert isinstance(exec_run, Run)
    assert exec_run.command == ExecForm(("/bin/sh", "-c", "true"))


def test_run_mounts_are_typed() -> None:
    run = one(
        "RUN --mount=type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0700,uid=1000 "
        "--mount=type=bind,source=src,target=/src,from=build,rw "
        "--mount=type=tmpfs,dst=/tmp,size=64m "
        "--mount=type=secret,id=npmrc,required,mode=0440 "
        "--mount=type=secret,id=aws,env=AWS_KEY "
        "--mount=type=ssh,required=true "
        "--mount=target=/ctx "
        "make"
    )
    assert isinstance(run, Run)
    cache, bind, tmpfs, secret, env_secret, ssh, default = run.mounts
    assert cache == CacheMount(
        target="/root/.cache",
        id="pip",
        sharing="locked",
        mode=0o700,
        uid=1000,
        spec="type=cache,target=/root/.cache,id=pip,sharing=locked,mode=0700,uid=1000",
    )
    assert bind == BindMount(
        target="/src",
        source="src",
        from_="build",
        readonly=False,
        spec="type=bind,source=src,target=/src,from=build,rw",
    )
    assert tmpfs == TmpfsMount(
        target="/tmp", size=64 * 1024 * 1024, spec="type=tmpfs,dst=/tmp,size=64m"
    )
    assert secret == SecretMount(
        id="npmrc",
        target="/run/secrets/npmrc",
        required=True,
        mode=0o440,
        spec="type=secret,id=npmrc,required,mode=0440",
    )
    assert (env_secret.target, env_secret.env) == (None, "AWS_KEY")  # type: ignore[union-attr]
    assert ssh == SshMount(required=True, spec="type=ssh,required=true")
    assert default == BindMount(target="/ctx", spec="target=/ctx")
    assert len(run.mount_specs) == 7


def test_mount_defaults() -> None:
    assert parse_mount("type=cache,target=/c") == CacheMount(
        target="/c", id="/c", spec="type=cache,target=/c"
    )
    assert parse_mount("type=secret,target=/run/x/token") == SecretMount(
        id="token", target="/run/x/token", spec="type=secret,target=/run/x/token"
    )
    assert parse_mount("type=secret,source=tok") == SecretMount(
        id="tok", target="/run/secrets/tok", spec="type=secret,source=tok"
    )
    assert parse_mount("TYPE=BIND,Target=/x,ro=false") == BindMount(
        target="/x", readonly=False, spec="TYPE=BIND,Target=/x,ro=false"
    )
    assert parse_mount('type=bind,"target=/a,b"') == BindMount(
        target="/a,b", spec='type=bind,"target=/a,b"'
    )
    assert parse_mount('type=bind,"target=/a""b"') == BindMount(
        target='/a"b', spec='type=bind,"target=/a""b"'
    )


def test_mount_values_with_variables_wait_for_expansion() -> None:
    mount = parse_mount("type=cache,target=$DIR,mode=$MODE,id=${ID}")
    assert mount == CacheMount(
        target="$DIR", id="${ID}", spec="type=cache,target=$DIR,mode=$MODE,id=${ID}"
    )
    assert parse_mount("type=$KIND,target=/x") is None
    values = {"$KIND": "tmpfs", "$DIR": "/t"}
    expanded = parse_mount("type=$KIND,target=$DIR", values.__getitem__)
    assert expanded == TmpfsMount(target="/t", spec="type=$KIND,target=$DIR")


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("", "empty --mount"),
        ('type=bind,tar"get=/x', 'bare " in a field'),
        ('type=bind,"target=/x', "unterminated quoted field"),
        ('type=bind,"target=/x"y', 'extraneous or missing "'),
        ("type=cahce,target=/x", "unsupported mount type 'cahce' (did you mean 'cache'?)"),
        ("type=bind", "bind mount has no target"),
        ("type=tmpfs", "tmpfs mount has no target"),
        ("type=bind,target=/x,uid=0", "uid is not allowed for 'bind' mounts"),
        ("type=tmpfs,target=/x,gid=0", "gid is not allowed for 'tmpfs' mounts"),
        ("type=tmpfs,target=/x,size=1q", "invalid --mount size='1q'"),
        ("type=bind,target=/x,size=1m", "unexpected key 'size' for mount type 'bind'"),
        ("type=ssh,required=maybe", "invalid --mount required='maybe'"),
        ("type=secret,id=a,sharing=shared", "sharing= is only for cache mounts"),
        ("type=cache,target=/x,sharing=no", "unsupported sharing value 'no'"),
        ("type=cache,target=/x,mode=0999", "invalid --mount mode='0999'"),
        ("type=cache,target=/x,gid=-1", "invalid --mount gid='-1'"),
        ("type=secret", "secret mount needs id="),
        ("type=secret,id=a,from=b", "secret mount should not have a from="),
        ("type=secret,id=a,src=b", "secret mount has both source= and id="),
        ("type=bind,target=/x,readonly=2", "invalid --mount readonly='2'"),
        ("type=bind,target=/x,bogus=1", "unexpected key 'bogus'"),
        ("type=bind,target=/x,rwx", "invalid --mount field 'rwx': it must be a key=value pair"),
        ("type=bind,target=/x,required", "unexpected key 'required' for mount type 'bind'"),
        ("type=bind,target=/x,env=A", "unexpected key 'env' for mount type 'bind'"),
        ("type=bind,target=/x,from=$S", "from= doesn't support variable expansion"),
    ],
)
def test_mount_errors(spec: str, problem: str) -> None:
    with pytest.raises(DockerfileSyntaxError) as info:
        parse_mount(spec)
    assert problem in info.value.problem


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512", 512),
        ("1k", 1024),
        ("64m", 64 << 20),
        ("1.5g", 3 << 29),
        ("2 GiB", 2 << 30),
        ("x", None),
        ("1.2.3m", None),
    ],
)
def test_ram_sizes(text: str, size: int | None) -> None:
    assert parse_ram_bytes(text) == size


def test_run_heredoc_scripts() -> None:
    text = "FROM a\nRUN <<EOF\n\techo hi\nEOF\nRUN <<-EOF\n\techo hi\n\tEOF\n"
    text += "RUN python3 <<EOF\nprint(1)\nEOF\n"
    text += 'RUN <<EOF\n#!/usr/bin/env python3\nprint(2)\nEOF\nRUN echo plain\nRUN ["true"]\n'
    runs = parse_dockerfile(text).stages[0].instructions
    scripts = [r.shell_script() for r in runs if isinstance(r, Run)]
    assert scripts == [
        "\techo hi\n",
        "echo hi\n",
        "python3 <<EOF\nprint(1)\nEOF",
        "#!/usr/bin/env python3\nprint(2)\n",
        "echo plain",
        None,
    ]
    shebangs = [r.shebang_heredoc() for r in runs if isinstance(r, Run)]
    assert [h.name if h else None for h in shebangs] == [None, None, None, "EOF", None, None]


def test_copy_and_add_flags() -> None:
    copy = one(
        "COPY --from=build --chown=app:app --chmod=0755 --link --parents --exclude=*.md "
        "--exclude=tests a b /dst/"
    )
    assert copy == Copy(
        location=copy.location,
        sources=("a", "b"),
        dest="/dst/",
        from_="build",
        chown="app:app",
        chmod="0755",
        link=True,
        parents=True,
        excludes=("*.md", "tests"),
    )
    add = one(
        "ADD --keep-git-dir=true --checksum=sha256:abc --link=false --exclude=x "
        "https://example.com/a.tgz /a"
    )
    assert add == Add(
        location=add.location,
        sources=("https://example.com/a.tgz",),
        dest="/a",
        keep_git_dir=True,
        checksum="sha256:abc",
        link=False,
        excludes=("x",),
    )
    json_copy = one('COPY ["a b", "/c d/"]')
    assert isinstance(json_copy, Copy)
    assert (json_copy.sources, json_copy.dest) == (("a b",), "/c d/")


def test_copy_heredoc_sources() -> None:
    text = "FROM a\nCOPY <<one.txt <<-'two.sh' plain /dst/\n1 $X\none.txt\n\techo $Y\n\ttwo.sh\n"
    (copy,) = parse_dockerfile(text).stages[0].instructions
    assert isinstance(copy, Copy)
    assert copy.sources == ("plain",)
    assert copy.contents == (
        SourceContent("one.txt", "1 $X\n", expand=True),
        SourceContent("two.sh", "echo $Y\n", expand=False),
    )
    assert (copy.location.line, copy.location.end_line) == (2, 6)


def test_flag_parsing_rules() -> None:
    accepted = {"link": "bool", "from": "string", "exclude": "strings"}
    assert parse_flags("COPY", ("--link",), accepted) == {"link": True}  # type: ignore[arg-type]
    assert parse_flags("COPY", ("--link=TRUE",), accepted) == {"link": True}  # type: ignore[arg-type]
    assert parse_flags("COPY", ("--link=false",), accepted) == {"link": False}  # type: ignore[arg-type]
    assert parse_flags("COPY", ("--from=",), accepted) == {"from": ""}  # type: ignore[arg-type]
    assert parse_flags("COPY", ("--exclude=a", "--exclude=b"), accepted) == {  # type: ignore[arg-type]
        "exclude": ("a", "b")
    }


def test_onbuild_parses_its_trigger() -> None:
    onbuild = one("ONBUILD COPY --chown=a . /app")
    assert isinstance(onbuild, Onbuild)
    assert onbuild.expression == "COPY --chown=a . /app"
    assert isinstance(onbuild.trigger, Copy)
    assert onbuild.trigger.chown == "a"
    (heredoc,) = (
        parse_dockerfile("FROM a\n  onbuild RUN <<EOF\necho hi\nEOF\n").stages[0].instructions
    )
    assert isinstance(heredoc, Onbuild)
    assert heredoc.expression == "RUN <<EOF\necho hi\nEOF"
    assert isinstance(heredoc.trigger, Run)
    assert heredoc.trigger.heredocs[0].content == "echo hi\n"


def test_healthcheck() -> None:
    assert one("HEALTHCHECK NONE") == Healthcheck(
        location=Location("Dockerfile", 2, 2, "HEALTHCHECK NONE"), test=("NONE",)
    )
    check = one(
        "HEALTHCHECK --interval=30s --timeout=3s --start-period=1m --start-interval=500ms "
        "--retries=3 CMD curl -f http://localhost/ || exit 1"
    )
    assert isinstance(check, Healthcheck)
    assert check.test == ("CMD-SHELL", "curl -f http://localhost/ || exit 1")
    assert (check.interval, check.timeout, check.start_period, check.start_interval) == (
        30_000_000_000,
        3_000_000_000,
        60_000_000_000,
        500_000_000,
    )
    assert check.retries == 3
    exec_check = one('HEALTHCHECK --interval=0s --retries=0 cmd ["pg_isready", "-q"]')
    assert isinstance(exec_check, Healthcheck)
    assert exec_check.test == ("CMD", "pg_isready", "-q")
    assert (exec_check.interval, exec_check.retries) == (0, 0)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("RUNN echo", "unknown instruction 'RUNN' (did you mean 'RUN'?)"),
        ("COPPY a b", "unknown instruction 'COPPY' (did you mean 'COPY'?)"),
        ("FROBNICATE x", "unknown instruction 'FROBNICATE'; the instructions are ADD, ARG,"),
        ("COPY --form=x a b", "unknown flag --form for COPY (did you mean --from?); COPY accepts"),
        ("ADD --parents a b", "unknown flag --parents for ADD"),
        ("ENV --x=1 a=b", "unknown flag --x: ENV takes no flags"),
        ("STOPSIGNAL --x 9", "unknown flag --x: STOPSIGNAL takes no flags"),
        ("COPY --chown a b", "flag --chown needs a value: write --chown=VALUE"),
        ("COPY --link= a b", "flag --link needs a value after '='"),
        ("COPY --link=yes a b", "flag --link expects true or false, not 'yes'"),
        ("COPY --from=a --from=b a b", "flag --from is given twice; give it once"),
        ("COPY a", "COPY requires at least two arguments"),
        ("ADD a", "ADD requires at least two arguments"),
        ("RUN", "RUN needs a command"),
        ("RUN --network=hots true", "unsupported network mode 'hots' (did you mean 'host'?)"),
        ("RUN --security=insecur true", "unsupported security mode 'insecur'"),
        ("RUN --mount=type=cahce,target=/x true", "unsupported mount type 'cahce'"),
        ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
        ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
        (
            "HEALTHCHECK --interval=5s NONE",
            "unknown flag --interval: HEALTHCHECK NONE takes no flags",
        ),
        ("HEALTHCHECK CONNECT TCP 7000", "unknown type 'CONNECT' in HEALTHCHECK"),
        ("HEALTHCHECK CMD", "missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK CMD []", "missing command after HEALTHCHECK CMD"),
        ("HEALTHCHECK --interval=5 CMD x", "invalid --interval duration '5'"),
        ("HEALTHCHECK --start-period=1d CMD x", "invalid --start-period duration '1d'"),
        ("HEALTHCHECK --timeout=10us CMD x", "--timeout=10us is shorter than the minimum of 1ms"),
        ("HEALTHCHECK --interval=-1s CMD x", "--interval=-1s is shorter than the minimum of 1ms"),
        ("HEALTHCHECK --retries=-1 CMD x", "--retries cannot be negative (-1)"),
        ("HEALTHCHECK --retries=x CMD x", "invalid --retries 'x'"),
        ("HEALTHCHECK --retries=99999999999 CMD x", "invalid --retries '99999999999'"),
        ("HEALTHCHECK --bogus=1 CMD x", "unknown flag --bogus for HEALTHCHECK"),
        ("ONBUILD", "ONBUILD requires at least one argument"),
        ("ONBUILD ONBUILD RUN x", "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed"),
        ("ONBUILD FROM b", "FROM isn't allowed as an ONBUILD trigger"),
        ("ONBUILD maintainer me", "MAINTAINER isn't allowed as an ONBUILD trigger"),
        ("ONBUILD RUNN x", "unknown instruction 'RUNN'"),
        ("ONBUILD --x RUN y", "unknown flag --x: ONBUILD takes no flags"),
        ("ARG", "ARG requires at least one argument"),
        ("ARG =x", "ARG names can not be blank in '=x'"),
        ("ENV", "ENV requires at least one argument"),
        ("ENV =x", "ENV names can not be blank"),
        ("LABEL", "LABEL requires at least one argument"),
        ("ENV PATH", "ENV must have two arguments"),
        ("ENV a=1 b", "ENV syntax error: can't find '=' in 'b'"),
        ("MAINTAINER", "MAINTAINER requires exactly one argument"),
        ("WORKDIR", "WORKDIR requires exactly one argument"),
        ("USER", "USER requires exactly one argument"),
        ("STOPSIGNAL", "STOPSIGNAL requires exactly one argument"),
        ("SHELL", "SHELL requires at least one argument"),
        ("SHELL []", "SHELL requires at least one argument"),
        ("SHELL /bin/bash -c", "SHELL requires the arguments to be in JSON form"),
        ("EXPOSE", "EXPOSE requires at least one argument"),
        ("VOLUME", "VOLUME requires at least one argument"),
        ('VOLUME [" "]', "VOLUME specified can not be an empty string"),
        ('CMD ["a", 1]', "when using JSON array syntax, arrays must be comprised of strings"),
        ("FROM", "FROM requires either one or three arguments"),
        ("FROM a b", "FROM requires either one or three arguments"),
        ("FROM a AS b c", "FROM requires either one or three arguments"),
        ("FROM a AS 1x", "invalid name for build stage: '1x'"),
        ("FROM a AS b!", "invalid name for build stage: 'b!'"),
        ("FROM --plat=x a", "unknown flag --plat for FROM (did you mean --platform?)"),
    ],
)
def test_error_messages_name_file_line_and_text(line: str, problem: str) -> None:
    exc = error(f"# a comment\nFROM scratch\n{line}\n", "app/Dockerfile")
    assert isinstance(exc, DockerfileError)
    assert exc.problem.startswith(problem), exc.problem
    assert (exc.path, exc.line) == ("app/Dockerfile", 3)
    assert str(exc) == f"app/Dockerfile:3: {exc.problem} | {line}"


def test_heredoc_destination_is_refused() -> None:
    exc = error("FROM a\nCOPY a <<EOF\nEOF\n")
    assert str(exc) == "Dockerfile:2: COPY cannot accept a heredoc as a destination | COPY a <<EOF"


def test_error_in_a_continued_instruction_shows_the_joined_line() -> None:
    exc = error("FROM a\nRUN \\\n  --netwrk=none \\\n  true\n")
    assert (exc.line, exc.end_line) == (2, 4)
    assert str(exc).endswith("| RUN   --netwrk=none   true")


def test_only_arg_may_come_before_from() -> None:
    exc = error("ARG a\nENV b=c\nFROM x\n")
    assert str(exc) == (
        "Dockerfile:2: ENV before the first FROM: only ARG may come before FROM; start the stage "
        "with a FROM line | ENV b=c"
    )
    assert "has no FROM" in error("ARG a\n").problem


def test_duplicate_stage_names() -> None:
    exc = error("FROM a AS x\nRUN true\nFROM b AS X\n")
    assert str(exc) == (
        "Dockerfile:3: duplicate stage name 'x': stage 0 (Dockerfile:1) already uses it; give each "
        "stage its own name | FROM b AS X"
    )


# -- stages ------------------------------------------------------------------------------------


def test_stage_lookup() -> None:
    df = parse_dockerfile("FROM a AS base\nRUN one\nFROM base AS Test\nRUN two\nFROM scratch\n")
    assert [s.name for s in df.stages] == ["base", "test", None]
    assert df.stage("BASE") is df.stages[0]
    assert df.stage("test").instructions[0] == df.stages[1].instructions[0]
    assert df.stage(2) is df.stages[2]
    assert df.stage("1") is df.stages[1]
    assert df.target is df.stages[2]
    assert df.find_stage("nope") is None
    assert df.find_stage(7) is None
    with pytest.raises(StageNotFound) as info:
        df.stage("tests")
    assert str(info.value) == (
        "Dockerfile: no build stage with name 'tests'; the named stages are base, test, and the "
        "indexes are 0 to 2"
    )
    assert isinstance(info.value, LookupError)
    with pytest.raises(StageNotFound, match="no build stage with index 3"):
        df.stage(3)


def test_stage_not_found_without_names() -> None:
    with pytest.raises(StageNotFound, match="no stage has a name"):
        parse_dockerfile("FROM a\n").stage("x")


def test_dockerfile_keeps_directives_escape_and_warnings() -> None:
    df = parse_dockerfile("# syntax=docker/dockerfile:1\n# escape=`\nFROM a\nRUN a `\n\n b\n")
    assert isinstance(df, Dockerfile)
    assert df.escape == "`"
    assert [d.name for d in df.directives] == ["syntax", "escape"]
    assert len(df.warnings) == 1


def test_read_dockerfile(tmp_path: Path) -> None:
    path = tmp_path / "Dockerfile"
    path.write_text('FROM busybox\nCMD ["sh"]\n')
    df = read_dockerfile(path)
    assert df.path == str(path)
    assert df.stages[0].base == "busybox"
    with pytest.raises(DockerfileError, match="cannot read Dockerfile"):
        read_dockerfile(tmp_path / "missing")
    path.write_text("FROM busybox\nRUNN x\n")
    with pytest.raises(DockerfileSyntaxError, match=rf"^{path}:2: unknown instruction"):
        read_dockerfile(path)


_WORD = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_./", min_size=1, max_size=12)


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), _WORD), min_size=1, max_size=6))
def test_env_pairs_round_trip(pairs: list[tuple[str, str]]) -> None:
    line = "ENV " + " ".join(f"{k}={v}" for k, v in pairs)
    env = one(line)
    assert isinstance(env, Env)
    assert env.pairs == tuple(KeyValue(k, v) for k, v in pairs)
