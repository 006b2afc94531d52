"""The checks of an experiment file's sections (``[model]``, ``[regularize]``, ``[train]``) and the
rules every check follows: each failure is a ``ConfigError`` that names the file, the key, what was
expected and what was found. ``schema.validate`` puts them together."""

from __future__ import annotations

import math
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
from .code import resolve

__all__ = ["ConfigError", "expect", "is_int", "is_num", "bounded_int", "unknown", "model_section",
           "regularize_section", "train_section", "LIMITS", "MAX_STRENGTH", "TOP_KEYS", "REFERENCE_KEYS",
           "ANALYSIS_KEYS"]


TOP_KEYS = {"name", "title", "description", "seeds", "data", "split", "model", "baseline", "regularize", "train",
            "sweep", "reference", "analysis", "search"}
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


def expect(cond: bool, file: str, key: str, what: str, got: Any) -> None:
    if not cond:
        raise ConfigError(f"{file}: {key}: expected {what}; got {got!r}")


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def bounded_int(v: Any, file: str, key: str, lo: int, hi: int) -> int:
    expect(is_int(v) and lo <= v <= hi, file, key, f"an integer from {lo} to {hi}", v)
    return v


def unknown(table: Mapping, allowed: set, file: str, key: str) -> None:
    bad = set(table) - allowed
    if bad:
        raise ConfigError(f"{file}: {key}: unknown key(s) {sorted(bad)}; expected some of {sorted(allowed)}")


def _obj_config(spec: Any, file: str, key: str) -> dict[str, Any]:
    """``{name = X, a = 1}`` or ``"alias"`` -> serialized ``{"class_name": X, "config": {...}}``."""
    if isinstance(spec, str):
        return {"class_name": spec, "config": {}}
    expect(isinstance(spec, Mapping) and isinstance(spec.get("name"), str), file, key,
            'a table with "name" (e.g. {name = "L2", l2 = 0.001}) or an alias string', spec)
    cfg = {k: v for k, v in spec.items() if k != "name"}
    if "terms" in cfg:  # a sum of regularizers
        expect(isinstance(cfg["terms"], list) and cfg["terms"], file, f"{key}.terms", "a non-empty list", cfg["terms"])
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
    expect(isinstance(layers, list) and len(layers) > 0, file, "model.layers", "a non-empty list of layer tables", layers)
    out = []
    for i, layer in enumerate(layers):
        k = f"model.layers[{i}]"
        expect(isinstance(layer, Mapping), file, k, "a table", layer)
        unknown(layer, LAYER_KEYS, file, k)
        lay = {"units": bounded_int(layer.get("units"), file, f"{k}.units", 1, LIMITS["units"])}
        if "activation" in layer:
            expect(isinstance(layer["activation"], str), file, f"{k}.activation", "an activation name", layer["activation"])
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
                expect(isinstance(layer[bk], bool), file, f"{k}.{bk}", "true or false", layer[bk])
                lay[bk] = layer[bk]
        if "dropout" in layer:
            expect(is_num(layer["dropout"]) and 0 <= layer["dropout"] < 1, file, f"{k}.dropout", "a rate in [0, 1)",
                    layer["dropout"])
            lay["dropout"] = float(layer["dropout"])
        out.append(lay)
    return out


def model_section(raw: Mapping[str, Any], file: str, base: Path) -> tuple[dict[str, Any], dict[str, str]]:
    model = raw["model"]
    expect(isinstance(model, Mapping), file, "model", "a table with layers, or builder (and args)", model)
    unknown(model, {"layers", "builder", "args"}, file, "model")
    if ("layers" in model) == ("builder" in model):
        raise ConfigError(f"{file}: model: give either [[model.layers]] (an MLP) or builder = \"file.py:function\"")
    inputs: dict[str, str] = {}
    if "layers" in model:
        if "args" in model:
            raise ConfigError(f"{file}: model.args: only used with model.builder")
        return {"layers": _layers(model["layers"], file)}, inputs
    args = model.get("args", {})
    expect(isinstance(args, Mapping), file, "model.args", "a table of keyword arguments", args)
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


def regularize_section(reg: Any, file: str) -> dict[str, Any]:
    expect(isinstance(reg, Mapping), file, "regularize", "a table with params, activity and/or constraints", reg)
    unknown(reg, REGULARIZE_KEYS, file, "regularize")
    out: dict[str, Any] = {}
    for key, deser in (("params", _regularizers.deserialize), ("activity", _regularizers.deserialize),
                       ("constraints", _constraints.deserialize)):
        if key in reg:
            table = reg[key]
            expect(isinstance(table, Mapping) and table, file, f"regularize.{key}",
                    'a table of "<pattern>" = <regularizer>', table)
            out[key] = {p: _check_object(v, file, f"regularize.{key}.{p!r}", deser) for p, v in table.items()}
    return out


