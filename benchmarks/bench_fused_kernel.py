"""The fused engine's training kernel alone, two builds side by side (an older tree's generated
source against this tree's), and their bits.

Each ``--tree`` (a ``src`` folder holding a ``reglab`` package; default: this tree) writes its
kernel source for the architecture in a subprocess; every source is compiled by this tree's
``build.library`` and driven here through the same ``Args`` block, from the same starting
parameters, Adam state and example orders. The rounds alternate the builds (this VM's speed drifts
between minutes: epoch by epoch, the order rotating); per round the median epoch, over rounds the
median of those, in ms per model-run (200 epochs), and every build's
parameters, Adam moments and statistics after the timed epochs are compared with the first's by
``torch.equal``. Besides the wall time, the process CPU time in the kernel (all threads): on a
shared, loaded machine the steadier of the two (it excludes time the threads wait for a core).

    python benchmarks/bench_fused_kernel.py --tree /tmp/old/src --tree src [--m 1024] [--threads 1,2]
        [--epochs 20] [--rounds 3] [--widths 2,32,32,32,32,32,1] [--acts relu,...,sigmoid] [--loss bce]
        [--plain]   (no regularizers: the kernel without penalty slots)
        [--source FILE]  (also time a hand-edited kernel source, e.g. a profiling copy)

Program 6 by default (5 x Dense(32, relu) + Dense(1, sigmoid), L2 1e-3 on kernels and biases,
L1 1e-3 activity, binary crossentropy, Keras Adam, batch 20 of 225 examples: 12 steps).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")

_WRITE = r"""
import sys, json
import reglab
from reglab.engines.fused import arch_of
from reglab.engines.fused.source import source
spec = json.loads(sys.argv[1])
L1, L2 = reglab.L1(0.001), reglab.L2(0.001)
layers = []
for u, a in zip(spec["widths"][1:], spec["acts"]):
    d = dict(units=u, activation=a)
    if not spec["plain"]:
        d.update(kernel_regularizer=L2, bias_regularizer=L2)
        if u != spec["widths"][-1] or a == "relu":
            d["activity_regularizer"] = L1
    layers.append(d)
