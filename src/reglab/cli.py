"""The ``reglab`` command: run experiment files, report on results, list experiments, trace a path."""

from __future__ import annotations

import json
import os
import platform
import signal
import sys
import time
from pathlib import Path

import click

from ._version import __version__


def _environment() -> dict[str, str]:
    import numpy
    import scipy
    import sklearn
    import torch

    from .devices import cpu_name

    cpu = cpu_name()
    return {"reglab": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "scipy": scipy.__version__, "scikit-learn": sklearn.__version__,
            "cpu": f"{cpu}, {os.cpu_count()} logical cores", "torch threads": str(torch.get_num_threads()),
            "platform": platform.platform()}


def _load(paths):
    from .experiments.schema import ConfigError
    from .experiments.study import load_specs

    try:
        specs = load_specs(paths)
        if not specs:
            raise click.UsageError(f"no experiment files found in {list(paths)}")
        return specs
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _prepare(specs, baselines: bool = True) -> dict:
    """Everything that can fail before training (data, builders, patterns, shapes), for the
    experiments and their baselines: their plans."""
    from .experiments.runner import prepare
    from .experiments.schema import ConfigError

    try:
        return prepare(list(specs) + ([s.baseline() for s in specs] if baselines else []))
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _plan(specs, seeds, baselines: bool = True):
    """``plan_units``, its errors (an experiment equal to its baseline) as the command's."""
    from .experiments.runner import plan_units
    from .experiments.schema import ConfigError

    try:
        return plan_units(specs, seeds, baselines)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None


def _meta_update(out: Path, **kw) -> dict:
    from .experiments.files import write_json

    p = out / "study.json"
    try:
        meta = json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, ValueError):
        meta = {}  # a damaged study.json is rewritten
    meta = meta if isinstance(meta, dict) else {}
    meta.update(kw)
    meta["environment"] = _environment()
    write_json(p, meta)
    return meta


def _check_writable(out: Path) -> None:
    """Fail before training when the output folder cannot be written."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".reglab-write-check-"):
            pass
    except OSError as e:
        raise click.ClickException(f"{out}: the output folder is not writable: {e}") from None


def _start(workers: int = 1) -> None:
    """What a command that trains or reports does first. With more than one worker the helpers
    start now (``helpers.prestart``), before this process imports torch: they import while it
    does and while it loads and checks the experiments. Every training process gets its share of
    the cores (``reglab.threads.per_worker``; ``--threads`` wins), this one before it first uses
    torch: a process that has run torch ops on two threads trains slower (measured 30%) after
    switching to one. Denormals are flushed (``reglab.training.denormals.FlushDenormals``)."""
    from . import threads

    share = threads.explicit() or (threads.per_worker(workers) if workers > 1 else None)
    if workers > 1:
        from .experiments.helpers import prestart

        prestart(workers - 1, share)
    import torch

    from .training.denormals import keep_flushing_denormals

    if share is not None:
        torch.set_num_threads(share)
    keep_flushing_denormals()  # after: it starts torch's thread pool


def _device_option(f):
    """``--device`` (``run``, ``study``, ``path``): over every experiment's ``train.device``."""
    return click.option("--device", default=None, metavar="DEVICE",
                        help='Where to train: "auto" (a GPU where torch sees one), "cpu", "cuda" or "cuda:N"; '
                             "default: each experiment's train.device, else cpu.")(f)


def _place(specs, device: str | None, backend: str = "local", gpus_per_task: float = 0.0):
    """The experiments with their device resolved (``devices.place``), its errors the command's."""
    from .devices import DeviceError
    from .experiments.devices import place

    if gpus_per_task and backend != "ray":
        raise click.UsageError("--gpus-per-task is a Ray task's GPU share: use it with --backend ray "
                               "(locally, --device cuda trains on the GPU)")
    try:
        return place(specs, device, gpus_per_task if backend == "ray" else None)
    except DeviceError as e:
        raise click.ClickException(str(e)) from None


