"""docker's ``config.json``: lookups, round-trips in docker's layout, and credential helpers
(a fake ``docker-credential-*`` script on ``PATH``)."""

from __future__ import annotations

import base64
import json
import os
import stat
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.errors import RegistryAuthError
from pytest_minidock.registry.auth import Credentials
from pytest_minidock.registry.dockerconfig import (
    DOCKER_HUB_SERVER,
    DockerConfig,
    config_dir,
    server_key,
)

if TYPE_CHECKING:
    from pathlib import Path

HELPER = textwrap.dedent(
    """\
    #!{python}
    # A docker credential helper keeping its secrets in $FAKE_HELPER_STORE (JSON).
    import json, os, sys
    path = os.environ["FAKE_HELPER_STORE"]
    try:
        with open(path) as f:
            store = json.load(f)
    except FileNotFoundError:
        store = {{}}
    action = sys.argv[1]
    data = sys.stdin.read()
    shown = data if action != "store" else json.loads(data)["ServerURL"]
    with open(path + ".log", "a") as log:
        log.write(action + " " + shown + "\\n")
    if action == "get":
        if data not in store:
            print("credentials not found in native keychain")
            sys.exit(1)
        user, secret = store[data]
        print(json.dumps({{"ServerURL": data, "Username": user, "Secret": secret}}))
    elif action == "store":
        obj = json.loads(data)
        store[obj["ServerURL"]] = [obj["Username"], obj["Secret"]]
    elif action == "erase":
        if store.pop(data, None) is None:
            print("credentials not found in native keychain")
            sys.exit(1)
    elif action == "broken":
        pass
    with open(path, "w") as f:
        json.dump(store, f)
    """
)


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``docker-credential-fake`` on PATH; returns its store file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "docker-credential-fake"
    script.write_text(HELPER.format(python=sys.executable))
    script.chmod(0o755)
    broken = bin_dir / "docker-credential-broken"
    broken.write_text("#!/bin/sh\necho 'keyring is locked' >&2\nexit 3\n")
    broken.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    store = tmp_path / "helper-store.json"
    monkeypatch.setenv("FAKE_HELPER_STORE", str(store))
    return store


def test_config_dir_respects_docker_config(tmp_path: Path) -> None:
    assert config_dir({"DOCKER_CONFIG": str(tmp_path)}) == tmp_path
    assert config_dir({"HOME": str(tmp_path)}) == tmp_path / ".docker"
    loaded = DockerConfig.load(environ={"DOCKER_CONFIG": str(tmp_path / "d")})
    assert loaded.path == tmp_path / "d" / "config.json"
    assert loaded.data == {}


@pytest.mark.parametrize(
    ("registry", "key"),
    [
        ("docker.io", DOCKER_HUB_SERVER),
        ("index.docker.io", DOCKER_HUB_SERVER),
        ("registry-1.docker.io", DOCKER_HUB_SERVER),
        ("ghcr.io", "ghcr.io"),
        ("https://ghcr.io/", "ghcr.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
    ],
)
def test_server_keys_are_docker_s(registry: str, key: str) -> None:
    assert server_key(registry) == key


def test_store_writes_docker_s_layout_with_mode_0600(tmp_path: Path) -> None:
    cfg = DockerConfig.load(tmp_path / "docker")
    where = cfg.store("127.0.0.1:5000", Credentials("alice", "wonder:land"))
    cfg.store("docker.io", Credentials("bob", "pw"))
    path = tmp_path / "docker" / "config.json"
    assert where == str(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    alice = base64.b64encode(b"alice:wonder:land").decode()
    bob = base64.b64encode(b"bob:pw").decode()
    assert path.read_text() == (
        "{\n"
        '\t"auths": {\n'
        '\t\t"127.0.0.1:5000": {\n'
        f'\t\t\t"auth": "{alice}"\n'
        "\t\t},\n"
        '\t\t"https://index.docker.io/v1/": {\n'
        f'\t\t\t"auth": "{bob}"\n'
        "\t\t}\n"
        "\t}\n"
        "}"
    )
    again = DockerConfig.load(tmp_path / "docker")
    assert again.get("127.0.0.1:5000") == Credentials("alice", "wonder:land")
    assert again.get("index.docker.io") == Credentials("bob", "pw")
    assert again.get("ghcr.io") is None


def test_unknown_fields_survive_and_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {"psFormat": "table {{.ID}}", "auths": {"old.example": {"auth": "eDp5"}}}, indent=1
        )
    )
    path.chmod(0o640)
    cfg = DockerConfig.load(tmp_path)
    cfg.store("new.example", Credentials("u", "p"))
    data = json.loads(path.read_text())
    assert list(data) == ["auths", "psFormat"]
    assert data["psFormat"] == "table {{.ID}}"
    assert sorted(data["auths"]) == ["new.example", "old.example"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_symlinked_config_is_written_through(tmp_path: Path) -> None:
    real = tmp_path / "dotfiles" / "docker.json"
    real.parent.mkdir()
    real.write_text("{}")
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").symlink_to(real)
    DockerConfig.load(tmp_path / "docker").store("r.example", Credentials("u", "p"))
    assert (tmp_path / "docker" / "config.json").is_symlink()
    assert "r.example" in json.loads(real.read_text())["auths"]


def test_legacy_keys_and_identity_tokens_are_read(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "auths": {
                    "https://legacy.example/v1/": {"auth": base64.b64encode(b"u:p").decode()},
                    "tokens.example": {
                        "auth": base64.b64encode(b"u:").decode(),
                        "identitytoken": "refresh-me",
                    },
                    "empty.example": {},
                }
            }
        )
    )
    cfg = DockerConfig.load(tmp_path)
    assert cfg.get("legacy.example") == Credentials("u", "p")
    assert cfg.get("tokens.example") == Credentials("u", "", identity_token="refresh-me")
    assert cfg.get("empty.example") is None
    assert cfg("legacy.example") == Credentials("u", "p")  # a CredentialSource


