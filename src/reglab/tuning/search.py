"""``tune``: search an experiment file's ``[[search]]`` values with Optuna, each trial judged by
its seed-mean validation metric, then compare the chosen setting on fresh seeds.

Steps, all under ``OUT``:

1. The search. Optuna's TPE sampler proposes ``batch`` trials at a time; each trial's experiment
   trains ``seeds`` models (seeds ``0..S-1``), and a batch's ``batch x seeds`` models train in one
   ``fit_many`` group where the trials differ only in their regularization (``objective.py``).
   A trial's value is the seed-mean **validation** metric (``Objective``); a trial with a failed
   (diverged) seed fails. The runs are kept in ``OUT/search`` (a results folder), Optuna's
   record in ``OUT/tune.sqlite3``.
2. The final comparison. The best trial's setting and its unregularized baseline train on
   ``final_seeds`` seeds the search never used (``S..S+F-1``) into ``OUT/final``, whose report
   (``OUT/final/report.html``) compares them with the study's paired statistics on the **test**
   split -- the first time any test point is looked at.
3. ``OUT/tune.md`` and ``OUT/tune.png``: every trial with its seed interval, the chosen point, the
   final comparison.

Resuming: Ctrl-C, SIGTERM or ``kill -9`` leave the finished trials in the SQLite file and the
finished runs in ``OUT/search``; the same command goes on where it stopped. Trials that were
asked but not told (the batch that was training) are trained again with the values Optuna gave
them -- runs that finished are read back -- and the search then asks exactly what it would have
asked without the interruption: the sampler of each batch is seeded by the batch's first trial
number and sees the trials finished before it. The file, the searched ranges, the seeds and the
metric are recorded in the study; a rerun with other ones is refused (use another ``--out``).
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..experiments.files import OutputError, own_file, own_folder
from ..experiments.store import Unit
from ..experiments.schema import ConfigError
from .objective import Objective, Searchable, describe_params, evaluate_points, load_searchable, resolve_metric

__all__ = ["tune", "TuneError", "STORAGE", "STUDY"]

STORAGE = "tune.sqlite3"
STUDY = "reglab-tune"


class TuneError(ValueError):
    """A tune that cannot start: a damaged or foreign SQLite file, a search recorded with other
    settings, no Optuna."""


def _optuna():
    try:
        import optuna
    except ImportError:
        raise TuneError("`reglab tune` needs Optuna: pip install 'reglab[tune]'") from None
    return optuna


def _check_storage(db: Path) -> None:
    """An existing ``tune.sqlite3`` must be an Optuna database holding reglab's study; it is
    opened read-only for the check, so a foreign file is never changed."""
    if not db.exists():
        return
    if not db.is_file() or db.is_symlink():
        raise TuneError(f"{db}: not a file; reglab keeps its search record there: move it away")
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
            names = {r[0] for r in con.execute("select study_name from studies")} if "studies" in tables else set()
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise TuneError(f"{db}: not a readable SQLite database ({e}); it is left as it is -- move it away or "
                        "use another --out") from None
    if not {"studies", "trials", "version_info"} <= tables or STUDY not in names:
        raise TuneError(f"{db}: an SQLite file that holds no reglab search (no Optuna study {STUDY!r}); it is left "
                        "as it is -- move it away or use another --out")


def _fingerprint(s: Searchable, seeds: int, metric: str, base: str | None, sampler_seed: int) -> dict[str, Any]:
    dims = s.baseline_dims if base else s.dims
    return {"experiment": s.spec.name, "digest": s.spec.digest(),
            "search": [[d.describe(), [list(p) for p in d.paths], d.baseline] for d in dims],
            "seeds": seeds, "metric": metric, "baseline": base, "sampler_seed": sampler_seed}


def _differences(got: Any, mine: dict[str, Any]) -> str:
    if not isinstance(got, dict):
        return "no setting recorded"
    what = {"digest": "the experiment file (or its data or builder)", "search": "the searched ranges",
            "seeds": "--seeds", "metric": "--metric", "experiment": "the experiment's name",
            "sampler_seed": "--sampler-seed"}
    return "; ".join(f"{what.get(k, k)}: {got.get(k)!r} there, {mine[k]!r} here" for k in mine if got.get(k) != mine[k])


def _open_study(optuna: Any, out: Path, s: Searchable, seeds: int, metric: str, minimize: bool, sampler_seed: int,
                base: str | None = None) -> Any:
    """The search's Optuna study in ``OUT/tune.sqlite3`` (``base``: the search of the baseline
    whose digest it is), made or, where it is there, loaded and checked to be of this setting.
    The file itself is made whole or not at all (written aside, then renamed into place)."""
    db = out / STORAGE
    _check_storage(db)
    mine = _fingerprint(s, seeds, metric, base, sampler_seed)
    name = STUDY + (f"-baseline-{base}" if base else "")
    direction = "minimize" if minimize else "maximize"
    if not db.exists():
        for old in out.glob(f".{STORAGE}.*.tmp"):  # an earlier start cut short (under the lock: ours)
            old.unlink()
        tmp = out / f".{STORAGE}.{os.getpid()}.tmp"
        made = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{tmp.resolve()}", direction=direction)
        made.set_user_attr("reglab", _fingerprint(s, seeds, metric, None, sampler_seed))
        del made
        os.replace(tmp, db)
    url = f"sqlite:///{db.resolve()}"
    names = {x.study_name for x in optuna.get_all_study_summaries(storage=url)}
    if name not in names:
        study = optuna.create_study(study_name=name, storage=url, direction=direction)
        study.set_user_attr("reglab", mine)
        return study
    study = optuna.load_study(study_name=name, storage=url)
    got = study.user_attrs.get("reglab")
    if got is None and not study.get_trials(deepcopy=False):  # made, then cut short before its setting was set
        study.set_user_attr("reglab", mine)
        return study
    if got != mine:
        raise TuneError(f"{db}: the search there was of another setting ({_differences(got, mine)}); use another --out "
                        "(a changed file, range, seed count or metric is another search)")
    return study


def _tell(optuna: Any, study: Any, number: int, obj: Objective) -> None:
    TrialState = optuna.trial.TrialState
    if obj.ok:
        study.tell(number, obj.mean)
    else:
        study.tell(number, state=TrialState.FAIL)


def tune(file: str | Path, *, trials: int, out: str | Path, batch: int = 4, seeds: int = 5,
         final_seeds: int = 20, metric: str | None = None, sampler_seed: int = 0, progress: bool = False,
         say: Callable[[str], None] = print) -> dict[str, Any]:
    """Search ``file``'s ``[[search]]`` values (see the module docstring); returns
    ``{"best": params, "objective": Objective, "trials": [...], "trained": n, "report": path}``."""
    from ..report.summary import MIN_PAIRS

    for name, v, lo in (("trials", trials, 1), ("batch", batch, 1), ("seeds", seeds, 2),
                        ("final_seeds", final_seeds, MIN_PAIRS), ("sampler_seed", sampler_seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}; got {name}={v!r}")
    optuna = _optuna()
    s = load_searchable(file)
    m, minimize = resolve_metric(s.task, metric)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} is a file, not a folder: give --out a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{out}: cannot make the folder ({e.strerror}: {e.filename})") from None
    from filelock import FileLock, Timeout

    lock = FileLock(str(own_file(out / "tune.lock")))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TuneError(f"{out}: another `reglab tune` is running on this folder; wait for it or use another --out") from None
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = _open_study(optuna, out, s, seeds, m, minimize, sampler_seed)
        search_out = own_folder(out, "search")
        seed_list = list(range(seeds))
        trained_before = _count_runs(search_out)
        _search(optuna, study, s.dims, s.at, trials, batch, seed_list, search_out, m, sampler_seed, progress, say)
        TrialState = optuna.trial.TrialState
        done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not done:
            raise TuneError(f"{file}: no trial finished (every setting tried diverged for some seed); narrow the "
                            "search's ranges")
        best = study.best_trial
        base_study = base_best = None
        if s.baseline_dims:  # the chosen setting's baseline, its schedule searched with the same budget
            chosen = dict(best.params)
            make = lambda p: s.baseline_at(p, chosen)  # noqa: E731
            say(f"searching the baseline's {', '.join(d.column for d in s.baseline_dims)} ({trials} trials)")
            base_study = _open_study(optuna, out, s, seeds, m, minimize, sampler_seed,
                                     base=s.at(chosen).baseline().digest())
            _search(optuna, base_study, s.baseline_dims, make, trials, batch, seed_list, search_out, m,
                    sampler_seed, progress, say, label="baseline trial")
            if any(t.state == TrialState.COMPLETE for t in base_study.get_trials(deepcopy=False)):
                base_best = dict(base_study.best_trial.params)
        trained = _count_runs(search_out) - trained_before
        from .final import final_comparison
        from .report import write_tune_report

        final = final_comparison(s, dict(best.params), list(range(seeds, seeds + final_seeds)),
                                 own_folder(out, "final"),
                                 tuned_baseline=base_best, progress=progress, say=say)
        rows = _trial_rows(study, s.dims, s.at, seed_list, search_out, m)
        base_rows = (_trial_rows(base_study, s.baseline_dims, make, seed_list, search_out, m)
                     if base_study is not None else [])
        report = write_tune_report(out, s, rows, best.number, m, minimize, seeds, final, base_rows,
                                   base_study.best_trial.number if base_best is not None else None)
        best_obj = next(r["objective"] for r in rows if r["number"] == best.number)
        return {"best": dict(best.params), "objective": best_obj, "trials": rows, "trained": trained,
                "report": report, "final": final, "baseline_best": base_best, "baseline_trials": base_rows}
    finally:
        optuna.logging.set_verbosity(level)
        lock.release()


class _Deferred:
    """SIGINT and SIGTERM wait (in the main thread) until the block ends, then raise
    ``KeyboardInterrupt``: Optuna's record never holds a batch asked in part."""

    def __init__(self) -> None:
        self.got: int | None = None
        self.old: dict[int, Any] = {}

    def __enter__(self) -> _Deferred:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.got = self.got or signum

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)
        if self.got is not None and exc[0] is None:
            handler = self.old.get(self.got)
            if callable(handler):
                handler(self.got, None)  # the handler it would have met (SIGTERM: reglab's, raising)
            raise KeyboardInterrupt(f"signal {self.got}")


