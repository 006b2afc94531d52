"""Every comparison of a study as one table: ``comparisons_frame(results)`` -> a pandas row per
(experiment grid point, its own baseline, metric); ``reglab report`` writes it to
``OUT/comparisons.csv`` and ``reglab.load_comparisons(OUT)`` reads it back.

For the paired differences ``d_s = experiment_s - baseline_s`` over the ``n`` seeds where both
runs finished (``estimate`` = their mean, ``experiment - baseline``):

- **Family and adjustment.** A family is every comparison of the study on one metric against
  one kind of baseline (``comparison``): each experiment's own, or the best plain baseline --
  among the study's unregularized baselines on the same data, model and loss (other schedules),
  the one with the lowest mean validation log-loss (MSE for regression; where the validation
  data are the test data, an optimistic choice). With ``m`` comparisons in it, the interval
  is the paired t-interval at level ``1 - alpha / m`` (Bonferroni) and ``p_adjusted =
  min(1, m p)`` with ``p`` the paired t-test's, so ``p_adjusted < alpha`` exactly when the
  interval excludes 0 (``method = "paired t, Bonferroni over m"``). Where per-seed differences
  are far from normal, a family can use the **bootstrap** instead (``methods``; study.toml
  ``[statistics] method``): ``BOOTSTRAP_RESAMPLES`` resamples of the seeds (scipy's
  ``bootstrap``, a fixed seed), the percentile interval at level ``1 - alpha / m`` with the
  quantiles taken from the empirical distribution (``lo`` = its ``a/2`` quantile, ``hi`` = minus
  the ``a/2`` quantile of the negated resamples, ``a = alpha / m``) and ``p = 2 min(P*(mean <=
  0), P*(mean >= 0))``, so that again ``p_adjusted < alpha`` exactly when the interval excludes
  0 (``method = "bootstrap, Bonferroni over m"``).
- **Robust summaries** beside the mean: ``median`` and ``iqm`` (the interquartile mean: the
  mean of the middle 50 %, rliable's choice) of the paired differences; ``effect_size`` is
  ``d_z = estimate / sd``.
- **Verdict.** ``"equivalent"`` when the interval lies inside ``(-margin, +margin)``; else
  ``"better"``/``"worse"`` when it excludes 0 on that side (``better`` says which direction is
  good: ``"lower"`` or ``"higher"``); else ``"inconclusive"``. Fewer than ``MIN_PAIRS`` pairs:
  no interval, ``"no verdict"``.
- **Margin**, the smallest effect worth having: ``DEFAULT_MARGINS`` -- 0.01 on bounded scores
  (accuracy, ECE, R^2), 0.005 on the Brier score, and 2 % of the baseline's mean on unbounded
  losses (log-loss, MSE, MAE; for ``excess_log_loss`` 2 % of the baseline's fresh log-loss) --
  unless ``margins`` gives one.
- **p_improvement**: the share of paired seeds in which the experiment beats the baseline (ties
  count half), with its 95 % Wilson interval -- the paired form of rliable's probability of
  improvement.
- **mde**: the smallest true difference ``n`` seeds detect with 80 % power at the family's
  adjusted alpha, ``(t_{1-a/2, n-1} + t_{0.8, n-1}) sd(d) / sqrt(n)``; **n_needed** (inconclusive
  rows): the smallest ``n`` for which that equals ``|estimate|`` (empty above 100,000).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from ..diagnostics.statistics import paired_comparison
from ..experiments.files import write_text
from .summary import MIN_PAIRS, compared_metrics, lower_is_better

__all__ = ["comparisons_frame", "write_comparisons", "load_comparisons", "DEFAULT_MARGINS", "COLUMNS", "ALPHA"]

ALPHA = 0.05
POWER = 0.8
COLUMNS = ["experiment", "baseline", "metric", "better", "n", "estimate", "ci_low", "ci_high", "method", "p_adjusted",
           "margin", "verdict", "p_improvement", "p_improvement_low", "p_improvement_high", "mde", "n_needed",
           "comparison", "median", "iqm", "effect_size"]
METHODS = ("t", "bootstrap")
BOOTSTRAP_RESAMPLES = 9999
OWN, BEST_PLAIN = "own baseline", "best plain baseline"
#: absolute margins; a metric not listed gets RELATIVE_MARGIN x |baseline mean|
DEFAULT_MARGINS = {"accuracy": 0.01, "ece": 0.01, "r2": 0.01, "brier": 0.005}
RELATIVE_MARGIN = 0.02


def _margin(metric: str, base: np.ndarray, frame, base_rows, margins: dict[str, float] | None) -> float:
    if margins and metric in margins:
        return float(margins[metric])
    m = metric.partition("_")[2]
    if m in DEFAULT_MARGINS:
        return DEFAULT_MARGINS[m]
    ref = base
    if metric.startswith("excess_") and f"fresh_{m}" in frame.columns:
        ref = base_rows[f"fresh_{m}"].to_numpy(dtype=float)
    ref = ref[np.isfinite(ref)]
    return RELATIVE_MARGIN * float(abs(ref.mean())) if ref.size else math.nan


def _wilson(wins: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``wins / n`` (``wins`` may be a half-integer: ties
    count half, so scipy's integer-only ``binomtest`` does not apply)."""
    z = float(stats.norm.ppf(0.5 + confidence / 2))
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _n_needed(effect: float, sd: float, alpha: float, limit: int = 100_000) -> int | None:
    """The smallest n in 2..limit with ``_mde(n) <= |effect|`` (mde falls with n), or None."""
    if not (effect and sd > 0 and math.isfinite(effect)):
        return None
    n, per_sd = _mde_per_sd(alpha, limit)
    # _mde(n) <= |effect| as per_sd(n) * sd <= |effect| (the same quantiles, one vector call)
    ok = np.flatnonzero(per_sd * sd <= abs(effect))
    return int(n[ok[0]]) if ok.size else None


