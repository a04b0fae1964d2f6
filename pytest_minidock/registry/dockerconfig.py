"""docker's ``config.json``: read and write logins exactly as the docker CLI does.

The file is ``$DOCKER_CONFIG/config.json`` (default ``~/.docker/config.json``), mode 0600. Logins
live in ``auths``, keyed by ``host[:port]`` (Docker Hub: ``https://index.docker.io/v1/``), each
``{"auth": base64("user:password")}`` plus ``identitytoken`` when the registry gave one. When
``credHelpers[host]`` or ``credsStore`` names a helper, the secret goes to
``docker-credential-<helper>`` instead (``get``/``store``/``erase`` over stdin and stdout) and
``auths`` keeps an empty entry, as docker does. Fields this module does not know are kept.
Written like docker: ``json.MarshalIndent(…, "", "\\t")`` layout, to a temp file renamed over the
old one (a symlinked file is written through), keeping an existing file's mode.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_minidock.registry import failures
from pytest_minidock.registry.auth import Credentials
from pytest_minidock.registry.hosts import DOCKER_HUB_DOMAIN, canonical_domain

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping

__all__ = [
    "DOCKER_HUB_SERVER",
    "ENV_DOCKER_CONFIG",
    "DockerConfig",
    "HelperRunner",
    "config_dir",
    "server_key",
]

DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
"""The key docker files Docker Hub logins under."""
ENV_DOCKER_CONFIG = "DOCKER_CONFIG"
_NOT_FOUND = "credentials not found"
_TOKEN_USER = "<token>"
_HELPER_TIMEOUT = 60.0

HelperRunner = Callable[[str, str, bytes], "subprocess.CompletedProcess[bytes]"]
"""Runs ``docker-credential-HELPER ACTION`` with the bytes as stdin (replaceable in tests)."""


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$DOCKER_CONFIG``, else ``~/.docker``."""
    env = os.environ if environ is None else environ
    if env.get(ENV_DOCKER_CONFIG):
        return Path(env[ENV_DOCKER_CONFIG])
    return Path(env.get("HOME") or Path.home()) / ".docker"


def server_key(registry: str) -> str:
    """The ``auths`` key docker uses for a registry name: Docker Hub's URL, else ``host[:port]``."""
    name = canonical_domain(registry)
    return DOCKER_HUB_SERVER if name == DOCKER_HUB_DOMAIN else name