def _backend_options(f):
    """``--backend local|ray``, ``--address`` and ``--gpus-per-task`` (``run`` and ``study``)."""
    f = click.option("--gpus-per-task", type=click.FloatRange(0, 1024), default=0.0, show_default=True,
                     help="With --backend ray: the GPUs each task asks Ray for (0.25: four groups share a GPU); "
                          "the experiments then train on cuda.")(f)
    f = click.option("--address", default=None, metavar="ADDR",
                     help="With --backend ray: the cluster to join ('auto', 'ray://host:port'); default: start a "
                          "local Ray instance for this run. OUT and the study must be on a path every node reaches.")(f)
    return click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                        help="Where groups train: this machine's processes, or Ray tasks (pip install 'reglab[ray]').")(f)


def _tensorboard_option(f):
    """``--tensorboard LOGDIR`` (``run`` and ``study``): also write the results as TensorBoard logs."""
    return click.option("--tensorboard", "tensorboard", type=click.Path(), default=None, metavar="LOGDIR",
                        help="Also write every run as TensorBoard logs in LOGDIR (scalars per epoch, HParams: one "
                             "trial per grid point, one session per seed); pip install 'reglab[tensorboard]'.")(f)


def _check_logdir(logdir: str | None, out: str | None = None) -> None:
    """A LOGDIR the export cannot use is said before anything trains."""
    if logdir is not None and out is not None and Path(logdir).resolve() == Path(out).resolve():
        raise click.ClickException(f"--tensorboard {logdir}: the results folder itself; give the logs a folder of "
                                   "their own (e.g. a subfolder)")
    if logdir is not None:
        from .report.tensorboard import TensorBoardError, check_logdir

        try:
            check_logdir(logdir)
        except TensorBoardError as e:
            raise click.ClickException(str(e)) from None


def _export_tensorboard(out: Path, logdir: str | None) -> None:
    if logdir is not None:
        from .report.tensorboard import export_tensorboard

        try:
            n = export_tensorboard(out, logdir)
        except ValueError as e:  # a LOGDIR it cannot use, no runs, runs of two engines at one point
            raise click.ClickException(str(e)) from None
        click.echo(f"TensorBoard: {n['runs']} runs in {n['trials']} trials written to {logdir} "
                   f"(tensorboard --logdir {logdir})")


def _drop_stale_report(out: Path, changed: bool) -> None:
    """After ``reglab run`` changed the results: remove the report and ``comparisons.csv`` of the
    runs before (they would sit beside the new results.csv, another version's numbers) and say how
    to write them anew."""
    stale = [p for p in (out / "comparisons.csv", out / "report.md", out / "report.html") if p.is_file()]
    if changed and stale:
        for p in stale:
            p.unlink()
        click.echo(f"note: the results changed: removed {', '.join(p.name for p in stale)} of the earlier runs; "
                   f"`reglab report {out}` (with --study DIR for a study's settings) writes them anew", err=True)


def _execute(units, out: Path, **kw) -> dict:
    """``execute`` (its notes on stderr); on Ctrl-C, say what was kept and exit non-zero (130):
    finished runs stay, the interrupted groups wrote nothing and are redone by the next run."""
    from concurrent.futures.process import BrokenProcessPool

    from .experiments.current import CurrentRecordError
    from .experiments.runner import Unit, execute

    units = list(units)
    _check_writable(out)
    if kw.get("address") and kw.get("backend") != "ray":
        raise click.UsageError("--address needs --backend ray")
    if kw.get("backend") == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise click.ClickException("--backend ray needs Ray: pip install 'reglab[ray]'")
    try:
        info = execute(units, out, say=lambda line: click.echo(line, err=True), **kw)
        if "where" in info:
            click.echo("ran on Ray: " + (", ".join(f"{node}: {n} task(s)" for node, n in sorted(info["where"].items()))
                                         or "no task"), err=True)
        return info
    except ValueError as e:
        if type(e).__name__ == "RayBackendError" or isinstance(e, CurrentRecordError):
            raise click.ClickException(str(e)) from None
        raise
    except BrokenProcessPool:
        done = sum(Unit.done(u, out) for u in units)
        raise click.ClickException(f"a helper process died (killed from outside, or by the system when memory ran "
                                   f"out): {done} of {len(units)} runs are finished and kept in {out}/runs, the "
                                   "unfinished ones were not written -- run the same command again (with fewer "
                                   "--workers if memory is short)") from None
    except KeyboardInterrupt as e:
        from .experiments.interrupts import note_helper

        note_helper(e)  # a SIGTERM that reached a helper alone stops this run as a SIGTERM
        _ignore_stops()  # the first is being handled: a second must not cut the clean-up short
        done = sum(Unit.done(u, out) for u in units)
        _stop(f"{_signal_name()}: {done} of {len(units)} runs are finished and kept in {out}/runs; the unfinished "
              "ones were not written -- run the same command again to resume", ray=kw.get("backend") == "ray")


