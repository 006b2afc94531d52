"""The per-batch objective of one model: data loss per example, accuracy per example, penalties.

Written once, used by ``fit`` (called directly) and by ``fit_many`` (called under ``torch.vmap``
with ``torch.func.functional_call``, strengths passed in as tensors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..attach import PenaltyPlan
from ..losses import Loss


def correct_per_example(out: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor | None:
    """Keras's accuracy for the loss: binary -> (p > 0.5) == y (logits: > 0), categorical ->
    argmax match, sparse -> argmax == label. Per example, averaged over the last axis (binary)."""
    task = loss.task
    if task == "binary":
        thr = 0.0 if getattr(getattr(loss, "data_loss", loss), "from_logits", False) else 0.5
        hit = ((out > thr) == (y > 0.5)).to(out.dtype)
        if hit.dim() > 1:  # (the mean of one number is that number: no kernel)
            hit = hit.squeeze(-1) if hit.shape[-1] == 1 else hit.mean(dim=-1)
        return hit
    if task == "categorical":
        return (out.argmax(-1) == y.argmax(-1)).to(out.dtype)
    if task == "sparse":
        yy = y.squeeze(-1) if y.dim() == out.dim() else y
        return (out.argmax(-1) == yy.long()).to(out.dtype)
    return None


def model_objective(
    model: nn.Module,
    plan: PenaltyPlan,
    loss: Loss,
    xb: torch.Tensor,
    yb: torch.Tensor,
    with_accuracy: bool,
    hparams: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """``(data loss per example (B,), correct per example (B,) or None, {source: penalty})``."""
    with plan.collect(hparams) as collected:
        out = model(xb)
    pens = plan.terms(collected, hparams)
    if loss.source_name is not None:  # the loss's own penalty source (``RegularizedLoss``)
        s = hparams.get(loss.source_name, {}).get("strength") if hparams else None
        pens[loss.source_name] = loss.penalty(model, strength=s)
    data = loss.per_example(out, yb)
    correct = correct_per_example(out.detach(), yb, loss) if with_accuracy else None
    return data, correct, pens
