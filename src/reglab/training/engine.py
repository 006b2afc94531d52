"""The training loop, written once for M >= 1 models trained in lock-step.

A *stack* holds the models: ``DenseStack`` (``reglab.vectorized.dense``: M >= 1 plain
``Sequential`` Dense stacks with a written-out backward pass; ``fit`` and ``fit_many`` use it
whenever the model qualifies), ``SingleStack`` (any one ``nn.Module`` through autograd, used by
``fit`` otherwise) or ``VmapStack`` (``reglab.vectorized.stack``: M models of any architecture
under ``torch.vmap``, used by ``fit_many`` otherwise).
The loop asks the stack for per-model objectives, steps the optimizer, applies constraints and
keeps, per model, the epoch statistics that become its ``History``. Everything per model is an
array of shape ``(M,)``: finished (early-stopped) and failed (diverged) models are frozen while
the others go on; a stack that can (``can_keep``) drops their rows once a quarter of its models
have stopped, so a 20-seed early-stopping group costs about the epochs its models run, not 20
times the longest (measured: models stopping at epochs 26-200 ran 1178 of 4000 model-epochs; the
group trained in 2.3-2.5 s, 4.4-5.6 s before).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..attach import engine_steps
from ..engines.protocol import Engine
from ..losses import Loss
from ..optimizers import unhooked_step
from .callbacks import Callback, EarlyStopping
from .data import as_input
from .history import History


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


#: the engine protocol (``reglab.engines.protocol``), by its old name
Stack = Engine


# ----------------------------------------------------------------------------- data


@dataclass
class ArrayData:
    """x, y as tensors: shared ``(N, ...)`` or one per model ``(M, N, ...)`` (``per_model=True``)."""

    x: torch.Tensor
    y: torch.Tensor
    per_model: bool = False

    @property
    def n(self) -> int:
        return self.x.shape[1] if self.per_model else self.x.shape[0]

    def rows(self, take: torch.Tensor) -> ArrayData:
        """The data of the models ``take`` (per-model data; shared data serves any models)."""
        if not self.per_model:
            return self
        return ArrayData(self.x.index_select(0, take.to(self.x.device)), self.y.index_select(0, take.to(self.y.device)),
                         per_model=True)

    def example(self) -> torch.Tensor:
        """One input, with its batch axis (what ``reglab.threads.step_work`` runs)."""
        return self.x[0, :1] if self.per_model else self.x[:1]

    def probe_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Model 0's first two examples ``(x, y)`` (what ``choose_engine`` probes)."""
        return (self.x[0, :2], self.y[0, :2]) if self.per_model else (self.x[:2], self.y[:2])

    def dims(self) -> tuple[int, int]:
        """The dimensions of one model's batch of inputs and of targets."""
        per = 1 if self.per_model else 0
        return self.x.dim() - per, self.y.dim() - per

    def batches(self, stack: Stack, batch_size: int, perms: torch.Tensor | None) -> Iterator[tuple[Any, Any, int]]:
        n = self.n
        x, y, per = self.x, self.y, self.per_model
        if perms is not None and perms.numel() * (x[0].numel() if not per else x[0, 0].numel()) <= 2**24:
            # the epoch's order, gathered once; batches are then slices. A stack gets one row per
            # model back (M, N, ...), a single model (N, ...): one axis more than shared data.
            x, y = stack.take(x, perms, per), stack.take(y, perms, per)
            shared_dims = self.x.dim() - (1 if self.per_model else 0)
            per, perms = x.dim() > shared_dims, None
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            if perms is None:
                if per:
                    yield x[:, start:stop], y[:, start:stop], stop - start
                else:
                    yield x[start:stop], y[start:stop], stop - start
            else:
                idx = perms[:, start:stop]
                yield stack.take(x, idx, per), stack.take(y, idx, per), stop - start


