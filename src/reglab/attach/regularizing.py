"""``regularize``: parameter and activity regularizers attached by name patterns, and the
whole attachment saved as a spec (``regularization_spec``/``apply_spec``) and restored."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from torch import nn

from .. import constraints as _constraints
from .. import regularizers as _regularizers
from .activity import activity_hook, call_begins, call_ends, track_calls
from .constraining import constrain, register_live
from .sources import (ACTIVITY, PARAMS, ActivityState, Handle, constraint_sources, match_names, owner_of,
                      param_sources, activity_sources, resolve)


def regularize(
    model: nn.Module,
    params: Mapping[str, Any] | None = None,
    activity: Mapping[str, Any] | None = None,
) -> Handle:
    """Attach regularizers to parameters and module outputs of ``model``.

    ``params`` maps parameter patterns to regularizers: name globs (``fnmatch``: ``"*.weight"``,
    ``"layers.0.bias"``) or type selectors -- ``"@kernels"`` (``reglab.KERNELS``: the weights of
    Linear/Bilinear/Conv*/ConvTranspose* layers and their subclasses, and MultiheadAttention's
    input projections; not biases, normalization layers or embeddings), ``"@biases"``
    (``reglab.BIASES``: those layers' biases), ``"@<TypeGlob>.<param glob>"`` (``"@Conv*.weight"``,
    ``"@BatchNorm*.*"``: parameters directly owned by modules whose class or a base class name
    matches). ``activity`` maps module patterns to activity regularizers: name globs (``"0"``,
    ``"encoder.*"``; ``""`` is ``model`` itself) or ``"@<TypeGlob>"`` (``"@ReLU"``). The full rule
    is in ``reglab.selectors``; ``reglab.select(model, pattern)`` shows what a pattern selects.
    Every pattern must match something and no name may match two patterns. Regularizers may be
    given as anything ``reglab.regularizers.get`` accepts (``"l2"``, a config dict, an instance).

    Keras equivalent: ``kernel_regularizer``/``bias_regularizer``/``activity_regularizer`` on a layer.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    handle = Handle()
    params = dict(params or {})
    activity = dict(activity or {})
    resolved_p = {k: resolve(v, f"params[{k!r}]", _regularizers.get, "regularizer") for k, v in params.items()}
    resolved_a = {k: resolve(v, f"activity[{k!r}]", _regularizers.get, "regularizer") for k, v in activity.items()}
    p_names = [n for n, _ in model.named_parameters()]
    m_names = [n for n, _ in model.named_modules()]
    p_hits = match_names(p_names, resolved_p, "parameter", model)
    a_hits = match_names(m_names, resolved_a, "module", model)
    # check everything before changing anything
    for name in p_hits:
        owner, attr = owner_of(model, name)
        if attr in getattr(owner, PARAMS, {}):
            raise ValueError(f"parameter {name!r} already has a regularizer; remove its handle first or combine with +")
    for name in a_hits:
        if hasattr(model.get_submodule(name), ACTIVITY):
            raise ValueError(f"module {name!r} already has an activity regularizer; remove its handle first")
    try:
        for name, (_, reg) in p_hits.items():
            handle.attach(model, name, PARAMS, reg)
        for name, (_, reg) in a_hits.items():
            mod = model.get_submodule(name)
            state = ActivityState(reg)
            object.__setattr__(mod, ACTIVITY, state)
            state.hook = mod.register_forward_hook(activity_hook)
            handle._add(functools.partial(_drop_activity, mod, state))
            handle.sources.append(f"{name}:activity")
            track_calls(mod)
        if a_hits:
            track_calls(model)
    except Exception:
        handle.remove()
        raise
    return handle


def _drop_activity(mod: nn.Module, state: ActivityState) -> None:
    state.hook.remove()
    if getattr(mod, ACTIVITY, None) is state:
        delattr(mod, ACTIVITY)

def foreign_hooks(module: nn.Module) -> str | None:
    """What hooks ``module`` carries besides reglab's own (activity penalties, call tracking,
    constraint registration), in words, or None: an engine that does not run the module's
    ``forward`` cannot honour them."""
    if any(h not in (register_live, call_begins) for h in module._forward_pre_hooks.values()) or \
            module._backward_hooks or getattr(module, "_backward_pre_hooks", None):
        return "hooks"
    if any(h not in (activity_hook, call_ends) for h in module._forward_hooks.values()):
        return "a forward hook"
    return None


def regularization_spec(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Everything attached to ``model`` as a JSON-able dict; ``apply_spec`` restores it, so a model
    is saved as ``state_dict`` + spec, never pickled."""
    return {
        "params": {n: _regularizers.serialize(r) for n, _, _, r in param_sources(model)},
        "activity": {n.rsplit(":", 1)[0]: _regularizers.serialize(s.regularizer) for n, _, s in activity_sources(model)},
        "constraints": {n: _constraints.serialize(c) for n, _, _, c in constraint_sources(model)},
    }


def apply_spec(model: nn.Module, spec: Mapping[str, Any]) -> Handle:
    """Attach what ``regularization_spec`` described to ``model`` (exact names)."""
    unknown = set(spec) - {"params", "activity", "constraints"}
    if unknown:
        raise ValueError(f"spec has unknown keys {sorted(unknown)}; expected 'params', 'activity', 'constraints'")
    def exact(d):  # spec names are exact: escape glob characters
        return {_escape(k): v for k, v in (d or {}).items()}

    h1 = regularize(model, exact(spec.get("params")), exact(spec.get("activity")))
    h2 = constrain(model, exact(spec.get("constraints"))) if spec.get("constraints") else Handle()
    h = Handle()
    h._undo.extend([h1.remove, h2.remove])
    h.sources = h1.sources + h2.sources
    return h


def _escape(name: str) -> str:
    """A glob matching exactly ``name``: glob characters, and a leading ``@`` (a type selector), bracketed."""
    return "".join(f"[{c}]" if c in "*?[" or (i == 0 and c == "@") else c for i, c in enumerate(name))
