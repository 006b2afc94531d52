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

__all__ = ["Dataset", "blobs", "moons", "circles", "digits", "load", "get", "DATASETS", "sample", "names", "SKLEARN"]


@dataclass
class Dataset:
    """``x_train, y_train, x_test, y_test`` (y a float32 column for binary tasks, as Keras programs keep it),
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
    """Two overlapping Gaussian blobs (the founding study's data): ``make_blobs(n_samples=300, centers=[[0, 0], [0.5, 0.1]], cluster_std=0.25,
    center_box=(-1, 1))``, split 75/25 with ``train_test_split``; y is a float32 column.
    (The Keras original loads a pickle of one such draw; this regenerates a draw from ``random_state``.)
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

#: synthetic sets: name -> (distribution factory from keyword arguments, default n_samples)
_SYNTHETIC = {"blobs": (lambda: TwoGaussians(), 300), "moons": (lambda noise=0.2: Moons(noise), 300),
              "circles": (lambda noise=0.1, factor=0.5: Circles(noise, factor), 300)}

#: scikit-learn's bundled sets (no download): name -> (loader, task)
SKLEARN = {"digits": ("load_digits", "multiclass"), "breast_cancer": ("load_breast_cancer", "binary"),
           "wine": ("load_wine", "multiclass"), "iris": ("load_iris", "multiclass"),
           "diabetes": ("load_diabetes", "regression")}


def sample(name: str, random_state: int = 0, **kwargs: Any) -> tuple[np.ndarray, np.ndarray, Distribution | None, str]:
    """All examples of a built-in set before any split: ``(x, y, distribution, task)``.

    ``name`` is ``"blobs"``, ``"moons"``, ``"circles"`` (a draw of ``n_samples`` points from the
    known distribution, seeded by ``random_state``; other keyword arguments are the
    distribution's), ``"digits"`` (pixels scaled to [0, 1]) or ``"sklearn.<set>"`` for
    scikit-learn's bundled ``digits, breast_cancer, wine, iris, diabetes`` (as loaded; fixed
    arrays, ``random_state`` unused). ``y`` is 1-D: 0/1 or class indices, floats for regression.
    """
    import sklearn.datasets as skd

    if name in _SYNTHETIC:
        factory, n_default = _SYNTHETIC[name]
        n = int(kwargs.pop("n_samples", n_default))
        dist = factory(**kwargs)
        x, y = dist.sample(n, random_state)
        return x.astype(np.float64), y.astype(np.int64), dist, "binary"
    if kwargs:
        raise TypeError(f"dataset {name!r} takes no arguments; got {sorted(kwargs)}")
    if name == "digits":
        d = load_digits()
        return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64), None, "multiclass"
    short = name.removeprefix("sklearn.")
    if name.startswith("sklearn.") and short in SKLEARN:
        loader, task = SKLEARN[short]
        x, y = getattr(skd, loader)(return_X_y=True)
        return x.astype(np.float32), (y.astype(np.float32) if task == "regression" else y.astype(np.int64)), None, task
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(names())}")


def names() -> list[str]:
    """Every name ``sample`` accepts."""
    return sorted(_SYNTHETIC) + ["digits"] + [f"sklearn.{k}" for k in SKLEARN]


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
