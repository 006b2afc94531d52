"""From a validated experiment to what training needs: its data splits for a seed and what
``fit_many`` trains from, the model builder (with its regularizers and constraints attached), the
loss for the task, early stopping."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from .. import constraints as _constraints
from .. import losses as _losses
from .. import regularizers as _regularizers
from ..attach import constrain, regularize
from ..models import mlp
from ..training.callbacks import EarlyStopping
from .code import NO_SIGNATURE, UserCodeError, call_problem, call_user, resolve
from .data import Splits, load_splits
from .schema import ExperimentSpec

__all__ = ["builder", "early_stopping", "splits_of", "training_data"]


def _layers(spec: ExperimentSpec) -> list[dict[str, Any]]:
    out = []
    for layer in spec.model.layers:
        lay = dict(layer)
        for k in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            if k in lay:
                lay[k] = _regularizers.deserialize(lay[k])
        for k in ("kernel_constraint", "bias_constraint"):
            if k in lay:
                lay[k] = _constraints.deserialize(lay[k])
        out.append(lay)
    return out


def _call_builder(fn: Callable[..., Any], ref: str, args: dict[str, Any], input_shape: tuple[int, ...],
                  n_outputs: int, where: str) -> nn.Module:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        raise UserCodeError(f"{where}: {getattr(fn, '__qualname__', fn)!r} {NO_SIGNATURE}; name a Python function that "
                            "returns a torch.nn.Module") from None
    kw = dict(args)
    varkw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    for k, v in (("input_shape", tuple(input_shape)), ("n_outputs", n_outputs)):
        if k in params or varkw:
            kw.setdefault(k, v)
    problem = call_problem(fn, **kw)
    if problem:
        raise ValueError(f"{where}: calling the builder with {sorted(kw)} failed: {problem}")
    model = call_user(fn, f"{where}: {ref}", **kw)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{where}: the builder must return a torch.nn.Module; got {type(model).__name__}")
    return model


def builder(spec: ExperimentSpec, input_shape: tuple[int, ...], n_outputs: int) -> Callable[[], Any]:
    """``build() -> model`` or ``(model, RegularizedLoss)`` for ``fit``/``fit_many``. Errors
    (a builder failing, a ``[regularize]`` pattern matching nothing) name the file and key."""
    loss, model_spec, reg = spec.train.loss, spec.model, spec.regularize
    file = spec.path

    def build() -> nn.Module | tuple[nn.Module, _losses.Loss]:
        if model_spec.layers is not None:
            model = mlp(int(_flat(input_shape)), _layers(spec))
            if len(input_shape) > 1:  # images and other non-flat examples: flattened first
                model = nn.Sequential(nn.Flatten(), *model)
        else:
            fn, _, _ = resolve(model_spec.builder, spec.base, f"{file}: model.builder")
            model = _call_builder(fn, model_spec.builder, model_spec.args, input_shape, n_outputs,
                                  f"{file}: model.builder")
        for key in ("params", "activity", "constraints"):
            table = getattr(reg, key)
            if table is None:
                continue
            objs = {p: (_constraints if key == "constraints" else _regularizers).deserialize(v)
                    for p, v in table.items()}
            try:
                if key == "constraints":
                    constrain(model, objs)
                else:
                    regularize(model, **{key: objs})
            except ValueError as e:
                raise ValueError(f"{file}: regularize.{key}: {e}") from None
        if loss.regularized:
            w = loss.written
            return model, _losses.RegularizedLoss(loss.data_loss, model, w["codes"], strength=w["strength"])
        return model

    return build


def _flat(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def early_stopping(spec: ExperimentSpec) -> list[EarlyStopping]:
    es = spec.train.early_stopping
    return [EarlyStopping(**es)] if es else []


def splits_of(spec: ExperimentSpec, seed: int) -> Splits:
    return load_splits(spec.data.table, spec.split.table, spec.base, spec.path, seed,
                       regression_loss=spec.train.loss.regression)


def training_data(splits: list[Splits], shared: bool) -> tuple[Any, Any]:
    """``fit_many``'s ``x, y`` for models trained on ``splits`` (one per model; ``shared``: the
    first serves all): Datasets where examples are read one by one (a loader's, or the arrays
    through ``[data] transform``: each model reads and augments its own), else the arrays."""
    use = splits[:1] if shared else splits
    sets = [sp.training() for sp in use]
    if sets[0] is not None:
        return (sets[0] if shared else sets), None
    if shared:
        return splits[0].x_train, splits[0].y_train
    return [sp.x_train for sp in use], [sp.y_train for sp in use]