def _ignore_stops() -> None:
    """Ignore further SIGINT and SIGTERM: an interrupt is being handled."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _signal_name() -> str:
    from .experiments.interrupts import received

    return "interrupted" if received() is None else "terminated (SIGTERM)"


def _stop(message: str, ray: bool = False):
    """Say what an interrupt kept and end with its status (130 for Ctrl-C, 143 for SIGTERM)."""
    from .experiments.helpers import started
    from .experiments.interrupts import exit_status

    _ignore_stops()
    click.echo(message, err=True)
    if not ray and started():
        # nothing is left to save: end now, so that the interpreter's shut-down (which, after a
        # Ctrl-C at the helpers' start-up, was seen to end the process by SIGINT, -2, about once
        # in 20 tries) cannot change the exit status; helpers end when they see their parent
        # gone (``helpers._watch_parent``), the system releases the group locks
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_status())
    sys.exit(exit_status())


_phase = ["starting"]  # what the command is doing, for the message of an interrupt


class _Commands(click.Group):
    """The ``reglab`` group: whatever a command is doing, a Ctrl-C or SIGTERM ends it with a
    message and 130/143 (not click's "Aborted!" and 1), a folder of reglab's that is a symlink or
    a file, and a disk that refuses a write (full, read-only), with a one-line error."""

    def invoke(self, ctx):
        from .experiments.files import OutputError, is_disk_error

        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            _stop(f"{_signal_name()} while {_phase[0]}: what had finished is kept, nothing unfinished was written "
                  "(each file is written whole or not at all) -- run the same command again to go on")
        except OutputError as e:
            raise click.ClickException(str(e)) from None
        except OSError as e:
            if not is_disk_error(e):
                raise _in_user_code(e) or e
            raise click.ClickException(
                (f"cannot write {e.filename}: {e.strerror}." if e.filename else f"a write failed: {e.strerror}.") +
                " What had finished is kept; nothing half-written was left (each file is written whole or not at "
                "all) -- free some space or make the folder writable, then run the same command again") from None
        except Exception as e:
            raise _in_user_code(e) or e


def _in_user_code(e: BaseException) -> click.ClickException | None:
    """A one-line error for an exception that came from the user's code while a model trained (a
    forward pass that fails on a later batch): its message and the line of the user's code (in
    ``e`` or its causes), and what was kept. None where no frame of the user's code is in it (a
    fault of reglab's own shows its traceback)."""
    from .experiments.code import UserCodeError, where_in

    kept = ". Finished runs are kept; the group that was training wrote nothing"
    if isinstance(e, UserCodeError):  # said already: file, key, what was raised and where
        return click.ClickException(str(e).strip() + kept)
    for cause in (e, e.__cause__, e.__context__):
        line = where_in(cause) if cause is not None else ""
        if line:
            text = str(e).strip().splitlines()
            return click.ClickException(f"{type(e).__name__}: {text[0] if text else ''}{line}{kept}")
    return None


def _threads_option(f):
    """``--threads N``: before the command (``reglab --threads 2 run ...``) or after it
    (``reglab run ... --threads 2``); the command's own wins."""
    return click.option("--threads", type=click.IntRange(1, 1024), default=None,
                        help="torch intra-op threads of every training process (default: reglab.threads' rule: "
                             "one for small models, never more than the idle cores or a worker's share).")(f)


def _set_threads(threads: int | None) -> None:
    """The explicit thread count for this process and every process it starts (``reglab.threads``);
    ``_start`` sets torch to it."""
    from . import threads as _threads

    _threads.set_explicit(threads)


