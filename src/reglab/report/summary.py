"""Aggregate finished runs: per-experiment means with 95% CIs, paired comparisons with baselines."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..diagnostics.statistics import binomial_ci, holm, mean_ci, paired_comparison, with_adjusted
from ..experiments.schema import ExperimentSpec

__all__ = ["Summary", "summarize", "METRICS"]

#: metric key -> (label, lower is better)
METRICS = {
    "val_data_loss": ("validation data loss (test split)", True),
    "test_accuracy": ("test accuracy", False),
    "excess_log_loss": ("excess log-loss over Bayes (fresh 100k sample)", True),
    "excess_log_loss_test": ("excess log-loss over Bayes (test split)", True),
}


@dataclass
class ExperimentSummary:
    name: str
    title: str
    program: int | None
    config: dict[str, Any]
    seeds: list[int]
    runs: list[dict]
    baseline: str | None
    stats: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    comparisons: dict[str, Any] = field(default_factory=dict)

    def values(self, key: str) -> np.ndarray:
        return np.array([r["metrics"].get(key, np.nan) for r in self.runs], dtype=float)

    def by_seed(self, key: str) -> dict[int, float]:
        return {r["seed"]: r["metrics"].get(key, np.nan) for r in self.runs}


@dataclass
class Summary:
    experiments: dict[str, ExperimentSummary]

    def ordered(self) -> list[ExperimentSummary]:
        def key(e):
            return (e.config.get("baseline", False), e.program is None, e.program or 0, e.name)
        return sorted(self.experiments.values(), key=key)


def summarize(rows: list[dict]) -> Summary:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["experiment"]].append(r)
    exps: dict[str, ExperimentSummary] = {}
    for name, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        cfg = rs[0]["config"]
        base = None if cfg.get("baseline") else ExperimentSpec(cfg, "<results>").baseline().name
        e = ExperimentSummary(name, cfg.get("title", name), cfg.get("program"), cfg, [r["seed"] for r in rs], rs, base)
        for k in METRICS:
            e.stats[k] = mean_ci(e.values(k))
        exps[name] = e
    # paired comparisons with the baseline of the same schedule, Holm-corrected per metric
    for metric in ("val_data_loss", "test_accuracy", "excess_log_loss"):
        comps = []
        for e in exps.values():
            b = exps.get(e.baseline) if e.baseline else None
            if b is None:
                continue
            a_s, b_s = e.by_seed(metric), b.by_seed(metric)
            common = sorted(set(a_s) & set(b_s))
            if len(common) < 2:
                continue
            c = paired_comparison([a_s[s] for s in common], [b_s[s] for s in common])
            comps.append((e, c))
        adj = holm([c.p_value for _, c in comps]) if comps else []
        for (e, c), p in zip(comps, adj):
            e.comparisons[metric] = with_adjusted(c, p)
    return Summary(exps)


def lecture_accuracy_check(accuracy: float, n: int = 75) -> dict[str, float]:
    """Wilson interval of one accuracy measured on ``n`` points (the lecture's 75 test points)."""
    k = int(round(accuracy * n))
    lo, hi = binomial_ci(k, n)
    return {"accuracy": accuracy, "correct": k, "n": n, "low": lo, "high": hi}


def selection_by_loss_vs_accuracy(summ: Summary) -> dict[str, Any] | None:
    """The lecture's Model A/B point, tested on the study's own models.

    For every seed (one data split) the study trains one model per experiment. Among those models,
    pick the one with the lowest validation data loss, and the one with the highest validation
    accuracy (ties broken by averaging over the tied models); score both on the fresh 100k-point
    sample (excess log-loss over Bayes, and accuracy). Also the per-seed Kendall rank correlation
    of each validation score with the fresh excess log-loss.
    """
    from scipy import stats

    by_seed: dict[int, list[tuple[float, float, float, float]]] = defaultdict(list)
    for e in summ.experiments.values():
        for r in e.runs:
            m = r["metrics"]
            if all(k in m for k in ("val_data_loss", "val_accuracy", "excess_log_loss", "fresh_accuracy")):
                by_seed[r["seed"]].append((m["val_data_loss"], m["val_accuracy"], m["excess_log_loss"],
                                           m["fresh_accuracy"]))
    rows = {s: np.array(v) for s, v in by_seed.items() if len(v) >= 3}
    if len(rows) < 2:
        return None
    pick_loss, pick_acc, tau_loss, tau_acc = [], [], [], []
    for a in rows.values():
        i = int(np.nanargmin(a[:, 0]))
        pick_loss.append(a[i, 2:])
        best_acc = np.nanmax(a[:, 1])
        pick_acc.append(a[a[:, 1] == best_acc, 2:].mean(axis=0))
        tau_loss.append(stats.kendalltau(a[:, 0], a[:, 2]).statistic)
        tau_acc.append(stats.kendalltau(-a[:, 1], a[:, 2]).statistic)
    pl, pa = np.array(pick_loss), np.array(pick_acc)
    return {
        "seeds": len(rows), "models_per_seed": int(np.median([len(a) for a in rows.values()])),
        "by_loss_excess": mean_ci(pl[:, 0]), "by_accuracy_excess": mean_ci(pa[:, 0]),
        "by_loss_accuracy": mean_ci(pl[:, 1]), "by_accuracy_accuracy": mean_ci(pa[:, 1]),
        "difference": paired_comparison(pl[:, 0], pa[:, 0]),
        "tau_loss": mean_ci(tau_loss), "tau_accuracy": mean_ci(tau_acc),
    }
