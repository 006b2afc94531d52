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
the key and what was expected.
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

from .. import activations as _activations
from .. import constraints as _constraints
from .. import initializers as _initializers
from .. import losses as _losses
from .. import optimizers as _optimizers
from .. import devices as _devices
from .. import regularizers as _regularizers
from . import data as _data
from .code import resolve
from .spec import PRESENTATION, ExperimentSpec

__all__ = ["ExperimentSpec", "ConfigError", "load_experiment", "load_experiments", "validate", "LIMITS"]

TOP_KEYS = {"name", "title", "description", "seeds", "data", "split", "model", "baseline", "regularize", "train",
            "sweep", "reference", "analysis"}
TRAIN_KEYS = {"loss", "optimizer", "epochs", "batch_size", "early_stopping", "device"}
LAYER_KEYS = {"units", "activation", "use_bias", "kernel_regularizer", "bias_regularizer", "activity_regularizer",
              "kernel_constraint", "bias_constraint", "kernel_initializer", "bias_initializer",
              "activity_before_activation", "dropout"}
ES_KEYS = {"monitor", "patience", "min_delta", "restore_best_weights", "start_from_epoch", "mode"}
REFERENCE_KEYS = {"accuracy", "n", "label", "note"}
ANALYSIS_KEYS = {"sparsity_layers", "weight_histograms"}
REG_LOSS_KEYS = {"name", "data_loss", "codes", "strength"}
REGULARIZE_KEYS = {"params", "activity", "constraints"}
#: upper bounds of sizes (docs/experiment-files.md states them)
LIMITS = {"seeds": 10_000, "epochs": 100_000, "batch_size": 1_000_000, "units": 100_000, "name": 100,
          "grid_points": 10_000}
#: the largest regularization strength (and learning rate) an experiment file may give: past it,
#: a model only diverges
MAX_STRENGTH = 1e6
#: keys of a validated config that do not change what is trained (kept out of run ids)


class ConfigError(ValueError):
    """A bad experiment file: the message names the file, the key and what was expected."""