@click.group(cls=_Commands)
@click.version_option(__version__, prog_name="reglab")
@_threads_option
def main(threads: int | None) -> None:
    """Regularize PyTorch models the Keras way, and measure what regularization does."""
    from .experiments.helpers import skip_final_collection
    from .experiments.interrupts import handle_terminate

    handle_terminate()  # SIGTERM (what schedulers send) stops as Ctrl-C does
    _phase[0] = "starting"
    skip_final_collection()
    _set_threads(threads)  # light: a command that trains imports torch in ``_start``, after any helpers start


def _default_study(what: str) -> str:
    """The study folder ``studies/default`` names (one folder name under ``studies``), as
    ``reglab study`` and ``reglab list`` take it when given no path."""
    pointer = Path("studies") / "default"
    if not pointer.is_file():
        raise click.UsageError(f"give {what}, or run where studies/default names a study")
    name = pointer.read_text().strip()
    if not name or Path(name).name != name or name in (".", ".."):
        raise click.UsageError(f"{pointer}: names {name!r}; it must hold one folder name under studies/")
    return str(Path("studies") / name)


@main.command("list")
@click.argument("paths", nargs=-1)
def list_cmd(paths: tuple[str, ...]) -> None:
    """List experiment files (files, folders or study folders) and what they contain. Without
    PATHS: the study that ``studies/default`` names, as ``reglab study``."""
    for s in _load(paths or (_default_study("PATHS (experiment files, folders or study folders)"),)):
        tr, opt, data = s.train, s.train.optimizer, s.data
        point = ", ".join(f"{k} = {v}" for k, v in s.sweep_point.items())
        on = f", on {tr.device}" if (tr.device or "cpu") != "cpu" else ""
        if opt.get("weight_decay") or opt["name"] == "adamw":
            on += f", weight decay {opt.get('weight_decay', 0.004):g}" + (f" on {opt['decay']}" if "decay" in opt else "")
        if data.transform:
            on += f", transform {data.transform}"
        click.echo(f"{s.name:24s} {data.source}, {s.model.described}, {opt['name']} lr {opt.get('learning_rate', 0.001):g}, "
                   f"{tr.epochs} epochs, batch {tr.batch_size}, {s.seeds} seeds{on}" +
                   (f"  [{point}]" if point else ""))
        click.echo(f"{'':24s} {s.title}")
        plan = _plan_or_error(s)
        click.echo(f"{'':24s} engine: {_engine_line(plan)}")
        labels = _labels_line(plan)
        if labels:
            click.echo(f"{'':24s} labels: {labels}")
        searched = _search_line(s.path)
        if searched:
            click.echo(f"{'':24s} reglab tune searches: {searched}")


def _search_line(path: str) -> str | None:
    """The file's ``[[search]]`` table in words (it was checked when the file loaded)."""
    from .experiments.schema import read_toml
    from .experiments.search_space import search_space

    dims = search_space(read_toml(path), str(path), set())
    return "; ".join(d.describe() + (" (and the baseline's)" if d.baseline else "") for d in dims) or None


def _plan_or_error(spec):
    """The experiment's plan, or the error that stops it (data or model that cannot be read)."""
    from .experiments.plan import plan_of

    try:
        return plan_of(spec)
    except (ValueError, OSError, RuntimeError) as e:
        return e


def _labels_line(plan) -> str | None:
    """``name = 0, ...`` where the data's class labels are strings (encoded in sorted order)."""
    if isinstance(plan, Exception) or not plan.classes:
        return None  # an error is said on the engine line
    return ", ".join(f"{c} = {i}" for i, c in enumerate(plan.classes))


def _engine_line(plan) -> str:
    """``kind (reason)`` of the engine a group of the experiment's seeds trains on (its plan's)."""
    if isinstance(plan, Exception):
        return f"not known ({type(plan).__name__}: {str(plan).splitlines()[0] if str(plan) else ''})"
    return f"{plan.engine.kind} ({plan.engine.reason})"


@main.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("--seeds", type=click.IntRange(1, 10_000), default=None,
              help="Seeds per experiment (default: each file's `seeds`).")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
