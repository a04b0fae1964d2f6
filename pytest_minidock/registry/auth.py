"""Registry authentication: ``WWW-Authenticate`` challenges, bearer tokens and basic auth.

The flow is docker's: a request without credentials gets ``401`` with a challenge. ``Basic``
means: send the user name and password with every request to that host. ``Bearer realm=…,
service=…,scope=…`` means: ask the token service at ``realm`` for a token covering the scopes
(``repository:library/redis:pull``), anonymously or with the user's credentials, and send it as
``Authorization: Bearer``. Tokens are cached per realm, service and scopes until shortly before
they expire; a ``401`` on a request that carried one drops it and fetches a new one once.

``Credentials`` come from a ``CredentialSource``: any callable from a registry name
(``docker.io``, ``127.0.0.1:5000``) to ``Credentials`` or None. The default reads
``~/.docker/config.json`` (``dockerconfig``); the pytest plugin chains its hook in front.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pytest_minidock._record import dataclass, field

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "Authenticator",
    "Challenge",
    "CredentialSource",
    "Credentials",
    "Token",
    "chain",
    "parse_challenges",
    "parse_token_response",
    "repository_scope",
]

_TOKEN_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
)
MIN_TOKEN_LIFETIME = 60.0
"""Seconds a token is assumed to live when the token service does not say (as docker does)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a user logged in with. ``repr`` never shows the secrets."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)
    """docker's ``identitytoken``: an OAuth2 refresh token exchanged for access tokens."""
    registry_token: str = field(default="", repr=False)
    """docker's ``registrytoken``: a bearer token sent as it is."""

    @property
    def anonymous(self) -> bool:
        return not (self.username or self.password or self.identity_token or self.registry_token)

    def basic(self) -> str:
        """The ``Authorization`` value for basic auth."""
        raw = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


CredentialSource = Callable[[str], "Credentials | None"]
"""Credentials for a registry name (``docker.io``, ``ghcr.io``, ``127.0.0.1:5000``), or None."""


