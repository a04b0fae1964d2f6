"""``ContainerSpec`` and its parsers: docker's run-time rules as table tests, plus round trips."""

from __future__ import annotations

import functools
import io
import json
import os
import re
import signal
import stat
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_minidock.errors import StoreError, UsageError
from pytest_minidock.image.model import ContainerConfig, Healthcheck, ImageConfig
from pytest_minidock.spec import (
    DEFAULT_PATH,
    ContainerSpec,
    Mount,
    Overrides,
    ResolvedUser,
    _is_whiteout,
    lookup_in_layers,
    make_spec,
    merge_env,
    normalize_capability,
    parse_bind,
    parse_env,
    parse_env_file,
    parse_labels,
    parse_tmpfs,
    parse_user,
    resolve_user,
    signal_number,
    with_home,
)
from pytest_minidock.store.snapshots import ExtractPolicy, extract_layer
from tests.support.tars import Member, d, f, sym, tar_bytes

if TYPE_CHECKING:
    from pathlib import Path

IMAGE_ID = "sha256:" + "ab" * 32
HC = Healthcheck(("CMD", "true"), interval=5_000_000_000, retries=3)


def _image(**config: Any) -> ImageConfig:
    return ImageConfig(diff_ids=(), config=ContainerConfig(**config))


def _spec(config: ImageConfig | None = None, **overrides: Any) -> ContainerSpec:
    return make_spec(
        "img:1",
        IMAGE_ID,
        config or _image(cmd=("sh",)),
        Overrides(**overrides),
        default_hostname="c0ffee123456",
    )


# ---- ENTRYPOINT and CMD ------------------------------------------------------------------------

EP, CMD = ("/entry", "-x"), ("serve", "--port", "80")


@pytest.mark.parametrize(
    ("image_ep", "image_cmd", "entrypoint", "command", "argv"),
    [
        pytest.param(None, CMD, None, None, CMD, id="image CMD only"),
        pytest.param(EP, None, None, None, EP, id="image ENTRYPOINT only"),
        pytest.param(EP, CMD, None, None, (*EP, *CMD), id="ENTRYPOINT + CMD"),
        pytest.param(EP, CMD, None, ("a", "b"), (*EP, "a", "b"), id="command replaces CMD"),
        pytest.param(None, CMD, None, ("ls",), ("ls",), id="command without ENTRYPOINT"),
        pytest.param(EP, CMD, None, (), (*EP, *CMD), id="empty command keeps CMD"),
        pytest.param(EP, CMD, ("/bin/x",), None, ("/bin/x",), id="--entrypoint drops CMD"),
        pytest.param(EP, CMD, ("/bin/x",), ("a",), ("/bin/x", "a"), id="--entrypoint + command"),
        pytest.param(None, CMD, ("/bin/x",), None, ("/bin/x",), id="--entrypoint, image no EP"),
        pytest.param(EP, CMD, ("",), ("ls",), ("ls",), id="--entrypoint '' + command"),
        pytest.param(EP, CMD, (), ("ls",), ("ls",), id="--entrypoint () + command"),
        pytest.param(("",), CMD, None, None, CMD, id="image ENTRYPOINT [''] is reset"),
        pytest.param(
            None,
            ("/bin/sh", "-c", "echo hi"),
            None,
            None,
            ("/bin/sh", "-c", "echo hi"),
            id="shell-form CMD",
        ),
    ],
)
def test_entrypoint_and_cmd_combine_like_docker(
    image_ep: tuple[str, ...] | None,
    image_cmd: tuple[str, ...] | None,
    entrypoint: tuple[str, ...] | None,
    command: tuple[str, ...] | None,
    argv: tuple[str, ...],
) -> None:
    config = _image(entrypoint=image_ep, cmd=image_cmd)
    assert _spec(config, entrypoint=entrypoint, command=command).argv == argv


@pytest.mark.parametrize(
    ("image_ep", "image_cmd", "entrypoint", "command"),
    [
        pytest.param(None, None, None, None, id="image has neither"),
        pytest.param(None, (), None, (), id="empty lists"),
        pytest.param(EP, CMD, ("",), None, id="--entrypoint '' without command"),
        pytest.param(None, CMD, (), None, id="--entrypoint () without command"),
    ],
)
def test_no_command_is_a_usage_error(
    image_ep: tuple[str, ...] | None,
    image_cmd: tuple[str, ...] | None,
    entrypoint: tuple[str, ...] | None,
    command: tuple[str, ...] | None,
) -> None:
    with pytest.raises(UsageError, match=r"no command specified: image img:1"):
        _spec(_image(entrypoint=image_ep, cmd=image_cmd), entrypoint=entrypoint, command=command)


def test_nul_in_an_argument_is_refused() -> None:
    with pytest.raises(UsageError, match="NUL"):
        _spec(command=("echo", "a\0b"))


# ---- environment --------------------------------------------------------------------------------


def test_default_environment_is_path_then_hostname() -> None:
    assert _spec().env == (f"PATH={DEFAULT_PATH}", "HOSTNAME=c0ffee123456")
    assert _spec(tty=True).env[-1] == "TERM=xterm"
    assert _spec(hostname="db").env[1] == "HOSTNAME=db"


