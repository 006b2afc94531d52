"""Scores of predictions by task: only the metrics that apply to it.

Tasks and their metrics (``METRICS[task]``; the key, and whether lower is better):

- ``binary`` (``p`` = P(y = 1), shape ``(n,)``) and ``multiclass`` (``P``, shape ``(n, K)``):
  ``log_loss`` = -mean log p(true class), probabilities clipped to [1e-7, 1 - 1e-7] (Keras's
  epsilon); ``accuracy`` = share of argmax (binary: p > 0.5) equal to the label; ``brier`` =
  mean over examples of sum over classes of (p_k - 1[y = k])^2 (binary: that sum over the two
  classes is 2 (p - y)^2, so we report the usual binary Brier score mean (p - y)^2; multiclass
  the summed form); ``ece`` = sum over 15 equal-width bins of the top-label confidence of
  (bin share) * |accuracy in bin - mean confidence in bin|.
- ``regression``: ``mse`` = mean (y - yhat)^2, ``mae`` = mean |y - yhat|, ``r2`` = 1 - SSE/SST
  (scikit-learn's ``r2_score``, outputs averaged uniformly).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as _sk

__all__ = ["METRICS", "TASKS", "score", "to_probabilities", "ECE_BINS", "RANGES", "metric_range"]

TASKS = ("binary", "multiclass", "regression")
EPSILON = 1e-7
ECE_BINS = 15

#: task -> {metric: lower is better}
METRICS: dict[str, dict[str, bool]] = {
    "binary": {"log_loss": True, "accuracy": False, "brier": True, "ece": True},
    "multiclass": {"log_loss": True, "accuracy": False, "brier": True, "ece": True},
    "regression": {"mse": True, "mae": True, "r2": False},
}

#: metric -> the range its values cannot leave (an interval is shown clipped to it)
RANGES = {"accuracy": (0.0, 1.0), "ece": (0.0, 1.0), "brier": (0.0, 1.0), "log_loss": (0.0, math.inf),
          "mse": (0.0, math.inf), "mae": (0.0, math.inf), "r2": (-math.inf, 1.0)}


def metric_range(column: str) -> tuple[float, float]:
    """The range of a results column's values (``test_log_loss`` -> ``(0, inf)``); unbounded for
    an excess over the Bayes-optimal score (a sample can beat it) and for unknown names."""
    prefix, _, m = column.partition("_")
    return (-math.inf, math.inf) if prefix == "excess" else RANGES.get(m, (-math.inf, math.inf))


#: metric -> words for reports
LABELS = {"log_loss": "log-loss", "accuracy": "accuracy", "brier": "Brier score", "ece": "calibration error (ECE)",
          "mse": "mean squared error", "mae": "mean absolute error", "r2": "R²"}


def to_probabilities(out: np.ndarray, task: str, from_logits: bool) -> np.ndarray:
    """Model outputs -> ``(n,)`` P(y = 1) (binary) or ``(n, K)`` class probabilities (multiclass).
    Probabilities that a model outputs directly are used as Keras's losses use them (a
    multiclass row is normalized by its sum)."""
    out = np.asarray(out, dtype=np.float64)
    if task == "binary":
        z = out.reshape(out.shape[0], -1)[:, 0]
        return 1.0 / (1.0 + np.exp(-z)) if from_logits else z
    z = out.reshape(out.shape[0], -1)
    if from_logits:
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    return z / z.sum(axis=1, keepdims=True)


def _ece(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    idx = np.minimum((confidence * bins).astype(int), bins - 1)
    n = np.bincount(idx, minlength=bins)
    gap = np.bincount(idx, correct, minlength=bins) - np.bincount(idx, confidence, minlength=bins)
    # sum over bins of (n_b / n) |acc_b - conf_b| = sum |sum_b(correct) - sum_b(confidence)| / n
    return float(np.abs(gap[n > 0]).sum() / confidence.size)


def score(task: str, y: Any, pred: Any) -> dict[str, float]:
    """The metrics of ``METRICS[task]`` for labels/targets ``y`` and predictions ``pred``
    (probabilities from ``to_probabilities`` for classification; raw outputs for regression)."""
    y = np.asarray(y)
    pred = np.asarray(pred, dtype=np.float64)
    if task == "regression":
        yt = y.reshape(y.shape[0], -1).astype(np.float64)
        yp = pred.reshape(pred.shape[0], -1)
        return {"mse": float(np.mean((yt - yp) ** 2)), "mae": float(np.mean(np.abs(yt - yp))),
                "r2": float(_sk.r2_score(yt, yp)) if yt.shape[0] > 1 else float("nan")}
    labels = y.reshape(-1).astype(np.int64)
    if task == "binary":
        p = np.clip(pred.reshape(-1), EPSILON, 1 - EPSILON)
        predicted = (pred.reshape(-1) > 0.5).astype(np.int64)
        conf = np.where(predicted == 1, pred.reshape(-1), 1 - pred.reshape(-1))
        return {"log_loss": float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p))),
                "accuracy": float(np.mean(predicted == labels)),
                "brier": float(np.mean((pred.reshape(-1) - labels) ** 2)),
                "ece": _ece(conf, (predicted == labels).astype(float))}
    if task == "multiclass":
        P = pred
        k = P.shape[1]
        pc = np.clip(P[np.arange(labels.size), labels], EPSILON, 1 - EPSILON)
        onehot = np.eye(k)[labels]
        predicted = P.argmax(axis=1)
        return {"log_loss": float(-np.mean(np.log(pc))),
                "accuracy": float(_sk.accuracy_score(labels, predicted)),
                "brier": float(np.mean(np.sum((P - onehot) ** 2, axis=1))),
                "ece": _ece(P.max(axis=1), (predicted == labels).astype(float))}
    raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
