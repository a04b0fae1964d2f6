"""The one place where registry failures become ``RegistryError`` subclasses.

HTTP statuses (``status_error``), exceptions from sockets, TLS and the transport's HTTP parsing
(``connection_error``; ``http.client``'s too, for transports built on it) and content that is not
what was asked for (``bad_digest``, ``bad_size``, ``bad_content``) are translated here, and only
here, into errors whose messages name the registry and the reference and say what to do next.
Whether a failure is worth retrying is decided here too (``retryable_status``,
``retryable_exception``).
"""

from __future__ import annotations

import json
import socket
import sys
from typing import TYPE_CHECKING

from pytest_minidock._record import dataclass, replace
from pytest_minidock.errors import (
    RegistryAuthError,
    RegistryBadContent,
    RegistryDenied,
    RegistryError,
    RegistryNotFound,
    RegistryRateLimited,
    RegistryServerError,
    RegistryUnreachable,
)
from pytest_minidock.registry.transport import (
    IncompleteRead,
    ProtocolError,
    RemoteDisconnected,
    network_errors,
)

if TYPE_CHECKING:
    from pytest_minidock.digest import Digest

__all__ = [
    "ENV_TIMEOUT",
    "Context",
    "bad_content",
    "bad_digest",
    "bad_size",
    "config_failed",
    "connection_error",
    "error_detail",
    "helper_failed",
    "is_instance",
    "no_platform",
    "retryable_exception",
    "retryable_status",
    "status_error",
    "transient",
]

ENV_TIMEOUT = "MINIDOCK_REGISTRY_TIMEOUT"
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_INSECURE_HINT = "MINIDOCK_INSECURE_REGISTRIES"


@dataclass(frozen=True, slots=True)
class Context:
    """What was being done, for the messages: ``cannot {action} {what} of {reference}``."""

    registry: str
    """The registry host as the user knows it (with the mirror it stands in for, if any)."""
    reference: str
    """The image reference (or repository) the operation is about."""
    action: str = "pull"
    """A verb phrase: ``pull``, ``push``, ``download``, ``upload``, ``log in to``."""
    what: str = ""
    """The object, when it is not the whole image: ``manifest``, ``layer sha256:0123456789ab``."""
    login: str = ""
    """The argument to give ``minidock login`` for this registry (empty: Docker Hub)."""

    def doing(self, action: str, what: str = "") -> Context:
        """The same registry and reference, another action."""
        return replace(self, action=action, what=what)

    @property
    def prefix(self) -> str:
        subject = f"{self.what} of {self.reference}" if self.what else self.reference
        return f"cannot {self.action} {subject}"

    @property
    def login_command(self) -> str:
        return f"minidock login {self.login}".rstrip()


def is_instance(exc: BaseException, module: str, *names: str) -> bool:
    """Whether ``exc`` is one of the named classes of ``module``, without importing it: an
    exception of a module that was never imported cannot have been raised."""
    loaded = sys.modules.get(module)
    return loaded is not None and isinstance(exc, tuple(getattr(loaded, n) for n in names))


def retryable_status(status: int) -> bool:
    """Statuses that may go away by themselves: 408, 425, 429 and 5xx gateway/overload errors."""
    return status in _RETRY_STATUSES


def transient(exc: RegistryError) -> bool:
    """Whether a whole operation (an upload) is worth starting again after ``exc``."""
    return isinstance(exc, RegistryUnreachable | RegistryServerError | RegistryRateLimited)


def retryable_exception(exc: BaseException) -> bool:
    """Connection failures worth another attempt (not certificate or name-resolution errors)."""
    if is_instance(exc, "ssl", "SSLCertVerificationError"):
        return False
    if isinstance(exc, socket.gaierror):
        return exc.errno == socket.EAI_AGAIN
    return isinstance(exc, network_errors())