@pytest.mark.parametrize(
    ("image_env", "user_env", "expected"),
    [
        pytest.param(
            ("PATH=/app/bin",),
            (),
            ("PATH=/app/bin", "HOSTNAME=h"),
            id="image PATH replaces the default in place",
        ),
        pytest.param(
            ("A=1", "PATH=/x", "B=2"),
            ("B=3", "C=4"),
            ("PATH=/x", "HOSTNAME=h", "B=3", "C=4", "A=1"),
            id="-e first, then the image's variables -e does not name (docker's merge)",
        ),
        pytest.param(
            ("A=1",),
            ("A=2", "A=3"),
            ("PATH=" + DEFAULT_PATH, "HOSTNAME=h", "A=3"),
            id="the last -e wins, without duplicates",
        ),
        pytest.param(
            ("A=1", "B=2"),
            ("A",),
            ("PATH=" + DEFAULT_PATH, "HOSTNAME=h", "B=2"),
            id="bare -e (not in the host env) unsets the image's variable",
        ),
        pytest.param(
            (),
            ("PATH",),
            ("HOSTNAME=h",),
            id="bare -e PATH removes even the default",
        ),
        pytest.param(
            (),
            ("HOSTNAME=mine", "X="),
            ("PATH=" + DEFAULT_PATH, "HOSTNAME=mine", "X="),
            id="-e HOSTNAME replaces the generated one; empty values are kept",
        ),
    ],
)
def test_environment_precedence(
    image_env: tuple[str, ...], user_env: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    spec = _spec(_image(env=image_env, cmd=("sh",)), env=user_env, hostname="h")
    assert spec.env == expected


def test_invalid_environment_item_is_refused() -> None:
    with pytest.raises(UsageError, match="invalid environment variable: =oops"):
        _spec(env=("=oops",))


def test_parse_env_takes_bare_names_from_the_host() -> None:
    environ = {"HOSTVAR": "from host", "EMPTY": ""}
    assert parse_env(["A=1", "HOSTVAR", "EMPTY", "MISSING", "B=x=y"], environ) == (
        "A=1",
        "HOSTVAR=from host",
        "EMPTY=",
        "MISSING",  # stays bare: unsets MISSING in the container
        "B=x=y",
    )
    with pytest.raises(UsageError, match="invalid environment variable: =1"):
        parse_env(["=1"], environ)


def test_bare_env_missing_from_the_host_means_no_variable() -> None:
    env = parse_env(["FOO"], {})
    spec = _spec(_image(env=("FOO=image",), cmd=("sh",)), env=env)
    assert not any(e.startswith("FOO") for e in spec.env)


def test_env_file_like_docker() -> None:
    text = (
        "\ufeff# comment\n"
        "\n"
        "   \n"
        "PLAIN=value\n"
        'QUOTED="kept as is"\n'
        "SPACES=  around  \n"
        "  INDENTED=yes\n"
        "EMPTY=\n"
        "FROM_HOST\n"
        "NOT_SET\n"
        "CRLF=x\r\n"
        "EQ=a=b"
    )
    assert parse_env_file(text, "app.env", {"FROM_HOST": "h"}) == (
        "PLAIN=value",
        'QUOTED="kept as is"',
        "SPACES=  around  ",
        "INDENTED=yes",
        "EMPTY=",
        "FROM_HOST=h",
        "CRLF=x",
        "EQ=a=b",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("OK=1\nx y=2\n", r"app\.env:2: variable 'x y' contains whitespaces"),
        ("A=1\n\nTRAILING \n", r"app\.env:3: variable 'TRAILING ' contains whitespaces"),
        ("KEY\t=1", r"app\.env:1: variable 'KEY\t' contains whitespaces"),
        ("=value", r"app\.env:1: no variable name on line '=value'"),
    ],
)
def test_env_file_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_env_file(text, "app.env", {})


@pytest.mark.parametrize(
    ("base", "override", "expected"),
    [
        (("A=1", "B=2"), ("A=3",), ("A=3", "B=2")),
        (("A=1",), ("B=2", "A=3", "B=4"), ("A=3", "B=4")),
        (("A=1", "B=2"), ("A",), ("B=2",)),
        (("A=1", "B=2"), ("A", "A=5"), ("A=5", "B=2")),
        (("A=1",), ("X",), ("A=1",)),
        ((), ("K=v=w", "K="), ("K=",)),
    ],
)
def test_merge_env_table(
    base: tuple[str, ...], override: tuple[str, ...], expected: tuple[str, ...]
) -> None:
    assert merge_env(base, override) == expected


_env_items = st.builds(
    lambda k, v: k if v is None else f"{k}={v}",
    st.sampled_from("ABCDE"),
    st.none() | st.text(max_size=3),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_env_items, max_size=8), st.lists(_env_items, max_size=8))
