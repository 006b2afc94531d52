"""How sparse are a model's activations and weights (sparse autoencoders, L1/KL activity)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..attach import PenaltyPlan
from ..training.fit import model_inputs

__all__ = ["sparsity", "activations"]


@torch.no_grad()
def activations(model: nn.Module, x: Any, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Outputs of the named submodules on ``x`` (eval mode), flattened to ``(n, units)``."""
    xt = model_inputs(model, x)
    names = dict(model.named_modules())
    missing = [n for n in layers if n not in names]
    if missing:
        raise ValueError(f"layers {missing} are not modules of the model; modules: {sorted(names)[:20]}")
    got: dict[str, torch.Tensor] = {}
    hooks = [names[n].register_forward_hook(lambda m, a, out, n=n: got.__setitem__(n, out)) for n in layers]
    was = model.training
    model.eval()
    try:
        with PenaltyPlan(model).collect():
            model(xt)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return {n: got[n].reshape(got[n].shape[0], -1).cpu().numpy() for n in layers}


def sparsity(model: nn.Module, x: Any, layers: Sequence[str], threshold: float = 1e-3, weight_tol: float = 1e-3,
             bins: int = 50) -> dict[str, Any]:
    """Per layer (module name): ``mean_activation``, ``mean_activation_per_unit``,
    ``dead_fraction`` (units never above ``threshold`` on ``x``), ``below_threshold_fraction``
    (activations <= ``threshold``), ``l0_per_example`` (mean count of units above ``threshold``),
    ``histogram`` (``counts``, ``edges``). Per parameter: ``weight_sparsity`` = fraction |w| < ``weight_tol``.
    """
    acts = activations(model, x, layers)
    out: dict[str, Any] = {"layers": {}, "weights": {}}
    for n, a in acts.items():
        active = a > threshold
        counts, edges = np.histogram(a.reshape(-1), bins=bins)
        out["layers"][n] = {
            "mean_activation": float(a.mean()),
            "mean_activation_per_unit": a.mean(axis=0).tolist(),
            "dead_fraction": float((~active.any(axis=0)).mean()),
            "below_threshold_fraction": float((~active).mean()),
            "l0_per_example": float(active.sum(axis=1).mean()),
            "units": int(a.shape[1]),
            "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
        }
    for name, p in model.named_parameters():
        out["weights"][name] = float((p.detach().abs() < weight_tol).float().mean())
    return out
