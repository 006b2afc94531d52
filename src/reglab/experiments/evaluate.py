"""The metrics of one trained model on its splits (and on a fresh sample where the distribution
is known), and the arrays the report draws from it."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..diagnostics.evaluate import predict
from ..diagnostics.metrics import METRICS, score, to_probabilities
from ..diagnostics.overfitting import overfitting
from ..diagnostics.sparsity import sparsity
from .data import Splits
from .schema import ExperimentSpec

__all__ = ["evaluate_run", "FRESH_SAMPLES", "FRESH_SEED", "GRID"]

FRESH_SAMPLES = 100_000
FRESH_SEED = 1_000_003
GRID = 120  # decision-boundary grid resolution
_FRESH: dict[str, tuple[np.ndarray, np.ndarray, dict[str, float]]] = {}


def _fresh(dist: Any) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """The fresh sample of a known distribution and the Bayes-optimal prediction's scores on it."""
    key = repr(dist)
    if key not in _FRESH:
        x, y = dist.sample(FRESH_SAMPLES, FRESH_SEED)
        _FRESH[key] = (x, y, score("binary", y, dist.posterior(x)))
    return _FRESH[key]


def _scores(sp: Splits, fl: bool, model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    out = predict(model, x).astype(np.float64)
    if not np.isfinite(out).all():  # a diverged model: no figure is made up
        return {}
    if sp.task == "regression":
        if sp.y_transform is not None:  # scores in the target's own units
            out = out * sp.y_transform.std + sp.y_transform.mean
            y = y * sp.y_transform.std + sp.y_transform.mean
        return score("regression", y, out)
    return score(sp.task, y, to_probabilities(out, sp.task, fl))


def evaluate_run(spec: ExperimentSpec, model: torch.nn.Module, sp: Splits, history,
                 arrays_for_report: bool = True) -> tuple[dict, dict]:
    """Metrics of one trained model -- ``val_<m>`` (validation split), ``test_<m>`` (test split),
    and where the distribution is known ``fresh_<m>`` (a fresh sample), ``bayes_<m>`` (the
    Bayes-optimal prediction on it) and ``excess_<m>`` (fresh minus Bayes) -- and, if asked,
    the arrays the report draws (a decision boundary for 2-D binary inputs). The model is moved
    to the CPU first: wherever it trained, it is evaluated (and saved) there."""
    model.cpu()
    fl = spec.train.loss.from_logits(sp.task)
    metrics: dict[str, Any] = {}
    for prefix, x, y in (("val", sp.x_val, sp.y_val), ("test", sp.x_test, sp.y_test)):
        for k, v in _scores(sp, fl, model, x, y).items():
            metrics[f"{prefix}_{k}"] = v
    metrics["n_train"], metrics["n_val"], metrics["n_test"] = (int(sp.x_train.shape[0]), int(sp.x_val.shape[0]),
                                                               int(sp.x_test.shape[0]))
    arrays: dict[str, np.ndarray] = {}
    dist = sp.distribution
    if dist is not None and sp.task == "binary":
        fx, fy, bayes = _fresh(dist)
        fresh = _scores(sp, fl, model, sp.model_inputs(fx), fy)
        for k in METRICS["binary"] if fresh else ():
            metrics[f"fresh_{k}"], metrics[f"bayes_{k}"] = fresh[k], bayes[k]
            metrics[f"excess_{k}"] = fresh[k] - bayes[k]
    if arrays_for_report and sp.task == "binary" and sp.input_shape == (2,) and "test_log_loss" in metrics:
        lo = np.minimum(sp.x_train.min(0), sp.x_test.min(0)) - 0.3
        hi = np.maximum(sp.x_train.max(0), sp.x_test.max(0)) + 0.3
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], GRID), np.linspace(lo[1], hi[1], GRID))
        grid = np.column_stack([gx.ravel(), gy.ravel()])
        arrays["grid_x"], arrays["grid_y"] = gx, gy
        arrays["grid_p"] = to_probabilities(predict(model, grid), "binary", fl).reshape(GRID, GRID).astype(np.float32)
        if dist is not None and sp.transform is None:  # the grid lies in the distribution's own space
            arrays["grid_bayes"] = dist.posterior(grid).reshape(GRID, GRID).astype(np.float32)
        arrays["x_train"], arrays["y_train"] = sp.x_train, sp.y_train
    last = {k: float(v[-1]) for k, v in history.history.items()} if len(history) else {}
    for k in ("val_loss", "val_data_loss", "loss", "data_loss"):
        if k in last:
            metrics[f"history_{k}"] = last[k]
    metrics["epochs_run"] = len(history)
    analysis = spec.analysis
    extra: dict[str, Any] = {}
    if len(history) and "val_data_loss" in history:
        extra["overfitting"] = overfitting(history).to_dict()
    layers = analysis.sparsity_layers
    if layers:
        extra["sparsity"] = sparsity(model, sp.x_test, layers)
    if analysis.weight_histograms:
        extra["weights"] = {n: np.abs(p.detach().cpu().numpy()).ravel().tolist()
                            for n, p in model.named_parameters() if n.endswith("weight")}
    return {"metrics": metrics, **extra}, arrays