def test_merge_env_later_wins_without_duplicates(base: list[str], override: list[str]) -> None:
    merged = merge_env(base, override)
    names = [e.partition("=")[0] for e in merged]
    assert len(names) == len(set(names))
    model: dict[str, str | None] = {}
    for item in [*base, *override]:
        key, eq, _ = item.partition("=")
        model[key] = item if eq else None
    assert merged == tuple(v for v in model.values() if v is not None)
    first_seen = list(dict.fromkeys(e.partition("=")[0] for e in [*base, *override]))
    assert names == [n for n in first_seen if n in names]


def test_with_home_sets_home_only_when_unset_or_empty() -> None:
    assert with_home(("A=1",), "/root") == ("A=1", "HOME=/root")
    assert with_home(("HOME=/mine", "A=1"), "/root") == ("HOME=/mine", "A=1")
    assert with_home(("HOME=", "A=1"), "/root") == ("HOME=/root", "A=1")


# ---- working directory, user, hostname, network --------------------------------------------------


@pytest.mark.parametrize(
    ("image_dir", "requested", "expected"),
    [
        ("", None, "/"),
        ("/srv/app", None, "/srv/app"),
        ("/srv/app", "", "/srv/app"),
        ("/srv/app", "/tmp//x/../y/", "/tmp/y"),
        ("app", None, "/app"),
    ],
)
def test_workdir(image_dir: str, requested: str | None, expected: str) -> None:
    assert _spec(_image(working_dir=image_dir, cmd=("sh",)), workdir=requested).workdir == expected


def test_relative_workdir_is_refused() -> None:
    with pytest.raises(UsageError, match="the working directory 'rel' is invalid"):
        _spec(workdir="rel")


def test_user_comes_from_the_image_unless_overridden() -> None:
    config = _image(user="app", cmd=("sh",))
    assert _spec(config).user == "app"
    assert _spec(config, user="0:0").user == "0:0"
    assert _spec(config, user="").user == "app"
    assert _spec().user == ""
    with pytest.raises(UsageError, match="invalid user 'a:b:c'"):
        _spec(user="a:b:c")


def test_hostname_rules() -> None:
    assert _spec().hostname == "c0ffee123456"
    assert _spec(hostname="db").hostname == "db"
    with pytest.raises(UsageError, match="longer than 64"):
        _spec(hostname="h" * 65)
    with pytest.raises(UsageError, match="invalid hostname 'a b'"):
        _spec(hostname="a b")
    with pytest.raises(UsageError, match="conflicting options: hostname 'db'"):
        _spec(hostname="db", network="host")
    assert _spec(network="host").hostname == "c0ffee123456"


@pytest.mark.parametrize("network", ["default", "none", "host", "bridge", "my-net", "n1.x_y"])
def test_valid_networks(network: str) -> None:
    assert _spec(network=network).network == network


@pytest.mark.parametrize(
    ("network", "message"),
    [
        ("container:abc", "not supported"),
        ("-bad", "invalid network name '-bad'"),
        ("a b", "invalid network name 'a b'"),
        ("", "invalid network name ''"),
    ],
)
def test_invalid_networks(network: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        _spec(network=network)


# ---- mounts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "mount"),
    [
        ("/host:/ctr", Mount("bind", "/ctr", "/host")),
        ("/host:/ctr:ro", Mount("bind", "/ctr", "/host", readonly=True)),
        ("/host:/ctr:rw", Mount("bind", "/ctr", "/host")),
        ("/host/:/ctr/sub/../x/", Mount("bind", "/ctr/x", "/host")),
        ("/:/host-root:ro,Z", Mount("bind", "/host-root", "/", readonly=True)),
        ("/h:/c:z,cached,rprivate", Mount("bind", "/c", "/h")),
        ("/h:/c:delegated,ro", Mount("bind", "/c", "/h", readonly=True)),
        ("data:/var/lib/db", Mount("volume", "/var/lib/db", "data")),
        ("my_vol.1-x:/d:ro", Mount("volume", "/d", "my_vol.1-x", readonly=True)),
        ("data:/d:nocopy", Mount("volume", "/d", "data", options="nocopy")),
        ("/anon", Mount("volume", "/anon")),
        ("/anon/", Mount("volume", "/anon")),
        ("/h:/c:", Mount("bind", "/c", "/h")),  # an empty mode is docker's default
    ],
)
def test_parse_bind(spec: str, mount: Mount) -> None:
    assert parse_bind(spec) == mount


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", r"invalid volume specification: ''$"),
        (":/ctr", r"invalid volume specification: ':/ctr'$"),
        ("/ctr:ro", r"invalid volume specification: '/ctr:ro'$"),
        ("/ctr:", r"invalid volume specification: '/ctr:'$"),
        ("/a:/b:ro:x", r"invalid volume specification: '/a:/b:ro:x'$"),
        ("/a:/b:rx", "invalid mode: rx"),
        ("/a:/b:ro,rw", "invalid mode: ro,rw"),
        ("/a:/b:z,Z", "invalid mode: z,Z"),
        ("/a:/", "destination can't be '/'"),
        ("/a:/b/..", "destination can't be '/'"),
        ("/a:rel", "invalid mount path: 'rel' mount path must be absolute"),
        ("rel", "invalid mount path: 'rel' mount path must be absolute"),
        ("/a:/b:nocopy", "nocopy applies to volumes"),
        ("/a:/b:rshared", "propagation 'rshared' is not supported"),
        (
            "./data:/d",
            r'"\./data" includes invalid characters for a local volume name, only '
            r'"\[a-zA-Z0-9\]\[a-zA-Z0-9_\.-\]" are allowed\. If you intended to pass a host '
            r"directory, use absolute path",
        ),
        ("~/x:/d", "includes invalid characters"),
        ("_v:/d", "includes invalid characters"),
        ("a:/d", "volume name 'a' is too short"),
        ("/a:/b\0", "NUL"),
    ],
)
def test_parse_bind_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_bind(spec)


