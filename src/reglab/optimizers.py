"""Keras optimizer names, defaults and update rules, as ``torch.optim.Optimizer`` classes.

``get("adam")`` means *Keras's* Adam: learning rate 0.001, beta_1 0.9, beta_2 0.999,
epsilon 1e-7 added outside the bias correction::

    alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
    m += (g - m) * (1 - beta_1);  v += (g**2 - v) * (1 - beta_2)
    w -= alpha * m / (sqrt(v) + epsilon)

torch's ``Adam`` adds epsilon to the bias-corrected ``sqrt(v)`` instead and cannot reproduce
Keras with any epsilon. Every update here is element-wise, so the same optimizer steps a stack of
M models' parameters (shape ``(M, ...)``) exactly as M separate optimizers would.

Weight decay is Keras's, decoupled from the gradient, for every optimizer here (torch's ``SGD``
and ``RMSprop`` add ``wd * w`` to the gradient instead): before each update,

    w <- w * (1 - lr * wd)

on every parameter by default, or on those a selector names: ``{"name": "adamw", "decay":
"@kernels"}`` decays the kernels of Linear/Conv layers only, never biases or normalization
layers (``reglab.selectors``; Keras's ``exclude_from_weight_decay`` the other way round).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.optim import optimizer as _opt

from . import _checks

__all__ = ["KerasAdam", "KerasSGD", "KerasRMSprop", "get", "unhooked_step", "OPTIMIZERS", "DECAY_KEY"]

#: the param-group key holding a group's decoupled weight decay (torch's own ``weight_decay`` stays 0)
DECAY_KEY = "keras_weight_decay"
#: the param-group key holding, for a stacked buffer, which of its columns decay (a bool tensor
#: over its last axis, the same for every model); absent: the group's tensors decay whole
MASK_KEY = "decay_mask"


class _KerasDecay:
    """Keras's decoupled weight decay (``_apply_weight_decay``), before the update:
    ``w <- w * (1 - lr * wd)`` on the stepped parameters (those with a gradient) of every group
    whose ``DECAY_KEY`` is not 0 -- on a ``MASK_KEY`` group only the masked columns, by
    ``w * where(mask, 1 - lr * wd, 1)`` (the same rounding: an element times ``1`` is itself)."""

    param_groups: list[dict[str, Any]]

    def _init_decay(self, weight_decay: float | None) -> None:
        wd = 0.0 if weight_decay is None else _checks.non_negative_float(weight_decay, "weight_decay")
        self.defaults[DECAY_KEY] = wd
        for g in self.param_groups:
            g.setdefault(DECAY_KEY, wd)
        self._factors: dict[tuple, torch.Tensor] = {}

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        self._decay()
        return self._base_step(closure)

    def _base_step(self, closure: Any) -> Any:
        """The torch optimizer's own ``step`` without torch's hook wrapper: torch wraps a class's
        ``step`` once one of its instances exists, so ``super().step()`` would run the step hooks
        a second time after any ``torch.optim.AdamW`` (say) was made in the process."""
        base = next(c for c in type(self).__mro__ if c.__module__.startswith("torch.optim"))
        step = base.step
        return getattr(step, "__wrapped__", step)(self, closure)

    @torch.no_grad()
    def _decay(self, masked_only: bool = False) -> None:
        for g in self.param_groups:
            wd = g.get(DECAY_KEY, 0.0)
            if not wd or masked_only and g.get(MASK_KEY) is None:
                continue
            factor = 1 - float(g["lr"]) * wd
            params = [p for p in g["params"] if p.grad is not None]
            mask = g.get(MASK_KEY)
            if mask is None:
                if params:
                    torch._foreach_mul_(params, factor)
                continue
            for p in params:
                key = (id(mask), factor, p.dtype, p.device)
                f = self._factors.get(key)
                if f is None:
                    self._factors.clear()  # one learning rate at a time (a schedule changes it)
                    f = self._factors[key] = torch.where(mask.to(p.device), p.new_tensor(factor), p.new_tensor(1.0))
                p.mul_(f)


class KerasAdam(_KerasDecay, torch.optim.AdamW):
    """Keras 3 ``Adam`` (``AdamW`` with ``weight_decay``: Keras decays ``w -= w * wd * lr`` first,
    ``_KerasDecay``: torch's own decoupled decay, the same product, for whole tensors; the mask's
    product for a stacked buffer's columns).

    Implemented on torch's fused/foreach ``AdamW`` kernels: torch computes
    ``w -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps')``; with ``eps' = epsilon/sqrt(1-b2^t)``,
    set before every step, that is exactly Keras's ``w -= alpha * m / (sqrt(v) + epsilon)``.
    """

    def __init__(self, params: Iterable[Any], learning_rate: float = 0.001, beta_1: float = 0.9,
                 beta_2: float = 0.999, epsilon: float = 1e-7, weight_decay: float | None = None):
        lr = _checks.positive_float(learning_rate, "learning_rate")
        for n, b in (("beta_1", beta_1), ("beta_2", beta_2)):
            _checks.fraction(b, n)
        self.keras_epsilon = _checks.non_negative_float(epsilon, "epsilon")
        params = list(params)
        flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        fused = bool(flat) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in flat) and len(
            {(p.device, p.dtype) for p in flat}) == 1
        super().__init__(params, lr=lr, betas=(beta_1, beta_2), eps=epsilon, weight_decay=0.0,
                         fused=fused or None, foreach=None if fused else True)
        self._init_decay(weight_decay)
        self._t = 0
        #: (params, their grads, exp_avgs, exp_avg_sqs, steps) of the fused fast path, checked each step
        self._fast_lists: tuple | None = None

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        self._t += 1
        for group in self.param_groups:
            b2 = group["betas"][1]
            group["eps"] = self.keras_epsilon / math.sqrt(1 - b2**self._t)
            # whole tensors decay inside torch's kernel: the same product ``w * (1 - lr * wd)``
            # before the update, in the same pass (a pass of its own cost ~40% of a step)
            group["weight_decay"] = group[DECAY_KEY] if group.get(MASK_KEY) is None else 0.0
        self._decay(masked_only=True)
        if closure is None and self._fast_step():
            return None
        return self._base_step(closure)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._fast_lists = None  # the state tensors are new
        # the step count Keras's epsilon scaling uses goes on from the saved state's (every
        # parameter steps together; it was 0 here, so a resumed optimizer scaled it as at step 1)
        steps = [float(s["step"]) for s in self.state.values() if "step" in s]
        self._t = int(max(steps, default=0))

    def _fast_step(self) -> bool:
        """The same update as ``AdamW.step`` with ``fused=True``: torch's ``_fused_adamw_`` kernel
        called directly (``torch.optim.adam._fused_adam`` does the same after grouping tensors by
        device and dtype, which ``__init__`` already made one group), skipping the per-call
        bookkeeping (~7 us instead of 28 us here; tiny nets take thousands of steps). Only once
        every parameter has state, for one fused param group with plain floats; otherwise the
        regular step. Step hooks are unaffected: torch's wrapper around ``step`` runs them."""
        if len(self.param_groups) != 1:
            return False
        g = self.param_groups[0]
        if not g.get("fused") or g.get("amsgrad") or g.get("maximize") or g.get("differentiable") or \
                g.get("capturable") or isinstance(g["lr"], torch.Tensor):
            return False
        lists = self._fast_lists
        if lists is None or len(lists[0]) != len(g["params"]) or any(
                p is not q or p.grad is not gr for p, q, gr in zip(g["params"], lists[0], lists[1])):
            params = [p for p in g["params"] if p.grad is not None]
            if len(params) != len(g["params"]) or any(
                    p.grad.is_sparse or p not in self.state or "exp_avg" not in self.state[p] for p in params):
                return False
            states = [self.state[p] for p in params]
            lists = self._fast_lists = (list(params), [p.grad for p in params], [s["exp_avg"] for s in states],
                                        [s["exp_avg_sq"] for s in states], [s["step"] for s in states])
        params, grads, exp_avgs, exp_avg_sqs, steps = lists
        torch._foreach_add_(steps, 1)
        torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=float(g["lr"]),
                            beta1=float(g["betas"][0]), beta2=float(g["betas"][1]),
                            weight_decay=float(g["weight_decay"]), eps=float(g["eps"]), maximize=False,
                            grad_scale=None, found_inf=None)
        return True


