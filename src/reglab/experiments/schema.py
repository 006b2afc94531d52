"""Experiment files (TOML): schema and validation.

An experiment file describes one model family trained over many seeds::

    name = "p2_layer_regularizers"      # unique id, letters/digits/_/-
    program = 2                          # the lecture program it reproduces (optional)
    title = "..."                        # one line for the report
    description = "..."                  # optional
    seeds = 20                           # default number of seeds (CLI --seeds overrides)

    [data]                               # reglab.datasets name and its arguments
    name = "blobs"

    [train]
    loss = "binary_crossentropy"         # or {name = "regularized", data_loss = ..., codes = [...], strength = ...}
    optimizer = {name = "adam", learning_rate = 0.005}
    epochs = 200
    batch_size = 20
    early_stopping = {patience = 20, restore_best_weights = true}   # optional

    [[model.layers]]                     # Keras Dense arguments (see reglab.models.mlp)
    units = 32
    activation = "relu"
    kernel_regularizer = {name = "L1", l1 = 0.001}

    [lecture]                            # what the lecture reported (optional)
    accuracy = 0.85

Regularizers and constraints are written ``{name = "<class or alias>", <argument> = <value>, ...}``
or as a bare alias string (``"l2"``). Validation happens before anything runs; every error names
the file, the key and what was expected.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import constraints as _constraints
from .. import datasets as _datasets
from .. import losses as _losses
from .. import optimizers as _optimizers
from .. import regularizers as _regularizers
from .. import activations as _activations
from .. import initializers as _initializers

__all__ = ["ExperimentSpec", "ConfigError", "load_experiment", "load_experiments", "validate"]

TOP_KEYS = {"name", "program", "title", "description", "seeds", "data", "model", "train", "lecture", "analysis"}
TRAIN_KEYS = {"loss", "optimizer", "epochs", "batch_size", "early_stopping"}
LAYER_KEYS = {"units", "activation", "use_bias", "kernel_regularizer", "bias_regularizer", "activity_regularizer",
              "kernel_constraint", "bias_constraint", "kernel_initializer", "bias_initializer",
              "activity_before_activation", "dropout"}
ES_KEYS = {"monitor", "patience", "min_delta", "restore_best_weights", "start_from_epoch"}
LECTURE_KEYS = {"accuracy", "note"}
ANALYSIS_KEYS = {"sparsity_layers", "weight_histograms"}
REG_LOSS_KEYS = {"name", "data_loss", "codes", "strength"}


class ConfigError(ValueError):
    """A bad experiment file: the message names the file, the key and what was expected."""


def _where(file: str, key: str) -> str:
    return f"{file}: {key}"


def _expect(cond: bool, file: str, key: str, what: str, got: Any) -> None:
    if not cond:
        raise ConfigError(f"{_where(file, key)}: expected {what}; got {got!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _obj_config(spec: Any, file: str, key: str) -> dict[str, Any]:
    """``{name = X, a = 1}`` or ``"alias"`` -> serialized ``{"class_name": X, "config": {...}}``."""
    if isinstance(spec, str):
        return {"class_name": spec, "config": {}}
    _expect(isinstance(spec, Mapping) and "name" in spec, file, key,
            'a table with "name" (e.g. {name = "L2", l2 = 0.001}) or an alias string', spec)
    cfg = {k: v for k, v in spec.items() if k != "name"}
    if "terms" in cfg:  # a sum of regularizers
        cfg["terms"] = [_obj_config(t, file, f"{key}.terms[{i}]") for i, t in enumerate(cfg["terms"])]
    return {"class_name": spec["name"], "config": cfg}


def _check_object(spec: Any, file: str, key: str, deserialize) -> dict[str, Any]:
    """Normalize a regularizer/constraint entry and prove it builds (its error names the argument)."""
    ser = _obj_config(spec, file, key)
    try:
        deserialize(ser)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{_where(file, key)}: {e}") from None
    return ser


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated experiment: plain JSON-able data (``config``) plus where it came from."""

    config: dict[str, Any]
    path: str

    @property
    def name(self) -> str:
        return self.config["name"]

    @property
    def title(self) -> str:
        return self.config.get("title", self.name)

    @property
    def program(self) -> int | None:
        return self.config.get("program")

    @property
    def seeds(self) -> int:
        return int(self.config.get("seeds", 20))

    @property
    def schedule(self) -> dict[str, Any]:
        """What shapes training apart from regularization: optimizer name and learning rate,
        epochs, batch size. Each schedule gets its own unregularized baseline."""
        t = self.config["train"]
        opt = dict(t["optimizer"])
        name = opt.get("name", "adam")
        # AdamW is Adam plus decoupled decay (a regularizer): it shares Adam's baseline
        return {"optimizer": "adam" if name == "adamw" else name, "learning_rate": float(opt.get("learning_rate", 0.001)),
                "epochs": int(t["epochs"]), "batch_size": int(t["batch_size"])}

    @property
    def is_baseline(self) -> bool:
        return bool(self.config.get("baseline", False))

    def digest(self) -> str:
        """Hash of the validated config (not of the file's formatting)."""
        cfg = {k: v for k, v in self.config.items() if k not in ("seeds", "title", "description", "lecture")}
        return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]

    def baseline(self) -> ExperimentSpec:
        """The unregularized model with this experiment's architecture, data and schedule: no
        regularizer, constraint, dropout or early stopping; plain Keras optimizer; BCE loss."""
        s = self.schedule
        layers = []
        for layer in self.config["model"]["layers"]:
            keep = {k: v for k, v in layer.items() if k in ("units", "activation", "use_bias", "kernel_initializer",
                                                            "bias_initializer")}
            layers.append(keep)
        tag = f"lr{s['learning_rate']:g}_e{s['epochs']}_b{s['batch_size']}_{s['optimizer']}"
        name = "baseline_" + re.sub(r"[^A-Za-z0-9_-]", "", tag.replace(".", "p"))
        opt = {"name": "adam" if s["optimizer"] == "adamw" else s["optimizer"], "learning_rate": s["learning_rate"]}
        cfg = {
            "name": name, "baseline": True,
            "title": f"Unregularized baseline (lr {s['learning_rate']:g}, {s['epochs']} epochs, batch {s['batch_size']})",
            "seeds": self.seeds, "data": copy.deepcopy(self.config["data"]), "model": {"layers": layers},
            "train": {"loss": "binary_crossentropy" if self.config["data"]["name"] != "digits" else
                      "sparse_categorical_crossentropy", "optimizer": opt, "epochs": s["epochs"],
                      "batch_size": s["batch_size"]},
            "analysis": copy.deepcopy(self.config.get("analysis", {})),
        }
        return ExperimentSpec(cfg, f"<baseline of {self.path}>")


