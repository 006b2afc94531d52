"""Where a training loop's batches come from: in-memory arrays (shared by every model, or one per
model) and data loaders (one shared, or one per model)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ..engines.protocol import Engine
from .data import as_input

__all__ = ["ArrayData", "LoaderData", "draws_random"]


def read_quietly(dataset: Any, i: int) -> Any:
    """``dataset[i]`` for a probe, the global random generators left as they were (a dataset
    that augments draws nothing from the training's stream)."""
    with torch.random.fork_rng():
        return dataset[i]


def draws_random(dataset: Any) -> bool:
    """Whether reading an example of a map-style ``dataset`` draws from the global random
    generators (augmentation: then each model must draw its own, ``choose_engine``)."""
    from torch.utils.data import IterableDataset

    if isinstance(dataset, IterableDataset):
        return False
    with torch.random.fork_rng():
        before = torch.get_rng_state()
        try:
            dataset[0]
        except Exception:  # noqa: BLE001 -- an unusual dataset: read as it comes, not probed
            return False
        return not torch.equal(before, torch.get_rng_state())


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

    def batches(self, stack: Engine, batch_size: int, perms: torch.Tensor | None) -> Iterator[tuple[Any, Any, int]]:
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
    #: targets become the model's float dtype (all but sparse labels: ``reglab.training.data.targets``' rule)
    float_y: bool = False
    #: targets ``(B,)`` against outputs ``(B, 1)`` gain the last axis (``fit.expands_targets``)
    expand_y: bool = False

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
            batch = self.loader.collate_fn([read_quietly(ds, i) for i in range(min(2, len(ds)))])
            xb, yb = self._input(batch[0]), torch.as_tensor(batch[1]).to(self.device)
        except Exception:  # noqa: BLE001 -- an unusual dataset: trained, not probed
            return None
        return xb, self._targets(yb)

    def dims(self) -> tuple[int, int]:
        probe = self.probe_batch()
        return (probe[0].dim(), probe[1].dim()) if probe is not None else (-1, -1)

    def rows(self, take: torch.Tensor) -> LoaderData:
        if self.loaders is None:
            return self
        keep = take.tolist()
        return dataclasses.replace(self, loaders=[self.loaders[i] for i in keep])

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
            x0 = read_quietly(ds, 0)[0]
        except Exception:  # an unusual dataset: the thread rule treats its work as unknown
            return None
        return self._input(x0).unsqueeze(0)

    def batches(self, stack: Engine, batch_size: int, perms: Any) -> Iterator[tuple[Any, Any, int]]:
        for b, batch in enumerate(self.loader if self.loaders is None else _all_together(self.loaders, stack)):
            if self.loaders is None:
                xb, yb = self._input(batch[0]), torch.as_tensor(batch[1]).to(self.device)
            else:  # one batch per model, stacked
                xb = torch.stack([self._input(one[0]) for one in batch])
                yb = torch.stack([torch.as_tensor(one[1]) for one in batch]).to(self.device)
            if self.classes is not None:
                self._check_labels(yb, b)
            yield xb, self._targets(yb), xb.shape[1 if self.loaders is not None else 0]

    def _targets(self, yb: torch.Tensor) -> torch.Tensor:
        if yb.is_floating_point() or self.float_y:
            yb = yb.to(self.dtype)
        return yb.unsqueeze(-1) if self.expand_y else yb


def _all_together(loaders: list[Any], stack: Engine) -> Iterator[list[Any]]:
    """The loaders' batches side by side, model m's read in its own random state
    (``stack.random_of``: a dataset's augmentation draws what it draws for the model alone), each
    loader run to its end (``zip`` stops at the first end, before a shuffling sampler of the
    others draws what it draws at its own end: a model's next epoch would then be shuffled
    otherwise than ``fit`` shuffles it)."""
    its = [iter(loader) for loader in loaders]
    end = object()
    while True:
        batch = []
        for m, it in enumerate(its):
            with stack.random_of(m):
                batch.append(next(it, end))
        if all(b is end for b in batch):
            return
        if any(b is end for b in batch):
            raise ValueError("the models' loaders gave different numbers of batches")
        yield batch
