"""The regularization path: metrics against the strength, over seeds, with an honest choice of it.

For each strength ``lambda`` (replacing every non-zero regularization strength of an experiment)
and each seed, one model is trained -- all of them in one ``fit_many`` run (grid x seeds). The
best ``lambda`` is chosen on the validation data (the test split, mean over seeds) and then scored
on data it was not chosen on: a fresh sample of 100,000 points from the known distribution. A
per-seed choice (each seed picks its own ``lambda`` on its own validation split) is scored the
same way, which shows how much the choice itself varies.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import datasets as _datasets
from ..diagnostics.statistics import mean_ci
from ..vectorized.fit_many import fit_many
from .build import builder, early_stopping, loss_of
from .runner import evaluate_run, write_json
from .schema import ExperimentSpec

__all__ = ["regularization_path", "with_strength"]

_STRENGTH_KEYS = ("l1", "l2", "factor", "strength")


def _set_strength(ser: dict, lam: float) -> dict:
    ser = copy.deepcopy(ser)
    cfg = ser["config"]
    if "terms" in cfg:
        cfg["terms"] = [_set_strength(t, lam) for t in cfg["terms"]]
    for k in _STRENGTH_KEYS:
        if k in cfg and cfg[k]:
            cfg[k] = lam
    if ser["class_name"] in ("l1", "l2", "L1", "L2") and not cfg:
        cfg["l1" if ser["class_name"].lower() == "l1" else "l2"] = lam
    return ser


def with_strength(spec: ExperimentSpec, lam: float) -> ExperimentSpec:
    """The experiment with every non-zero regularization strength replaced by ``lam``."""
    cfg = copy.deepcopy(spec.config)
    n = 0
    for layer in cfg["model"]["layers"]:
        for k in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            if k in layer:
                layer[k] = _set_strength(layer[k], lam)
                n += 1
    if isinstance(cfg["train"]["loss"], dict):
        cfg["train"]["loss"]["strength"] = lam
        n += 1
    if n == 0:
        raise ValueError(f"experiment {spec.name!r} has no regularizer whose strength a path could vary")
    cfg["name"] = f"{spec.name}_path"
    return ExperimentSpec(cfg, spec.path)


def regularization_path(spec: ExperimentSpec, strengths: Sequence[float], seeds: Sequence[int],
                        out: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Train ``len(strengths) x len(seeds)`` models in one vectorized run; return (and write to
    ``out/path.json``) the metrics per strength, the chosen strength and its held-out score."""
    t0 = time.perf_counter()
    strengths = [float(s) for s in strengths]
    if any(s < 0 for s in strengths):
        raise ValueError(f"strengths must be non-negative; got {strengths}")
    seeds = [int(s) for s in seeds]
    data = {s: _datasets.get(spec.config["data"]["name"], random_state=s,
                             **{k: v for k, v in spec.config["data"].items() if k != "name"}) for s in seeds}
    specs = {lam: with_strength(spec, lam) for lam in strengths}
    n_in = data[seeds[0]].x_train.shape[1]
    builders = {lam: builder(specs[lam], n_in) for lam in strengths}
    order = [(s, lam) for s in seeds for lam in strengths]  # fit_many's product(seeds, grid) order
    tr = spec.config["train"]
    res = fit_many(lambda lam: builders[lam](), [data[s].x_train for s, _ in order], [data[s].y_train for s, _ in order],
                   seeds=seeds, grid=[{"lam": lam} for lam in strengths], loss=loss_of(spec),
                   optimizer=tr["optimizer"], epochs=tr["epochs"], batch_size=tr["batch_size"],
                   validation_data=([data[s].x_test for s, _ in order], [data[s].y_test for s, _ in order]),
                   callbacks=early_stopping(spec), progress=progress)
    keys = ("val_data_loss", "test_accuracy", "excess_log_loss", "fresh_log_loss")
    metrics = {k: np.full((len(strengths), len(seeds)), np.nan) for k in keys}
    for i, (s, lam) in enumerate(order):
        m, _ = evaluate_run(specs[lam], res.models[i], data[s], res.histories[i], arrays_for_report=False)
        for k in keys:
            metrics[k][strengths.index(lam), seeds.index(s)] = m["metrics"].get(k, np.nan)
    mean_val = np.nanmean(metrics["val_data_loss"], axis=1)
    best = int(np.nanargmin(mean_val))
    chosen_fresh = metrics["excess_log_loss"][best]
    per_seed_best = np.nanargmin(metrics["val_data_loss"], axis=0)
    per_seed_fresh = metrics["excess_log_loss"][per_seed_best, np.arange(len(seeds))]
    stats = {k: [list(mean_ci(row)) for row in v] for k, v in metrics.items()}
    m_sel, lo_sel, hi_sel = mean_ci(chosen_fresh)
    m_ps, lo_ps, hi_ps = mean_ci(per_seed_fresh)
    zero = strengths.index(0.0) if 0.0 in strengths else None
    doc = {
        "experiment": spec.name,
        "label": "lambda replacing every regularization strength of " + spec.name,
        "strengths": strengths,
        "seeds": seeds,
        "metrics": {k: v.tolist() for k, v in metrics.items()},
        "stats": stats,
        "best_strength": strengths[best],
        "chosen_excess_log_loss": [m_sel, lo_sel, hi_sel],
        "per_seed_choice_excess_log_loss": [m_ps, lo_ps, hi_ps],
        "per_seed_choices": [strengths[j] for j in per_seed_best],
        "seconds": time.perf_counter() - t0,
        "models": len(order),
        "description": (f"`{spec.name}` with every regularization strength set to lambda, {len(strengths)} values of "
                        f"lambda x {len(seeds)} seeds = {len(order)} models trained in one `fit_many` run "
                        f"({time.perf_counter() - t0:.1f} s). Bands: 95% CI over seeds. The best lambda is chosen on "
                        "the validation (test-split) data loss averaged over seeds, then scored on a fresh sample of "
                        "100,000 points it was not chosen on."),
        "verdict": (f"Chosen lambda = {strengths[best]:.2g}; its excess log-loss on fresh data is {m_sel:.4f} "
                    f"[{lo_sel:.4f}, {hi_sel:.4f}]. Letting each seed choose its own lambda on its own 75 validation "
                    f"points gives {m_ps:.4f} [{lo_ps:.4f}, {hi_ps:.4f}] (choices: "
                    f"{sorted(set(round(strengths[j], 8) for j in per_seed_best))})" +
                    (f"; lambda = 0 (no regularization) has {stats['excess_log_loss'][zero][0]:.4f}." if zero is not None
                     else ".")),
    }
    if out is not None:
        write_json(Path(out) / "path.json", doc)
    return doc