@pytest.mark.parametrize(
    ("spec", "mount"),
    [
        ("/run", Mount("tmpfs", "/run")),
        ("/run:", Mount("tmpfs", "/run")),
        ("/run/:size=64m,mode=1777", Mount("tmpfs", "/run", options="size=64m,mode=1777")),
        (
            "/t:ro,noexec,uid=1,gid=2",
            Mount("tmpfs", "/t", readonly=True, options="ro,noexec,uid=1,gid=2"),
        ),
        ("/t:ro,rw", Mount("tmpfs", "/t", options="ro,rw")),
        ("/t:size=1m,,exec", Mount("tmpfs", "/t", options="size=1m,exec")),
    ],
)
def test_parse_tmpfs(spec: str, mount: Mount) -> None:
    assert parse_tmpfs(spec) == mount


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("run", "--tmpfs run: invalid mount path: 'run' mount path must be absolute"),
        ("/", "--tmpfs /: invalid specification: destination can't be '/'"),
        ("", "--tmpfs : the container path must not be empty"),
        ("/t:bogus", "--tmpfs /t:bogus: invalid tmpfs option 'bogus'"),
        ("/t:size", "invalid tmpfs option 'size'"),
        ("/t:size=", "invalid tmpfs option 'size='"),
        ("/t:huge=always", "invalid tmpfs option 'huge=always'"),
    ],
)
def test_parse_tmpfs_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_tmpfs(spec)


def test_image_volumes_become_anonymous_volumes() -> None:
    config = _image(volumes=("/data", "/var/log/"), cmd=("sh",))
    assert _spec(config).mounts == (Mount("volume", "/data"), Mount("volume", "/var/log"))


@pytest.mark.parametrize(
    ("binds", "tmpfs", "expected"),
    [
        pytest.param(
            ("/h:/data",), (), (Mount("bind", "/data", "/h"),), id="bind covers the volume"
        ),
        pytest.param(
            ("named:/data:ro",), (), (Mount("volume", "/data", "named", True),), id="named"
        ),
        pytest.param((), ("/data",), (Mount("tmpfs", "/data"),), id="tmpfs covers the volume"),
        pytest.param(("/data",), (), (Mount("volume", "/data"),), id="-v /data merges"),
        pytest.param(
            ("/data", "/h:/data"), (), (Mount("bind", "/data", "/h"),), id="bind beats -v /x"
        ),
        pytest.param(
            ("/data/", "/data"), (), (Mount("volume", "/data"),), id="repeated anonymous -v"
        ),
    ],
)
def test_mounts_covering_an_image_volume(
    binds: tuple[str, ...], tmpfs: tuple[str, ...], expected: tuple[Mount, ...]
) -> None:
    config = _image(volumes=("/data",), cmd=("sh",))
    assert _spec(config, binds=binds, tmpfs=tmpfs).mounts == expected


@pytest.mark.parametrize(
    ("binds", "tmpfs"),
    [
        pytest.param(("/a:/x",), ("/x",), id="bind and tmpfs"),
        pytest.param(("/a:/x", "/b:/x/"), (), id="two binds"),
        pytest.param(("vol:/x", "/b:/x"), (), id="volume and bind"),
        pytest.param((), ("/x", "/x:size=1m"), id="two tmpfs"),
    ],
)
def test_duplicate_mount_point(binds: tuple[str, ...], tmpfs: tuple[str, ...]) -> None:
    with pytest.raises(UsageError, match=r"^duplicate mount point: /x$"):
        _spec(binds=binds, tmpfs=tmpfs)


def test_mounts_are_ordered_parents_first() -> None:
    config = _image(volumes=("/a",), cmd=("sh",))
    spec = _spec(config, binds=("/h1:/a/b/c", "/h2:/z"), tmpfs=("/a/b",))
    assert [m.target for m in spec.mounts] == ["/z", "/a", "/a/b", "/a/b/c"]


def test_invalid_image_volume_is_reported() -> None:
    with pytest.raises(UsageError, match="image VOLUME '/'"):
        _spec(_image(volumes=("/",), cmd=("sh",)))


# ---- labels, signals, capabilities, the rest ---------------------------------------------------


