"""The one place that decides which engine trains a group of models.

``choose_engine`` is asked by ``fit``, ``fit_many`` and the study runner alike, and answers with
the engine's kind and the reason, in words a user can act on:

- ``"fused"`` (``reglab.engines.fused``): the Dense-stack models whose activations, penalty
  terms, loss and optimizer (Keras's Adam) its compiled kernel holds, where a C++ compiler
  builds it: whole epochs per call, models in SIMD lanes.
- ``"dense"`` (``reglab.engines.dense``): a plain ``Sequential`` of Dense/``nn.Linear``,
  activation and ``nn.Dropout`` layers, on arrays with one feature axis, a loss with a written
  derivative and an optimizer given by name: the backward pass written out, M models stacked.
- ``"vmap"`` (``reglab.engines.vmap``): M >= 2 models of any other architecture that
  ``torch.vmap`` can batch, found by running the objective and its gradient of two stacked
  models on the first examples (a probe; only vmap's own failures -- an op without a batching
  rule, data-dependent control flow, an ``autograd.Function`` without ``setup_context`` -- send
  the models elsewhere), and whose only random draws are ``nn.Dropout``'s (found by watching the
  generators during one forward pass, not from module names): vmap gives each model the masks
  it draws alone on the CPU only.
- ``"loop"`` (``reglab.engines.loop``): everything else, and one model alone: each model
  through autograd, exactly as ``fit`` trains it.

How a model's numbers depend on the group it trains in follows from the kind
(``EngineChoice.group_rule``): not at all on ``fused``, ``dense`` and ``loop`` (the loop's, like ``fit``'s,
on the thread count); on ``vmap`` they are the same in every group of two or more (a model
alone trains on the loop engine, whose kernels round otherwise).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..losses import Loss
from .protocol import KINDS

__all__ = ["EngineChoice", "EngineUnavailable", "choose_engine"]

#: what torch says where vmap cannot batch a model (torch 2.x messages)
_VMAP_LIMITS = ("Batching rule not implemented", "vmap:", "functorch transforms", "BatchedTensor")


class EngineUnavailable(ValueError):
    """A forced engine (``fit_many(engine=...)``) cannot train the model; the message says why."""


@dataclass(frozen=True)
class EngineChoice:
    """The engine that trains a group of models, and why."""

    kind: str
    reason: str

    @property
    def group_rule(self) -> str:
        """How a model's numbers depend on its group, bit for bit: ``"any"`` -- not at all (the
        Dense-stack engine, at 1 and 2 threads alike); ``"threads"`` -- not on the group, only on
        the thread count, as the model's kernels' own numbers do (the loop); ``"pairs"`` -- at a
        given thread count, the same in every group of two or more (vmap)."""
        return {"fused": "any", "dense": "any", "loop": "threads", "vmap": "pairs"}[self.kind]


def choose_engine(model: nn.Module, loss: Loss, batch: tuple[Any, Any] | None, *, n_models: int = 1,
                  optimizer: Any = "adam", arrays: bool = True, data_draws: bool = False,
                  engine: str = "auto") -> EngineChoice:
    """The engine that trains ``n_models`` models built like ``model`` (model 0) with ``loss``.

    ``batch``: the first examples ``(x, y)`` as the model takes them (for the probes; None where
    they cannot be drawn: no vmap). ``arrays``: the data are in-memory arrays (not a
    ``DataLoader``). ``data_draws``: reading an example draws random numbers (a ``Dataset`` with
    augmentation; ``reglab.training.sources.draws_random``). ``optimizer``: as given to ``fit``
    (an instance is bound to the model's own parameters). ``engine``: ``"auto"``, or a kind to force; a forced kind that cannot train the
    model raises ``EngineUnavailable``, naming the engine, the module and the op."""
    if engine != "auto" and engine not in KINDS:
        raise ValueError(f"engine must be 'auto' or one of {list(KINDS)}; got engine={engine!r}")
    if engine in ("auto", "dense", "fused"):
        why_not = _dense_refusal(model, loss, batch, optimizer, arrays)
        if why_not is None and engine in ("auto", "fused"):
            why_not_fused = _fused_refusal(model, loss, batch, optimizer, quiet=engine == "fused")
            if why_not_fused is None:
                return EngineChoice("fused", "a Sequential of Dense layers whose activations, penalties, loss and "
                                             "optimizer the fused kernel holds: compiled, models in SIMD lanes")
            if engine == "fused":
                raise EngineUnavailable(f"engine='fused' cannot train this model: {why_not_fused}")
        if why_not is None:
            return EngineChoice("dense", "a Sequential of Dense/Linear, activation and Dropout layers on 2-D arrays: "
                                         "backward pass written out")
        if engine in ("dense", "fused"):
            raise EngineUnavailable(f"engine={engine!r} cannot train this model: {why_not}")
    if engine == "loop":
        return EngineChoice("loop", "asked for (engine='loop'): each model through autograd, as fit trains it")
    if engine == "auto" and n_models < 2:
        return EngineChoice("loop", "one model: autograd, as fit trains it")
    why_not = ("reading its examples draws random numbers (augmentation), which only the loop draws for each model "
               "from its own random state") if data_draws else _vmap_refusal(model, loss, batch)
    if why_not is None:
        return EngineChoice("vmap", "torch.vmap batches the models (one architecture, draws only by nn.Dropout)")
    if engine == "vmap":
        raise EngineUnavailable(f"engine='vmap' cannot train this model: {why_not}")
    return EngineChoice("loop", f"{why_not}; each model through autograd, as fit trains it")


def _dense_refusal(model: nn.Module, loss: Loss, batch: Any, optimizer: Any, arrays: bool) -> str | None:
    """Why the Dense-stack engine cannot train the model (None: it can)."""
    from .dense import unsupported_reason

    if isinstance(optimizer, torch.optim.Optimizer):
        return "an optimizer instance is bound to the model's own parameters (give a name or config)"
    if not arrays:
        return "the data come from a DataLoader or Dataset, not arrays"
    if batch is not None and torch.is_tensor(batch[0]) and batch[0].dim() != 2:
        return f"its inputs have {batch[0].dim() - 1} axes per example (one feature axis needed)"
    if batch is not None and torch.is_tensor(batch[0]) and not batch[0].is_floating_point():
        return f"its inputs are {batch[0].dtype} (float needed)"
    return unsupported_reason(model, loss)


def _fused_refusal(model: nn.Module, loss: Loss, batch: Any, optimizer: Any, quiet: bool) -> str | None:
    """Why the fused engine cannot train a model the Dense-stack engine can (None: it can). Where
    the model is one it trains but its kernel cannot be built here, one line says so (once per
    process), unless ``quiet``."""
    from .dense.eligibility import Unsupported
    from .fused import arch_of, say_once, unavailable
    from .fused.build import library
    from .fused.source import source

    try:
        arch = arch_of(model, loss, optimizer)
    except Unsupported as e:
        return str(e)
    if batch is not None and torch.is_tensor(batch[1]) and batch[1].numel() != batch[1].shape[0] * arch.widths[-1]:
        return f"its targets {tuple(batch[1].shape)} are not one row of {arch.widths[-1]} per example"
    why = unavailable()
    if why is None:
        why = library(source(arch))[1]
    if why is not None and not quiet:
        say_once(why)
    return why


def _vmap_refusal(model: nn.Module, loss: Loss, batch: Any) -> str | None:
    """Why the vmap engine cannot train two or more such models as each trains alone (None: it
    can). Probes, on the first examples, in this order: random draws other than ``nn.Dropout``'s
    (naming the module that draws); dropout on a GPU; the objective's gradient of two stacked
    copies of the model, each on its own batch as in training, against autograd's for the model
    alone -- a failure that autograd does not have, or another gradient (a batching rule that
    does not hold for the model, as an embedding's ``padding_idx`` under torch 2.13), names the
    parameter or the module and the op."""
    if batch is None or not torch.is_tensor(batch[0]):
        return "its data cannot be probed for torch.vmap"
    xb, yb = batch
    p0 = next(model.parameters())
    with torch.random.fork_rng(devices=[p0.device] if p0.device.type == "cuda" else []):
        drawer = _drawing_module(model, xb)
        if drawer is not None:
            return (f"{_where(drawer)} draws random numbers outside nn.Dropout, which torch.vmap cannot draw as "
                    "each model draws them alone")
        from .vmap import random_calls

        calls, _ = random_calls(model, xb)
        if calls and p0.device.type != "cpu":
            return "it uses dropout on a GPU, whose masks torch.vmap cannot draw as each model draws them alone"
        was = model.training
        model.train(not calls)  # dropout's masks differ under vmap: compared without them
        try:
            alone = _autograd_gradients(model, loss, xb, yb)
            return _stacked_refusal(model, loss, xb, yb, alone)
        finally:
            model.train(was)


def _autograd_gradients(model: nn.Module, loss: Loss, xb: torch.Tensor, yb: torch.Tensor) -> dict[str, torch.Tensor]:
    """The objective's gradient for ``model`` alone on ``(xb, yb)`` (a copy: buffers untouched)."""
    import copy

    from ..attach import PenaltyPlan
    from .objective import model_objective

    twin = copy.deepcopy(model)
    named = [(n, p) for n, p in twin.named_parameters() if p.requires_grad]
    data, _, pens = model_objective(twin, PenaltyPlan(twin), loss, xb, yb, False)
    total = data.mean() + sum(v.reshape(()) for v in pens.values()) if pens else data.mean()
    grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g) for (n, p), g in zip(named, grads)}