def _expect(cond: bool, file: str, key: str, what: str, got: Any) -> None:
    if not cond:
        raise ConfigError(f"{file}: {key}: expected {what}; got {got!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _bounded_int(v: Any, file: str, key: str, lo: int, hi: int) -> int:
    _expect(_is_int(v) and lo <= v <= hi, file, key, f"an integer from {lo} to {hi}", v)
    return v


def _unknown(table: Mapping, allowed: set, file: str, key: str) -> None:
    bad = set(table) - allowed
    if bad:
        raise ConfigError(f"{file}: {key}: unknown key(s) {sorted(bad)}; expected some of {sorted(allowed)}")


def _obj_config(spec: Any, file: str, key: str) -> dict[str, Any]:
    """``{name = X, a = 1}`` or ``"alias"`` -> serialized ``{"class_name": X, "config": {...}}``."""
    if isinstance(spec, str):
        return {"class_name": spec, "config": {}}
    _expect(isinstance(spec, Mapping) and isinstance(spec.get("name"), str), file, key,
            'a table with "name" (e.g. {name = "L2", l2 = 0.001}) or an alias string', spec)
    cfg = {k: v for k, v in spec.items() if k != "name"}
    if "terms" in cfg:  # a sum of regularizers
        _expect(isinstance(cfg["terms"], list) and cfg["terms"], file, f"{key}.terms", "a non-empty list", cfg["terms"])
        cfg["terms"] = [_obj_config(t, file, f"{key}.terms[{i}]") for i, t in enumerate(cfg["terms"])]
    for k, v in cfg.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{file}: {key}.{k}: expected a finite number; got {v!r}")
    return {"class_name": spec["name"], "config": cfg}


def _check_object(spec: Any, file: str, key: str, deserialize) -> dict[str, Any]:
    """Normalize a regularizer/constraint entry and prove it builds (its error names the argument)."""
    ser = _obj_config(spec, file, key)
    try:
        obj = deserialize(ser)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{file}: {key}: {e}") from None
    for k, v in (obj.hparams().items() if hasattr(obj, "hparams") else ()):
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not abs(v) < MAX_STRENGTH:
            raise ConfigError(f"{file}: {key}: {k}: expected a strength below {MAX_STRENGTH:g}; got {v!r}")
    return ser


# ----------------------------------------------------------------------------- sections


def _layers(layers: Any, file: str) -> list[dict[str, Any]]:
    _expect(isinstance(layers, list) and len(layers) > 0, file, "model.layers", "a non-empty list of layer tables", layers)
    out = []
    for i, layer in enumerate(layers):
        k = f"model.layers[{i}]"
        _expect(isinstance(layer, Mapping), file, k, "a table", layer)
        _unknown(layer, LAYER_KEYS, file, k)
        lay = {"units": _bounded_int(layer.get("units"), file, f"{k}.units", 1, LIMITS["units"])}
        if "activation" in layer:
            _expect(isinstance(layer["activation"], str), file, f"{k}.activation", "an activation name", layer["activation"])
            try:
                _activations.get(layer["activation"])
            except ValueError as e:
                raise ConfigError(f"{file}: {k}.activation: {e}") from None
            lay["activation"] = layer["activation"]
        for rk in ("kernel_regularizer", "bias_regularizer", "activity_regularizer"):
            if rk in layer:
                lay[rk] = _check_object(layer[rk], file, f"{k}.{rk}", _regularizers.deserialize)
        for ck in ("kernel_constraint", "bias_constraint"):
            if ck in layer:
                lay[ck] = _check_object(layer[ck], file, f"{k}.{ck}", _constraints.deserialize)
        for ik in ("kernel_initializer", "bias_initializer"):
            if ik in layer:
                try:
                    _initializers.get(layer[ik])
                except ValueError as e:
                    raise ConfigError(f"{file}: {k}.{ik}: {e}") from None
                lay[ik] = layer[ik]
        for bk in ("use_bias", "activity_before_activation"):
            if bk in layer:
                _expect(isinstance(layer[bk], bool), file, f"{k}.{bk}", "true or false", layer[bk])
                lay[bk] = layer[bk]
        if "dropout" in layer:
            _expect(_is_num(layer["dropout"]) and 0 <= layer["dropout"] < 1, file, f"{k}.dropout", "a rate in [0, 1)",
                    layer["dropout"])
            lay["dropout"] = float(layer["dropout"])
        out.append(lay)
    return out


def _model(raw: Mapping[str, Any], file: str, base: Path) -> tuple[dict[str, Any], dict[str, str]]:
    model = raw["model"]
    _expect(isinstance(model, Mapping), file, "model", "a table with layers, or builder (and args)", model)
    _unknown(model, {"layers", "builder", "args"}, file, "model")
    if ("layers" in model) == ("builder" in model):
        raise ConfigError(f"{file}: model: give either [[model.layers]] (an MLP) or builder = \"file.py:function\"")
    inputs: dict[str, str] = {}
    if "layers" in model:
        if "args" in model:
            raise ConfigError(f"{file}: model.args: only used with model.builder")
        return {"layers": _layers(model["layers"], file)}, inputs
    args = model.get("args", {})
    _expect(isinstance(args, Mapping), file, "model.args", "a table of keyword arguments", args)
    try:
        fn, _, digest = resolve(model["builder"], base, f"{file}: model.builder")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    inputs["model.builder"] = digest or model["builder"]
    return {"builder": model["builder"], "args": _with_defaults(fn, dict(args), file)}, inputs


def _with_defaults(fn: Any, args: dict[str, Any], file: str) -> dict[str, Any]:
    """The builder's arguments with its defaults filled in, so that two files that mean the same
    model (one writing a default out) are the same experiment; unknown arguments are an error."""
    import inspect

    params = inspect.signature(fn).parameters
    varkw = any(p.kind == p.VAR_KEYWORD for p in params.values())
    named = {k: p for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for k in ("input_shape", "n_outputs"):
        if k in args:
            raise ConfigError(f"{file}: model.args.{k}: set from the data; remove it")
    bad = set(args) - set(named)
    if bad and not varkw:
        raise ConfigError(f"{file}: model.args: the builder takes no argument(s) {sorted(bad)}; it takes "
                          f"{sorted(k for k in named if k not in ('input_shape', 'n_outputs'))}")
    out = {k: p.default for k, p in named.items() if k not in ("input_shape", "n_outputs")
           and p.default is not inspect.Parameter.empty and isinstance(p.default, (int, float, str, bool, type(None)))}
    out.update(args)
    missing = [k for k, p in named.items() if k not in out and k not in ("input_shape", "n_outputs")
               and p.default is inspect.Parameter.empty]
    if missing:
        raise ConfigError(f"{file}: model.args: the builder needs {missing}")
    return out


def _regularize(reg: Any, file: str) -> dict[str, Any]:
    _expect(isinstance(reg, Mapping), file, "regularize", "a table with params, activity and/or constraints", reg)
    _unknown(reg, REGULARIZE_KEYS, file, "regularize")
    out: dict[str, Any] = {}
    for key, deser in (("params", _regularizers.deserialize), ("activity", _regularizers.deserialize),
                       ("constraints", _constraints.deserialize)):
        if key in reg:
            table = reg[key]
            _expect(isinstance(table, Mapping) and table, file, f"regularize.{key}",
                    'a table of "<pattern>" = <regularizer>', table)
            out[key] = {p: _check_object(v, file, f"regularize.{key}.{p!r}", deser) for p, v in table.items()}
    return out


def _loss(loss: Any, file: str) -> Any:
    if loss is None:
        return None
    if isinstance(loss, Mapping) and loss.get("name") == "regularized":
        _unknown(loss, REG_LOSS_KEYS, file, "train.loss")
        _expect(_is_num(loss.get("strength")) and 0 <= loss["strength"] < MAX_STRENGTH, file, "train.loss.strength",
                f"a non-negative number below {MAX_STRENGTH:g}", loss.get("strength"))
        codes = loss.get("codes")
        _expect(isinstance(codes, list) and all(_is_int(c) and c in _losses.R_LIST_CODES for c in codes), file,
                "train.loss.codes", f"a list of codes from {sorted(_losses.R_LIST_CODES)}", codes)
        try:
            _losses.get(loss.get("data_loss", "binary_crossentropy"))
        except ValueError as e:
            raise ConfigError(f"{file}: train.loss.data_loss: {e}") from None
        return dict(loss)
    if isinstance(loss, Mapping):
        _unknown(loss, {"name", "from_logits"}, file, "train.loss")
        _expect(isinstance(loss.get("from_logits", False), bool), file, "train.loss.from_logits", "true or false",
                loss.get("from_logits"))
        name = loss.get("name")
    else:
        name = loss
    try:
        lo = _losses.get(name) if isinstance(name, str) else None
    except ValueError as e:
        raise ConfigError(f"{file}: train.loss: {e}") from None
    _expect(lo is not None, file, "train.loss", 'a Keras loss name, {name = ..., from_logits = true} or '
            '{name = "regularized", ...}', loss)
    if isinstance(loss, Mapping) and loss.get("from_logits") and not hasattr(lo, "from_logits"):
        raise ConfigError(f"{file}: train.loss.from_logits: {name!r} takes no from_logits")
    return dict(loss) if isinstance(loss, Mapping) else loss


def _train(train: Any, file: str) -> dict[str, Any]:
    _expect(isinstance(train, Mapping), file, "train", "a table", train)
    _unknown(train, TRAIN_KEYS, file, "train")
    for k in ("epochs", "batch_size"):
        if k not in train:
            raise ConfigError(f"{file}: train.{k}: missing; every experiment sets it (e.g. {k} = "
                              f"{200 if k == 'epochs' else 32})")
    tr: dict[str, Any] = {"epochs": _bounded_int(train.get("epochs"), file, "train.epochs", 1, LIMITS["epochs"]),
                          "batch_size": _bounded_int(train.get("batch_size"), file, "train.batch_size", 1,
                                                     LIMITS["batch_size"])}
    opt = train.get("optimizer", "adam")
    opt = {"name": opt} if isinstance(opt, str) else opt
    _expect(isinstance(opt, Mapping) and isinstance(opt.get("name"), str), file, "train.optimizer",
            'a name or a table {name = "adam", learning_rate = ...}', opt)
    for k, v in opt.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            _expect(_is_num(v) and abs(v) < MAX_STRENGTH, file, f"train.optimizer.{k}", "a finite number below 1e6", v)
    try:
        import torch

        _optimizers.get(dict(opt), [torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{file}: train.optimizer: {e}") from None
    tr["optimizer"] = dict(opt)
    if "device" in train:
        try:
            tr["device"] = _devices.check(train["device"], f"{file}: train.device")
        except _devices.DeviceError as e:
            raise ConfigError(str(e)) from None
    loss = _loss(train.get("loss"), file)
    if loss is not None:
        tr["loss"] = loss
    if "early_stopping" in train:
        es = train["early_stopping"]
        _expect(isinstance(es, Mapping), file, "train.early_stopping", "a table", es)
        _unknown(es, ES_KEYS, file, "train.early_stopping")
        if "patience" in es:
            _bounded_int(es["patience"], file, "train.early_stopping.patience", 0, LIMITS["epochs"])
        if "start_from_epoch" in es:
            _bounded_int(es["start_from_epoch"], file, "train.early_stopping.start_from_epoch", 0, LIMITS["epochs"])
        if "restore_best_weights" in es:
            _expect(isinstance(es["restore_best_weights"], bool), file, "train.early_stopping.restore_best_weights",
                    "true or false", es["restore_best_weights"])
        if "min_delta" in es:
            _expect(_is_num(es["min_delta"]), file, "train.early_stopping.min_delta", "a finite number", es["min_delta"])
        monitors = ("val_loss", "val_data_loss", "val_accuracy", "loss", "data_loss", "accuracy")
        _expect(es.get("monitor", "val_loss") in monitors, file, "train.early_stopping.monitor",
                f"one of {list(monitors)}", es.get("monitor"))
        _expect(es.get("mode", "auto") in ("auto", "min", "max"), file, "train.early_stopping.mode",
                "auto, min or max", es.get("mode"))
        tr["early_stopping"] = dict(es)
    return tr


def validate(raw: Mapping[str, Any], file: str) -> ExperimentSpec:
    """Check every key and value of one parsed experiment file without a ``[[sweep]]`` (see
    ``expand``); raise ``ConfigError`` on the first problem."""
    _unknown(raw, TOP_KEYS, file, "the file")
    for key in ("name", "data", "model", "train"):
        if key not in raw:
            raise ConfigError(f"{file}: {key}: missing; every experiment needs name, data, model and train")
    base = Path(file).resolve().parent
    cfg: dict[str, Any] = {}
    name = raw["name"]
    _expect(isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,%d}" % LIMITS["name"], name) is not None, file,
            "name", f"a string of 1 to {LIMITS['name']} letters, digits, _ and -", name)
    cfg["name"] = name
    for key in ("title", "description"):
        if key in raw:
            _expect(isinstance(raw[key], str) and len(raw[key]) <= 2000, file, key, "a string", raw[key])
            cfg[key] = raw[key]
    if "seeds" in raw:
        cfg["seeds"] = _bounded_int(raw["seeds"], file, "seeds", 1, LIMITS["seeds"])
    try:
        cfg["data"] = _data.check_data(raw["data"], file)
        cfg["split"] = _data.check_split(raw.get("split"), file, "files" in raw["data"])
        inputs = _data.data_inputs(cfg["data"], base, file)
    except _data.DataError as e:
        raise ConfigError(str(e)) from None
    cfg["model"], model_inputs = _model(raw, file, base)
    inputs.update(model_inputs)
    if "baseline" in raw:
        b = raw["baseline"]
        _expect(isinstance(b, Mapping) and set(b) <= {"args"} and isinstance(b.get("args", {}), Mapping), file,
                "baseline", "a table with args = {...} (builder arguments of the unregularized baseline)", b)
        if "builder" not in cfg["model"]:
            raise ConfigError(f"{file}: baseline.args: only used with model.builder")
        bad = set(b.get("args", {})) - set(cfg["model"]["args"])
        if bad:
            raise ConfigError(f"{file}: baseline.args: the builder takes no argument(s) {sorted(bad)}; it takes "
                              f"{sorted(cfg['model']['args'])}")
        cfg["baseline"] = {"args": dict(b.get("args", {}))}
    if "regularize" in raw:
        cfg["regularize"] = _regularize(raw["regularize"], file)
    cfg["train"] = _train(raw["train"], file)
    if "reference" in raw:
        ref = raw["reference"]
        _expect(isinstance(ref, Mapping) and set(ref) <= REFERENCE_KEYS, file, "reference",
                f"a table with some of {sorted(REFERENCE_KEYS)}", ref)
        if "accuracy" in ref:
            _expect(_is_num(ref["accuracy"]) and 0 <= ref["accuracy"] <= 1, file, "reference.accuracy",
                    "a number in [0, 1]", ref["accuracy"])
        if "n" in ref:
            _bounded_int(ref["n"], file, "reference.n", 1, _data.MAX_EXAMPLES)
        for k in ("label", "note"):
            if k in ref:
                _expect(isinstance(ref[k], str), file, f"reference.{k}", "a string", ref[k])
        cfg["reference"] = dict(ref)
    if "analysis" in raw:
        an = raw["analysis"]
        _expect(isinstance(an, Mapping) and set(an) <= ANALYSIS_KEYS, file, "analysis",
                f"a table with some of {sorted(ANALYSIS_KEYS)}", an)
        if "sparsity_layers" in an:
            _expect(isinstance(an["sparsity_layers"], list) and all(isinstance(s, str) for s in an["sparsity_layers"]),
                    file, "analysis.sparsity_layers", "a list of module names", an["sparsity_layers"])
        if "weight_histograms" in an:
            _expect(isinstance(an["weight_histograms"], bool), file, "analysis.weight_histograms", "true or false",
                    an["weight_histograms"])
        cfg["analysis"] = dict(an)
    return ExperimentSpec(cfg, file, inputs)


# ----------------------------------------------------------------------------- sweeps


def column(path: list) -> str:
    """A sweep path as a results column: its keys joined by "/"."""
    return "/".join(str(p) for p in path)


def _get(raw: Any, path: list, file: str, where: str) -> Any:
    node = raw
    for i, key in enumerate(path):
        here = column(path[:i + 1])
        if isinstance(node, str):
            raise ConfigError(f"{file}: {where}: {column(path[:i])!r} is the bare alias {node!r}; write it as a table "
                              f"(e.g. {{name = {node!r}, ...}}) to sweep one of its arguments")
        if isinstance(node, list):
            if not _is_int(key) or not 0 <= key < len(node):
                raise ConfigError(f"{file}: {where}: {here!r}: expected an index below {len(node)}; got {key!r}")
        elif isinstance(node, Mapping):
            if key not in node:
                raise ConfigError(f"{file}: {where}: {here!r} is not in the file; the keys there are {sorted(node)}")
        else:
            raise ConfigError(f"{file}: {where}: {column(path[:i])!r} holds a value, not a table or list")
        node = node[key]
    return node


def _set(raw: Any, path: list, value: Any) -> None:
    node = raw
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


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


def expand(raw: Mapping[str, Any], file: str) -> list[ExperimentSpec]:
    """One spec per grid point of the file's ``[[sweep]]`` entries (their product), each
    validated; a file without sweeps gives one spec."""
    sweeps = raw.get("sweep", [])
    _expect(isinstance(sweeps, list), file, "sweep", "an array of tables [[sweep]]", sweeps)
    axes = []
    for i, s in enumerate(sweeps):
        where = f"sweep[{i}]"
        _expect(isinstance(s, Mapping) and set(s) == {"path", "values"}, file, where,
                "a table with path = [...] and values = [...]", s)
        path, values = s["path"], s["values"]
        _expect(isinstance(path, list) and path and path[0] != "sweep", file, f"{where}.path",
                "a non-empty list of keys and indexes", path)
        _expect(path[0] not in PRESENTATION + ("name",), file, f"{where}.path",
                "a key that changes what is trained (not name, seeds, title, description or reference)", path)
        _expect(isinstance(values, list) and 0 < len(values) <= 1000, file, f"{where}.values",
                "a list of 1 to 1000 values", values)
        _get(raw, path, file, f"{where}.path")
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
    body = {k: v for k, v in raw.items() if k != "sweep"}
    if axes:
        validate(body, file)  # an error of the file as written names no sweep point
    specs = []
    for point in itertools.product(*[v for _, v in axes]) if axes else [()]:
        r = copy.deepcopy(body)
        for (path, _), v in zip(axes, point):
            _set(r, path, v)
        try:
            spec = validate(r, file)
        except ConfigError as e:
            if not axes:
                raise
            at = ", ".join(f"{column(p)} = {v!r}" for (p, _), v in zip(axes, point))
            raise ConfigError(f"{e} (at the sweep point {at})") from None
        if axes:
            spec.config["sweep_point"] = {column(p): v for (p, _), v in zip(axes, point)}
        specs.append(spec)
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
