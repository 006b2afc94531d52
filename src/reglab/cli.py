"""The ``reglab`` command: run experiment files, report on results, list experiments, trace a path."""

from __future__ import annotations

import glob
import json
import os
import platform
import sys
import time
from pathlib import Path

import click

from . import __version__


def _environment() -> dict[str, str]:
    import numpy
    import scipy
    import sklearn
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"reglab": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
            "cpu": f"{cpu}, {os.cpu_count()} logical cores", "torch threads": str(torch.get_num_threads()),
            "platform": platform.platform()}


def _files(paths: tuple[str, ...]) -> list[str]:
    files: list[str] = []
    for p in paths or ("experiments",):
        if os.path.isdir(p):
            files.extend(sorted(glob.glob(os.path.join(p, "*.toml"))))
        else:
            files.append(p)
    if not files:
        raise click.UsageError(f"no experiment files found in {list(paths) or ['experiments']}")
    return files


def _load(paths):
    from .experiments.schema import ConfigError, load_experiments

    try:
        return load_experiments(_files(paths))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _meta_update(out: Path, **kw) -> dict:
    from .experiments.runner import write_json

    p = out / "study.json"
    meta = json.loads(p.read_text()) if p.is_file() else {}
    meta.update(kw)
    meta["environment"] = _environment()
    write_json(p, meta)
    return meta


@click.group()
@click.version_option(__version__, prog_name="reglab")
@click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice).")
def main(threads: int | None) -> None:
    """Regularize PyTorch models the Keras way, and measure what regularization does."""
    from .training.engine import keep_flushing_denormals

    keep_flushing_denormals()  # see reglab.training.engine._FlushDenormals
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@main.command("list")
@click.argument("paths", nargs=-1)
def list_cmd(paths: tuple[str, ...]) -> None:
    """List experiment files (default: experiments/) and what they contain."""
    for s in _load(paths):
        sch = s.schedule
        regs = sorted({f"{k.split('_')[0]}:{v['class_name']}" for layer in s.config["model"]["layers"]
                       for k, v in layer.items() if k.endswith(("regularizer", "constraint"))})
        extra = [f"dropout {layer['dropout']}" for layer in s.config["model"]["layers"] if layer.get("dropout")][:1]
        if isinstance(s.config["train"]["loss"], dict):
            extra.append(f"regularized loss R={s.config['train']['loss']['strength']}")
        if "early_stopping" in s.config["train"]:
            extra.append("early stopping")
        if s.config["train"]["optimizer"].get("weight_decay"):
            extra.append(f"{s.config['train']['optimizer']['name']} weight_decay {s.config['train']['optimizer']['weight_decay']}")
        arch = "-".join(str(layer["units"]) for layer in s.config["model"]["layers"])
        prog = f"program {s.program}" if s.program else "extra"
        click.echo(f"{s.name:24s} {prog:10s} {s.config['data']['name']}, {arch}, {sch['optimizer']} lr {sch['learning_rate']:g}, "
                   f"{sch['epochs']} epochs, batch {sch['batch_size']}, {s.seeds} seeds")
        click.echo(f"{'':24s} {s.title}")
        click.echo(f"{'':24s} {', '.join(regs + extra) or 'no regularization'}")


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--seeds", type=int, default=None, help="Seeds per experiment (default: each file's `seeds`).")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also train the unregularized baseline of each schedule.")
@click.option("--workers", type=int, default=min(2, os.cpu_count() or 1), show_default=True,
              help="Processes training experiment groups at once.")
@click.option("--progress/--no-progress", default=True)
def run(paths, seeds, out, baselines, workers, progress) -> None:
    """Train experiment files over seeds; resumes, skipping finished runs."""
    from .experiments.runner import execute, plan_units

    if seeds is not None and seeds <= 0:
        raise click.BadParameter(f"must be positive; got {seeds}", param_hint="--seeds")
    specs = _load(paths)
    units = plan_units(specs, seeds, baselines)
    out_p = Path(out)
    t0 = time.perf_counter()
    info = execute(units, out_p, progress=progress, workers=workers)
    _meta_update(out_p, wall_seconds=time.perf_counter() - t0, trained=info["trained"], skipped=info["skipped"])
    click.echo(f"{info['trained']} runs trained, {info['skipped']} already done ({info['seconds']:.1f} s); results in {out_p}/runs")


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False), default="results")
def report(out) -> None:
    """Write report.html and report.md from finished runs in OUT."""
    from .report.render import write_report

    try:
        paths = write_report(out)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"report: {paths['html']}  (and {paths['markdown']})")


def _strength_list(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers; got {text!r}", param_hint="--strengths") from None
    if not vals or any(v < 0 for v in vals):
        raise click.BadParameter(f"expected non-negative numbers; got {text!r}", param_hint="--strengths")
    return vals


@main.command()
@click.argument("path", type=click.Path())
@click.option("--strengths", default="0,1e-5,1e-4,3e-4,1e-3,3e-3,1e-2,1e-1", show_default=True)
@click.option("--seeds", type=int, default=10, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
def path(path, strengths, seeds, out) -> None:
    """Regularization path of one experiment: every strength replaced by each value of --strengths."""
    from .experiments.path import regularization_path

    spec = _load((path,))[0]
    try:
        doc = regularization_path(spec, _strength_list(strengths), range(seeds), out=out)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(doc["verdict"])


@main.command()
@click.option("--experiments", "exp_dir", default="experiments", show_default=True)
@click.option("--seeds", type=int, default=20, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
@click.option("--path-seeds", type=int, default=10, show_default=True)
@click.option("--workers", type=int, default=min(2, os.cpu_count() or 1), show_default=True,
              help="Processes training experiment groups at once.")
@click.option("--progress/--no-progress", default=True)
def study(exp_dir, seeds, out, path_seeds, workers, progress) -> None:
    """The main job: every experiment x seeds, the autoencoder, the regularization path, the report."""
    from .experiments.autoencoder import run_autoencoder
    from .experiments.path import regularization_path
    from .experiments.runner import execute, plan_units
    from .report.render import write_report

    t0 = time.perf_counter()
    specs = _load((exp_dir,))
    out_p = Path(out)
    by_name = {s.name: s for s in specs}
    side = []
    if not (out_p / "path.json").is_file() and "p6_all_together" in by_name:
        side.append((regularization_path, (by_name["p6_all_together"], [0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2],
                                           list(range(path_seeds)), out_p)))
    if not (out_p / "autoencoder.json").is_file():
        side.append((run_autoencoder, (out_p,)))
    info = execute(plan_units(specs, seeds), out_p, progress=progress, workers=workers, side_tasks=side)
    click.echo(f"experiments: {info['trained']} runs trained, {info['skipped']} reused; "
               f"{len(side)} side task(s) (regularization path, autoencoder); {info['seconds']:.1f} s")
    _meta_update(out_p, wall_seconds=time.perf_counter() - t0, trained=info["trained"], skipped=info["skipped"],
                 seeds=seeds)
    paths = write_report(out_p)
    click.echo(f"study done in {time.perf_counter() - t0:.1f} s")
    click.echo(f"report: {Path(paths['html']).resolve()}")
    click.echo(f"        {Path(paths['markdown']).resolve()}")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