@dataclass
class LoaderData:
    """A ``torch.utils.data.DataLoader`` yielding ``(x, y)`` batches, shared by every model; with
    ``per_model``, one loader per model (``loaders``; a ``fit_many`` over a ``Dataset``: each
    model shuffles as ``fit`` alone), their batches stacked ``(M, B, ...)``."""

    loader: Any
    dtype: torch.dtype
    device: torch.device | None
    #: labels of every batch must lie in 0..classes-1 (sparse cross-entropy); None: not checked
    classes: int | None = None
    name: str = "data"
    #: integer inputs become floats (a model that cannot take integers: ``fit.probe_inputs``)
    ints_as_float: bool = False
    #: one loader per model, or None (``loader`` serves every model)
    loaders: list[Any] | None = None

    @property
    def n(self) -> float:
        """Examples per epoch (inf for a dataset without a length)."""
        try:
            return len(self.loader.dataset)
        except TypeError:
            return math.inf

    def _input(self, xb: Any) -> torch.Tensor:
        xb = torch.as_tensor(xb).to(self.device)
        return xb.to(self.dtype) if self.ints_as_float else as_input(xb, self.dtype)

    def probe_batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The dataset's first two examples ``(x, y)`` as a batch (what ``choose_engine``
        probes); None for an iterable dataset (drawing would advance it) or an unusual one."""
        from torch.utils.data import IterableDataset

        ds = self.loader.dataset
        if isinstance(ds, IterableDataset):
            return None
        try:
            batch = self.loader.collate_fn([ds[i] for i in range(min(2, len(ds)))])
            xb, yb = self._input(batch[0]), torch.as_tensor(batch[1]).to(self.device)
        except Exception:  # noqa: BLE001 -- an unusual dataset: trained, not probed
            return None
        return xb, (yb.to(self.dtype) if yb.is_floating_point() else yb)

    def dims(self) -> tuple[int, int]:
        probe = self.probe_batch()
        return (probe[0].dim(), probe[1].dim()) if probe is not None else (-1, -1)

    def rows(self, take: torch.Tensor) -> LoaderData:
        if self.loaders is None:
            return self
        keep = take.tolist()
        return LoaderData(self.loader, self.dtype, self.device, self.classes, self.name, self.ints_as_float,
                          [self.loaders[i] for i in keep])

    def _check_labels(self, yb: torch.Tensor, b: int) -> None:
        k = self.classes
        bad = (yb < 0) | (yb >= k) | (yb != yb.round())
        if bool(bad.any()):
            i = int(bad.reshape(-1).nonzero()[0, 0])
            raise ValueError(f"{self.name}: batch {b}, example {i}: label {yb.reshape(-1)[i].item():g}; a label must be "
                             f"an integer from 0 to {k - 1} for a model with {k} outputs "
                             f"({int(bad.sum())} of {yb.numel()} labels in this batch are not)")

    def example(self) -> torch.Tensor | None:
        """One input of a map-style dataset, with its batch axis; None for an iterable one (not
        drawn: that would advance its iterator)."""
        from torch.utils.data import IterableDataset

        ds = self.loader.dataset
        if isinstance(ds, IterableDataset):
            return None
        try:
            x0 = ds[0][0]
        except Exception:  # an unusual dataset: the thread rule treats its work as unknown
            return None
        return self._input(x0).unsqueeze(0)

    def batches(self, stack: Stack, batch_size: int, perms: Any) -> Iterator[tuple[Any, Any, int]]:
        for b, batch in enumerate(self.loader if self.loaders is None else _all_together(self.loaders)):
            if self.loaders is None:
                xb, yb = self._input(batch[0]), torch.as_tensor(batch[1]).to(self.device)
            else:  # one batch per model, stacked
                xb = torch.stack([self._input(one[0]) for one in batch])
                yb = torch.stack([torch.as_tensor(one[1]) for one in batch]).to(self.device)
            if self.classes is not None:
                self._check_labels(yb, b)
            if yb.is_floating_point():
                yb = yb.to(self.dtype)
            yield xb, yb, xb.shape[1 if self.loaders is not None else 0]


def _all_together(loaders: list[Any]) -> Iterator[list[Any]]:
    """The loaders' batches side by side, each loader run to its end (``zip`` stops at the first
    end, before a shuffling sampler of the others draws what it draws at its own end: a model's
    next epoch would then be shuffled otherwise than ``fit`` shuffles it)."""
    its = [iter(loader) for loader in loaders]
    end = object()
    while True:
        batch = [next(it, end) for it in its]
        if all(b is end for b in batch):
            return
        if any(b is end for b in batch):
            raise ValueError("the models' loaders gave different numbers of batches")
        yield batch


# ----------------------------------------------------------------------------- the loop


class _DeferredInterrupt:
    """Turn Ctrl-C into a flag checked between steps, so weights stay those of a completed step."""

    def __init__(self) -> None:
        self.flag = False
        self._old: Any = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        self.flag = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def _in_openmp_threads(fn: Any) -> None:
    """Run ``fn()`` once in each thread of torch's OpenMP pool (the calling thread included).

    ``torch.set_flush_denormal`` sets the floating-point mode of the calling thread only; worker
    threads copy it when they are created, so a pool that already exists keeps denormals. With
    2 threads that made 200 epochs of 256 32x5 MLPs 2.3x slower (0.143 vs 0.062 s/model).
    Uses libgomp's ``GOMP_parallel`` (torch's CPU builds on Linux); elsewhere it does nothing.
    """
    n = torch.get_num_threads()
    if n <= 1:
        return
    try:
        import ctypes

        lib = ctypes.CDLL("libgomp.so.1")  # the copy torch loaded (same soname)
        callback_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
        lib.GOMP_parallel.argtypes = [callback_t, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        lib.GOMP_parallel.restype = None
        lib.GOMP_parallel(callback_t(lambda _: fn()), None, n, 0)
    except (OSError, AttributeError):
        pass


def _set_flush_denormal(on: bool) -> bool:
    ok = torch.set_flush_denormal(on)
    if ok:
        _in_openmp_threads(lambda: torch.set_flush_denormal(on))
    return ok


class _FlushDenormals:
    """Flush float denormals to zero while training (TensorFlow does the same on CPU), in every
    thread of torch's pool.

    Weights and activations driven toward 0 by L1/L2 penalties become denormal floats, and CPU
    arithmetic on denormals is up to 100x slower (measured here: a 200-epoch regularization path of 80
    models took 25 s instead of 14 s). Numbers below 1.2e-38 (float32) change, nothing else.
    torch's default (off) is restored on exit; a process that turned it on itself keeps it on.
    """

    def __enter__(self):
        self._set = _set_flush_denormal(True)
        return self

    def __exit__(self, *exc):
        if self._set and not _GLOBAL_FLUSH:
            _set_flush_denormal(False)


_GLOBAL_FLUSH = False


def keep_flushing_denormals() -> None:
    """Turn flush-to-zero on for the whole process (the CLI does this)."""
    global _GLOBAL_FLUSH
    _GLOBAL_FLUSH = _set_flush_denormal(True)


@dataclass
class LoopResult:
    histories: list[History]
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False
    stack: Any = None  # the stack that trained last (``Stack.keep`` may have replaced the one given)


def _permutations(gens: list[torch.Generator], n: int, device) -> torch.Tensor:
    return torch.stack([torch.randperm(n, generator=g) for g in gens]).to(device)


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
    from tqdm.auto import tqdm

    M = stack.n_models
    device = stack.params[0].device if stack.params else None
    gens = []
    for s in seeds:
        g = torch.Generator()
        g.manual_seed(int(s) if s is not None else int(torch.randint(0, 2**62, ()).item()))
        gens.append(g)
    histories = [History() for _ in range(M)]
    every = histories  # by model; ``histories``, ``gens``, ``active`` follow the stack's rows
    ids = np.arange(M)  # each stack row's model (rows go once their models stop: ``compact``)
    active = np.ones(M, dtype=bool)
    failed: dict[int, dict[str, Any]] = {}
    frozen_any = False
    if early_stopping is not None:
        early_stopping.reset(M)
    best = stack.snapshot() if early_stopping is not None and early_stopping.restore_best_weights else None
    for cb in callbacks:
        cb.on_train_begin({})
    bar = tqdm(range(epochs), desc=desc, disable=not progress or not sys.stderr.isatty(), leave=False)
    interrupted = False
    caps = stack.caps
    sets_grad, defers = caps.sets_grad, caps.defers_penalties
    grad_mode = torch.no_grad() if sets_grad else contextlib.nullcontext()
    # a stack that can drop rows does so once a quarter of its models (at least one) have stopped
    # or failed, so they cost nothing more (``Stack.keep``); not with callbacks, which see row 0
    can_compact = caps.can_keep and not callbacks and M > 1

    def compact() -> None:
        """Go on with the active models' rows only: the stack's (``keep``), the optimizer state's,
        the data's and the shuffling generators'. Stopped models keep their weights, their best
        ones where those are restored (as at the end)."""
        nonlocal stack, best, gens, train, val, histories, ids, active, frozen_any
        rows = np.flatnonzero(active)
        if best is not None:  # kept only with restore_best_weights
            stack.restore(best, ~active & early_stopping.has_best_weights[ids])
        state = optimizer.state_dict()
        n, take = len(ids), torch.as_tensor(rows)
        for per_param in state["state"].values():
            for k, v in per_param.items():
                if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n:
                    per_param[k] = v.index_select(0, take.to(v.device))
        stack, best = stack.keep(rows.tolist(), best)
        optimizer.load_state_dict(state)
        gens = [gens[i] for i in rows]
        train, val = (d.rows(take) if isinstance(d, ArrayData) else d for d in (train, val))
        histories = [histories[i] for i in rows]
        ids, active, frozen_any = ids[rows], active[rows], False

    def check_finite(table: torch.Tensor, epoch: int, b: int, total: torch.Tensor, pens,
                     where: str | None = None) -> None:
        """Active models with a non-finite entry in ``table`` (rows of statistics, a column per
        model) diverged at batch ``b`` (or, ``where`` says, by then): raise
        (``raise_on_divergence``) or mark them failed, with their epoch-start weights where their
        own are not finite (``names``, ``epoch_start``: the loop's current ones)."""
        nonlocal active, frozen_any
        ok = torch.isfinite(table).all(0).cpu().numpy()
        newly = active & ~ok
        if not newly.any():
            return
        if raise_on_divergence:
            bad = [n for n, v in zip(names, pens if pens is not None else []) if not bool(torch.isfinite(v).all())]
            what = f"penalty source(s) {bad}" if bad else "the data loss"
            state = stack.snapshot()
            if not stack.all_finite().all():
                state = epoch_start
                stack.restore(state, np.ones(stack.n_models, dtype=bool))
            raise TrainingDiverged(
                f"training diverged {where or f'at epoch {epoch} (0-based), batch {b}'}: {what} became "
                f"{float(total[0])}; the history of the {epoch} completed epoch(s) and the last finite "
                "weights are kept on this exception (.history, .state_dict) and in the model",
                histories[0], stack.state_dict(state), epoch, b)
        for i in np.flatnonzero(newly):
            failed[int(ids[i])] = {"epoch": epoch, "batch": b, "value": float(total[i])}
        broken = newly & ~stack.all_finite()
        if broken.any():  # keep the epoch-start weights of models whose weights are not finite
            stack.restore(epoch_start, broken)
        active &= ok
        frozen_any = True
    with _DeferredInterrupt() as intr, _FlushDenormals(), engine_steps(optimizer):
        for epoch in bar:
            for cb in callbacks:
                cb.on_epoch_begin(epoch, {})
            # the weights to fall back on if a model's weights themselves turn non-finite
            epoch_start = stack.snapshot()
            stack.train(True)
            perms = _permutations(gens, train.n, device) if shuffle and isinstance(train, ArrayData) else None
            acc = None
            seen = 0
            names: list[str] = []
            with grad_mode:  # a stack that sets its own gradients needs no autograd graph
                for b, (xb, yb, bs) in enumerate(train.batches(stack, batch_size, perms)):
                    # the buffers a stopped or failed model keeps (the forward pass updates them)
                    kept = stack.hold(~active, buffers=True) if frozen_any else None
                    data, correct, names, pens = stack.objective(xb, yb)
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
                        check_finite(row, epoch, b, total, pens)
                        if not active.any():
                            break
                    if frozen_any:  # stopped and failed models keep their weights
                        before = stack.hold(~active, buffers=False)
                    if not sets_grad:
                        # autograd stacks differentiate the objective summed over models (frozen ones: 0)
                        if total is None:
                            total = data_mean + pens.sum(0) if pens is not None else data_mean
                        if frozen_any:
                            total = torch.where(torch.as_tensor(active, device=total.device), total, torch.zeros_like(total))
                        optimizer.zero_grad(set_to_none=True)
                    stack.backward(total, active if frozen_any else None)
                    unhooked_step(optimizer)
                    stack.after_step()
                    if frozen_any:
                        stack.release(before, ~active)
                        if kept is not None:
                            stack.release(kept, ~active)
                    if not sets_grad:
                        row = row.detach()
                    acc = row * bs if acc is None else torch.add(acc, row, alpha=bs)
                    seen += bs
                    if intr.flag:
                        break
            if defers:
                # the stack summed its penalty values (times the batch size) over the epoch's steps;
                # a penalty that alone became non-finite is caught here, at the epoch's end
                pt = stack.penalty_totals()
                if pt is not None and acc is not None:
                    acc = torch.cat((acc, pt))
                    check_finite(pt, epoch, b, (acc[0] + pt.sum(0)) / seen, pt,
                                 f"in epoch {epoch} (0-based; penalties summed over its batches 0-{b})")
            if acc is None or not active.any() and not intr.flag:
                break
            if intr.flag and seen < train.n:
                interrupted = True
                break
            tr = (acc / seen).cpu().numpy().astype(np.float64)
            tr = _with_totals(tr, correct is not None)
            keys = ["loss", "data_loss", "penalty"] + (["accuracy"] if correct is not None else []) + [
                f"penalty/{n}" for n in names]
            # per model, its row of Python floats (one tolist for the stack, not M x K float() calls)
            logs = [dict(zip(keys, row)) for row in tr.T.tolist()]
            if val is not None:
                vl = evaluate_stack(stack, val, batch_size)
                if vl:
                    vkeys = list(vl)
                    for lg, row in zip(logs, np.stack([vl[k] for k in vkeys], 1).tolist()):
                        lg.update(zip(vkeys, row))
            for i in np.flatnonzero(active):
                histories[i].append(epoch, logs[i])
            for cb in callbacks:
                cb.on_epoch_end(epoch, logs[0])
            if M == 1 and not math.isnan(logs[0].get("loss", math.nan)):
                bar.set_postfix(loss=f"{logs[0]['loss']:.4f}", **({"val_loss": f"{logs[0]['val_loss']:.4f}"} if "val_loss" in logs[0] else {}))
            if early_stopping is not None:
                cur = np.array([lg.get(early_stopping.monitor, math.nan) for lg in logs])
                if early_stopping.monitor not in logs[0]:
                    raise ValueError(f"EarlyStopping monitors {early_stopping.monitor!r}, which is not logged; "
                                     f"logged: {sorted(logs[0])}")
                # the early stopper keeps every model's state, by model (rows may have gone)
                cur_all, active_all = np.full(M, math.nan), np.zeros(M, dtype=bool)
                cur_all[ids], active_all[ids] = cur, active
                snap, stop = (a[ids] for a in early_stopping.update(epoch, cur_all, active_all))
                if best is not None and snap.any():
                    best = _merge(stack, best, snap)
                if stop.any():
                    active &= ~stop
                    frozen_any = True
            if any(cb.stop_training for cb in callbacks) or not active.any():
                break
            if intr.flag:
                interrupted = True
                break
            if can_compact and epoch < epochs - 1 and (~active).sum() >= max(1, len(ids) // 4):
                compact()
    if best is not None and early_stopping is not None:
        stack.restore(best, early_stopping.has_best_weights[ids])
    for i, h in enumerate(every):
        if early_stopping is not None:
            h.meta["stopped_epoch"] = int(early_stopping.stopped_epoch[i])
            h.meta["best_epoch"] = int(early_stopping.best_epoch[i])
        if i in failed:
            h.meta["failed"] = failed[i]
        if interrupted:
            h.meta["interrupted"] = True
            h.meta["interrupted_epoch"] = len(h)
    for cb in callbacks:
        cb.on_train_end({})
    bar.close()
    return LoopResult(every, failed, interrupted, stack)


def _with_totals(rows: np.ndarray, with_accuracy: bool) -> np.ndarray:
    """``[data loss, accuracy?, each penalty]`` rows (per model) -> ``[loss, data loss, penalty,
    accuracy?, each penalty]``: the totals the history logs, summed in float64."""
    head = 2 if with_accuracy else 1
    penalty = rows[head:].sum(0) if len(rows) > head else np.zeros(rows.shape[1])
    return np.concatenate([(rows[0] + penalty)[None], rows[:1], penalty[None], rows[1:]])


def _merge(stack: Stack, best: Any, mask: np.ndarray) -> Any:
    """Take the current weights of the models in ``mask`` into the snapshot ``best``."""
    return stack.merge_snapshot(best, mask)


@torch.no_grad()
def evaluate_stack(stack: Stack, data: ArrayData | LoaderData, batch_size: int) -> dict[str, np.ndarray]:
    """Keras-compatible batched evaluation in eval mode: ``val_loss`` (data + penalties, batch-size
    weighted), ``val_data_loss`` (mean per-example data loss over the whole set), ``val_penalty``,
    ``val_penalty/<source>`` and ``val_accuracy``."""
    stack.train(False)
    acc = None
    seen = 0
    names: list[str] = []
    has_acc = False
    batches = stack.eval_batches(data, batch_size)
    for xb, yb, bs in batches:
        d, correct, names, pens = stack.objective(xb, yb)
        # per model: [data loss sum, correct sum?, each penalty times the batch size]
        parts = [d.sum(dim=1)[None]]
        if correct is not None:
            has_acc = True
            parts.append(correct.sum(dim=1)[None])
        if pens is not None:
            parts.append(pens * bs)
        stats = torch.cat(parts) if len(parts) > 1 else parts[0]
        acc = stats if acc is None else acc + stats
        seen += bs
    stack.train(True)
    if acc is None:
        return {}
    v = (acc / seen).cpu().numpy().astype(np.float64)
    v = _with_totals(v, has_acc)
    keys = ["val_loss", "val_data_loss", "val_penalty"] + (["val_accuracy"] if has_acc else []) + [
        f"val_penalty/{n}" for n in names]
    return {k: v[j] for j, k in enumerate(keys)}
