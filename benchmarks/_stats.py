"""Timing helpers shared by the benchmarks: repeated runs, percentiles, ratios."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples of one measured operation, in seconds."""

    name: str
    samples: tuple[float, ...]

    def pct(self, p: float) -> float:
        s = sorted(self.samples)
        k = min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))
        return s[k]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def line(self, unit: str = "ms") -> str:
        scale = 1000.0 if unit == "ms" else 1.0
        return (
            f"{self.name:<36} p50 {self.median * scale:9.1f}{unit}  p90 "
            f"{self.pct(90) * scale:9.1f}{unit}  min {min(self.samples) * scale:9.1f}{unit}  "
            f"n={len(self.samples)}"
        )


def measure(
    name: str, fn: Callable[[], object], runs: int, setup: Callable[[], object] | None = None
) -> Timing:
    """Run ``fn`` ``runs`` times (``setup`` before each, untimed)."""
    samples = []
    for _ in range(runs):
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return Timing(name, tuple(samples))
