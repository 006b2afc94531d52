"""Issue 26: a generated table of malformed experiment files and study.tomls.

Every case -- each section and key of an experiment file and of study.toml given a wrong type,
an out-of-range value, an unknown key or a missing required key; user code (builders, loaders,
a study's analyses and sections) that raises, exits, returns junk, does not import or is not
there; bad data files; bad sweeps -- must end ``reglab run`` / ``reglab study`` with a clear
error (a click error: exit status 1, or 2 for a usage error) that names the file (the experiment
file, study.toml or the user's code or data file), with no traceback, before anything trains,
without hanging, and without changing any file outside ``--out``.

The table is built from valid bases (``test_base_is_valid`` proves each base runs) by
systematic edits, so a case is malformed only by its edit. Each case id reads
``<base>-<where>-<what>``.

Two kinds of user code fail only when called after training, by nature: a study's analysis
(``function(out, **args)``, given the results folder) and a report section
(``function(results, runs, out)``). For their *run-time* failures (raising, exiting, returning
junk) the table asks for the same clear error but not for "nothing trained" (``phase =
"after"``); everything such code can get wrong before it is called (import, reference,
signature) is a "before" case like the rest. The two grids of a million and a billion points run
in a subprocess with a time limit (``HANG_S``); every other case runs in-process under an alarm.
A UTF-8 byte-order mark is not an error (``test_byte_order_mark_is_read_past``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from click.testing import CliRunner

from reglab.cli import main

NAN = float("nan")
INF = float("inf")
HANG_S = 60  # a case that has not ended by then hangs

# ============================================================================ TOML writing


def _key(k: Any) -> str:
    return json.dumps(str(k), ensure_ascii=False)


def tv(v: Any) -> str:
    """A TOML value, inline (tables as inline tables, so any edit stays one line)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(tv(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(k)} = {tv(x)}" for k, x in v.items()) + "}"
    raise TypeError(v)


def toml(d: dict) -> str:
    return "".join(f"{_key(k)} = {tv(v)}\n" for k, v in d.items())


def _copy(d: Any) -> Any:
    return json.loads(json.dumps(d, allow_nan=True))


def set_at(d: dict, path: tuple, value: Any) -> dict:
    d = _copy(d)
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return d


def del_at(d: dict, path: tuple) -> dict:
    d = _copy(d)
    node = d
    for k in path[:-1]:
        node = node[k]
    del node[path[-1]]
    return d


# ============================================================================ data and code files


def csv_text(n: int = 60, *, y: Callable[[int], Any] = lambda i: i % 2, x: Callable[[int, int], Any] | None = None,
             header: str = "a,b,y") -> str:
    x = x or (lambda i, j: f"{((i * 7 + j * 3) % 11) / 5 - 1:.3f}")
    return header + "\n" + "".join(f"{x(i, 0)},{x(i, 1)},{y(i)}\n" for i in range(n))


def npz(x: Any, y: Any) -> Callable[[Path], None]:
    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, x=x, y=y)
    return write


def _xy(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2))
    return x, (x[:, 0] > 0).astype(np.int64)


BUILDER_SRC = '''
import math
from torch import nn

def build(input_shape, n_outputs, width=6, dropout=0.0):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(math.prod(input_shape)), width), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(width, n_outputs))
'''

LOADER_SRC = '''
import numpy as np

def load(n=60):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2))
    return x, (x[:, 0] > 0).astype(np.int64)
'''

ANALYSES_SRC = '''
def run(out, k=1):
    return {"title": "an analysis", "table": {"header": ["k"], "rows": [[str(k)]]}}


def sec(results, runs, out):
    return ["a section"]
'''

# ============================================================================ cases


@dataclass
class Case:
    id: str
    command: str  # "run" or "study"
    files: dict[str, Any]  # relative path -> str | bytes | callable(path) | None (a folder)
    targets: list[str]  # relative to the case folder; "." is the folder itself
    names: tuple[str, ...]  # any of these in the output names the file
    phase: str = "before"  # "before": nothing may train; "after": run-time failure of an analysis/section
    subprocess: bool = False


CASES: dict[str, Case] = {}


def add(case: Case) -> None:
    assert case.id not in CASES, case.id
    CASES[case.id] = case


# ---------------------------------------------------------------------------- experiment bases

EXP = "bad_exp.toml"

LAYERS = [
    {"units": 4, "activation": "relu", "kernel_regularizer": {"name": "L2", "l2": 0.01},
     "kernel_constraint": {"name": "MaxNorm", "max_value": 3.0}, "kernel_initializer": "glorot_uniform",
     "bias_initializer": "zeros", "use_bias": True, "activity_before_activation": False, "dropout": 0.1},
    {"units": 1, "activation": "sigmoid"},
]

FULL = {
    "name": "tiny", "title": "a tiny experiment", "description": "every section written out", "seeds": 1,
    "data": {"name": "blobs", "n_samples": 80, "standardize": False, "standardize_target": False},
    "split": {"validation": 0.2, "test": 0.2, "resample": True},
    "model": {"layers": LAYERS},
    "regularize": {"params": {"@biases": {"name": "L1", "l1": 0.001}},
                   "activity": {"1": {"name": "L2", "l2": 0.001}},
                   "constraints": {"2.weight": {"name": "MaxNorm", "max_value": 3.0}}},
    "train": {"loss": "binary_crossentropy",
              "optimizer": {"name": "adam", "learning_rate": 0.01, "beta_1": 0.9},
              "epochs": 2, "batch_size": 20,
              "early_stopping": {"monitor": "val_loss", "patience": 1, "min_delta": 0.0,
                                 "restore_best_weights": True, "start_from_epoch": 0, "mode": "auto"}},
    "reference": {"accuracy": 0.8, "n": 75, "label": "program 0", "note": "a note"},
    "analysis": {"sparsity_layers": ["0"], "weight_histograms": True},
}

MINI = {
    "name": "tiny", "seeds": 1,
    "data": {"name": "blobs", "n_samples": 80},
    "model": {"layers": [{"units": 4, "activation": "relu", "kernel_regularizer": {"name": "L2", "l2": 0.01}},
                         {"units": 1, "activation": "sigmoid"}]},
    "train": {"loss": "binary_crossentropy", "optimizer": {"name": "adam", "learning_rate": 0.01}, "epochs": 1,
              "batch_size": 20},
}

LOGITS = {"name": "binary_crossentropy", "from_logits": True}


def _with(base: dict, **top: Any) -> dict:
    d = _copy(base)
    d.update(_copy(top))
    return d


BASES: dict[str, tuple[dict, dict[str, Any]]] = {
    "full": (FULL, {}),
    "mini": (MINI, {}),
    "moons": (set_at(MINI, ("data",), {"name": "moons", "n_samples": 80, "noise": 0.2}), {}),
    "circles": (set_at(MINI, ("data",), {"name": "circles", "n_samples": 80, "noise": 0.1, "factor": 0.5}), {}),
    "sgd": (set_at(MINI, ("train", "optimizer"), {"name": "sgd", "learning_rate": 0.01, "momentum": 0.9}), {}),
    "regloss": (set_at(MINI, ("train", "loss"), {"name": "regularized", "data_loss": "binary_crossentropy",
                                                 "codes": [2, -1, -1, -1], "strength": 0.001}), {}),
    "builder": (_with({k: v for k, v in MINI.items() if k != "model"},
                      model={"builder": "models.py:build", "args": {"width": 6, "dropout": 0.1}},
                      baseline={"args": {"dropout": 0.0}},
                      train={**MINI["train"], "loss": LOGITS}), {"models.py": BUILDER_SRC}),
    "loader": (set_at(MINI, ("data",), {"loader": "loaders.py:load", "args": {"n": 60}}), {"loaders.py": LOADER_SRC}),
    "csv": (set_at(MINI, ("data",), {"file": "data.csv", "target": "y"}), {"data.csv": csv_text()}),
    "npz": (set_at(MINI, ("data",), {"file": "data.npz"}), {"data.npz": npz(*_xy())}),
    "files": (set_at(MINI, ("data",), {"files": {"train": "train.csv", "test": "test.csv"}, "target": "y"}),
              {"train.csv": csv_text(60), "test.csv": csv_text(20)}),
    "sweep": (_with(MINI, sweep=[{"path": ["model", "layers", 0, "kernel_regularizer", "l2"],
                                  "values": [0.01, 0.001]}]), {}),
}


