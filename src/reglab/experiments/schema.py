"""Experiment files (TOML): schema and validation. ``docs/experiment-files.md`` documents every key.

An experiment file describes one model family trained over many seeds::

    name = "l2_kernels"                  # unique id: letters, digits, _ and -
    title = "..."                        # one line for the report
    seeds = 20                           # default number of seeds (CLI --seeds overrides)

    [data]                               # a built-in set, sklearn.<set>, a file, split files or a loader
    name = "sklearn.digits"
    [split]                              # fractions of all examples; stratified for classification
    validation = 0.2
    test = 0.2

    [model]                              # any nn.Module from a builder ...
    builder = "models.py:build"
    args = {channels = 8}
    [baseline]                           # ... whose unregularized baseline may change builder arguments
    args = {dropout = 0.0}
    [regularize]                         # the same rules as reglab.regularize / reglab.constrain
    params = {"@kernels" = {name = "L2", l2 = 1e-4}}

    [train]
    loss = "sparse_categorical_crossentropy"   # default by task; or {name = ..., from_logits = true}
    optimizer = {name = "adam", learning_rate = 0.005}
    epochs = 30
    batch_size = 32
    early_stopping = {patience = 5, restore_best_weights = true}   # on the validation split

    [[sweep]]                            # the grid: product of every sweep's values x seeds
    path = ["regularize", "params", "@kernels", "l2"]
    values = [1e-5, 1e-4, 1e-3]

``[[model.layers]]`` (Keras ``Dense`` arguments) stays as the MLP shorthand. Regularizers and
constraints are written ``{name = "<class or alias>", <argument> = <value>, ...}`` or as a bare
alias string (``"l2"``). Validation happens before anything runs; every error names the file,
the key and what was expected. This module reads files, validates the top level and expands
sweeps; the sections' checks are in ``sections.py``, the validated experiment (``ExperimentSpec``)
and its typed sections, what the rest of reglab reads, in ``spec.py``.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import constraints as _constraints
from .. import regularizers as _regularizers
from .data_tables import MAX_EXAMPLES, DataError, check_data, check_split, data_inputs
from .keypath import column, get_at, set_at
from .search_space import Dimension, search_space
from .sections import (ANALYSIS_KEYS, LIMITS, REFERENCE_KEYS, TOP_KEYS, ConfigError, bounded_int,
                       expect, is_int, is_num, model_section, regularize_section, train_section, unknown)
from .spec import PRESENTATION, ExperimentSpec

__all__ = ["ExperimentSpec", "ConfigError", "load_experiment", "load_experiments", "validate", "LIMITS", "at_point",
           "Dimension"]

def validate(raw: Mapping[str, Any], file: str) -> ExperimentSpec:
    """Check every key and value of one parsed experiment file without a ``[[sweep]]`` (see
    ``expand``); raise ``ConfigError`` on the first problem."""
    unknown(raw, TOP_KEYS, file, "the file")
    for key in ("name", "data", "model", "train"):
        if key not in raw:
            raise ConfigError(f"{file}: {key}: missing; every experiment needs name, data, model and train")
    base = Path(file).resolve().parent
    cfg: dict[str, Any] = {}
    name = raw["name"]
    expect(isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,%d}" % LIMITS["name"], name) is not None, file,
            "name", f"a string of 1 to {LIMITS['name']} letters, digits, _ and -", name)
    cfg["name"] = name
    for key in ("title", "description"):
        if key in raw:
            expect(isinstance(raw[key], str) and len(raw[key]) <= 2000, file, key, "a string", raw[key])
            cfg[key] = raw[key]
    if "seeds" in raw:
        cfg["seeds"] = bounded_int(raw["seeds"], file, "seeds", 1, LIMITS["seeds"])
    try:
        cfg["data"] = check_data(raw["data"], file)
        cfg["split"] = check_split(raw.get("split"), file, "files" in raw["data"])
        inputs = data_inputs(cfg["data"], base, file)
    except DataError as e:
        raise ConfigError(str(e)) from None
    cfg["model"], model_inputs = model_section(raw, file, base)
    inputs.update(model_inputs)
    if "baseline" in raw:
        b = raw["baseline"]
        expect(isinstance(b, Mapping) and set(b) <= {"args"} and isinstance(b.get("args", {}), Mapping), file,
                "baseline", "a table with args = {...} (builder arguments of the unregularized baseline)", b)
        if "builder" not in cfg["model"]:
            raise ConfigError(f"{file}: baseline.args: only used with model.builder")
        bad = set(b.get("args", {})) - set(cfg["model"]["args"])
        if bad:
            raise ConfigError(f"{file}: baseline.args: the builder takes no argument(s) {sorted(bad)}; it takes "
                              f"{sorted(cfg['model']['args'])}")
        cfg["baseline"] = {"args": dict(b.get("args", {}))}
    if "regularize" in raw:
        cfg["regularize"] = regularize_section(raw["regularize"], file)
    cfg["train"] = train_section(raw["train"], file)
    if "reference" in raw:
        ref = raw["reference"]
        expect(isinstance(ref, Mapping) and set(ref) <= REFERENCE_KEYS, file, "reference",
                f"a table with some of {sorted(REFERENCE_KEYS)}", ref)
        if "accuracy" in ref:
            expect(is_num(ref["accuracy"]) and 0 <= ref["accuracy"] <= 1, file, "reference.accuracy",
                    "a number in [0, 1]", ref["accuracy"])
        if "n" in ref:
            bounded_int(ref["n"], file, "reference.n", 1, MAX_EXAMPLES)
        for k in ("label", "note"):
            if k in ref:
                expect(isinstance(ref[k], str), file, f"reference.{k}", "a string", ref[k])
        cfg["reference"] = dict(ref)
    if "analysis" in raw:
        an = raw["analysis"]
        expect(isinstance(an, Mapping) and set(an) <= ANALYSIS_KEYS, file, "analysis",
                f"a table with some of {sorted(ANALYSIS_KEYS)}", an)
        if "sparsity_layers" in an:
            expect(isinstance(an["sparsity_layers"], list) and all(isinstance(s, str) for s in an["sparsity_layers"]),
                    file, "analysis.sparsity_layers", "a list of module names", an["sparsity_layers"])
        if "weight_histograms" in an:
            expect(isinstance(an["weight_histograms"], bool), file, "analysis.weight_histograms", "true or false",
                    an["weight_histograms"])
        cfg["analysis"] = dict(an)
    return ExperimentSpec(cfg, file, inputs)


# ----------------------------------------------------------------------------- sweeps


GRID_BOUND_VARIABLE = "REGLAB_MAX_GRID_POINTS"


def max_grid_points() -> int:
    """The most grid points one file's ``[[sweep]]`` may have: ``LIMITS["grid_points"]``, or the
    environment variable ``REGLAB_MAX_GRID_POINTS`` where it is set (a positive integer)."""
    import os

    text = os.environ.get(GRID_BOUND_VARIABLE)
    if text is None:
        return LIMITS["grid_points"]
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ConfigError(f"{GRID_BOUND_VARIABLE}={text!r}: expected a positive integer")
    return n


def _repeated(values: list) -> Any:
    """The first value of a sweep that appears twice (numbers compared by value: 1 and 1.0 are
    one point), or None."""
    import json

    seen = set()
    for v in values:
        key = ("n", float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else (
            "j", json.dumps(v, sort_keys=True, default=str))
        if key in seen:
            return v
        seen.add(key)
    return None


def _canonical(v: Any) -> Any:
    """``v`` with each serialized regularizer or constraint in its canonical form (``"l2"`` and
    ``"L2"`` are one class), for telling grid points apart; the run identity keeps them as written."""
    if isinstance(v, Mapping):
        if "class_name" in v:
            for module in (_regularizers, _constraints):
                try:
                    obj = module.deserialize(v)
                    return type(obj).__name__, repr(obj.get_config())
                except (ValueError, TypeError, KeyError, NotImplementedError):
                    continue
        return {k: _canonical(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_canonical(x) for x in v]
    return v


def _body(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The file without its ``[[sweep]]`` and ``[[search]]`` tables: one experiment."""
    return {k: v for k, v in raw.items() if k not in ("sweep", "search")}


