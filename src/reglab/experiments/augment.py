"""Training examples read one by one: a ``[data] transform`` (random augmentation of the
training split) and a loader's ``torch.utils.data.Dataset`` per role.

A **transform** ``"file.py:function"`` is called on each training example as the model sees it
(after ``standardize``), a tensor of the example's shape, and returns the augmented example of
that shape, e.g. a random shift of an image::

    def shift(x):                       # x: (1, 8, 8)
        dy, dx = torch.randint(-1, 2, (2,)).tolist()
        return torch.roll(x, (dy, dx), dims=(1, 2))

It must draw its randomness from torch's generator (``torch.rand``, ``torch.randint``, ...):
each model of a group then draws its own augmentation from its own seed, in the order it would
alone (``fit_many`` equals ``fit`` per model; a run repeats bit for bit). NumPy's or Python's
generators are not per model. Only the training split is transformed; validation and test
examples are scored as they are. The baseline trains without the transform: augmentation is
regularization, and the baseline rule removes it.

A loader may return ``{"train": Dataset, "test": Dataset[, "validation": Dataset]}`` of map-style
datasets of ``(x, y)``: the training split is read from its Dataset at every step (its own
augmentation included; each model reads it in its own random state), the others are read once.
The data are not copied per model. Validation examples are never cut from a training Dataset
that draws random numbers (they would be augmented): give a ``validation`` Dataset or
``[split] validation = "test"``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..training.sources import draws_random, read_quietly
from .code import call_user

__all__ = ["Augmented", "is_dataset", "read_all", "check_transform", "draws_random"]


class Augmented(Dataset):
    """``(transform(x[i]), y[i])`` over in-memory training arrays: the examples are shared by
    every model (not copied), each read transformed afresh."""

    def __init__(self, x: np.ndarray, y: np.ndarray, transform: Callable[[torch.Tensor], Any]):
        self.x, self.y = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))
        self.transform = transform

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.as_tensor(self.transform(self.x[i].clone())), self.y[i]


def is_dataset(v: Any) -> bool:
    """A map-style ``Dataset`` (what a loader may return per role)."""
    from torch.utils.data import IterableDataset

    return isinstance(v, Dataset) and not isinstance(v, IterableDataset) and hasattr(v, "__len__")


def read_all(ds: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(x, y)`` example of a map-style dataset as arrays, each read once with the global
    random state left as it was (the validation and test splits; the training split's shapes
    and labels); a ``ValueError`` naming ``where`` for a dataset that cannot be read so."""
    try:
        n = len(ds)
    except TypeError:
        raise ValueError(f"{where}: a Dataset without a length (an IterableDataset?); a study reads map-style "
                         "Datasets") from None
    if n == 0:
        raise ValueError(f"{where}: the Dataset is empty")
    xs, ys = [], []
    for i in range(n):
        item = call_user(read_quietly, f"{where}[{i}]", ds, i)
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"{where}[{i}]: expected an (x, y) pair; got {type(item).__name__}")
        xs.append(np.asarray(item[0].numpy() if torch.is_tensor(item[0]) else item[0]))
        ys.append(np.asarray(item[1].numpy() if torch.is_tensor(item[1]) else item[1]))
    shapes = {a.shape for a in xs}
    if len(shapes) != 1:
        raise ValueError(f"{where}: the examples differ in shape: {sorted(shapes)[:3]}")
    return np.stack(xs), np.stack(ys)


def check_transform(fn: Callable[..., Any], x: np.ndarray, where: str) -> None:
    """The transform on the first two training examples (the global random state left as it
    was): it must return a finite float tensor or array of the example's shape; else a
    ``ValueError`` naming ``where``."""
    for i in range(min(2, len(x))):
        ex = torch.from_numpy(np.ascontiguousarray(x[i]))
        with torch.random.fork_rng():
            got = call_user(fn, where, ex.clone())
        try:
            t = torch.as_tensor(got)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{where}: returned {type(got).__name__} for example {i}; expected a tensor of shape "
                             f"{tuple(ex.shape)}") from None
        if tuple(t.shape) != tuple(ex.shape):
            raise ValueError(f"{where}: returned shape {tuple(t.shape)} for example {i} of shape {tuple(ex.shape)}; "
                             "a transform keeps the example's shape")
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise ValueError(f"{where}: returned {'non-finite values' if t.is_floating_point() else t.dtype} for "
                             f"example {i}; expected finite floats")
