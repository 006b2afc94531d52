"""``FusedStack``: the fused engine's side of the engine protocol. Models sit in the lanes of
chunks (``(chunks, P, lanes)`` buffers of parameters and Keras Adam state); each epoch is one call
of the compiled kernel (``source``), validation another."""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ...losses import Loss
from ..dense.eligibility import Unsupported
from ..protocol import Capabilities
from ..vmap import take_rows
from .build import Args, library
from .eligibility import arch_of, slots_of
from .source import VERSION, source

__all__ = ["FusedStack", "FusedUnavailable"]


class FusedUnavailable(RuntimeError):
    """The fused kernel cannot be built or loaded here (the message says why)."""


class FusedStack:
    """M >= 1 models of one supported Dense stack (``eligibility.arch_of``) trained by the
    compiled kernel, whole epochs per call (``caps.runs_epochs``: the loop calls
    ``train_epoch``; ``objective`` serves evaluation only)."""

    kind = "fused"
    version = VERSION

    def __init__(self, models: Sequence[nn.Module], losses: Sequence[Loss], with_accuracy: bool, x_dim: int,
                 y_dim: int):
        self.models = list(models)
        self.losses = list(losses)
        M = self.n_models = len(self.models)
        try:
            self.arch = arch_of(self.models[0], losses[0], "adam")
            self.slots, self.names, self.hparams = slots_of(self.models, self.losses)
        except Unsupported as e:
            raise FusedUnavailable(f"the fused engine cannot train this model: {e}") from None
        lib, why = library(source(self.arch))
        if lib is None:
            raise FusedUnavailable(why)
        self.lib = lib
        self.with_accuracy = with_accuracy and self.arch.accuracy
        L = self.L = self.arch.lanes
        C = self.C = -(-M // L)
        self._training = self.models[0].training
        self._layers = [m for m in self.models[0].children() if isinstance(m, nn.Linear)]
        self.lanes = torch.zeros(C, self.arch.n_params, L)
        self.exp_avg = torch.zeros_like(self.lanes)
        self.exp_avg_sq = torch.zeros_like(self.lanes)
        self.steps = 0  # Adam steps taken
        self._pack()
        lam = torch.zeros(C * L, len(self.slots.params) + len(self.slots.activity))
        strengths = [(n, k) for n, _, _, _, k in self.slots.params] + [(n, k) for n, _, _, k in self.slots.activity]
        for s, (name, key) in enumerate(strengths):
            lam[:M, s] = self.hparams[name][key].float()
        self.lam = lam.reshape(C, L, -1).transpose(1, 2).contiguous()
        # each slot's strength per model (slots, M) and the penalty source it adds to
        self._lam_cols = lam[:M].T.contiguous()
        index = {n: i for i, n in enumerate(self.names)}
        self._source_of = [index[s[0]] for s in (*self.slots.params, *self.slots.activity)]
        self._totals: torch.Tensor | None = None
        self.params = self.optimized = [self.lanes]

    # -- layout
    def _pack(self) -> None:
        """Every model's parameters into its lane."""
        cols = torch.zeros(self.C * self.L, self.arch.n_params)
        for k, m in enumerate(self.models):
            cols[k] = self._flatten(m)
        self.lanes.copy_(cols.reshape(self.C, self.L, -1).transpose(1, 2))

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        """A model's parameters in the kernel's order: each Dense layer's weight, then its bias."""
        return [t for c in model.children() if isinstance(c, nn.Linear) for t in (c.weight, c.bias)]

    def _flatten(self, model: nn.Module) -> torch.Tensor:
        return torch.cat([t.detach().reshape(-1).float() for t in self._tensors(model)])

    def _columns(self, buf: torch.Tensor) -> torch.Tensor:
        """``(M, P)``: each model's parameters from a ``(chunks, P, lanes)`` buffer."""
        return buf.transpose(1, 2).reshape(self.C * self.L, -1)[:self.n_models]

    def _lane_mask(self, mask: Any) -> torch.Tensor:
        """A per-model bool ``(M,)`` as ``(chunks, 1, lanes)`` (padding lanes False)."""
        full = torch.zeros(self.C * self.L, dtype=torch.bool)
        full[:self.n_models] = torch.as_tensor(np.asarray(mask, dtype=bool))
        return full.reshape(self.C, 1, self.L)

    def _unflatten(self, row: torch.Tensor) -> list[torch.Tensor]:
        out, o = [], 0
        for layer in self._layers:
            for t in (layer.weight, layer.bias):
                out.append(row[o:o + t.numel()].reshape(t.shape))
                o += t.numel()
        return out

    # -- the kernel
    def _args(self, n: int, batch: int, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, stats: torch.Tensor,
              **ptr: Any) -> Args:
        a = Args()
        a.n_chunks, a.n_threads, a.n, a.batch = self.C, max(1, torch.get_num_threads()), n, batch
        a.params, a.m, a.v = self.lanes.data_ptr(), self.exp_avg.data_ptr(), self.exp_avg_sq.data_ptr()
        a.x, a.y, a.rows, a.lam, a.stats = x.data_ptr(), y.data_ptr(), rows.data_ptr(), self.lam.data_ptr(), stats.data_ptr()
        for k, t in ptr.items():
            setattr(a, k, t.data_ptr())
        return a

    def _data(self, x: torch.Tensor, y: torch.Tensor, per_model: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        """The data as the kernel reads it: ``(rows, n, in)``, ``(rows, n, out)`` float32 and each
        lane's row."""
        n = x.shape[1] if per_model else x.shape[0]
        R = self.n_models if per_model else 1
        w0, wl = self.arch.widths[0], self.arch.widths[-1]
        if x.numel() != R * n * w0 or y.numel() != R * n * wl:
            raise ValueError(f"the fused engine got inputs {tuple(x.shape)} and targets {tuple(y.shape)} for a model of "
                             f"{w0} inputs and {wl} outputs")
        x = x.detach().to(torch.float32).reshape(R, n, w0).contiguous()
        y = y.detach().to(torch.float32).reshape(R, n, wl).contiguous()
        rows = torch.zeros(self.C * self.L, dtype=torch.int32)
        if per_model:
            rows[:self.n_models] = torch.arange(self.n_models, dtype=torch.int32)
        return x, y, rows.reshape(self.C, self.L), n

    def train_epoch(self, data: Any, batch_size: int, perms: torch.Tensor | None, active: np.ndarray,
                    optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, int, int, bool, dict[int, tuple[int, float]]]:
        """One epoch of every active model: ``(statistics (rows, M): [data loss, correct?] summed
        over examples, examples, steps, accuracy among them, {model: (step, batch mean loss)} of
        the models whose data loss turned non-finite)``; penalty values for ``penalty_totals``."""
        x, y, rows, n = self._data(data.x, data.y, data.per_model)
        M, C, L = self.n_models, self.C, self.L
        order = torch.arange(n, dtype=torch.int32).repeat(C * L, 1)
        if perms is not None:
            order[:M] = perms.to(torch.int32)
        order = order.reshape(C, L, n).contiguous()
        act = torch.zeros(C * L, dtype=torch.int32)
        act[:M] = torch.as_tensor(np.where(np.asarray(active, dtype=bool), -1, 0), dtype=torch.int32)
        act = act.reshape(C, L).contiguous()
        stats = torch.zeros(C, self.arch.n_stats, L)
        failed = torch.full((C, L), -1, dtype=torch.int32)
        failval = torch.zeros(C, L)
        g = optimizer.param_groups[0]
        hyper = torch.tensor([float(g["lr"]), float(g["betas"][0]), float(g["betas"][1]),
                              float(getattr(optimizer, "keras_epsilon", g["eps"])), float(self.steps)], dtype=torch.float64)
        a = self._args(n, batch_size, x, y, rows, stats, order=order, active=act, failed=failed, failval=failval,
                       hyper=hyper)
        if self.lib.train_epoch(ctypes.byref(a)) != 0:
            raise ValueError(f"the fused kernel refused batch size {batch_size}")
        steps = -(-n // batch_size)
        self.steps += steps
        st = stats.transpose(1, 2).reshape(C * L, -1)[:M].T  # (NS, M)
        self._totals = self._penalties(st[2:], 1.0)
        acc = st[:2] if self.with_accuracy else st[:1]
        bad = failed.reshape(-1)[:M]
        fails = {int(i): (int(bad[i]), float(failval.reshape(-1)[i])) for i in torch.nonzero(bad >= 0).flatten()}
        if M == 1:
            self.write_back()
        return acc.clone(), n, steps, self.with_accuracy, fails

    def _penalties(self, sums: torch.Tensor, activity_scale: float) -> torch.Tensor:
        """``(K, M)`` per-source values from the slots' sums ``(slots, M)``: strength times sum
        (activity sums times ``activity_scale``)."""
        vals = self._lam_cols * sums
        if activity_scale != 1.0:
            vals[len(self.slots.params):] *= activity_scale
        # slot by slot into its source, in slot order (not index_add_: on two threads it wakes the
        # pool, 1.5 ms a call for 20 models, against 8 us on one)
        out = torch.zeros(len(self.names), self.n_models)
        for s, i in enumerate(self._source_of):
            out[i] += vals[s]
        return out

    def evaluation(self, data: Any) -> tuple[torch.Tensor, list[str], bool]:
        """Every model on all of ``data`` in one pass: ``(rows, M)`` sums ``[data loss, correct?,
        each penalty times the examples]`` (as ``evaluate_stack`` sums its batches), the penalty
        names and whether accuracy is among the rows."""
        sums, _, _, pens = self.evaluate_sums(data.x, data.y, data.per_model, per_example=False)
        rows = [sums[:1], sums[1:2]] if self.with_accuracy else [sums[:1]]
        return torch.cat(rows + [pens * data.n]), self.names, self.with_accuracy

    def evaluate_sums(self, x: torch.Tensor, y: torch.Tensor, per_model: bool, per_example: bool = True
                      ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Evaluation of every model on ``(x, y)``: ``(2, M)`` sums of the data loss and correct
        over the examples (in order), per example ``(M, n)`` data loss and correct (None unless
        ``per_example``: the kernel then writes sums only), and per source ``(K, M)`` the penalty
        as Keras evaluates it in one batch."""
        x, y, rows, n = self._data(x, y, per_model)
        C, L, M = self.C, self.L, self.n_models
        stats = torch.zeros(C, self.arch.n_stats, L)
        pe = torch.zeros(C, 2, n, L) if per_example else None
        a = self._args(n, max(1, n), x, y, rows, stats, **({"per_example": pe} if per_example else {}))
        self.lib.evaluate(ctypes.byref(a))
        st = stats.transpose(1, 2).reshape(C * L, -1)[:M].T
        per = pe.permute(1, 0, 3, 2).reshape(2, C * L, n)[:, :M] if pe is not None else (None, None)
        return st[:2].clone(), per[0], per[1], self._penalties(st[2:], 1.0 / n)

    # -- the protocol
    def objective(self, xb, yb):
        if self._training:
            raise RuntimeError("the fused engine trains whole epochs (train_epoch); objective() evaluates only")
        per_model = xb.dim() == 3
        _, data, correct, pens = self.evaluate_sums(xb, yb, per_model)
        return data, (correct if self.with_accuracy else None), self.names, pens

    def backward(self, total, active) -> None:
        raise RuntimeError("the fused engine trains whole epochs (train_epoch)")

    def eval_batches(self, data: Any, batch_size: int):
        return [(data.x, data.y, data.n)]  # element-wise penalties: one pass gives Keras's numbers

    def decayed(self, patterns: list[str]) -> list[bool | torch.Tensor]:
        return [False]  # the chooser sends weight decay elsewhere

    def train(self, mode: bool) -> None:
        self._training = mode

    def take(self, data, idx, per_model=False):
        return take_rows(data, idx, per_model)

    def after_step(self) -> None:
        pass

    def hold(self, frozen, buffers):
        return None  # the kernel does not step frozen models

    def release(self, held, frozen) -> None:
        pass

    def snapshot(self, into: torch.Tensor | None = None) -> torch.Tensor:
        if into is not None and into.shape == self.lanes.shape:
            return into.copy_(self.lanes)
        return self.lanes.clone()

    def restore(self, snap, mask) -> None:
        self.lanes.copy_(torch.where(self._lane_mask(mask), snap, self.lanes))

    def merge_snapshot(self, best, mask):
        return torch.where(self._lane_mask(mask), self.lanes, best)

    def state_dict(self, snap) -> dict[str, torch.Tensor]:
        names = [f"{n}.{a}" for n, m in self.models[0].named_children() if isinstance(m, nn.Linear) for a in ("weight", "bias")]
        return {n: t.clone() for n, t in zip(names, self._unflatten(self._columns(snap)[0]))}

    def all_finite(self) -> np.ndarray:
        return torch.isfinite(self._columns(self.lanes)).all(1).numpy()

    def penalty_totals(self) -> torch.Tensor | None:
        t, self._totals = self._totals, None
        return t

    @property
    def caps(self) -> Capabilities:
        return Capabilities(sets_grad=True, defers_penalties=True, can_keep=True, stacked_state=False, runs_epochs=True)

    @torch.no_grad()
    def keep(self, rows: Sequence[int], snap: Any = None) -> tuple[FusedStack, Any]:
        """A stack of the models at ``rows`` with their weights, Adam state and step count (a
        model's numbers do not depend on its lane or chunk)."""
        self.write_back()
        new = FusedStack([self.models[i] for i in rows], [self.losses[i] for i in rows], self.with_accuracy, 0, 0)
        new.train(self._training)
        idx = torch.as_tensor(list(rows))
        for name in ("exp_avg", "exp_avg_sq"):
            cols = torch.zeros(new.C * new.L, self.arch.n_params)
            cols[:len(rows)] = self._columns(getattr(self, name))[idx]
            getattr(new, name).copy_(cols.reshape(new.C, new.L, -1).transpose(1, 2))
        new.steps = self.steps
        kept = None
        if snap is not None:
            cols = torch.zeros(new.C * new.L, self.arch.n_params)
            cols[:len(rows)] = self._columns(snap)[idx]
            kept = cols.reshape(new.C, new.L, -1).transpose(1, 2).contiguous()
        return new, kept

    def random_of(self, m: int):
        return contextlib.nullcontext()

    @torch.no_grad()
    def write_back(self) -> None:
        """Each model's trained weights into its own parameters."""
        self.models[0].train(self._training)
        cols = self._columns(self.lanes)
        per_model = [self._tensors(m) for m in self.models]
        dst: list[torch.Tensor] = []
        src: list[torch.Tensor] = []
        o = 0
        for j, t in enumerate(per_model[0]):  # a parameter of every model at once
            dst += [ps[j] for ps in per_model]
            src += cols[:, o:o + t.numel()].reshape(-1, *t.shape).unbind(0)
            o += t.numel()
        torch._foreach_copy_(dst, src)
