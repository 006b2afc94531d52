"""The study runner on Ray vs locally, on this machine, at equal cores.

The study: 8 experiment files (the lecture's MLP, 3 Dense(32) layers, L2 at 8 strengths, 100
epochs on the blobs) x 12 seeds, plus their shared baseline: 108 units in 9 groups (= 9 tasks).
It is trained three times from scratch, in a fresh output folder each, alternating:
- ``local``: ``execute(workers=N)`` (this process and N-1 helpers, one thread each; the helpers
  pre-started as the CLI does, and no Ray running meanwhile);
- ``ray``: ``execute(backend="ray")`` on a local Ray started with ``num_cpus=N`` for the round
  (1 CPU, 1 thread per task), its N workers warmed as the local helpers are (imports, a first
  optimizer); ``ray.init`` and that warm-up are shown apart, not in the wall (a cluster is up
  and its workers warm before a study is sent to it).

Reported: median wall time, models per second, Ray's ratio (target <= 1.15x), and Ray's per-task
overhead: the round trip of 200 empty tasks through the same ``RayPool``.

    python benchmarks/bench_ray.py [--cores 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

EXPERIMENT = """
name = "l2_{i}"
seeds = 12
[data]
name = "blobs"
[train]
loss = "binary_crossentropy"
optimizer = {{name = "adam", learning_rate = 0.001}}
epochs = 100
batch_size = 20
{layers}
"""
LAYER = """[[model.layers]]
units = {units}
activation = "{act}"
kernel_regularizer = {{name = "L2", l2 = {l2}}}
"""


def study(folder: Path) -> list[Path]:
    files = []
    for i, l2 in enumerate([1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]):
        layers = "".join(LAYER.format(units=32, act="relu", l2=l2) for _ in range(3))
        layers += LAYER.format(units=1, act="sigmoid", l2=l2)
        p = folder / f"l2_{i}.toml"
        p.write_text(EXPERIMENT.format(i=i, layers=layers))
        files.append(p)
    return files


def _noop() -> None:
    return None


def _warm() -> None:
    """What a local helper does when pre-started (imports, a first optimizer), then holds its
    worker a moment so that each of the N tasks gets its own."""
    from reglab.experiments.helpers import _warm_up

    _warm_up()
    time.sleep(1.0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import ray
    import torch

    from reglab.experiments.helpers import prestart
    from reglab.experiments.ray_backend import RayPool
    from reglab.experiments.runner import execute, plan_units
    from reglab.experiments.schema import load_experiments

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    files = study(root)
    units = plan_units(load_experiments([str(f) for f in files]))
    n_units = len(units)
    def start_ray() -> float:
        t0 = time.perf_counter()
        ray.init(address="local", num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
        return time.perf_counter() - t0

    ray_starts = [start_ray()]
    pool = RayPool()  # the running instance
    pool.submit(_noop).result()  # a worker up
    t0 = time.perf_counter()
    futs = [pool.submit(_noop) for _ in range(200)]
    for f in futs:
        f.result()
    per_task = (time.perf_counter() - t0) / 200
    ray.shutdown()
    times: dict[str, list[float]] = {"local": [], "ray": []}
    warm_ups: list[float] = []
    tasks = None
    for r in range(args.rounds):
        for backend in ("local", "ray"):
            out = root / f"out_{backend}_{r}"
            if backend == "local":  # no Ray running meanwhile
                prestart(args.cores - 1)  # as the CLI does while it loads the experiments
                time.sleep(8)
            else:
                ray_starts.append(start_ray())
                t_w = time.perf_counter()
                for f in [RayPool().submit(_warm) for _ in range(args.cores)]:
                    f.result()
                warm_ups.append(time.perf_counter() - t_w)
            t0 = time.perf_counter()
            info = execute(units, out, progress=False, workers=args.cores, backend=backend)
            times[backend].append(time.perf_counter() - t0)
            assert info["trained"] == n_units, info
            if backend == "ray":
                tasks = sum(info["where"].values())
                ray.shutdown()
    loc, ry = statistics.median(times["local"]), statistics.median(times["ray"])
    cpu = "?"
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"machine: {cpu}, {os.cpu_count()} logical cores; {args.cores} cores used by both; ray {ray.__version__}")
    print(f"study: {n_units} units in {tasks} tasks; {args.rounds} rounds, alternating")
    print(f"\n| backend | wall (s, median) | all rounds (s) | models/s |")
    print("|---|---:|---|---:|")
    for name, med in (("local", loc), ("ray", ry)):
        print(f"| {name} | {med:.2f} | {', '.join(f'{t:.2f}' for t in times[name])} | {n_units / med:.1f} |")
    print(f"\nray / local: {ry / loc:.2f}x (target <= 1.15x): {'met' if ry / loc <= 1.15 else 'NOT met'}")
    print(f"Ray start-up (ray.init, local, {args.cores} CPUs): median {statistics.median(ray_starts):.1f} s, not in "
          "the walls above (nor is the helpers' start-up, overlapped with loading the study as the CLI does)")
    print(f"Ray workers' warm-up ({args.cores} at once: imports, first optimizer): median "
          f"{statistics.median(warm_ups):.1f} s, not in the walls above")
    print(f"per-task overhead (empty task round trip through RayPool, 200 tasks): {per_task * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
