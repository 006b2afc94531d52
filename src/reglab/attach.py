"""Attach regularizers and constraints to any ``torch.nn.Module``, and read the penalty back.

Nothing is subclassed: parameter regularizers are recorded on the module that owns the parameter,
activity regularizers are forward hooks, constraints are recorded on the module that owns the
parameter and applied by one process-wide optimizer step post-hook. Every attachment returns a handle whose ``remove()``
detaches it again.

Penalty sources have stable names, relative to the module ``penalties`` is called on:
``"<module path>.<param>"`` for a parameter (``"0.weight"``), ``"<module path>:activity"`` for a
module output (``"3:activity"``; the root module's own output is ``":activity"``).

Activity regularization (Keras semantics): the regularizer sees the module's output -- for a
tuple/list output its first element (``nn.LSTM`` -> the output sequence, not ``(h, c)``), moved
so that the batch dimension comes first (recurrent modules with ``batch_first=False`` have it at
dimension 1) -- and its value is divided by the batch size. It is computed in every forward
pass, in ``train()`` and ``eval()`` mode alike (Keras's ``val_loss`` includes it).

Each top-level call starts afresh (Keras 3: a layer called outside any other layer's call clears
its losses): a *top-level call* is a forward of the model ``regularize`` was given, or of a
regularized module, that no such forward encloses (a wrapper or compiled module around the model
calls it, so it counts too). It drops the terms its own subtree recorded before, read or not, so
unread forward passes (a validation pass with grad enabled, 10,000 predictions) neither pile up
nor keep their graphs alive; the calls inside it add up. Reading with ``penalty``/``penalties``
changes nothing. Gradient accumulation over several forward passes is an explicit opt-in:
inside ``with reglab.accumulate_activity():`` top-level calls add to what is recorded since the
last read (a pass under a different grad mode still starts afresh). ``clear_activity(model)`` drops recorded
terms explicitly.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import functools
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch import nn

from . import constraints as _constraints
from . import regularizers as _regularizers
from . import selectors as _selectors

__all__ = [
    "Handle",
    "regularize",
    "constrain",
    "penalty",
    "penalties",
    "apply_constraints",
    "clear_activity",
    "regularization_spec",
    "apply_spec",
    "PenaltyPlan",
    "refresh_constraints",
    "engine_steps",
]

_PARAMS = "_reglab_param_regularizers"
_ACTIVITY = "_reglab_activity"
_CONSTRAINTS = "_reglab_constraints"


# ----------------------------------------------------------------------------- handles


class Handle:
    """Returned by ``regularize``/``constrain``; ``remove()`` detaches what was attached."""

    def __init__(self) -> None:
        self._undo: list[Any] = []
        self.sources: list[str] = []

    def _add(self, fn) -> None:
        self._undo.append(fn)

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Handle(sources={self.sources})"


# ----------------------------------------------------------------------------- matching


def match_names(names: list[str], patterns: Mapping[str, Any], what: str,
           model: nn.Module | None = None) -> dict[str, tuple[str, Any]]:
    """name -> (pattern, value); every pattern must match, no name may match two patterns.

    ``names`` are ``model``'s parameter names (``what="parameter"``) or module names
    (``what="module"``). A pattern is a name glob or a type selector (``"@kernels"``,
    ``"@Conv*.weight"``, ``"@ReLU"``; see ``reglab.selectors``); a selector needs ``model``.
    """
    chosen: dict[str, tuple[str, Any]] = {}
    for pattern, value in patterns.items():
        if not isinstance(pattern, str):
            raise ValueError(f"{what} patterns must be strings; got {pattern!r}")
        selector = _selectors.is_selector(pattern)
        if selector:
            if model is None:
                raise ValueError(f"{what} pattern {pattern!r} is a type selector; it needs the model "
                                 "(match_names(..., model=model)); name globs do not")
            selected = set(_selectors.select(model, pattern, what))
            hits = [n for n in names if n in selected]
        else:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(repr(n) for n in names[:12]) + (" ..." if len(names) > 12 else "")
            types = f"; {_selectors.describe_types(model, what)}" if selector else ""
            raise ValueError(f"{what} pattern {pattern!r} matches no {what} name; the names are: {shown}{types}")
        for n in hits:
            if n in chosen:
                raise ValueError(
                    f"{what} {n!r} is matched by two patterns, {chosen[n][0]!r} and {pattern!r}; "
                    "make the patterns disjoint (combine regularizers with +)"
                )
            chosen[n] = (pattern, value)
    return chosen


def owner_of(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    mod_path, _, attr = dotted.rpartition(".")
    return (model.get_submodule(mod_path) if mod_path else model), attr


# ----------------------------------------------------------------------------- activity


@dataclass
class _ActivityState:
    regularizer: _regularizers.Regularizer
    hook: Any = None
    total: torch.Tensor | None = None
    count: int = 0
    grad_enabled: bool = True
    read: bool = False

    def __deepcopy__(self, memo):
        """A copy of the module starts with no recorded term (a recorded term is part of a
        graph, which ``deepcopy`` cannot copy)."""
        import copy

        return _ActivityState(copy.deepcopy(self.regularizer, memo), copy.deepcopy(self.hook, memo))


@dataclass
class _Collector:
    """Used by the many-model engine: hooks report here instead of into module state, with
    per-source strength overrides (tensors inside ``vmap``)."""

    names: dict[int, str]
    hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    #: True: activity penalties are not computed at all (predictions only)
    skip: bool = False


_COLLECTOR: contextvars.ContextVar[_Collector | None] = contextvars.ContextVar("reglab_collector", default=None)


def _batch_first(module: nn.Module, out: Any) -> torch.Tensor | None:
    if isinstance(out, (tuple, list)):
        out = out[0] if out else None
    if not isinstance(out, torch.Tensor):
        return None
    if isinstance(module, nn.RNNBase) and not module.batch_first and out.dim() == 3:
        out = out.transpose(0, 1)
    return out


def over_batch(value: Any, batch_size: int) -> Any:
    """Keras's rule for activity penalties, written once: a layer's activity loss is
    ``regularizer(output) / batch size``. ``value`` (a penalty, its derivative or a strength that
    the penalty is linear in) divided by the batch size; ``batch_factor`` is the same rule as a
    factor, for engines that scale by multiplying."""
    return value / batch_size


def batch_factor(batch_size: int) -> float:
    """``1 / batch size``: Keras's activity-penalty rule (``over_batch``) as a factor."""
    return 1.0 / batch_size


