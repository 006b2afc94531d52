"""M models of one architecture as stacked tensors, stepped together under ``torch.vmap``.

The per-model objective is ``reglab.training.objective.model_objective`` -- the same function
``fit`` calls -- run through ``torch.func.functional_call`` under ``torch.vmap``; regularizer
strengths enter as per-model tensors (``hparams``), so one run sweeps them. The number of torch
operations per step does not depend on M (but for drawing dropout masks, one call per model).

On CPU a model's numbers are the same in every group of two or more (bit for bit at a given
thread count; tested at 1 and 2 threads): the optimizer steps one row-padded buffer (see
``VmapStack``), dropout masks come from each model's own generator (below), and a model that
stopped early or failed keeps its batch-norm statistics while the others go on. One model alone
trains on the plain autograd path instead (``fit_many``), whose convolution and batch-norm
kernels round differently from their batched forms. (On CUDA, dropout masks are ``vmap``'s.)

Dropout: ``torch.vmap(randomness="different")`` draws all models' masks from the global generator
at once, so a model's masks would depend on its group. Instead each ``nn.Dropout`` call takes a
mask made outside ``vmap`` by torch's own CPU recipe (``noise = empty_like(x).bernoulli_(1 - p)
/ (1 - p)``, ``x * noise``), drawn from the model's own generator (``dropout_generators``: the
global state right after the model's build, as ``fit`` would use it). The shapes of a step's
dropout calls come from one probe forward of model 0 per input shape (``random_calls``). A model
with no other random op then gets the masks it gets in any group, or alone (tested).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .._lanes import LANES
from ..attach import PenaltyPlan, activity_regularizer, constraint_sources, quiet
from ..losses import Loss
from ..selectors import select_all
from .objective import model_objective
from .masks import draw
from .protocol import Capabilities, columns


def _same_code(a: nn.Module, b: nn.Module) -> bool:
    """Whether ``a`` and ``b`` run the same code: one class, or classes a builder defines anew on
    each call (``class Net(nn.Module)`` inside the function) with the same name and ``forward``."""
    ta, tb = type(a), type(b)
    return ta is tb or (ta.__qualname__ == tb.__qualname__ and ta.__module__ == tb.__module__ and
                        getattr(ta.forward, "__code__", None) is getattr(tb.forward, "__code__", 0))


def stack_state(models: Sequence[nn.Module]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``torch.func.stack_module_state``: each parameter and buffer stacked over the models (new
    leaves; a parameter requires grad where it does in every model), for models that run the same
    code -- also models whose classes a builder defined anew on each call, which
    ``stack_module_state`` refuses as "not of the same class" (the forward pass is model 0's)."""
    first = models[0]
    for i, m in enumerate(models[1:], 1):
        pairs = list(zip(first.modules(), m.modules()))
        if len(pairs) != len(list(first.modules())) or not all(_same_code(a, b) for a, b in pairs):
            raise ValueError(f"model {i} runs other code than model 0 (its modules' classes differ): models trained "
                             "together must be built by one builder from one class")
    named = [dict(m.named_parameters()) for m in models]
    params = {n: torch.stack([d[n].detach() for d in named]).requires_grad_(all(d[n].requires_grad for d in named))
              for n in named[0]}
    bufs = [dict(m.named_buffers()) for m in models]
    buffers = {n: torch.stack([d[n] for d in bufs]) for n in bufs[0]}
    return params, buffers