def _loss(loss: Any, file: str) -> Any:
    if loss is None:
        return None
    if isinstance(loss, Mapping) and loss.get("name") == "regularized":
        unknown(loss, REG_LOSS_KEYS, file, "train.loss")
        expect(is_num(loss.get("strength")) and 0 <= loss["strength"] < MAX_STRENGTH, file, "train.loss.strength",
                f"a non-negative number below {MAX_STRENGTH:g}", loss.get("strength"))
        codes = loss.get("codes")
        expect(isinstance(codes, list) and all(is_int(c) and c in _losses.R_LIST_CODES for c in codes), file,
                "train.loss.codes", f"a list of codes from {sorted(_losses.R_LIST_CODES)}", codes)
        try:
            _losses.get(loss.get("data_loss", "binary_crossentropy"))
        except ValueError as e:
            raise ConfigError(f"{file}: train.loss.data_loss: {e}") from None
        return dict(loss)
    if isinstance(loss, Mapping):
        unknown(loss, {"name", "from_logits"}, file, "train.loss")
        expect(isinstance(loss.get("from_logits", False), bool), file, "train.loss.from_logits", "true or false",
                loss.get("from_logits"))
        name = loss.get("name")
    else:
        name = loss
    try:
        lo = _losses.get(name) if isinstance(name, str) else None
    except ValueError as e:
        raise ConfigError(f"{file}: train.loss: {e}") from None
    expect(lo is not None, file, "train.loss", 'a Keras loss name, {name = ..., from_logits = true} or '
            '{name = "regularized", ...}', loss)
    if isinstance(loss, Mapping) and loss.get("from_logits") and not hasattr(lo, "from_logits"):
        raise ConfigError(f"{file}: train.loss.from_logits: {name!r} takes no from_logits")
    return dict(loss) if isinstance(loss, Mapping) else loss


def train_section(train: Any, file: str) -> dict[str, Any]:
    expect(isinstance(train, Mapping), file, "train", "a table", train)
    unknown(train, TRAIN_KEYS, file, "train")
    for k in ("epochs", "batch_size"):
        if k not in train:
            raise ConfigError(f"{file}: train.{k}: missing; every experiment sets it (e.g. {k} = "
                              f"{200 if k == 'epochs' else 32})")
    tr: dict[str, Any] = {"epochs": bounded_int(train.get("epochs"), file, "train.epochs", 1, LIMITS["epochs"]),
                          "batch_size": bounded_int(train.get("batch_size"), file, "train.batch_size", 1,
                                                     LIMITS["batch_size"])}
    opt = train.get("optimizer", "adam")
    opt = {"name": opt} if isinstance(opt, str) else opt
    expect(isinstance(opt, Mapping) and isinstance(opt.get("name"), str), file, "train.optimizer",
            'a name or a table {name = "adam", learning_rate = ...}', opt)
    for k, v in opt.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            expect(is_num(v) and abs(v) < MAX_STRENGTH, file, f"train.optimizer.{k}", "a finite number below 1e6", v)
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
        expect(isinstance(es, Mapping), file, "train.early_stopping", "a table", es)
        unknown(es, ES_KEYS, file, "train.early_stopping")
        if "patience" in es:
            bounded_int(es["patience"], file, "train.early_stopping.patience", 0, LIMITS["epochs"])
        if "start_from_epoch" in es:
            bounded_int(es["start_from_epoch"], file, "train.early_stopping.start_from_epoch", 0, LIMITS["epochs"])
        if "restore_best_weights" in es:
            expect(isinstance(es["restore_best_weights"], bool), file, "train.early_stopping.restore_best_weights",
                    "true or false", es["restore_best_weights"])
        if "min_delta" in es:
            expect(is_num(es["min_delta"]), file, "train.early_stopping.min_delta", "a finite number", es["min_delta"])
        monitors = ("val_loss", "val_data_loss", "val_accuracy", "loss", "data_loss", "accuracy")
        expect(es.get("monitor", "val_loss") in monitors, file, "train.early_stopping.monitor",
                f"one of {list(monitors)}", es.get("monitor"))
        expect(es.get("mode", "auto") in ("auto", "min", "max"), file, "train.early_stopping.mode",
                "auto, min or max", es.get("mode"))
        tr["early_stopping"] = dict(es)
    return tr
