"""Which models and losses the Dense-stack engine trains (asked by ``reglab.engines.choose_engine``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ...attach import activity_sources, foreign_hooks, param_sources
from ...layers import Dense
from ...losses import Loss
from .kernels import ACTS, act_name, fn_name

__all__ = ["Op", "ops_of", "Unsupported", "NotTransformable", "check_transformable", "unsupported_reason"]


@dataclass
class Op:
    kind: str  # "affine", "act" or "dropout"
    w: int = -1
    b: int | None = None
    act: str = "linear"
    p: float = 0.0


def act_ops(cname: str, act: str | None, unknown: str) -> list[Op]:
    """The op of activation ``act`` of layer ``cname`` (none for linear); ``unknown``: why None."""
    if act is None:
        raise Unsupported(f"layer {cname!r} {unknown}")
    if act == "linear":
        return []
    if act not in ACTS:
        raise Unsupported(f"layer {cname!r}: activation {act!r} has no hand-written derivative")
    return [Op("act", act=act)]


def ops_of(model: nn.Module) -> tuple[list[Op], dict[int, int]]:
    """The op list of a supported model and, per module id, the op whose output is the module's."""
    if type(model) is not nn.Sequential:
        raise Unsupported(f"the model is a {type(model).__name__}, not a plain torch.nn.Sequential")
    names = [n for n, _ in model.named_parameters()]
    ops: list[Op] = []
    out_of: dict[int, int] = {}
    for cname, mod in model.named_children():
        if type(mod) in (nn.Linear, Dense):
            w = names.index(f"{cname}.weight")
            b = names.index(f"{cname}.bias") if mod.bias is not None else None
            ops.append(Op("affine", w=w, b=b))
            act = fn_name(mod.activation) if type(mod) is Dense else "linear"
            ops += act_ops(cname, act, "has a custom activation")
        elif type(mod) is nn.Dropout:
            if mod.p > 0:
                ops.append(Op("dropout", p=float(mod.p)))
        else:
            ops += act_ops(cname, act_name(mod), f"is a {type(mod).__name__}")
        out_of[id(mod)] = len(ops) - 1
    out_of[id(model)] = len(ops) - 1
    if not any(op.kind == "affine" for op in ops):
        raise Unsupported("the model has no Linear layer")
    return ops, out_of


class Unsupported(Exception):
    pass


class NotTransformable(ValueError):
    """A custom regularizer that ``torch.func`` cannot differentiate per model."""


def _check_hooks(model: nn.Module) -> None:
    from torch.nn.modules import module as _m

    for store in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                  "_global_backward_pre_hooks"):
        if getattr(_m, store, None):
            raise Unsupported("global module hooks are registered")
    for name, mod in model.named_modules():
        what = foreign_hooks(mod)
        if what:
            raise Unsupported(f"module {name!r} has {what}")


def unsupported_reason(model: nn.Module, loss: Loss) -> str | None:
    """Why ``DenseStack`` cannot train ``model`` with ``loss`` (``None``: it can)."""
    try:
        ops_of(model)
        _check_hooks(model)
        params = list(model.parameters())
        if list(model.buffers()):
            raise Unsupported("the model has buffers")
        if not params or not all(p.requires_grad for p in params):
            raise Unsupported("some parameters are frozen")
        if len({(p.dtype, p.device) for p in params}) != 1 or not params[0].is_floating_point():
            raise Unsupported("parameters differ in dtype or device")
        if not loss.native_grad:
            raise Unsupported(f"loss {loss!r} has no per_example_grad")
        check_transformable(model)
    except Unsupported as e:
        return str(e)
    return None


def check_transformable(model: nn.Module) -> None:
    """Regularizers without a hand-written derivative go through ``torch.func``: try each once
    (activity ones on zeros of their layer's width); one that cannot be transformed leaves the
    model to autograd."""
    ops, out_of = ops_of(model)
    params = dict(model.named_parameters())
    widths, w = {}, None
    for j, op in enumerate(ops):
        if op.kind == "affine":
            w = list(params.values())[op.w].shape[0]
        widths[j] = w
    p0 = next(iter(params.values()))
    checks = [(name, reg, getattr(mod, attr).detach()[None]) for name, mod, attr, reg in param_sources(model)]
    checks += [(name, state.regularizer, p0.new_zeros(1, 2, widths[out_of[id(mod)]]))
               for name, mod, state in activity_sources(model)]
    for name, reg, x in checks:
        if reg.native_grad:
            continue
        hp = {k: torch.tensor([float(v)], dtype=p0.dtype, device=p0.device) for k, v in reg.hparams().items()}
        try:
            reg.value_and_grad(x, hp)
        except Exception as e:  # noqa: BLE001 -- any failure of a user's regularizer: autograd trains it
            raise Unsupported(f"penalty source {name!r}: {reg!r} could not be differentiated with torch.func "
                               f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
