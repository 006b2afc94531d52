"""The thread rule (``reglab.threads``) on an idle and on a busy machine.

Workloads, each for a fixed number of epochs:
- ``p6 fit``: the lecture's program 6 (five Dense(32) layers with L2 and L1 activity, a sigmoid
  output) trained alone with ``reglab.fit``, as the lecture does (its 200 epochs, batch 20);
- ``p6 x20``: the same model over 20 seeds in one ``fit_many`` group, as the study runner trains
  it (100 epochs);
- ``cnn fit``: the digits CNN of ``studies/digits_cnn`` alone (10 epochs, batch 64, autograd);
- ``cnn x20``: that CNN over 20 seeds in one ``fit_many`` group (the vmap path, 5 epochs).

Each is run with the default (``threads=None``: the rule), ``threads=1`` and ``threads=2``, in
interleaved rounds (every setting once per round, the order rotated), 5 rounds, on an idle
machine and with a CPU-bound process (started here) busy on the machine; the median wall time
is reported with its ratio to the best setting of that row. Target: default <= 1.2x the best in
every row.

Each setting runs in a process of its own, started once and warmed up, which the driver asks
for one workload at a time (interleaved as above): a process that switches torch's thread count
back and forth between runs -- as one process measuring all three settings would -- slows down
after a switch, which no user's process does, and it made two columns of one setting differ by
up to 1.75x in earlier runs of this benchmark. (The default's process still switches whenever
the rule picks another count than torch's 2: that is the default's own cost.)

    python benchmarks/bench_threads.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import reglab
from reglab.losses import SparseCategoricalCrossentropy

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies" / "digits_cnn"))
from models import build as cnn  # noqa: E402  (the study's own builder)


def p6() -> nn.Module:
    layers, d = [], 2
    for _ in range(5):
        layers.append(reglab.Dense(d, 32, activation="relu", kernel_regularizer=reglab.L2(1e-3),
                                   bias_regularizer=reglab.L2(1e-3), activity_regularizer=reglab.L1(1e-3)))
        d = 32
    layers.append(reglab.Dense(32, 1, activation="sigmoid", kernel_regularizer=reglab.L2(1e-3),
                               bias_regularizer=reglab.L2(1e-3)))
    return nn.Sequential(*layers)


def workloads():
    ds = reglab.datasets.blobs(random_state=0)
    from sklearn.datasets import load_digits

    xd, yd = load_digits(return_X_y=True)
    xd = ((xd - xd.mean(0)) / (xd.std(0) + 1e-9)).astype("float32")
    xd, yd = xd[:1437], yd[:1437]
    sce = SparseCategoricalCrossentropy(from_logits=True)
    common = dict(progress=False, metrics=())
    return {
        "p6 fit": lambda t: reglab.fit(p6(), ds.x_train, ds.y_train, loss="binary_crossentropy", epochs=200,
                                       batch_size=20, seed=0, threads=t, **common),
        "p6 x20": lambda t: reglab.fit_many(p6, ds.x_train, ds.y_train, seeds=range(20), loss="binary_crossentropy",
                                            epochs=100, batch_size=20, threads=t, **common),
        "cnn fit": lambda t: reglab.fit(cnn((64,), 10), xd, yd, loss=sce, epochs=10, batch_size=64, seed=0, threads=t,
                                        **common),
        "cnn x20": lambda t: reglab.fit_many(lambda: cnn((64,), 10), xd, yd, seeds=range(20), loss=sce, epochs=5,
                                             batch_size=64, threads=t, **common),
    }


SETTINGS = [None, 1, 2]


class Worker:
    """A process that runs the workloads at one setting (``--worker``), on request."""

    def __init__(self, setting: int | None):
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", str(setting)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        assert self.ask("ready") == "ready"

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        return self.proc.stdout.readline().strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def serve(setting: int | None) -> None:
    """The worker's loop: ``run NAME`` -> seconds, ``pick NAME`` -> the rule's count, ``ready``."""
    if setting is not None:
        torch.set_num_threads(setting)  # the process's own setting: never switched
    cases = workloads()
    for fn in cases.values():
        fn(setting)  # warm-up (imports, first optimizer, caches)
    for line in sys.stdin:
        cmd, _, name = line.strip().partition(" ")
        if cmd == "ready":
            out = "ready"
        elif cmd == "pick":
            out = str(pick(name, cases[name]))
        else:
            t0 = time.perf_counter()
            cases[name](setting)
            out = f"{time.perf_counter() - t0:.6f}"
        print(out, flush=True)


def measure(workers: dict, names: list[str], rounds: int) -> dict[str, dict[str, float]]:
    times: dict[str, dict[str, list[float]]] = {n: {str(s): [] for s in SETTINGS} for n in names}
    for r in range(rounds):
        for name in names:
            order = SETTINGS[r % 3:] + SETTINGS[:r % 3]
            for s in order:
                times[name][str(s)].append(float(workers[s].ask(f"run {name}")))
    return {n: {s: statistics.median(v) for s, v in d.items()} for n, d in times.items()}


def pick(name: str, fn) -> int:
    """The thread count the rule gives a workload now: fit_many records it; for fit, the rule is
    asked directly with fit's arguments (its model, one example, its batch size)."""
    if "x20" in name:
        return fn(None).threads
    if name == "p6 fit":
        return reglab.threads.decide(None, p6(), torch.zeros(1, 2), 20)
    return reglab.threads.decide(None, cnn((64,), 10), torch.zeros(1, 64), 64)


def busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        return serve(None if args.worker == "None" else int(args.worker))
    names = list(workloads())
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"machine: {cpu}, {os.cpu_count()} logical cores, usable {reglab.threads.usable_cores()}; "
          f"torch {torch.__version__}, default intra-op threads {torch.get_num_threads()}; "
          f"W_PAR = {reglab.threads.PARALLEL_WORK:.0e} flop/step; one process per setting")
    workers = {s: Worker(s) for s in SETTINGS}
    rows = []
    try:
        for load in ("idle", "busy"):
            spin = busy() if load == "busy" else None
            try:
                if spin is not None:
                    time.sleep(1.0)
                picks = {n: int(workers[None].ask(f"pick {n}")) for n in names}
                med = measure(workers, names, args.rounds)
            finally:
                if spin is not None:
                    spin.kill()
                    spin.wait()
            for n, m in med.items():
                best = min(m.values())
                rows.append((load, n, m["None"], m["1"], m["2"], m["None"] / best, picks[n], m[str(picks[n])] / best))
    finally:
        for w in workers.values():
            w.close()
    print("\n| load | workload | default (s) | threads=1 (s) | threads=2 (s) | default / best | rule picked "
          "| picked setting / best |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for load, n, d, one, two, ratio, chosen, pratio in rows:
        print(f"| {load} | {n} | {d:.2f} | {one:.2f} | {two:.2f} | {ratio:.2f}x | {chosen} | {pratio:.2f}x |")
    worst = max(r[5] for r in rows)
    print(f"\nworst default/best: {worst:.2f}x (target <= 1.2x): {'met' if worst <= 1.2 else 'NOT met'}; "
          f"worst picked setting/best: {max(r[7] for r in rows):.2f}x (the same thread count measured as its "
          "own column: the spread between two columns of one setting is this machine's noise)")


if __name__ == "__main__":
    main()
