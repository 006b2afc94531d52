"""Cost of a training step with all of program 6's regularizers attached vs none.

Same lecture MLP (5x Dense(32, relu) + sigmoid), same data, Keras Adam, batch 20, no validation.
"with" attaches L2(0.001) to every kernel and bias and L1(0.001) activity to every hidden layer
(12 parameter penalties + 5 activity penalties, each logged per source); "without" attaches
nothing. Measured for reglab.fit (one model) and reglab.fit_many (M = 64), single thread, best of
--repeats, interleaved. Usage: python benchmarks/bench_overhead.py [epochs] [repeats]
"""

from __future__ import annotations

import platform
import sys
import time

import torch

import reglab

torch.set_num_threads(1)


def data():
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=300, centers=[[0, 0], [0.5, 0.1]], cluster_std=0.25, center_box=(-1, 1), random_state=0)
    return x[:225], y[:225].reshape(-1, 1).astype("float32")


def build(regularized: bool):
    def make():
        L1, L2 = reglab.L1(0.001), reglab.L2(0.001)
        r = dict(kernel_regularizer=L2, bias_regularizer=L2) if regularized else {}
        a = dict(activity_regularizer=L1) if regularized else {}
        hidden = [dict(units=32, activation="relu", **r, **a)] * 5
        return reglab.models.mlp(2, hidden + [dict(units=1, activation="sigmoid", **r)])
    return make


def time_fit(regularized, epochs):
    x, y = data()
    torch.manual_seed(0)
    model = build(regularized)()
    t = time.perf_counter()
    reglab.fit(model, x, y, loss="binary_crossentropy", epochs=epochs, batch_size=20, seed=0, progress=False)
    return time.perf_counter() - t


def time_fit_many(regularized, epochs, m=64):
    x, y = data()
    t = time.perf_counter()
    reglab.fit_many(build(regularized), x, y, seeds=range(m), loss="binary_crossentropy", epochs=epochs, batch_size=20,
                    progress=False)
    return time.perf_counter() - t


def main():
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 50
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    steps = epochs * 12
    print(f"machine: {platform.machine()}, 1 thread, torch {torch.__version__}; {epochs} epochs = {steps} steps, "
          f"best of {repeats}")
    for name, fn in (("fit (1 model)", time_fit), ("fit_many (M=64)", time_fit_many)):
        fn(False, 1)
        best = {True: float("inf"), False: float("inf")}
        for _ in range(repeats):
            for reg in (False, True):
                best[reg] = min(best[reg], fn(reg, epochs))
        print(f"  {name:16s} none {1000 * best[False] / steps:6.3f} ms/step   all {1000 * best[True] / steps:6.3f} ms/step"
              f"   ratio {best[True] / best[False]:.3f}")


if __name__ == "__main__":
    main()
