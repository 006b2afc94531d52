"""Scoring models and predictions: why validation *loss*, not accuracy, ranks models."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .. import losses as _losses
from ..attach import PenaltyPlan
from ..training.fit import model_inputs
from ..training.objective import correct_per_example

__all__ = ["evaluate", "compare_predictions", "log_loss", "accuracy", "predict"]

EPSILON = 1e-7


def log_loss(y: Any, p: Any) -> float:
    """Binary cross-entropy ``-mean(y log p + (1-y) log(1-p))``, p clipped to [1e-7, 1-1e-7] (Keras)."""
    y = np.asarray(y, dtype=float).reshape(-1)
    p = np.clip(np.asarray(p, dtype=float).reshape(-1), EPSILON, 1 - EPSILON)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(y: Any, p: Any, threshold: float = 0.5) -> float:
    """Fraction of ``(p > threshold) == y``."""
    y = np.asarray(y, dtype=float).reshape(-1)
    p = np.asarray(p, dtype=float).reshape(-1)
    return float(np.mean((p > threshold) == (y > 0.5)))


def compare_predictions(y: Any, yhat_a: Any, yhat_b: Any) -> dict[str, dict[str, float]]:
    """Accuracy and log-loss of two sets of predicted probabilities for the same labels.

    An example: model A (all correct, but barely: 0.51, 0.49, ...) has accuracy 1.0
    and log-loss 0.4971; model B (one mistake, confident elsewhere) has accuracy 0.9 and log-loss
    0.2218. Lower validation loss -- B -- is the better model: its probabilities are closer to
    the truth, and its accuracy is less fragile on new data.
    """
    return {k: {"accuracy": accuracy(y, p), "log_loss": log_loss(y, p)} for k, p in (("a", yhat_a), ("b", yhat_b))}


@torch.no_grad()
def predict(model: nn.Module, x: Any, batch_size: int = 4096) -> np.ndarray:
    """Model outputs in eval mode as a NumPy array (batched; activity penalties not recorded)."""
    xt = model_inputs(model, x)
    was = model.training
    model.eval()
    outs = []
    try:
        with PenaltyPlan(model).ignore():
            for i in range(0, xt.shape[0], batch_size):
                outs.append(model(xt[i:i + batch_size]).cpu())
    finally:
        model.train(was)
    return torch.cat(outs).numpy()


def evaluate(model: nn.Module, x: Any, y: Any, loss: Any = "binary_crossentropy") -> dict[str, float]:
    """Data loss (no penalty) and accuracy of ``model`` on ``(x, y)``, in eval mode.

    Returns ``{"loss": ..., "accuracy": ...}``, plus ``"log_loss"`` (the same number as ``"loss"``)
    for cross-entropy losses, so the names match ``compare_predictions``.
    """
    loss_fn = _losses.get(loss)
    out = torch.as_tensor(predict(model, x))
    yt = torch.as_tensor(np.asarray(y))
    yt = yt.long() if loss_fn.task == "sparse" else yt.to(out.dtype)
    value = float(loss_fn(out, yt))
    res = {"loss": value}
    correct = correct_per_example(out, yt, loss_fn)
    if correct is not None:
        res["accuracy"] = float(correct.mean())
    if loss_fn.task in ("binary", "categorical", "sparse"):
        res["log_loss"] = value
    return res