def exp_case(cid: str, base: str, edit: Callable[[dict], dict] | None = None, *, files: dict | None = None,
             raw: str | bytes | None = None, names: tuple[str, ...] = (), subprocess: bool = False) -> None:
    d, extra = BASES[base]
    content = raw if raw is not None else toml(edit(_copy(d)) if edit else d)
    fs = {**extra, **(files or {}), EXP: content}
    add(Case(f"{base}-{cid}", "run", fs, [EXP], (EXP, *names), subprocess=subprocess))


# ---------------------------------------------------------------------------- experiment: types and ranges

TYPE_BAD_INT = {"str": "2", "bool": True, "float": 2.5, "list": [2], "table": {"v": 2}, "nan": NAN, "inf": INF}
INT_KEYS = [  # (base, path, lo, hi): an integer from lo to hi
    ("full", ("seeds",), 1, 10_000),
    ("full", ("data", "n_samples"), 4, 10_000_000),
    ("full", ("model", "layers", 0, "units"), 1, 100_000),
    ("full", ("train", "epochs"), 1, 100_000),
    ("full", ("train", "batch_size"), 1, 1_000_000),
    ("full", ("train", "early_stopping", "patience"), 0, 100_000),
    ("full", ("train", "early_stopping", "start_from_epoch"), 0, 100_000),
    ("full", ("reference", "n"), 1, 10_000_000),
]


def _where(path: tuple) -> str:
    return ".".join(str(p) for p in path)


for base, path, lo, hi in INT_KEYS:
    bad = dict(TYPE_BAD_INT)
    bad.update({"below_min": lo - 1, "negative": -7, "above_max": hi + 1, "int64_max": 2 ** 63 - 1})
    for what, v in bad.items():
        exp_case(f"{_where(path)}-{what}", base, lambda d, p=path, v=v: set_at(d, p, v))

TYPE_BAD_FLOAT = {"str": "0.1", "bool": True, "list": [0.1], "table": {"v": 0.1}}
KL = lambda v: {"name": "KLSparsity", "rho": v, "strength": 0.1}  # noqa: E731
LP = lambda v: {"name": "Lp", "p": v, "factor": 0.01}  # noqa: E731
MAXNORM = lambda v: {"name": "MaxNorm", "max_value": v}  # noqa: E731
FLOAT_KEYS = [  # (base, path, out-of-range values, wrap: value -> what is set at path)
    ("moons", ("data", "noise"), {"negative": -0.1, "nan": NAN, "inf": INF, "huge_1e300": 1e300}, None),
    ("circles", ("data", "factor"), {"negative": -0.5, "one": 1.0, "above_one": 1.5, "nan": NAN}, None),
    ("full", ("split", "validation"), {"zero": 0, "one": 1, "negative": -0.1, "above_one": 1.5, "nan": NAN,
                                       "inf": INF}, None),
    ("full", ("split", "test"), {"zero": 0, "one": 1, "negative": -0.1, "above_one": 1.5, "nan": NAN, "inf": INF},
     None),
    ("full", ("model", "layers", 0, "dropout"), {"one": 1.0, "negative": -0.1, "above_one": 1.5, "nan": NAN,
                                                 "inf": INF}, None),
    ("full", ("model", "layers", 0, "kernel_regularizer", "l2"), {"negative": -0.01, "nan": NAN, "inf": INF,
                                                                  "huge_1e300": 1e300}, None),
    ("full", ("train", "optimizer", "learning_rate"), {"zero": 0, "negative": -1.0, "nan": NAN, "inf": INF,
                                                       "huge_1e300": 1e300}, None),
    ("full", ("train", "optimizer", "beta_1"), {"negative": -0.1, "one": 1.0, "above_one": 1.5, "nan": NAN}, None),
    ("sgd", ("train", "optimizer", "momentum"), {"negative": -0.5, "nan": NAN, "inf": INF}, None),
    ("full", ("train", "early_stopping", "min_delta"), {"nan": NAN, "inf": INF}, None),
    ("full", ("reference", "accuracy"), {"negative": -0.1, "above_one": 1.5, "nan": NAN, "inf": INF}, None),
    ("regloss", ("train", "loss", "strength"), {"negative": -1.0, "nan": NAN, "inf": INF, "huge_1e300": 1e300},
     None),
    ("mini", ("model", "layers", 1, "activity_regularizer"), {"zero": 0, "one": 1, "negative": -0.1, "nan": NAN},
     KL),
    ("mini", ("model", "layers", 0, "kernel_constraint"), {"negative": -1.0, "nan": NAN, "inf": INF}, MAXNORM),
    ("mini", ("model", "layers", 0, "kernel_regularizer"), {"zero": 0, "negative": -1.0, "nan": NAN}, LP),
]
for base, path, rng_bad, wrap in FLOAT_KEYS:
    for what, v in {**TYPE_BAD_FLOAT, **rng_bad}.items():
        label = _where(path) + (f".{wrap(0)['name']}" if wrap else "")
        exp_case(f"{label}-{what}", base, lambda d, p=path, v=v, w=wrap: set_at(d, p, w(v) if w else v))

BOOL_BAD = {"str": "true", "int_1": 1, "int_0": 0, "list": [True], "table": {"v": True}}
BOOL_KEYS = [
    ("full", ("data", "standardize")),
    ("full", ("data", "standardize_target")),
    ("full", ("split", "resample")),
    ("full", ("model", "layers", 0, "use_bias")),
    ("full", ("model", "layers", 0, "activity_before_activation")),
    ("full", ("train", "early_stopping", "restore_best_weights")),
    ("full", ("analysis", "weight_histograms")),
    ("builder", ("train", "loss", "from_logits")),
]
for base, path in BOOL_KEYS:
    for what, v in BOOL_BAD.items():
        exp_case(f"{_where(path)}-{what}", base, lambda d, p=path, v=v: set_at(d, p, v))

STRING_KEYS = [  # (base, path, bad values)
    ("full", ("name",), {"int": 5, "bool": True, "list": ["tiny"], "table": {"v": "tiny"}, "empty": "",
                         "space": "has space", "dot": "a.b", "slash": "../escape", "newline": "a\nb",
                         "101_chars": "n" * 101, "non_ascii": "t\u00efny"}),
    ("full", ("title",), {"int": 5, "list": ["t"], "table": {"v": "t"}, "2001_chars": "t" * 2001}),
    ("full", ("description",), {"int": 5, "bool": True, "2001_chars": "d" * 2001}),
    ("full", ("data", "name"), {"unknown": "nope", "int": 5, "empty": "", "list": ["blobs"], "capitalized": "Blobs"}),
    ("full", ("data", "task"), {"unknown": "nope", "int": 5, "capitalized": "Binary", "list": ["binary"]}),
    ("full", ("model", "layers", 0, "activation"), {"unknown": "nope", "int": 5, "table": {"name": "relu"},
                                                    "empty": ""}),
    ("full", ("model", "layers", 0, "kernel_initializer"), {"unknown": "nope", "int": 5, "list": ["zeros"]}),
    ("full", ("model", "layers", 0, "bias_initializer"), {"unknown": "nope", "bool": True}),
    ("full", ("train", "loss"), {"unknown": "nope", "int": 5, "list": ["mse"], "bool": True, "empty": ""}),
    ("full", ("train", "optimizer"), {"unknown": "nope", "int": 5, "list": ["adam"], "name_int": {"name": 5},
                                      "no_name": {"learning_rate": 0.01}}),
    ("full", ("train", "early_stopping", "monitor"), {"unknown": "nope", "int": 5, "list": ["val_loss"]}),
    ("full", ("train", "early_stopping", "mode"), {"unknown": "nope", "int": 5}),
    ("full", ("reference", "label"), {"int": 5, "list": ["program 0"]}),
    ("full", ("reference", "note"), {"int": 5, "table": {"v": "x"}}),
    ("regloss", ("train", "loss", "data_loss"), {"unknown": "nope", "int": 5}),
    ("full", ("model", "layers", 0, "kernel_regularizer"), {"unknown_class": {"name": "L3", "l3": 0.1},
                                                            "unknown_alias": "l3", "int": 5, "list": ["l2"],
                                                            "no_name": {"l2": 0.01}, "name_int": {"name": 5}}),
    ("full", ("model", "layers", 0, "kernel_constraint"), {"unknown": "nope", "int": 5,
                                                           "no_name": {"max_value": 2.0}}),
    ("mini", ("model", "layers", 0, "kernel_regularizer", "mode"), {"orthogonal_mode_unknown": "diag"}),
]
for base, path, bads in STRING_KEYS:
    for what, v in bads.items():
        if what == "orthogonal_mode_unknown":
            exp_case(f"{_where(path)}-{what}", base, lambda d, v=v: set_at(
                d, ("model", "layers", 0, "kernel_regularizer"), {"name": "OrthogonalRegularizer", "mode": v}))
            continue
        exp_case(f"{_where(path)}-{what}", base, lambda d, p=path, v=v: set_at(d, p, v))