def _run_helper(helper: str, action: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    import subprocess

    return subprocess.run(
        [f"docker-credential-{helper}", action],
        input=data,
        capture_output=True,
        timeout=_HELPER_TIMEOUT,
        check=False,
    )


def _subprocess_error() -> type[Exception]:
    import subprocess

    return subprocess.SubprocessError


def _encode_auth(username: str, password: str) -> str:
    return base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def _decode_auth(text: str, path: Path, key: str) -> tuple[str, str]:
    try:
        raw = base64.b64decode(text, validate=False).decode()
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise failures.config_failed(str(path), f"auths[{key!r}].auth is not base64") from exc
    user, sep, password = raw.partition(":")
    if not sep:
        raise failures.config_failed(str(path), f"auths[{key!r}].auth is not 'user:password'")
    return user, password


class DockerConfig:
    """One ``config.json``: look credentials up (``get``, or call it), ``store``, ``erase``."""

    def __init__(
        self,
        path: Path,
        data: dict[str, Any] | None = None,
        *,
        run_helper: HelperRunner | None = None,
    ) -> None:
        self.path = path
        self.data: dict[str, Any] = data if data is not None else {}
        self._run = run_helper or _run_helper

    @classmethod
    def load(
        cls,
        directory: Path | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        run_helper: HelperRunner | None = None,
    ) -> DockerConfig:
        """Read ``config.json`` from ``directory`` (default ``config_dir()``); missing is empty."""
        path = (directory if directory is not None else config_dir(environ)) / "config.json"
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls(path, {}, run_helper=run_helper)
        except OSError as exc:
            raise failures.config_failed(str(path), exc.strerror or str(exc)) from exc
        if not text.strip():
            return cls(path, {}, run_helper=run_helper)
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise failures.config_failed(str(path), f"not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise failures.config_failed(str(path), "not a JSON object")
        return cls(path, data, run_helper=run_helper)

    # -- lookups -------------------------------------------------------------------------------
    @property
    def auths(self) -> dict[str, Any]:
        auths = self.data.get("auths")
        if not isinstance(auths, dict):
            auths = {}
            self.data["auths"] = auths
        return auths

    def helper(self, registry: str) -> str | None:
        """The credential helper for ``registry`` (``credHelpers``, then ``credsStore``)."""
        key = server_key(registry)
        helpers = self.data.get("credHelpers")
        if isinstance(helpers, dict):
            for name in (key, canonical_domain(registry)):
                found = helpers.get(name)
                if isinstance(found, str) and found:
                    return found
        store = self.data.get("credsStore")
        return store if isinstance(store, str) and store else None

    def _entry(self, key: str) -> tuple[str, dict[str, Any]] | None:
        auths = self.auths
        entry = auths.get(key)
        if isinstance(entry, dict):
            return key, entry
        wanted = canonical_domain(key)
        for name, value in auths.items():  # legacy keys: "https://host/v1/", "http://host"
            if isinstance(value, dict) and canonical_domain(name) == wanted:
                return name, value
        return None

    def get(self, registry: str) -> Credentials | None:
        """The stored login for ``registry``, or None."""
        key = server_key(registry)
        helper = self.helper(registry)
        if helper is not None:
            found = self._helper_get(helper, key)
            if found is not None:
                return found
        hit = self._entry(key)
        if hit is None:
            return None
        name, entry = hit
        username, password = "", ""
        if isinstance(entry.get("auth"), str) and entry["auth"]:
            username, password = _decode_auth(entry["auth"], self.path, name)
        elif isinstance(entry.get("username"), str):
            username = entry["username"]
            password = entry.get("password", "") if isinstance(entry.get("password"), str) else ""
        identity = entry.get("identitytoken", "")
        registry_token = entry.get("registrytoken", "")
        creds = Credentials(
            username=username,
            password=password,
            identity_token=identity if isinstance(identity, str) else "",
            registry_token=registry_token if isinstance(registry_token, str) else "",
        )
        return None if creds.anonymous else creds

    __call__ = get

    def _helper_get(self, helper: str, key: str) -> Credentials | None:
        try:
            proc = self._run(helper, "get", key.encode())
        except FileNotFoundError:
            return None  # not installed: fall back to the file (the registry will say if needed)
        except (OSError, _subprocess_error()) as exc:
            raise failures.helper_failed(helper, "read", key, f"could not run: {exc}") from exc
        out = proc.stdout.decode(errors="replace").strip()
        if proc.returncode != 0:
            if _NOT_FOUND in out.lower() or _NOT_FOUND in proc.stderr.decode(errors="replace"):
                return None
            message = out or proc.stderr.decode(errors="replace").strip()
            raise failures.helper_failed(
                helper, "read", key, f"failed (exit {proc.returncode}: {message})"
            )
        try:
            obj = json.loads(out)
        except ValueError as exc:
            raise failures.helper_failed(helper, "read", key, "printed no JSON") from exc
        if not isinstance(obj, dict):
            raise failures.helper_failed(helper, "read", key, "printed no JSON object")
        user = obj.get("Username", "")
        secret = obj.get("Secret", "")
        if not isinstance(user, str) or not isinstance(secret, str):
            raise failures.helper_failed(helper, "read", key, "printed a malformed answer")
        if user == _TOKEN_USER:
            return Credentials(identity_token=secret)
        creds = Credentials(username=user, password=secret)
        return None if creds.anonymous else creds

    # -- changes -------------------------------------------------------------------------------
    def store(self, registry: str, creds: Credentials) -> str:
        """Record a login, in the helper if one is configured; return where it went."""
        key = server_key(registry)
        helper = self.helper(registry)
        hit = self._entry(key)
        if hit is not None and hit[0] != key:
            del self.auths[hit[0]]
        if helper is not None:
            username = _TOKEN_USER if creds.identity_token else creds.username
            secret = creds.identity_token or creds.password
            payload = json.dumps({"ServerURL": key, "Username": username, "Secret": secret})
            self._helper_call(helper, "store", key, payload.encode())
            self.auths[key] = {}
            self.save()
            return f"docker-credential-{helper}"
        entry: dict[str, Any] = {"auth": _encode_auth(creds.username, creds.password)}
        if creds.identity_token:
            entry["identitytoken"] = creds.identity_token
        self.auths[key] = entry
        self.save()
        return str(self.path)

    def erase(self, registry: str) -> bool:
        """Forget the login for ``registry``; False if there was none."""
        key = server_key(registry)
        helper = self.helper(registry)
        removed = False
        for name in [n for n in self.auths if canonical_domain(n) == canonical_domain(key)]:
            del self.auths[name]
            removed = True
        if helper is not None:
            with contextlib.suppress(FileNotFoundError):
                proc = self._run(helper, "erase", key.encode())
                if proc.returncode == 0:
                    removed = True
        if removed:
            self.save()
        return removed

    def _helper_call(self, helper: str, action: str, key: str, data: bytes) -> None:
        try:
            proc = self._run(helper, action, data)
        except FileNotFoundError as exc:
            raise failures.helper_failed(helper, action, key, "is not installed") from exc
        except (OSError, _subprocess_error()) as exc:
            raise failures.helper_failed(helper, action, key, f"could not run: {exc}") from exc
        if proc.returncode != 0:
            message = (proc.stdout or proc.stderr).decode(errors="replace").strip()
            raise failures.helper_failed(
                helper, action, key, f"failed (exit {proc.returncode}: {message})"
            )

    def to_json(self) -> bytes:
        """The file's bytes, laid out as docker's ``json.MarshalIndent(cfg, "", "\\t")``."""
        out: dict[str, Any] = {"auths": {}}
        for key in sorted(self.auths):
            entry = self.auths[key]
            if not isinstance(entry, dict):
                continue
            ordered = {
                k: entry[k]
                for k in ("auth", "email", "identitytoken", "registrytoken")
                if entry.get(k)
            }
            out["auths"][key] = ordered
        for key, value in self.data.items():
            if key != "auths":
                out[key] = value
        return json.dumps(out, indent="\t", ensure_ascii=False).encode()

    def save(self) -> None:
        """Write the file atomically: 0600 when new, an existing file keeps its mode."""
        target = Path(os.path.realpath(self.path))
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                st: os.stat_result | None = target.stat()
            except FileNotFoundError:
                st = None
            import tempfile

            fd, tmp = tempfile.mkstemp(prefix=target.name, dir=target.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(self.to_json())
                    f.flush()
                    os.fsync(f.fileno())
                if st is not None:
                    os.chmod(tmp, st.st_mode & 0o7777)
                    with contextlib.suppress(PermissionError):
                        os.chown(tmp, st.st_uid, st.st_gid)
                os.replace(tmp, target)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise failures.config_failed(str(self.path), exc.strerror or str(exc)) from exc