def error_detail(body: bytes, content_type: str | None = None) -> str:
    """The registry's explanation from an error body (distribution's ``errors`` JSON or text)."""
    if not body:
        return ""
    text = ""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        obj = None
    if isinstance(obj, dict) and isinstance(obj.get("errors"), list):
        parts = []
        for err in obj["errors"][:3]:
            if isinstance(err, dict):
                code, message = err.get("code", ""), err.get("message", "")
                parts.append(": ".join(str(p) for p in (code, message) if p))
        text = "; ".join(p for p in parts if p)
    elif isinstance(obj, dict) and isinstance(obj.get("details") or obj.get("error"), str):
        text = str(obj.get("details") or obj.get("error"))
    elif content_type is None or content_type.startswith("text/"):
        text = body[:400].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text[:300]


def status_error(
    ctx: Context,
    status: int,
    reason: str = "",
    *,
    detail: str = "",
    attempts: int = 1,
    credentials_sent: bool = False,
    retry_after: str | None = None,
    insufficient_scope: bool = False,
) -> RegistryError:
    """The error for a final, unwanted HTTP status.

    ``insufficient_scope``: the 401's challenge says the token lacks the rights (a token
    registry's way of saying 403).
    """
    shown = f"{status} {reason}".strip() + (f": {detail}" if detail else "")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    if status == 401 and insufficient_scope and credentials_sent:
        status = 403
    if status == 401:
        if credentials_sent:
            return RegistryAuthError(
                f"{ctx.prefix}: {ctx.registry} rejected the credentials ({shown}); run "
                f"'{ctx.login_command}' with a valid user name and password or token"
            )
        return RegistryAuthError(
            f"{ctx.prefix}: {ctx.registry} requires authentication ({shown}); log in with "
            f"'{ctx.login_command}' (docker logins are used too)"
        )
    if status == 403:
        return RegistryDenied(
            f"{ctx.prefix}: {ctx.registry} denied access ({shown}); check that the account you "
            f"logged in with ('{ctx.login_command}') may {ctx.action} this repository"
        )
    if status == 404:
        return RegistryNotFound(
            f"{ctx.prefix}: not found on {ctx.registry} ({shown}); check the repository name and "
            f"tag (a private repository also needs '{ctx.login_command}')"
        )
    if status == 429:
        wait = f", it asked to wait {retry_after}s" if retry_after else ""
        return RegistryRateLimited(
            f"{ctx.prefix}: {ctx.registry} is rate-limiting requests ({shown}){tries}{wait}; "
            "wait a while, log in for a higher limit, or use a mirror "
            "(MINIDOCK_REGISTRY_MIRRORS)"
        )
    if status >= 500:
        return RegistryServerError(
            f"{ctx.prefix}: {ctx.registry} failed ({shown}){tries}; the registry has a problem, "
            "try again later"
        )
    return RegistryError(
        f"{ctx.prefix}: {ctx.registry} answered {shown}{tries}; this client did not expect that "
        "status (is it a registry implementing the OCI distribution API?)"
    )


def _reason(exc: BaseException, attribute: str) -> str:
    return str(getattr(exc, attribute, None) or exc)


