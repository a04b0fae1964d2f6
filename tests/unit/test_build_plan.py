"""The pure build plan: a step's key changes exactly when one of its inputs changes (hypothesis),
and the config each instruction leaves (docker's rules), with docker's history wording."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from pytest_minidock.build.config import (
    apply_instruction,
    created_by,
    expose_ports,
    join_workdir,
    set_env,
)
from pytest_minidock.build.plan import (
    StepDefinition,
    base_key,
    canonical_instruction,
    plan_steps,
    step_key,
)
from pytest_minidock.digest import Digest
from pytest_minidock.dockerfile import expand_stage, parse_dockerfile
from pytest_minidock.image.model import ContainerConfig
from pytest_minidock.image.model import Healthcheck as ImageHealthcheck

names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_", min_size=1, max_size=8)
values = st.text(max_size=12)
pairs = st.dictionaries(names, values, max_size=4).map(lambda d: tuple(sorted(d.items())))
digests = st.binary(min_size=1, max_size=8).map(Digest.from_bytes)
inputs = st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=4).map(tuple)
definitions = st.builds(
    StepDefinition,
    instruction=st.text(max_size=30),
    args=pairs,
    inputs=inputs,
    independent=st.booleans(),
)


@given(digests, definitions)
def test_the_same_definition_on_the_same_parent_gives_the_same_keys(
    parent: Digest, step: StepDefinition
) -> None:
    assert step_key(parent, step) == step_key(parent, step)


@given(digests, digests, definitions)
def test_the_parent_counts_except_for_an_independent_layer(
    parent: Digest, other: Digest, step: StepDefinition
) -> None:
    assume(parent != other)
    a, b = step_key(parent, step), step_key(other, step)
    assert a.chain != b.chain  # what the next step builds on always depends on the parent
    if step.independent:  # COPY --link: the layer itself does not
        assert a.key == b.key
    else:
        assert a.key != b.key


@given(digests, definitions, st.text(max_size=30))
def test_the_instruction_counts(parent: Digest, step: StepDefinition, text: str) -> None:
    assume(text != step.instruction)
    changed = StepDefinition(text, step.args, step.inputs, step.independent)
    assert step_key(parent, step).key != step_key(parent, changed).key
    assert step_key(parent, step).chain != step_key(parent, changed).chain


@given(digests, definitions, names, values)
def test_each_build_arg_counts_by_name_and_value(
    parent: Digest, step: StepDefinition, name: str, value: str
) -> None:
    args = dict(step.args)
    assume(args.get(name) != value)
    args[name] = value
    changed = StepDefinition(step.instruction, tuple(args.items()), step.inputs, step.independent)
    assert step_key(parent, step).key != step_key(parent, changed).key


@given(digests, definitions)
def test_the_order_build_args_are_given_in_does_not_count(
    parent: Digest, step: StepDefinition
) -> None:
    reordered = StepDefinition(
        step.instruction, tuple(reversed(step.args)), step.inputs, step.independent
    )
    assert step_key(parent, step) == step_key(parent, reordered)


@given(digests, definitions, st.integers(min_value=0, max_value=3), st.text(max_size=10))
def test_each_input_digest_counts(
    parent: Digest, step: StepDefinition, where: int, digest: str
) -> None:
    items = list(step.inputs)
    if where < len(items):
        assume(items[where][1] != digest)
        items[where] = (items[where][0], digest)
    else:
        items.append(("context:new", digest))
    changed = StepDefinition(step.instruction, step.args, tuple(items), step.independent)
    assert step_key(parent, step).key != step_key(parent, changed).key


@given(digests, st.lists(definitions, min_size=2, max_size=5), st.data())
def test_a_changed_step_changes_its_key_and_every_later_one_but_no_earlier_one(
    start: Digest, steps: list[StepDefinition], data: st.DataObject
) -> None:
    i = data.draw(st.integers(min_value=0, max_value=len(steps) - 1))
    changed = list(steps)
    changed[i] = StepDefinition(
        steps[i].instruction + "!", steps[i].args, steps[i].inputs, steps[i].independent
    )
    before, after = plan_steps(start, steps), plan_steps(start, changed)
    assert before[:i] == after[:i]
    assert all(b.chain != a.chain for b, a in zip(before[i:], after[i:], strict=True))


@given(st.text(max_size=20), st.text(max_size=20), st.sampled_from(["linux/amd64", "linux/arm64"]))
def test_a_stage_starts_from_its_base_and_platform(a: str, b: str, platform: str) -> None:
    assume(a != b)
    assert base_key(a, platform) == base_key(a, platform)
    assert base_key(a, platform) != base_key(b, platform)
    assert base_key(a, "linux/amd64") != base_key(a, "linux/arm64")


# -- the instruction as written after expansion ------------------------------------------------


def _instructions(text: str) -> list[str]:
    df = parse_dockerfile("FROM scratch\n" + text)
    stage = expand_stage(df, 0, {"V": "1"})
    return [canonical_instruction(s.instruction) for s in stage.steps]


def test_where_an_instruction_is_does_not_count_what_it_says_does() -> None:
    (a,) = _instructions("COPY a /b\n")
    (b,) = _instructions("\n\n# moved down, with a comment\ncopy a /b\n")
    assert a == b
    (c,) = _instructions("COPY --chmod=600 a /b\n")
    (d,) = _instructions("COPY --chmod=644 a /b\n")
    assert len({a, c, d}) == 3
    # variables count after expansion: ${V} is 1 here
    assert _instructions("ARG V\nCOPY ${V} /b\n")[1] == _instructions("ARG V\nCOPY 1 /b\n")[1]
    run1, run2 = _instructions("RUN --mount=type=cache,target=/c make\nRUN make\n")
    assert run1 != run2


@pytest.mark.parametrize(
    "line",
    [
        "ENV A=1",
        "LABEL a=b",
        "WORKDIR /x",
        "USER nobody",
        'CMD ["a"]',
        "ENTRYPOINT a",
        'SHELL ["/bin/bash", "-c"]',
        "EXPOSE 80",
        "VOLUME /data",
        "HEALTHCHECK CMD true",
        "STOPSIGNAL SIGINT",
        "ONBUILD RUN true",
        "MAINTAINER me",
        "ARG X=1",
        "RUN true",
        "ADD a /b",
    ],
)
def test_every_instruction_has_a_canonical_text_naming_its_keyword(line: str) -> None:
    (text,) = _instructions(line + "\n")
    assert f'"keyword":"{line.split(maxsplit=1)[0]}"' in text
    assert "location" not in text


# -- config ------------------------------------------------------------------------------------


def _apply(lines: str, config: ContainerConfig | None = None) -> ContainerConfig:
    cc = config or ContainerConfig()
    cmd_set = False
    for step in expand_stage(parse_dockerfile("FROM scratch\n" + lines), 0).steps:
        cc, cmd_set, _ = apply_instruction(cc, step.instruction, cmd_set=cmd_set)
    return cc


def test_env_replaces_in_place_and_appends() -> None:
    assert set_env(("A=1", "B=2"), "A", "3") == ("A=3", "B=2")
    assert set_env(("A=1",), "C", "x=y") == ("A=1", "C=x=y")
    cc = _apply("ENV A=1 B=2\nENV A=3\n", ContainerConfig(env=("PATH=/bin",)))
    assert cc.env == ("PATH=/bin", "A=3", "B=2")


def test_workdir_is_relative_to_the_last_one() -> None:
    assert join_workdir("", "app") == "/app"
    assert join_workdir("/a", "b/../c/.") == "/a/c"
    assert join_workdir("/a", "/x//y/") == "/x/y"
    assert _apply("WORKDIR /srv\nWORKDIR app\n").working_dir == "/srv/app"


def test_cmd_and_entrypoint_use_shell_and_entrypoint_drops_an_inherited_cmd() -> None:
    base = ContainerConfig(cmd=("sh",))
    assert _apply("ENTRYPOINT ['x']\n", base).cmd is None
    assert _apply('ENTRYPOINT ["x"]\n', base).entrypoint == ("x",)
    cc = _apply('CMD ["a"]\nENTRYPOINT ["x"]\n', base)
    assert (cc.entrypoint, cc.cmd) == (("x",), ("a",))
    cc = _apply('SHELL ["/bin/bash", "-ec"]\nCMD echo hi\n')
    assert cc.cmd == ("/bin/bash", "-ec", "echo hi")
    assert _apply("ENTRYPOINT []\n", ContainerConfig(entrypoint=("x",))).entrypoint is None


def test_expose_volume_label_healthcheck_stopsignal_onbuild_user() -> None:
    cc = _apply(
        "EXPOSE 80 53/UDP 8000-8002\nVOLUME /data /logs\nLABEL a=b c=d\n"
        "HEALTHCHECK --interval=5s --retries=2 CMD wget -q localhost\nSTOPSIGNAL SIGINT\n"
        "ONBUILD COPY . /src\nUSER app:app\n"
    )
    assert cc.exposed_ports == ("53/udp", "80/tcp", "8000/tcp", "8001/tcp", "8002/tcp")
    assert cc.volumes == ("/data", "/logs")
    assert cc.labels == {"a": "b", "c": "d"}
    assert cc.healthcheck == ImageHealthcheck(
        ("CMD-SHELL", "wget -q localhost"), interval=5_000_000_000, retries=2
    )
    assert cc.stop_signal == "SIGINT"
    assert cc.on_build == ("COPY . /src",)
    assert cc.user == "app:app"
    assert _apply("HEALTHCHECK NONE\n", cc).healthcheck == ImageHealthcheck(("NONE",))


def test_expose_rejects_what_is_no_port() -> None:
    with pytest.raises(ValueError, match="invalid port 'http'"):
        expose_ports(("http",))
    with pytest.raises(ValueError, match="invalid protocol"):
        expose_ports(("80/xtp",))
    with pytest.raises(ValueError, match="1 to 65535"):
        expose_ports(("70000",))


def test_history_reads_like_dockers() -> None:
    steps = expand_stage(
        parse_dockerfile('FROM scratch\nARG V=1\nRUN echo $V\nRUN ["a", "b"]\nENV A=1\n'), 0
    ).steps
    arg, run, run_exec, env = (s.instruction for s in steps)
    assert created_by(arg) == "ARG V=1"
    assert created_by(run, args=steps[1].args) == "RUN |1 V=1 /bin/sh -c echo $V"
    assert created_by(run, shell=("/bin/bash", "-c")) == "RUN /bin/bash -c echo $V"
    assert created_by(run_exec) == "RUN a b"
    assert created_by(env) == "ENV A=1"
    (copy,) = expand_stage(parse_dockerfile("FROM scratch\nCOPY a /b\n"), 0).steps
    assert created_by(copy.instruction, content="file:abc") == "COPY file:abc in /b"
