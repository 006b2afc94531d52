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

from .code import UserCodeError, call_user

__all__ = ["Augmented", "Transform", "is_dataset", "read_all"]


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
    """Every ``(x, y)`` example of a map-style dataset as arrays, read once in one pass from a
    fixed random state, the global one left as it was (the validation and test splits; the
    training split's shapes, labels and probes -- an augmenting Dataset's examples each with a
    draw of their own); a ``ValueError`` naming ``where`` for a dataset that cannot be read so."""
    try:
        n = len(ds)
    except TypeError:
        raise ValueError(f"{where}: a Dataset without a length (an IterableDataset?); a study reads map-style "
                         "Datasets") from None
    if n == 0:
        raise ValueError(f"{where}: the Dataset is empty")
    xs, ys = [], []
    with torch.random.fork_rng():  # one pass from a fixed state: each example its own draw, the global state kept
        torch.manual_seed(0)
        items = [call_user(ds.__getitem__, f"{where}[{i}]", i) for i in range(n)]
    for i, item in enumerate(items):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"{where}[{i}]: expected an (x, y) pair; got {type(item).__name__}")
        xs.append(np.asarray(item[0].numpy() if torch.is_tensor(item[0]) else item[0]))
        ys.append(np.asarray(item[1].numpy() if torch.is_tensor(item[1]) else item[1]))
    shapes = {a.shape for a in xs}
    if len(shapes) != 1:
        raise ValueError(f"{where}: the examples differ in shape: {sorted(shapes)[:3]}")
    return np.stack(xs), np.stack(ys)


class Transform:
    """``[data] transform`` as training calls it: the user's function at its edge (``call_user``:
    whatever it raises names the file, the key and its line) and its result checked for every
    example (``example``), not only the two checked before training."""

    def __init__(self, fn: Callable[..., Any], where: str):
        self.fn, self.where = fn, where

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.example(call_user(self.fn, self.where, x), x)

    def example(self, got: Any, x: torch.Tensor, i: int | None = None) -> torch.Tensor:
        """``got``, the transform of ``x``, as a float tensor of ``x``'s shape and dtype; else a
        ``UserCodeError`` naming the transform (and the example ``i`` where known)."""
        which = f"example {i}" if i is not None else "an example"
        try:
            t = torch.as_tensor(got)
        except (TypeError, ValueError, RuntimeError):
            raise UserCodeError(f"{self.where}: returned {type(got).__name__} for {which}; expected a tensor of shape "
                                f"{tuple(x.shape)}") from None
        if tuple(t.shape) != tuple(x.shape):
            raise UserCodeError(f"{self.where}: returned shape {tuple(t.shape)} for {which} of shape "
                                f"{tuple(x.shape)}; a transform keeps the example's shape")
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise UserCodeError(f"{self.where}: returned {'non-finite values' if t.is_floating_point() else t.dtype} "
                                f"for {which}; expected finite floats")
        return t.to(x.dtype)

    def check(self, x: np.ndarray) -> None:
        """Before training, on the first two training examples (the global random state left as
        it was): each transformed as ``example`` asks, and the same twice from the same torch
        random state -- a transform drawing from NumPy's or Python's generator would give each
        model draws that are not its own and runs that do not repeat."""
        for i in range(min(2, len(x))):
            ex = torch.from_numpy(np.ascontiguousarray(x[i]))
            twice = []
            for _ in range(2):
                with torch.random.fork_rng():
                    torch.manual_seed(12345)
                    twice.append(self.example(call_user(self.fn, self.where, ex.clone()), ex, i))
            if not torch.equal(*twice):
                raise ValueError(f"{self.where}: gave two different results for example {i} from the same torch "
                                 "random state: it draws from another generator (NumPy's, Python's random); draw "
                                 "from torch's (torch.rand, torch.randint, ...) so that each model draws its own "
                                 "and a run repeats")