def test_labels_merge_and_parse() -> None:
    config = _image(labels={"a": "image", "b": "image"}, cmd=("sh",))
    spec = _spec(config, labels={"b": "run", "c": "run"})
    assert spec.labels == {"a": "image", "b": "run", "c": "run"}
    assert parse_labels(["k=v", "bare", "e=", "k=w=x"]) == {"k": "w=x", "bare": "", "e": ""}
    with pytest.raises(UsageError, match="invalid label '=v': empty name"):
        parse_labels(["=v"])
    with pytest.raises(UsageError, match="label 'a b' contains whitespaces"):
        parse_labels(["a b=1"])


@pytest.mark.parametrize(
    ("name", "number"),
    [
        ("TERM", signal.SIGTERM),
        ("SIGTERM", signal.SIGTERM),
        ("sigterm", signal.SIGTERM),
        ("15", 15),
        ("SIGKILL", 9),
        ("QUIT", signal.SIGQUIT),
        ("SIGIOT", signal.SIGABRT),
        ("RTMIN", signal.SIGRTMIN),
        ("SIGRTMIN+3", signal.SIGRTMIN + 3),
        ("RTMAX-1", signal.SIGRTMAX - 1),
        ("64", 64),
    ],
)
def test_signal_number(name: str, number: int) -> None:
    assert signal_number(name) == number


@pytest.mark.parametrize("name", ["", "0", "-1", "65", "SIGNOPE", "SIG", "TERM ", "RTMIN+16"])
def test_invalid_signals(name: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"invalid signal: {name}")):
        signal_number(name)


def test_stop_signal_and_timeout() -> None:
    assert (_spec().stop_signal, _spec().stop_timeout) == ("SIGTERM", 10)
    config = _image(stop_signal="SIGQUIT", cmd=("sh",))
    assert _spec(config).stop_signal == "SIGQUIT"
    assert _spec(config, stop_signal="INT", stop_timeout=0).stop_signal == "INT"
    assert _spec(stop_timeout=-1).stop_timeout == -1
    with pytest.raises(UsageError, match="invalid signal: SIGFOO"):
        _spec(stop_signal="SIGFOO")
    with pytest.raises(UsageError, match="invalid stop timeout -2"):
        _spec(stop_timeout=-2)


def test_capabilities_are_normalised() -> None:
    spec = _spec(cap_add=("net_admin", "CAP_SYS_TIME", "NET_ADMIN"), cap_drop=("all",))
    assert spec.cap_add == ("CAP_NET_ADMIN", "CAP_SYS_TIME")
    assert spec.cap_drop == ("ALL",)
    assert normalize_capability("chown") == "CAP_CHOWN"
    with pytest.raises(UsageError, match="unknown capability: 'CAP_BOGUS'"):
        _spec(cap_add=("CAP_BOGUS",))


def test_the_rest_is_copied() -> None:
    config = _image(cmd=("sh",), exposed_ports=("443/tcp", "80/tcp"), healthcheck=HC)
    spec = _spec(
        config,
        read_only=True,
        init=True,
        privileged=True,
        tty=True,
        stdin_open=True,
        memory="512m",
        cpus="1.5",
        pids_limit=100,
    )
    assert (spec.image, spec.image_id) == ("img:1", IMAGE_ID)
    assert spec.exposed_ports == ("443/tcp", "80/tcp")
    assert spec.healthcheck == HC
    assert (spec.read_only, spec.init, spec.privileged, spec.tty, spec.stdin_open) == (True,) * 5
    assert (spec.memory, spec.cpus, spec.pids_limit) == ("512m", "1.5", 100)
    assert _spec().healthcheck is None


# ---- JSON -------------------------------------------------------------------------------------


def test_json_round_trip_and_canonical_form() -> None:
    spec = _spec(
        _image(cmd=("sh",), volumes=("/v",), healthcheck=HC, labels={"z": "1", "a": "ü"}),
        binds=("/h:/b:ro",),
        tmpfs=("/t:size=1m",),
        memory="1g",
    )
    raw = spec.to_json()
    assert ContainerSpec.from_json(raw) == spec
    obj = json.loads(raw)
    assert raw == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    assert obj["version"] == 1
    assert obj["mounts"][0] == {
        "kind": "bind",
        "target": "/b",
        "source": "/h",
        "readonly": True,
        "options": "",
    }


def _valid_obj() -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(_spec(tmpfs=("/t",)).to_json())
    return obj


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda o: o.update(version=2), "unsupported version 2"),
        (lambda o: o.pop("argv"), "missing 'argv'"),
        (lambda o: o.pop("healthcheck"), "missing 'healthcheck'"),
        (lambda o: o.update(extra=1), "unknown keys extra"),
        (lambda o: o.update(argv="sh"), "'argv' must be of type list"),
        (lambda o: o.update(env=[1]), "'env' must be a list of strings"),
        (lambda o: o.update(tty=1), "'tty' must be of type bool"),
        (lambda o: o.update(stop_timeout=True), "'stop_timeout' must be of type int"),
        (lambda o: o.update(pids_limit="1"), "'pids_limit' must be of type int"),
        (lambda o: o.update(labels={"a": 1}), "'labels' must be an object of strings"),
        (lambda o: o["mounts"][0].update(kind="nfs"), "unknown kind 'nfs'"),
        (lambda o: o["mounts"][0].pop("options"), "mount 0 must be an object"),
        (lambda o: o.update(healthcheck=[]), "'Healthcheck' must be an object"),
    ],
)
def test_from_json_errors(change: Any, message: str) -> None:
    obj = _valid_obj()
    change(obj)
    with pytest.raises(StoreError, match=message):
        ContainerSpec.from_json(json.dumps(obj).encode())


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"\xff", b'{"version": 1}'])
def test_from_json_rejects_garbage(data: bytes) -> None:
    with pytest.raises(StoreError, match="container config"):
        ContainerSpec.from_json(data)


