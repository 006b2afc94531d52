"""``History``: what was optimized, and what generalizes, per epoch.

Keys (all per epoch; ``<source>`` is a penalty source name from ``reglab.penalties``):

=========================  ===================================================================
``loss``                   training objective (data loss + all penalties), batch-size-weighted
                           running mean over the epoch's batches -- **what Keras reports as loss**
``data_loss``              the data loss alone (no penalty), same running mean
``penalty``                all penalties together, same running mean
``penalty/<source>``       one penalty source, same running mean
``accuracy``               running accuracy over the epoch (classification losses only)
``val_loss``               Keras-compatible validation loss: evaluated batch by batch with the
                           training batch size in eval mode, data loss + penalties (activity
                           penalties depend on the batch), batch-size-weighted -- **Keras's val_loss**
``val_data_loss``          validation data loss on the whole validation set at once, eval mode,
                           no penalty -- the number that says how well the model generalizes
``val_penalty``,           penalties during the batched validation pass
``val_penalty/<source>``
``val_accuracy``           accuracy on the whole validation set
=========================  ===================================================================

``history.history`` is the Keras-style dict of lists; ``save``/``load`` write JSON or CSV without
loss of precision (no pickle).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["History"]


class History:
    def __init__(self, history: Mapping[str, list[float]] | None = None, epoch: list[int] | None = None,
                 meta: Mapping[str, Any] | None = None):
        self._history: dict[str, list[float]] = {k: list(v) for k, v in (history or {}).items()}
        self._columns: tuple[tuple[str, ...], np.ndarray] | None = None
        self.epoch: list[int] = list(epoch or [])
        self.meta: dict[str, Any] = dict(meta or {})

    @classmethod
    def from_columns(cls, keys: tuple[str, ...], columns: np.ndarray, epoch: list[int]) -> History:
        """The history whose key ``keys[k]`` has the values ``columns[k]`` (float64, one per epoch).
        Its lists of Python floats are made on first use of ``history``; reading a key as an array
        (``h["val_loss"]``) never makes them (the ``Logbook`` of many models builds these)."""
        h = cls(epoch=epoch)
        h._columns = (tuple(keys), np.asarray(columns, dtype=np.float64))
        return h

    @property
    def history(self) -> dict[str, list[float]]:
        """Keras's ``history.history``: each key's values, a list per key."""
        if self._columns is not None:
            keys, cols = self._columns
            self._history, self._columns = dict(zip(keys, cols.tolist())), None
        return self._history

    @history.setter
    def history(self, value: dict[str, list[float]]) -> None:
        self._history, self._columns = value, None

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickling, also of a History pickled before the columns (its lists in ``history``)."""
        if "history" in state:
            state["_history"] = state.pop("history")
        state.setdefault("_columns", None)
        self.__dict__.update(state)

    # -- building
    def append(self, epoch: int, logs: Mapping[str, float]) -> None:
        h = self.history
        if logs.keys() != h.keys():  # a new key (NaN before this epoch) or a missing one (NaN now)
            n = len(self.epoch)
            for k in logs:
                if k not in h:
                    h[k] = [math.nan] * n
            get = logs.get
            for k, col in h.items():
                col.append(float(get(k, math.nan)))
        else:
            for k, col in h.items():
                col.append(float(logs[k]))
        self.epoch.append(int(epoch))

    # -- reading
    def __getitem__(self, key: str) -> np.ndarray:
        if self._columns is not None:
            keys, cols = self._columns
            if key not in keys:
                raise KeyError(key)
            return cols[keys.index(key)].copy()
        return np.asarray(self.history[key], dtype=float)

    def __contains__(self, key: str) -> bool:
        return key in self.keys()

    def __len__(self) -> int:
        return len(self.epoch)

    def keys(self) -> list[str]:
        return list(self._columns[0]) if self._columns is not None else list(self._history)

    @property
    def penalty_sources(self) -> list[str]:
        return [k.split("/", 1)[1] for k in self.keys() if k.startswith("penalty/")]

    def as_arrays(self) -> dict[str, np.ndarray]:
        return {"epoch": np.asarray(self.epoch), **{k: self[k] for k in self.keys()}}

    def __repr__(self) -> str:
        return f"History(epochs={len(self)}, keys={self.keys()}, meta={self.meta})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, History):
            return NotImplemented
        return (self.epoch == other.epoch and self.meta == other.meta and set(self.keys()) == set(other.keys())
                and all(np.array_equal(self[k], other[k], equal_nan=True) for k in self.keys()))

    # -- I/O
    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "history": self.history, "meta": self.meta}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> History:
        return cls(d.get("history"), d.get("epoch"), d.get("meta"))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``.json`` (everything) or ``.csv`` (the per-epoch table) atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        if path.suffix == ".json":
            tmp.write_text(json.dumps(self.to_dict()))
        elif path.suffix == ".csv":
            with tmp.open("w", newline="") as f:
                w = csv.writer(f)
                keys = self.keys()
                w.writerow(["epoch", *keys])
                for i, e in enumerate(self.epoch):
                    w.writerow([e, *(repr(self.history[k][i]) for k in keys)])
        else:
            raise ValueError(f"History.save: path must end in .json or .csv; got {str(path)!r}")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        path = Path(path)
        if path.suffix == ".json":
            return cls.from_dict(json.loads(path.read_text()))
        if path.suffix == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.reader(f))
            header, body = rows[0], rows[1:]
            hist = {k: [float(r[i + 1]) for r in body] for i, k in enumerate(header[1:])}
            return cls(hist, [int(r[0]) for r in body])
        raise ValueError(f"History.load: path must end in .json or .csv; got {str(path)!r}")