def test_erase_removes_every_spelling(tmp_path: Path) -> None:
    cfg = DockerConfig.load(tmp_path)
    cfg.data = {"auths": {"https://r.example": {"auth": "eDp5"}, "other.example": {}}}
    assert cfg.erase("r.example")
    assert not cfg.erase("r.example")
    assert list(json.loads((tmp_path / "config.json").read_text())["auths"]) == ["other.example"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{broken", "not valid JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"auths": {"r.example": {"auth": "bm9jb2xvbg=="}}}', "is not 'user:password'"),
    ],
)
def test_malformed_files_are_named(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(RegistryAuthError, match=message) as info:
        DockerConfig.load(tmp_path).get("r.example")
    assert str(tmp_path / "config.json") in str(info.value)


def test_creds_store_helper_round_trip(tmp_path: Path, helper: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "fake"}))
    cfg = DockerConfig.load(tmp_path)
    assert cfg.helper("127.0.0.1:5000") == "fake"
    assert cfg.get("127.0.0.1:5000") is None  # "credentials not found": not an error
    assert cfg.store("127.0.0.1:5000", Credentials("alice", "pw")) == "docker-credential-fake"
    assert json.loads(helper.read_text()) == {"127.0.0.1:5000": ["alice", "pw"]}
    data = json.loads((tmp_path / "config.json").read_text())
    assert data == {"auths": {"127.0.0.1:5000": {}}, "credsStore": "fake"}  # docker's way
    assert DockerConfig.load(tmp_path).get("127.0.0.1:5000") == Credentials("alice", "pw")
    assert cfg.erase("127.0.0.1:5000")
    assert json.loads(helper.read_text()) == {}
    assert DockerConfig.load(tmp_path).get("127.0.0.1:5000") is None
    log = (tmp_path / "helper-store.json.log").read_text().splitlines()
    assert log == [
        "get 127.0.0.1:5000",
        "store 127.0.0.1:5000",
        "get 127.0.0.1:5000",
        "erase 127.0.0.1:5000",
        "get 127.0.0.1:5000",
    ]


def test_cred_helpers_per_registry_and_identity_tokens(tmp_path: Path, helper: Path) -> None:
    helper.write_text(json.dumps({DOCKER_HUB_SERVER: ["<token>", "refresh-1"]}))
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "credHelpers": {"docker.io": "fake", "ghcr.io": "fake"},
                "auths": {"plain.example": {"auth": base64.b64encode(b"p:q").decode()}},
            }
        )
    )
    cfg = DockerConfig.load(tmp_path)
    assert cfg.helper("docker.io") == "fake"
    assert cfg.helper("plain.example") is None
    assert cfg.get("docker.io") == Credentials(identity_token="refresh-1")
    assert cfg.get("plain.example") == Credentials("p", "q")
    assert cfg.get("ghcr.io") is None


def test_a_missing_helper_falls_back_to_the_file_but_cannot_store(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "credsStore": "not-installed-anywhere",
                "auths": {"r.example": {"auth": base64.b64encode(b"u:p").decode()}},
            }
        )
    )
    cfg = DockerConfig.load(tmp_path)
    assert cfg.get("r.example") == Credentials("u", "p")
    with pytest.raises(RegistryAuthError, match="not-installed-anywhere is not installed"):
        cfg.store("r.example", Credentials("u", "p2"))


def test_a_failing_helper_is_an_error_naming_it(tmp_path: Path, helper: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"credsStore": "broken"}))
    with pytest.raises(RegistryAuthError, match="keyring is locked") as info:
        DockerConfig.load(tmp_path).get("r.example")
    assert "docker-credential-broken" in str(info.value)
    assert "r.example" in str(info.value)
