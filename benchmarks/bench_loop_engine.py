"""The per-model engine (``reglab.engines.loop``) against ``fit`` called M times, side by side.

A GRU sequence classifier (6 steps x 3 features, 16 hidden units, 3 classes; 120 training and
40 validation sequences, batch 16, Keras's Adam) and the same with a TransformerEncoderLayer
(dropout 0.1): vmap cannot train either, so ``fit_many`` trains them on the loop. Rounds
alternate the two ways (fit_many of M models, then M fits) so that a busy machine slows both
alike; the ratio is fit_many's time over the M fits' (target: <= 1.1). One thread, as the
thread rule gives models this small. Usage: python benchmarks/bench_loop_engine.py [M] [epochs] [rounds]
"""

from __future__ import annotations

import platform
import statistics
import sys
import time

import numpy as np
import torch
from torch import nn

import reglab

LOSS = {"name": "sparse_categorical_crossentropy", "from_logits": True}


class GRU(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(3, 16, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(3, 16)
        self.enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(self.inp(x)).mean(1))


def data(n, seed):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 6, 3)).astype(np.float32)
    return x, (x[:, :, 0].sum(1) > 0).astype(np.int64) + (x[:, :, 1].sum(1) > 1)


def main(M: int = 8, epochs: int = 5, rounds: int = 3) -> None:
    x, y = data(120, 0)
    val = data(40, 1)
    kw = dict(loss=LOSS, epochs=epochs, batch_size=16, validation_data=val, progress=False, threads=1)
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads available; "
          f"torch {torch.__version__}; M={M}, {epochs} epochs, {rounds} rounds")
    for name, build in (("GRU", GRU), ("TransformerEncoderLayer", Attention)):
        many_t, fits_t = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            res = reglab.fit_many(build, x, y, seeds=range(M), **kw)
            many_t.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for s in range(M):
                torch.manual_seed(s)
                reglab.fit(build(), x, y, seed=s, **kw)
            fits_t.append(time.perf_counter() - t0)
        ratios = [a / b for a, b in zip(many_t, fits_t)]
        print(f"{name:24s} engine={res.engine}: fit_many {statistics.median(many_t):.2f} s, {M} x fit "
              f"{statistics.median(fits_t):.2f} s; ratio median {statistics.median(ratios):.3f} "
              f"[{min(ratios):.3f}, {max(ratios):.3f}]")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
