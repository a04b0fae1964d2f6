"""Authentication against the real registry: htpasswd basic auth and token auth (with the test
token issuer), logins stored in docker's ``config.json`` or a credential helper, the CLI."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import sys
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.api import Engine
from pytest_minidock.cli import main
from pytest_minidock.errors import RegistryAuthError, RegistryDenied
from pytest_minidock.reference import Reference
from pytest_minidock.registry.auth import Credentials
from tests.conftest import make_busybox_root
from tests.support.registry import BASIC_PASSWORD, BASIC_USER

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.registry import RegistryServer
    from tests.support.token_issuer import TokenIssuer

pytestmark = pytest.mark.network


@pytest.fixture
def engine(tmp_path: Path, busybox_rootfs: Path) -> Engine:
    return Engine(make_busybox_root(tmp_path / "root", busybox_rootfs))


def tag(engine: Engine, ref: str) -> str:
    engine.store.tag("busybox", Reference.parse(ref))
    return ref


# -- basic auth (htpasswd) -----------------------------------------------------------------------
def test_basic_auth_needs_a_login(engine: Engine, basic_registry: RegistryServer) -> None:
    ref = tag(engine, basic_registry.ref("private/busybox:1"))
    with pytest.raises(RegistryAuthError) as info:
        engine.push(ref)
    text = str(info.value)
    assert text.startswith("cannot push ")  # the config or the layer: whichever came first
    assert f" of {ref}: " in text
    assert f"{basic_registry.host} requires authentication" in text
    assert f"'minidock login {basic_registry.host}'" in text


def test_login_stores_docker_s_config_and_pushes_and_pulls_use_it(
    engine: Engine,
    basic_registry: RegistryServer,
    tmp_path: Path,
    isolated_registry_settings: Path,
) -> None:
    host = basic_registry.host
    with pytest.raises(RegistryAuthError, match="rejected the credentials"):
        engine.login(host, BASIC_USER, "not-the-password")
    config = isolated_registry_settings / "config.json"
    assert not config.exists()
    result = engine.login(host, BASIC_USER, BASIC_PASSWORD)
    assert (result.server, result.stored_in, result.in_plain_text) == (host, str(config), True)
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    auth = base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    assert json.loads(config.read_text()) == {"auths": {host: {"auth": auth}}}
    assert engine.login(host, "", "").changed is False  # the stored login checks out
    ref = tag(engine, basic_registry.ref("private/busybox:1"))
    engine.push(ref)
    other = Engine(tmp_path / "other")
    assert other.pull(ref).id == engine.store.resolve("busybox").id
    assert other.logout(host).changed
    assert not other.logout(host).changed
    with pytest.raises(RegistryAuthError, match="requires authentication"):
        Engine(tmp_path / "third").pull(ref)


def test_credentials_from_the_engine_hook_come_first(
    engine: Engine, basic_registry: RegistryServer, tmp_path: Path
) -> None:
    asked: list[str] = []

    def hook(registry: str) -> Credentials | None:
        asked.append(registry)
        return Credentials(BASIC_USER, BASIC_PASSWORD)

    engine.credentials = hook
    engine.push(tag(engine, basic_registry.ref("hooked/busybox:1")))
    assert set(asked) == {basic_registry.host}  # asked on each 401 (one per parallel upload)


HELPER = """#!{python}
import json, sys
action = sys.argv[1]
server = sys.stdin.read()
if action == "get" and server == {host!r}:
    print(json.dumps({{"ServerURL": server, "Username": {user!r}, "Secret": {password!r}}}))
else:
    print("credentials not found in native keychain")
    sys.exit(1)