def stacked_hparams(models: Sequence[nn.Module], losses: Sequence[Loss]) -> tuple[PenaltyPlan, list[str], dict[str, dict[str, torch.Tensor]]]:
    """Model 0's ``PenaltyPlan``, the penalty source names (plus the loss's own, ``Loss.source_name``)
    and every source's strengths stacked over the models: ``{source: {hparam: tensor (M,)}}``.

    Everything but the strengths must agree between the models; a difference is an error that
    names the source and the model."""
    base = models[0]
    loss0 = losses[0]
    plans = [PenaltyPlan(m) for m in models]
    names = plans[0].names
    for i, p in enumerate(plans[1:], 1):
        if p.names != names:
            raise ValueError(f"model {i} has penalty sources {p.names}, model 0 has {names}: "
                             "fit_many needs one architecture with the same attachments")
    hparams: dict[str, dict[str, torch.Tensor]] = {}
    p0 = next(base.parameters())
    per_model_regs = []
    for p in plans:
        d = {n: r for n, _, _, r in p.params}
        d.update({n: activity_regularizer(m) for n, m in p.activity})
        per_model_regs.append(d)
    for name in names:
        rs = [d[name] for d in per_model_regs]
        s0 = rs[0].structure()
        for i, r in enumerate(rs[1:], 1):
            if r.structure() != s0:
                raise ValueError(f"penalty source {name!r}: model {i} has {r!r}, model 0 has {rs[0]!r}; only "
                                 "strengths may differ between models trained together")
        hp = [r.hparams() for r in rs]
        if hp[0]:
            hparams[name] = {k: torch.tensor([h[k] for h in hp], dtype=p0.dtype, device=p0.device) for k in hp[0]}
    src = loss0.source_name  # the loss's own penalty source (``RegularizedLoss``), if any
    if src is not None:
        for i, lo in enumerate(losses):
            if lo.source_name != src or [(n, r.structure()) for n, r in lo.terms] != [
                    (n, r.structure()) for n, r in loss0.terms]:
                raise ValueError(f"model {i}'s {type(lo).__name__} differs from model 0's in more than its strength")
        hparams[src] = {"strength": torch.tensor([lo.strength for lo in losses], dtype=p0.dtype, device=p0.device)}
    names = names + ([src] if src is not None else [])
    return plans[0], names, hparams


def take_rows(data: torch.Tensor, idx: torch.Tensor, per_model: bool) -> torch.Tensor:
    """Model m's examples ``idx[m]``: from shared ``data (N, ...)`` or per-model ``data (M, N, ...)``."""
    if per_model:
        return torch.gather(data, 1, idx.reshape(idx.shape + (1,) * (data.dim() - 2)).expand(
            idx.shape + data.shape[2:])) if data.dim() > 2 else torch.gather(data, 1, idx)
    return data[idx]


def shared_constraints(models: Sequence[nn.Module]) -> list[tuple[str, Any]]:
    """``[(parameter name, constraint)]`` of model 0, checked equal in every model."""
    first = [(name, c) for name, _, _, c in constraint_sources(models[0])]
    for i, m in enumerate(models[1:], 1):
        other = [(name, c) for name, _, _, c in constraint_sources(m)]
        if other != first:
            raise ValueError(f"model {i} has constraints {other}, model 0 has {first}; models "
                             "trained together share their constraints")
    return first


def dropout_modules(model: nn.Module) -> list[nn.Dropout]:
    """The ``nn.Dropout`` modules whose masks ``VmapStack`` draws itself (p > 0; exactly that type:
    a subclass may draw differently)."""
    return [m for m in model.modules() if type(m) is nn.Dropout and m.p > 0]


@contextlib.contextmanager
def dropouts_as(drops: Sequence[nn.Dropout], apply: Any) -> Iterator[None]:
    """Within: every module of ``drops`` computes ``apply(module, x)`` instead of its forward."""
    for d in drops:
        d.forward = lambda x, _d=d: apply(_d, x)
    try:
        yield
    finally:
        for d in drops:
            del d.forward