def connection_error(
    ctx: Context, exc: BaseException, *, attempts: int = 1, timeout: float | None = None
) -> RegistryError:
    """The error for a failed connection, request or response body (``raise … from exc``)."""
    tries = f" ({attempts} attempts)" if attempts > 1 else ""
    where = ctx.registry
    if isinstance(exc, RegistryError):
        return exc
    if isinstance(exc, TimeoutError | socket.timeout):
        limit = f" within {timeout:g}s" if timeout else ""
        return RegistryUnreachable(
            f"{ctx.prefix}: {where} did not answer{limit}{tries}; check the network and that the "
            f"registry is healthy, or allow more time with {ENV_TIMEOUT}=SECONDS"
        )
    if isinstance(exc, ConnectionRefusedError):
        return RegistryUnreachable(
            f"{ctx.prefix}: connection to {where} refused{tries}; is the registry running, and "
            "are the host and port right?"
        )
    if isinstance(exc, socket.gaierror):
        return RegistryUnreachable(
            f"{ctx.prefix}: cannot resolve {where} ({exc.strerror}); check the registry's name "
            "and the DNS configuration"
        )
    if is_instance(exc, "ssl", "SSLCertVerificationError"):
        return RegistryUnreachable(
            f"{ctx.prefix}: the TLS certificate of {where} is not trusted "
            f"({_reason(exc, 'verify_message')}); install its CA certificate in the system "
            f"store, or list the registry in {_INSECURE_HINT}"
        )
    if is_instance(exc, "ssl", "SSLError"):
        return RegistryUnreachable(
            f"{ctx.prefix}: TLS with {where} failed ({_reason(exc, 'reason')}){tries}; if it "
            f"serves plain HTTP, list it in {_INSECURE_HINT}"
        )
    if isinstance(exc, IncompleteRead) or is_instance(exc, "http.client", "IncompleteRead"):
        partial: bytes = getattr(exc, "partial", b"")
        due: int | None = getattr(exc, "expected", None)
        expected = f" of {len(partial) + due}" if due is not None else ""
        return RegistryUnreachable(
            f"{ctx.prefix}: the connection to {where} broke after {len(partial)}{expected} "
            f"bytes{tries}; check the network and try again"
        )
    if isinstance(exc, RemoteDisconnected | ConnectionResetError | BrokenPipeError) or is_instance(
        exc, "http.client", "RemoteDisconnected"
    ):
        return RegistryUnreachable(
            f"{ctx.prefix}: {where} closed the connection{tries}; check the network and the "
            "registry's health, then try again"
        )
    if isinstance(exc, ProtocolError) or is_instance(exc, "http.client", "HTTPException"):
        return RegistryBadContent(
            f"{ctx.prefix}: {where} sent a malformed HTTP response ({type(exc).__name__}: "
            f"{exc}); is it really a registry?"
        )
    if isinstance(exc, OSError):
        return RegistryUnreachable(
            f"{ctx.prefix}: talking to {where} failed: {exc.strerror or exc}{tries}; check the "
            "network and try again"
        )
    return RegistryError(f"{ctx.prefix}: {where}: {exc}")


def bad_digest(ctx: Context, expected: Digest, got: Digest) -> RegistryBadContent:
    """Content that does not hash to the digest it was asked for."""
    return RegistryBadContent(
        f"{ctx.prefix}: {ctx.registry} sent content that hashes to {got}, not {expected}; "
        "nothing was stored. The registry's copy may be corrupt or something on the way altered "
        "it: try again, or push the image again"
    )


def bad_size(ctx: Context, expected: int, got: int) -> RegistryBadContent:
    """Content longer or shorter than its descriptor says."""
    return RegistryBadContent(
        f"{ctx.prefix}: {ctx.registry} sent {'more than ' if got > expected else ''}{got} bytes "
        f"where the manifest says {expected}; nothing was stored. The registry's copy may be "
        "corrupt: try again, or push the image again"
    )


def no_platform(ctx: Context, wanted: str, offered: list[str]) -> RegistryNotFound:
    """An image with no manifest for the platform asked for."""
    have = ", ".join(offered) if offered else "no runnable platform"
    return RegistryNotFound(
        f"{ctx.prefix}: {ctx.registry} has no manifest for {wanted} (it offers {have}); "
        "choose one of those with --platform"
    )


def bad_content(ctx: Context, problem: str, hint: str = "") -> RegistryBadContent:
    """A response that cannot be used (malformed or unsupported manifest, bad header)."""
    return RegistryBadContent(
        f"{ctx.prefix}: {ctx.registry} {problem}" + (f"; {hint}" if hint else "")
    )


def helper_failed(helper: str, action: str, registry: str, detail: str) -> RegistryAuthError:
    """A ``docker-credential-*`` helper that is missing, failed or answered nonsense."""
    return RegistryAuthError(
        f"cannot {action} the credentials for {registry}: the credential helper "
        f"docker-credential-{helper} {detail}; fix or install the helper, or remove it from "
        "credsStore/credHelpers in docker's config.json"
    )


def config_failed(path: str, problem: str) -> RegistryAuthError:
    """docker's ``config.json`` cannot be read or written."""
    return RegistryAuthError(
        f"cannot use docker's credentials file {path}: {problem}; fix or remove it "
        "(DOCKER_CONFIG chooses another directory)"
    )
