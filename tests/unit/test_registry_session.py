"""``Session`` over a scripted fake transport: retries and backoff, ``Retry-After``, the token
flow, redirects that never carry credentials to another host, and the HTTPS→HTTP fallback."""

from __future__ import annotations

import io
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import pytest

from pytest_minidock.errors import (
    RegistryAuthError,
    RegistryBadContent,
    RegistryError,
    RegistryRateLimited,
    RegistryServerError,
    RegistryUnreachable,
)
from pytest_minidock.registry import failures
from pytest_minidock.registry.auth import Credentials
from pytest_minidock.registry.hosts import RegistryHosts
from pytest_minidock.registry.policy import RetryPolicy
from pytest_minidock.registry.session import USER_AGENT, Session
from pytest_minidock.registry.transport import ProtocolError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pytest_minidock.registry.transport import Body


class FakeResponse:
    def __init__(
        self, status: int = 200, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> None:
        self.status = status
        self.reason = {200: "OK", 401: "Unauthorized", 503: "Service Unavailable"}.get(status, "")
        self._body = io.BytesIO(body)
        self._headers = {k.lower(): v for k, v in (headers or {}).items()}
        self.closed = False

    def header(self, name: str) -> str | None:
        return self._headers.get(name.lower())

    def read(self, amt: int | None = None) -> bytes:
        return self._body.read(amt)

    def read1(self, amt: int) -> bytes:
        return self._body.read1(amt)

    def close(self) -> None:
        self.closed = True


@dataclass
class Call:
    method: str
    url: str
    headers: dict[str, str]
    body: Body
    verify_tls: bool


Step = FakeResponse | BaseException | Callable[[Call], FakeResponse]


@dataclass
class FakeTransport:
    script: list[Step]
    calls: list[Call] = field(default_factory=list)

    def request(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: Body = None,
        *,
        verify_tls: bool = True,
    ) -> FakeResponse:
        call = Call(method, url, dict(headers), body, verify_tls)
        self.calls.append(call)
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, FakeResponse):
            return step
        return step(call)

    def close(self) -> None:
        return None


CTX = failures.Context("reg.example", "reg.example/app:1", "pull", "manifest")


def make_session(
    script: list[Step],
    *,
    host: str = "reg.example",
    creds: Credentials | None = None,
    attempts: int = 3,
    insecure: tuple[str, ...] = (),
) -> tuple[Session, FakeTransport, list[float], list[str]]:
    transport = FakeTransport(script)
    sleeps: list[float] = []
    lookups: list[str] = []
    hosts = RegistryHosts({}, insecure)

    def lookup() -> Credentials | None:
        lookups.append(host)
        return creds

    session = Session(
        transport,
        hosts.endpoint(host),
        credentials=lookup,
        policy=RetryPolicy(attempts=attempts, backoff=0.5, jitter=0.0),
        hosts=hosts,
        timeout=1.0,
        sleep=sleeps.append,
    )
    return session, transport, sleeps, lookups


def test_an_open_registry_needs_no_credentials_lookup() -> None:
    session, transport, sleeps, lookups = make_session([FakeResponse(200, b"{}")])
    response = session.request("GET", "/v2/", CTX)
    assert response.read() == b"{}"
    assert transport.calls[0].url == "https://reg.example/v2/"
    assert transport.calls[0].headers == {"User-Agent": USER_AGENT}
    assert transport.calls[0].verify_tls
    assert (sleeps, lookups) == ([], [])


def test_5xx_is_retried_with_backoff_then_succeeds() -> None:
    script: list[Step] = [FakeResponse(503), FakeResponse(502), FakeResponse(200, b"ok")]
    session, transport, sleeps, _ = make_session(script, attempts=3)
    assert session.request("GET", "/v2/x/manifests/1", CTX).read() == b"ok"
    assert sleeps == [0.5, 1.0]
    assert len(transport.calls) == 3


