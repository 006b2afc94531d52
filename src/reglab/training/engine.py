"""The training loop, written once for M >= 1 models trained in lock-step.

An *engine* (``reglab.engines``: the Dense-stack engine, vmap, or the per-model loop, picked by
``choose_engine``) holds the models and speaks one protocol (``reglab.engines.protocol``); the
loop knows nothing of which engine it drives. It asks for per-model objectives, steps the
optimizer, lets the engine project its constraints and keeps, per model, the epoch statistics
that become its ``History``. Everything per model is an array of shape ``(M,)``: finished
(early-stopped) and failed (diverged) models are frozen while the others go on; an engine that
can (``caps.can_keep``) drops their rows once a quarter of its models have stopped, so a 20-seed
early-stopping group costs about the epochs its models run, not 20 times the longest (measured:
models stopping at epochs 26-200 ran 1178 of 4000 model-epochs; the group trained in 2.3-2.5 s,
4.4-5.6 s before).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..attach import engine_steps
from ..engines.protocol import Engine
from ..optimizers import unhooked_step
from .callbacks import Callback, EarlyStopping
from .denormals import FlushDenormals, keep_flushing_denormals
from .evaluation import evaluate_stack, with_totals
from .history import History
from .interrupt import DeferredInterrupt
from .logbook import Logbook
from .shuffle import Shuffler
from .sources import ArrayData, LoaderData

__all__ = ["run", "evaluate_stack", "LoopResult", "TrainingDiverged", "ArrayData", "LoaderData", "Stack",
           "keep_flushing_denormals"]

#: the engine protocol (``reglab.engines.protocol``), by its old name
Stack = Engine
#: by its old name
_FlushDenormals = FlushDenormals


class TrainingDiverged(RuntimeError):
    """The loss or a penalty became NaN/inf. ``history`` holds the completed epochs; ``state_dict``
    the last finite weights (also loaded into the model); ``epoch``/``batch`` say where (0-based;
    for a penalty of a stack that sums its penalties over the epoch, the epoch's last batch)."""

    def __init__(self, message: str, history: History, state_dict: dict[str, torch.Tensor], epoch: int, batch: int):
        super().__init__(message)
        self.history = history
        self.state_dict = state_dict
        self.epoch = epoch
        self.batch = batch


@dataclass
class LoopResult:
    histories: list[History]
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False
    stack: Any = None  # the stack that trained last (``Stack.keep`` may have replaced the one given)


def run(
    stack: Stack,
    optimizer: torch.optim.Optimizer,
    train: ArrayData | LoaderData,
    val: ArrayData | LoaderData | None,
    *,
    epochs: int,
    batch_size: int,
    shuffle: bool,
    seeds: Sequence[int | None],
    callbacks: Sequence[Callback] = (),
    early_stopping: EarlyStopping | None = None,
    progress: bool = False,
    raise_on_divergence: bool = False,
    desc: str = "fit",
) -> LoopResult:
    """Train ``stack`` for ``epochs``; one ``History`` per model. See the module docstring."""
    loop = _Loop(stack, optimizer, train, val, epochs=epochs, batch_size=batch_size, shuffle=shuffle, seeds=seeds,
                 callbacks=callbacks, early_stopping=early_stopping, progress=progress,
                 raise_on_divergence=raise_on_divergence, desc=desc)
    with DeferredInterrupt() as loop.intr, FlushDenormals(), engine_steps(optimizer):
        for epoch in loop.bar:
            if not loop.epoch(epoch):
                break
    return loop.finish()


class _Loop:
    """The state of one run of the loop (``run``), stepped an epoch at a time. Per model row:
    ``shuffler`` (each row's epoch orders), ``active``, ``ids`` (the model of each row: rows go once their models
    stop, ``compact``); ``book``: every model's logs, by model id (``Logbook``)."""

    def __init__(self, stack, optimizer, train, val, *, epochs, batch_size, shuffle, seeds, callbacks, early_stopping,
                 progress, raise_on_divergence, desc):
        from tqdm.auto import tqdm

        self.stack, self.optimizer, self.train, self.val = stack, optimizer, train, val
        self.epochs, self.batch_size, self.shuffle = epochs, batch_size, shuffle
        self.callbacks, self.es, self.raise_on_divergence = list(callbacks), early_stopping, raise_on_divergence
        self.M = M = stack.n_models
        self.device = stack.params[0].device if stack.params else None
        gens = []
        for s in seeds:
            g = torch.Generator()
            g.manual_seed(int(s) if s is not None else int(torch.randint(0, 2**62, ()).item()))
            gens.append(g)
        self.shuffler = Shuffler(gens)
        self.book = Logbook(M)
        self.ids = np.arange(M)
        self.active = np.ones(M, dtype=bool)
        self.failed: dict[int, dict[str, Any]] = {}
        self.frozen_any = False
        if early_stopping is not None:
            early_stopping.reset(M)
        self.best = stack.snapshot() if early_stopping is not None and early_stopping.restore_best_weights else None
        for cb in self.callbacks:
            cb.on_train_begin({})
        self.bar = tqdm(range(epochs), desc=desc, disable=not progress or not sys.stderr.isatty(), leave=False)
        self.interrupted = False
        caps = stack.caps
        self.sets_grad, self.defers, self.whole_epochs = caps.sets_grad, caps.defers_penalties, caps.runs_epochs
        # a stack that can drop rows does so once a quarter of its models (at least one) have stopped
        # or failed, so they cost nothing more (``Stack.keep``); not with callbacks, which see row 0
        self.can_compact = caps.can_keep and not self.callbacks and M > 1
        self.intr: DeferredInterrupt
        self.names: list[str] = []
        self.epoch_start: Any = None
        # models failed in a step whose epoch-start weights go back after it (``fail``)
        self.restore_after_step: np.ndarray | None = None

    # -- an epoch
    def epoch(self, epoch: int) -> bool:
        """Train and log one epoch; whether the loop goes on."""
        for cb in self.callbacks:
            cb.on_epoch_begin(epoch, {})
        # the weights to fall back on if a model's weights themselves turn non-finite
        self.epoch_start = self.stack.snapshot(into=self.epoch_start)
        self.stack.train(True)
        acc, seen, b, with_acc = self.batches(epoch)
        if self.defers:
            # the stack summed its penalty values (times the batch size) over the epoch's steps;
            # a penalty that alone became non-finite is caught here, at the epoch's end
            pt = self.stack.penalty_totals()
            if pt is not None and acc is not None:
                acc = torch.cat((acc, pt))
                self.check_finite(pt, epoch, b, (acc[0] + pt.sum(0)) / seen, pt,
                                  f"in epoch {epoch} (0-based; penalties summed over its batches 0-{b})")
        if acc is None or not self.active.any() and not self.intr.flag:
            return False
        if self.intr.flag and seen < self.train.n:
            self.interrupted = True
            return False
        keys, table = self.logs(acc, seen, with_acc)
        self.book.add(epoch, keys, table[:, self.active], self.ids[self.active])
        first = dict(zip(keys, table[:, 0].tolist())) if self.callbacks or self.M == 1 else {}
        for cb in self.callbacks:
            cb.on_epoch_end(epoch, first)
        if self.M == 1 and not math.isnan(first.get("loss", math.nan)):
            self.bar.set_postfix(loss=f"{first['loss']:.4f}",
                                 **({"val_loss": f"{first['val_loss']:.4f}"} if "val_loss" in first else {}))
        if self.es is not None:
            self.early_stopping(epoch, keys, table)
        if any(cb.stop_training for cb in self.callbacks) or not self.active.any():
            return False
        if self.intr.flag:
            self.interrupted = True
            return False
        if self.can_compact and epoch < self.epochs - 1 and (~self.active).sum() >= max(1, len(self.ids) // 4):
            self.compact()
        return True

    def batches(self, epoch: int) -> tuple[torch.Tensor | None, int, int, bool]:
        """The epoch's steps: ``(per-model statistics summed over batches times their sizes,
        examples seen, the last batch's index, whether accuracy is among them)``."""
        train = self.train
        perms = self.shuffler.draw(train.n).to(self.device) if self.shuffle and isinstance(train, ArrayData) else None
        if self.whole_epochs:
            return self.whole_epoch(epoch, perms)
        acc = None
        seen = 0
        b = 0
        with_acc = False
        self.names = []
        with torch.no_grad() if self.sets_grad else contextlib.nullcontext():  # no graph where the stack sets grads
            for b, (xb, yb, bs) in enumerate(train.batches(self.stack, self.batch_size, perms)):
                row, with_acc = self.step(xb, yb, epoch, b)
                if row is None:
                    break
                acc = row * bs if acc is None else torch.add(acc, row, alpha=bs)
                seen += bs
                if self.intr.flag:
                    break
        return acc, seen, b, with_acc

    def whole_epoch(self, epoch: int, perms: torch.Tensor | None) -> tuple[torch.Tensor | None, int, int, bool]:
        """The epoch's steps in one call of an engine that runs whole epochs (``caps.runs_epochs``);
        models whose data loss turned non-finite fail at their step, as ``step`` finds them."""
        acc, seen, steps, with_acc, fails = self.stack.train_epoch(self.train, self.batch_size, perms, self.active,
                                                                    self.optimizer)
        self.names = list(self.stack.names)
        if fails:
            newly = np.zeros(len(self.active), dtype=bool)
            newly[list(fails)] = True
            newly &= self.active
            first = min(fails, key=lambda i: fails[i][0])
            if self.raise_on_divergence and newly.any():
                b, value = fails[first]
                self.diverged("the data loss", value, f"at epoch {epoch} (0-based), batch {b}", epoch, b)
            self.fail(newly, epoch, {i: fails[i][0] for i in fails}, {i: fails[i][1] for i in fails})
            if not self.active.any():
                return None, seen, steps - 1, with_acc
        return acc, seen, steps - 1, with_acc

    def step(self, xb: Any, yb: Any, epoch: int, b: int) -> tuple[torch.Tensor | None, bool]:
        """One optimizer step on a batch: the models' ``[data loss mean, accuracy?, each
        penalty]`` rows (None where no model is left active) and whether accuracy is among them."""
        stack, active = self.stack, self.active
        # the buffers a stopped or failed model keeps (the forward pass updates them)
        kept = stack.hold(~active, buffers=True) if self.frozen_any else None
        data, correct, self.names, pens = stack.objective(xb, yb)
        # per model, this batch: [data loss mean, accuracy?, each penalty] -- the epoch's loss
        # and penalty totals are sums of these rows' batch-weighted means (linear)
        # (means as sum / n: the same bits as .mean, fewer kernels)
        means = (torch.stack((data, correct)) if correct is not None else data[None]).sum(2).div_(data.shape[1])
        data_mean = means[0]
        row = torch.cat((means, pens)) if pens is not None else means
        total = None
        # one reduction tells "all finite" (a finite sum that overflows only takes the exact path)
        if not math.isfinite(row.sum().item()):
            total = data_mean + pens.sum(0) if pens is not None else data_mean
            self.restore_after_step = np.zeros(len(self.active), dtype=bool)
            self.check_finite(row, epoch, b, total, pens)
            active = self.active
            if not active.any():
                self.restore_failed()
                return None, correct is not None
        before = stack.hold(~active, buffers=False) if self.frozen_any else None  # stopped models keep their weights
        if not self.sets_grad:
            # autograd stacks differentiate the objective summed over models (frozen ones: 0)
            if total is None:
                total = data_mean + pens.sum(0) if pens is not None else data_mean
            if self.frozen_any:
                total = torch.where(torch.as_tensor(active, device=total.device), total, torch.zeros_like(total))
            self.optimizer.zero_grad(set_to_none=True)
        stack.backward(total, active if self.frozen_any else None)
        unhooked_step(self.optimizer)
        stack.after_step()
        if self.frozen_any:
            stack.release(before, ~active)
            if kept is not None:
                stack.release(kept, ~active)
        self.restore_failed()
        return (row if self.sets_grad else row.detach()), correct is not None

    def restore_failed(self) -> None:
        """After a step: the epoch-start weights of the models that failed in it with weights not
        finite (not during it: the step's graph holds their weights, which must not change in
        place before its backward pass)."""
        broken, self.restore_after_step = self.restore_after_step, None
        if broken is not None and broken.any():
            self.stack.restore(self.epoch_start, broken)

    def logs(self, acc: torch.Tensor, seen: int, with_acc: bool) -> tuple[list[str], np.ndarray]:
        """The epoch's logs: their keys (training statistics, then validation's) and a float64
        ``(keys, rows)`` table, a column per model row."""
        tr = (acc / seen).cpu().numpy().astype(np.float64)
        tr = with_totals(tr, with_acc)
        keys = ["loss", "data_loss", "penalty"] + (["accuracy"] if with_acc else []) + [
            f"penalty/{n}" for n in self.names]
        if self.val is not None:
            vl = evaluate_stack(self.stack, self.val, self.batch_size)
            if vl:
                keys += list(vl)
                tr = np.concatenate([tr, np.stack(list(vl.values()))])
        return keys, tr

    def early_stopping(self, epoch: int, keys: list[str], table: np.ndarray) -> None:
        es, M, ids = self.es, self.M, self.ids
        if es.monitor not in keys:
            raise ValueError(f"EarlyStopping monitors {es.monitor!r}, which is not logged; logged: {sorted(keys)}")
        cur = table[keys.index(es.monitor)]
        # the early stopper keeps every model's state, by model (rows may have gone)
        cur_all, active_all = np.full(M, math.nan), np.zeros(M, dtype=bool)
        cur_all[ids], active_all[ids] = cur, self.active
        snap, stop = (a[ids] for a in es.update(epoch, cur_all, active_all))
        if self.best is not None and snap.any():
            self.best = self.stack.merge_snapshot(self.best, snap)
        if stop.any():
            self.active &= ~stop
            self.frozen_any = True

    # -- models that stop or fail
    def check_finite(self, table: torch.Tensor, epoch: int, b: int, total: torch.Tensor, pens,
                     where: str | None = None) -> None:
        """Active models with a non-finite entry in ``table`` (rows of statistics, a column per
        model) diverged at batch ``b`` (or, ``where`` says, by then): raise
        (``raise_on_divergence``) or mark them failed, with their epoch-start weights where their
        own are not finite."""
        ok = torch.isfinite(table).all(0).cpu().numpy()
        newly = self.active & ~ok
        if not newly.any():
            return
        if self.raise_on_divergence:
            bad = [n for n, v in zip(self.names, pens if pens is not None else []) if not bool(torch.isfinite(v).all())]
            what = f"penalty source(s) {bad}" if bad else "the data loss"
            self.diverged(what, float(total[0]), where or f"at epoch {epoch} (0-based), batch {b}", epoch, b)
        rows = np.flatnonzero(newly)
        self.fail(newly, epoch, {i: b for i in rows}, {i: float(total[i].detach()) for i in rows})

    def diverged(self, what: str, value: float, where: str, epoch: int, b: int) -> None:
        """Raise ``TrainingDiverged`` for model 0 (``raise_on_divergence``), its last finite
        weights in the model and on the exception."""
        stack = self.stack
        state = stack.snapshot()
        if not stack.all_finite().all():
            state = self.epoch_start
            stack.restore(state, np.ones(stack.n_models, dtype=bool))
        raise TrainingDiverged(
            f"training diverged {where}: {what} became {value}; the history of the {epoch} completed epoch(s) and "
            "the last finite weights are kept on this exception (.history, .state_dict) and in the model",
            self.book.history(int(self.ids[0])), stack.state_dict(state), epoch, b)

    def fail(self, newly: np.ndarray, epoch: int, batch: dict[int, int], value: dict[int, float]) -> None:
        """Mark the rows ``newly`` failed (at ``batch[row]`` with ``value[row]``) and frozen, with
        their epoch-start weights where their own are not finite."""
        stack = self.stack
        for i in np.flatnonzero(newly):
            self.failed[int(self.ids[i])] = {"epoch": epoch, "batch": batch[i], "value": value[i]}
        broken = newly & ~stack.all_finite()
        if self.restore_after_step is not None:  # in a step: after it (``restore_failed``)
            self.restore_after_step |= broken
        elif broken.any():  # keep the epoch-start weights of models whose weights are not finite
            stack.restore(self.epoch_start, broken)
        self.active = self.active & ~newly
        self.frozen_any = True

    def compact(self) -> None:
        """Go on with the active models' rows only: the stack's (``keep``), the optimizer state's,
        the data's and the shuffling generators'. Stopped models keep their weights, their best
        ones where those are restored (as at the end)."""
        active, ids, optimizer = self.active, self.ids, self.optimizer
        rows = np.flatnonzero(active)
        if self.best is not None:  # kept only with restore_best_weights
            self.stack.restore(self.best, ~active & self.es.has_best_weights[ids])
        state = optimizer.state_dict()
        n, take = len(ids), torch.as_tensor(rows)
        for per_param in state["state"].values():
            for k, v in per_param.items():
                if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n:
                    per_param[k] = v.index_select(0, take.to(v.device))
        self.stack, self.best = self.stack.keep(rows.tolist(), self.best)
        optimizer.load_state_dict(state)
        self.shuffler.take(rows)
        self.train, self.val = (d.rows(take) if d is not None else d for d in (self.train, self.val))
        self.ids, self.active, self.frozen_any = ids[rows], active[rows], False

    def finish(self) -> LoopResult:
        es = self.es
        if self.best is not None and es is not None:
            self.stack.restore(self.best, es.has_best_weights[self.ids])
        version = getattr(self.stack, "version", None)  # an engine with a versioned kernel (the fused one)
        every = self.book.histories()
        for i, h in enumerate(every):
            if version is not None:
                h.meta["engine"] = f"{self.stack.kind}/{version}"
            if es is not None:
                h.meta["stopped_epoch"] = int(es.stopped_epoch[i])
                h.meta["best_epoch"] = int(es.best_epoch[i])
            if i in self.failed:
                h.meta["failed"] = self.failed[i]
            if self.interrupted:
                h.meta["interrupted"] = True
                h.meta["interrupted_epoch"] = len(h)
        for cb in self.callbacks:
            cb.on_train_end({})
        self.bar.close()
        return LoopResult(every, self.failed, self.interrupted, self.stack)