# ---------------------------------------------------------------------------- experiment: unknown keys

UNKNOWN_IN = [
    ("full", ()), ("full", ("data",)), ("csv", ("data",)), ("loader", ("data",)), ("files", ("data", "files")),
    ("full", ("split",)), ("full", ("model",)), ("builder", ("model",)), ("full", ("model", "layers", 0)),
    ("full", ("train",)), ("full", ("train", "optimizer")), ("full", ("train", "early_stopping")),
    ("builder", ("train", "loss")), ("regloss", ("train", "loss")), ("full", ("reference",)),
    ("full", ("analysis",)), ("builder", ("baseline",)), ("full", ("regularize",)),
    ("full", ("model", "layers", 0, "kernel_regularizer")), ("full", ("model", "layers", 0, "kernel_constraint")),
    ("sweep", ("sweep", 0)), ("builder", ("model", "args")),
]
for base, path in UNKNOWN_IN:
    exp_case(f"{_where(path) or 'top'}-unknown_key", base, lambda d, p=path: set_at(d, p + ("zz_unknown",), 1))

# ---------------------------------------------------------------------------- experiment: missing keys

MISSING = [
    ("full", ("name",)), ("full", ("data",)), ("full", ("model",)), ("full", ("train",)),
    ("full", ("train", "epochs")), ("full", ("train", "batch_size")), ("full", ("model", "layers", 0, "units")),
    ("full", ("model", "layers")), ("full", ("data", "name")), ("csv", ("data", "target")),
    ("files", ("data", "files", "test")), ("files", ("data", "files", "train")), ("loader", ("data", "loader")),
    ("regloss", ("train", "loss", "strength")), ("regloss", ("train", "loss", "codes")),
    ("sweep", ("sweep", 0, "values")), ("sweep", ("sweep", 0, "path")), ("builder", ("model", "builder")),
    ("full", ("model", "layers", 0, "kernel_regularizer", "name")),
]
for base, path in MISSING:
    exp_case(f"{_where(path)}-missing", base, lambda d, p=path: del_at(d, p))

# ---------------------------------------------------------------------------- experiment: structure and semantics

STRUCT = {  # (base, path, value)
    "layers-empty_list": ("full", ("model", "layers"), []),
    "layers-table": ("full", ("model", "layers"), {"units": 1, "activation": "sigmoid"}),
    "layers-string": ("full", ("model", "layers"), "dense"),
    "layers-list_of_int": ("full", ("model", "layers"), [4, 1]),
    "model-string": ("full", ("model",), "mlp"),
    "model-empty_table": ("full", ("model",), {}),
    "model-layers_and_builder": ("full", ("model", "builder"), "models.py:build"),
    "model-args_with_layers": ("full", ("model", "args"), {"width": 3}),
    "baseline-with_layers": ("full", ("baseline",), {"args": {"dropout": 0.0}}),
    "baseline-int": ("builder", ("baseline",), 5),
    "baseline-args_int": ("builder", ("baseline", "args"), 5),
    "baseline-args_unknown_argument": ("builder", ("baseline", "args"), {"nope": 1}),
    "model.args-int": ("builder", ("model", "args"), 5),
    "model.args-unknown_argument": ("builder", ("model", "args"), {"nope": 1}),
    "model.args-input_shape": ("builder", ("model", "args"), {"input_shape": [2]}),
    "model.args-width_negative": ("builder", ("model", "args"), {"width": -1}),
    "model.args-width_str": ("builder", ("model", "args"), {"width": "six"}),
    "model.args-dropout_above_one": ("builder", ("model", "args"), {"dropout": 1.5}),
    "data-string": ("full", ("data",), "blobs"),
    "data-empty_table": ("full", ("data",), {}),
    "data-two_sources": ("csv", ("data", "name"), "blobs"),
    "data-random_state": ("full", ("data", "random_state"), 0),
    "data-test_size": ("full", ("data", "test_size"), 0.3),
    "data-target_with_name": ("full", ("data", "target"), "y"),
    "data-args_with_name": ("full", ("data", "args"), {"n": 1}),
    "data.file-int": ("csv", ("data", "file"), 5),
    "data.file-txt": ("csv", ("data", "file"), "data.txt"),
    "data.file-missing": ("csv", ("data", "file"), "nope.csv"),
    "data.file-absolute_missing": ("csv", ("data", "file"), "/nonexistent/dir/x.csv"),
    "data.target-int": ("csv", ("data", "target"), 5),
    "data.target-not_a_column": ("csv", ("data", "target"), "nope"),
    "data.files-string": ("files", ("data", "files"), "train.csv"),
    "data.files-list": ("files", ("data", "files"), ["train.csv", "test.csv"]),
    "data.args-int": ("loader", ("data", "args"), 5),
    "data.args-unknown_argument": ("loader", ("data", "args"), {"nope": 1}),
    "data.args-n_str": ("loader", ("data", "args"), {"n": "sixty"}),
    "split-int": ("full", ("split",), 5),
    "split-train_fraction_key": ("full", ("split", "train"), 0.6),
    "split-sum_one": ("full", ("split",), {"validation": 0.5, "test": 0.5}),
    "split-sum_above_one": ("full", ("split",), {"validation": 0.7, "test": 0.7}),
    "split-validation_train": ("full", ("split", "validation"), "train"),
    "split.test-with_files": ("files", ("split",), {"test": 0.2}),
    "train-int": ("full", ("train",), 5),
    "train-list": ("full", ("train",), [1]),
    "early_stopping-int": ("full", ("train", "early_stopping"), 5),
    "early_stopping-bool": ("full", ("train", "early_stopping"), True),
    "regularize-int": ("full", ("regularize",), 5),
    "regularize.params-empty": ("full", ("regularize", "params"), {}),
    "regularize.params-int": ("full", ("regularize", "params"), 5),
    "regularize.params-list": ("full", ("regularize", "params"), ["@kernels"]),
    "regularize.params-selects_nothing": ("full", ("regularize", "params"), {"nope.*": {"name": "L2", "l2": 0.01}}),
    "regularize.params-bare_type_selector": ("full", ("regularize", "params"), {"@Linear": {"name": "L2"}}),
    "regularize.params-overlaps_layer_regularizer": ("full", ("regularize", "params"),
                                                     {"@kernels": {"name": "L2", "l2": 0.01}}),
    "regularize.params-unknown_selector_type": ("full", ("regularize", "params"), {"@Nope.weight": "l2"}),
    "regularize.activity-module_99": ("full", ("regularize", "activity"), {"99": {"name": "L1", "l1": 0.01}}),
    "regularize.constraints-selects_nothing": ("full", ("regularize", "constraints"), {"nope": "max_norm"}),
    "regularize.constraints-regularizer_given": ("full", ("regularize", "constraints"),
                                                 {"2.weight": {"name": "L2", "l2": 0.01}}),
    "regularize.params-constraint_given": ("full", ("regularize", "params"), {"@biases": {"name": "MaxNorm"}}),
    "reference-int": ("full", ("reference",), 5),
    "analysis-int": ("full", ("analysis",), 5),
    "analysis.sparsity_layers-string": ("full", ("analysis", "sparsity_layers"), "0"),
    "analysis.sparsity_layers-ints": ("full", ("analysis", "sparsity_layers"), [0]),
    "analysis.sparsity_layers-module_99": ("full", ("analysis", "sparsity_layers"), ["99"]),
    "kernel_regularizer-sum_no_terms": ("full", ("model", "layers", 0, "kernel_regularizer"), {"name": "Sum"}),
    "kernel_regularizer-sum_terms_empty": ("full", ("model", "layers", 0, "kernel_regularizer"),
                                           {"name": "Sum", "terms": []}),
    "kernel_regularizer-sum_terms_int": ("full", ("model", "layers", 0, "kernel_regularizer"),
                                         {"name": "Sum", "terms": [5]}),
    "kernel_regularizer-unknown_argument": ("full", ("model", "layers", 0, "kernel_regularizer"),
                                            {"name": "L2", "l3": 0.1}),
    "kernel_regularizer-empty_table": ("full", ("model", "layers", 0, "kernel_regularizer"), {}),
    "kernel_constraint-maxnorm_axis_5": ("full", ("model", "layers", 0, "kernel_constraint"),
                                         {"name": "MaxNorm", "max_value": 2.0, "axis": 5}),
    "kernel_constraint-minmax_min_above_max": ("full", ("model", "layers", 0, "kernel_constraint"),
                                               {"name": "MinMaxNorm", "min_value": 2.0, "max_value": 1.0}),
    "last_layer-units_3": ("full", ("model", "layers", 1, "units"), 3),
    "last_layer-linear_with_probability_loss": ("full", ("model", "layers", 1, "activation"), "linear"),
    "train.loss-mse_on_binary": ("full", ("train", "loss"), "mse"),
    "train.loss-sparse_on_binary": ("full", ("train", "loss"), "sparse_categorical_crossentropy"),
    "train.loss-categorical_on_binary": ("full", ("train", "loss"), "categorical_crossentropy"),
    "train.loss-from_logits_on_mse": ("full", ("train", "loss"), {"name": "mse", "from_logits": True}),
    "train.loss-table_without_name": ("full", ("train", "loss"), {"from_logits": True}),
    "train.optimizer-unknown_setting": ("full", ("train", "optimizer", "nope"), 1),
    "train.optimizer-nesterov_on_adam": ("full", ("train", "optimizer", "nesterov"), True),
    "train.optimizer-beta_1_str": ("full", ("train", "optimizer", "beta_1"), "0.9"),
    "regloss.codes-int": ("regloss", ("train", "loss", "codes"), 5),
    "regloss.codes-too_short": ("regloss", ("train", "loss", "codes"), [2]),
    "regloss.codes-too_long": ("regloss", ("train", "loss", "codes"), [2, -1, -1, -1, 2, 2]),
    "regloss.codes-unknown_code": ("regloss", ("train", "loss", "codes"), [7, -1, -1, -1]),
    "regloss.codes-strings": ("regloss", ("train", "loss", "codes"), ["l2", "none", "none", "none"]),
    "regloss.data_loss-sparse_on_binary": ("regloss", ("train", "loss", "data_loss"),
                                           "sparse_categorical_crossentropy"),
    "data.name-iris_with_one_sigmoid_unit": ("full", ("data",), {"name": "sklearn.iris"}),
    "data.name-diabetes_with_bce": ("full", ("data",), {"name": "sklearn.diabetes"}),
    "data.name-digits_with_args": ("full", ("data",), {"name": "digits", "n_samples": 80}),
    "data.task-regression_with_bce": ("full", ("data", "task"), "regression"),
    "data.task-multiclass_with_one_unit": ("full", ("data", "task"), "multiclass"),
}
for cid, (base, path, v) in STRUCT.items():
    exp_case(cid, base, lambda d, p=path, v=v: set_at(d, p, v))
