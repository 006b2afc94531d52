"""Constraints: recorded on the modules that own the parameters, applied after every optimizer
step by one process-wide step post-hook (or by an engine, ``engine_steps``)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from .. import constraints as _constraints
from .sources import CONSTRAINTS, Handle, constraint_sources, match_names, owner_of, resolve


#: models with constraints that exist now: weak references only (a model that is gone leaves);
#: a model registers here when constrained and, as a copy (``deepcopy``, ``torch.load``), at its
#: first forward pass (``register_live``, a forward pre-hook that travels with the module)
_LIVE: weakref.WeakSet = weakref.WeakSet()
_STEP_HOOK: Any = None
_ROOT = "_reglab_constraint_root"
#: optimizers that step a training engine's own buffers, never a module's parameters (the
#: engine projects its stacked weights itself, in ``after_step``): the hook has nothing to find
#: there and skips the walk over every live model's modules (measured: 3.6 of 12.6 s of a
#: 20-model max-norm group, 200 epochs of 12 steps)
_ENGINE_OWNED: weakref.WeakSet = weakref.WeakSet()


def engine_owned(optimizer: torch.optim.Optimizer) -> None:
    """Mark ``optimizer`` as one that steps only a training engine's own buffers, which apply
    their constraints themselves: the constraint step hook leaves its steps alone."""
    _ENGINE_OWNED.add(optimizer)


@contextlib.contextmanager
def engine_steps(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """Within: ``optimizer``'s steps are a training engine's, which projects the constrained
    weights of the models it stepped itself (``apply_constraints``); the constraint step hook
    leaves them alone. Outside, the optimizer is a plain one again (a user's instance)."""
    owned = optimizer in _ENGINE_OWNED
    _ENGINE_OWNED.add(optimizer)
    try:
        yield
    finally:
        if not owned:
            _ENGINE_OWNED.discard(optimizer)


def register_live(module: nn.Module, args: Any) -> None:
    _LIVE.add(module)


def track_live(module: nn.Module) -> None:
    """``module`` is live now, and a copy of it will be at its first forward pass."""
    if not module.__dict__.get(_ROOT):
        module.__dict__[_ROOT] = True
        module.register_forward_pre_hook(register_live)
    _LIVE.add(module)


def _step_post_hook(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    """After any optimizer's step: project each constrained parameter it stepped. Constraints
    are read from the modules (``constraint_sources``), so they hold for copies, converted and
    reloaded models; no table of parameter identities is kept."""
    if not _LIVE or optimizer in _ENGINE_OWNED:
        return
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}  # this step's
    done: set[int] = set()
    with torch.no_grad():
        for root in list(_LIVE):
            for _, mod, attr, c in constraint_sources(root):
                p = getattr(mod, attr)
                if id(p) in stepped and id(p) not in done:
                    done.add(id(p))
                    p.copy_(c.project(p))


def constrain(model: nn.Module, constraints: Mapping[str, Any]) -> Handle:
    """Apply constraints to parameters after every ``optimizer.step()``.

    ``constraints`` maps parameter patterns -- name globs or type selectors, as ``params`` in
    ``regularize`` (``{"@kernels": MaxNorm(3)}``: the weights of Linear/Conv layers only) -- to
    constraints.

    The constraints live on the modules (a table per owner module, by attribute name), so they
    survive ``copy.deepcopy``, a whole-model ``torch.save``/``torch.load``, ``load_state_dict``
    (also ``assign=True``), ``.to()``/``.double()``/``.half()`` with or without
    ``torch.__future__.set_swap_module_params_on_conversion(True)``, and ``torch.compile``; one
    process-wide optimizer step post-hook projects the parameters any optimizer stepped.

    Keras equivalent: ``kernel_constraint``/``bias_constraint`` (applied after each update).
    Hand-written loops with a non-torch update can call ``apply_constraints(model)``.
    """
    global _STEP_HOOK
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    resolved = {k: resolve(v, f"constraints[{k!r}]", _constraints.get, "constraint")
                for k, v in dict(constraints).items()}
    named = dict(model.named_parameters())
    hits = match_names(list(named), resolved, "parameter", model)
    for name in hits:
        owner, attr = owner_of(model, name)
        if attr in getattr(owner, CONSTRAINTS, {}):
            raise ValueError(f"parameter {name!r} already has a constraint; remove its handle first")
    handle = Handle()
    for name, (_, c) in hits.items():
        owner = handle.attach(model, name, CONSTRAINTS, c)
        track_live(owner)  # the owner too: a copy of it, or it alone once the model is gone
    track_live(model)
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_post_hook(_step_post_hook)
    return handle


def refresh_constraints(model: nn.Module) -> None:
    """Register ``model`` (e.g. a copy that has not run a forward pass yet) with the optimizer
    step hook. Not needed in a training loop: a copy registers itself at its first forward
    pass. Kept for code that calls it; ``fit`` does."""
    global _STEP_HOOK
    if any(True for _ in constraint_sources(model)):
        _LIVE.add(model)
        if _STEP_HOOK is None:
            _STEP_HOOK = register_optimizer_step_post_hook(_step_post_hook)

def apply_constraints(model: nn.Module) -> None:
    """Project every constrained parameter now, once per tensor (for loops that do not call
    ``optimizer.step``; the per-model engine calls it after each step)."""
    done: set[int] = set()
    with torch.no_grad():
        for _, mod, attr, c in constraint_sources(model):
            p = getattr(mod, attr)
            if id(p) not in done:
                done.add(id(p))
                p.copy_(c.project(p))
