"""Reference → registry URL mapping: Docker Hub naming, loopback, insecure registries, mirrors."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from pytest_minidock.errors import UsageError
from pytest_minidock.reference import Reference
from pytest_minidock.registry.client import Repository
from pytest_minidock.registry.hosts import (
    ENV_CONFIG,
    ENV_INSECURE,
    ENV_MIRRORS,
    Endpoint,
    RegistryHosts,
    canonical_domain,
    is_loopback,
    registry_host,
    split_host_port,
)
from pytest_minidock.registry.policy import RetryPolicy
from pytest_minidock.registry.session import Session, login_name

if TYPE_CHECKING:
    from pathlib import Path


def no_file(tmp_path: Path) -> dict[str, str]:
    return {ENV_CONFIG: str(tmp_path / "absent.json")}


@pytest.mark.parametrize(
    ("text", "host", "path"),
    [
        ("redis", "registry-1.docker.io", "library/redis"),
        ("library/redis:7", "registry-1.docker.io", "library/redis"),
        ("index.docker.io/user/app", "registry-1.docker.io", "user/app"),
        ("ghcr.io/owner/tool:1", "ghcr.io", "owner/tool"),
        ("localhost:5000/a/b", "localhost:5000", "a/b"),
        ("127.0.0.1:5000/busybox@sha256:" + "a" * 64, "127.0.0.1:5000", "busybox"),
    ],
)
def test_reference_to_registry_host(tmp_path: Path, text: str, host: str, path: str) -> None:
    ref = Reference.parse(text)
    endpoint = RegistryHosts.load(no_file(tmp_path)).endpoint(ref.domain)
    assert (endpoint.host, ref.path) == (host, path)
    assert registry_host(ref.domain) == host


def test_manifest_and_blob_urls(tmp_path: Path) -> None:
    hosts = RegistryHosts.load(no_file(tmp_path))
    ref = Reference.parse("redis:7")
    session = Session(
        transport=None,  # type: ignore[arg-type]  # building URLs sends nothing
        endpoint=hosts.endpoint(ref.domain),
        credentials=lambda: None,
        policy=RetryPolicy(),
        hosts=hosts,
        timeout=1.0,
    )
    repo = Repository(session, ref.path, str(ref))
    assert session.url(repo._v2("manifests/7")) == (
        "https://registry-1.docker.io/v2/library/redis/manifests/7"
    )
    assert repo.scopes == ("repository:library/redis:pull",)
    assert Repository(session, ref.path, str(ref), push=True).scopes == (
        "repository:library/redis:pull,push",
    )
    assert session.url("https://storage.example/x?sig=1") == "https://storage.example/x?sig=1"


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("docker.io", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("https://index.docker.io/v1/", "docker.io"),
        ("https://ghcr.io", "ghcr.io"),
        ("127.0.0.1:5000", "127.0.0.1:5000"),
        ("http://myreg:5000/", "myreg:5000"),
    ],
)
def test_canonical_domain(name: str, canonical: str) -> None:
    assert canonical_domain(name) == canonical


def test_split_host_port_and_loopback() -> None:
    assert split_host_port("[::1]:5000") == ("::1", 5000)
    assert split_host_port("example.com") == ("example.com", None)
    assert split_host_port("example.com:443") == ("example.com", 443)
    for host in ("localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:80"):
        assert is_loopback(host), host
    for host in ("example.com", "10.0.0.1:5000", "[::2]:80", "localhost.example.com"):
        assert not is_loopback(host), host


def test_plain_http_only_for_loopback_and_insecure(tmp_path: Path) -> None:
    env = no_file(tmp_path) | {ENV_INSECURE: "myreg:5000, 10.1.0.0/16 other.example"}
    hosts = RegistryHosts.load(env)
    assert hosts.endpoint("ghcr.io") == Endpoint("ghcr.io", "ghcr.io", ("https",), True)
    assert hosts.endpoint("127.0.0.1:5000").schemes == ("http", "https")  # loopback: HTTP first
    assert not hosts.endpoint("127.0.0.1:5000").verify_tls
    assert hosts.endpoint("myreg:5000").schemes == ("https", "http")
    assert hosts.endpoint("myreg:5001").schemes == ("https",)  # another port is not listed
    assert hosts.endpoint("10.1.2.3:5000").schemes == ("https", "http")  # CIDR
    assert hosts.endpoint("10.2.0.1").schemes == ("https",)
    assert hosts.endpoint("other.example:1234").schemes == ("https", "http")  # host: any port


def test_mirrors_from_env_come_first_then_the_registry(tmp_path: Path) -> None:
    env = no_file(tmp_path) | {
        ENV_MIRRORS: "https://mirror.gcr.io,quay.io=https://quay-mirror.example:8443 "
        "http://127.0.0.1:5001",
    }
    hosts = RegistryHosts.load(env)
    hub = hosts.pull_endpoints("docker.io")
    assert [(e.host, e.schemes, e.mirror) for e in hub] == [
        ("mirror.gcr.io", ("https",), True),
        ("127.0.0.1:5001", ("http",), True),
        ("registry-1.docker.io", ("https",), False),
    ]
    assert all(e.name == "docker.io" for e in hub)
    assert [e.host for e in hosts.pull_endpoints("quay.io")] == [
        "quay-mirror.example:8443",
        "quay.io",
    ]
    assert [e.host for e in hosts.pull_endpoints("ghcr.io")] == ["ghcr.io"]
    assert login_name(hub[0]) == "mirror.gcr.io"
    assert login_name(hub[-1]) == ""  # Docker Hub: plain 'minidock login'
    assert login_name(hosts.endpoint("ghcr.io")) == "ghcr.io"


def test_mirrors_and_insecure_registries_from_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "registries.json"
    config.write_text(
        json.dumps(
            {
                "registry-mirrors": ["https://hub-mirror.example"],
                "mirrors": {"ghcr.io": ["ghcr-mirror.example"]},
                "insecure-registries": ["build.example:5000"],
            }
        )
    )
    env = {ENV_CONFIG: str(config), ENV_MIRRORS: "https://first.example"}
    hosts = RegistryHosts.load(env)
    assert [e.host for e in hosts.pull_endpoints("docker.io")] == [
        "first.example",
        "hub-mirror.example",
        "registry-1.docker.io",
    ]
    assert [e.host for e in hosts.pull_endpoints("ghcr.io")] == ["ghcr-mirror.example", "ghcr.io"]
    assert hosts.endpoint("build.example:5000").schemes == ("https", "http")


def test_the_default_config_file_is_under_xdg_config_home(tmp_path: Path) -> None:
    (tmp_path / "minidock").mkdir()
    (tmp_path / "minidock" / "registries.json").write_text(
        json.dumps({"insecure-registries": ["xdg.example"]})
    )
    hosts = RegistryHosts.load({"XDG_CONFIG_HOME": str(tmp_path)})
    assert hosts.insecure == ("xdg.example",)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({ENV_MIRRORS: "http://mirror.example"}, "plain HTTP"),
        ({ENV_MIRRORS: "https://mirror.example/some/path"}, "must not have a path"),
        ({ENV_MIRRORS: "ftp://mirror.example"}, "expected https://HOST"),
    ],
)
def test_bad_mirrors_are_refused_when_loaded(
    tmp_path: Path, env: dict[str, str], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        RegistryHosts.load(no_file(tmp_path) | env)


def test_a_malformed_config_file_names_itself(tmp_path: Path) -> None:
    config = tmp_path / "registries.json"
    config.write_text("{not json")
    with pytest.raises(UsageError, match=r"registries\.json is not valid JSON"):
        RegistryHosts.load({ENV_CONFIG: str(config)})
    config.write_text(json.dumps({"registry-mirrors": "https://one.example"}))
    with pytest.raises(UsageError, match="'registry-mirrors' must be a list of strings"):
        RegistryHosts.load({ENV_CONFIG: str(config)})