# accuracy is not logged for a regression (a float target, a linear output, mse)
REGRESSION_TRAIN = {**MINI["train"], "loss": "mse", "early_stopping": {"monitor": "val_accuracy"}}
exp_case("es.monitor-accuracy_on_regression", "csv",
         lambda d: set_at(set_at(d, ("train",), REGRESSION_TRAIN), ("model", "layers", 1, "activation"), "linear"),
         files={"data.csv": csv_text(60, y=lambda i: f"{(i * 37 % 101) / 10:.2f}")})
# a folder named like a data file
exp_case("data.file-is_a_folder", "csv", lambda d: set_at(d, ("data", "file"), "dir.csv"), files={"dir.csv": None})

# ---------------------------------------------------------------------------- experiment: whole-file failures

exp_case("file-non_utf8", "mini", raw=b"\xff\xfe name = 'x'\n")
exp_case("file-latin1_title", "mini", raw=toml(_with(MINI, title="caf\u00e9")).encode("latin-1"))
# a byte-order mark is read past (schema.read_toml, test_byte_order_mark_is_read_past): with a bad key after it,
# the error is the key's
exp_case("file-bom_utf8_then_bad_epochs", "mini",
         raw=b"\xef\xbb\xbf" + toml(set_at(MINI, ("train", "epochs"), 0)).encode())
exp_case("file-utf16", "mini", raw=toml(MINI).encode("utf-16"))
exp_case("file-broken_toml", "mini", raw=toml(MINI) + "[broken\n")
exp_case("file-duplicate_key", "mini", raw=toml(MINI) + 'name = "again"\n')
exp_case("file-empty", "mini", raw="")
exp_case("file-only_comment", "mini", raw="# nothing here\n")
exp_case("file-binary_junk", "mini", raw=bytes(range(256)) * 4)
exp_case("file-nul_byte", "mini", raw=toml(MINI) + "title = \"a\x00b\"\n")
exp_case("file-json", "mini", raw=json.dumps(MINI))
exp_case("file-array_of_tables_top", "mini", raw="[[name]]\nx = 1\n")
add(Case("mini-file-missing", "run", {}, ["nope.toml"], ("nope.toml",)))
add(Case("mini-file-is_a_folder_without_tomls", "run", {"sub": None}, ["sub"], ("sub",)))
add(Case("mini-two_files_same_name", "run", {"a.toml": toml(MINI), EXP: toml(MINI)}, ["a.toml", EXP], (EXP,)))

# ---------------------------------------------------------------------------- experiment: sweeps

L2 = ["model", "layers", 0, "kernel_regularizer", "l2"]
SWEEPS = {
    "path-not_in_file": [{"path": ["train", "nope"], "values": [1]}],
    "path-index_out_of_range": [{"path": ["model", "layers", 5, "units"], "values": [1]}],
    "path-index_str": [{"path": ["model", "layers", "0", "units"], "values": [1]}],
    "path-empty": [{"path": [], "values": [1]}],
    "path-string": [{"path": "train/epochs", "values": [1]}],
    "path-into_sweep": [{"path": ["sweep"], "values": [1]}],
    "path-through_a_value": [{"path": ["train", "epochs", "x"], "values": [1]}],
    "values-empty": [{"path": L2, "values": []}],
    "values-1001": [{"path": L2, "values": [i * 1e-4 for i in range(1001)]}],
    "values-int": [{"path": L2, "values": 5}],
    "values-string": [{"path": L2, "values": "0.01"}],
    "values-nan_at_a_point": [{"path": L2, "values": [0.01, NAN]}],
    "values-negative_at_a_point": [{"path": L2, "values": [0.01, -1.0]}],
    "values-epochs_zero_at_a_point": [{"path": ["train", "epochs"], "values": [1, 0]}],
    "values-str_at_a_point": [{"path": ["train", "epochs"], "values": [1, "2"]}],
    "values-duplicate": [{"path": L2, "values": [0.01, 0.01]}],
    "values-duplicate_int_float": [{"path": ["train", "epochs"], "values": [1, 1.0]}],
    "values-duplicate_three": [{"path": ["train", "batch_size"], "values": [20, 10, 20]}],
    "entry-unknown_key": [{"path": L2, "values": [0.1], "zz": 1}],
    "entry-int": [5],
    "two_entries_same_path": [{"path": L2, "values": [0.1]}, {"path": L2, "values": [0.2]}],
    "sweep-table": {"path": L2, "values": [0.1]},
    "sweep-int": 5,
}
for cid, sw in SWEEPS.items():
    exp_case(f"sweep.{cid}", "mini", lambda d, sw=sw: _with(d, sweep=sw))