def _activity_term(reg: _regularizers.Regularizer, y: torch.Tensor, hp: Mapping[str, Any] | None) -> torch.Tensor:
    value = reg.compute(y, **hp) if hp else reg(y)
    return over_batch(value, y.shape[0])


_DEPTH: contextvars.ContextVar[int] = contextvars.ContextVar("reglab_call_depth", default=0)
_ACCUMULATE: contextvars.ContextVar[bool] = contextvars.ContextVar("reglab_accumulate", default=False)
_CALLS = "_reglab_call_hooks"


class accumulate_activity:
    """``with reglab.accumulate_activity():`` -- top-level forward passes inside add their
    activity terms to what is recorded, instead of starting afresh (gradient accumulation over
    several forwards before one ``penalty`` and one step)."""

    def __enter__(self):
        self._token = _ACCUMULATE.set(True)
        return self

    def __exit__(self, *exc):
        _ACCUMULATE.reset(self._token)
        return False


def _call_begins(module: nn.Module, args: Any) -> None:
    depth = _DEPTH.get()
    if depth == 0 and not _ACCUMULATE.get() and _COLLECTOR.get() is None:
        for _, _, state in activity_sources(module):  # a top-level call: its subtree starts afresh
            state.total, state.count, state.read = None, 0, False
    module.__dict__.setdefault("_reglab_depth_tokens", []).append(_DEPTH.set(depth + 1))


def _call_ends(module: nn.Module, args: Any, out: Any) -> None:
    tokens = module.__dict__.get("_reglab_depth_tokens")
    if tokens:
        _DEPTH.reset(tokens.pop())


def _track_calls(mod: nn.Module) -> None:
    """Hooks marking ``mod``'s forward as a call (once per module; they travel with copies)."""
    if not mod.__dict__.get(_CALLS):
        mod.__dict__[_CALLS] = (mod.register_forward_pre_hook(_call_begins),
                                mod.register_forward_hook(_call_ends, always_call=True))


def _activity_hook(module: nn.Module, args: Any, out: Any) -> None:
    state: _ActivityState = getattr(module, _ACTIVITY)
    y = _batch_first(module, out)
    if y is None:
        raise TypeError(
            f"activity regularizer on {type(module).__name__}: its output is "
            f"{type(out).__name__}, not a tensor (or tuple whose first element is a tensor)"
        )
    col = _COLLECTOR.get()
    if col is not None and col.skip:
        return
    if col is not None:
        name = col.names[id(module)]
        term = _activity_term(state.regularizer, y, col.hparams.get(name))
        col.terms[name] = col.terms[name] + term if name in col.terms else term
        return
    term = _activity_term(state.regularizer, y, None)
    grad = torch.is_grad_enabled()
    if state.read or state.total is None or state.grad_enabled != grad:
        state.total, state.count = term, 1
    else:
        state.total, state.count = state.total + term, state.count + 1
    state.grad_enabled, state.read = grad, False