@functools.lru_cache(maxsize=8)
def _mde_per_sd(alpha: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """``n = 2..limit`` and ``_mde(n, 1, alpha)`` for each, the t quantiles computed at once."""
    n = np.arange(2, limit + 1)
    df = n - 1
    return n, (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(POWER, df)) / np.sqrt(n)


def bootstrap_interval(d: np.ndarray, a: float, seed: int = 0) -> tuple[float, float, float]:
    """``(lo, hi, p)`` for the mean of ``d`` by the percentile bootstrap at level ``1 - a`` (see
    the module): ``p < a`` exactly when ``lo > 0`` or ``hi < 0``."""
    boot = stats.bootstrap((d,), np.mean, n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                           random_state=np.random.default_rng(seed)).bootstrap_distribution
    lo = float(np.quantile(boot, a / 2, method="inverted_cdf"))
    hi = -float(np.quantile(-boot, a / 2, method="inverted_cdf"))
    p = min(1.0, 2 * min(float(np.mean(boot <= 0)), float(np.mean(boot >= 0))))
    return lo, hi, p


def _method_of(metric: str, methods: Any) -> str:
    m = methods.get(metric, methods.get("default", "t")) if isinstance(methods, dict) else (methods or "t")
    if m not in METHODS:
        raise ValueError(f"statistics method for {metric}: expected one of {METHODS}; got {m!r}")
    return m


def _mde(n: int, sd: float, alpha: float) -> float:
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(POWER, df)) * sd / math.sqrt(n))


def best_plain_baselines(results, kinds: dict[str, str]) -> dict[str, str]:
    """For each baseline, the best plain baseline of its kind: among the baselines with the same
    ``kinds`` value (same data, model and loss; other schedules), the one with the lowest mean
    validation log-loss (classification) or MSE (regression)."""
    out: dict[str, str] = {}
    base = results[results["is_baseline"]]
    for name in base["experiment"].unique():
        same = [b for b in base["experiment"].unique() if kinds.get(b) is not None and kinds.get(b) == kinds.get(name)]
        col = "val_mse" if base.loc[base["experiment"] == name, "task"].iloc[0] == "regression" else "val_log_loss"
        if col not in base.columns or not same:
            continue
        means = {b: base.loc[base["experiment"] == b, col].mean() for b in same}
        means = {b: v for b, v in means.items() if v == v}
        if means:
            out[name] = min(means, key=means.get)
    return out


def _paired(results, best: dict[str, str], sweep: list[str]) -> list[dict[str, Any]]:
    """One row per (experiment grid point, baseline it is compared with, metric): the paired
    differences ``_d`` over the seeds both finished, the baseline's values ``_base`` and rows."""
    exps = results[~results["is_baseline"]]
    keys = exps[["experiment", *sweep]].drop_duplicates().to_dict("records")
    rows: list[dict[str, Any]] = []
    for key in keys:
        sel = np.ones(len(results), dtype=bool)
        for k, v in key.items():
            sel &= (results[k] == v).to_numpy() if not (isinstance(v, float) and math.isnan(v)) else \
                results[k].isna().to_numpy()
        e = results[sel]
        own = e["baseline"].iloc[0]
        task = e["task"].iloc[0]
        known = any(c.startswith("excess_") and e[c].notna().any() for c in e.columns)
        against = [(own, OWN)] + ([(best[own], BEST_PLAIN)] if own in best else [])
        for base_name, kind in against:
            b = results[results["experiment"] == base_name]
            for metric in compared_metrics(task, known):
                if metric not in results.columns:
                    continue
                pair = e[["seed", metric]].merge(b[["seed", metric]], on="seed", suffixes=("_e", "_b")).dropna()
                d = (pair[f"{metric}_e"] - pair[f"{metric}_b"]).to_numpy(dtype=float)
                rows.append({**key, "baseline": base_name, "metric": metric, "comparison": kind, "_d": d,
                             "_base": pair[f"{metric}_b"].to_numpy(dtype=float), "_b_rows": b})
    return rows


