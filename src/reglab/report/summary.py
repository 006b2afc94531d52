"""Aggregate finished runs: per-experiment means with 95% CIs over the runs that finished. (The
paired comparisons with baselines are ``comparisons.py``'s, the one place they are computed.)

A failed (diverged) run is kept out of means, intervals and paired differences; how many failed
is shown per row and compared with the baseline's failures (Fisher's exact test), since dropping
failures silently would favour the survivors. A comparison needs at least ``MIN_PAIRS`` seeds
where both runs finished; with fewer it gets no verdict.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..diagnostics.metrics import LABELS, METRICS
from ..diagnostics.statistics import mean_ci, paired_comparison
from ..experiments.results import sweep_cell, sweep_order

__all__ = ["Summary", "RowSummary", "summarize", "metric_label", "lower_is_better", "compared_metrics",
           "selection_by_loss_vs_accuracy", "MIN_PAIRS"]

MIN_PAIRS = 5


def metric_label(key: str) -> str:
    prefix, _, m = key.partition("_")
    where = {"val": "validation", "test": "test", "fresh": "fresh sample", "bayes": "Bayes-optimal",
             "excess": "excess over Bayes"}[prefix]
    return f"{where} {LABELS.get(m, m)}"


def lower_is_better(key: str) -> bool:
    m = key.partition("_")[2]
    for table in METRICS.values():
        if m in table:
            return table[m]
    return True


def compared_metrics(task: str, known: bool) -> list[str]:
    """The metrics each experiment is compared with its baseline on, the first the headline."""
    if task == "regression":
        return ["test_mse", "test_mae", "test_r2"]
    out = ["test_log_loss", "test_accuracy", "test_brier", "test_ece"]
    return (["excess_log_loss"] + out) if known else out


@dataclass
class RowSummary:
    """One experiment grid point (or a baseline) over its seeds."""

    key: str
    name: str
    title: str
    config: dict[str, Any]
    sweep: dict[str, Any]
    runs: list[dict]
    task: str
    baseline: str | None
    is_baseline: bool
    stats: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    failure_test: tuple[int, int, float] | None = None  # (failed here, failed in baseline, Fisher p)

    @property
    def finished(self) -> list[dict]:
        return [r for r in self.runs if not r.get("failed")]

    @property
    def n_failed(self) -> int:
        return len(self.runs) - len(self.finished)

    def by_seed(self, key: str) -> dict[int, float]:
        out = {}
        for r in self.finished:
            v = r["metrics"].get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out[r["seed"]] = float(v)
        return out

    def values(self, key: str) -> np.ndarray:
        return np.array(list(self.by_seed(key).values()), dtype=float)


@dataclass
class Summary:
    rows: dict[str, RowSummary]

    def ordered(self) -> list[RowSummary]:
        return sorted(self.rows.values(), key=lambda e: (e.is_baseline, e.name,
                                                           [(k, sweep_order(v)) for k, v in sorted(e.sweep.items())]))

    @property
    def tasks(self) -> list[str]:
        return sorted({e.task for e in self.rows.values()})

    def metrics(self) -> list[str]:
        keys = {k for e in self.rows.values() for r in e.finished for k in r["metrics"]
                if k.startswith(("val_", "test_", "fresh_", "excess_", "bayes_"))}
        return sorted(keys)


def _key(row: dict) -> str:
    sweep = row.get("sweep") or {}
    if not sweep:
        return row["experiment"]
    return row["experiment"] + " [" + ", ".join(f"{k.rsplit('/', 1)[-1]}={v:g}" if isinstance(v, float) else
                                                f"{k.rsplit('/', 1)[-1]}={sweep_cell(v)}" for k, v in sweep.items()) + "]"


def summarize(rows: list[dict]) -> Summary:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[_key(r)].append(r)
    out: dict[str, RowSummary] = {}
    for key, rs in groups.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        r0 = rs[0]
        sweep = {k: sweep_cell(v) for k, v in (r0.get("sweep") or {}).items()}  # as in the results table
        e = RowSummary(key, r0["experiment"], r0.get("title", r0["experiment"]), r0["config"], sweep,
                       rs, r0.get("task", "binary"), r0.get("baseline"), bool(r0.get("is_baseline")))
        keys = {k for r in e.finished for k in r["metrics"] if k.startswith(("val_", "test_", "fresh_", "excess_",
                                                                              "bayes_"))}
        for k in keys:
            v = e.values(k)
            if v.size:
                e.stats[k] = mean_ci(v)
        out[key] = e
    from scipy import stats as _st

    for e in out.values():
        b = out.get(e.baseline) if e.baseline else None
        if b is not None and (e.n_failed or b.n_failed):
            p = float(_st.fisher_exact([[e.n_failed, len(e.runs) - e.n_failed],
                                        [b.n_failed, len(b.runs) - b.n_failed]]).pvalue)
            e.failure_test = (e.n_failed, b.n_failed, p)
    return Summary(out)


def selection_by_loss_vs_accuracy(summ: Summary) -> dict[str, Any] | None:
    """Model selection by validation loss vs validation accuracy, tested on the study's models.

    For every seed (one data split) the study trains one model per experiment. Among those models,
    pick the one with the lowest validation log-loss, and the one with the highest validation
    accuracy (ties broken by averaging over the tied models); score both on the fresh sample
    (excess log-loss over Bayes, and accuracy). Also the per-seed Kendall rank correlation of each
    validation score with the fresh excess log-loss. Needs a known distribution.
    """
    from scipy import stats

    by_seed: dict[int, list[tuple[float, float, float, float]]] = defaultdict(list)
    for e in summ.rows.values():
        for r in e.finished:
            m = r["metrics"]
            if all(k in m for k in ("val_log_loss", "val_accuracy", "excess_log_loss", "fresh_accuracy")):
                by_seed[r["seed"]].append((m["val_log_loss"], m["val_accuracy"], m["excess_log_loss"],
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
