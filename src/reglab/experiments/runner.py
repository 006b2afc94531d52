"""Run experiments as independent, resumable units (experiment x seed).

A *unit* is one model: an experiment's validated config trained from one seed. The seed sets the
data draw and train/test split, the initialization and the shuffling. Its ``run_id`` hashes the
validated config, the seed and the reglab version, so an edited config reruns and an unchanged
one is never recomputed. Each finished unit is written atomically to
``<out>/runs/<experiment>/<run_id>.json`` (+ ``.npz`` arrays); a missing or truncated file means
"not done". ``execute`` groups pending units of one experiment into one vectorized ``fit_many``
run; ``run_unit`` runs a single unit the same way -- the entry point for an external scheduler
(e.g. one Ray task per unit).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__
from .. import datasets as _datasets
from ..diagnostics.evaluate import accuracy, log_loss, predict
from ..diagnostics.overfitting import overfitting
from ..diagnostics.sparsity import sparsity
from ..vectorized.fit_many import fit_many
from .build import builder, early_stopping, loss_of
from .schema import ExperimentSpec

__all__ = ["Unit", "plan_units", "execute", "run_unit", "load_results", "load_model", "FRESH_SAMPLES", "write_json"]

FRESH_SAMPLES = 100_000
FRESH_SEED = 1_000_003
GRID = 120  # decision-boundary grid resolution


@dataclass(frozen=True)
class Unit:
    spec: ExperimentSpec
    seed: int

    @property
    def run_id(self) -> str:
        key = json.dumps({"config": self.spec.digest(), "seed": self.seed, "version": __version__}, sort_keys=True)
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def path(self, out: Path) -> Path:
        return Path(out) / "runs" / self.spec.name / f"{self.run_id}.json"

    def done(self, out: Path) -> bool:
        p = self.path(out)
        if not p.is_file():
            return False
        try:
            return "metrics" in json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return False  # truncated or corrupt: redo


def plan_units(specs: Sequence[ExperimentSpec], seeds: int | None = None, baselines: bool = True) -> list[Unit]:
    """Every experiment x seed, plus one unregularized baseline per distinct schedule (and data)."""
    all_specs: list[ExperimentSpec] = []
    seen: set[str] = set()
    for s in specs:
        if baselines and not s.is_baseline:
            b = s.baseline()
            if b.name not in seen and b.name not in {x.name for x in specs}:
                seen.add(b.name)
                all_specs.append(b)
        all_specs.append(s)
    units = []
    for s in all_specs:
        n = seeds if seeds is not None else s.seeds
        units.extend(Unit(s, seed) for seed in range(n))
    return units


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


_FRESH: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}


def _fresh(ds: _datasets.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    dist = ds.distribution
    if dist is None:
        return None
    key = repr(dist)
    if key not in _FRESH:
        x, y = dist.sample(FRESH_SAMPLES, FRESH_SEED)
        _FRESH[key] = (x, y, dist.posterior(x))
    return _FRESH[key]


def evaluate_run(spec: ExperimentSpec, model: torch.nn.Module, ds: _datasets.Dataset, history,
                 arrays_for_report: bool = True) -> tuple[dict, dict]:
    """Metrics of one trained model (test split, fresh sample, Bayes) and, if asked, the arrays the
    report draws (decision-boundary grid, training data)."""
    metrics: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    last = {k: float(v[-1]) for k, v in history.history.items()} if len(history) else {}
    p_test = predict(model, ds.x_test).astype(np.float64)
    binary = p_test.ndim == 2 and p_test.shape[1] == 1
    if binary:
        y = ds.y_test.reshape(-1).astype(np.float64)
        p = p_test.reshape(-1)
        metrics["test_log_loss"] = log_loss(y, p)
        metrics["test_accuracy"] = accuracy(y, p)
        metrics["test_correct"] = int(round(metrics["test_accuracy"] * y.size))
        metrics["n_test"] = int(y.size)
        dist = ds.distribution
        if dist is not None:
            q = dist.posterior(ds.x_test)
            metrics["bayes_test_log_loss"] = log_loss(y, q)
            metrics["bayes_test_accuracy"] = accuracy(y, q)
            metrics["excess_log_loss_test"] = metrics["test_log_loss"] - metrics["bayes_test_log_loss"]
            fx, fy, fq = _fresh(ds)
            fp = predict(model, fx).astype(np.float64).reshape(-1)
            metrics["fresh_log_loss"] = log_loss(fy, fp)
            metrics["fresh_accuracy"] = accuracy(fy, fp)
            metrics["fresh_bayes_log_loss"] = log_loss(fy, fq)
            metrics["fresh_bayes_accuracy"] = accuracy(fy, fq)
            metrics["excess_log_loss"] = metrics["fresh_log_loss"] - metrics["fresh_bayes_log_loss"]
            metrics["excess_accuracy"] = metrics["fresh_accuracy"] - metrics["fresh_bayes_accuracy"]
    if binary and arrays_for_report:
        # decision boundary on a grid around the data
        lo = np.minimum(ds.x_train.min(0), ds.x_test.min(0)) - 0.3
        hi = np.maximum(ds.x_train.max(0), ds.x_test.max(0)) + 0.3
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], GRID), np.linspace(lo[1], hi[1], GRID))
        grid = np.column_stack([gx.ravel(), gy.ravel()])
        arrays["grid_x"], arrays["grid_y"] = gx, gy
        arrays["grid_p"] = predict(model, grid).reshape(GRID, GRID).astype(np.float32)
        if ds.distribution is not None:
            arrays["grid_bayes"] = ds.distribution.posterior(grid).reshape(GRID, GRID).astype(np.float32)
        arrays["x_train"], arrays["y_train"] = ds.x_train, ds.y_train
    metrics["val_data_loss"] = last.get("val_data_loss", float("nan"))
    metrics["val_accuracy"] = last.get("val_accuracy", float("nan"))
    metrics["val_loss"] = last.get("val_loss", float("nan"))
    metrics["train_data_loss"] = last.get("data_loss", float("nan"))
    metrics["epochs_run"] = len(history)
    analysis = spec.config.get("analysis", {})
    extra: dict[str, Any] = {}
    if len(history) and "val_data_loss" in history:
        extra["overfitting"] = overfitting(history).to_dict()
    layers = analysis.get("sparsity_layers")
    if layers:
        extra["sparsity"] = sparsity(model, ds.x_test, layers)
    if analysis.get("weight_histograms"):
        extra["weights"] = {n: np.abs(p.detach().cpu().numpy()).ravel().tolist()
                            for n, p in model.named_parameters() if n.endswith("weight")}
    return {"metrics": metrics, **extra}, arrays


def train_group(spec: ExperimentSpec, seeds: Sequence[int], out: Path, progress: bool = False) -> list[dict]:
    """Train the units (spec, seed) for ``seeds`` together and write their results."""
    t0 = time.perf_counter()
    data = [_datasets.get(spec.config["data"]["name"], random_state=s,
                          **{k: v for k, v in spec.config["data"].items() if k != "name"}) for s in seeds]
    tr = spec.config["train"]
    res = fit_many(builder(spec, data[0].x_train.shape[1]), [d.x_train for d in data], [d.y_train for d in data],
                   seeds=list(seeds), loss=loss_of(spec), optimizer=tr["optimizer"], epochs=tr["epochs"],
                   batch_size=tr["batch_size"], validation_data=([d.x_test for d in data], [d.y_test for d in data]),
                   callbacks=early_stopping(spec), progress=progress)
    wall = time.perf_counter() - t0
    out_rows = []
    for i, seed in enumerate(seeds):
        unit = Unit(spec, seed)
        # the report draws seed 0's decision boundary only
        result, arrays = evaluate_run(spec, res.models[i], data[i], res.histories[i], arrays_for_report=seed == 0)
        row = {"run_id": unit.run_id, "experiment": spec.name, "seed": seed, "version": __version__,
               "config": spec.config, "digest": spec.digest(), "history": res.histories[i].to_dict(),
               "failed": res.failed.get(i), "group_wall_time": wall, "group_size": len(seeds), **result}
        path = unit.path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        if arrays:
            _write_npz(path.with_suffix(".npz"), **arrays)
        torch.save(res.models[i].state_dict(), path.with_suffix(".pt"))
        write_json(path, row)  # last: its presence marks the unit done
        out_rows.append(row)
    return out_rows


def _group_cost(spec: ExperimentSpec, n: int) -> float:
    t = spec.config["train"]
    return t["epochs"] * (1.0 + 300 / t["batch_size"]) * (1 + n / 100)  # steps dominate; M adds little


def _train_group_task(config: dict, path: str, seeds: list[int], out: str, threads: int) -> int:
    """Process-pool entry point (picklable arguments only)."""
    from ..training.engine import keep_flushing_denormals

    keep_flushing_denormals()
    torch.set_num_threads(threads)
    train_group(ExperimentSpec(config, path), seeds, Path(out))
    return len(seeds)


def execute(units: Iterable[Unit], out: str | Path, progress: bool = True,
            on_group_done: Callable[[ExperimentSpec, list[int]], None] | None = None,
            workers: int = 1, side_tasks: Sequence[tuple[Callable[..., Any], tuple]] = ()) -> dict[str, Any]:
    """Run the pending units, grouped per experiment; finished units are skipped (resume).

    With ``workers > 1`` groups run in that many processes at once (each single-threaded): a
    group of small models is bound by per-step overhead, not arithmetic, so two cores train two
    groups in the time of one. ``side_tasks`` (picklable ``(function, args)``, e.g. the
    regularization path) run in the same pool, first; their results are returned in ``"side"``.
    """
    out = Path(out)
    units = list(units)
    pending: dict[str, list[Unit]] = {}
    skipped = 0
    for u in units:
        if u.done(out):
            skipped += 1
        else:
            pending.setdefault(u.spec.name, []).append(u)
    from tqdm.auto import tqdm
    import sys

    bar = tqdm(total=sum(len(v) for v in pending.values()), desc="study", unit="run",
               disable=not progress or not sys.stderr.isatty())
    trained = 0
    t0 = time.perf_counter()
    groups = sorted(pending.values(), key=lambda us: -_group_cost(us[0].spec, len(us)))
    side: list[Any] = []
    if workers > 1 and len(groups) + len(side_tasks) > 1:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
            side_futs = [pool.submit(_side_task, fn, args) for fn, args in side_tasks]
            futs = {pool.submit(_train_group_task, us[0].spec.config, us[0].spec.path, [u.seed for u in us], str(out),
                                1): us for us in groups}
            for fut in cf.as_completed(futs):
                us = futs[fut]
                trained += fut.result()  # re-raises a worker's error; finished groups stay written
                bar.update(len(us))
                if on_group_done is not None:
                    on_group_done(us[0].spec, [u.seed for u in us])
            side = [f.result() for f in side_futs]
    else:
        side = [fn(*args) for fn, args in side_tasks]
        for us in groups:
            bar.set_postfix_str(us[0].spec.name)
            seeds = [u.seed for u in us]
            train_group(us[0].spec, seeds, out)
            trained += len(us)
            bar.update(len(us))
            if on_group_done is not None:
                on_group_done(us[0].spec, seeds)
    bar.close()
    return {"trained": trained, "skipped": skipped, "seconds": time.perf_counter() - t0, "side": side}


def _side_task(fn: Callable[..., Any], args: tuple) -> Any:
    from ..training.engine import keep_flushing_denormals

    keep_flushing_denormals()
    torch.set_num_threads(1)
    return fn(*args)


def run_unit(unit: Unit, out: str | Path) -> dict:
    """Run one unit on its own (what a distributed executor would call per task)."""
    out = Path(out)
    if unit.done(out):
        return json.loads(unit.path(out).read_text())
    return train_group(unit.spec, [unit.seed], out)[0]


def load_results(out: str | Path) -> list[dict]:
    """Every finished run under ``out/runs`` (corrupt files are skipped, never half-read)."""
    rows = []
    for p in sorted(Path(out).glob("runs/*/*.json")):
        try:
            row = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if "metrics" in row:
            row["_path"] = str(p)
            rows.append(row)
    return rows


def load_model(run: str | Path | dict) -> torch.nn.Module:
    """Rebuild the trained model of a finished run from its JSON (config) and ``.pt`` (state_dict),
    loaded with ``weights_only=True`` -- nothing is unpickled."""
    path = Path(run["_path"]) if isinstance(run, dict) else Path(run)
    row = run if isinstance(run, dict) else json.loads(path.read_text())
    spec = ExperimentSpec(row["config"], str(path))
    n_in = int(np.asarray(_datasets.get(spec.config["data"]["name"], random_state=0,
                                        **{k: v for k, v in spec.config["data"].items() if k != "name"}).x_train).shape[1])
    out = builder(spec, n_in)()
    model = out[0] if isinstance(out, tuple) else out
    model.load_state_dict(torch.load(path.with_suffix(".pt"), weights_only=True))
    return model
