"""A validation pass of the models an engine holds, with Keras's numbers (``evaluate_stack``),
and the per-model totals a history logs (``with_totals``)."""

from __future__ import annotations

import numpy as np
import torch

from ..engines.protocol import Engine
from .sources import ArrayData, LoaderData

__all__ = ["evaluate_stack", "with_totals"]


def with_totals(rows: np.ndarray, with_accuracy: bool) -> np.ndarray:
    """``[data loss, accuracy?, each penalty]`` rows (per model) -> ``[loss, data loss, penalty,
    accuracy?, each penalty]``: the totals the history logs, summed in float64."""
    head = 2 if with_accuracy else 1
    penalty = rows[head:].sum(0) if len(rows) > head else np.zeros(rows.shape[1])
    return np.concatenate([(rows[0] + penalty)[None], rows[:1], penalty[None], rows[1:]])


@torch.no_grad()
def evaluate_stack(stack: Engine, data: ArrayData | LoaderData, batch_size: int) -> dict[str, np.ndarray]:
    """Keras-compatible batched evaluation in eval mode: ``val_loss`` (data + penalties, batch-size
    weighted), ``val_data_loss`` (mean per-example data loss over the whole set), ``val_penalty``,
    ``val_penalty/<source>`` and ``val_accuracy``."""
    stack.train(False)
    acc = None
    seen = 0
    names: list[str] = []
    has_acc = False
    batches = [] if stack.caps.runs_epochs else stack.eval_batches(data, batch_size)
    if stack.caps.runs_epochs:  # the sums of one pass over all of ``data``, each model's in a fixed order
        acc, names, has_acc = stack.evaluation(data)
        seen = data.n
    for xb, yb, bs in batches:
        d, correct, names, pens = stack.objective(xb, yb)
        # per model: [data loss sum, correct sum?, each penalty times the batch size]
        parts = [d.sum(dim=1)[None]]
        if correct is not None:
            has_acc = True
            parts.append(correct.sum(dim=1)[None])
        if pens is not None:
            parts.append(pens * bs)
        stats = torch.cat(parts) if len(parts) > 1 else parts[0]
        acc = stats if acc is None else acc + stats
        seen += bs
    stack.train(True)
    if acc is None:
        return {}
    v = (acc / seen).cpu().numpy().astype(np.float64)
    v = with_totals(v, has_acc)
    keys = ["val_loss", "val_data_loss", "val_penalty"] + (["val_accuracy"] if has_acc else []) + [
        f"val_penalty/{n}" for n in names]
    return {k: v[j] for j, k in enumerate(keys)}