model = reglab.models.mlp(spec["widths"][0], layers)
sys.stdout.write(source(arch_of(model, reglab.losses.get(spec["loss"]), "adam")))
"""


def kernel_source(tree: str, spec: dict) -> str:
    import json

    env = dict(os.environ, PYTHONPATH=tree)
    return subprocess.run([sys.executable, "-c", _WRITE, json.dumps(spec)], env=env, capture_output=True, text=True,
                          check=True).stdout


def build(src: str):
    sys.path.insert(0, SRC)
    from reglab.engines.fused.build import library

    lib, why = library(src)
    if lib is None:
        raise SystemExit(why)
    return lib


class Run:
    """One build's state (``(C, P, L)`` parameters and moments) and the epochs it trains."""

    def __init__(self, lib, start, data, spec, threads):
        from reglab.engines.fused.build import Args

        self.lib = lib
        self.lanes, self.m, self.v = (t.clone() for t in start["state"])
        C, L = start["C"], start["L"]
        self.stats = torch.zeros(C, start["ns"], L)
        self.act = torch.full((C, L), -1, dtype=torch.int32)
        self.failed = torch.full((C, L), -1, dtype=torch.int32)
        self.failval = torch.zeros(C, L)
        self.data, self.start, self.spec, self.threads = data, start, spec, threads
        self.steps = 0
        self.cpu = 0.0  # process CPU seconds in the kernel (all its threads)
        self.Args = Args

    def epoch(self, order: torch.Tensor) -> float:
        x, y, rows, n = self.data
        a = self.Args()
        a.n_chunks, a.n_threads, a.n, a.batch = self.start["C"], self.threads, n, self.spec["batch"]
        hyper = torch.tensor([1e-3, 0.9, 0.999, 1e-7, float(self.steps)], dtype=torch.float64)
        a.params, a.m, a.v = self.lanes.data_ptr(), self.exp_ptr(self.m), self.exp_ptr(self.v)
        a.x, a.y, a.rows, a.lam, a.stats = x.data_ptr(), y.data_ptr(), rows.data_ptr(), self.start["lam"].data_ptr(), \
            self.stats.data_ptr()
        a.order, a.active, a.failed, a.failval, a.hyper = order.data_ptr(), self.act.data_ptr(), self.failed.data_ptr(), \
            self.failval.data_ptr(), hyper.data_ptr()
        t, c = time.perf_counter(), time.process_time()
        if self.lib.train_epoch(ctypes.byref(a)) != 0:
            raise RuntimeError("train_epoch refused")
        t, c = time.perf_counter() - t, time.process_time() - c
        self.steps += -(-n // self.spec["batch"])
        self.cpu += c
        return t

    @staticmethod
    def exp_ptr(t):
        return t.data_ptr()

    def state(self):
        return [self.lanes, self.m, self.v, self.stats, self.act, self.failed, self.failval]


def setup(spec: dict, M: int, lib) -> tuple[dict, tuple]:
    """Starting parameters (the models' own initializations, seeds 0..M-1), zero moments, the
    strengths, and program 6's data (225 training points of ``bench_vs_keras.data``)."""
    sys.path.insert(0, HERE)
    from bench_vs_keras import data

    arch_src = lib  # noqa: F841
    P, L, ns, nslot = spec["np"], spec["lanes"], spec["ns"], spec["nslot"]
    C = -(-M // L)
    g = torch.Generator().manual_seed(0)
    w = torch.zeros(C * L, P)
    w[:M] = (torch.rand(M, P, generator=g) - 0.5) * 0.6
    lanes = w.reshape(C, L, P).transpose(1, 2).contiguous()
    lam = torch.zeros(C * L, nslot)
    lam[:M] = 1e-3
    lam = lam.reshape(C, L, nslot).transpose(1, 2).contiguous()
    xtr, ytr, _, _ = data()
    x = torch.as_tensor(xtr, dtype=torch.float32)[:, :spec["widths"][0]]
    if x.shape[1] < spec["widths"][0]:
        x = x.repeat(1, -(-spec["widths"][0] // x.shape[1]))[:, :spec["widths"][0]]
    y = torch.as_tensor(ytr, dtype=torch.float32).repeat(1, spec["widths"][-1])
    n = x.shape[0]
    rows = torch.zeros(C, L, dtype=torch.int32)
    start = {"state": (lanes, torch.zeros_like(lanes), torch.zeros_like(lanes)), "C": C, "L": L, "ns": ns,
             "lam": lam, "M": M}
    return start, (x.contiguous().reshape(1, n, -1), y.contiguous().reshape(1, n, -1), rows, n)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tree", action="append", default=[])
    ap.add_argument("--source", action="append", default=[])
    ap.add_argument("--m", type=int, default=1024)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--widths", default="2,32,32,32,32,32,1")
    ap.add_argument("--acts", default="relu,relu,relu,relu,relu,sigmoid")
    ap.add_argument("--loss", default="binary_crossentropy")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--plain", action="store_true")
    args = ap.parse_args()
    widths = [int(v) for v in args.widths.split(",")]
    spec = {"widths": widths, "acts": args.acts.split(","), "loss": args.loss, "plain": args.plain,
            "batch": args.batch}
    trees = args.tree or [SRC]
    srcs = [(t, kernel_source(t, spec)) for t in trees] + [(f, open(f).read()) for f in args.source]
    libs = [(name, build(s)) for name, s in srcs]
    # the kernel's own sizes, from the first source
    import re

    s0 = srcs[0][1]
    spec["np"] = int(re.search(r"NP = (\d+)", s0).group(1))
    spec["ns"] = int(re.search(r"NS = (\d+)", s0).group(1))
    spec["nslot"] = int(re.search(r"NSLOT = (\d+)", s0).group(1))
    spec["lanes"] = int(re.search(r"#define LANES (\d+)", s0).group(1))
    start, dat = setup(spec, args.m, libs[0][1])
    n = dat[3]
    print(f"M={args.m} widths={widths} acts={spec['acts']} loss={args.loss} plain={args.plain} epochs={args.epochs} "
          f"load={os.getloadavg()[0]:.2f}", flush=True)
    for threads in [int(v) for v in args.threads.split(",")]:
        times = {name: [] for name, _ in libs}
        cpus = {name: [] for name, _ in libs}
        finals = {}
        for r in range(args.rounds):
            g = torch.Generator().manual_seed(1)
            orders = [torch.stack([torch.randperm(n, generator=g) for _ in range(start["C"] * start["L"])]).to(
                torch.int32).reshape(start["C"], start["L"], n).contiguous() for _ in range(args.epochs)]
            runs = {}
            for name, lib in libs:
                Run(lib, start, dat, spec, threads).epoch(orders[0])  # warm (not timed, not in the state compared)
                runs[name] = Run(lib, start, dat, spec, threads)
            # the builds alternate epoch by epoch (the order rotating), so that the VM's drift touches each alike
            per = {name: [] for name, _ in libs}
            for e, o in enumerate(orders):
                k = (e + r) % len(libs)
                for name, _ in libs[k:] + libs[:k]:
                    c = runs[name].cpu
                    per[name].append((runs[name].epoch(o), runs[name].cpu - c))
            for name, _ in libs:
                scale = 200 / args.m * 1e3
                times[name].append(statistics.median(t for t, _ in per[name]) * scale)
                cpus[name].append(statistics.median(c for _, c in per[name]) * scale)
                finals[name] = runs[name].state()
        ref = libs[0][0]
        for name, _ in libs:
            same = all(torch.equal(a, b) for a, b in zip(finals[ref], finals[name]))
            if not same:
                what = ["params", "m", "v", "stats", "active", "failed", "failval"]
                diff = [f"{w}: {int((a != b).sum())} differ, max {float((a.double() - b.double()).abs().max()):.3g}"
                        for w, a, b in zip(what, finals[ref], finals[name]) if not torch.equal(a, b)]
                print("   ", name, "; ".join(diff))
            print(f"threads={threads} {name}: median {statistics.median(times[name]):.2f} ms/model-run "
                  f"(rounds {', '.join(f'{v:.2f}' for v in times[name])}); CPU median {statistics.median(cpus[name]):.2f} "
                  f"(rounds {', '.join(f'{v:.2f}' for v in cpus[name])}) bits equal to {os.path.basename(os.path.dirname(ref)) or ref}: {same}",
                  flush=True)
        print(f"  load now {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
