"""``WWW-Authenticate`` challenge parsing, token answers and the ``Authenticator``'s decisions."""

from __future__ import annotations

import json

import pytest

from pytest_minidock.registry.auth import (
    MIN_TOKEN_LIFETIME,
    Authenticator,
    Challenge,
    Credentials,
    Token,
    chain,
    parse_challenges,
    parse_token_response,
    repository_scope,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/redis:pull"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/redis:pull",
                    },
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        ("Basic", [Challenge("basic", {})]),
        (
            'Basic realm="a", Bearer realm="https://t/token",error="insufficient_scope"',
            [
                Challenge("basic", {"realm": "a"}),
                Challenge("bearer", {"realm": "https://t/token", "error": "insufficient_scope"}),
            ],
        ),
        (
            '  BEARER   Realm = "https://t/x" ,  Service=reg.example , scope="a b"',
            [
                Challenge(
                    "bearer", {"realm": "https://t/x", "service": "reg.example", "scope": "a b"}
                )
            ],
        ),
        (
            r'Bearer realm="quoted \"inner\" text",service="s,with,commas"',
            [Challenge("bearer", {"realm": 'quoted "inner" text', "service": "s,with,commas"})],
        ),
        ("", []),
        (None, []),
    ],
)
def test_parse_challenges(header: str | None, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


def test_challenge_views() -> None:
    (challenge,) = parse_challenges(
        'Bearer realm="https://a/token",service="svc",scope="repository:x:pull repository:y:push"'
    )
    assert challenge.realm == "https://a/token"
    assert challenge.service == "svc"
    assert challenge.scopes == ("repository:x:pull", "repository:y:push")
    assert repository_scope("library/redis", ["pull", "push"]) == (
        "repository:library/redis:pull,push"
    )


def test_token_answers() -> None:
    token = parse_token_response(b'{"token": "abc", "expires_in": 300}', now=1000.0)
    assert token.value == "abc"
    assert token.expires == pytest.approx(1000.0 + 300 * 0.9)
    assert token.valid(1100.0)
    assert not token.valid(1271.0)
    oauth = parse_token_response(
        json.dumps({"access_token": "xyz", "refresh_token": "r"}).encode(), now=0.0
    )
    assert (oauth.value, oauth.refresh_token) == ("xyz", "r")
    assert oauth.expires == pytest.approx(MIN_TOKEN_LIFETIME * 0.9)  # no expires_in: 60 s
    short = parse_token_response(b'{"token": "t", "expires_in": 5}', now=0.0)
    assert short.expires == pytest.approx(MIN_TOKEN_LIFETIME * 0.9)  # at least 60 s
    for bad in (b"[]", b'{"token": ""}', b'{"expires_in": 10}'):
        with pytest.raises(ValueError, match="token"):
            parse_token_response(bad)


def test_credentials_hide_secrets_and_encode_basic() -> None:
    creds = Credentials("alice", "s3cret")
    assert "s3cret" not in repr(creds)
    assert creds.basic() == "Basic YWxpY2U6czNjcmV0"
    assert Credentials().anonymous
    assert not Credentials(identity_token="x").anonymous


def test_chain_asks_each_source_in_turn() -> None:
    asked: list[str] = []

    def first(registry: str) -> Credentials | None:
        asked.append(f"first {registry}")
        return Credentials("hooked", "pw") if registry == "ghcr.io" else None

    def second(registry: str) -> Credentials | None:
        asked.append(f"second {registry}")
        return Credentials("file", "pw")

    source = chain(None, first, second)
    assert source("ghcr.io") == Credentials("hooked", "pw")
    assert source("docker.io") == Credentials("file", "pw")
    assert asked == ["first ghcr.io", "first docker.io", "second docker.io"]


class Fetcher:
    """Records token requests and hands out numbered tokens."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...], Credentials | None]] = []

    def __call__(
        self, challenge: Challenge, scopes: tuple[str, ...], creds: Credentials | None
    ) -> Token:
        self.calls.append((challenge.realm, scopes, creds))
        return Token(f"token-{len(self.calls)}", expires=float("inf"))


def test_no_authorization_before_the_first_challenge() -> None:
    auth = Authenticator(Credentials("alice", "pw"), Fetcher())
    assert auth.authorization(("repository:x:pull",)) is None


def test_bearer_tokens_are_fetched_once_per_scope_and_refreshed_after_a_401() -> None:
    fetch = Fetcher()
    auth = Authenticator(None, fetch)
    pull = ("repository:x:pull",)
    retry = auth.unauthorized('Bearer realm="https://t/token",service="reg"', pull)
    assert retry == pull
    assert auth.authorization(pull) == "Bearer token-1"
    assert auth.authorization(pull) == "Bearer token-1"  # cached
    assert auth.authorization(("repository:y:pull",)) == "Bearer token-2"
    # the registry wants more than we asked for: the 401 names the scope
    more = auth.unauthorized(
        'Bearer realm="https://t/token",service="reg",scope="repository:x:pull,push"', pull
    )
    assert more == ("repository:x:pull", "repository:x:pull,push")
    assert auth.authorization(more) == "Bearer token-3"
    assert fetch.calls[-1] == ("https://t/token", more, None)


def test_a_refused_token_is_dropped_and_new_credentials_drop_all_tokens() -> None:
    fetch = Fetcher()
    auth = Authenticator(None, fetch)
    scopes = ("repository:x:pull",)
    auth.unauthorized('Bearer realm="https://t/token"', scopes)
    assert auth.authorization(scopes) == "Bearer token-1"
    auth.unauthorized('Bearer realm="https://t/token"', scopes, sent="Bearer token-0")
    assert auth.authorization(scopes) == "Bearer token-1"  # an older token was refused
    auth.unauthorized('Bearer realm="https://t/token"', scopes, sent="Bearer token-1")
    assert auth.authorization(scopes) == "Bearer token-2"
    auth.set_credentials(Credentials("alice", "pw"))
    assert auth.authorization(scopes) == "Bearer token-3"
    assert fetch.calls[-1][2] == Credentials("alice", "pw")
    auth.set_credentials(Credentials("alice", "pw"))  # the same: tokens kept
    assert auth.authorization(scopes) == "Bearer token-3"


def test_registry_token_is_sent_as_is() -> None:
    fetch = Fetcher()
    auth = Authenticator(Credentials(registry_token="given"), fetch)
    auth.unauthorized('Bearer realm="https://t/token"', ())
    assert auth.authorization(()) == "Bearer given"
    assert fetch.calls == []


def test_basic_auth_is_retried_only_when_the_credentials_were_not_sent() -> None:
    creds = Credentials("alice", "pw")
    auth = Authenticator(creds, Fetcher())
    assert auth.unauthorized('Basic realm="r"', ()) == ()
    assert auth.authorization(()) == creds.basic()
    # another thread's request, sent before the challenge was known: worth a retry
    assert auth.unauthorized('Basic realm="r"', (), sent=None) == ()
    assert auth.unauthorized('Basic realm="r"', (), sent=creds.basic()) is None  # refused
    anonymous = Authenticator(None, Fetcher())
    assert anonymous.unauthorized('Basic realm="r"', ()) is None
    assert anonymous.authorization(()) is None


def test_unknown_challenges_are_not_answered() -> None:
    auth = Authenticator(Credentials("a", "b"), Fetcher())
    assert auth.unauthorized('Negotiate abc, Digest realm="x"', ()) is None
    assert auth.unauthorized(None, ()) is None