def chain(*sources: CredentialSource | None) -> CredentialSource:
    """A source that asks each of ``sources`` in turn and returns the first answer."""
    present = [s for s in sources if s is not None]

    def lookup(registry: str) -> Credentials | None:
        for source in present:
            found = source(registry)
            if found is not None:
                return found
        return None

    return lookup


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge of a ``WWW-Authenticate`` header: a scheme and its parameters."""

    scheme: str
    """Lower-case: ``bearer`` or ``basic`` (others are kept but not answered)."""
    params: Mapping[str, str] = field(default_factory=dict)
    """Parameter names in lower case, values unquoted."""

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")

    @property
    def service(self) -> str:
        return self.params.get("service", "")

    @property
    def scopes(self) -> tuple[str, ...]:
        return tuple(self.params.get("scope", "").split())


def _skip_space(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _token(text: str, i: int) -> tuple[str, int]:
    start = i
    while i < len(text) and text[i] in _TOKEN_CHARS:
        i += 1
    return text[start:i], i


def _quoted(text: str, i: int) -> tuple[str, int]:
    """Read a quoted string starting at the opening quote; return (value, index after it)."""
    out = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out), i + 1
        out.append(c)
        i += 1
    return "".join(out), i


def parse_challenges(header: str | None) -> list[Challenge]:
    """Every challenge in a ``WWW-Authenticate`` value (RFC 7235), in order.

    ``Bearer realm="https://auth.example/token",service="registry.example",scope="a b"`` gives
    one ``Challenge("bearer", {...})``; several challenges may share one header.
    """
    if not header:
        return []
    text, n = header, len(header)
    out: list[Challenge] = []
    i = 0
    while i < n:
        while i < n and text[i] in ", \t":
            i += 1
        scheme, i = _token(text, i)
        if not scheme:
            i += 1  # not a token character: skip it
            continue
        params: dict[str, str] = {}
        while True:
            i = _skip_space(text, i)
            name, j = _token(text, i)
            j = _skip_space(text, j)
            if not name or j >= n or text[j] != "=":
                break  # the end, or the scheme of the next challenge (i stays on it)
            j = _skip_space(text, j + 1)
            if j < n and text[j] == '"':
                value, j = _quoted(text, j)
            else:
                start = j
                while j < n and text[j] not in ", \t":
                    j += 1
                value = text[start:j]
            params[name.lower()] = value
            i = _skip_space(text, j)
            if i < n and text[i] == ",":
                i += 1
                continue
            break
        out.append(Challenge(scheme.lower(), params))
    return out


def repository_scope(path: str, actions: Sequence[str]) -> str:
    """``repository:library/redis:pull,push``."""
    return f"repository:{path}:{','.join(actions)}"


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token and the monotonic time after which it is not used any more."""

    value: str = field(repr=False)
    expires: float
    refresh_token: str = field(default="", repr=False)

    def valid(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.expires


def parse_token_response(body: bytes, *, now: float | None = None) -> Token:
    """A token service's JSON answer (``token`` or ``access_token``, ``expires_in``).

    Raises ``ValueError`` when there is no token in it.
    """
    obj: Any = json.loads(body)
    if not isinstance(obj, dict):
        raise ValueError("the token service's answer is not a JSON object")
    value = obj.get("token") or obj.get("access_token")
    if not isinstance(value, str) or not value:
        raise ValueError("the token service's answer holds no token")
    lifetime = obj.get("expires_in")
    seconds = (
        float(lifetime)
        if isinstance(lifetime, int | float) and not isinstance(lifetime, bool)
        else 0.0
    )
    seconds = max(seconds, MIN_TOKEN_LIFETIME)
    current = time.monotonic() if now is None else now
    refresh = obj.get("refresh_token")
    return Token(value, current + seconds * 0.9, refresh if isinstance(refresh, str) else "")


TokenFetcher = Callable[[Challenge, tuple[str, ...], "Credentials | None"], Token]
"""Asks a challenge's token service for a token covering the scopes (``session`` provides it)."""


class Authenticator:
    """The ``Authorization`` header for one registry's requests; thread-safe.

    Knows nothing of HTTP: the session reports challenges (``unauthorized``) and asks for headers
    (``authorization``); token requests go through the ``fetch`` callable.
    """

    def __init__(self, credentials: Credentials | None, fetch: TokenFetcher) -> None:
        self.credentials = None if credentials is None or credentials.anonymous else credentials
        self._fetch = fetch
        self._challenge: Challenge | None = None
        self._tokens: dict[tuple[str, str, tuple[str, ...]], Token] = {}
        self._lock = threading.Lock()

    @property
    def challenge(self) -> Challenge | None:
        return self._challenge

    def authorization(self, scopes: tuple[str, ...]) -> str | None:
        """The header value to send for ``scopes``, fetching a token if needed; None: send none."""
        challenge = self._challenge
        creds = self.credentials
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return creds.basic() if creds is not None and creds.username else None
        if challenge.scheme != "bearer":
            return None
        if creds is not None and creds.registry_token:
            return f"Bearer {creds.registry_token}"
        key = (challenge.realm, challenge.service, tuple(sorted(set(scopes))))
        with self._lock:
            token = self._tokens.get(key)
        if token is None or not token.valid():
            token = self._fetch(challenge, key[2], creds)
            with self._lock:
                self._tokens[key] = token
        return f"Bearer {token.value}"

    def set_credentials(self, credentials: Credentials | None) -> None:
        """Use these credentials from now on (cached tokens are dropped if they changed)."""
        creds = None if credentials is None or credentials.anonymous else credentials
        with self._lock:
            if creds != self.credentials:
                self.credentials = creds
                self._tokens.clear()

    def unauthorized(
        self, header: str | None, scopes: tuple[str, ...], sent: str | None = None
    ) -> tuple[str, ...] | None:
        """Learn from a ``401``'s challenge; return the scopes to retry with, or None: don't.

        ``sent`` is the ``Authorization`` the refused request carried: a token that was refused
        is dropped, and basic credentials that were refused are not sent again.
        """
        challenges = parse_challenges(header)
        chosen = next((c for c in challenges if c.scheme == "bearer"), None) or next(
            (c for c in challenges if c.scheme == "basic"), None
        )
        if chosen is None:
            return None
        with self._lock:
            self._challenge = chosen
            if chosen.scheme == "bearer":
                for key, token in list(self._tokens.items()):
                    if sent is not None and sent == f"Bearer {token.value}":
                        del self._tokens[key]
                return tuple(sorted(set(scopes) | set(chosen.scopes)))
        creds = self.credentials
        if creds is not None and creds.username and sent != creds.basic():
            return scopes
        return None