def test_5xx_gives_up_after_the_attempts() -> None:
    body = b'{"errors":[{"code":"UNAVAILABLE","message":"down for maintenance"}]}'
    script: list[Step] = [FakeResponse(503, body) for _ in range(3)]
    session, transport, sleeps, _ = make_session(script, attempts=3)
    with pytest.raises(RegistryServerError) as info:
        session.request("GET", "/v2/x/manifests/1", CTX)
    assert "after 3 attempts" in str(info.value)
    assert "UNAVAILABLE: down for maintenance" in str(info.value)
    assert sleeps == [0.5, 1.0]
    assert transport.script == []


def test_429_waits_as_retry_after_says() -> None:
    script: list[Step] = [
        FakeResponse(429, headers={"Retry-After": "2"}),
        FakeResponse(429, headers={"Retry-After": "5"}),
        FakeResponse(200),
    ]
    session, _, sleeps, _ = make_session(script, attempts=4)
    session.request("GET", "/v2/", CTX)
    assert sleeps == [2.0, 5.0]


def test_429_asking_too_long_fails_at_once() -> None:
    session, transport, sleeps, _ = make_session(
        [FakeResponse(429, headers={"Retry-After": "86400"})]
    )
    with pytest.raises(RegistryRateLimited, match="asked to wait 86400s"):
        session.request("GET", "/v2/", CTX)
    assert sleeps == []
    assert len(transport.calls) == 1


def test_connection_errors_are_retried_then_reported() -> None:
    script: list[Step] = [ConnectionResetError(104, "reset"), TimeoutError(), TimeoutError()]
    session, _, sleeps, _ = make_session(script, attempts=3)
    with pytest.raises(RegistryUnreachable, match="did not answer within 1s") as info:
        session.request("GET", "/v2/", CTX)
    assert "(3 attempts)" in str(info.value)
    assert sleeps == [0.5, 1.0]


def test_statuses_are_not_retried_when_the_caller_says_so() -> None:
    session, _, sleeps, _ = make_session([FakeResponse(503)])
    with pytest.raises(RegistryServerError):
        session.request("PUT", "/v2/x/blobs/uploads/1", CTX, body=b"x", retry=False)
    assert sleeps == []


def token_server(expect_user: str | None) -> Callable[[Call], FakeResponse]:
    def answer(call: Call) -> FakeResponse:
        query = parse_qs(urlsplit(call.url).query)
        assert query["service"] == ["reg"]
        assert query["scope"] == ["repository:app:pull"]
        if expect_user is None:
            assert "Authorization" not in call.headers
        else:
            assert query["account"] == [expect_user]
            assert call.headers["Authorization"].startswith("Basic ")
        return FakeResponse(200, b'{"token": "T1", "expires_in": 300}')

    return answer


CHALLENGE = {"WWW-Authenticate": 'Bearer realm="https://auth.example/token",service="reg"'}


@pytest.mark.parametrize("creds", [None, Credentials("alice", "pw")])
def test_bearer_challenge_flow_and_token_reuse(creds: Credentials | None) -> None:
    def with_token(call: Call) -> FakeResponse:
        assert call.headers["Authorization"] == "Bearer T1"
        return FakeResponse(200)

    script: list[Step] = [
        FakeResponse(401, headers=CHALLENGE),
        token_server(creds.username if creds else None),
        with_token,
        with_token,
    ]
    session, transport, _, lookups = make_session(script, creds=creds)
    scopes = ("repository:app:pull",)
    session.request("GET", "/v2/app/manifests/1", CTX, scopes=scopes)
    session.request("GET", "/v2/app/blobs/sha256:x", CTX, scopes=scopes)
    assert [urlsplit(c.url).netloc for c in transport.calls] == [
        "reg.example",
        "auth.example",
        "reg.example",
        "reg.example",
    ]
    assert lookups == ["reg.example"]  # looked up once, on the first challenge


def test_a_second_401_is_an_auth_error_naming_the_login_command() -> None:
    script: list[Step] = [
        FakeResponse(401, headers=CHALLENGE),
        FakeResponse(200, b'{"token": "T1"}'),
        FakeResponse(401, headers=CHALLENGE),
    ]
    session, _, _, _ = make_session(script)
    with pytest.raises(RegistryAuthError, match="requires authentication") as info:
        session.request("GET", "/v2/app/manifests/1", CTX, scopes=("repository:app:pull",))
    assert "minidock login" in str(info.value)


