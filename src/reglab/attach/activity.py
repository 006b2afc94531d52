"""Activity penalties: the forward hook that records them (Keras semantics: the output's
penalty divided by the batch size), top-level calls that start afresh, and reading the penalty
back (``PenaltyPlan``, ``penalties``, ``penalty``)."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .. import regularizers as _regularizers
from .sources import ACTIVITY, ActivityState, activity_sources, param_sources


@dataclass
class Collector:
    """Used by the many-model engine: hooks report here instead of into module state, with
    per-source strength overrides (tensors inside ``vmap``)."""

    names: dict[int, str]
    hparams: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    #: True: activity penalties are not computed at all (predictions only)
    skip: bool = False


COLLECTOR: contextvars.ContextVar[Collector | None] = contextvars.ContextVar("reglab_collector", default=None)


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
    return over_batch(one_number(reg.compute(y, **hp) if hp else reg(y), reg, "an activity"), y.shape[0])


def one_number(value: Any, reg: Any, what: str) -> torch.Tensor:
    """A regularizer's value, checked to be one number (a penalty is a sum): a tensor of another
    shape is an error naming the regularizer, not a shape error deep in an engine."""
    if not isinstance(value, torch.Tensor) or value.numel() != 1:
        got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{reg!r} on {what} returned {got}: a regularizer returns one number, the penalty "
                         "(e.g. 0.01 * w.pow(2).sum())")
    return value


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


def call_begins(module: nn.Module, args: Any) -> None:
    depth = _DEPTH.get()
    if depth == 0 and not _ACCUMULATE.get() and COLLECTOR.get() is None:
        for _, _, state in activity_sources(module):  # a top-level call: its subtree starts afresh
            state.total, state.count, state.read = None, 0, False
    module.__dict__.setdefault("_reglab_depth_tokens", []).append(_DEPTH.set(depth + 1))


def call_ends(module: nn.Module, args: Any, out: Any) -> None:
    tokens = module.__dict__.get("_reglab_depth_tokens")
    if tokens:
        _DEPTH.reset(tokens.pop())


def track_calls(mod: nn.Module) -> None:
    """Hooks marking ``mod``'s forward as a call (once per module; they travel with copies)."""
    if not mod.__dict__.get(_CALLS):
        mod.__dict__[_CALLS] = (mod.register_forward_pre_hook(call_begins),
                                mod.register_forward_hook(call_ends, always_call=True))


def activity_hook(module: nn.Module, args: Any, out: Any) -> None:
    state: ActivityState = getattr(module, ACTIVITY)
    y = _batch_first(module, out)
    if y is None:
        raise TypeError(
            f"activity regularizer on {type(module).__name__}: its output is "
            f"{type(out).__name__}, not a tensor (or tuple whose first element is a tensor)"
        )
    col = COLLECTOR.get()
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

    def collect(self, hparams: Mapping[str, Mapping[str, Any]] | None = None) -> Collect:
        return Collect(Collector(self._names, hparams or {}))

    def ignore(self) -> Collect:
        """A context in which forward passes compute no activity penalty (and record none)."""
        return Collect(Collector(self._names, {}, skip=True))

    def terms(self, collected: Collector | None = None,
              hparams: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, mod, attr, reg in self.params:
            hp = hparams.get(name) if hparams else None
            t = getattr(mod, attr)  # getattr: sees tensors swapped in by torch.func.functional_call
            out[name] = one_number(reg.compute(t, **hp) if hp else reg(t), reg, f"{name!r}")
        if collected is not None:
            for name, _ in self.activity:
                if name in collected.terms:
                    out[name] = collected.terms[name]
        return out


class Collect:
    def __init__(self, collector: Collector):
        self.collector = collector

    def __enter__(self) -> Collector:
        self._token = COLLECTOR.set(self.collector)
        return self.collector

    def __exit__(self, *exc) -> None:
        COLLECTOR.reset(self._token)


@contextlib.contextmanager
def quiet(model: nn.Module, training: bool = False) -> Iterator[None]:
    """Within: forward passes of ``model`` that leave nothing behind -- no grad, no activity
    penalty recorded, no draw from the global random generators -- in training or evaluation
    mode, the model's own mode restored after (for probes: an output's shape, a flop count, the
    dropout calls)."""
    was = model.training
    model.train(training)
    devices = sorted({p.device for p in model.parameters() if p.device.type == "cuda"}, key=str)
    try:
        with torch.no_grad(), PenaltyPlan(model).collect(), torch.random.fork_rng(devices=devices):
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
