"""Requests to one registry: authentication, scheme fallback, redirects, retries, error mapping.

A ``Session`` belongs to one ``Endpoint`` (a registry or a mirror) and is shared by the threads
of a transfer. For each request it adds the ``Authorization`` the ``Authenticator`` gives for the
request's scopes, follows redirects (blob downloads are often redirected to storage on another
host, and credentials are then dropped: they are never sent to a host other than the registry),
answers one ``401`` by authenticating and retrying, retries 408/429/5xx and broken connections as
the ``RetryPolicy`` says (honouring ``Retry-After``), and turns the final failure into a
``RegistryError`` through ``failures``. Loopback registries are spoken to over plain HTTP first
(falling back to HTTPS when the server turns out to speak TLS), registries listed as insecure over
HTTPS first (falling back to HTTP when the TLS handshake fails); the first answer pins the scheme.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import urlencode, urljoin, urlsplit

from pytest_minidock import __version__
from pytest_minidock.registry import failures
from pytest_minidock.registry.auth import Authenticator, parse_token_response
from pytest_minidock.registry.hosts import DOCKER_HUB_DOMAIN
from pytest_minidock.registry.transport import (
    ProtocolError,
    RemoteDisconnected,
    drain,
    network_errors,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Container, Mapping

    from pytest_minidock.registry.auth import Challenge, Credentials, Token
    from pytest_minidock.registry.hosts import Endpoint, RegistryHosts
    from pytest_minidock.registry.policy import RetryPolicy
    from pytest_minidock.registry.transport import Body, Response, Transport

__all__ = ["USER_AGENT", "Session", "login_name"]

USER_AGENT = f"minidock/{__version__} python/{sys.version_info[0]}.{sys.version_info[1]}"
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


def login_name(endpoint: Endpoint) -> str:
    """What to give ``minidock login`` for an endpoint (nothing for Docker Hub)."""
    if endpoint.mirror:
        return endpoint.host
    return "" if endpoint.name == DOCKER_HUB_DOMAIN else endpoint.name


def _origin(url: str) -> str:
    return urlsplit(url).netloc.lower()


class Session:
    """Requests to ``endpoint``; thread-safe."""

    def __init__(
        self,
        transport: Transport,
        endpoint: Endpoint,
        *,
        credentials: Callable[[], Credentials | None],
        policy: RetryPolicy,
        hosts: RegistryHosts,
        timeout: float,
        sleep: Callable[[float], None] = time.sleep,
        schemes: dict[str, str] | None = None,
    ) -> None:
        self.transport = transport
        self.endpoint = endpoint
        self.policy = policy
        self.hosts = hosts
        self.timeout = timeout
        self.sleep = sleep
        self._lookup = credentials
        self._looked_up = False
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._schemes = schemes if schemes is not None else {}
        self.auth = Authenticator(None, self._fetch_token)

    # -- credentials, looked up on the first challenge only ---------------------------------
    def credentials(self, *, refresh: bool = False) -> Credentials | None:
        """The credentials for this registry: looked up on the first challenge, and again
        after each ``401`` (the user may have logged in meanwhile)."""
        with self._lock:
            if refresh or not self._looked_up:
                self._looked_up = True
                self.auth.set_credentials(self._lookup())
            return self.auth.credentials

    @property
    def scheme(self) -> str:
        return self._schemes.get(self.endpoint.host, self.endpoint.schemes[0])

    def url(self, path: str) -> str:
        """An absolute URL for a ``/v2/…`` path (absolute URLs, e.g. upload locations, pass)."""
        if path.startswith(("http://", "https://")):
            return path
        return self.endpoint.url(self.scheme, path)

    # -- requests ------------------------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        ctx: failures.Context,
        *,
        scopes: tuple[str, ...] = (),
        headers: Mapping[str, str] | None = None,
        body: Body = None,
        expect: Container[int] = (200,),
        retry: bool = True,
    ) -> Response:
        """Send a request to the registry; return the response if its status is in ``expect``.

        Anything else raises the ``RegistryError`` for it, after the retries ``retry`` allows.
        """
        attempts = 0
        reauthenticated = False
        if len(self.endpoint.schemes) > 1 and self.endpoint.host not in self._schemes:
            self._probe()
        # only a path follows a change of scheme (absolute URLs, e.g. upload locations, stay)
        relative = not path.startswith(("http://", "https://"))
        while True:
            url = self.url(path)
            sent = {"User-Agent": USER_AGENT, **(headers or {})}
            authorization = None
            if _origin(url) == self.endpoint.host.lower():
                if self.auth.challenge is not None:
                    self.credentials()
                authorization = self.auth.authorization(scopes)
                if authorization is not None:
                    sent["Authorization"] = authorization
            attempts += 1
            try:
                response = self._follow(method, url, sent, body, ctx)
            except network_errors() as exc:
                if relative and self._switch_scheme(url, exc):
                    attempts -= 1
                    continue
                delay = (
                    self.policy.delay(attempts)
                    if retry and failures.retryable_exception(exc)
                    else None
                )
                if delay is None:
                    raise failures.connection_error(
                        ctx, exc, attempts=attempts, timeout=self.timeout
                    ) from exc
                self.sleep(delay)
                continue
            if relative and not self._settled(url, response, ctx):
                attempts -= 1
                continue
            if response.status in expect:
                return response
            if response.status == 401 and not reauthenticated:
                self.credentials(refresh=True)
                wanted = self.auth.unauthorized(
                    response.header("WWW-Authenticate"), scopes, authorization
                )
                if wanted is not None:
                    drain(response)
                    reauthenticated = True
                    scopes = wanted
                    attempts -= 1
                    continue
            content_type = response.header("Content-Type")
            retry_after = response.header("Retry-After")
            challenge = response.header("WWW-Authenticate") or ""
            detail = failures.error_detail(drain(response), content_type)
            if retry and failures.retryable_status(response.status):
                delay = self.policy.delay(attempts, retry_after)
                if delay is not None:
                    self.sleep(delay)
                    continue
            creds = self.auth.credentials
            raise failures.status_error(
                ctx,
                response.status,
                response.reason,
                detail=detail,
                attempts=attempts,
                credentials_sent=authorization is not None and creds is not None,
                retry_after=retry_after,
                insufficient_scope="insufficient_scope" in challenge,
            )

    def _verify(self, url: str) -> bool:
        netloc = _origin(url)
        if netloc == self.endpoint.host.lower():
            return self.endpoint.verify_tls
        return not self.hosts.is_insecure(netloc)

    def _follow(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: Body,
        ctx: failures.Context,
    ) -> Response:
        """Send, following redirects; credentials are dropped once the host changes."""
        for _ in range(MAX_REDIRECTS + 1):
            response = self.transport.request(
                method, url, headers, body, verify_tls=self._verify(url)
            )
            location = response.header("Location") if response.status in _REDIRECTS else None
            if not location:
                return response
            drain(response)
            target = urljoin(url, location)
            scheme = urlsplit(target).scheme
            if scheme not in ("http", "https") or (
                scheme == "http" and not self.hosts.is_insecure(_origin(target))
            ):
                raise failures.bad_content(
                    ctx,
                    f"redirected to {target.split('?')[0]}, which is not an HTTPS URL",
                    "a registry must not send clients to plain HTTP",
                )
            if _origin(target) != _origin(url):
                headers = {k: v for k, v in headers.items() if k.lower() not in _SECRET_HEADERS}
            if response.status == 303 or (response.status in (301, 302) and method == "POST"):
                method, body = "GET", None
            url = target
        raise failures.bad_content(
            ctx, f"redirected more than {MAX_REDIRECTS} times", "the registry is misconfigured"
        )

    def _either(self, url: str) -> bool:
        """Whether ``url`` goes to an endpoint that may use either scheme."""
        return len(self.endpoint.schemes) > 1 and _origin(url) == self.endpoint.host.lower()

    def _probe(self) -> None:
        """Find out which scheme an endpoint that may use either speaks, with ``GET /v2/`` as
        docker pings: the first that gives an HTTP answer (other than a TLS server's ``400`` to
        plain HTTP) is pinned. Failures settle nothing: the request itself then meets them, with
        its retries and error messages."""
        with self._probe_lock:
            if self.endpoint.host in self._schemes:
                return
            for scheme in self.endpoint.schemes:
                url = self.endpoint.url(scheme, "/v2/")
                try:
                    response = self.transport.request(
                        "GET", url, {"User-Agent": USER_AGENT}, verify_tls=self._verify(url)
                    )
                except network_errors() as exc:
                    if self._speaks_other(scheme, exc):
                        continue
                    return
                text = drain(response, 4096)
                if scheme == "http" and response.status == 400 and b"HTTPS" in text.upper():
                    continue
                self._use(scheme)
                return

    def _use(self, scheme: str) -> None:
        self._schemes[self.endpoint.host] = scheme

    def _settled(self, url: str, response: Response, ctx: failures.Context) -> bool:
        """Pin the scheme the first answer came over. False (the response consumed): send the
        request again, because a TLS server answered plain HTTP with its ``400`` ("an HTTP
        request to an HTTPS server"), or because another thread has meanwhile pinned the other
        scheme."""
        if not self._either(url):
            return True
        scheme = urlsplit(url).scheme
        pinned = self._schemes.get(self.endpoint.host)
        if pinned is not None and pinned != scheme:
            drain(response)
            return False
        if pinned is not None:
            return True
        if scheme == "http" and response.status == 400 and "https" in self.endpoint.schemes:
            text = drain(response, 4096)
            if b"HTTPS" in text.upper():
                self._use("https")
                return False
            self._use(scheme)
            raise failures.status_error(
                ctx,
                400,
                response.reason,
                detail=failures.error_detail(text, response.header("Content-Type")),
            )
        self._use(scheme)
        return True

    def _switch_scheme(self, url: str, exc: BaseException) -> bool:
        """For a loopback or insecure registry whose first exchange failed in a way that says
        it speaks the other protocol (a TLS handshake refused, a connection reset, a status line
        that is not HTTP): use the other scheme from now on. Loopback registries are tried over
        plain HTTP first (no ``ssl`` to load, nothing leaves the machine), others over HTTPS."""
        if not self._either(url):
            return False
        scheme = urlsplit(url).scheme
        pinned = self._schemes.get(self.endpoint.host)
        if pinned is not None:
            return pinned != scheme  # another thread switched meanwhile: follow it
        if not self._speaks_other(scheme, exc):
            return False
        self._use(next(s for s in self.endpoint.schemes if s != scheme))
        return True

    def _speaks_other(self, scheme: str, exc: BaseException) -> bool:
        """Whether a failure over ``scheme`` says the server speaks the other one."""
        if scheme == "https":
            return not failures.is_instance(exc, "ssl", "SSLCertVerificationError") and (
                isinstance(exc, ConnectionResetError | RemoteDisconnected)
                or failures.is_instance(exc, "ssl", "SSLError")
                or failures.is_instance(exc, "http.client", "RemoteDisconnected")
            )
        return isinstance(exc, ConnectionResetError | ProtocolError) or failures.is_instance(
            exc, "http.client", "HTTPException"
        )

    # -- bearer tokens -------------------------------------------------------------------------
    def _fetch_token(
        self, challenge: Challenge, scopes: tuple[str, ...], creds: Credentials | None
    ) -> Token:
        realm = challenge.realm
        where = f"the token service of {self.endpoint}"
        ctx = failures.Context(
            where, self.endpoint.name, "authenticate with", login=login_name(self.endpoint)
        )
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise failures.bad_content(
                ctx, f"sent a bearer challenge with an unusable realm {realm!r}"
            )
        if parts.scheme == "http" and not self.hosts.is_insecure(parts.netloc):
            raise failures.bad_content(
                ctx,
                f"asks for tokens over plain HTTP ({realm})",
                "credentials and tokens are only sent over HTTPS",
            )
        ctx = failures.Context(
            f"{where} ({parts.netloc})", ctx.reference, ctx.action, login=ctx.login
        )
        headers = {"User-Agent": USER_AGENT}
        query: list[tuple[str, str]] = []
        body: bytes | None = None
        method = "GET"
        if challenge.service:
            query.append(("service", challenge.service))
        if creds is not None and creds.identity_token:
            method = "POST"
            form = [
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.identity_token),
                ("client_id", "minidock"),
                *query,
            ]
            if scopes:
                form.append(("scope", " ".join(scopes)))
            body = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            url = realm
        else:
            query.extend(("scope", s) for s in scopes)
            if creds is not None and creds.username:
                query.append(("account", creds.username))
                headers["Authorization"] = creds.basic()
            separator = "&" if parts.query else "?"
            url = realm + (separator + urlencode(query) if query else "")
        attempts = 0
        while True:
            attempts += 1
            try:
                response = self.transport.request(
                    method, url, headers, body, verify_tls=not self.hosts.is_insecure(parts.netloc)
                )
            except network_errors() as exc:
                delay = self.policy.delay(attempts) if failures.retryable_exception(exc) else None
                if delay is None:
                    raise failures.connection_error(
                        ctx, exc, attempts=attempts, timeout=self.timeout
                    ) from exc
                self.sleep(delay)
                continue
            data = drain(response, 1 << 20)
            if response.status == 200:
                try:
                    return parse_token_response(data)
                except ValueError as exc:
                    raise failures.bad_content(
                        ctx, f"answered without a usable token ({exc})"
                    ) from exc
            if failures.retryable_status(response.status):
                delay = self.policy.delay(attempts, response.header("Retry-After"))
                if delay is not None:
                    self.sleep(delay)
                    continue
            raise failures.status_error(
                ctx,
                response.status,
                response.reason,
                detail=failures.error_detail(data, response.header("Content-Type")),
                attempts=attempts,
                credentials_sent=creds is not None and not creds.anonymous,
            )