def unhooked_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()`` without torch's per-call wrapper (a profiler ``record_function`` and
    the hook loops, ~9 us here) when that changes nothing: no step pre/post hooks registered on
    the optimizer or globally, and ``step`` not patched on the instance (as an LR scheduler
    does). Checked on every call, so hooks registered mid-training are honoured."""
    raw = getattr(type(optimizer).step, "__wrapped__", None)
    if raw is None or optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks or \
            _opt._global_optimizer_pre_hooks or _opt._global_optimizer_post_hooks or "step" in vars(optimizer):
        optimizer.step()
    else:
        raw(optimizer)


class KerasSGD(_KerasDecay, torch.optim.SGD):
    """Keras 3 ``SGD(learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None)``. For a
    constant learning rate torch's momentum form ``b = mu b + g; w -= lr b`` equals Keras's
    ``m = mu m - lr g; w += m``; weight decay is Keras's, decoupled (``_KerasDecay``)."""

    def __init__(self, params, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float | None = None):
        super().__init__(params, lr=_checks.positive_float(learning_rate, "learning_rate"),
                         momentum=_checks.fraction(momentum, "momentum"), nesterov=_checks.flag(nesterov, "nesterov"))
        self._init_decay(weight_decay)


class KerasRMSprop(_KerasDecay, torch.optim.Optimizer):
    """Keras 3 ``RMSprop(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
    weight_decay=None)``, Keras's update rule (torch's ``RMSprop`` divides by ``sqrt(v) + eps``,
    Keras by ``sqrt(v + eps)``, which no epsilon reconciles)::

        v = rho v + (1 - rho) g**2;   a = rho a + (1 - rho) g        (a: centered only)
        inc = lr g / sqrt(v + eps)    (centered: sqrt(v - a**2 + eps))
        m = momentum m + inc; w -= m  (momentum > 0),  else w -= inc

    Weight decay is Keras's, decoupled (``_KerasDecay``). Every update is element-wise, so it
    steps a stack of M models as M separate optimizers."""

    def __init__(self, params, learning_rate: float = 0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7, centered: bool = False, weight_decay: float | None = None):
        super().__init__(params, {"lr": _checks.positive_float(learning_rate, "learning_rate"),
                                  "rho": _checks.fraction(rho, "rho"),
                                  "eps": _checks.non_negative_float(epsilon, "epsilon"),
                                  "momentum": _checks.fraction(momentum, "momentum"),
                                  "centered": _checks.flag(centered, "centered")})
        self._init_decay(weight_decay)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._decay()
        for g in self.param_groups:
            params = [p for p in g["params"] if p.grad is not None]
            if params:
                self._update(g, params)
        return loss

    def _update(self, g: dict[str, Any], params: list[torch.Tensor]) -> None:
        rho, lr, mom = float(g["rho"]), float(g["lr"]), float(g["momentum"])
        states = [self.state[p] for p in params]
        for p, st in zip(params, states):
            if not st:
                st["velocity"] = torch.zeros_like(p)
                if mom > 0:
                    st["momentum"] = torch.zeros_like(p)
                if g["centered"]:
                    st["average_gradient"] = torch.zeros_like(p)
        grads = [p.grad for p in params]
        v = [st["velocity"] for st in states]
        sq = torch._foreach_mul(grads, grads)
        torch._foreach_mul_(sq, 1 - rho)
        torch._foreach_mul_(v, rho)
        torch._foreach_add_(v, sq)
        if g["centered"]:
            a = [st["average_gradient"] for st in states]
            torch._foreach_mul_(a, rho)
            torch._foreach_add_(a, torch._foreach_mul(grads, 1 - rho))
            denom = torch._foreach_sub(v, torch._foreach_mul(a, a))
            torch._foreach_add_(denom, float(g["eps"]))
        else:
            denom = torch._foreach_add(v, float(g["eps"]))
        torch._foreach_sqrt_(denom)
        inc = torch._foreach_mul(grads, lr)
        torch._foreach_div_(inc, denom)
        if mom > 0:
            m = [st["momentum"] for st in states]
            torch._foreach_mul_(m, mom)
            torch._foreach_add_(m, inc)
            inc = m
        torch._foreach_sub_(params, inc)


