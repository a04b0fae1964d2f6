"""How patient the client is: ``RetryPolicy`` (backoff, ``Retry-After``) and ``RegistryOptions``.

Pure values: the policy computes delays, the caller sleeps (through an injectable ``sleep``), so
tests check the schedule without waiting.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from pytest_minidock._record import dataclass, field
from pytest_minidock.errors import UsageError
from pytest_minidock.registry.failures import ENV_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["RegistryOptions", "RetryPolicy", "parse_retry_after"]

MIB = 1 << 20


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    from email.utils import parsedate_to_datetime  # rare: most registries send seconds

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _random() -> float:
    """``random.random()``, imported on the first retry (most transfers never need one)."""
    import random

    return random.random()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for 408/429/5xx and broken connections.

    ``attempts`` counts every try of one request (1 means no retry). A ``Retry-After`` header is
    honoured as given; one that asks for more than ``max_retry_after`` seconds ends the retries at
    once (the error then says how long the registry wants us to wait).
    """

    attempts: int = 5
    backoff: float = 0.5
    factor: float = 2.0
    max_delay: float = 10.0
    max_retry_after: float = 60.0
    jitter: float = 0.1
    random: Callable[[], float] = field(default=_random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise UsageError(f"retry attempts must be at least 1, not {self.attempts}")

    def delay(
        self, failures: int, retry_after: str | None = None, *, now: float | None = None
    ) -> float | None:
        """Seconds to wait after ``failures`` failed attempts, or None: give up."""
        if failures >= self.attempts:
            return None
        asked = parse_retry_after(retry_after, now=now)
        if asked is not None:
            return asked if asked <= self.max_retry_after else None
        base = min(self.max_delay, self.backoff * self.factor ** max(0, failures - 1))
        spread = self.jitter * (2.0 * self.random() - 1.0)
        return max(0.0, base * (1.0 + spread))

    def schedule(self) -> list[float]:
        """The delays between all attempts without ``Retry-After`` and without jitter."""
        return [
            min(self.max_delay, self.backoff * self.factor ** max(0, n - 1))
            for n in range(1, self.attempts)
        ]


@dataclass(frozen=True, slots=True)
class RegistryOptions:
    """Timeouts, retries, parallelism and upload chunking of a ``RegistryClient``."""

    timeout: float = 30.0
    """Seconds a connect, a send or a read may stall before the attempt fails."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    download_workers: int = 3
    """Blobs downloaded at once (docker's ``max-concurrent-downloads``)."""
    upload_workers: int = 5
    """Blobs uploaded at once (docker's ``max-concurrent-uploads``)."""
    chunk_size: int = 64 * MIB
    """Blobs larger than this are uploaded in chunks of this size (PATCH with Content-Range),
    smaller ones in a single PUT."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RegistryOptions:
        """Defaults, with ``MINIDOCK_REGISTRY_TIMEOUT`` (seconds) applied."""
        env = os.environ if environ is None else environ
        text = env.get(ENV_TIMEOUT, "").strip()
        if not text:
            return cls()
        try:
            timeout = float(text)
        except ValueError:
            timeout = -1.0
        if not timeout > 0:
            raise UsageError(f"{ENV_TIMEOUT}={text!r}: expected a positive number of seconds")
        return cls(timeout=timeout)