def at_point(raw: Mapping[str, Any], file: str, values: list[tuple[list, Any]],
             point: dict[str, Any] | None = None, what: str = "sweep point") -> ExperimentSpec:
    """The experiment of ``raw`` with each ``(path, value)`` of ``values`` written in, validated;
    its ``sweep_point`` is ``point`` (default: each path's column and value), which results and
    run identities carry. An error names the point (``what``: a sweep's, a search's)."""
    r = copy.deepcopy(_body(raw))
    for path, v in values:
        set_at(r, path, v)
    try:
        spec = validate(r, file)
    except ConfigError as e:
        if not values:
            raise
        at = ", ".join(f"{column(p)} = {v!r}" for p, v in values)
        raise ConfigError(f"{e} (at the {what} {at})") from None
    if values:
        spec.config["sweep_point"] = dict(point) if point is not None else {column(p): v for p, v in values}
    return spec


def expand(raw: Mapping[str, Any], file: str) -> list[ExperimentSpec]:
    """One spec per grid point of the file's ``[[sweep]]`` entries (their product), each
    validated; a file without sweeps gives one spec."""
    sweeps = raw.get("sweep", [])
    expect(isinstance(sweeps, list), file, "sweep", "an array of tables [[sweep]]", sweeps)
    axes = []
    for i, s in enumerate(sweeps):
        where = f"sweep[{i}]"
        expect(isinstance(s, Mapping) and set(s) == {"path", "values"}, file, where,
                "a table with path = [...] and values = [...]", s)
        path, values = s["path"], s["values"]
        expect(isinstance(path, list) and path and path[0] != "sweep", file, f"{where}.path",
                "a non-empty list of keys and indexes", path)
        expect(path[0] not in PRESENTATION + ("name",), file, f"{where}.path",
                "a key that changes what is trained (not name, seeds, title, description or reference)", path)
        expect(isinstance(values, list) and 0 < len(values) <= 1000, file, f"{where}.values",
                "a list of 1 to 1000 values", values)
        get_at(raw, path, file, f"{where}.path")
        same = _repeated(values)
        if same is not None:
            raise ConfigError(f"{file}: {where}.values: {same!r} appears twice; each value once (a repeated value "
                              "would train the same grid point twice)")
        axes.append((path, values))
    if len({column(p) for p, _ in axes}) != len(axes):
        raise ConfigError(f"{file}: sweep: two entries have the same path")
    points, bound = math.prod(len(v) for _, v in axes), max_grid_points()
    if points > bound:
        raise ConfigError(f"{file}: sweep: the grid has {points:,} points ({' x '.join(str(len(v)) for _, v in axes)}), "
                          f"more than the bound of {bound:,}: split it over several files, or raise the bound with "
                          f"the environment variable {GRID_BOUND_VARIABLE} (e.g. {GRID_BOUND_VARIABLE}={points})")
    search_space(raw, file, {column(p) for p, _ in axes})  # checked now; ``reglab tune`` uses it
    if axes:
        validate(_body(raw), file)  # an error of the file as written names no sweep point
    specs = [at_point(raw, file, list(zip([p for p, _ in axes], point)))
             for point in (itertools.product(*[v for _, v in axes]) if axes else [()])]
    if len(specs) > 1:  # two values that mean one thing ("L2" and "l2", "swish" and "silu")
        seen: dict[str, ExperimentSpec] = {}
        for s in specs:
            trained = {k: v for k, v in s.config.items() if k not in PRESENTATION + ("name", "sweep_point")}
            other = seen.setdefault(json.dumps([_canonical(trained), s.inputs], sort_keys=True, default=repr), s)
            if other is not s:
                raise ConfigError(f"{file}: sweep: the grid points {other.sweep_point} and {s.sweep_point} train the "
                                  "same experiment (their values mean the same): each grid point once")
    return specs


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        # "utf-8-sig": a byte-order mark (which some editors put first) is read past, not an error
        return tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid TOML: arrays or tables nested too deeply to read") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def load_experiment(path: str | Path) -> list[ExperimentSpec]:
    """Every grid point of one experiment file, validated."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    return expand(read_toml(path), str(path))


def load_experiments(paths: list[str | Path]) -> list[ExperimentSpec]:
    """Load and validate all files first (nothing runs if one is bad); names must be unique."""
    specs: list[ExperimentSpec] = []
    seen: dict[str, str] = {}
    for p in paths:
        got = load_experiment(p)
        name = got[0].name
        if name in seen:
            raise ConfigError(f"{p}: name {name!r} is already used by {seen[name]}")
        seen[name] = str(p)
        specs.extend(got)
    return specs
