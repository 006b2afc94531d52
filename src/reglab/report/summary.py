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
