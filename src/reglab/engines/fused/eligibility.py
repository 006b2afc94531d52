"""Which models, losses and optimizers the fused engine trains: ``arch_of`` gives the ``Arch`` its
kernel is written for, or raises ``Unsupported`` saying what falls outside the term tables
(``terms``); the chooser then takes the eager Dense-stack engine."""

from __future__ import annotations

import platform
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...attach import activity_regularizer
from ...losses import BinaryCrossentropy, Loss, MeanSquaredError
from ..dense.eligibility import Unsupported, ops_of
from ..vmap import shared_constraints, stacked_hparams
from .source import Arch
from .terms import ACTIVATIONS, penalty_term

__all__ = ["arch_of", "Slots", "slots_of", "adam_config", "native_lanes"]

#: Keras Adam's arguments the kernel takes (``reglab.optimizers.KerasAdam``)
_ADAM_KEYS = {"learning_rate", "beta_1", "beta_2", "epsilon"}


def native_lanes() -> int:
    """Models per chunk: one vector register of float32 (16 with AVX-512, else 8)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return 16 if " avx512f" in flags else 8


def adam_config(optimizer: Any) -> dict[str, float] | None:
    """The Keras Adam arguments of ``optimizer`` (a name or config) if the kernel runs it: Keras's
    Adam without weight decay or options beyond these; else None."""
    if isinstance(optimizer, str):
        optimizer = {"name": optimizer}
    if not isinstance(optimizer, Mapping) or str(optimizer.get("name", "")).lower() != "adam":
        return None
    cfg = {k: v for k, v in optimizer.items() if k != "name"}
    if set(cfg) - _ADAM_KEYS:
        return None
    return {k: float(v) for k, v in cfg.items()}


def _loss_name(loss: Loss) -> str:
    if type(loss) is BinaryCrossentropy and not loss.from_logits:
        return "binary_crossentropy"
    if type(loss) is MeanSquaredError:
        return "mean_squared_error"
    raise Unsupported(f"loss {loss!r} is not in the fused kernel's table")


@dataclass
class Slots:
    """Each penalty term's place: ``params`` ``[(source, layer, "W" or "b", term, strength key)]``,
    ``activity`` ``[(source, layer, term, strength key)]``."""

    params: list[tuple[str, int, str, str, str]]
    activity: list[tuple[str, int, str, str]]


def _layers(model: nn.Module) -> tuple[list[tuple[int, int, str]], dict[int, int]]:
    """``[(in, out, activation)]`` per Dense layer and, per module id whose output is a layer's
    output (after its activation), that layer's index, from the op list: each affine op (with a
    bias) followed by at most one activation. (A module whose output is a layer's pre-activation
    -- a linear Dense before an Activation, Keras's "activity before activation" -- has none: the
    kernel's activity penalties see a layer's output.)"""
    ops, out_of = ops_of(model)
    params = list(model.parameters())
    layers: list[tuple[int, int, str]] = []
    layer_of_op: dict[int, int] = {}
    for j, op in enumerate(ops):
        if op.kind == "affine":
            if op.b is None:
                raise Unsupported("a Linear layer without a bias")
            out_, in_ = params[op.w].shape
            layers.append((in_, out_, "linear"))
        elif op.kind == "act" and layers and layers[-1][2] == "linear" and ops[j - 1].kind == "affine":
            if op.act not in ACTIVATIONS:
                raise Unsupported(f"activation {op.act!r} is not in the fused kernel's table")
            layers[-1] = (layers[-1][0], layers[-1][1], op.act)
        else:
            raise Unsupported(f"op {op.kind} {op.act if op.kind == 'act' else ''} is not a Dense layer's")
        layer_of_op[j] = len(layers) - 1
    for a, b in zip(layers, layers[1:]):
        if a[1] != b[0]:
            raise Unsupported("layer widths do not chain")
    last = {layer: j for j, layer in layer_of_op.items()}  # each layer's last op (ascending j)
    return layers, {mid: layer_of_op[j] for mid, j in out_of.items() if j in layer_of_op and last[layer_of_op[j]] == j}


def slots_of(models: list[nn.Module], losses: list[Loss]) -> tuple[Slots, list[str], dict[str, dict[str, torch.Tensor]]]:
    """The penalty slots of the models' sources (model 0's), the source names and their
    strengths stacked over the models (``stacked_hparams``)."""
    plan, names, hparams = stacked_hparams(models, losses)
    model = models[0]
    if losses[0].source_name is not None:
        raise Unsupported("a regularized loss")
    _, layer_of = _layers(model)
    children = {id(m): i for i, m in enumerate(model.children())}
    dense = [m for m in model.children() if isinstance(m, nn.Linear)]
    index = {id(m): i for i, m in enumerate(dense)}
    slots = Slots([], [])
    for name, mod, attr, reg in plan.params:
        if id(mod) not in index or attr not in ("weight", "bias"):
            raise Unsupported(f"penalty source {name!r} is not on a Dense layer's weight or bias")
        for key, f, df, _ in reg.elementwise_sum(reg.hparams()) or _none(name):
            term = penalty_term(f, df)
            if term is None:
                raise Unsupported(f"penalty source {name!r} has a term outside the fused kernel's table")
            slots.params.append((name, index[id(mod)], "W" if attr == "weight" else "b", term, _strength(reg, key)))
    for name, mod in plan.activity:
        reg = activity_regularizer(mod)
        layer = layer_of.get(id(mod))
        if layer is None or id(mod) not in children:
            raise Unsupported(f"activity source {name!r} is not on a Dense layer's output (after its activation)")
        for key, f, df, _ in reg.elementwise_sum(reg.hparams()) or _none(name):
            term = penalty_term(f, df)
            if term is None:
                raise Unsupported(f"activity source {name!r} has a term outside the fused kernel's table")
            slots.activity.append((name, layer, term, _strength(reg, key)))
    return slots, names, hparams


def _none(name: str):
    raise Unsupported(f"penalty source {name!r} is not a sum of element-wise terms")


def _strength(reg: Any, key: Any) -> str:
    """The hyperparameter name of the term with ``key`` (``ElementwiseRegularizer.elementwise_terms``)."""
    terms = getattr(reg, "elementwise_terms", None)
    if terms is None:
        raise Unsupported(f"{reg!r} is a composite regularizer")
    for hname, f, df in terms():
        if key == (f, df):
            return hname
    raise Unsupported(f"{reg!r}: a term without a strength of its own")


def arch_of(model: nn.Module, loss: Loss, optimizer: Any) -> Arch:
    """The kernel's ``Arch`` for ``model`` (already accepted by the Dense-stack engine), or
    ``Unsupported``."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        raise Unsupported(f"the fused kernel is written for x86-64, not {platform.machine()}")
    if adam_config(optimizer) is None:
        raise Unsupported("the fused kernel runs Keras's Adam (by name or config) without weight decay")
    p0 = next(model.parameters())
    if p0.dtype != torch.float32 or p0.device.type != "cpu":
        raise Unsupported("the fused kernel trains float32 models on the CPU")
    if shared_constraints([model]):
        raise Unsupported("weight constraints")
    layers, _ = _layers(model)
    name = _loss_name(loss)
    slots, _, _ = slots_of([model], [loss])
    return Arch(widths=(layers[0][0],) + tuple(o for _, o, _ in layers), acts=tuple(a for _, _, a in layers),
                param_slots=tuple((layer, part, term) for _, layer, part, term, _ in slots.params),
                act_slots=tuple((layer, term) for _, layer, term, _ in slots.activity),
                loss=name, accuracy=name == "binary_crossentropy", lanes=native_lanes())