def validate(raw: Mapping[str, Any], file: str) -> ExperimentSpec:
    """Check every key and value of a parsed experiment file; raise ``ConfigError`` on the first problem."""
    unknown = set(raw) - TOP_KEYS
    if unknown:
        raise ConfigError(f"{file}: unknown key(s) {sorted(unknown)}; expected some of {sorted(TOP_KEYS)}")
    for key in ("name", "data", "model", "train"):
        if key not in raw:
            raise ConfigError(f"{_where(file, key)}: missing; every experiment needs name, data, model and train")
    cfg: dict[str, Any] = {}
    name = raw["name"]
    _expect(isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_-]+", name or "") is not None, file, "name",
            "a string of letters, digits, _ and -", name)
    cfg["name"] = name
    for key in ("title", "description"):
        if key in raw:
            _expect(isinstance(raw[key], str), file, key, "a string", raw[key])
            cfg[key] = raw[key]
    if "program" in raw:
        _expect(_is_int(raw["program"]) and 1 <= raw["program"] <= 7, file, "program", "an integer from 1 to 7",
                raw["program"])
        cfg["program"] = raw["program"]
    if "seeds" in raw:
        _expect(_is_int(raw["seeds"]) and raw["seeds"] > 0, file, "seeds", "a positive integer", raw["seeds"])
        cfg["seeds"] = raw["seeds"]
    # data
    data = raw["data"]
    _expect(isinstance(data, Mapping) and isinstance(data.get("name"), str), file, "data",
            'a table with name = "blobs" | "moons" | "circles" | "digits"', data)
    _expect(data["name"] in _datasets.DATASETS, file, "data.name", f"one of {sorted(_datasets.DATASETS)}", data["name"])
    extra = {k: v for k, v in data.items() if k != "name"}
    if "random_state" in extra:
        raise ConfigError(f"{_where(file, 'data.random_state')}: set by the seed of each run; remove it")
    try:
        _datasets.get(data["name"], random_state=0, **extra)
    except TypeError as e:
        raise ConfigError(f"{_where(file, 'data')}: {e}") from None
    cfg["data"] = dict(data)
    # model
    model = raw["model"]
    _expect(isinstance(model, Mapping) and set(model) == {"layers"}, file, "model", "a table with only 'layers'", model)
    layers = model["layers"]
    _expect(isinstance(layers, list) and len(layers) > 0, file, "model.layers", "a non-empty list of layer tables", layers)
    out_layers = []
    for i, layer in enumerate(layers):
        k = f"model.layers[{i}]"
        _expect(isinstance(layer, Mapping), file, k, "a table", layer)
        bad = set(layer) - LAYER_KEYS
        if bad:
            raise ConfigError(f"{_where(file, k)}: unknown key(s) {sorted(bad)}; expected some of {sorted(LAYER_KEYS)}")
        _expect(_is_int(layer.get("units")) and layer["units"] > 0, file, f"{k}.units", "a positive integer",
                layer.get("units"))
        lay = {"units": layer["units"]}
        if "activation" in layer:
            _expect(isinstance(layer["activation"], str), file, f"{k}.activation", "an activation name", layer["activation"])
            try:
                _activations.get(layer["activation"])
            except ValueError as e:
                raise ConfigError(f"{_where(file, f'{k}.activation')}: {e}") from None
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
                    raise ConfigError(f"{_where(file, f'{k}.{ik}')}: {e}") from None
                lay[ik] = layer[ik]
        for bk in ("use_bias", "activity_before_activation"):
            if bk in layer:
                _expect(isinstance(layer[bk], bool), file, f"{k}.{bk}", "true or false", layer[bk])
                lay[bk] = layer[bk]
        if "dropout" in layer:
            _expect(_is_num(layer["dropout"]) and 0 <= layer["dropout"] < 1, file, f"{k}.dropout", "a rate in [0, 1)",
                    layer["dropout"])
            lay["dropout"] = float(layer["dropout"])
        out_layers.append(lay)
    cfg["model"] = {"layers": out_layers}
    # train
    train = raw["train"]
    _expect(isinstance(train, Mapping), file, "train", "a table", train)
    bad = set(train) - TRAIN_KEYS
    if bad:
        raise ConfigError(f"{_where(file, 'train')}: unknown key(s) {sorted(bad)}; expected some of {sorted(TRAIN_KEYS)}")
    for key in ("epochs", "batch_size"):
        _expect(_is_int(train.get(key)) and train[key] > 0, file, f"train.{key}", "a positive integer", train.get(key))
    tr: dict[str, Any] = {"epochs": train["epochs"], "batch_size": train["batch_size"]}
    opt = train.get("optimizer", "adam")
    opt = {"name": opt} if isinstance(opt, str) else opt
    _expect(isinstance(opt, Mapping) and isinstance(opt.get("name"), str), file, "train.optimizer",
            'a name or a table {name = "adam", learning_rate = ...}', opt)
    try:
        import torch

        _optimizers.get(dict(opt), [torch.nn.Parameter(torch.zeros(1))])
    except ValueError as e:
        raise ConfigError(f"{_where(file, 'train.optimizer')}: {e}") from None
    tr["optimizer"] = dict(opt)
    loss = train.get("loss", "binary_crossentropy")
    if isinstance(loss, Mapping):
        bad = set(loss) - REG_LOSS_KEYS
        if bad or loss.get("name") != "regularized":
            raise ConfigError(f"{_where(file, 'train.loss')}: a loss table must be {{name = \"regularized\", data_loss, "
                              f"codes, strength}}; got {dict(loss)!r}")
        _expect(_is_num(loss.get("strength")) and loss["strength"] >= 0, file, "train.loss.strength",
                "a non-negative number", loss.get("strength"))
        codes = loss.get("codes")
        _expect(isinstance(codes, list) and all(_is_int(c) and c in _losses.LECTURE_CODES for c in codes), file,
                "train.loss.codes", f"a list of lecture codes {sorted(_losses.LECTURE_CODES)}", codes)
        try:
            _losses.get(loss.get("data_loss", "binary_crossentropy"))
        except ValueError as e:
            raise ConfigError(f"{_where(file, 'train.loss.data_loss')}: {e}") from None
        tr["loss"] = dict(loss)
    else:
        try:
            _losses.get(loss)
        except ValueError as e:
            raise ConfigError(f"{_where(file, 'train.loss')}: {e}") from None
        tr["loss"] = loss
    if "early_stopping" in train:
        es = train["early_stopping"]
        _expect(isinstance(es, Mapping), file, "train.early_stopping", "a table", es)
        bad = set(es) - ES_KEYS
        if bad:
            raise ConfigError(f"{_where(file, 'train.early_stopping')}: unknown key(s) {sorted(bad)}; expected some of "
                              f"{sorted(ES_KEYS)}")
        if "patience" in es:
            _expect(_is_int(es["patience"]) and es["patience"] >= 0, file, "train.early_stopping.patience",
                    "a non-negative integer", es["patience"])
        tr["early_stopping"] = dict(es)
    cfg["train"] = tr
    if "lecture" in raw:
        lec = raw["lecture"]
        _expect(isinstance(lec, Mapping) and set(lec) <= LECTURE_KEYS, file, "lecture",
                f"a table with some of {sorted(LECTURE_KEYS)}", lec)
        if "accuracy" in lec:
            _expect(_is_num(lec["accuracy"]) and 0 <= lec["accuracy"] <= 1, file, "lecture.accuracy",
                    "a number in [0, 1]", lec["accuracy"])
        cfg["lecture"] = dict(lec)
    if "analysis" in raw:
        an = raw["analysis"]
        _expect(isinstance(an, Mapping) and set(an) <= ANALYSIS_KEYS, file, "analysis",
                f"a table with some of {sorted(ANALYSIS_KEYS)}", an)
        cfg["analysis"] = dict(an)
    return ExperimentSpec(cfg, file)


def load_experiment(path: str | Path) -> ExperimentSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such experiment file")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    return validate(raw, str(path))


def load_experiments(paths: list[str | Path]) -> list[ExperimentSpec]:
    """Load and validate all files first (nothing runs if one is bad); names must be unique."""
    specs = [load_experiment(p) for p in paths]
    seen: dict[str, str] = {}
    for s in specs:
        if s.name in seen:
            raise ConfigError(f"{s.path}: name {s.name!r} is already used by {seen[s.name]}")
        seen[s.name] = s.path
    return specs