def test_token_service_rejecting_credentials() -> None:
    script: list[Step] = [FakeResponse(401, headers=CHALLENGE), FakeResponse(401)]
    session, _, _, _ = make_session(script, creds=Credentials("alice", "wrong"))
    with pytest.raises(RegistryAuthError, match="rejected the credentials") as info:
        session.request("GET", "/v2/", CTX)
    assert "auth.example" in str(info.value)


def test_tokens_are_not_fetched_over_plain_http_from_a_remote_realm() -> None:
    challenge = {"WWW-Authenticate": 'Bearer realm="http://auth.example/token"'}
    session, _, _, _ = make_session([FakeResponse(401, headers=challenge)])
    with pytest.raises(RegistryBadContent, match="over plain HTTP"):
        session.request("GET", "/v2/", CTX)


def test_redirects_to_another_host_drop_the_credentials() -> None:
    basic = {"WWW-Authenticate": 'Basic realm="r"'}
    script: list[Step] = [
        FakeResponse(401, headers=basic),
        FakeResponse(307, headers={"Location": "/v2/app/blobs/elsewhere"}),
        FakeResponse(307, headers={"Location": "https://storage.example/blob?sig=abc"}),
        FakeResponse(200, b"blob"),
    ]
    session, transport, _, _ = make_session(script, creds=Credentials("alice", "pw"))
    response = session.request("GET", "/v2/app/blobs/sha256:x", CTX)
    assert response.read() == b"blob"
    first, same_host, redirected, storage = transport.calls
    assert "Authorization" not in first.headers
    assert redirected.headers["Authorization"] == Credentials("alice", "pw").basic()
    assert same_host.url == redirected.url.replace("elsewhere", "sha256:x")
    assert storage.url == "https://storage.example/blob?sig=abc"
    assert "Authorization" not in storage.headers
    assert storage.headers["User-Agent"] == USER_AGENT


def test_redirects_to_plain_http_are_refused() -> None:
    script: list[Step] = [FakeResponse(302, headers={"Location": "http://storage.example/b"})]
    session, _, _, _ = make_session(script)
    with pytest.raises(RegistryBadContent, match="not an HTTPS URL"):
        session.request("GET", "/v2/app/blobs/sha256:x", CTX)


MANIFEST = "/v2/app/manifests/1"


def test_loopback_registries_speak_plain_http_first() -> None:
    script: list[Step] = [FakeResponse(401), FakeResponse(200), FakeResponse(200)]
    session, transport, sleeps, _ = make_session(script, host="127.0.0.1:5000")
    session.request("GET", MANIFEST, CTX)
    session.request("GET", MANIFEST, CTX)
    assert [c.url for c in transport.calls] == [
        "http://127.0.0.1:5000/v2/",  # the ping, once: any HTTP answer settles the scheme
        f"http://127.0.0.1:5000{MANIFEST}",
        f"http://127.0.0.1:5000{MANIFEST}",
    ]
    assert sleeps == []


@pytest.mark.parametrize(
    "first",
    [
        FakeResponse(400, b"Client sent an HTTP request to an HTTPS server.\n"),  # Go's answer
        FakeResponse(400, b"The plain HTTP request was sent to HTTPS port"),  # nginx's
        ProtocolError("not an HTTP/1.x status line: b'\\x15\\x03\\x01\\x00\\x02\\x02'"),
        ConnectionResetError(104, "reset"),
    ],
)
def test_a_loopback_registry_speaking_tls_is_then_asked_over_https(
    first: FakeResponse | BaseException,
) -> None:
    script: list[Step] = [first, FakeResponse(401), FakeResponse(200), FakeResponse(200)]
    session, transport, sleeps, _ = make_session(script, host="localhost:5000")
    session.request("GET", MANIFEST, CTX)
    session.request("GET", MANIFEST, CTX)
    assert [c.url for c in transport.calls] == [
        "http://localhost:5000/v2/",
        "https://localhost:5000/v2/",
        f"https://localhost:5000{MANIFEST}",
        f"https://localhost:5000{MANIFEST}",
    ]
    assert not transport.calls[1].verify_tls  # loopback: TLS without verification
    assert sleeps == []