def random_calls(model: nn.Module, x: torch.Tensor,
                 state: dict[str, torch.Tensor] | None = None) -> tuple[list[tuple[nn.Dropout, torch.Size]], bool]:
    """One training-mode forward of ``model`` on ``x`` (with ``state``'s weights, functional; no
    grad, no penalty recorded, buffers copied, the generators left as they were): the
    ``nn.Dropout`` calls it makes ``[(module, input shape)]`` in order, and whether anything else
    in it drew from the global generator (then its numbers depend on its group under ``vmap``)."""
    drops = dropout_modules(model)
    calls: list[tuple[nn.Dropout, torch.Size]] = []

    def record(d, h):
        calls.append((d, h.shape))
        return h

    if state is None:
        state = dict(model.named_parameters())
        state.update(model.named_buffers())
    state = {k: v.detach().clone() for k, v in state.items()}
    devices = [x.device] if x.device.type == "cuda" else []

    def states():
        return [torch.get_rng_state()] + [torch.cuda.get_rng_state(d) for d in devices]

    with torch.random.fork_rng(devices=devices), quiet(model, training=True), dropouts_as(drops, record):
        before = states()
        functional_call(model, state, (x,))
        other = any(not torch.equal(a, b) for a, b in zip(before, states()))
    return calls, other


class _Objective(nn.Module):
    """Wraps a model so that ``functional_call`` runs the whole objective with swapped weights."""

    def __init__(self, model: nn.Module, plan: PenaltyPlan, loss: Loss, with_accuracy: bool):
        super().__init__()
        self.model = model
        self.plan = plan
        self.loss = loss
        self.with_accuracy = with_accuracy
        self.dropouts = dropout_modules(model)

    def forward(self, xb, yb, hp_vec, hp_keys, masks=None):
        # strengths travel as one (H,) tensor per model (cheap for vmap to batch), unpacked here
        hparams: dict[str, dict[str, torch.Tensor]] = {}
        for (src, key), v in zip(hp_keys, hp_vec.unbind(0)):
            hparams.setdefault(src, {})[key] = v
        with contextlib.ExitStack() as stack:
            if masks:
                given = iter(masks)

                def apply(d, h):
                    want, mask = next(given)
                    if want is not d:
                        raise RuntimeError("the model's dropout calls differ from its probe's (a forward "
                                           "whose dropout calls depend on the data cannot be stacked)")
                    return h * mask

                stack.enter_context(dropouts_as(self.dropouts, apply))
            data, correct, pens = model_objective(self.model, self.plan, self.loss, xb, yb, self.with_accuracy,
                                                  hparams)
        stacked = torch.stack([v.reshape(()) for v in pens.values()]) if pens else data.new_zeros(0)
        if correct is None:
            correct = data.new_zeros(0)
        return data, correct, stacked


