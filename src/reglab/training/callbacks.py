"""Callbacks: a plain protocol, plus Keras's ``EarlyStopping``, ``ModelCheckpoint`` and ``CSVLogger``.

``EarlyStopping`` keeps its state as arrays over models, so the single-model ``fit`` (one model)
and the many-model ``fit_many`` (M models, each stopping on its own) use the same code.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["Callback", "EarlyStopping", "ModelCheckpoint", "CSVLogger"]


class Callback:
    """Override any of these; ``logs`` holds the epoch's History values as floats.
    ``self.model`` is set before ``on_train_begin``; set ``self.stop_training = True`` to stop."""

    model: Any = None
    stop_training: bool = False

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None: ...

    def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, logs: dict[str, float] | None = None) -> None: ...


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    Keras semantics (``keras.callbacks.EarlyStopping``): improvement means
    ``current - min_delta < best`` (``mode="min"``; ``"max"`` flips it; ``"auto"`` is min unless the
    name contains "acc"); the wait counter restarts on improvement; training stops when
    ``wait >= patience`` and ``epoch > 0``; with ``restore_best_weights`` the weights of the best
    epoch are put back at the end of training (also when training ran to the last epoch).
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, mode: str = "auto",
                 baseline: float | None = None, restore_best_weights: bool = False, start_from_epoch: int = 0):
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"mode must be one of ['auto', 'max', 'min']; got mode={mode!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"patience must be a non-negative integer; got patience={patience!r}")
        self.monitor = monitor
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        # Keras (MonitorCallback): the delta is negated for "min", so "current - min_delta < best"
        # asks for a fall of more than |min_delta| (a rise of more than it for "max")
        self.min_delta = abs(float(min_delta)) * (-1 if self.mode == "min" else 1)
        self.patience = patience
        self.baseline = baseline
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)
        self.reset(1)

    def reset(self, n_models: int) -> None:
        self.wait = np.zeros(n_models, dtype=int)
        self.best = np.full(n_models, np.nan)
        self.best_epoch = np.zeros(n_models, dtype=int)
        self.stopped_epoch = np.zeros(n_models, dtype=int)
        self.has_best_weights = np.zeros(n_models, dtype=bool)

    def _improves(self, current: np.ndarray, ref: np.ndarray) -> np.ndarray:
        cmp = np.less if self.mode == "min" else np.greater
        with np.errstate(invalid="ignore"):
            return np.isnan(ref) | cmp(current - self.min_delta, ref)

    def update(self, epoch: int, current: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One epoch for all models. Returns ``(snapshot, stop)`` masks: models whose weights are
        the best so far (to keep) and models that stop now."""
        current = np.asarray(current, dtype=float)
        snap = np.zeros_like(active)
        stop = np.zeros_like(active)
        if epoch < self.start_from_epoch:
            return snap, stop
        valid = active & ~np.isnan(current)
        if self.restore_best_weights:
            first = valid & ~self.has_best_weights
            snap |= first
            self.best_epoch[first] = epoch
            self.has_best_weights |= first
        self.wait[valid] += 1
        imp = valid & self._improves(current, self.best)
        self.best[imp] = current[imp]
        self.best_epoch[imp] = epoch
        if self.restore_best_weights:
            snap |= imp
        beats_base = imp if self.baseline is None else imp & self._improves(current, np.full_like(current, self.baseline))
        self.wait[beats_base] = 0
        stop = valid & ~imp & (self.wait >= self.patience) & (epoch > 0)
        self.stopped_epoch[stop] = epoch
        return snap, stop


class ModelCheckpoint(Callback):
    """Save ``model.state_dict()`` with ``torch.save`` (load it with ``torch.load(path, weights_only=True)``).

    ``filepath`` may contain ``{epoch}`` (1-based, as Keras) and any log key, e.g. ``{val_loss:.4f}``.
    With ``save_best_only`` the file is written only when ``monitor`` improves (Keras semantics).
    """

    def __init__(self, filepath: str | os.PathLike, monitor: str = "val_loss", save_best_only: bool = False,
                 mode: str = "auto"):
        self.filepath = str(filepath)
        self.monitor = monitor
        self.save_best_only = bool(save_best_only)
        self.mode = ("max" if "acc" in monitor else "min") if mode == "auto" else mode
        self.best = math.inf if self.mode == "min" else -math.inf

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.save_best_only:
            cur = logs.get(self.monitor)
            if cur is None or math.isnan(cur):
                return
            better = cur < self.best if self.mode == "min" else cur > self.best
            if not better:
                return
            self.best = cur
        path = Path(self.filepath.format(epoch=epoch + 1, **logs))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.model.state_dict(), tmp)
        os.replace(tmp, path)


class CSVLogger(Callback):
    """Append one row per epoch to a CSV file (``epoch`` + every log key), as ``keras.callbacks.CSVLogger``."""

    def __init__(self, filename: str | os.PathLike, append: bool = False):
        self.filename = Path(filename)
        self.append = append
        self._keys: list[str] | None = None

    def on_train_begin(self, logs=None):
        if not self.append and self.filename.exists():
            self.filename.unlink()
        self._keys = None

    def on_epoch_end(self, epoch, logs):
        new = not self.filename.exists()
        if self._keys is None:
            self._keys = sorted(logs)
        with self.filename.open("a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(["epoch", *self._keys])
            w.writerow([epoch, *(repr(float(logs.get(k, math.nan))) for k in self._keys)])
