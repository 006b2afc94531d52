"""The seed-aggregated objective: one setting's validation metric, averaged over seeds trained at
once, with its interval -- what a search should compare, not one seed's luck.

For a setting ``theta`` and seeds ``s = 1..S`` (each its own initialization, shuffling and, where
the file resamples, its own split), the objective is

    J(theta) = (1/S) * sum_s m(theta, s),     m = the validation split's metric (never the test's),

reported with the Student-t 95% interval of the mean, ``J +- t_{0.975, S-1} * sd_s(m) / sqrt(S)``.
The runs land in a results folder's run store, so a setting asked again (a resumed search, the
same point proposed twice) is read back, not retrained. Several settings that differ only in
what their builders build (regularization strengths, say) train in one ``fit_many`` group
(``points x seeds`` models at once; every engine gives a model the same numbers in any group).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..diagnostics.metrics import METRICS, metric_range
from ..diagnostics.statistics import mean_ci
from ..experiments.build import splits_of
from ..experiments.group import train_together
from ..experiments.plan import group_key, prepare
from ..experiments.schema import ConfigError, ExperimentSpec, at_point, expand, read_toml
from ..experiments.keypath import get_at
from ..experiments.search_space import Dimension, search_space
from ..experiments.store import Unit, verified

__all__ = ["Objective", "seed_objective", "evaluate_points", "Searchable", "load_searchable", "resolve_metric",
           "describe_params"]


@dataclass(frozen=True)
class Objective:
    """A setting's seed-mean validation ``metric`` (``"val_log_loss"``) with its 95% interval,
    the per-seed ``values`` (NaN for a failed run) and how many runs ``failed``; ``minimize``:
    the metric's direction. ``mean`` is NaN when any seed failed (a setting that diverges for
    some seeds is not a candidate)."""

    metric: str
    mean: float
    low: float
    high: float
    values: list[float] = field(default_factory=list)
    failed: int = 0
    minimize: bool = True

    @property
    def ok(self) -> bool:
        return math.isfinite(self.mean)


@dataclass(frozen=True)
class Searchable:
    """An experiment file with a ``[[search]]`` table: its parsed text (``raw``), its path, the
    experiment as written (``spec``) and the searched ``dims``."""

    raw: Mapping[str, Any]
    file: str
    spec: ExperimentSpec
    dims: tuple[Dimension, ...]
    task: str  # the data's task ("binary", "multiclass", "regression")

    def at(self, params: Mapping[str, Any]) -> ExperimentSpec:
        """The experiment with each searched value of ``params`` (by column) written in; its
        ``sweep_point`` (results columns, run identity) is ``params``."""
        unknown = set(params) - {d.column for d in self.dims}
        if unknown:
            raise ValueError(f"params: {sorted(unknown)} are not searched in {self.file}; the searched values are "
                             f"{[d.column for d in self.dims]}")
        missing = [d.column for d in self.dims if d.column not in params]
        if missing:
            raise ValueError(f"params: missing {missing} (searched in {self.file})")
        values = [(list(p), params[d.column]) for d in self.dims for p in d.paths]
        return at_point(self.raw, self.file, values, point={d.column: params[d.column] for d in self.dims},
                        what="search point")

    def own_values(self) -> dict[str, Any]:
        """Each searched value as the file has it."""
        return {d.column: get_at(self.raw, list(d.paths[0]), self.file, "search") for d in self.dims}

    def check_ends(self) -> None:
        """Every choice and both ends of every range, each with the other values as the file has
        them, make a valid experiment (else the ``ConfigError`` that names the point): a value
        the file cannot take is said before anything trains, not when a trial draws it."""
        own = self.own_values()
        for d in self.dims:
            for v in d.choices if d.choices is not None else (d.low, d.high):
                self.at({**own, d.column: v})

    @property
    def baseline_dims(self) -> tuple[Dimension, ...]:
        """The searched values the baseline is searched over too (``baseline = true``)."""
        return tuple(d for d in self.dims if d.baseline)

    def baseline_at(self, params: Mapping[str, Any], chosen: Mapping[str, Any]) -> ExperimentSpec:
        """The unregularized baseline of the setting ``chosen`` with each of ``baseline_dims``'
        values of ``params`` written in (its model is the chosen setting's, unregularized)."""
        return self.at({**chosen, **{d.column: params[d.column] for d in self.baseline_dims}}).baseline()


def load_searchable(file: str | Path) -> Searchable:
    """The file, checked: one experiment (no ``[[sweep]]``), a ``[[search]]`` table, and a
    validation split that is not the test split (the search must never see a test point)."""
    raw = read_toml(file)
    file = str(file)
    specs = expand(raw, file)
    if raw.get("sweep"):
        raise ConfigError(f"{file}: sweep: a tuned file searches one experiment; move the [[sweep]] path into "
                          "[[search]] (choices = [...] for its values) or tune each grid point's file")
    dims = search_space(raw, file, set())
    if not dims:
        raise ConfigError(f"{file}: search: missing; `reglab tune` needs a [[search]] table (path = [...], "
                          "low/high or choices)")
    spec = specs[0]
    sp = splits_of(spec, 0)
    searchable = Searchable(raw, file, spec, tuple(dims), sp.task)
    searchable.check_ends()
    if sp.validation_is_test:
        raise ConfigError(f"{file}: split.validation: the validation data are the test data here, so a search would "
                          "choose its point on the test split; give a validation fraction (e.g. [split] validation "
                          "= 0.2, taken from the training data) for tuning")
    return searchable


def _batchable(specs: Sequence[ExperimentSpec]) -> bool:
    """Whether the specs may train in one ``fit_many`` group: equal but for their penalty
    strengths (``ExperimentSpec.strength_free_core``)."""
    first = specs[0].strength_free_core()
    return all(s.strength_free_core() == first for s in specs[1:])


def resolve_metric(task: str, metric: str | None) -> tuple[str, bool]:
    """``(m, lower is better)`` for the task's metric ``m`` (default: its primary, log-loss or
    MSE); an error names the task's metrics."""
    choices = METRICS[task]
    m = metric or ("mse" if task == "regression" else "log_loss")
    if m not in choices:
        raise ValueError(f"metric {m!r} is not a {task} metric; choose one of {sorted(choices)}")
    return m, choices[m]


def describe_params(params: Mapping[str, Any], number: str = ".4g") -> str:
    """``"l2 = 0.004359, activation = 'relu'"``: a setting in words (floats in ``number``'s format)."""
    return ", ".join(f"{k} = {v:{number}}" if isinstance(v, float) else f"{k} = {v!r}" for k, v in params.items())


def evaluate_points(specs: Sequence[ExperimentSpec], seeds: Sequence[int], out: str | Path,
                    metric: str | None = None, progress: bool = False) -> list[Objective]:
    """Each spec's ``Objective`` over ``seeds`` (see the module docstring), training the runs
    that ``out``'s run store does not hold yet: together where the specs allow
    (``_batchable``), else one group per spec."""
    out = Path(out)
    seeds = [int(s) for s in seeds]
    pending: dict[str, ExperimentSpec] = {}  # by digest: a point asked twice trains once
    missing: set[int] = set()
    for s in specs:
        gone = {seed for seed in seeds if not Unit(s, seed).done(out)}
        if gone:
            pending.setdefault(s.digest(), s)
            missing |= gone
    todo = sorted(missing)  # only the seeds some point lacks (a point that has one gets it again, the same bits)
    if pending:
        group = list(pending.values())
        plans = prepare(group)  # every point checked (and its engine chosen) once, before training
        resolve_metric(plans[group_key(group[0])].task, metric)  # a bad metric is said before training
        if _batchable(group):
            try:
                train_together(group, todo, out, progress=progress, plan=plans[group_key(group[0])])
                group = []
            except ValueError:  # models fit_many will not train together after all: one group each
                pass
        for s in group:
            train_together([s], todo, out, progress=progress, plan=plans[group_key(s)])
    result = []
    for s in specs:
        rows = [verified(Unit(s, seed).path(out)) for seed in seeds]
        if any(r is None for r in rows):
            raise RuntimeError(f"{s.name}: runs missing from {out} after training")  # a bug, never a user error
        m, lower = resolve_metric(rows[0]["task"], metric)
        key = f"val_{m}"
        vals = [math.nan if r.get("failed") else float(r["metrics"].get(key, math.nan)) for r in rows]
        failed = sum(1 for r in rows if r.get("failed"))
        mean, low, high = mean_ci(vals) if not failed and len(vals) > 1 else (
            (vals[0], math.nan, math.nan) if not failed else (math.nan, math.nan, math.nan))
        lo_end, hi_end = metric_range(key)  # an interval never leaves the metric's range (log-loss >= 0)
        low, high = (max(low, lo_end), min(high, hi_end)) if math.isfinite(low) else (low, high)
        result.append(Objective(key, float(mean), float(low), float(high), vals, failed, lower))
    return result


def seed_objective(experiment: str | Path | Searchable, params: Mapping[str, Any] | None = None, *,
                   seeds: int | Sequence[int] = 5, metric: str | None = None, out: str | Path | None = None,
                   progress: bool = False) -> Objective:
    """The seed-mean validation metric of one setting of an experiment file's ``[[search]]``
    values, for your own Optuna or Ray Tune code::

        def objective(trial):
            l2 = trial.suggest_float("regularize/params/@kernels/l2", 1e-6, 1e-1, log=True)
            return reglab.seed_objective("l2.toml", {"regularize/params/@kernels/l2": l2}, seeds=5).mean

    ``params`` maps searched columns (an entry's ``name``, or its path joined by "/") to values
    (a value not given: the file's own; a value outside the search's range is taken as it is); ``seeds``: a count (seeds 0..n-1) or the seeds themselves;
    ``metric``: the task's metric to average on the **validation** split (default log-loss or
    MSE; ``.minimize`` says its direction); ``out``: a results folder whose run store keeps the
    runs (a setting asked again is read back), else a temporary one. Returns an ``Objective``
    (``mean``, ``low``, ``high``, per-seed ``values``)."""
    s = experiment if isinstance(experiment, Searchable) else load_searchable(experiment)
    spec = s.spec if params is None else s.at({**s.own_values(), **params})
    import numbers

    def whole(x: Any) -> bool:
        return isinstance(x, numbers.Integral) and not isinstance(x, bool)

    if whole(seeds):
        seed_list = list(range(int(seeds)))
    elif isinstance(seeds, (list, tuple, range)) and all(whole(x) and x >= 0 for x in seeds):
        seed_list = [int(x) for x in seeds]
    else:
        seed_list = []
    if not seed_list:
        raise ValueError(f"seeds must be a positive count or a list of non-negative integers; got {seeds!r}")
    if out is not None:
        return evaluate_points([spec], seed_list, out, metric, progress)[0]
    with tempfile.TemporaryDirectory(prefix="reglab-objective-") as tmp:
        return evaluate_points([spec], seed_list, tmp, metric, progress)[0]