class VmapStack:
    """The stack protocol of ``reglab.training.engine`` for M models of one architecture.

    The forward pass is model 0's module run with each model's weights, so everything that is not a
    tensor -- activations, dropout rates, constraints, custom regularizers without ``hparams`` -- must
    be the same in all models; built-in regularizer strengths may differ (they are stacked), and
    differing regularizer types, arguments or constraints are reported as errors.
    """

    kind = "vmap"
    caps = Capabilities()  # autograd, penalties per step, no rows dropped

    def __init__(self, models: Sequence[nn.Module], losses: Sequence[Loss], with_accuracy: bool, x_dim: int, y_dim: int):
        self.models = list(models)
        self.n_models = len(self.models)
        base = self.models[0]
        self.base = base
        self.loss = losses[0]
        self.plan, self.names, self.hparams = stacked_hparams(self.models, losses)
        p0 = next(base.parameters())
        self.hp_keys = tuple((src, k) for src, d in self.hparams.items() for k in d)
        self.hp_vec = (torch.stack([self.hparams[s][k] for s, k in self.hp_keys], dim=1) if self.hp_keys
                       else torch.zeros(self.n_models, 0, dtype=p0.dtype, device=p0.device))
        params, buffers = stack_state(self.models)
        # the optimizer steps one (M, P) buffer whose row m holds model m's parameters, P padded to
        # whole SIMD vectors (``reglab._lanes``): torch's fused and foreach kernels compute the last
        # elements of a tensor by scalar code that rounds otherwise, and the last elements of a
        # stacked tensor are another model's for each M. The stacked parameters the forward pass
        # sees are views of it (leaves of their own); ``backward`` writes their gradients into it.
        # (frozen parameters, ``requires_grad=False``, stay outside it, as stacked tensors)
        trained = [n for n, v in params.items() if v.requires_grad]
        offsets = np.concatenate([[0], np.cumsum([params[n][0].numel() for n in trained])]).astype(int).tolist()
        width = offsets[-1] + (-offsets[-1]) % LANES
        self.flat = p0.new_zeros(self.n_models, width)
        self.flat_grad = torch.zeros_like(self.flat)
        self.param_dict = dict(params)
        self._trained: list[tuple[torch.Tensor, int, int]] = []  # (stacked view, its columns in flat)
        self._trained_names = trained
        for name, a, b in zip(trained, offsets, offsets[1:]):
            view = self.flat[:, a:b].view(params[name].shape)
            view.copy_(params[name].detach())
            self.param_dict[name] = view.requires_grad_(True)
            self._trained.append((view, a, b))
        self.buffer_dict = buffers
        self.buffers = list(buffers.values())
        self.params = list(self.param_dict.values())
        self.optimized = [self.flat]
        self.wrapper = _Objective(base, self.plan, self.loss, with_accuracy)
        self.with_accuracy = with_accuracy
        self.x_dim, self.y_dim = x_dim, y_dim
        self.constraints = shared_constraints(self.models)
        self._fns: dict[tuple, Any] = {}
        #: one random stream per model for its dropout masks (``fit_many`` sets them on CPU: each
        #: model then gets the masks it gets alone); None: ``vmap``'s draws from the global generator
        self.dropout_generators: list[torch.Generator] | None = None
        self._calls: dict[tuple, list[tuple[nn.Dropout, torch.Size]]] = {}
        self._step_dropouts: list[nn.Dropout] = []  # this step's dropout calls, in order
        self._unused: list[tuple[torch.Tensor, torch.Tensor]] = []  # parameters this step left unused

    # -- the stack protocol
    def decayed(self, patterns: list[str]) -> list[bool | torch.Tensor]:
        chosen = select_all(self.base, patterns)
        return [columns(self.flat, [(a, b) for n, (_, a, b) in zip(self._trained_names, self._trained) if n in chosen])]

    def train(self, mode: bool) -> None:
        self.base.train(mode)

    def _fn(self, in_x, in_y):
        key = (in_x, in_y)
        if key not in self._fns:
            keys = self.hp_keys

            def one(params, buffers, hp, xb, yb, noise):
                named = {f"model.{k}": v for k, v in params.items()}
                named.update({f"model.{k}": v for k, v in buffers.items()})
                masks = list(zip(self._step_dropouts, noise)) if noise else None
                return functional_call(self.wrapper, named, (xb, yb, hp, keys, masks))

            self._fns[key] = torch.vmap(one, in_dims=(0, 0, 0, in_x, in_y, 0), randomness="different")
        return self._fns[key]

    def _dropout_calls(self, xb, in_x) -> list[tuple[nn.Dropout, torch.Size]]:
        """This step's dropout calls (probed once per input shape)."""
        key = (tuple(xb.shape), in_x)
        if key not in self._calls:
            state = {k: v[0] for k, v in {**self.param_dict, **self.buffer_dict}.items()}
            self._calls[key] = random_calls(self.base, xb[0] if in_x == 0 else xb, state)[0]
        return self._calls[key]

    def _noise(self, calls) -> list[torch.Tensor]:
        """Each model's masks for ``calls``, from its own generator, stacked (``masks.draw``)."""
        if not calls:
            return []
        p0 = self.params[0]
        return draw(self.dropout_generators, [(d.p, shape) for d, shape in calls], p0.dtype, p0.device)

    def objective(self, xb, yb):
        in_x = 0 if xb.dim() == self.x_dim + 1 else None
        in_y = 0 if yb.dim() == self.y_dim + 1 else None
        calls = (self._dropout_calls(xb, in_x) if self.dropout_generators is not None and self.base.training
                 and self.wrapper.dropouts else [])
        self._step_dropouts = [d for d, _ in calls]
        data, correct, pens = self._fn(in_x, in_y)(self.param_dict, self.buffer_dict, self.hp_vec, xb, yb,
                                                   self._noise(calls))
        return (data, correct if self.with_accuracy else None, self.names,
                pens.transpose(0, 1) if pens.shape[1] else None)

    def take(self, data, idx, per_model=False):
        return take_rows(data, idx, per_model)

    def backward(self, total, active) -> None:
        views = [v for v, _, _ in self._trained]
        grads = torch.autograd.grad(total.sum(), views, allow_unused=True) if views else []
        self._unused = []
        for (p, a, b), g in zip(self._trained, grads):
            dest = self.flat_grad[:, a:b]
            if g is None:  # the forward pass did not use it: no update (as torch skips a None grad)
                dest.zero_()
                self._unused.append((p, p.detach().clone()))
            else:
                dest.view(p.shape).copy_(g)
        self.flat.grad = self.flat_grad

    def gradients(self) -> dict[str, torch.Tensor]:
        """The last ``backward``'s gradient of each trained parameter, stacked ``(M, ...)``."""
        return {n: self.flat_grad[:, a:b].view(v.shape) for n, (v, a, b) in zip(self._trained_names, self._trained)}

    @torch.no_grad()
    def after_step(self) -> None:
        for p, kept in self._unused:  # weight decay would have moved it
            p.copy_(kept)
        for name, c in self.constraints:
            p = self.param_dict[name]
            p.copy_(c.project(p, stacked=True))  # the one projection of stacked weights (``Constraint.stacked``)

    def eval_batches(self, data, batch_size):
        return data.batches(self, batch_size, None)

    def hold(self, frozen, buffers):
        return [(t, t.detach().clone()) for t in (self.buffers if buffers else self.params)]

    @torch.no_grad()
    def release(self, held, frozen) -> None:
        keep = torch.as_tensor(frozen, device=self.params[0].device)
        for t, old in held:
            t.copy_(torch.where(keep.reshape((-1,) + (1,) * (t.dim() - 1)), old, t))

    def penalty_totals(self):
        return None

    def random_of(self, m: int):
        return contextlib.nullcontext()  # not chosen for data that draws random numbers

    def keep(self, rows, snap):
        raise NotImplementedError("the vmap engine does not drop rows (caps.can_keep is False)")

    def state_dict(self, snap):
        return {k: v[0] for k, v in snap.items()}

    def snapshot(self, into=None):
        return {k: v.detach().clone() for k, v in {**self.param_dict, **self.buffer_dict}.items()}

    @torch.no_grad()
    def restore(self, snap, mask) -> None:
        m = torch.as_tensor(np.asarray(mask), device=self.params[0].device)
        for k, v in {**self.param_dict, **self.buffer_dict}.items():
            v.copy_(torch.where(m.reshape((-1,) + (1,) * (v.dim() - 1)), snap[k], v))

    @torch.no_grad()
    def merge_snapshot(self, best, mask):
        m = torch.as_tensor(np.asarray(mask), device=self.params[0].device)
        cur = {**self.param_dict, **self.buffer_dict}
        return {k: torch.where(m.reshape((-1,) + (1,) * (v.dim() - 1)), cur[k].detach(), v) for k, v in best.items()}

    def all_finite(self) -> np.ndarray:
        ok = torch.ones(self.n_models, dtype=torch.bool)
        for p in self.params:
            ok &= torch.isfinite(p.detach()).reshape(self.n_models, -1).all(1).cpu()
        return ok.numpy()

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the trained stacked weights into the M separate models."""
        for i, m in enumerate(self.models):
            state = {k: v[i] for k, v in {**self.param_dict, **self.buffer_dict}.items()}
            m.load_state_dict(state, strict=False)