def _interval(d: np.ndarray, estimate: float, margin: float, lower: bool, method: str, a: float, m: int,
              alpha: float) -> dict[str, Any]:
    """The family-adjusted interval of ``MIN_PAIRS`` or more paired differences ``d`` (level
    ``1 - a``, ``a = alpha / m``), its adjusted p, the verdict against ``margin``, the mde and,
    for an inconclusive row, the seeds a verdict would need (see the module docstring)."""
    n, sd = len(d), float(d.std(ddof=1))
    if method == "bootstrap" and sd > 0:
        lo, hi, p = bootstrap_interval(d, a)
        p_adj = min(1.0, m * p)
    else:
        c = paired_comparison(d, np.zeros_like(d), confidence=1 - a, alpha=alpha, n_comparisons=m)
        lo, hi, p_adj = (c.ci_low, c.ci_high, c.p_adjusted) if sd > 0 else (estimate,) * 2 + (c.p_adjusted,)
    if math.isfinite(margin) and -margin < lo and hi < margin:
        verdict = "equivalent"
    elif lo > 0 or hi < 0:
        verdict = "better" if (hi < 0) == lower else "worse"
    else:
        verdict = "inconclusive"
    return dict(ci_low=lo, ci_high=hi, p_adjusted=p_adj, verdict=verdict, mde=_mde(n, sd, a) if sd > 0 else 0.0,
                n_needed=_n_needed(estimate, sd, a) if verdict == "inconclusive" else None)


def comparisons_frame(results, margins: dict[str, float] | None = None, alpha: float = ALPHA,
                      kinds: dict[str, str] | None = None, methods: str | dict[str, str] | None = None):
    """The comparisons of a ``load_results`` table (see the module docstring). With ``kinds``
    (baseline name -> a key of its data, model and loss), each experiment is also compared with
    the best plain baseline of its kind (``comparison = "best plain baseline"``, its own family).
    ``methods``: ``"t"`` (default) or ``"bootstrap"`` for every family, or ``{metric: method}``
    (``"default"``: the rest)."""
    import pandas as pd

    if results.empty:
        return pd.DataFrame(columns=COLUMNS)
    best = best_plain_baselines(results, kinds) if kinds else {}
    sweep = [c for c in results.columns if "/" in c]
    rows = _paired(results, best, sweep)
    out = []
    families: dict[tuple[str, str], int] = {}
    for r in rows:
        if len(r["_d"]) >= MIN_PAIRS:
            fam = (r["metric"], r["comparison"])
            families[fam] = families.get(fam, 0) + 1
    for r in rows:
        d, metric = r.pop("_d"), r["metric"]
        base, b_rows = r.pop("_base"), r.pop("_b_rows")
        lower = lower_is_better(metric)
        n = len(d)
        m = families.get((metric, r["comparison"]), 1)
        a = alpha / m
        method = _method_of(metric, methods)
        row = {**r, "better": "lower" if lower else "higher", "n": n, "estimate": float(d.mean()) if n else math.nan,
               "method": f"{'paired t' if method == 't' else 'bootstrap'}, Bonferroni over {m}",
               "margin": _margin(metric, base, results, b_rows, margins),
               "median": float(np.median(d)) if n else math.nan,
               "iqm": float(stats.trim_mean(d, 0.25)) if n else math.nan}
        wins = float(np.sum(d < 0) if lower else np.sum(d > 0)) + 0.5 * float(np.sum(d == 0))
        if n:
            lo, hi = _wilson(wins, n)
            row.update(p_improvement=wins / n, p_improvement_low=lo, p_improvement_high=hi)
        if n >= 2 and float(d.std(ddof=1)) > 0:
            row["effect_size"] = float(d.mean() / d.std(ddof=1))
        if n < MIN_PAIRS:
            row.update(ci_low=math.nan, ci_high=math.nan, p_adjusted=math.nan, verdict="no verdict", mde=math.nan,
                       n_needed=None)
            out.append(row)
            continue
        row.update(_interval(d, row["estimate"], row["margin"], lower, method, a, m, alpha))
        out.append(row)
    cols = ["experiment", *sweep] + [c for c in COLUMNS if c != "experiment"]
    df = pd.DataFrame.from_records(out).reindex(columns=cols)  # a column no row set (no pairs at all) is empty
    df["n_needed"] = df["n_needed"].astype("Int64")
    return df


def write_comparisons(out: str | Path, results, margins: dict[str, float] | None = None,
                      methods: str | dict[str, str] | None = None) -> Path:
    p = Path(out) / "comparisons.csv"
    write_text(p, comparisons_frame(results, margins, methods=methods).to_csv(index=False, na_rep=""))
    return p


def load_comparisons(out: str | Path):
    """``OUT/comparisons.csv`` (written by ``reglab report``) as a pandas ``DataFrame``."""
    import pandas as pd

    p = Path(out) / "comparisons.csv"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no comparisons; run `reglab report {out}` first")
    return pd.read_csv(p, dtype={"n_needed": "Int64"})
