"""Where a reference's registry is reached: Docker Hub naming, mirrors and the plain-HTTP policy.

A reference's domain becomes an ``Endpoint``: ``docker.io`` is served by ``registry-1.docker.io``;
any other domain by itself. Pulls try the domain's mirrors first, in order, then the registry
itself; pushes go to the registry only.

TLS is the rule. Plain HTTP (and TLS without certificate checks) is allowed only for loopback
hosts (``localhost``, ``127.0.0.0/8``, ``::1``) and for registries listed as insecure. Insecure
registries are tried over HTTPS first and over HTTP when the TLS handshake fails, as docker does;
loopback ones over HTTP first (nothing leaves the machine, and no TLS library is loaded) and over
HTTPS when the server turns out to speak TLS.

Configuration, merged in this order (environment first):

- ``MINIDOCK_REGISTRY_MIRRORS``: comma- or space-separated mirror URLs; a bare URL mirrors Docker
  Hub (docker's ``registry-mirrors``), ``DOMAIN=URL`` mirrors another registry.
- ``MINIDOCK_INSECURE_REGISTRIES``: comma- or space-separated ``host[:port]`` or CIDR ranges.
- the JSON file ``$MINIDOCK_REGISTRIES_CONFIG`` (default
  ``$XDG_CONFIG_HOME/minidock/registries.json``, ``~/.config/minidock/registries.json``) with
  docker's ``daemon.json`` keys ``registry-mirrors`` and ``insecure-registries``, plus
  ``mirrors``: ``{"quay.io": ["https://quay-mirror.example"]}``.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pytest_minidock._record import dataclass, field
from pytest_minidock.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

__all__ = [
    "DOCKER_HUB_DOMAIN",
    "DOCKER_HUB_HOST",
    "ENV_CONFIG",
    "ENV_INSECURE",
    "ENV_MIRRORS",
    "Endpoint",
    "RegistryHosts",
    "canonical_domain",
    "is_loopback",
    "registry_host",
    "split_host_port",
]

DOCKER_HUB_DOMAIN = "docker.io"
DOCKER_HUB_HOST = "registry-1.docker.io"
ENV_MIRRORS = "MINIDOCK_REGISTRY_MIRRORS"
ENV_INSECURE = "MINIDOCK_INSECURE_REGISTRIES"
ENV_CONFIG = "MINIDOCK_REGISTRIES_CONFIG"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


def canonical_domain(name: str) -> str:
    """A registry as users name it, in one form: Docker Hub's aliases become ``docker.io``."""
    name = name.strip()
    for prefix in ("https://", "http://"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    name = name.split("/", 1)[0]
    return DOCKER_HUB_DOMAIN if name.lower() in _HUB_ALIASES else name


def registry_host(domain: str) -> str:
    """The host to contact for a reference's domain: ``registry-1.docker.io`` for Docker Hub."""
    return DOCKER_HUB_HOST if canonical_domain(domain) == DOCKER_HUB_DOMAIN else domain


def split_host_port(host: str) -> tuple[str, int | None]:
    """``"[::1]:5000"`` → ``("::1", 5000)``; ``"example.com"`` → ``("example.com", None)``."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return host, None
        rest = host[end + 1 :]
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        return host[1:end], port
    name, sep, port_text = host.rpartition(":")
    if sep and port_text.isdigit() and ":" not in name:
        return name, int(port_text)
    return host, None


def is_loopback(host: str) -> bool:
    """Whether ``host[:port]`` names this machine (``localhost``, ``127.0.0.0/8``, ``::1``)."""
    name, _ = split_host_port(host)
    name = name.lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One place to send a registry's requests to."""

    name: str
    """The registry as messages and credentials name it (``docker.io``, ``127.0.0.1:5000``)."""
    host: str
    """``host[:port]`` to connect to (``registry-1.docker.io`` for ``docker.io``)."""
    schemes: tuple[str, ...] = ("https",)
    """Schemes to try, in order: ``https``, then ``http`` for loopback or insecure registries."""
    verify_tls: bool = True
    mirror: bool = False

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://{self.host}{path}"

    def __str__(self) -> str:
        return self.host if not self.mirror else f"{self.host} (mirror of {self.name})"


def _split_list(text: str) -> list[str]:
    return [item for item in text.replace(",", " ").split() if item]


@dataclass(frozen=True, slots=True)
class RegistryHosts:
    """Mirrors per registry domain and the registries that may use plain HTTP."""

    mirrors: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Registry domain (``docker.io``) → mirror base URLs, tried in order before the registry."""
    insecure: tuple[str, ...] = ()
    """``host[:port]``, ``host`` or CIDR entries that may use HTTP or unverified TLS."""

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, path: Path | None = None
    ) -> RegistryHosts:
        """Read the environment, then the config file (a missing file is an empty one)."""
        env = os.environ if environ is None else environ
        mirrors: dict[str, list[str]] = {}
        insecure: list[str] = _split_list(env.get(ENV_INSECURE, ""))
        for item in _split_list(env.get(ENV_MIRRORS, "")):
            domain, sep, url = item.partition("=")
            if not sep:
                domain, url = DOCKER_HUB_DOMAIN, item
            mirrors.setdefault(canonical_domain(domain), []).append(url)
        file = path if path is not None else config_path(env)
        data = _read_config(file)
        for url in _strings(data.get("registry-mirrors", []), file, "registry-mirrors"):
            mirrors.setdefault(DOCKER_HUB_DOMAIN, []).append(url)
        extra = data.get("mirrors", {})
        if not isinstance(extra, dict):
            raise UsageError(f"{file}: 'mirrors' must map registry names to lists of URLs")
        for domain, urls in extra.items():
            for url in _strings(urls, file, f"mirrors.{domain}"):
                mirrors.setdefault(canonical_domain(str(domain)), []).append(url)
        insecure.extend(_strings(data.get("insecure-registries", []), file, "insecure-registries"))
        hosts = cls({d: tuple(dict.fromkeys(u)) for d, u in mirrors.items()}, tuple(insecure))
        for domain in hosts.mirrors:  # refuse bad mirror URLs now, not on the first pull
            hosts.pull_endpoints(domain)
        return hosts

    def is_insecure(self, host: str) -> bool:
        """Whether ``host[:port]`` may use plain HTTP: loopback, or listed as insecure."""
        if is_loopback(host):
            return True
        name, _ = split_host_port(host)
        for listed in self.insecure:
            entry = listed.strip()
            if "/" in entry and "://" not in entry:  # a CIDR range
                try:
                    if ipaddress.ip_address(name) in ipaddress.ip_network(entry, strict=False):
                        return True
                except ValueError:
                    continue
            elif canonical_domain(entry) in (host, name):
                return True
        return False

    def endpoint(self, domain: str) -> Endpoint:
        """The registry itself (what pushes, logins and the last pull attempt use)."""
        name = canonical_domain(domain)
        host = registry_host(name)
        if is_loopback(host):
            return Endpoint(name, host, ("http", "https"), verify_tls=False)
        if self.is_insecure(host):
            return Endpoint(name, host, ("https", "http"), verify_tls=False)
        return Endpoint(name, host)

    def pull_endpoints(self, domain: str) -> list[Endpoint]:
        """Mirrors of ``domain`` in order, then the registry itself."""
        name = canonical_domain(domain)
        out = [self._mirror(name, url) for url in self.mirrors.get(name, ())]
        out.append(self.endpoint(name))
        return out

    def _mirror(self, name: str, url: str) -> Endpoint:
        text = url if "://" in url else f"https://{url}"
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"mirror {url!r} of {name}: expected https://HOST[:PORT]")
        if parts.path not in ("", "/") or parts.query:
            raise UsageError(
                f"mirror {url!r} of {name}: a mirror URL must not have a path; "
                "use https://HOST[:PORT]"
            )
        host = parts.netloc
        insecure = self.is_insecure(host)
        if parts.scheme == "http" and not insecure:
            raise UsageError(
                f"mirror {url!r} of {name} uses plain HTTP: add {host} to {ENV_INSECURE} "
                "(or insecure-registries) if that is really wanted"
            )
        if parts.scheme == "http":
            return Endpoint(name, host, ("http",), verify_tls=False, mirror=True)
        schemes = ("https", "http") if insecure and "://" not in url else ("https",)
        if "://" not in url and is_loopback(host):
            schemes = ("http", "https")
        return Endpoint(name, host, schemes, verify_tls=not insecure, mirror=True)


def config_path(environ: Mapping[str, str]) -> Path:
    """The registries config file: ``$MINIDOCK_REGISTRIES_CONFIG`` or the XDG default."""
    if environ.get(ENV_CONFIG):
        return Path(environ[ENV_CONFIG])
    xdg = environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path(environ.get("HOME") or Path.home()) / ".config"
    return base / "minidock" / "registries.json"


def _read_config(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise UsageError(f"cannot read the registries config {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise UsageError(f"the registries config {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise UsageError(f"the registries config {path} must hold a JSON object")
    return data


def _strings(value: Any, path: Path, key: str) -> Iterable[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UsageError(f"{path}: {key!r} must be a list of strings")
    return value
