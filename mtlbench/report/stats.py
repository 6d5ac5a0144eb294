"""Paired comparisons over seeds, Holm's correction, and claim verdicts.

Every cell of one seed shares that seed's initialisation and data order, so two rows of a
leaderboard are compared seed by seed: the per-seed differences d_s = a_s − b_s (seeds both
rows have) are tested with the paired t-test (two-sided), and the mean difference gets a
Student-t 95% confidence interval. The paired t-test and not the Wilcoxon signed-rank test:
with the 3–10 seeds a grid affords, Wilcoxon's smallest two-sided p-value is 2/2ⁿ (0.25 at 3
seeds, 0.0625 at 5), so it could never reject at 0.05 with five seeds; the t-test's normality
assumption is about the mean of seed-to-seed differences, which training noise makes mild.

The comparisons shown on one page form one family: their p-values are adjusted with Holm's
step-down method (controls the family-wise error rate at α without assuming independence).
Reads numbers only (no torch).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
LEVEL = 0.95


@dataclass(frozen=True)
class Paired:
    """a − b over the seeds both sides have: n, mean difference, its 95% CI, two-sided p."""

    n: int
    diff: float
    low: float
    high: float
    p: float

    @property
    def testable(self) -> bool:
        return not math.isnan(self.p)


NOT_TESTABLE = Paired(0, math.nan, math.nan, math.nan, math.nan)


def paired(a: Mapping[int, float], b: Mapping[int, float]) -> Paired:
    """Paired t-test of ``a`` against ``b`` (seed → value). Seeds missing on one side or with a
    non-finite value are left out; fewer than two pairs: not testable (p NaN). Differences all
    equal: the CI is that value and p is 0 (a nonzero shift with no spread) or 1 (none)."""
    return paired_many([(a, b)])[0]


def paired_many(pairs: Sequence[tuple[Mapping[int, float], Mapping[int, float]]]) -> list[Paired]:
    """:func:`paired` of each (a, b), the t-tests of equally many seeds run as one vectorised
    call (a leaderboard holds thousands of comparisons; one scipy call each cost 0.4 ms). Each
    row's numbers are those of its own call: numpy reduces each row of the stacked differences
    as it reduces a single array (checked in tests/test_stats.py)."""
    out: list[Paired | None] = [None] * len(pairs)
    batches: dict[int, list[tuple[int, np.ndarray, float, float]]] = {}
    for i, (a, b) in enumerate(pairs):
        seeds = sorted(s for s in a if s in b and _finite(a[s]) and _finite(b[s]))
        d = np.array([float(a[s]) - float(b[s]) for s in seeds], dtype=float)
        n = len(d)
        if n == 0:
            out[i] = NOT_TESTABLE
            continue
        mean = float(d.mean())
        if n < 2:
            out[i] = Paired(1, mean, math.nan, math.nan, math.nan)
            continue
        sd = float(d.std(ddof=1))
        if sd == 0.0 or sd <= 1e-12 * max(abs(mean), 1e-300):
            out[i] = Paired(n, mean, mean, mean, 0.0 if mean != 0.0 else 1.0)
            continue
        batches.setdefault(n, []).append((i, d, mean, sd))
    for n, rows in batches.items():
        t = _t_quantile(n - 1)
        with warnings.catch_warnings():  # scipy warns on nearly equal differences; the sd check above decides
            warnings.simplefilter("ignore", RuntimeWarning)
            p = np.atleast_1d(stats.ttest_1samp(np.stack([d for _, d, _, _ in rows]), 0.0, axis=1).pvalue)
        for (i, _, mean, sd), p_i in zip(rows, p):
            half = t * sd / math.sqrt(n)
            out[i] = Paired(n, mean, mean - half, mean + half, float(p_i))
    return [r if r is not None else NOT_TESTABLE for r in out]


@functools.lru_cache(maxsize=None)
def _t_quantile(df: int) -> float:
    """The two-sided LEVEL quantile of Student's t with ``df`` degrees of freedom."""
    return float(stats.t.ppf(0.5 + LEVEL / 2, df))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order. NaN entries (untestable
    comparisons) stay NaN and do not count in the family size."""
    idx = sorted((i for i, p in enumerate(pvalues) if _finite(p)), key=lambda i: pvalues[i])
    m = len(idx)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def mark(result: Paired, p_adjusted: float, lower_is_better: bool = True, alpha: float = ALPHA) -> str:
    """``better`` / ``worse`` when the adjusted p is below alpha, ``n.s.`` above, ``n/a``
    when the comparison is not testable."""
    if not _finite(p_adjusted):
        return "n/a"
    if p_adjusted >= alpha:
        return "n.s."
    return "better" if (result.diff < 0) == lower_is_better else "worse"


HELD, NOT_HELD, INCONCLUSIVE = "held", "not held", "inconclusive"


def verdict(result: Paired, p_adjusted: float, direction: int, margin: float, alpha: float = ALPHA) -> str:
    """Whether one comparison supports a claim that the difference has sign ``direction``
    (−1: the claim says it decreases; +1: increases):

    - held: the adjusted p is below alpha and the difference has the claimed sign;
    - not held: it is significant with the opposite sign, or the whole 95% CI lies on the
      wrong side of −direction × margin (an effect the size of ``margin`` in the claimed
      direction is ruled out);
    - inconclusive: anything else, including comparisons that are not testable."""
    if not result.testable or not _finite(p_adjusted):
        return INCONCLUSIVE
    if p_adjusted < alpha:
        return HELD if result.diff * direction > 0 else NOT_HELD
    bound = result.low if direction < 0 else result.high  # the CI end in the claimed direction
    if direction * bound < margin:
        return NOT_HELD
    return INCONCLUSIVE


def combine(verdicts: Sequence[str], every: bool) -> str:
    """A claim's verdict over several comparisons. ``every`` (the claim is about each of them,
    e.g. "improves every method"): held when all hold, not held when any does not, else
    inconclusive. Otherwise (a claim about a pooled effect) the single verdict is returned."""
    if not verdicts:
        return INCONCLUSIVE
    if not every:
        return verdicts[0]
    if any(v == NOT_HELD for v in verdicts):
        return NOT_HELD
    return HELD if all(v == HELD for v in verdicts) else INCONCLUSIVE


def _finite(v: object) -> bool:
    return isinstance(v, (int, float, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))