# ----------------------------------------------------------------------------- attaching


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
    resolved_p = {k: _resolve(v, f"params[{k!r}]", _regularizers.get, "regularizer") for k, v in params.items()}
    resolved_a = {k: _resolve(v, f"activity[{k!r}]", _regularizers.get, "regularizer") for k, v in activity.items()}
    p_names = [n for n, _ in model.named_parameters()]
    m_names = [n for n, _ in model.named_modules()]
    p_hits = match_names(p_names, resolved_p, "parameter", model)
    a_hits = match_names(m_names, resolved_a, "module", model)
    # check everything before changing anything
    for name in p_hits:
        owner, attr = owner_of(model, name)
        if attr in getattr(owner, _PARAMS, {}):
            raise ValueError(f"parameter {name!r} already has a regularizer; remove its handle first or combine with +")
    for name in a_hits:
        if hasattr(model.get_submodule(name), _ACTIVITY):
            raise ValueError(f"module {name!r} already has an activity regularizer; remove its handle first")
    try:
        for name, (_, reg) in p_hits.items():
            owner, attr = owner_of(model, name)
            table = owner.__dict__.setdefault(_PARAMS, {})
            table[attr] = reg
            handle._add(functools.partial(table.pop, attr, None))
            handle.sources.append(name)
        for name, (_, reg) in a_hits.items():
            mod = model.get_submodule(name)
            state = _ActivityState(reg)
            object.__setattr__(mod, _ACTIVITY, state)
            state.hook = mod.register_forward_hook(_activity_hook)
            handle._add(functools.partial(_drop_activity, mod, state))
            handle.sources.append(f"{name}:activity")
            _track_calls(mod)
        if a_hits:
            _track_calls(model)
    except Exception:
        handle.remove()
        raise
    return handle


def _drop_activity(mod: nn.Module, state: _ActivityState) -> None:
    state.hook.remove()
    if getattr(mod, _ACTIVITY, None) is state:
        delattr(mod, _ACTIVITY)


def _resolve(value: Any, where: str, get: Any, what: str) -> Any:
    """``get(value)`` (a regularizers/constraints ``get``) with errors naming ``where``."""
    try:
        obj = get(value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if obj is None:
        raise ValueError(f"{where}: {what} is None")
    return obj


# ----------------------------------------------------------------------------- constraints

#: models with constraints that exist now: weak references only (a model that is gone leaves);
#: a model registers here when constrained and, as a copy (``deepcopy``, ``torch.load``), at its
#: first forward pass (``_register_live``, a forward pre-hook that travels with the module)
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


def _register_live(module: nn.Module, args: Any) -> None:
    _LIVE.add(module)


def _track_live(module: nn.Module) -> None:
    """``module`` is live now, and a copy of it will be at its first forward pass."""
    if not module.__dict__.get(_ROOT):
        module.__dict__[_ROOT] = True
        module.register_forward_pre_hook(_register_live)
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
                    p.copy_(c(p))


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
    resolved = {k: _resolve(v, f"constraints[{k!r}]", _constraints.get, "constraint")
                for k, v in dict(constraints).items()}
    named = dict(model.named_parameters())
    hits = match_names(list(named), resolved, "parameter", model)
    for name in hits:
        owner, attr = owner_of(model, name)
        if attr in getattr(owner, _CONSTRAINTS, {}):
            raise ValueError(f"parameter {name!r} already has a constraint; remove its handle first")
    handle = Handle()
    for name, (_, c) in hits.items():
        owner, attr = owner_of(model, name)
        table = owner.__dict__.setdefault(_CONSTRAINTS, {})
        table[attr] = c
        handle._add(functools.partial(table.pop, attr, None))
        handle.sources.append(name)
        _track_live(owner)  # the owner too: a copy of it, or it alone once the model is gone
    _track_live(model)
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


# ----------------------------------------------------------------------------- reading


def param_sources(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, _regularizers.Regularizer]]:
    """(source name, owner module, attribute, regularizer) of every parameter regularizer, once per tensor."""
    seen: set[int] = set()
    for path, mod in model.named_modules():
        table = mod.__dict__.get(_PARAMS)
        if not table:
            continue
        for attr, reg in table.items():
            t = getattr(mod, attr)
            if id(t) in seen:
                continue
            seen.add(id(t))
            yield (f"{path}.{attr}" if path else attr), mod, attr, reg


def activity_regularizer(module: nn.Module) -> _regularizers.Regularizer | None:
    """The activity regularizer attached to ``module``'s output, or None."""
    state = module.__dict__.get(_ACTIVITY)
    return None if state is None else state.regularizer