_texts = st.text(max_size=8)
_str_tuples = st.lists(_texts, max_size=3).map(tuple)
_mounts = st.builds(
    Mount,
    kind=st.sampled_from(["bind", "volume", "tmpfs"]),
    target=_texts,
    source=_texts,
    readonly=st.booleans(),
    options=_texts,
)
_healthchecks = st.builds(
    Healthcheck,
    test=_str_tuples,
    interval=st.integers(),
    timeout=st.integers(min_value=0, max_value=2**63),
    start_period=st.integers(),
    start_interval=st.integers(),
    retries=st.integers(),
)
_specs = st.builds(
    ContainerSpec,
    image=_texts,
    image_id=_texts,
    argv=_str_tuples,
    env=_str_tuples,
    workdir=_texts,
    user=_texts,
    hostname=_texts,
    mounts=st.lists(_mounts, max_size=3).map(tuple),
    read_only=st.booleans(),
    init=st.booleans(),
    privileged=st.booleans(),
    tty=st.booleans(),
    stdin_open=st.booleans(),
    memory=st.none() | _texts,
    cpus=st.none() | _texts,
    pids_limit=st.none() | st.integers(),
    stop_signal=_texts,
    stop_timeout=st.integers(),
    cap_add=_str_tuples,
    cap_drop=_str_tuples,
    labels=st.dictionaries(_texts, _texts, max_size=3),
    exposed_ports=_str_tuples,
    network=_texts,
    healthcheck=st.none() | _healthchecks,
)


@settings(max_examples=100, deadline=None)
@given(_specs)
def test_json_round_trip_property(spec: ContainerSpec) -> None:
    raw = spec.to_json()
    back = ContainerSpec.from_json(raw)
    assert back == spec
    assert back.to_json() == raw


# ---- users ------------------------------------------------------------------------------------

PASSWD = b"""\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
# a comment
broken:x:abc:1::/nowhere:/bin/sh
app:x:1000:1000:App:/home/app:/bin/sh
1234:x:2000:2000:numeric name:/home/n:/bin/sh
nohome:x:1001:1001:::/bin/sh
app:x:1002:1002:second app:/other:/bin/sh
"""
GROUP = b"""\
root:x:0:
wheel:x:10:root,app
app:x:1000:
dev:x:3000:app,other
staff:x:50:
1234:x:4000:
"""


def _files(passwd: bytes | None = PASSWD, group: bytes | None = GROUP) -> Any:
    files = {"/etc/passwd": passwd, "/etc/group": group}
    return files.get


@pytest.mark.parametrize(
    ("user", "resolved"),
    [
        ("", ResolvedUser(0, 0, (0, 10), "/root")),
        ("root", ResolvedUser(0, 0, (0, 10), "/root")),
        ("0", ResolvedUser(0, 0, (0, 10), "/root")),
        ("app", ResolvedUser(1000, 1000, (1000, 10, 3000), "/home/app")),
        ("1000", ResolvedUser(1000, 1000, (1000, 10, 3000), "/home/app")),
        ("app:staff", ResolvedUser(1000, 50, (50,), "/home/app")),
        ("app:50", ResolvedUser(1000, 50, (50,), "/home/app")),
        ("app:777", ResolvedUser(1000, 777, (777,), "/home/app")),
        ("app:1234", ResolvedUser(1000, 1234, (1234,), "/home/app")),  # a number is a gid
        ("4242", ResolvedUser(4242, 0, (0,), "/")),
        ("4242:staff", ResolvedUser(4242, 50, (50,), "/")),
        ("1234", ResolvedUser(1234, 0, (0,), "/")),  # a number is a uid, not a name
        (":staff", ResolvedUser(0, 50, (50,), "/root")),
        ("daemon:", ResolvedUser(1, 1, (1,), "/usr/sbin")),
        ("nohome", ResolvedUser(1001, 1001, (1001,), "/")),
    ],
)
def test_resolve_user(user: str, resolved: ResolvedUser) -> None:
    assert resolve_user(user, _files()) == resolved


def test_resolve_user_without_passwd_or_group_files() -> None:
    files = _files(None, None)
    assert resolve_user("", files) == ResolvedUser(0, 0, (0,), "/")
    assert resolve_user("33:44", files) == ResolvedUser(33, 44, (44,), "/")
    with pytest.raises(UsageError, match="unable to find user www: no matching entries in passwd"):
        resolve_user("www", files)
    with pytest.raises(UsageError, match="unable to find group www: no matching entries in group"):
        resolve_user("33:www", files)


