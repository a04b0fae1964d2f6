"""The retry policy (backoff, jitter, ``Retry-After``) and the failure classification."""

from __future__ import annotations

import http.client
import socket
import ssl
from email.utils import formatdate

import pytest

from pytest_minidock.errors import (
    RegistryAuthError,
    RegistryBadContent,
    RegistryDenied,
    RegistryError,
    RegistryNotFound,
    RegistryRateLimited,
    RegistryServerError,
    RegistryUnreachable,
    UsageError,
)
from pytest_minidock.registry import failures
from pytest_minidock.registry.policy import RegistryOptions, RetryPolicy, parse_retry_after

CTX = failures.Context("127.0.0.1:5000", "127.0.0.1:5000/tools/app:1", "pull", "manifest")


def test_backoff_doubles_up_to_the_cap_and_stops_after_the_attempts() -> None:
    policy = RetryPolicy(attempts=6, backoff=0.5, max_delay=3.0, jitter=0.0)
    assert policy.schedule() == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.delay(6) is None
    assert RetryPolicy(attempts=1).delay(1) is None


def test_jitter_spreads_delays_within_its_fraction() -> None:
    low = RetryPolicy(backoff=1.0, jitter=0.2, random=lambda: 0.0)
    high = RetryPolicy(backoff=1.0, jitter=0.2, random=lambda: 1.0)
    assert low.delay(1) == pytest.approx(0.8)
    assert high.delay(1) == pytest.approx(1.2)


def test_retry_after_is_honoured_in_seconds_and_as_a_date() -> None:
    policy = RetryPolicy(attempts=3, max_retry_after=60.0)
    assert policy.delay(1, "7") == 7.0
    now = 1_700_000_000.0
    date = formatdate(now + 12, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(12.0)
    assert parse_retry_after(formatdate(now - 50, usegmt=True), now=now) == 0.0
    assert policy.delay(1, date, now=now) == pytest.approx(12.0)
    assert policy.delay(1, "3600") is None  # asks for too long: give up now
    assert policy.delay(3, "1") is None  # no attempt left
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_policy_and_options_validation() -> None:
    with pytest.raises(UsageError, match="at least 1"):
        RetryPolicy(attempts=0)
    assert RegistryOptions.from_env({}).timeout == 30.0
    assert RegistryOptions.from_env({failures.ENV_TIMEOUT: "2.5"}).timeout == 2.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(UsageError, match=failures.ENV_TIMEOUT):
            RegistryOptions.from_env({failures.ENV_TIMEOUT: bad})


@pytest.mark.parametrize(
    ("status", "retry"),
    [
        (200, False),
        (401, False),
        (404, False),
        (408, True),
        (429, True),
        (500, True),
        (502, True),
        (503, True),
        (504, True),
        (501, False),
    ],
)
def test_which_statuses_are_retried(status: int, retry: bool) -> None:
    assert failures.retryable_status(status) is retry


@pytest.mark.parametrize(
    ("exc", "retry"),
    [
        (ConnectionResetError(), True),
        (ConnectionRefusedError(), True),
        (TimeoutError(), True),
        (http.client.IncompleteRead(b"x", 10), True),
        (http.client.RemoteDisconnected(), True),
        (ssl.SSLCertVerificationError("bad cert"), False),
        (socket.gaierror(socket.EAI_NONAME, "unknown"), False),
        (socket.gaierror(socket.EAI_AGAIN, "try again"), True),
        (ValueError("not a connection problem"), False),
    ],
)
def test_which_exceptions_are_retried(exc: BaseException, retry: bool) -> None:
    assert failures.retryable_exception(exc) is retry


@pytest.mark.parametrize(
    ("status", "kind", "words"),
    [
        (401, RegistryAuthError, "requires authentication"),
        (403, RegistryDenied, "denied access"),
        (404, RegistryNotFound, "not found on 127.0.0.1:5000"),
        (429, RegistryRateLimited, "rate-limiting"),
        (500, RegistryServerError, "failed (500"),
        (418, RegistryError, "did not expect"),
    ],
)
def test_status_errors_name_registry_reference_and_next_step(
    status: int, kind: type[RegistryError], words: str
) -> None:
    err = failures.status_error(CTX, status, "Reason", detail="CODE: message", attempts=3)
    assert type(err) is kind
    text = str(err)
    assert words in text
    assert text.startswith("cannot pull manifest of 127.0.0.1:5000/tools/app:1: ")
    assert "CODE: message" in text
    assert "; " in text  # and what to do next
    if status in (429, 500):
        assert "after 3 attempts" in text


def test_rejected_credentials_say_log_in_again() -> None:
    err = failures.status_error(CTX.doing("push"), 401, credentials_sent=True)
    assert "rejected the credentials" in str(err)
    assert "minidock login" in str(err)


@pytest.mark.parametrize(
    ("exc", "kind", "words"),
    [
        (TimeoutError("timed out"), RegistryUnreachable, "did not answer within 2s"),
        (ConnectionRefusedError(111, "refused"), RegistryUnreachable, "connection to"),
        (socket.gaierror(-2, "Name or service not known"), RegistryUnreachable, "resolve"),
        (ssl.SSLError(1, "WRONG_VERSION_NUMBER"), RegistryUnreachable, "MINIDOCK_INSECURE"),
        (http.client.IncompleteRead(b"abc", 7), RegistryUnreachable, "broke after 3 of 10"),
        (http.client.RemoteDisconnected("closed"), RegistryUnreachable, "closed the connection"),
        (http.client.BadStatusLine("garbage"), RegistryBadContent, "malformed HTTP"),
        (OSError(113, "No route to host"), RegistryUnreachable, "No route to host"),
    ],
)
def test_connection_errors_are_mapped_in_one_place(
    exc: BaseException, kind: type[RegistryError], words: str
) -> None:
    err = failures.connection_error(CTX, exc, attempts=2, timeout=2.0)
    assert type(err) is kind
    assert words in str(err)
    assert "127.0.0.1:5000/tools/app:1" in str(err)


def test_a_token_without_the_rights_is_a_denial_not_a_login_problem() -> None:
    err = failures.status_error(
        CTX.doing("push"), 401, "Unauthorized", credentials_sent=True, insufficient_scope=True
    )
    assert type(err) is RegistryDenied
    assert "denied access (401 Unauthorized)" in str(err)
    anonymous = failures.status_error(CTX, 401, insufficient_scope=True)
    assert type(anonymous) is RegistryAuthError  # nobody logged in: logging in may help
