"""The regularization path: metrics against the strength, over seeds, with an honest choice of it.

For each strength ``lambda`` and each seed, one model is trained -- all of them in one
``fit_many`` run (grid x seeds). ``lambda`` replaces every non-zero strength of every regularizer
of the experiment, found through each regularizer's ``hparams()`` (whatever it calls its
strength: ``l1``, ``l2``, ``factor``, ``strength``, a term of a sum...), and the strength of a
regularized loss. The best ``lambda`` is chosen on the **validation** split (the task's loss,
mean over seeds) and scored on the **test** split -- and, where the distribution is known, on a
fresh sample -- which it was not chosen on. A per-seed choice (each seed picks its own
``lambda`` on its own validation split) is scored the same way, which shows how much the choice
itself varies.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics.metrics import LABELS, METRICS, metric_range
from ..diagnostics.statistics import mean_ci
from .. import devices as _grammar
from . import devices as _devices
from .build import builder, splits_of
from .files import own_folder, write_json
from .plan import fit_group
from .evaluate import evaluate_run
from .sections import MAX_STRENGTH
from .spec import ExperimentSpec, with_strength

__all__ = ["regularization_path", "path_file"]


def path_file(out: str | Path, experiment: str) -> Path:
    """Where the path of ``experiment`` is written: ``out/paths/<experiment>.json``."""
    return Path(out) / "paths" / f"{experiment}.json"


def path_key(spec: ExperimentSpec, strengths: Sequence[float], seeds: Sequence[int]) -> str:
    """What a path's results depend on: the experiment's digest, the strengths and the seeds
    (a study reuses a written path only when its key matches)."""
    import hashlib
    import json

    blob = json.dumps([spec.digest(), [float(s) for s in strengths], [int(s) for s in seeds]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _checked(strengths: Sequence[float]) -> list[float]:
    """The strengths as floats: at least one, each once, non-negative and below ``MAX_STRENGTH``."""
    out = [float(s) for s in strengths]
    if not out or any(not 0 <= s < MAX_STRENGTH for s in out):
        raise ValueError(f"strengths must be non-negative numbers below {MAX_STRENGTH:g}; got {out}")
    if len(set(out)) != len(out):
        raise ValueError(f"strengths must differ from each other; got {out}")
    return out


def regularization_path(spec: ExperimentSpec, strengths: Sequence[float], seeds: Sequence[int],
                        out: str | Path | None = None, progress: bool = False) -> dict[str, Any]:
    """Train ``len(strengths) x len(seeds)`` models in one vectorized run; return (and write to
    ``out/paths/<experiment>.json``) the metrics per strength, the chosen strength and its held-out score."""
    t0 = time.perf_counter()
    strengths = _checked(strengths)
    seeds = [int(s) for s in seeds]
    data = {s: splits_of(spec, s) for s in seeds}
    sp0 = data[seeds[0]]
    task = sp0.task
    specs = {lam: with_strength(spec, lam) for lam in strengths}
    builders = {lam: builder(specs[lam], sp0.input_shape, sp0.n_outputs) for lam in strengths}
    order = [(s, lam) for s in seeds for lam in strengths]  # fit_many's product(seeds, grid) order
    res = fit_group(spec, task, lambda lam: builders[lam](), seeds, [{"lam": lam} for lam in strengths],
                    [data[s] for s, _ in order], shared=False, progress=progress)
    device = _devices.of(spec)
    if res.interrupted:  # a path cut short is never stored (nor returned) as finished
        raise KeyboardInterrupt(f"{spec.name}: its regularization path was interrupted; nothing of it was written")
    select = "log_loss" if task != "regression" else "mse"
    score_keys = [f"test_{select}"] + [f"test_{m}" for m in METRICS[task] if m != select]
    keys = [f"val_{select}"] + score_keys
    if sp0.distribution is not None:
        keys += [f"excess_{select}"]
    metrics = {k: np.full((len(strengths), len(seeds)), np.nan) for k in keys}
    for i, (s, lam) in enumerate(order):
        if i in res.failed:
            continue
        m, _ = evaluate_run(specs[lam], res.models[i], data[s], res.histories[i], arrays_for_report=False)
        for k in keys:
            metrics[k][strengths.index(lam), seeds.index(s)] = m["metrics"].get(k, np.nan)
    held = f"excess_{select}" if sp0.distribution is not None else f"test_{select}"
    mean_val = np.nanmean(metrics[f"val_{select}"], axis=1)
    best = int(np.nanargmin(mean_val))
    per_seed_best = np.nanargmin(np.where(np.isnan(metrics[f"val_{select}"]), np.inf, metrics[f"val_{select}"]), axis=0)
    chosen = metrics[held][best]
    per_seed = metrics[held][per_seed_best, np.arange(len(seeds))]
    stats = {k: [list(mean_ci(row)) for row in v] for k, v in metrics.items()}
    low, high = metric_range(held)  # the intervals in the verdict do not leave the metric's range
    m_sel, lo_sel, hi_sel = mean_ci(chosen)
    m_ps, lo_ps, hi_ps = mean_ci(per_seed)
    lo_sel, hi_sel, lo_ps, hi_ps = max(lo_sel, low), min(hi_sel, high), max(lo_ps, low), min(hi_ps, high)
    zero = strengths.index(0.0) if 0.0 in strengths else None
    where = "the validation split" if not sp0.validation_is_test else "the validation data (which are the test data here)"
    held_words = ("a fresh sample from the known distribution" if sp0.distribution is not None else "the test split")
    doc = {
        "key": path_key(spec, strengths, seeds),
        "experiment": spec.name,
        "label": "lambda replacing every regularization strength of " + spec.name,
        "task": task, "select_metric": f"val_{select}", "held_out_metric": held,
        "strengths": strengths,
        "seeds": seeds,
        **_grammar.record(device),
        "metrics": {k: v.tolist() for k, v in metrics.items()},
        "stats": stats,
        "failed": len(res.failed),
        "best_strength": strengths[best],
        "chosen": [m_sel, lo_sel, hi_sel],
        "per_seed_choice": [m_ps, lo_ps, hi_ps],
        "per_seed_choices": [strengths[j] for j in per_seed_best],
        "seconds": time.perf_counter() - t0,
        "models": len(order),
        "description": (f"`{spec.name}` with every regularization strength set to lambda, {len(strengths)} values of "
                        f"lambda x {len(seeds)} seeds = {len(order)} models trained in one `fit_many` run "
                        f"({time.perf_counter() - t0:.1f} s). Bands: 95% CI over seeds. The best lambda is chosen on "
                        f"the {LABELS[select]} of {where}, averaged over seeds, then scored on {held_words}."),
        "verdict": (f"Chosen lambda = {strengths[best]:.2g}; its {held.replace('_', ' ')} is {m_sel:.4f} "
                    f"[{lo_sel:.4f}, {hi_sel:.4f}]. Letting each seed choose its own lambda on its own validation "
                    f"data gives {m_ps:.4f} [{lo_ps:.4f}, {hi_ps:.4f}] (choices: "
                    f"{sorted(set(round(strengths[j], 8) for j in per_seed_best))})" +
                    (f"; lambda = 0 (no regularization) has {stats[held][zero][0]:.4f}." if zero is not None else ".")),
    }
    if out is not None:
        own_folder(out, "paths")
        write_json(path_file(out, spec.name), doc, durable=True)
    return doc