def _stacked_refusal(model: nn.Module, loss: Loss, xb: torch.Tensor, yb: torch.Tensor,
                     alone: dict[str, torch.Tensor]) -> str | None:
    """Why two stacked copies of ``model`` under vmap, each on its own batch, do not give
    ``alone``'s gradient (None: they do)."""
    from .vmap import VmapStack

    names = {id(m): (n, type(m).__name__) for n, m in model.named_modules()}
    with _innermost(names) as where:
        try:
            stack = VmapStack([model, model], [loss, loss], False, xb.dim(), yb.dim())
            data, _, _, pens = stack.objective(torch.stack([xb, xb]), torch.stack([yb, yb]))
            total = data.mean(1) + (pens.sum(0) if pens is not None else 0)
            stack.backward(total, None)
        except (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError) as e:
            # autograd ran this model on the same batch: the failure is vmap's
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            op = re.search(r"aten::\w+(?:\.\w+)?", msg)
            if op:
                what = f"it has no batching rule for {op.group(0)}"
            elif any(k in msg for k in _VMAP_LIMITS):
                what = msg.split(". ")[0].strip()
            else:
                what = f"{type(e).__name__}: {msg}"
            at = where()
            return f"torch.vmap cannot batch {_where(at)}: {what}" if at else f"torch.vmap: {what}"
    for name, g in stack.gradients().items():
        want = alone[name]
        scale = float(want.abs().max()) if want.numel() else 0.0
        err = float((g - want.unsqueeze(0)).abs().max()) if want.numel() else 0.0
        if err > 1e-3 * scale + 1e-6:
            return (f"torch.vmap's gradient of {name!r} differs from autograd's by {err:.2g} (of {scale:.2g}): a "
                    "batching rule that does not hold for this model")
    return None