"""


def test_a_docker_credential_helper_provides_the_login(
    engine: Engine,
    basic_registry: RegistryServer,
    tmp_path: Path,
    isolated_registry_settings: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-minidocktest"
    helper.write_text(
        HELPER.format(
            python=sys.executable,
            host=basic_registry.host,
            user=BASIC_USER,
            password=BASIC_PASSWORD,
        )
    )
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    isolated_registry_settings.mkdir()
    (isolated_registry_settings / "config.json").write_text(
        json.dumps({"credHelpers": {basic_registry.host: "minidocktest"}})
    )
    engine.push(tag(engine, basic_registry.ref("helped/busybox:1")))


def test_cli_login_with_password_stdin_and_logout(
    basic_registry: RegistryServer,
    tmp_path: Path,
    isolated_registry_settings: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = str(tmp_path / "root")
    host = basic_registry.host
    monkeypatch.setattr(sys, "stdin", io.StringIO("wrong\n"))
    assert main(["--root", root, "login", "-u", BASIC_USER, "--password-stdin", host]) == 1
    assert "rejected the credentials" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(BASIC_PASSWORD + "\n"))
    assert main(["--root", root, "login", "-u", BASIC_USER, "--password-stdin", host]) == 0
    out, err = capsys.readouterr()
    assert out == "Login Succeeded\n"
    config = isolated_registry_settings / "config.json"
    assert f"WARNING! Your password will be stored unencrypted in {config}." in err
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["--root", root, "login", host]) == 0  # checks the stored login
    assert capsys.readouterr().out == "Login Succeeded\n"
    assert main(["--root", root, "logout", host]) == 0
    assert capsys.readouterr().out == f"Removing login credentials for {host}\n"
    assert main(["--root", root, "logout", host]) == 0
    assert capsys.readouterr().out == f"Not logged in to {host}\n"
    assert main(["--root", root, "login", host]) == 1
    assert "not logged in to" in capsys.readouterr().err


# -- token auth -----------------------------------------------------------------------------------
def test_anonymous_tokens_pull_public_repositories(
    engine: Engine, token_registry: tuple[RegistryServer, TokenIssuer], tmp_path: Path
) -> None:
    server, issuer = token_registry
    public = tag(engine, server.ref("public/busybox:1"))
    with pytest.raises(RegistryAuthError, match="requires authentication"):
        engine.push(public)  # anonymous may not push
    engine.credentials = lambda registry: Credentials("alice", "wonderland")
    engine.push(public)
    issuer.requests.clear()
    anonymous = Engine(tmp_path / "anonymous")
    assert anonymous.pull(public).id == engine.store.resolve("busybox").id
    assert [(r.account, r.scopes) for r in issuer.requests] == [
        (None, ["repository:public/busybox:pull"])
    ]  # one token, reused for the manifest and both blobs
    private = tag(engine, server.ref("private/busybox:1"))
    engine.push(private)
    with pytest.raises(RegistryAuthError, match="requires authentication") as info:
        anonymous.pull(private)
    assert server.host in str(info.value)


def test_token_logins_and_rights(
    engine: Engine, token_registry: tuple[RegistryServer, TokenIssuer], tmp_path: Path
) -> None:
    server, issuer = token_registry
    with pytest.raises(RegistryAuthError, match="rejected the credentials") as info:
        engine.login(server.host, "alice", "wrong")
    assert "token service" in str(info.value)
    engine.login(server.host, "alice", "wonderland")
    ref = tag(engine, server.ref("team/busybox:1"))
    engine.push(ref)
    pushes = [r for r in issuer.requests if r.account == "alice" and r.status == 200]
    assert any("repository:team/busybox:pull,push" in r.scopes for r in pushes)
    reader = Engine(tmp_path / "reader")
    reader.credentials = lambda registry: Credentials("reader", "only-reads")
    assert reader.pull(ref).id == engine.store.resolve("busybox").id
    reader.store.tag(ref, Reference.parse(server.ref("team/busybox:from-reader")))
    with pytest.raises(RegistryDenied, match="denied access") as denied:
        reader.push(server.ref("team/busybox:from-reader"))
    assert "insufficient_scope" in str(denied.value) or "UNAUTHORIZED" in str(denied.value)


def test_identity_tokens_are_exchanged_for_access_tokens(
    engine: Engine, token_registry: tuple[RegistryServer, TokenIssuer], tmp_path: Path
) -> None:
    server, issuer = token_registry
    engine.credentials = lambda registry: Credentials("alice", "wonderland")
    ref = tag(engine, server.ref("team/busybox:idt"))
    engine.push(ref)
    other = Engine(tmp_path / "other")
    other.credentials = lambda registry: Credentials(identity_token="refresh-for-alice")
    issuer.requests.clear()
    assert other.pull(ref).id == engine.store.resolve("busybox").id
    assert [(r.method, r.account) for r in issuer.requests] == [("POST", "alice")]


def test_a_cross_repository_mount_asks_for_pull_rights_on_the_source(
    engine: Engine, token_registry: tuple[RegistryServer, TokenIssuer]
) -> None:
    server, issuer = token_registry
    engine.credentials = lambda registry: Credentials("alice", "wonderland")
    engine.push(tag(engine, server.ref("team/busybox:1")))
    issuer.requests.clear()
    mounted = engine.push(tag(engine, server.ref("elsewhere/busybox:1")))
    assert (mounted.pushed, mounted.mounted, mounted.existed) == (0, 2, 0)
    scopes = {s for r in issuer.requests if r.status == 200 for s in r.scopes}
    assert {"repository:elsewhere/busybox:pull,push", "repository:team/busybox:pull"} <= scopes
