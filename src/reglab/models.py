"""Model builders from plain, JSON-able layer lists (used by experiment files and the estimator)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .layers import Activation, Dense

__all__ = ["mlp"]

_LAYER_KEYS = {
    "units", "activation", "use_bias", "kernel_regularizer", "bias_regularizer", "activity_regularizer",
    "kernel_constraint", "bias_constraint", "kernel_initializer", "bias_initializer",
    "activity_before_activation", "dropout",
}


def mlp(n_inputs: int, layers: Sequence[Mapping[str, Any]]) -> nn.Sequential:
    """A stack of ``Dense`` layers described as dicts of Keras ``Dense`` arguments.

    Extra keys: ``activity_before_activation=True`` builds ``Dense(units, activity_regularizer=r)``
    followed by ``Activation(activation)`` (Keras's Dense + Activation pattern, where the activity penalty
    sees the pre-activation); ``dropout=rate`` appends ``nn.Dropout(rate)`` after the layer.
    """
    mods: list[nn.Module] = []
    n_in = n_inputs
    for i, spec in enumerate(layers):
        unknown = set(spec) - _LAYER_KEYS
        if unknown:
            raise ValueError(f"layer {i}: unknown keys {sorted(unknown)}; expected some of {sorted(_LAYER_KEYS)}")
        if "units" not in spec:
            raise ValueError(f"layer {i}: missing 'units'")
        kw = {k: v for k, v in spec.items() if k not in ("units", "activity_before_activation", "dropout")}
        if spec.get("activity_before_activation"):
            act = kw.pop("activation", None)
            mods.append(Dense(n_in, spec["units"], **kw))
            mods.append(Activation(act))
        else:
            mods.append(Dense(n_in, spec["units"], **kw))
        if spec.get("dropout"):
            mods.append(nn.Dropout(float(spec["dropout"])))
        n_in = spec["units"]
    return nn.Sequential(*mods)