@click.option("--baselines/--no-baselines", default=True, show_default=True,
              help="Also train each experiment's unregularized baseline.")
@click.option("--workers", type=click.IntRange(1, 64), default=min(2, os.cpu_count() or 1), show_default=True,
              help="Processes training experiment groups at once.")
@click.option("--progress/--no-progress", default=True)
@_backend_options
@_device_option
@_threads_option
@_tensorboard_option
def run(paths, seeds, out, baselines, workers, progress, backend, address, gpus_per_task, device, threads,
        tensorboard) -> None:
    """Train the experiments in PATHS (files, folders, study folders) over seeds; resumes,
    skipping finished runs; writes OUT/results.csv."""
    if threads is not None:
        _set_threads(threads)
    _check_logdir(tensorboard, out)
    _start(workers if backend == "local" else 1)  # first: the helpers start before the imports below
    specs = _place(_load(paths), device, backend, gpus_per_task)
    plans = _prepare(specs, baselines)
    units = _plan(specs, seeds, baselines)
    out_p = Path(out)
    t0 = time.perf_counter()
    before = (out_p / "results.csv").read_bytes() if (out_p / "results.csv").is_file() else None
    info = _execute(units, out_p, progress=progress, workers=workers, backend=backend, address=address,
                    gpus_per_task=gpus_per_task, plans=plans)
    _meta_update(out_p, wall_seconds=time.perf_counter() - t0, trained=info["trained"], skipped=info["skipped"])
    csv = info["results_csv"]
    _drop_stale_report(out_p, changed=before != csv.read_bytes())
    click.echo(f"{info['trained']} runs trained, {info['skipped']} already done ({info['seconds']:.1f} s); "
               f"results in {out_p}/runs and {csv}")
    _export_tensorboard(out_p, tensorboard)


@main.command()
@click.argument("out", type=click.Path(exists=True, file_okay=False), default="results")
@click.option("--study", "study_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="The study folder whose title, intro and sections the report carries (never read from OUT).")
def report(out, study_dir) -> None:
    """Write report.html and report.md (and results.csv) from finished runs in OUT."""
    _start()
    from .experiments.schema import ConfigError
    from .experiments.study import load_study
    from .report.render import write_report

    kw = {}
    if study_dir is not None:
        try:
            st = load_study(study_dir)
        except ConfigError as e:
            raise click.ClickException(str(e)) from None
        kw = {"title": st.title, "intro": st.intro, "sections": st.sections, "margins": st.margins,
              "methods": st.methods}
    else:
        try:
            made_by = json.loads((Path(out) / "study.json").read_text()).get("study")
        except (OSError, ValueError, AttributeError):
            made_by = None
        if isinstance(made_by, str):  # named, never read: the study's settings come only from --study
            click.echo(f"note: {out} holds the runs of the study {made_by!r}; without --study this report uses the "
                       "default margins and paired-t intervals and none of the study's own sections -- give "
                       "--study to apply its [margins], [statistics] and sections", err=True)
    _phase[0] = "writing the report"
    try:
        paths = write_report(out, **kw)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"report: {paths['html']}  (and {paths['markdown']})")
    _fail_on(paths["failed"])


def _fail_on(failed: list[str]) -> None:
    """End with status 1 naming each analysis or report section of the user's that failed (the
    rest is done and written; the report shows the failures)."""
    if failed:
        for f in failed:
            click.echo(f"failed: {f}", err=True)
        raise click.ClickException(f"{len(failed)} analysis/section(s) of the study failed (above); everything else "
                                   "is done and in the report -- fix them and run the same command again")


