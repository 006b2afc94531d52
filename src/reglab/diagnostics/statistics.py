"""Honest comparisons over seeds: confidence intervals, paired tests, Holm correction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

__all__ = ["mean_ci", "paired_comparison", "holm", "PairedComparison", "binomial_ci"]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student-t interval for the mean over independent runs (seeds).
    One value gives an infinitely wide interval (nan bounds)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return (float("nan"),) * 3
    m = float(v.mean())
    if v.size < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


def binomial_ci(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson interval for an accuracy measured on ``n`` points (e.g. a small test split)."""
    res = stats.binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
    return float(res.low), float(res.high)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    m = p.size
    adj = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (m - rank) * p[i])
        adj[i] = min(1.0, running)
    return adj


@dataclass
class PairedComparison:
    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    p_adjusted: float
    effect_size: float
    significant: bool
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = 0.95, alpha: float = 0.05,
                      n_comparisons: int = 1) -> PairedComparison:
    """Compare ``a`` with ``b`` measured on the same seeds (and data splits): ``a - b``.

    Paired t-test on the differences, its ``confidence`` interval, Cohen's d_z
    (mean difference / sd of differences) as effect size. ``p_adjusted`` is Bonferroni-scaled by
    ``n_comparisons`` here; use ``holm`` over a family for the step-down correction and call
    ``with_adjusted``. Identical pairs give p = 1 and "not significant".
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length; got {a.size} and {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    d = a[keep] - b[keep]
    n = d.size
    m, lo, hi = mean_ci(d, confidence)
    sd = float(d.std(ddof=1)) if n > 1 else float("nan")
    if n < 2:
        p = float("nan")
    elif sd == 0.0:
        p = 1.0 if m == 0.0 else 0.0
    else:
        p = float(stats.ttest_rel(a[keep], b[keep]).pvalue)
    eff = m / sd if sd and not np.isnan(sd) else (0.0 if m == 0 else float("inf"))
    return with_adjusted(PairedComparison(n, m, lo, hi, p, min(1.0, p * n_comparisons), eff, False, ""), None, alpha)


def with_adjusted(c: PairedComparison, p_adjusted: float | None, alpha: float = 0.05) -> PairedComparison:
    """Set the adjusted p-value (e.g. from ``holm``) and the verdict words."""
    if p_adjusted is not None:
        c.p_adjusted = float(p_adjusted)
    c.significant = bool(c.p_adjusted < alpha) if not np.isnan(c.p_adjusted) else False
    c.verdict = "significant" if c.significant else "not significant"
    return c
