"""Reading a History: where validation loss bottoms out, and what that says."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..training.history import History

__all__ = ["overfitting", "OverfittingReport"]


@dataclass
class OverfittingReport:
    best_epoch: int
    best_val_loss: float
    final_val_loss: float
    final_train_loss: float
    gap_at_best: float
    gap_final: float
    rise_after_best: float
    verdict: str
    explanation: str

    def to_dict(self) -> dict:
        return asdict(self)


def overfitting(history: History, tolerance: float = 0.05, learn_fraction: float = 0.9) -> OverfittingReport:
    """Epoch of minimum validation data loss, train/validation gap, and a verdict.

    Uses ``val_data_loss`` and ``data_loss`` (data loss without penalties, so regularized and
    unregularized models are compared on the same scale). The rule:

    - **overfitting after epoch k** if the final validation loss exceeds its minimum (at epoch k)
      by more than ``tolerance`` (relative; default 5%) while the best epoch is not the last;
    - **underfit** otherwise, if the final training loss is above ``learn_fraction`` (default 90%)
      of the first epoch's (the model learned little), or the validation loss was still falling
      by more than ``tolerance`` over the last quarter of training (train longer);
    - **good** otherwise: validation loss flat near its minimum at the end.
    """
    val_key = "val_data_loss" if "val_data_loss" in history else "val_loss"
    if val_key not in history or len(history) == 0:
        raise ValueError("overfitting() needs a History with validation data (val_data_loss)")
    v = history[val_key]
    t = history["data_loss"] if "data_loss" in history else history["loss"]
    k = int(np.nanargmin(v))
    best, final = float(v[k]), float(v[-1])
    rise = (final - best) / abs(best) if best else 0.0
    q = max(1, len(v) // 4)
    late_drop = (float(v[-q - 1]) - final) / abs(final) if len(v) > q else 0.0
    if k < len(v) - 1 and rise > tolerance:
        verdict = f"overfitting after epoch {history.epoch[k]}"
        why = (f"validation loss fell to {best:.4f} at epoch {history.epoch[k]} and rose {100 * rise:.1f}% "
               f"to {final:.4f} by the end, while training loss reached {float(t[-1]):.4f}")
    elif float(t[-1]) > learn_fraction * float(t[0]) or late_drop > tolerance:
        verdict = "underfit"
        why = (f"training loss went from {float(t[0]):.4f} to {float(t[-1]):.4f}; validation loss still fell "
               f"{100 * late_drop:.1f}% over the last quarter of training")
    else:
        verdict = "good"
        why = f"validation loss ends within {100 * tolerance:.0f}% of its minimum {best:.4f} (epoch {history.epoch[k]})"
    return OverfittingReport(
        best_epoch=int(history.epoch[k]), best_val_loss=best, final_val_loss=final, final_train_loss=float(t[-1]),
        gap_at_best=float(v[k] - t[k]), gap_final=float(v[-1] - t[-1]), rise_after_best=float(rise),
        verdict=verdict, explanation=why,
    )
