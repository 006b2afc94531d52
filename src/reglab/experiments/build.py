"""From a validated experiment to the objects training needs: model builder, loss, optimizer."""

from __future__ import annotations

from typing import Any

from torch import nn

from .. import constraints as _constraints
from .. import losses as _losses
from .. import regularizers as _regularizers
from ..models import mlp
from ..training.callbacks import EarlyStopping
from .schema import ExperimentSpec

__all__ = ["builder", "early_stopping", "n_outputs"]


def n_outputs(spec: ExperimentSpec) -> int:
    return spec.config["model"]["layers"][-1]["units"]


def _layers(spec: ExperimentSpec) -> list[dict[str, Any]]:
    out = []
    for layer in spec.config["model"]["layers"]:
        lay = dict(layer)
        for k in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            if k in lay:
                lay[k] = _regularizers.deserialize(lay[k])
        for k in ("kernel_constraint", "bias_constraint"):
            if k in lay:
                lay[k] = _constraints.deserialize(lay[k])
        out.append(lay)
    return out


def builder(spec: ExperimentSpec, n_inputs: int):
    """``build() -> model`` or ``(model, RegularizedLoss)`` for ``fit``/``fit_many``."""
    loss_cfg = spec.config["train"]["loss"]

    def build() -> nn.Module | tuple[nn.Module, _losses.Loss]:
        model = mlp(n_inputs, _layers(spec))
        if isinstance(loss_cfg, dict):
            loss = _losses.RegularizedLoss(loss_cfg.get("data_loss", "binary_crossentropy"), model, loss_cfg["codes"],
                                           strength=loss_cfg["strength"])
            return model, loss
        return model

    return build


def loss_of(spec: ExperimentSpec) -> Any:
    loss_cfg = spec.config["train"]["loss"]
    return None if isinstance(loss_cfg, dict) else loss_cfg


def early_stopping(spec: ExperimentSpec) -> list[EarlyStopping]:
    es = spec.config["train"].get("early_stopping")
    return [EarlyStopping(**es)] if es else []