def _strength_list(text: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers; got {text!r}", param_hint="--strengths") from None
    if not vals or any(not 0 <= v < 1e6 for v in vals):
        raise click.BadParameter(f"expected non-negative numbers below 1e6; got {text!r}", param_hint="--strengths")
    if len(set(vals)) != len(vals):
        raise click.BadParameter(f"each strength once; got {text!r}", param_hint="--strengths")
    return vals


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--strengths", default="0,1e-5,1e-4,3e-4,1e-3,3e-3,1e-2,1e-1", show_default=True)
@click.option("--seeds", type=click.IntRange(1, 10_000), default=10, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
@_device_option
def path(path, strengths, seeds, out, device) -> None:
    """Regularization path of one experiment: every strength (found through each regularizer's
    hparams()) replaced by each value of --strengths; lambda chosen on the validation split."""
    _start()
    from .experiments.path import path_file, regularization_path

    specs = _place(_load((path,)), device)
    if len(specs) != 1:
        raise click.ClickException(f"{path}: a path needs an experiment without [[sweep]] ({len(specs)} grid points)")
    _prepare(specs, baselines=False)
    _phase[0] = "tracing the regularization path"
    try:
        doc = regularization_path(specs[0], _strength_list(strengths), range(seeds), out=out)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    click.echo(doc["verdict"])
    click.echo(f"written: {path_file(out, specs[0].name)}")


@main.command()
@click.argument("study_dir", type=click.Path(file_okay=False), required=False)
@click.option("--seeds", type=click.IntRange(1, 10_000), default=None,
              help="Seeds per experiment (default: study.toml's, else each file's).")
@click.option("--out", type=click.Path(file_okay=False), default="results", show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=min(2, os.cpu_count() or 1), show_default=True,
              help="Processes training experiment groups at once.")
@click.option("--progress/--no-progress", default=True)
@_backend_options
@_device_option
@_threads_option
@_tensorboard_option
def study(study_dir, seeds, out, workers, progress, backend, address, gpus_per_task, device, threads,
          tensorboard) -> None:
    """Run a whole study (STUDY_DIR/study.toml: experiments, paths, analyses) and write its report.
    Without STUDY_DIR: the study that ``studies/default`` names (one folder name, in the project)."""
    t0 = time.perf_counter()
    if threads is not None:
        _set_threads(threads)
    _check_logdir(tensorboard, out)
    _start(workers if backend == "local" else 1)  # first: the helpers start before the imports below
    from .experiments.path import path_file, path_key, regularization_path
    from .experiments.spec import with_strength
    from .experiments.schema import ConfigError
    from .experiments.study import analysis_key, load_study, reusable, run_analysis
    from .report.render import write_report

    if study_dir is None:
        study_dir = _default_study("STUDY_DIR (a folder with study.toml)")
    try:
        st = load_study(study_dir)
    except ConfigError as e:
        raise click.ClickException(str(e)) from None
    specs = _place(_load((str(study_dir),)), device, backend, gpus_per_task)
    plans = _prepare(specs)
    out_p = Path(out)
    side = []
    for p in st.paths:
        grid = [s for s in specs if s.name == p["experiment"]]
        if len(grid) != 1:
            raise click.ClickException(f"{study_dir}/study.toml: path: {p['experiment']!r} is " +
                                       ("no experiment of the study" if not grid else
                                        f"an experiment with a sweep ({len(grid)} grid points); a path needs one"))
        try:
            with_strength(grid[0], 0.0)  # a path needs a strength to vary: said now, not after training
        except ValueError as e:
            raise click.ClickException(f"{st.folder / 'study.toml'}: path: {e}") from None
        key = path_key(grid[0], p["strengths"], range(p["seeds"]))
        if not reusable(path_file(out_p, p["experiment"]), key):
            side.append((regularization_path, (grid[0], p["strengths"], list(range(p["seeds"])), out_p)))
    for name, ref, args in st.analyses:
        if not reusable(out_p / "analyses" / f"{name}.json", analysis_key(ref, st.folder, args)):
            side.append((run_analysis, (name, ref, str(st.folder), args, out_p)))
    info = _execute(_plan(specs, seeds or st.seeds), out_p, progress=progress, workers=workers, side_tasks=side,
                    backend=backend, address=address, record="replace",  # the folder is the study's
                    gpus_per_task=gpus_per_task, results=False, plans=plans)  # the report writes results.csv
    click.echo(f"experiments: {info['trained']} runs trained, {info['skipped']} reused; "
               f"{len(side)} side task(s) (paths, analyses); {info['seconds']:.1f} s")
    _meta_update(out_p, wall_seconds=time.perf_counter() - t0, trained=info["trained"], skipped=info["skipped"],
                 seeds=seeds or st.seeds, study=str(st.folder))
    _phase[0] = "writing the report (the runs, paths and analyses are kept)"
    paths = write_report(out_p, title=st.title, intro=st.intro, sections=st.sections, margins=st.margins,
                         methods=st.methods, runs=info["runs"], earlier=info["earlier"])
    click.echo(f"study done in {time.perf_counter() - t0:.1f} s")
    click.echo(f"report: {Path(paths['html']).resolve()}")
    click.echo(f"        {Path(paths['markdown']).resolve()}")
    _export_tensorboard(out_p, tensorboard)
    _fail_on(paths["failed"])


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--trials", type=click.IntRange(1, 100_000), default=20, show_default=True,
              help="Trials in all (a rerun with more goes on from the finished ones).")
@click.option("--out", type=click.Path(file_okay=False), default="results/tune", show_default=True)
@click.option("--batch", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="Trials asked at once and trained together (batch x seeds models in one group).")
@click.option("--seeds", type=click.IntRange(2, 1000), default=5, show_default=True,
              help="Seeds per trial (0..N-1); a trial's value is their mean validation metric.")
@click.option("--final-seeds", type=click.IntRange(5, 10_000), default=20, show_default=True,
              help="Fresh seeds (after the search's) for the chosen setting and its baseline (5 or more: a paired "
                   "verdict needs 5 pairs).")
@click.option("--metric", default=None, help="The validation metric to optimize (default: log_loss, or mse for "
                                             "regression; accuracy, brier, ece, mae, r2).")
@click.option("--sampler-seed", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True)
@click.option("--progress/--no-progress", default=False)
def tune(file, trials, out, batch, seeds, final_seeds, metric, sampler_seed, progress) -> None:
    """Search FILE's [[search]] values with Optuna, each trial judged by its seed-mean validation
    metric (trials trained in batches); then train the chosen setting and its baseline on fresh
    seeds and compare them on the test split. Resumable: run the same command again."""
    _start()
    from .experiments.schema import ConfigError
    from .tuning import TuneError
    from .tuning import tune as run_tune

    _phase[0] = "tuning (finished trials are kept in OUT/tune.sqlite3 and their runs in OUT/search)"
    try:
        res = run_tune(file, trials=trials, out=out, batch=batch, seeds=seeds, final_seeds=final_seeds, metric=metric,
                       sampler_seed=sampler_seed, progress=progress, say=lambda line: click.echo(line, err=True))
    except (ConfigError, TuneError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    o = res["objective"]
    from .tuning.objective import describe_params

    shown = describe_params(res["best"])
    click.echo(f"chosen: {shown} ({o.metric} {o.mean:.4f} [{o.low:.4f}, {o.high:.4f}] over {seeds} seeds); "
               f"{res['trained']} search runs trained")
    if res["final"].get("same_as_baseline"):
        click.echo("note: the chosen setting trains what its baseline trains (its regularization is off or zero): the search "
                   "found no regularization worth having", err=True)
    for c in res["final"]["comparisons"]:
        click.echo(f"  final, against the {c.get('comparison', 'own baseline')}, {c['metric']}: {c['verdict']} "
                   f"(difference {float(c['estimate']):+.4f} [{float(c['ci_low']):+.4f}, {float(c['ci_high']):+.4f}])")
    click.echo(f"report: {Path(res['report']).resolve()}")
    click.echo(f"        {Path(res['final']['report']).resolve()}")


@main.group()
def export() -> None:
    """Write a results folder in another tool's format."""


@export.command("tensorboard")
@click.argument("out", type=click.Path(exists=True, file_okay=False))
@click.argument("logdir", type=click.Path())
def export_tensorboard_cmd(out, logdir) -> None:
    """Write every finished run in OUT as TensorBoard logs in LOGDIR: each run's history as
    scalars per epoch, its final metrics, and its settings as HParams (one trial per grid point,
    one session per seed). Then: tensorboard --logdir LOGDIR."""
    _check_logdir(logdir)
    _export_tensorboard(Path(out), logdir)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