def _adamw(params, learning_rate=0.001, weight_decay=0.004, **kw):
    return KerasAdam(params, learning_rate=learning_rate, weight_decay=weight_decay, **kw)


OPTIMIZERS = {"adam": KerasAdam, "adamw": _adamw, "sgd": KerasSGD, "rmsprop": KerasRMSprop}


#: the optimizer config key naming the parameters weight decay applies to (a selector or a list)
DECAY = "decay"


def decay_patterns(decay: Any) -> list[str]:
    """A config's ``decay``: one name pattern or selector (``reglab.selectors``) or a non-empty
    list of them, as a list; else a ValueError."""
    pats = [decay] if isinstance(decay, str) else decay
    if not isinstance(pats, (list, tuple)) or not pats or not all(isinstance(p, str) and p for p in pats):
        raise ValueError(f"decay must be a parameter pattern such as \"@kernels\" or a list of them; got {decay!r}")
    return list(pats)


def decay_groups(params: list[torch.Tensor], decayed: list[bool | torch.Tensor]) -> list[dict[str, Any]]:
    """Param groups for ``params`` where ``decayed`` (one entry per tensor: True, False, or a bool
    mask over its last axis) says which decay: the whole tensors that decay (default decay), those
    that do not (``DECAY_KEY`` 0) and one group per masked tensor (``MASK_KEY``)."""
    whole = [p for p, d in zip(params, decayed) if d is True]
    none = [p for p, d in zip(params, decayed) if d is False]
    groups: list[dict[str, Any]] = [{"params": whole}] if whole else []
    groups += [{"params": [p], MASK_KEY: d} for p, d in zip(params, decayed) if isinstance(d, torch.Tensor)]
    if none:
        groups.append({"params": none, DECAY_KEY: 0.0})
    return groups


