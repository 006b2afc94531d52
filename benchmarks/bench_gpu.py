"""A study on the GPU against the CPU, and ``fit_many``'s per-model time on each (issue 27).

Two measurements, each on the CPU and, where torch sees one, on the GPU, in one run:

1. the wall time of ``reglab run`` over a small CNN study (the digits CNN of
   ``studies/digits_cnn``, 2 files x SEEDS seeds, with their baselines), from a fresh output
   folder, ``--device cpu`` then ``--device cuda``;
2. the per-model time of ``fit_many`` on the lecture's MLP (5 x Dense(32), 200 examples, batch
   20) at M = 1, 64 and 1024 models, on each device (the median of ``--rounds`` runs).

Without a GPU it measures the CPU and says so. The figures go to stdout as a Markdown table
for ``benchmarks/RESULTS.md``; run it where a GPU is lent (the ``device`` tool):

    python benchmarks/bench_gpu.py [--epochs 3] [--seeds 4] [--rounds 3] [--sizes 1,64,1024]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import reglab
from reglab.devices import cpu_name

ROOT = Path(__file__).resolve().parents[1]
CNN = """
name = "{name}"
seeds = {seeds}
[data]
name = "sklearn.digits"
standardize = true
[split]
validation = 0.2
test = 0.2
[model]
builder = "{models}:build"
args = {{channels = 8, hidden = 32, dropout = {dropout}}}
[train]
loss = {{name = "sparse_categorical_crossentropy", from_logits = true}}
epochs = {epochs}
batch_size = 64
[regularize]
params = {{"@kernels" = {{name = "L2", l2 = {l2}}}}}
[baseline]
args = {{dropout = 0.0}}
"""


def study_wall(device: str, epochs: int, seeds: int) -> float:
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        models = ROOT / "studies" / "digits_cnn" / "models.py"
        files = []
        for i, (dropout, l2) in enumerate([(0.2, 1e-4), (0.0, 1e-3)]):
            p = d / f"cnn{i}.toml"
            p.write_text(CNN.format(name=f"cnn{i}", seeds=seeds, models=models, dropout=dropout, l2=l2, epochs=epochs))
            files.append(str(p))
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "reglab.cli", "run", *files, "--out", str(d / "out"), "--no-progress",
                        "--workers", "1", "--device", device], check=True, capture_output=True, text=True)
        return time.perf_counter() - t0


def per_model(device: str, m: int, rounds: int) -> float:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)

    def build():
        return reglab.models.mlp(2, [{"units": 32, "activation": "relu"}] * 5 + [{"units": 1, "activation": "sigmoid"}])

    times = []
    for r in range(rounds + 1):  # the first round warms up (imports, kernels, a CUDA context): not timed
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        reglab.fit_many(build, x, y, seeds=list(range(m)), loss="binary_crossentropy", epochs=5, batch_size=20,
                        device=device, progress=False)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if r:
            times.append((time.perf_counter() - t0) / m)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="1,64,1024")
    a = ap.parse_args()
    devs = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "GPU: not measured, no device lent"
    print(f"# torch {torch.__version__}; CPU: {cpu_name()}; {gpu}\n")
    print("| measurement | " + " | ".join(devs) + (" | GPU speed-up |" if len(devs) > 1 else " |"))
    print("|---|" + "---|" * (len(devs) + (len(devs) > 1)))
    walls = [study_wall(d, a.epochs, a.seeds) for d in devs]
    print(f"| CNN study, 2 files x {a.seeds} seeds + baselines, {a.epochs} epochs: wall s | " +
          " | ".join(f"{w:.1f}" for w in walls) + (f" | {walls[0] / walls[1]:.2f}x |" if len(walls) > 1 else " |"))
    for m in (int(s) for s in a.sizes.split(",")):
        ts = [per_model(d, m, a.rounds) for d in devs]
        print(f"| fit_many, lecture MLP, 5 epochs, M = {m}: ms per model | " + " | ".join(f"{1e3 * t:.2f}" for t in ts) +
              (f" | {ts[0] / ts[1]:.2f}x |" if len(ts) > 1 else " |"))


if __name__ == "__main__":
    main()
