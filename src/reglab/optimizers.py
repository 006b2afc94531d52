"""Keras optimizer names, defaults and update rules, as ``torch.optim.Optimizer`` classes.

``get("adam")`` means *Keras's* Adam: learning rate 0.001, beta_1 0.9, beta_2 0.999,
epsilon 1e-7 added outside the bias correction::

    alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)
    m += (g - m) * (1 - beta_1);  v += (g**2 - v) * (1 - beta_2)
    w -= alpha * m / (sqrt(v) + epsilon)

torch's ``Adam`` adds epsilon to the bias-corrected ``sqrt(v)`` instead and cannot reproduce
Keras with any epsilon. Every update here is element-wise, so the same optimizer steps a stack of
M models' parameters (shape ``(M, ...)``) exactly as M separate optimizers would.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim import optimizer as _opt

from . import _checks

__all__ = ["KerasAdam", "KerasSGD", "KerasRMSprop", "get", "unhooked_step", "OPTIMIZERS"]


class KerasAdam(torch.optim.AdamW):
    """Keras 3 ``Adam`` (``AdamW`` with ``weight_decay``: Keras decays ``w -= w * wd * lr`` first).

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
        wd = 0.0 if weight_decay is None else _checks.non_negative_float(weight_decay, "weight_decay")
        params = list(params)
        flat = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
        fused = bool(flat) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in flat) and len(
            {(p.device, p.dtype) for p in flat}) == 1
        super().__init__(params, lr=lr, betas=(beta_1, beta_2), eps=epsilon, weight_decay=wd,
                         fused=fused or None, foreach=None if fused else True)
        self._t = 0
        #: (params, their grads, exp_avgs, exp_avg_sqs, steps) of the fused fast path, checked each step
        self._fast_lists: tuple | None = None

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        self._t += 1
        for group in self.param_groups:
            b2 = group["betas"][1]
            group["eps"] = self.keras_epsilon / math.sqrt(1 - b2**self._t)
        if closure is None and self._fast_step():
            return None
        return super().step(closure)

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


class KerasSGD(torch.optim.SGD):
    """Keras 3 ``SGD(learning_rate=0.01, momentum=0.0, nesterov=False)``. For a constant learning
    rate torch's momentum form ``b = mu b + g; w -= lr b`` equals Keras's ``m = mu m - lr g; w += m``."""

    def __init__(self, params, learning_rate: float = 0.01, momentum: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr=_checks.positive_float(learning_rate, "learning_rate"),
                         momentum=_checks.fraction(momentum, "momentum"), nesterov=_checks.flag(nesterov, "nesterov"))


class KerasRMSprop(torch.optim.RMSprop):
    """Keras 3 ``RMSprop(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False)``:
    ``v = rho v + (1 - rho) g**2; w -= lr g / (sqrt(v) + epsilon)`` (torch's form, Keras's defaults)."""

    def __init__(self, params, learning_rate: float = 0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7, centered: bool = False):
        super().__init__(params, lr=_checks.positive_float(learning_rate, "learning_rate"),
                         alpha=_checks.fraction(rho, "rho"), eps=_checks.non_negative_float(epsilon, "epsilon"),
                         momentum=_checks.fraction(momentum, "momentum"), centered=_checks.flag(centered, "centered"))


def _adamw(params, learning_rate=0.001, weight_decay=0.004, **kw):
    return KerasAdam(params, learning_rate=learning_rate, weight_decay=weight_decay, **kw)


OPTIMIZERS = {"adam": KerasAdam, "adamw": _adamw, "sgd": KerasSGD, "rmsprop": KerasRMSprop}


def get(identifier: Any, params: Iterable[Any]) -> torch.optim.Optimizer:
    """Build an optimizer for ``params`` from a torch optimizer instance (returned as is), a Keras
    name (``"adam"``, ``"adamw"``, ``"sgd"``, ``"rmsprop"``) or a config
    ``{"name": "adam", "learning_rate": 0.005, ...}`` (Keras's argument names and defaults)."""
    if isinstance(identifier, torch.optim.Optimizer):
        return identifier
    if isinstance(identifier, str):
        identifier = {"name": identifier}
    if isinstance(identifier, Mapping):
        cfg = dict(identifier)
        name = str(cfg.pop("name", "")).lower()
        if name not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {name!r}; expected one of {sorted(OPTIMIZERS)} or a torch optimizer")
        try:
            return OPTIMIZERS[name](params, **cfg)
        except TypeError as e:
            raise ValueError(f"optimizer {name!r}: bad arguments {cfg}: {e}") from None
    raise ValueError(f"optimizer must be a torch optimizer, a name or a config dict; got {identifier!r}")