def get(identifier: Any, params: Iterable[Any],
        decayed: Callable[[list[str]], list[bool | torch.Tensor]] | None = None) -> torch.optim.Optimizer:
    """Build an optimizer for ``params`` from a torch optimizer instance (returned as is), a Keras
    name (``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``) or a config
    ``{"name": "adam", "learning_rate": 0.005, ...}`` (Keras's argument names and defaults).

    A config's ``decay`` (``DECAY``) names the parameters its ``weight_decay`` applies to:
    ``decayed(patterns)`` says, for each of ``params``, which of it the patterns select (an
    engine's ``decayed``); without ``decayed`` the patterns are only checked."""
    if isinstance(identifier, torch.optim.Optimizer):
        return identifier
    if isinstance(identifier, str):
        identifier = {"name": identifier}
    if isinstance(identifier, Mapping):
        cfg = dict(identifier)
        name = str(cfg.pop("name", "")).lower()
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)} or a torch optimizer")
        if DECAY in cfg:
            patterns = decay_patterns(cfg.pop(DECAY))
            if not (cfg.get("weight_decay") or name == "adamw" and "weight_decay" not in cfg):
                raise ValueError(f"optimizer {name!r}: decay {patterns} names the parameters weight decay applies "
                                 "to, but there is no weight decay: give weight_decay > 0")
            if decayed is not None:
                params = list(params)
                try:
                    params = decay_groups(params, decayed(patterns))
                except ValueError as e:
                    raise ValueError(f"optimizer {name!r}: decay: {e}") from None
        try:
            return OPTIMIZERS[name](params, **cfg)
        except TypeError as e:
            raise ValueError(f"optimizer {name!r}: bad arguments {cfg}: {e}") from None
    raise ValueError(f"optimizer must be a torch optimizer, a name or a config dict; got {identifier!r}")