# the hang-prone ones: a grid of a million (a billion) points must be refused fast, in a subprocess
LR = ["train", "optimizer", "learning_rate"]
BIG = [
    ("sweep.grid_1000x1000", [{"path": L2, "values": [i * 1e-5 for i in range(1000)]},
                              {"path": LR, "values": [(i + 1) * 1e-5 for i in range(1000)]}]),
    ("sweep.grid_1000x1000x1000", [{"path": L2, "values": [i * 1e-5 for i in range(1000)]},
                                   {"path": LR, "values": [(i + 1) * 1e-5 for i in range(1000)]},
                                   {"path": ["train", "batch_size"], "values": list(range(1, 1001))}]),
]
for cid, sw in BIG:
    exp_case(cid, "mini", lambda d, sw=sw: _with(d, sweep=sw), subprocess=True)

# ---------------------------------------------------------------------------- experiment: data

X, Y = _xy()


def data_case(cid: str, base: str, files: dict[str, Any], edit: Callable[[dict], dict] | None = None) -> None:
    exp_case(f"data-{cid}", base, edit, files=files, names=tuple(f for f in files if "." in f))


data_case("csv_one_row", "csv", {"data.csv": csv_text(1)})
data_case("csv_two_rows", "csv", {"data.csv": csv_text(2)})
data_case("csv_three_rows_no_train_left", "csv", {"data.csv": csv_text(3)},
          lambda d: set_at(d, ("split",), {"validation": 0.4, "test": 0.4}))
data_case("csv_five_rows_no_train_left", "csv", {"data.csv": csv_text(5)},
          lambda d: set_at(d, ("split",), {"validation": 0.45, "test": 0.5}))
data_case("csv_header_only", "csv", {"data.csv": "a,b,y\n"})
data_case("csv_empty_file", "csv", {"data.csv": ""})
data_case("csv_single_class", "csv", {"data.csv": csv_text(40, y=lambda i: 0)})
data_case("csv_single_class_multiclass_task", "csv", {"data.csv": csv_text(40, y=lambda i: 0)},
          lambda d: set_at(d, ("data", "task"), "multiclass"))
data_case("csv_string_input", "csv", {"data.csv": csv_text(40, x=lambda i, j: "abc" if j == 0 else "1.0")})
# class names are encoded (tests/test_labels.py); with a regression loss, or one name only, they are an error
data_case("csv_string_target_with_mse", "csv", {"data.csv": csv_text(40, y=lambda i: "yes" if i % 2 else "no")},
          lambda d: set_at(d, ("train", "loss"), "mse"))
data_case("csv_string_target_one_class", "csv", {"data.csv": csv_text(40, y=lambda i: "yes")})
data_case("csv_nan_input", "csv", {"data.csv": csv_text(40, x=lambda i, j: "" if i == 7 and j == 1 else "0.5")})
data_case("csv_nan_target", "csv", {"data.csv": csv_text(40, y=lambda i: "" if i == 3 else i % 2)})
data_case("csv_inf_input", "csv", {"data.csv": csv_text(40, x=lambda i, j: "inf" if i == 5 else "0.5")})
data_case("csv_1e300_input", "csv", {"data.csv": csv_text(40, x=lambda i, j: "1e300" if i == 5 else f"{i % 3}")})
data_case("csv_1e39_input", "csv", {"data.csv": csv_text(40, x=lambda i, j: "1e39" if i == 5 else f"{i % 3}")})
data_case("csv_labels_minus_one_one", "csv", {"data.csv": csv_text(40, y=lambda i: 2 * (i % 2) - 1)})
data_case("csv_labels_gap", "csv", {"data.csv": csv_text(40, y=lambda i: (0, 1, 5)[i % 3])},
          lambda d: set_at(d, ("model", "layers", 1), {"units": 6, "activation": "softmax"}))
data_case("csv_binary_task_three_labels", "csv", {"data.csv": csv_text(40, y=lambda i: i % 3)},
          lambda d: set_at(d, ("data", "task"), "binary"))
data_case("csv_binary_junk", "csv", {"data.csv": bytes(range(256)) * 8})
data_case("csv_ragged_rows", "csv", {"data.csv": "a,b,y\n1,2,0\n1,2,3,4,5\n1,0\n"})
data_case("csv_only_target_column", "csv", {"data.csv": "y\n" + "".join(f"{i % 2}\n" for i in range(40))})
data_case("csv_duplicate_target_column", "csv", {"data.csv": csv_text(40, header="y,b,y")})
data_case("npz_x_1e300", "npz", {"data.npz": npz(np.full((60, 2), 1e300), Y)})
data_case("npz_x_some_1e300", "npz", {"data.npz": npz(np.where(np.arange(60)[:, None] == 9, 1e300, X), Y)})
data_case("npz_y_1e300_regression", "npz", {"data.npz": npz(X, np.where(np.arange(60) == 9, 1e300, X[:, 0]))},
          lambda d: set_at(set_at(d, ("train", "loss"), "mse"), ("model", "layers", 1, "activation"), "linear"))
data_case("npz_x_nan", "npz", {"data.npz": npz(np.where(np.arange(60)[:, None] == 3, np.nan, X), Y)})
data_case("npz_y_inf", "npz", {"data.npz": npz(X, np.where(np.arange(60) == 3, np.inf, Y.astype(float)))})
data_case("npz_single_class", "npz", {"data.npz": npz(X, np.ones(60, dtype=np.int64))})
data_case("npz_missing_y", "npz", {"data.npz": lambda p: np.savez(str(p), x=X)})
data_case("npz_x_1d", "npz", {"data.npz": npz(X[:, 0], Y)})
data_case("npz_y_wrong_length", "npz", {"data.npz": npz(X, Y[:50])})
data_case("npz_zero_examples", "npz", {"data.npz": npz(np.zeros((0, 2)), np.zeros(0))})
data_case("npz_x_strings", "npz", {"data.npz": npz(np.array([["a", "b"]] * 60), Y)})
data_case("npz_y_strings_with_mse", "npz", {"data.npz": npz(X, np.array(["a", "b"] * 30))},
          lambda d: set_at(d, ("train", "loss"), "mse"))
data_case("npz_object_array", "npz", {"data.npz": npz(np.array([[1, "a"]] * 60, dtype=object), Y)})
data_case("npz_complex_x", "npz", {"data.npz": npz(X + 1j, Y)})
data_case("npz_not_a_zip", "npz", {"data.npz": b"PK\x03\x04 not really a zip file"})
data_case("npz_y_three_dims", "npz", {"data.npz": npz(X, Y.reshape(60, 1, 1))})
data_case("files_test_header_only", "files", {"test.csv": "a,b,y\n"})
data_case("files_train_one_row", "files", {"train.csv": csv_text(1)})
data_case("files_train_single_class", "files", {"train.csv": csv_text(60, y=lambda i: 1),
                                                "test.csv": csv_text(20, y=lambda i: 1)})
data_case("files_columns_differ", "files", {"test.csv": csv_text(20, header="c,d,y")})
data_case("files_validation_header_only", "files", {"val.csv": "a,b,y\n"},
          lambda d: set_at(d, ("data", "files", "validation"), "val.csv"))
data_case("files_shapes_differ", "files", {"test.csv": "a,y\n" + "".join(f"0.5,{i % 2}\n" for i in range(20))})


def loader_src(body: str) -> str:
    return "import numpy as np\n\ndef load():\n" + "".join(f"    {line}\n" for line in body.splitlines())


