"""The real distribution registry (Debian's ``docker-registry``) on 127.0.0.1, for tests.

``start_registry`` writes a config (storage under the given directory, a free port on 127.0.0.1,
optional htpasswd or token auth), starts ``/usr/bin/docker-registry serve`` and waits until
``/v2/`` answers. ``RegistryServer.stop()`` kills that process by its PID and waits for it.

Fixtures (function scope; each starts its own registry in ``tmp_path`` and stops it):

- ``registry``: open, no authentication.
- ``basic_registry``: htpasswd basic auth (bcrypt, made with ``htpasswd -B``), user ``alice``
  with password ``wonderland``.
- ``token_registry``: token auth through a ``TokenIssuer`` (``tests.support.token_issuer``);
  yields ``(server, issuer)``.
- ``tls_registry``: open, over HTTPS only, with a self-signed certificate for 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import pytest

from tests.conftest import require_tool
from tests.support.token_issuer import ISSUER, SERVICE, TokenIssuer

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

REGISTRY = "docker-registry"
BASIC_USER = "alice"
BASIC_PASSWORD = "wonderland"
START_TIMEOUT = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RegistryServer:
    """A running registry: ``host`` is ``127.0.0.1:PORT``."""

    host: str
    root: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes] = field(repr=False)
    tls: bool = False
    """Serving HTTPS (a self-signed certificate) instead of plain HTTP."""

    def url(self, path: str = "/v2/") -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}{path}"

    def ref(self, repository: str) -> str:
        """``127.0.0.1:PORT/REPOSITORY`` (add ``:tag`` or ``@digest`` as needed)."""
        return f"{self.host}/{repository}"

    def logs(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Kill the registry (by PID) and wait for it; idempotent."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.log.close()


def _wait_until_up(server: RegistryServer) -> bool:
    deadline = time.monotonic() + START_TIMEOUT
    context = None
    if server.tls:
        import ssl

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(server.url(), timeout=1, context=context):
                return True
        except urllib.error.HTTPError:
            return True  # 401: up, and asking for credentials
        except OSError:
            time.sleep(0.01)
    return False


def self_signed(workdir: Path) -> tuple[Path, Path]:
    """A certificate and key for ``127.0.0.1`` and ``localhost``, made with ``openssl``."""
    tool = require_tool("openssl")
    cert, key = workdir / "registry.crt", workdir / "registry.key"
    subprocess.run(
        [
            *(tool, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def start_registry(
    workdir: Path, *, auth: dict[str, Any] | None = None, tls: bool = False
) -> RegistryServer:
    """Start a registry storing under ``workdir``; raise if it does not come up. With ``tls``
    it serves HTTPS only, with a self-signed certificate (``self_signed``)."""
    binary = require_tool(REGISTRY)
    workdir.mkdir(parents=True, exist_ok=True)
    certificate = self_signed(workdir) if tls else None
    for _attempt in range(5):
        port = free_port()
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(workdir / "storage")},
                "delete": {"enabled": True},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": "minidock-tests"},
        }
        if auth:
            config["auth"] = auth
        if certificate is not None:
            config["http"]["tls"] = {
                "certificate": str(certificate[0]),
                "key": str(certificate[1]),
            }
        config_path = workdir / "config.yml"
        config_path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        log_path = workdir / "registry.log"
        log = open(log_path, "ab")  # noqa: SIM115 - closed by stop()
        process = subprocess.Popen(
            [binary, "serve", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        server = RegistryServer(f"127.0.0.1:{port}", workdir, process, log_path, log, tls=tls)
        if _wait_until_up(server):
            return server
        text = server.logs()
        server.stop()
        if "address already in use" not in text:
            raise RuntimeError(f"docker-registry did not start: {text[-2000:]}")
    raise RuntimeError("docker-registry found no free port in 5 attempts")


def htpasswd_file(path: Path, users: dict[str, str]) -> Path:
    """A bcrypt htpasswd file (the registry accepts no other hash), made with ``htpasswd -B``."""
    tool = require_tool("htpasswd")
    lines = []
    for user, password in users.items():
        out = subprocess.run(
            [tool, "-Bbn", user, password], check=True, capture_output=True, text=True
        ).stdout
        lines.append(out.strip())
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """An open registry on 127.0.0.1.

    Name: ``registry`` · Scope: function · Depends: ``tmp_path``.
    Starts ``docker-registry`` with storage in ``tmp_path/registry``; kills it afterwards.
    """
    server = start_registry(tmp_path / "registry")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def basic_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """A registry with htpasswd basic auth: ``alice`` / ``wonderland``.

    Name: ``basic_registry`` · Scope: function · Depends: ``tmp_path``.
    """
    work = tmp_path / "basic-registry"
    work.mkdir()
    passwd = htpasswd_file(work / "htpasswd", {BASIC_USER: BASIC_PASSWORD})
    server = start_registry(
        work, auth={"htpasswd": {"realm": "minidock-tests", "path": str(passwd)}}
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def token_registry(tmp_path: Path) -> Iterator[tuple[RegistryServer, TokenIssuer]]:
    """A registry with token auth, and its token issuer (see ``tests.support.token_issuer``).

    Name: ``token_registry`` · Scope: function · Depends: ``tmp_path``.
    Starts the issuer's thread and the registry; stops both afterwards.
    """
    require_tool("openssl")
    issuer = TokenIssuer(tmp_path / "issuer").start()
    try:
        server = start_registry(
            tmp_path / "token-registry",
            auth={
                "token": {
                    "realm": issuer.realm,
                    "service": SERVICE,
                    "issuer": ISSUER,
                    "rootcertbundle": str(issuer.cert),
                }
            },
        )
        try:
            yield server, issuer
        finally:
            server.stop()
    finally:
        issuer.stop()


@pytest.fixture
def tls_registry(tmp_path: Path) -> Iterator[RegistryServer]:
    """An open registry serving HTTPS only (a self-signed certificate made with ``openssl``).

    Name: ``tls_registry`` · Scope: function · Depends: ``tmp_path``.
    """
    server = start_registry(tmp_path / "tls-registry", tls=True)
    try:
        yield server
    finally:
        server.stop()
