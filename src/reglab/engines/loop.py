"""The per-model engine: M models, each through autograd exactly as ``reglab.fit`` trains it alone.

Every ``nn.Module`` that ``fit`` can train trains here: recurrent layers (``nn.GRU``,
``nn.LSTM``), attention with functional dropout, embeddings on integer inputs, custom
``autograd.Function`` objects, data-dependent control flow. Per step and model m (in turn, each on its
own batch):

    objective_m = mean_b loss(f_m(x_mb), y_mb) + sum_k penalty_mk      (``model_objective``)

and one backward pass of ``sum_m objective_m`` gives each model exactly the gradient it gets
alone (the models share no tensor). Random draws: each model has its own global-generator
state (``rng_states``: the state right after its build, as ``fit`` would go on from it), swapped
in around its forward pass, so every random op -- ``nn.Dropout``, ``F.dropout`` inside attention,
``RReLU`` -- draws what the model draws alone. Models that stopped (early stopping) or failed
are no longer computed, and get no gradient, so the optimizer leaves them alone.

The cost is ``fit`` called M times, with the loop's bookkeeping (validation, statistics)
shared. ``fit`` itself trains on this engine where the Dense-stack engine does not apply.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..attach import PenaltyPlan, apply_constraints, constraint_sources
from ..losses import Loss
from ..selectors import select_all
from .objective import model_objective
from .protocol import Capabilities

__all__ = ["LoopEngine", "RngState", "seed_global"]

#: a model's random state: the CPU generator's and each CUDA device's it uses
RngState = tuple[torch.Tensor, tuple[torch.Tensor, ...]]


def rng_state(devices: Sequence[torch.device]) -> RngState:
    """The global generators' states now (CPU, and those of ``devices``' CUDA devices)."""
    return torch.get_rng_state(), tuple(torch.cuda.get_rng_state(d) for d in devices)


def seed_global(seed: int) -> None:
    """``torch.manual_seed(seed)``: the global generators' states from ``seed``. Where no
    accelerator can run, only the CPU generator's, which is all ``torch.manual_seed`` sets there
    too -- but it also queues the seeding of a CUDA that cannot start, with a formatted stack
    trace (0.1-2 ms a call, by the stack's depth): a cost per model ``fit_many`` builds."""
    if torch.cuda.is_available() or torch.accelerator.is_available():
        torch.manual_seed(seed)
    else:
        torch.default_generator.manual_seed(int(seed))


def _set_rng_state(state: RngState, devices: Sequence[torch.device]) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    for d, s in zip(devices, cuda):
        torch.cuda.set_rng_state(s, d)


class LoopEngine:
    """The engine protocol (``reglab.engines.protocol``) for M models of any architecture."""

    kind = "loop"
    caps = Capabilities(sets_grad=False, defers_penalties=False, can_keep=False, stacked_state=False)

    def __init__(self, models: Sequence[nn.Module], losses: Sequence[Loss], with_accuracy: bool, x_dim: int,
                 rng_states: Sequence[RngState] | None = None):
        """``x_dim``: the dimensions of a batch of inputs of one model (examples axis included),
        telling shared ``(B, ...)`` batches from per-model ``(M, B, ...)`` ones. ``rng_states``:
        each model's random state (None: all draw from the global generators, as ``fit``)."""
        self.models = list(models)
        self.losses = list(losses)
        self.n_models = len(self.models)
        self.with_accuracy = with_accuracy
        self.x_dim = x_dim
        self.plans = [PenaltyPlan(m) for m in self.models]
        self._params = [[p for p in m.parameters() if p.requires_grad] for m in self.models]
        self.params = [p for ps in self._params for p in ps]
        self.optimized = self.params
        self.rng = list(rng_states) if rng_states is not None else None
        self._devices = [d for d in {p.device for p in self.params} if d.type == "cuda"]
        self._frozen = np.zeros(self.n_models, dtype=bool)
        self._constrained = any(True for m in self.models for _ in constraint_sources(m))

    def decayed(self, patterns: list[str]) -> list[bool | torch.Tensor]:
        out: list[bool | torch.Tensor] = []
        for m in self.models:
            chosen = select_all(m, patterns)
            out += [n in chosen for n, p in m.named_parameters() if p.requires_grad]
        return out

    # -- random state per model
    @contextlib.contextmanager
    def random_of(self, m: int) -> Iterator[None]:
        """Within: the global generators hold model m's state (kept for its next draws; the
        state before is back after). Without ``rng_states``, the global generators as they are."""
        if self.rng is None:
            yield
            return
        outer = rng_state(self._devices)
        _set_rng_state(self.rng[m], self._devices)
        try:
            yield
        finally:
            self.rng[m] = rng_state(self._devices)
            _set_rng_state(outer, self._devices)

    # -- the protocol
    def train(self, mode: bool) -> None:
        for m in self.models:
            m.train(mode)

    def objective(self, xb, yb):
        per_x = torch.is_tensor(xb) and xb.dim() == self.x_dim + 1
        rows: list[Any] = [None] * self.n_models
        for m in np.flatnonzero(~self._frozen):
            with self.random_of(m):
                rows[m] = model_objective(self.models[m], self.plans[m], self.losses[m], xb[m] if per_x else xb,
                                          yb[m] if per_x else yb, self.with_accuracy)
        done = next(r for r in rows if r is not None)
        names = list(done[2])
        for m, r in enumerate(rows):
            if r is not None and list(r[2]) != names:
                raise ValueError(f"model {m} has penalty sources {list(r[2])}, model 0 has {names}: models "
                                 "trained together need the same attachments")
        zero = done[0].detach().new_zeros(done[0].shape)
        data = torch.stack([r[0] if r is not None else zero for r in rows])
        correct = None
        if done[1] is not None:
            correct = torch.stack([r[1] if r is not None else zero for r in rows])
        pens = None
        if names:
            nil = done[0].new_zeros(())
            pens = torch.stack([torch.stack([r[2][n].reshape(()) if r is not None else nil for n in names])
                                for r in rows], 1)
        return data, correct, names, pens

    def take(self, data, idx, per_model=False):
        if per_model:
            return torch.stack([data[m][idx[m].to(data.device)] for m in range(len(idx))])
        return data[idx.to(data.device)]

    def eval_batches(self, data, batch_size):
        return data.batches(self, batch_size, None)

    def backward(self, total, active) -> None:
        if total.requires_grad:
            total.sum().backward()
        if active is not None:  # no step for the others: the optimizer skips a parameter without grad
            for m in np.flatnonzero(~active):
                for p in self._params[m]:
                    p.grad = None

    def after_step(self) -> None:
        if self._constrained:
            for m in np.flatnonzero(~self._frozen):
                apply_constraints(self.models[m])

    def hold(self, frozen, buffers):
        self._frozen = np.array(frozen, dtype=bool)  # not computed, not stepped, from now on
        return None

    def release(self, held, frozen) -> None:
        pass

    def snapshot(self, into=None):
        return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.models]

    def merge_snapshot(self, best, mask):
        return [self.snapshot_of(m) if mask[m] else best[m] for m in range(self.n_models)]

    def snapshot_of(self, m: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.models[m].state_dict().items()}

    def restore(self, snap, mask) -> None:
        for m in np.flatnonzero(mask):
            self.models[m].load_state_dict(snap[m])

    def state_dict(self, snap):
        return snap[0]

    def all_finite(self) -> np.ndarray:
        return np.array([all(bool(torch.isfinite(p).all()) for p in m.parameters()) for m in self.models])

    def penalty_totals(self):
        return None

    def keep(self, rows, snap):
        raise NotImplementedError("the loop engine does not drop rows (caps.can_keep is False): it skips frozen models")

    def write_back(self) -> None:
        pass  # the models trained in their own tensors
