"""Everything about an experiment that can fail before training, checked before anything trains:
the data (files, shapes, NaN, labels, a transform), the builder, the ``[regularize]`` patterns,
the optimizer's ``decay`` patterns, the constraints, the model's output against the loss and the
task, the analysis layers. Each failure is a ``ConfigError`` naming the file and the key."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..training.data import as_input
from ..training.fit import PROBE, check_targets_and_outputs, check_trainable, probe_inputs
from .build import builder
from .code import where_in
from .data import Splits
from .data_tables import DataError
from .schema import ConfigError, ExperimentSpec

__all__ = ["probe_model"]


def probe_model(spec: ExperimentSpec, sp: Splits) -> tuple[torch.nn.Module, Any]:
    """Seed 0's model of the experiment and its loss (a ``reglab.losses.Loss``), built once and
    put through every check that can fail before training, on seed 0's splits ``sp``: the data
    (an augmentation on the training arrays), the builder, the loss against the task, a forward
    pass on the first examples (finite, as wide as the task needs, in the loss's range), the
    constraints, the decay patterns, early stopping's monitor, the analysis layers. Raises
    ``ConfigError`` naming file and key."""
    model, loss = _built(spec, sp)
    _check_forward(spec, sp, model, loss)
    _check_constraints(spec, model)
    _check_decay(spec, model)
    _check_analysis(spec, sp, model)
    return model, loss


def _built(spec: ExperimentSpec, sp: Splits) -> tuple[torch.nn.Module, Any]:
    """Seed 0's model and its loss, the loss checked against the task."""
    from .. import losses as _losses

    try:
        if sp.augment is not None:
            sp.augment.check(sp.x_train)
    except (DataError, ValueError) as e:
        raise ConfigError(str(e)) from None
    try:
        torch.manual_seed(0)
        out = builder(spec, sp.input_shape, sp.n_outputs)()
    except ValueError as e:
        where = "train.loss.codes" if "regularizers list" in str(e) else "model"
        raise ConfigError(str(e) if spec.path in str(e) else f"{spec.path}: {where}: {e}") from None
    except Exception as e:  # the user's builder failed: say where, in their code
        import traceback

        last = traceback.extract_tb(e.__traceback__)[-1]
        ref = spec.model.builder or "the model's layers"
        raise ConfigError(f"{spec.path}: model.builder: {ref} raised {type(e).__name__}: {e} (at {last.filename}, "
                          f"line {last.lineno})") from None
    model, lo = out if isinstance(out, tuple) else (out, spec.train.loss.for_fit(sp.task))
    loss = _losses.get(lo)
    _check_loss_fits_task(spec, sp, loss)
    return model, loss


def _check_forward(spec: ExperimentSpec, sp: Splits, model: torch.nn.Module, loss: Any) -> None:
    """The model trains and runs on the first training examples: its output finite, as wide as
    the task needs, of the targets' shape, in the range the loss expects."""
    try:
        p0 = check_trainable(model, "the model")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{spec.path}: model: {e}") from None
    # as many as fit probes, integers kept where the model takes them (fit's rule)
    xb = as_input(torch.as_tensor(np.asarray(sp.x_train[:PROBE])), p0.dtype)
    try:
        pred, _ = probe_inputs(model, xb, p0.dtype, "x")
    except ValueError as e:  # any error of the user's forward
        cause = e.__cause__ or e
        raise ConfigError(f"{spec.path}: model: a forward pass on x of shape {tuple(xb.shape)} failed: "
                          f"{type(cause).__name__}: {cause}{where_in(cause)}") from None
    if not bool(torch.isfinite(pred).all()):
        raise ConfigError(f"{spec.path}: model: its output on the first {len(xb)} training examples holds NaN or "
                          "inf before any training (its initial weights or its forward): nothing could be learned")
    _check_width(spec, sp, pred)
    yb = torch.as_tensor(np.asarray(sp.y_train[:len(xb)]))
    try:
        loss.check_shapes(tuple(pred.shape), tuple(yb.shape))
    except ValueError as e:
        raise ConfigError(f"{spec.path}: model: output shape {tuple(pred.shape)} for {len(xb)} examples does not "
                          f"fit the {sp.task} targets of shape {tuple(yb.shape)} ({e})") from None
    try:  # fit's own check: labels in range, probabilities where the loss wants them
        check_targets_and_outputs(loss, pred, torch.as_tensor(np.asarray(sp.y_train)).to(p0.dtype))
    except ValueError as e:
        hint = (f' (here: loss = {{name = "{loss.name}", from_logits = true}})' if "from_logits" in str(e) else "")
        raise ConfigError(f"{spec.path}: train.loss: {e}{hint}") from None


def _check_analysis(spec: ExperimentSpec, sp: Splits, model: torch.nn.Module) -> None:
    """Early stopping monitors what is logged for the task; the analysis layers exist."""
    es = spec.train.early_stopping or {}
    if sp.task == "regression" and "accuracy" in es.get("monitor", ""):
        raise ConfigError(f"{spec.path}: train.early_stopping.monitor: {es['monitor']!r} is not logged for a "
                          "regression task; monitor val_loss or val_data_loss")
    names = {n for n, _ in model.named_modules()}
    for layer in spec.analysis.sparsity_layers:
        if layer not in names:
            raise ConfigError(f"{spec.path}: analysis.sparsity_layers: no module {layer!r}; the modules are "
                              f"{sorted(n for n in names if n)[:20]}")


def _check_width(spec: ExperimentSpec, sp: Splits, pred: torch.Tensor) -> None:
    """A classifier outputs one value per class (one for a binary task)."""
    width = int(np.prod(pred.shape[1:])) if pred.dim() > 1 else 1
    if sp.task in ("binary", "multiclass") and width != sp.n_outputs:
        hint = ("one unit (P(y = 1), e.g. a sigmoid); for a softmax over 2 units set data.task = \"multiclass\""
                if sp.task == "binary" else
                f"{sp.n_outputs} (one per class 0..{sp.n_outputs - 1}); if the target is a count or a measurement, "
                "set data.task = \"regression\"")
        layers = spec.model.layers
        where = f"model.layers[{len(layers) - 1}].units" if layers is not None else "model"
        raise ConfigError(f"{spec.path}: {where}: the model outputs {width} value(s) per example but the "
                          f"{sp.task} task of the data needs {hint}")


def _check_loss_fits_task(spec: ExperimentSpec, sp: Splits, loss: Any) -> None:
    """The training loss is one for the data's task (a ``ConfigError`` naming ``train.loss``)."""
    if sp.task in ("binary", "multiclass") and loss.task is None:
        raise ConfigError(f"{spec.path}: train.loss: {loss.name} does not fit the {sp.task} task of the data")
    if sp.task == "multiclass" and loss.task == "binary":
        raise ConfigError(f"{spec.path}: train.loss: {loss.name} is a binary loss but the data have "
                          f"{sp.n_outputs} classes; use \"sparse_categorical_crossentropy\" (integer labels)")
    if sp.task == "multiclass" and loss.task == "categorical":
        raise ConfigError(f"{spec.path}: train.loss: {loss.name} needs one-hot targets; the data's labels are "
                          "integers: use \"sparse_categorical_crossentropy\"")
    if sp.task == "binary" and loss.task in ("categorical", "sparse"):
        raise ConfigError(f"{spec.path}: train.loss: {loss.name} on a binary task: use \"binary_crossentropy\" "
                          "with one output unit, or set data.task = \"multiclass\"")
    if sp.task == "regression" and loss.task is not None:
        raise ConfigError(f"{spec.path}: train.loss: {loss.name} is a classification loss but the data's task is "
                          "regression (set data.task, or a regression loss such as \"mse\")")


def _check_decay(spec: ExperimentSpec, model: torch.nn.Module) -> None:
    """The optimizer's ``decay`` patterns each select a parameter of the model."""
    from .. import optimizers as _optimizers
    from ..selectors import select_all

    decay = spec.train.optimizer.get(_optimizers.DECAY)
    if decay is not None:
        try:
            select_all(model, _optimizers.decay_patterns(decay))
        except ValueError as e:
            raise ConfigError(f"{spec.path}: train.optimizer.decay: {e}") from None


def _check_constraints(spec: ExperimentSpec, model: torch.nn.Module) -> None:
    """Each constraint once on a copy of its parameter (an ``axis`` beyond the weight's rank
    fails here, not at the first optimizer step)."""
    from ..attach import constraint_sources

    for name, mod, attr, c in constraint_sources(model):
        p = getattr(mod, attr)
        try:
            with torch.no_grad():
                c.project(p.detach().clone())
        except (ValueError, RuntimeError, IndexError) as e:
            key = ("regularize.constraints" if spec.regularize.constraints
                   else "model.layers[...].kernel_constraint / bias_constraint")
            raise ConfigError(f"{spec.path}: {key}: {c!r} cannot apply to {name!r} of shape {tuple(p.shape)}: "
                              f"{e}") from None