def foreign_hooks(module: nn.Module) -> str | None:
    """What hooks ``module`` carries besides reglab's own (activity penalties, call tracking,
    constraint registration), in words, or None: an engine that does not run the module's
    ``forward`` cannot honour them."""
    if any(h not in (_register_live, _call_begins) for h in module._forward_pre_hooks.values()) or \
            module._backward_hooks or getattr(module, "_backward_pre_hooks", None):
        return "hooks"
    if any(h not in (_activity_hook, _call_ends) for h in module._forward_hooks.values()):
        return "a forward hook"
    return None


def activity_sources(model: nn.Module) -> Iterator[tuple[str, nn.Module, _ActivityState]]:
    for path, mod in model.named_modules():
        state = mod.__dict__.get(_ACTIVITY)
        if state is not None:
            yield f"{path}:activity", mod, state


def constraint_sources(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, _constraints.Constraint]]:
    for path, mod in model.named_modules():
        for attr, c in (mod.__dict__.get(_CONSTRAINTS) or {}).items():
            yield (f"{path}.{attr}" if path else attr), mod, attr, c


class PenaltyPlan:
    """The penalty sources of one model, resolved once (training calls ``terms`` every step).

    ``collect()`` is a context in which activity hooks report to this plan (not to module
    state); ``terms`` returns the parameter penalties and the activity penalties collected, in a
    stable order (parameters in module order, then activity in module order). ``hparams`` (source
    name -> strengths, possibly tensors under ``vmap``) overrides the regularizers' strengths.
    """

    def __init__(self, model: nn.Module):
        self.params = list(param_sources(model))
        self.activity = [(n, m) for n, m, _ in activity_sources(model)]
        self._names = {id(m): n for n, m in self.activity}

    @property
    def names(self) -> list[str]:
        return [p[0] for p in self.params] + [a[0] for a in self.activity]

    def collect(self, hparams: Mapping[str, Mapping[str, Any]] | None = None) -> _Collect:
        return _Collect(_Collector(self._names, hparams or {}))

    def ignore(self) -> _Collect:
        """A context in which forward passes compute no activity penalty (and record none)."""
        return _Collect(_Collector(self._names, {}, skip=True))

    def terms(self, collected: _Collector | None = None,
              hparams: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, mod, attr, reg in self.params:
            hp = hparams.get(name) if hparams else None
            t = getattr(mod, attr)  # getattr: sees tensors swapped in by torch.func.functional_call
            out[name] = reg.compute(t, **hp) if hp else reg(t)
        if collected is not None:
            for name, _ in self.activity:
                if name in collected.terms:
                    out[name] = collected.terms[name]
        return out


class _Collect:
    def __init__(self, collector: _Collector):
        self.collector = collector

    def __enter__(self) -> _Collector:
        self._token = _COLLECTOR.set(self.collector)
        return self.collector

    def __exit__(self, *exc) -> None:
        _COLLECTOR.reset(self._token)


@contextlib.contextmanager
def quiet(model: nn.Module, training: bool = False) -> Iterator[None]:
    """Within: forward passes of ``model`` that leave nothing behind -- no grad, no activity
    penalty recorded -- in training or evaluation mode, the model's own mode restored after (for
    probes: an output's shape, a flop count, the dropout calls)."""
    was = model.training
    model.train(training)
    try:
        with torch.no_grad(), PenaltyPlan(model).collect():
            yield
    finally:
        model.train(was)


def penalties(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every penalty term by source name: parameter penalties from the current weights, activity
    penalties from the forward passes recorded since the last read (see the module docstring)."""
    out = PenaltyPlan(model).terms()
    for name, _, state in activity_sources(model):
        if state.total is not None:
            out[name] = state.total
            state.read = True
    return out


def penalty(model: nn.Module) -> torch.Tensor:
    """The total penalty of ``model`` as a differentiable scalar (0 when nothing is attached).

    Keras equivalent: ``sum(model.losses)``.
    """
    terms = penalties(model)
    if not terms:
        p = next(model.parameters(), None)
        return torch.zeros((), dtype=p.dtype if p is not None else torch.get_default_dtype(),
                           device=p.device if p is not None else None)
    return torch.stack([t.reshape(()) for t in terms.values()]).sum()


def clear_activity(model: nn.Module) -> None:
    """Forget the activity terms recorded by earlier forward passes."""
    for _, _, state in activity_sources(model):
        state.total, state.count, state.read = None, 0, False


def apply_constraints(model: nn.Module) -> None:
    """Project every constrained parameter now, once per tensor (for loops that do not call
    ``optimizer.step``; the per-model engine calls it after each step)."""
    done: set[int] = set()
    with torch.no_grad():
        for _, mod, attr, c in constraint_sources(model):
            p = getattr(mod, attr)
            if id(p) not in done:
                done.add(id(p))
                p.copy_(c(p))


# ----------------------------------------------------------------------------- spec


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