LOADER_DATA = {
    "nan": "x = np.zeros((60, 2)); x[4, 1] = np.nan; return x, np.arange(60) % 2",
    "x_1e300": "return np.full((60, 2), 1e300), np.arange(60) % 2",
    "single_class": "return np.random.default_rng(0).normal(size=(60, 2)), np.zeros(60, dtype=int)",
    "strings": "return [['a', 'b']] * 60, [0, 1] * 30",
    "ragged": "return [[1.0, 2.0], [1.0]] * 30, [0, 1] * 30",
    "dict_missing_test": "x = np.zeros((60, 2)); y = np.arange(60) % 2; return {'train': (x, y)}",
    "dict_extra_key": "x = np.zeros((60, 2)); y = np.arange(60) % 2; return {'train': (x, y), 'test': (x, y), "
                      "'val': (x, y)}",
    "dict_empty_validation": "x = np.zeros((60, 2)); y = np.arange(60) % 2; return {'train': (x, y), 'test': (x, y), "
                             "'validation': (x[:0], y[:0])}",
    "dict_empty_test": "x = np.zeros((60, 2)); y = np.arange(60) % 2; return {'train': (x, y), 'test': (x[:0], y[:0])}",
    "dict_values_not_pairs": "return {'train': 5, 'test': 6}",
    "one_tuple": "return (np.zeros((60, 2)),)",
    "generator": "yield np.zeros((60, 2)); yield np.arange(60) % 2",
    "y_2d_mismatch": "return np.zeros((60, 2)), np.zeros((50, 2))",
    "x_scalar": "return 1.0, 1.0",
}
for cid, body in LOADER_DATA.items():
    exp_case(f"data-loader_{cid}", "loader", lambda d: set_at(d, ("data",), {"loader": "userl.py:load"}),
             files={"userl.py": loader_src(body)}, names=("userl.py",))

# ---------------------------------------------------------------------------- user code (builder, loader)

SIGNATURE = {"builder": "input_shape, n_outputs", "loader": "", "analysis": "out, **kw",
             "section": "results, runs, out"}
RUNTIME = {  # body of the function, called with the right arguments
    "raises_ValueError": "raise ValueError('boom from user code')",
    "raises_RuntimeError": "raise RuntimeError('boom from user code')",
    "raises_KeyError": "raise KeyError('boom from user code')",
    "raises_ZeroDivisionError": "return 1 / 0",
    "raises_RecursionError": "def f(): return f()\nreturn f()",
    "raises_MemoryError": "raise MemoryError('boom from user code')",
    "sys_exit_0": "import sys\nsys.exit(0)",
    "sys_exit_3": "import sys\nsys.exit(3)",
    "raises_SystemExit_message": "raise SystemExit('bye from user code')",
    "returns_None": "return None",
    "returns_int": "return 5",
    "returns_tuple": "return (1, 2, 3)",
    "returns_string": "return 'a model'",
}
# the run-time failures tried on a study's analysis and section, which fail only after training
AFTER_KINDS = ("raises_RuntimeError", "sys_exit_0", "raises_SystemExit_message", "returns_None", "returns_string")
IMPORT_TIME = {  # the module itself
    "syntax_error": "def f(:\n    pass\n",
    "import_raises_RuntimeError": "raise RuntimeError('boom at import')\n",
    "import_sys_exit_0": "import sys\nsys.exit(0)\n",
    "import_sys_exit_3": "import sys\nsys.exit(3)\n",
    "import_missing_module": "import no_such_module_zz_123\n",
    "indentation_error": "def f():\nreturn 1\n",
}
REFS = {  # (reference, module source or None)
    "builtin_len": ("builtins:len", None),
    "builtin_print": ("builtins:print", None),
    "missing_function": ("userc.py:nope", "def f(*a, **k):\n    pass\n"),
    "missing_file": ("nofile.py:f", None),
    "not_callable": ("userc.py:X", "X = 5\n"),
    "no_colon": ("userc.py", "def f(*a, **k):\n    pass\n"),
    "two_colons": ("userc.py:f:g", "def f(*a, **k):\n    pass\n"),
    "empty_function_name": ("userc.py:", "def f(*a, **k):\n    pass\n"),
    "ref_int": (5, None),
    "ref_list": (["userc.py:f"], "def f(*a, **k):\n    pass\n"),
    "missing_module": ("no_such_module_zz_123:f", None),
    "file_is_a_folder": ("pkgdir.py:f", None),
    "not_python": ("userc.txt:f", "this is not python\n"),
}


def code_variants(role: str) -> dict[str, tuple[Any, str | None, str]]:
    """``{kind: (reference, userc.py source or None, phase)}`` for one role of user code."""
    sig = SIGNATURE[role]
    late = "after" if role in ("analysis", "section") else "before"
    out: dict[str, tuple[Any, str | None, str]] = {}
    for kind, body in RUNTIME.items():
        if late == "after" and kind not in AFTER_KINDS:
            continue  # each of these trains and reports a study (~1 s): a representative few
        src = f"def f({sig}):\n" + "".join(f"    {line}\n" for line in body.splitlines())
        out[kind] = ("userc.py:f", src, late)
    for kind, src in IMPORT_TIME.items():
        out[kind] = ("userc.py:f", src + f"\ndef f({sig}):\n    pass\n", "before")
    for kind, (ref, src) in REFS.items():
        phase = "before"
        if role == "analysis" and kind in ("builtin_len", "builtin_print") or role == "section" and kind == \
                "builtin_print":
            phase = "after"  # len(out), print(out), print(results, runs, out) bind: they fail only when called
        out[kind] = (ref, src, phase)
    # a signature the call cannot bind (too many required parameters) is known before the call
    out["wrong_signature"] = ("userc.py:f", "def f(a, b, c, d, e):\n    pass\n", "before")
    return out


def _code_files(ref: Any, src: str | None) -> dict[str, Any]:
    files: dict[str, Any] = {}
    if src is not None:
        files["userc.txt" if isinstance(ref, str) and ref.startswith("userc.txt") else "userc.py"] = src
    if ref == "pkgdir.py:f":
        files["pkgdir.py"] = None
    return files


for role in ("builder", "loader"):
    for kind, (ref, src, _) in code_variants(role).items():
        if role == "builder":  # model = {builder = <ref>} (no args, no [baseline])
            edit = lambda d, r=ref: set_at(del_at(d, ("baseline",)), ("model",), {"builder": r})  # noqa: E731
        else:  # data = {loader = <ref>} (no args)
            edit = lambda d, r=ref: set_at(d, ("data",), {"loader": r})  # noqa: E731
        exp_case(f"code-{kind}", role, edit, files=_code_files(ref, src), names=("userc.py", "userc.txt"))

# models a builder returns that cannot train (classes at module level: one class for every seed's model)
MODEL_SRC = {
    "nan_weights": "def f(input_shape, n_outputs):\n    m = nn.Linear(2, 1)\n    with torch.no_grad():\n"
                   "        m.weight.fill_(float('nan'))\n    return m\n",
    "forward_inf": "class M(nn.Linear):\n    def forward(self, x):\n"
                   "        return super().forward(x) * float('inf')\n\n"
                   "def f(input_shape, n_outputs):\n    return M(2, 1)\n",
    "forward_raises": "class M(nn.Linear):\n    def forward(self, x):\n"
                      "        raise RuntimeError('boom in forward')\n\n"
                      "def f(input_shape, n_outputs):\n    return M(2, 1)\n",
    "forward_returns_tuple": "class M(nn.Linear):\n    def forward(self, x):\n"
                             "        return (super().forward(x), x)\n\n"
                             "def f(input_shape, n_outputs):\n    return M(2, 1)\n",
    "forward_returns_none": "class M(nn.Linear):\n    def forward(self, x):\n        return None\n\n"
                            "def f(input_shape, n_outputs):\n    return M(2, 1)\n",
    "forward_wrong_batch": "class M(nn.Linear):\n    def forward(self, x):\n        return super().forward(x)[:1]\n\n"
                           "def f(input_shape, n_outputs):\n    return M(2, 1)\n",
    "all_parameters_frozen": "def f(input_shape, n_outputs):\n    m = nn.Linear(2, 1)\n    m.requires_grad_(False)\n"
                             "    return m\n",
    "no_parameters": "def f(input_shape, n_outputs):\n    return nn.Sequential(nn.Flatten(), nn.Identity())\n",
    "wrong_input_width": "def f(input_shape, n_outputs):\n    return nn.Linear(7, 1)\n",
}
for kind, body in MODEL_SRC.items():
    exp_case(f"model_{kind}", "builder",
             lambda d: set_at(del_at(d, ("baseline",)), ("model",), {"builder": "userc.py:f"}),
             files={"userc.py": "import torch\nfrom torch import nn\n\n" + body}, names=("userc.py",))

