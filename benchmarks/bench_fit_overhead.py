"""Overhead of reglab.fit over a hand-written PyTorch loop on the lecture's MLP (program 6).

Both sides: the same model (5x Dense(32, relu) + sigmoid, L2 kernel/bias and L1 activity
regularizers attached), Keras's Adam (lr 0.001), batch 20, 225 training points, shuffling each
epoch, validation on 75 points each epoch, single thread. The hand-written loop computes the
same objective (BCE + reglab.penalty) and the same Keras-style val_loss, but keeps no history
beyond the two loss numbers. Usage: python benchmarks/bench_fit_overhead.py [epochs] [repeats]
"""

from __future__ import annotations

import platform
import sys
import time

import torch

import reglab
from reglab.losses import BinaryCrossentropy
from reglab.optimizers import KerasAdam

torch.set_num_threads(1)


def data():
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=300, centers=[[0, 0], [0.5, 0.1]], cluster_std=0.25, center_box=(-1, 1), random_state=0)
    y = y.reshape(-1, 1).astype("float32")
    return x[:225], y[:225], x[225:], y[225:]


def build(seed=0):
    torch.manual_seed(seed)
    L1, L2 = reglab.L1(0.001), reglab.L2(0.001)
    hidden = [dict(units=32, activation="relu", kernel_regularizer=L2, bias_regularizer=L2, activity_regularizer=L1)] * 5
    return reglab.models.mlp(2, hidden + [dict(units=1, activation="sigmoid", kernel_regularizer=L2, bias_regularizer=L2)])


def hand_loop(epochs):
    xtr, ytr, xte, yte = data()
    model = build()
    x, y = torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr)
    xv, yv = torch.tensor(xte, dtype=torch.float32), torch.tensor(yte)
    opt = KerasAdam(model.parameters(), learning_rate=0.001)
    bce = BinaryCrossentropy()
    g = torch.Generator().manual_seed(0)
    hist = []
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(225, generator=g)
        total, n = 0.0, 0
        for s in range(0, 225, 20):
            idx = perm[s:s + 20]
            out = model(x[idx])
            loss = bce(out, y[idx]) + reglab.penalty(model)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            n += len(idx)
        model.eval()
        vt = 0.0
        with torch.no_grad():
            for s in range(0, 75, 20):
                out = model(xv[s:s + 20])
                vt += float(bce(out, yv[s:s + 20]) + reglab.penalty(model)) * len(out)
        hist.append((total / n, vt / 75))
    return hist


def reglab_fit(epochs):
    xtr, ytr, xte, yte = data()
    model = build()
    return reglab.fit(model, xtr, ytr, loss="binary_crossentropy", optimizer="adam", epochs=epochs, batch_size=20,
                      validation_data=(xte, yte), seed=0, progress=False)


def main():
    epochs = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    times = {"hand-written loop": [], "reglab.fit": []}
    for _ in range(repeats):  # interleaved, best of N for each
        for name, fn in (("hand-written loop", hand_loop), ("reglab.fit", reglab_fit)):
            t = time.perf_counter()
            fn(epochs)
            times[name].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread, torch {torch.__version__}")
    print(f"lecture MLP, program 6 regularizers, {epochs} epochs, batch 20, best of {repeats}")
    for k, v in best.items():
        print(f"  {k:20s} {v:7.3f} s")
    print(f"  overhead ratio reglab.fit / hand-written = {best['reglab.fit'] / best['hand-written loop']:.3f}")


if __name__ == "__main__":
    main()