@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("nobody", "unable to find user nobody: no matching entries in passwd file"),
        ("broken", "unable to find user broken"),
        ("app:nogroup", "unable to find group nogroup: no matching entries in group file"),
        ("-1", "uids and gids must be in range 0-2147483647"),
        ("app:2147483648", "uids and gids must be in range"),
    ],
)
def test_resolve_user_errors(user: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve_user(user, _files())


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("app", ("app", None)),
        ("1000", ("1000", None)),
        ("app:staff", ("app", "staff")),
        ("1000:50", ("1000", "50")),
        ("app:", ("app", None)),
        (":50", ("", "50")),
    ],
)
def test_parse_user(text: str, parsed: tuple[str, str | None]) -> None:
    assert parse_user(text) == parsed


@pytest.mark.parametrize("text", ["", ":", "a:b:c", "a\nb", "a\0", "99999999999"])
def test_parse_user_errors(text: str) -> None:
    with pytest.raises(UsageError, match="invalid user"):
        parse_user(text)


# ---- reading files from image layers ----------------------------------------------------------


def _layer(root: Path, files: dict[str, bytes | str | None]) -> str:
    """A layer dir: bytes = file, str = symlink target, None = directory."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir(exist_ok=True)
        elif isinstance(content, str):
            path.symlink_to(content)
        else:
            path.write_bytes(content)
    return str(root)


def _whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    os.setxattr(path, "user.overlay.whiteout", b"y")


def test_lookup_searches_from_the_top_layer_down(tmp_path: Path) -> None:
    base = _layer(tmp_path / "0", {"etc/passwd": b"base", "etc/group": b"g0", "bin/sh": b"sh"})
    top = _layer(tmp_path / "1", {"etc/passwd": b"top"})
    layers = [base, top]
    assert lookup_in_layers(layers, "/etc/passwd") == b"top"
    assert lookup_in_layers(layers, "/etc/group") == b"g0"
    assert lookup_in_layers(layers, "etc/./group") == b"g0"
    assert lookup_in_layers(layers, "/bin/../etc//group") == b"g0"
    assert lookup_in_layers(layers, "/etc/shadow") is None
    assert lookup_in_layers(layers, "/etc") is None  # a directory
    assert lookup_in_layers(layers, "/") is None
    assert lookup_in_layers(layers, "/bin/sh/x") is None  # through a file
    assert lookup_in_layers(layers, "/etc/passwd\0") is None
    assert lookup_in_layers([], "/etc/passwd") is None


def test_lookup_stops_at_whiteouts(tmp_path: Path) -> None:
    base = _layer(tmp_path / "0", {"etc/passwd": b"base", "etc/group": b"g", "opt/a": b"a"})
    mid = _layer(tmp_path / "1", {"etc": None})
    _whiteout(tmp_path / "1" / "etc" / "passwd")
    _whiteout(tmp_path / "1" / "opt")
    top = _layer(tmp_path / "2", {"etc/hosts": b"h"})
    layers = [base, mid, top]
    assert lookup_in_layers(layers, "/etc/passwd") is None
    assert lookup_in_layers(layers, "/opt/a") is None  # a parent is whited out
    assert lookup_in_layers(layers, "/etc/group") == b"g"
    assert lookup_in_layers([*layers, _layer(tmp_path / "3", {"opt/a": b"new"})], "/opt/a") == (
        b"new"
    )


def test_only_empty_files_and_0_0_devices_are_whiteouts(tmp_path: Path) -> None:
    def fake(mode: int, rdev: int = 0, size: int = 0) -> os.stat_result:
        return cast("os.stat_result", SimpleNamespace(st_mode=mode, st_rdev=rdev, st_size=size))

    assert _is_whiteout(b"/nonexistent", fake(stat.S_IFCHR | 0o600, rdev=os.makedev(0, 0)))
    assert not _is_whiteout(b"/nonexistent", fake(stat.S_IFCHR | 0o666, rdev=os.makedev(1, 3)))
    marked = tmp_path / "marked"
    _whiteout(marked)
    assert _is_whiteout(bytes(marked), os.lstat(marked))
    assert not _is_whiteout(bytes(marked), fake(stat.S_IFREG | 0o644, size=1))
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert not _is_whiteout(bytes(plain), os.lstat(plain))


def test_opaque_directories_hide_lower_layers(tmp_path: Path) -> None:
    base = _layer(tmp_path / "0", {"etc/passwd": b"base", "etc/group": b"g"})
    top = _layer(tmp_path / "1", {"etc/group": b"new"})
    os.setxattr(tmp_path / "1" / "etc", "user.overlay.opaque", b"y")
    assert lookup_in_layers([base, top], "/etc/passwd") is None
    assert lookup_in_layers([base, top], "/etc/group") == b"new"
    # "x" only says the directory holds xattr whiteouts; it is not opaque
    os.setxattr(tmp_path / "1" / "etc", "user.overlay.opaque", b"x")
    assert lookup_in_layers([base, top], "/etc/passwd") == b"base"
    # overlayfs ignores opaque marks on a layer's root
    os.setxattr(top, "user.overlay.opaque", b"y")
    assert lookup_in_layers([base, top], "/etc/passwd") == b"base"


def test_a_file_or_symlink_above_hides_a_lower_directory(tmp_path: Path) -> None:
    base = _layer(tmp_path / "0", {"etc/passwd": b"base"})
    top = _layer(tmp_path / "1", {"etc": b"now a file"})
    assert lookup_in_layers([base, top], "/etc/passwd") is None
    # and a directory above hides a lower file of the same name
    lower = _layer(tmp_path / "2", {"x": b"file"})
    upper = _layer(tmp_path / "3", {"x/y": b"y"})
    assert lookup_in_layers([lower, upper], "/x") is None
    assert lookup_in_layers([lower, upper], "/x/y") == b"y"


def test_symlinks_resolve_in_the_merged_view(tmp_path: Path) -> None:
    base = _layer(
        tmp_path / "0",
        {"usr/lib/passwd": b"real", "private/etc/group": b"grp", "etc/passwd": "../usr/lib/passwd"},
    )
    top = _layer(tmp_path / "1", {"etc2": "/private/etc", "abs": "/etc/passwd", "etc/x": "../etc2"})
    layers = [base, top]
    assert lookup_in_layers(layers, "/etc/passwd") == b"real"  # link and target in one layer
    assert lookup_in_layers(layers, "/abs") == b"real"  # link above, target below
    assert lookup_in_layers(layers, "/etc2/group") == b"grp"  # a symlinked directory
    assert lookup_in_layers(layers, "/etc/x/group") == b"grp"  # link to a link
    # ".." goes to the parent of where the link led (/private), not back to /
    assert lookup_in_layers(layers, "/etc2/../etc/group") == b"grp"
    assert lookup_in_layers(layers, "/etc2/../etc/passwd") is None
    assert lookup_in_layers(layers, "/etc/x/../../usr/lib/passwd") == b"real"


def test_symlinks_never_leave_the_layers(tmp_path: Path) -> None:
    (tmp_path / "secret").write_bytes(b"host secret")
    base = _layer(
        tmp_path / "layers" / "0",
        {
            "etc/passwd": "../../../../secret",
            "etc/group": "/../../../../../" + str(tmp_path / "secret"),
            "etc/hosts": str(tmp_path / "secret"),
        },
    )
    for path in ("/etc/passwd", "/etc/group", "/etc/hosts"):
        assert lookup_in_layers([base], path) is None
    inside = _layer(tmp_path / "layers" / "1", {"secret": b"layer's own"})
    assert lookup_in_layers([base, inside], "/etc/passwd") == b"layer's own"


def test_symlink_hops_are_limited(tmp_path: Path) -> None:
    chain = {f"l{i}": f"l{i + 1}" for i in range(8)}
    layer = _layer(tmp_path / "0", {**chain, "l8": b"end", "loop1": "loop2", "loop2": "loop1"})
    assert lookup_in_layers([layer], "/l0") == b"end"  # 8 hops
    assert lookup_in_layers([layer], "/l0x") is None
    layer9 = _layer(tmp_path / "1", {"l": "l0"})
    assert lookup_in_layers([layer, layer9], "/l") is None  # 9 hops
    assert lookup_in_layers([layer], "/loop1") is None


def test_special_files_are_not_read(tmp_path: Path) -> None:
    layer = _layer(tmp_path / "0", {"etc": None})
    os.mkfifo(tmp_path / "0" / "etc" / "passwd")
    assert lookup_in_layers([layer], "/etc/passwd") is None  # and does not block


def _extract(dest: Path, *members: Member) -> str:
    dest.mkdir()
    policy = ExtractPolicy(devices=False, chown=False, whiteout="xattr")
    extract_layer(io.BytesIO(tar_bytes(*members)), dest, policy=policy, source="test")
    return str(dest)


def test_lookup_on_extracted_layers_with_deletions(tmp_path: Path) -> None:
    base = _extract(
        tmp_path / "0",
        d("etc/"),
        f("etc/passwd", PASSWD),
        f("etc/group", GROUP),
        f("etc/motd", b"hi"),
        d("lib/"),
        f("lib/os-release", b"ID=x"),
    )
    # `RUN rm /etc/motd`: etc/ gets user.overlay.opaque=x, which must not hide etc/passwd
    rm_motd = _extract(tmp_path / "1", d("etc/"), f("etc/.wh.motd"))
    # `RUN rm -rf /lib && mkdir /lib`: an opaque directory
    new_lib = _extract(tmp_path / "2", d("lib/"), f("lib/.wh..wh..opq"), f("lib/new", b"n"))
    link = _extract(tmp_path / "3", sym("os-release", "lib/os-release"))
    layers = [base, rm_motd, new_lib, link]
    read = functools.partial(lookup_in_layers, layers)
    assert read("/etc/passwd") == PASSWD
    assert read("/etc/motd") is None
    assert read("/lib/os-release") is None
    assert read("/os-release") is None
    assert read("/lib/new") == b"n"
    assert resolve_user("app", read) == ResolvedUser(1000, 1000, (1000, 10, 3000), "/home/app")
