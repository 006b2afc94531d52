"""``GridSearchCV`` over ``alpha``: reglab's estimator against scikit-learn's ``MLPClassifier``.

The same grid (5 values of ``alpha``, 3-fold CV, 15 fits and a refit), the same architecture (two
hidden ReLU layers of 32), Adam at learning rate 0.001, batch 32, at most 200 epochs, on 1,200
points of two overlapping Gaussian blobs in 10 dimensions (a set where both stop early). Each
side's ``alpha`` is mapped so that both search the same objectives (``reglab alpha = sklearn
alpha / (2 * batch_size)``, the estimators' docstring). Rows, each with the stopping rule left
at its default (training-loss plateau: ``tol=1e-4``, ``n_iter_no_change=10``) and with
``early_stopping=True`` (10 % held out):

- ``MLPClassifier``: scikit-learn's own;
- ``RegularizedMLPClassifier``: reglab's, one ``reglab.fit`` per candidate and fold.

The sides run interleaved (one search of each per round, the order alternating), ``n_jobs=1``;
the median wall time per search, the epochs trained summed over the 16 fits, and the best
``alpha``'s CV accuracy are reported.

    python benchmarks/bench_gridsearch.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings

import numpy as np
import torch
from sklearn.datasets import make_blobs
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV
from sklearn.neural_network import MLPClassifier

from reglab.sklearn import RegularizedMLPClassifier

BATCH = 32
SK_ALPHAS = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]


def data():
    centers = np.zeros((2, 10))
    centers[1, :3] = 0.6
    x, y = make_blobs(n_samples=1200, n_features=10, centers=centers, cluster_std=1.0, random_state=0)
    return x, y


def search(side: str, early: bool, x, y) -> tuple[float, int, float, float]:
    """``(seconds, epochs summed over the fits, best alpha (sklearn's scale), best CV accuracy)``."""
    if side == "sklearn":
        est = MLPClassifier(hidden_layer_sizes=(32, 32), learning_rate_init=0.001, batch_size=BATCH, max_iter=200,
                            random_state=0, early_stopping=early)
        grid = {"alpha": SK_ALPHAS}
    else:
        est = RegularizedMLPClassifier((32, 32), learning_rate=0.001, batch_size=BATCH, epochs=200, random_state=0,
                                       early_stopping=early)
        grid = {"alpha": [a / (2 * BATCH) for a in SK_ALPHAS]}
    epochs = []

    class Counting(type(est)):  # counts epochs without changing what is trained
        def fit(self, X, y):
            out = super().fit(X, y)
            epochs.append(self.n_iter_)
            return out

    counting = Counting(**est.get_params())
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gs = GridSearchCV(counting, grid, cv=3, n_jobs=1).fit(x, y)
    dt = time.perf_counter() - t
    best = gs.best_params_["alpha"] * (1 if side == "sklearn" else 2 * BATCH)
    return dt, sum(epochs), best, gs.best_score_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    x, y = data()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}")
    for early in (False, True):
        rows: dict[str, list] = {"sklearn": [], "reglab": []}
        for r in range(args.rounds):
            for side in (("sklearn", "reglab") if r % 2 == 0 else ("reglab", "sklearn")):
                rows[side].append(search(side, early, x, y))
        base = statistics.median(t for t, *_ in rows["sklearn"])
        print(f"\nearly_stopping={early}  (median of {args.rounds} rounds)")
        print("| estimator | s per search | vs MLPClassifier | epochs (16 fits) | best alpha (sklearn scale) | CV accuracy |")
        print("|---|---|---|---|---|---|")
        for side, name in (("sklearn", "MLPClassifier"), ("reglab", "RegularizedMLPClassifier")):
            med = statistics.median(t for t, *_ in rows[side])
            _, ep, best, score = rows[side][0]
            print(f"| {name} | {med:.2f} | {base / med:.2f}x | {ep} | {best:g} | {score:.4f} |")


if __name__ == "__main__":
    main()