# optimizers' other settings
for cid, opt in {"adamw.weight_decay-negative": {"name": "adamw", "weight_decay": -0.1},
                 "adamw.weight_decay-nan": {"name": "adamw", "weight_decay": NAN},
                 "adamw.weight_decay-str": {"name": "adamw", "weight_decay": "0.1"},
                 "rmsprop.rho-above_one": {"name": "rmsprop", "rho": 1.5},
                 "rmsprop.rho-negative": {"name": "rmsprop", "rho": -0.1},
                 "rmsprop.centered-str": {"name": "rmsprop", "centered": "yes"},
                 "sgd.nesterov-str": {"name": "sgd", "momentum": 0.9, "nesterov": "yes"},
                 "sgd.nesterov-int": {"name": "sgd", "momentum": 0.9, "nesterov": 1},
                 "adam.epsilon-negative": {"name": "adam", "epsilon": -1e-7},
                 "adam.beta_2-one": {"name": "adam", "beta_2": 1.0}}.items():
    exp_case(f"train.optimizer.{cid}", "mini", lambda d, o=opt: set_at(d, ("train", "optimizer"), o))

# TOML nested past any recursion limit
exp_case("file-deeply_nested_arrays", "mini", raw=toml(MINI) + "title = " + "[" * 100_000 + "]" * 100_000 + "\n")
exp_case("file-deeply_nested_inline_tables", "mini", raw=toml(MINI) + "reference = " + "{a = " * 5_000 + "1" +
         "}" * 5_000 + "\n")
# a sweep of keys that do not change what is trained: its grid points are one experiment
exp_case("sweep.path-seeds", "mini", lambda d: _with(d, sweep=[{"path": ["seeds"], "values": [1, 2]}]))
exp_case("sweep.path-title", "mini", lambda d: _with(_with(d, title="a"), sweep=[{"path": ["title"],
                                                                                  "values": ["a", "b"]}]))

# ---------------------------------------------------------------------------- study.toml

STUDY_EXP = set_at(MINI, ("train", "epochs"), 1)
STUDY = {
    "title": "a tiny study", "intro": "over {seeds} seeds", "experiments": "experiments", "seeds": 1,
    "path": [{"experiment": "tiny", "strengths": [0.0, 0.01], "seeds": 1}],
    "analysis": [{"name": "an", "function": "analyses.py:run", "args": {"k": 1}}],
    "section": [{"title": "A section", "function": "analyses.py:sec"}],
    "margins": {"test_log_loss": 0.01},
    "statistics": {"method": "t"},
}
STUDY_FILES = {"experiments/tiny.toml": toml(STUDY_EXP), "analyses.py": ANALYSES_SRC}
STUDY_NAMES = ("study.toml", "tiny.toml")


def study_case(cid: str, edit: Callable[[dict], dict] | None = None, *, raw: str | bytes | None = None,
               files: dict | None = None, names: tuple[str, ...] = (), phase: str = "before") -> None:
    content = raw if raw is not None else toml(edit(_copy(STUDY)) if edit else STUDY)
    fs = {**STUDY_FILES, **(files or {}), "study.toml": None if content is FOLDER else content}
    fs = {k: v for k, v in fs.items() if v is not _DROP}
    add(Case(f"study-{cid}", "study", fs, ["."], (*STUDY_NAMES, *names), phase=phase))


_DROP = object()  # a file of the base study left out
FOLDER = object()  # study.toml is a folder

STUDY_VALUES = {  # (path, bad values)
    ("title",): {"int": 5, "list": ["t"], "table": {"v": "t"}, "bool": True},
    ("intro",): {"int": 5, "list": ["i"]},
    ("experiments",): {"int": 5, "bool": True, "table": {"v": "experiments"}, "missing_folder": "nope",
                       "empty_list": [], "list_missing_file": ["nope.toml"], "list_of_int": [5],
                       "a_file_not_a_folder": "analyses.py", "the_study_itself": ["study.toml"]},
    ("seeds",): {"zero": 0, "negative": -1, "above_max": 10_001, "float": 1.5, "str": "1", "bool": True, "nan": NAN,
                 "inf": INF, "int64_max": 2 ** 63 - 1},
    ("path",): {"int": 5, "string": "tiny", "table": {"experiment": "tiny"}, "list_of_int": [5]},
    ("path", 0, "experiment"): {"int": 5, "unknown": "nope", "list": ["tiny"]},
    ("path", 0, "strengths"): {"inf": [0.0, INF], "nan": [0.0, NAN], "negative": [0.0, -0.01], "empty": [],
                               "int": 5, "string": "0.01", "strings": ["0.01"], "bools": [True, False],
                               "huge_1e300": [0.0, 1e300], "table": {"v": 0.01}},
    ("path", 0, "seeds"): {"zero": 0, "float": 1.5, "bool": True, "str": "1", "above_max": 10_001},
    ("path", 0, "zz_unknown"): {"key": 1},
    ("analysis",): {"int": 5, "string": "an", "table": {"name": "an", "function": "analyses.py:run"},
                    "list_of_int": [5]},
    ("analysis", 0, "args"): {"int": 5, "list": [1, 2], "string": "k=1", "bool": True,
                              "unknown_argument": {"nope": 1}},
    ("analysis", 0, "name"): {"int": 5, "space": "has space", "empty": "", "101_chars": "a" * 101,
                              "slash": "../escape"},
    ("analysis", 0, "function"): {"int": 5, "list": ["analyses.py:run"], "no_colon": "analyses.py"},
    ("analysis", 0, "zz_unknown"): {"key": 1},
    ("section",): {"int": 5, "string": "s", "list_of_int": [5]},
    ("section", 0, "title"): {"int": 5, "list": ["t"]},
    ("section", 0, "function"): {"int": 5, "no_colon": "analyses.py"},
    ("section", 0, "zz_unknown"): {"key": 1},
    ("margins",): {"int": 5, "list": [0.01], "string": "0.01"},
    ("margins", "test_log_loss"): {"negative": -0.01, "nan": NAN, "inf": INF, "str": "0.01", "bool": True,
                                   "table": {"v": 0.01}},
    ("margins", "nope_metric"): {"unknown_metric": 0.01},
    ("statistics",): {"int": 5, "string": "t"},
    ("statistics", "method"): {"unknown": "z", "int": 5, "bool": True, "table_bad_value": {"test_log_loss": "z"},
                               "table_unknown_metric": {"nope": "t"}},
    ("statistics", "zz_unknown"): {"key": 1},
    ("zz_unknown",): {"top_level": 1},
}
for path, bads in STUDY_VALUES.items():
    for what, v in bads.items():
        # a listed file that is not there: the error names it (its path is the study's folder + the name listed)
        names = ("nope.toml",) if what == "list_missing_file" else ()
        study_case(f"{_where(path)}-{what}", lambda d, p=path, v=v: set_at(d, p, v), names=names)

for path in (("path", 0, "experiment"), ("analysis", 0, "name"), ("analysis", 0, "function"),
             ("section", 0, "title"), ("section", 0, "function")):
    study_case(f"{_where(path)}-missing", lambda d, p=path: del_at(d, p))

study_case("analysis-duplicate_names", lambda d: set_at(d, ("analysis",), d["analysis"] * 2))
study_case("path-duplicate_experiment", lambda d: set_at(d, ("path",), d["path"] * 2))
study_case("path-of_an_experiment_with_a_sweep", files={"experiments/tiny.toml": toml(_with(
    STUDY_EXP, sweep=[{"path": L2, "values": [0.01, 0.001]}]))})
study_case("path-of_an_experiment_without_a_strength", files={"experiments/tiny.toml": toml(del_at(
    STUDY_EXP, ("model", "layers", 0, "kernel_regularizer")))})
study_case("experiments-folder_empty", files={"experiments/tiny.toml": _DROP, "experiments": None})
study_case("experiments-a_malformed_experiment", files={"experiments/tiny.toml": toml(set_at(
    STUDY_EXP, ("train", "epochs"), 0))})
study_case("experiments-two_with_the_same_name", files={"experiments/tiny2.toml": toml(STUDY_EXP)},
           names=("tiny2.toml",))