def _where(at: tuple[str, str]) -> str:
    """A module in words: ``'name' (Type)``, or the model's own forward."""
    name, kind = at
    return f"the forward of the model ({kind})" if name == "" else f"{name!r} ({kind})"


def _drawing_module(model: nn.Module, xb: torch.Tensor) -> tuple[str, str] | None:
    """The innermost module whose forward draws from the global generator, ``nn.Dropout`` aside
    (one training-mode forward without grad, nothing recorded, the model's buffers untouched;
    None: none draws)."""
    from torch.func import functional_call
    from torch.nn.modules import module as _module

    from ..attach import quiet
    from .vmap import dropout_modules, dropouts_as

    names = {id(m): (n, type(m).__name__) for n, m in model.named_modules()}
    devices = [xb.device] if xb.device.type == "cuda" else []

    def state():
        return [torch.get_rng_state()] + [torch.cuda.get_rng_state(d) for d in devices]

    before: dict[int, list] = {}
    drew: list[tuple[int, str, str]] = []  # (depth, name, type) of modules whose call drew

    def pre(mod, args):
        if id(mod) in names:
            before[id(mod)] = state()

    def post(mod, args, out):
        if id(mod) in names and id(mod) in before:
            if any(not torch.equal(a, b) for a, b in zip(before.pop(id(mod)), state())):
                n, k = names[id(mod)]
                drew.append((n.count(".") + (n != ""), n, k))

    # on copies of the weights and buffers: a training-mode pass updates batch-norm statistics
    weights = {k: v.detach().clone() for k, v in [*model.named_parameters(), *model.named_buffers()]}
    handles = [_module.register_module_forward_pre_hook(pre), _module.register_module_forward_hook(post)]
    try:
        with torch.random.fork_rng(devices=devices), quiet(model, training=True), \
                dropouts_as(dropout_modules(model), lambda d, h: h):
            functional_call(model, weights, (xb,))
    finally:
        for h in handles:
            h.remove()
    if not drew:
        return None
    deepest = max(d for d, _, _ in drew)
    return next((n, k) for d, n, k in drew if d == deepest)


@contextlib.contextmanager
def _innermost(names: dict[int, tuple[str, str]]) -> Iterator[Any]:
    """Within: forward hooks note which of the model's modules are running; yields a function
    giving the innermost one (name, type) when called after a failure."""
    from torch.nn.modules import module as _module

    running: list[int] = []

    def pre(mod, args):
        if id(mod) in names:
            running.append(id(mod))

    def post(mod, args, out):
        if id(mod) in names and running and running[-1] == id(mod):
            running.pop()

    handles = [_module.register_module_forward_pre_hook(pre), _module.register_module_forward_hook(post)]
    try:
        yield lambda: names[running[-1]] if running else None
    finally:
        for h in handles:
            h.remove()