def _search(optuna: Any, study: Any, dims: tuple, make: Callable[[dict], Any], trials: int, batch: int,
            seeds: list[int], out: Path, metric: str, sampler_seed: int, progress: bool,
            say: Callable[[str], None], label: str = "trial") -> None:
    """Ask, train and tell until ``trials`` trials are finished: first the trials an
    interruption left asked but not told (with the values they were given), then new batches,
    each asked from a TPE sampler seeded by its first trial number. ``make(params)``: the spec
    a trial trains."""
    TrialState = optuna.trial.TrialState
    columns = {d.column for d in dims}
    while True:
        finished = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.COMPLETE, TrialState.FAIL)
                    and set(t.params) == columns]  # not one abandoned unasked
        running = sorted(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)), key=lambda t: t.number)
        if running:  # asked, not told: the batch an interruption cut short, trained again as it was
            numbers, params = [], []
            for t in running:
                if set(t.params) != columns:
                    study.tell(t.number, state=TrialState.FAIL)  # killed between its suggestions
                    continue
                numbers.append(t.number)
                params.append(dict(t.params))
            if not numbers:
                continue
            say(f"resuming {label}(s) {numbers}, asked before the interruption")
        elif len(finished) >= trials:
            break
        else:
            k = min(batch, trials - len(finished))
            first = len(finished)  # trials abandoned unasked (kill -9) do not shift the seeds
            offset = 500_009 if label != "trial" else 0  # the baseline's search draws its own values
            study.sampler = optuna.samplers.TPESampler(seed=(sampler_seed * 1_000_003 + first + offset) % 2**32)
            with _Deferred():  # a batch is asked whole: an interrupt waits until its values are stored
                asked = [study.ask() for _ in range(k)]
                params = [{d.column: d.suggest(t) for d in dims} for t in asked]
            numbers = [t.number for t in asked]
        specs, bad = [], {}
        for n, p in zip(numbers, params):
            try:
                specs.append(make(p))
            except ConfigError as e:  # a value inside the range the file cannot take: that trial fails
                bad[n] = str(e)
        objs = iter(evaluate_points(specs, seeds, out, metric, progress) if specs else [])
        for n, p in zip(numbers, params):
            if n in bad:
                study.tell(n, state=TrialState.FAIL)
                say(f"{label} {n}: failed: {bad[n]}")
                continue
            o = next(objs)
            _tell(optuna, study, n, o)
            shown = describe_params(p)
            say(f"{label} {n}: {shown}: {o.metric} {o.mean:.4f} [{o.low:.4f}, {o.high:.4f}]" if o.ok else
                f"{label} {n}: {shown}: failed ({o.failed} of {len(o.values)} seeds diverged)")


def _count_runs(folder: Path) -> int:
    return sum(1 for _ in (folder / "runs").glob("*/*.json")) if (folder / "runs").is_dir() else 0


def _trial_rows(study: Any, dims: tuple, make: Callable[[dict], Any], seeds: list[int], out: Path,
                metric: str) -> list[dict]:
    """Every finished trial: number, state, params and its ``Objective`` (read back from the run
    store: nothing trains)."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state.name not in ("COMPLETE", "FAIL") or set(t.params) != {d.column for d in dims}:
            continue
        try:
            spec = make(dict(t.params))
        except ConfigError:  # a value the file cannot take: the trial failed before training
            continue
        if not all(Unit(spec, seed).done(out) for seed in seeds):
            continue
        obj = evaluate_points([spec], seeds, out, metric)[0]
        rows.append({"number": t.number, "state": t.state.name, "params": dict(t.params), "objective": obj,
                     "value": t.value if t.value is not None else math.nan})
    return rows