study_case("file-bom_then_bad_seeds", raw=b"\xef\xbb\xbf" + toml(set_at(STUDY, ("seeds",), 0)).encode())
study_case("file-non_utf8", raw=b"title = \"caf\xe9\"\n")
study_case("file-utf16", raw=toml(STUDY).encode("utf-16"))
study_case("file-broken_toml", raw=toml(STUDY) + "[[analysis\n")
study_case("file-binary_junk", raw=bytes(range(256)) * 4)
study_case("file-deeply_nested_arrays", raw=toml(STUDY) + "zz = " + "[" * 100_000 + "]" * 100_000 + "\n")
study_case("file-duplicate_key", raw=toml(STUDY) + 'title = "again"\n')
study_case("file-is_a_folder", raw=FOLDER)
add(Case("study-folder_missing", "study", {}, ["nope_study"], ("nope_study",)))

for role in ("analysis", "section"):
    for kind, (ref, src, phase) in code_variants(role).items():
        def edit(d, role=role, ref=ref):
            d = {k: v for k, v in d.items() if k not in ("path", "analysis", "section")}
            d[role] = [{"name": "an", "function": ref} if role == "analysis" else {"title": "S", "function": ref}]
            return d
        study_case(f"{role}-{kind}", edit, files=_code_files(ref, src), names=("userc.py", "userc.txt"), phase=phase)

# ============================================================================ running a case


def _write(folder: Path, files: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for rel, content in files.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            p.mkdir(exist_ok=True)
        elif isinstance(content, bytes):
            p.write_bytes(content)
        elif isinstance(content, str):
            p.write_bytes(content.encode("utf-8"))
        else:
            content(p)


def _hashes(root: Path, skip: set[str] = frozenset()) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if rel.parts[0] in skip or "__pycache__" in rel.parts:
            continue
        out[str(rel)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class _Hang(BaseException):
    pass


def _alarm(signum, frame):
    raise _Hang()


def _cli(args: list[str], cwd: Path) -> tuple[int | None, BaseException | None, str, float, Any]:
    """``(exit code, exception, output, seconds, exc_info)``; exit code None: it hung."""
    old_cwd = os.getcwd()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_S)
    t0 = time.perf_counter()
    try:
        os.chdir(cwd)
        res = CliRunner().invoke(main, args)
        return res.exit_code, res.exception, res.output, time.perf_counter() - t0, res.exc_info
    except _Hang:
        return None, None, "", time.perf_counter() - t0, None
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        os.chdir(old_cwd)


def _subprocess(args: list[str], cwd: Path) -> tuple[int | None, BaseException | None, str, float, Any]:
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "reglab.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=HANG_S)
        return proc.returncode, None, out, time.perf_counter() - t0, None
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group this test started
        out, _ = proc.communicate()
        return None, None, out, time.perf_counter() - t0, None


def _where_raised(exc_info: Any) -> str:
    import traceback

    if not exc_info or exc_info[2] is None:
        return ""
    last = traceback.extract_tb(exc_info[2])[-1]
    return f" (at {Path(last.filename).name}:{last.lineno})"


def run_case(case: Case, tmp_path: Path) -> list[str]:
    """Run one case; the problems found (empty: a clear error before training, files untouched)."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(os.urandom(64))
    folder = tmp_path / "case"
    _write(folder, case.files)
    out = tmp_path / "out"
    before_victim = hashlib.sha256(victim.read_bytes()).hexdigest()
    before_inputs = _hashes(folder)
    targets = [str(folder if t == "." else folder / t) for t in case.targets]
    common = ["--out", str(out), "--no-progress", "--workers", "1"]
    args = (["run", *targets, *common] if case.command == "run" else ["study", *targets, *common])
    code, exc, output, seconds, exc_info = (_subprocess if case.subprocess else _cli)(args, tmp_path)

    problems = []
    if code is None:
        problems.append(f"hang (no end after {HANG_S} s)")
    elif case.subprocess:
        if code not in (1, 2):
            problems.append(f"exit {code}")
    elif exc is not None and not isinstance(exc, SystemExit):
        problems.append(f"traceback: {type(exc).__name__}: {str(exc)[:200]}{_where_raised(exc_info)}")
    elif not isinstance(exc, SystemExit) or code not in (1, 2):
        problems.append(f"exit {code}, no click error")
    if "Traceback" in output:
        problems.append("'Traceback' in the output")
    if code is not None and code != 0 and not any(n in output for n in case.names):
        problems.append(f"the output names none of {list(case.names)}")
    n_trained = len(list(out.glob("runs/*/*.json")))
    if case.phase == "before" and n_trained:
        problems.append(f"trained {n_trained} run(s)")
    if hashlib.sha256(victim.read_bytes()).hexdigest() != before_victim:
        problems.append("the victim file outside --out changed")
    after_inputs = _hashes(folder)
    changed = sorted(k for k in set(before_inputs) | set(after_inputs) if before_inputs.get(k) != after_inputs.get(k))
    if changed:
        problems.append(f"files outside --out changed: {changed[:5]}")
    stray = sorted(p.name for p in tmp_path.iterdir() if p.name not in ("victim.txt", "case", "out"))
    if stray:
        problems.append(f"new files beside --out: {stray}")
    if problems:
        tail = " | ".join(line for line in output.strip().splitlines()[-3:])
        problems.append(f"[{seconds:.1f} s] output: {tail[-400:]}")
    return problems


# ============================================================================ the tests


def _base_case(name: str) -> Case:
    d, extra = BASES[name]
    return Case(f"base-{name}", "run", {**extra, EXP: toml(d)}, [EXP], (EXP,))


@pytest.mark.parametrize("name", [*BASES, "study"])
def test_base_is_valid(tmp_path, name):
    """Every case is one edit of a base: each base trains (so a case fails by its edit alone)."""
    case = (Case("base-study", "study", {**STUDY_FILES, "study.toml": toml(STUDY)}, ["."], STUDY_NAMES)
            if name == "study" else _base_case(name))
    _write(tmp_path / "case", case.files)
    out = tmp_path / "out"
    target = str(tmp_path / "case" / case.targets[0]) if case.targets[0] != "." else str(tmp_path / "case")
    code, exc, output, _, exc_info = _cli([case.command, target, "--out", str(out), "--no-progress", "--workers", "1"],
                                          tmp_path)
    assert code == 0 and exc is None, (code, repr(exc), _where_raised(exc_info), output[-2000:])
    assert list(out.glob("runs/*/*.json"))


@pytest.mark.parametrize("command", ["run", "study"])
def test_byte_order_mark_is_read_past(tmp_path, command):
    """A UTF-8 byte-order mark (which some editors write first) is not an error: the file trains."""
    bom = b"\xef\xbb\xbf"
    files = ({EXP: bom + toml(MINI).encode()} if command == "run" else
             {**STUDY_FILES, "experiments/tiny.toml": bom + toml(STUDY_EXP).encode(),
              "study.toml": bom + toml(STUDY).encode()})
    _write(tmp_path / "case", files)
    target = str(tmp_path / "case" / EXP) if command == "run" else str(tmp_path / "case")
    out = tmp_path / "out"
    code, exc, output, _, exc_info = _cli([command, target, "--out", str(out), "--no-progress", "--workers", "1"],
                                          tmp_path)
    assert code == 0 and exc is None, (code, repr(exc), _where_raised(exc_info), output[-2000:])
    assert list(out.glob("runs/*/*.json"))


def test_the_table_is_large():
    assert len(CASES) >= 200, len(CASES)
    assert sum(c.phase == "before" for c in CASES.values()) >= 200


@pytest.mark.parametrize("cid", sorted(CASES))
def test_malformed_input_is_a_clear_error_before_training(tmp_path, cid):
    case = CASES[cid]
    problems = run_case(case, tmp_path)
    assert not problems, f"{cid}: " + "; ".join(problems)


# ---------------------------------------------------------------------------- a victim for the whole module


@pytest.fixture(scope="module")
def module_victim(tmp_path_factory):
    d = tmp_path_factory.mktemp("module_victim")
    v = d / "victim.bin"
    v.write_bytes(os.urandom(256))
    return v, hashlib.sha256(v.read_bytes()).hexdigest(), os.getcwd()


@pytest.fixture(autouse=True)
def _planted(module_victim):
    yield


def test_zz_no_file_outside_out_changed_in_the_whole_table(module_victim):
    """Planted before the first case (the autouse fixture), checked after the last: unchanged, and
    the working directory is where it was."""
    v, digest, cwd = module_victim
    assert hashlib.sha256(v.read_bytes()).hexdigest() == digest
    assert os.getcwd() == cwd
