"""Datasets as plain arrays with their known distribution; stored as ``.npz`` (never pickle)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .distributions import Circles, Distribution, Moons, TwoGaussians

__all__ = ["Dataset", "blobs", "moons", "circles", "digits", "load", "get", "DATASETS"]


@dataclass
class Dataset:
    """``x_train, y_train, x_test, y_test`` (y a float32 column for binary tasks, like the lecture),
    and ``distribution`` where the data's law is known (synthetic sets)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    distribution: Distribution | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def save(self, path: str | os.PathLike) -> None:
        """Write an ``.npz`` file atomically (arrays + JSON metadata; no pickle)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp.npz")
        meta = json.dumps({"name": self.name, "params": self.params})
        np.savez(tmp, x_train=self.x_train, y_train=self.y_train, x_test=self.x_test, y_test=self.y_test,
                 meta=np.array(meta))
        os.replace(tmp, path)

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
                f"distribution={type(self.distribution).__name__ if self.distribution else None})")


def _split(name, x, y, random_state, test_size, dist, params) -> Dataset:
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=random_state)
    return Dataset(name, xtr, ytr, xte, yte, dist, params)


def blobs(random_state: int | None = 0, n_samples: int = 300, test_size: float = 0.25) -> Dataset:
    """The lecture's data: ``make_blobs(n_samples=300, centers=[[0, 0], [0.5, 0.1]], cluster_std=0.25,
    center_box=(-1, 1))``, split 75/25 with ``train_test_split``; y is a float32 column.
    (The lecture loads a pickle of one such draw; this regenerates a draw from ``random_state``.)
    Bayes accuracy 0.846, Bayes log-loss 0.347."""
    dist = TwoGaussians()
    x, y = dist.sample(n_samples, random_state)
    return _split("blobs", x, y.reshape(-1, 1).astype(np.float32), random_state, test_size, dist,
                  {"random_state": random_state, "n_samples": n_samples, "test_size": test_size})


def moons(random_state: int | None = 0, n_samples: int = 300, noise: float = 0.2, test_size: float = 0.25) -> Dataset:
    """``make_moons(n_samples, noise)``, split 75/25."""
    dist = Moons(noise)
    x, y = dist.sample(n_samples, random_state)
    return _split("moons", x, y.reshape(-1, 1).astype(np.float32), random_state, test_size, dist,
                  {"random_state": random_state, "n_samples": n_samples, "noise": noise, "test_size": test_size})


def circles(random_state: int | None = 0, n_samples: int = 300, noise: float = 0.1, factor: float = 0.5,
            test_size: float = 0.25) -> Dataset:
    """``make_circles(n_samples, noise, factor)``, split 75/25."""
    dist = Circles(noise, factor)
    x, y = dist.sample(n_samples, random_state)
    return _split("circles", x, y.reshape(-1, 1).astype(np.float32), random_state, test_size, dist,
                  {"random_state": random_state, "n_samples": n_samples, "noise": noise, "factor": factor,
                   "test_size": test_size})


def digits(random_state: int | None = 0, test_size: float = 0.25) -> Dataset:
    """scikit-learn's bundled 8x8 digits (no download), pixels scaled to [0, 1]; y integer labels."""
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    return _split("digits", x, d.target.astype(np.int64), random_state, test_size, None,
                  {"random_state": random_state, "test_size": test_size})


DATASETS = {"blobs": blobs, "moons": moons, "circles": circles, "digits": digits}


def get(name: str, **kwargs: Any) -> Dataset:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(DATASETS)}")
    return DATASETS[name](**kwargs)


def load(path: str | os.PathLike) -> Dataset:
    """Read a dataset written by ``Dataset.save`` (``allow_pickle=False``); the distribution is
    rebuilt from the stored name and parameters."""
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
        arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    fresh = get(meta["name"], **meta["params"]) if meta["name"] in DATASETS else None
    return Dataset(meta["name"], **arrays, distribution=fresh.distribution if fresh else None, params=meta["params"])
