"""Small-sample statistics for multi-seed comparisons (pure functions).

With n seeds per method we report the mean and a two-sided Student-t confidence interval; the
difference to the baseline uses Welch's interval (unequal variances), which is what a reviewer
would compute from the per-seed numbers in the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy import stats as _st


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    @property
    def covers_zero(self) -> bool:
        return self.low <= 0.0 <= self.high

    def format(self, digits: int = 3) -> str:
        if self.n < 2 or not math.isfinite(self.half_width):
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} ± {self.half_width:.{digits}g}"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean with a Student-t interval: mean ± t_{n-1, (1+c)/2} · s / sqrt(n). n=1 -> no interval."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("mean_ci of no values")
    mean = sum(xs) / n
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n)
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    half = _st.t.ppf((1 + confidence) / 2, n - 1) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half, n)


def diff_ci(values: Sequence[float], baseline: Sequence[float], confidence: float = 0.95) -> Interval:
    """Difference of means (values − baseline) with Welch's t interval (Welch–Satterthwaite dof)."""
    a, b = [float(v) for v in values], [float(v) for v in baseline]
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    d = ma - mb
    if na < 2 or nb < 2:
        return Interval(d, float("nan"), float("nan"), min(na, nb))
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    if se2 == 0:
        return Interval(d, d, d, min(na, nb))
    dof = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    half = _st.t.ppf((1 + confidence) / 2, dof) * math.sqrt(se2)
    return Interval(d, d - half, d + half, min(na, nb))