def test_a_plain_400_from_a_loopback_registry_is_its_answer() -> None:
    script: list[Step] = [
        FakeResponse(200),
        FakeResponse(400, b'{"errors":[{"code":"NAME_INVALID"}]}'),
    ]
    session, transport, _, _ = make_session(script, host="127.0.0.1:5000")
    with pytest.raises(RegistryError, match="NAME_INVALID"):
        session.request("GET", MANIFEST, CTX)
    assert len(transport.calls) == 2


def test_a_failed_ping_settles_nothing_and_the_request_meets_the_failure() -> None:
    refused = ConnectionRefusedError(111, "refused")
    script: list[Step] = [refused, refused, refused, refused]
    session, transport, sleeps, _ = make_session(script, host="127.0.0.1:5000")
    with pytest.raises(RegistryUnreachable, match="refused"):
        session.request("GET", MANIFEST, CTX)
    assert [c.url.split("/v2/")[0] for c in transport.calls] == ["http://127.0.0.1:5000"] * 4
    assert sleeps == [0.5, 1.0]


def test_the_first_answer_pins_the_scheme() -> None:
    script: list[Step] = [
        FakeResponse(200),
        FakeResponse(200),
        ConnectionResetError(104, "reset"),
        FakeResponse(200),
    ]
    session, transport, sleeps, _ = make_session(script, host="127.0.0.1:5000")
    session.request("GET", MANIFEST, CTX)
    session.request("GET", MANIFEST, CTX)  # a reset later is retried, not a reason to switch
    assert all(c.url.startswith("http://") for c in transport.calls)
    assert sleeps == [0.5]


def test_insecure_registries_fall_back_to_http_once() -> None:
    script: list[Step] = [
        ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"),
        FakeResponse(401),
        FakeResponse(200),
        FakeResponse(200),
    ]
    session, transport, sleeps, _ = make_session(
        script, host="build.example:5000", insecure=("build.example:5000",)
    )
    session.request("GET", MANIFEST, CTX)
    session.request("GET", MANIFEST, CTX)
    assert [c.url for c in transport.calls] == [
        "https://build.example:5000/v2/",
        "http://build.example:5000/v2/",
        f"http://build.example:5000{MANIFEST}",
        f"http://build.example:5000{MANIFEST}",
    ]
    assert not transport.calls[0].verify_tls  # insecure: TLS without verification first
    assert sleeps == []


def test_remote_registries_never_fall_back_to_http() -> None:
    error = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    session, transport, _, _ = make_session([error, error, error])
    with pytest.raises(RegistryUnreachable, match="MINIDOCK_INSECURE_REGISTRIES"):
        session.request("GET", "/v2/", CTX)
    assert all(c.url.startswith("https://") for c in transport.calls)


def test_insecure_listed_registries_fall_back_too() -> None:
    script: list[Step] = [ConnectionResetError(104, "reset"), FakeResponse(200), FakeResponse(200)]
    session, transport, _, _ = make_session(
        script, host="build.example:5000", insecure=("build.example:5000",)
    )
    session.request("GET", MANIFEST, CTX)
    assert transport.calls[2].url == f"http://build.example:5000{MANIFEST}"


def test_an_absolute_url_is_sent_as_it_is_whatever_the_pinned_scheme() -> None:
    script: list[Step] = [
        FakeResponse(400, b"Client sent an HTTP request to an HTTPS server."),
        FakeResponse(200),
        FakeResponse(202),
        ConnectionResetError(104, "reset"),
        FakeResponse(202),
    ]
    session, transport, sleeps, _ = make_session(script, host="localhost:5000")
    upload = "http://localhost:5000/v2/app/blobs/uploads/u1"
    assert session.request("GET", upload, CTX, expect=(202,)).status == 202
    assert session.request("GET", upload, CTX, expect=(202,)).status == 202
    assert [c.url for c in transport.calls][2:] == [upload] * 3  # no loop, no rewriting
    assert sleeps == [0.5]  # the reset was retried as any other
