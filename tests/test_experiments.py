"""Experiment files, the study runner and its results: any module, any data, any task."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import reglab
from reglab.cli import main
from reglab.experiments.spec import with_strength
from reglab.experiments.runner import Unit, execute, load_model, load_runs, plan_units, prepare, splits_of
from reglab.experiments.schema import ConfigError, load_experiment, load_experiments, validate

ROOT = Path(__file__).resolve().parents[1]
LECTURE = ROOT / "studies" / "lecture" / "experiments"

TINY = """
name = "tiny"
seeds = 2
[data]
name = "blobs"
n_samples = 80
[train]
loss = "binary_crossentropy"
optimizer = {name = "adam", learning_rate = 0.01}
epochs = 3
batch_size = 20
[[model.layers]]
units = 4
activation = "relu"
kernel_regularizer = {name = "L2", l2 = 0.01}
[[model.layers]]
units = 1
activation = "sigmoid"
"""

BUILDER = '''
from torch import nn

def build(input_shape, n_outputs, width=6, dropout=0.0):
    return nn.Sequential(nn.Flatten(), nn.Linear(int(__import__("math").prod(input_shape)), width), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(width, n_outputs))
'''

CNN = '''
from torch import nn

def build(input_shape, n_outputs, channels=3):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(), nn.Flatten(),
                         nn.Linear(channels * h * w, n_outputs))
'''


def write(tmp_path, text, name="tiny.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def one(path):
    specs = load_experiment(path)
    assert len(specs) == 1
    return specs[0]


def run(paths, out, *extra):
    res = CliRunner().invoke(main, ["run", *map(str, paths), "--out", str(out), "--no-progress", "--workers", "1",
                                    *extra])
    return res


# ----------------------------------------------------------------------------- the lecture's files


def test_every_lecture_program_has_a_valid_file_with_its_settings():
    specs = load_experiments(sorted(LECTURE.glob("*.toml")))
    progs = {s.config["reference"]["label"]: s for s in specs if "reference" in s.config}
    assert sorted(progs) == [f"program {i}" for i in range(1, 8)]
    expected = {1: (0.001, 200, 20), 2: (0.005, 200, 20), 3: (0.005, 100, 50), 4: (0.001, 200, 20),
                5: (0.001, 200, 20), 6: (0.001, 200, 20), 7: (0.001, 100, 50)}
    for p, (lr, ep, bs) in expected.items():
        tr = progs[f"program {p}"].config["train"]
        assert (tr["optimizer"]["learning_rate"], tr["epochs"], tr["batch_size"]) == (lr, ep, bs), p
        assert [la["units"] for la in progs[f"program {p}"].config["model"]["layers"]] == [32] * 5 + [1]
        # the lecture's protocol, written out: validation data = the 75 test points
        assert progs[f"program {p}"].config["split"] == {"validation": "test", "test": 0.25}
    names = {s.name for s in specs}
    assert {"x_dropout", "x_adamw_decay", "x_l2_in_loss_adam", "x_early_stopping", "x_max_norm"} <= names
    base = {s.name: s.baseline().name for s in specs}
    # each experiment's own baseline: same data, model, loss, optimizer settings, epochs, batch
    assert base["p4_activity_after"] == base["p6_all_together"] == base["x_adamw_decay"] == base["x_dropout"]
    assert base["p1_regularized_loss"] != base["p6_all_together"]  # its data loss is log(p + 1e-6) BCE
    assert base["p2_layer_regularizers"] != base["p6_all_together"]  # lr 0.005
    assert all(b.startswith("baseline.") for b in base.values())


def test_baseline_keeps_every_optimizer_setting_but_weight_decay(tmp_path):
    sgd = one(write(tmp_path, TINY.replace('{name = "adam", learning_rate = 0.01}',
                                           '{name = "sgd", learning_rate = 0.01, momentum = 0.9}')))
    plain = one(write(tmp_path, TINY.replace('{name = "adam", learning_rate = 0.01}',
                                             '{name = "sgd", learning_rate = 0.01}'), "plain.toml"))
    assert sgd.baseline().config["train"]["optimizer"] == {"name": "sgd", "learning_rate": 0.01, "momentum": 0.9}
    assert sgd.baseline().name != plain.baseline().name  # momentum is not judged against plain SGD
    adamw = one(write(tmp_path, TINY.replace('{name = "adam", learning_rate = 0.01}',
                                             '{name = "adamw", learning_rate = 0.01, weight_decay = 0.1}'), "w.toml"))
    assert adamw.baseline().config["train"]["optimizer"] == {"name": "adam", "learning_rate": 0.01}
    b = one(write(tmp_path, TINY.replace('name = "blobs"', 'name = "moons"'), "moons.toml")).baseline()
    assert b.name != one(write(tmp_path, TINY)).baseline().name  # other data, other baseline
    assert "kernel_regularizer" not in b.config["model"]["layers"][0]


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: "foo = 1\n" + t, r"tiny.toml: the file: unknown key\(s\) \['foo'\]"),
        (lambda t: t.replace("epochs = 3", 'epochs = "3"'), r"tiny.toml: train.epochs: expected an integer from 1"),
        (lambda t: t.replace("batch_size = 20\n", ""), r"tiny.toml: train.batch_size: missing; every experiment sets "
                                                       r"it \(e.g. batch_size = 32\)"),
        (lambda t: t.replace("epochs = 3", "epochs = 9223372036854775807"), r"train.epochs: expected an integer from 1 to 100000"),
        (lambda t: t.replace("seeds = 2", "seeds = 1000000000"), r"seeds: expected an integer from 1 to 10000"),
        (lambda t: t.replace("l2 = 0.01", "l2 = -0.01"),
         r"tiny.toml: model.layers\[0\].kernel_regularizer: l2 must be a non-negative finite number; got l2=-0.01"),
        (lambda t: t.replace('name = "L2"', 'name = "L3"'), r"model.layers\[0\].kernel_regularizer: unknown regularizer 'L3'"),
        (lambda t: t.replace("units = 4", "units = 0"), r"model.layers\[0\].units: expected an integer from 1"),
        (lambda t: t.replace('name = "blobs"', 'name = "mnist"'), r"data.name: expected one of"),
        (lambda t: t.replace("n_samples = 80", "n_samples = 80\ntest_size = 0.3"), r"data.test_size: the split is set in \[split\]"),
        (lambda t: t.replace("learning_rate = 0.01", "learning_rate = -1"), r"train.optimizer: learning_rate must be"),
        (lambda t: t.replace("learning_rate = 0.01", "learning_rate = 1e300"), r"train.optimizer.learning_rate: expected a finite number"),
        (lambda t: t.replace("batch_size = 20", "batch_size = 20\nmomentum = 0.9"), r"train: unknown key\(s\) \['momentum'\]"),
        (lambda t: t.replace('name = "tiny"', 'name = "has space"'), r"name: expected a string of 1 to 100 letters"),
        (lambda t: t.replace('name = "tiny"', 'name = "baseline.x"'), r"name: expected a string"),
        (lambda t: t.replace("batch_size = 20", "batch_size = 20\nearly_stopping = {monitor = \"nope\"}"),
         r"train.early_stopping.monitor: expected one of"),
        (lambda t: t.replace("batch_size = 20", "batch_size = 20\nearly_stopping = {restore_best_weights = \"yes\"}"),
         r"restore_best_weights: expected true or false"),
        (lambda t: t + "\n[split]\nvalidation = 0.5\ntest = 0.6\n", r"split: validation \+ test = 1.1 leaves no training data"),
        (lambda t: t + "\n[split]\nvalidation = \"train\"\n", r"split.validation: expected a fraction in \(0, 1\) or \"test\""),
        (lambda t: t + "\n[[sweep]]\npath = [\"train\", \"nope\"]\nvalues = [1]\n", r"sweep\[0\].path: 'train/nope' is not in the file"),
        (lambda t: t.replace('{name = "L2", l2 = 0.01}', '"l2"') + "\n[[sweep]]\npath = [\"model\", \"layers\", 0, \"kernel_regularizer\", \"l2\"]\nvalues = [1]\n",
         r"'model/layers/0/kernel_regularizer' is the bare alias 'l2'"),
        (lambda t: t + "\n[broken", r"tiny.toml: not valid TOML"),
    ],
)
def test_config_errors_name_file_key_and_expectation(tmp_path, edit, message):
    p = write(tmp_path, edit(TINY))
    with pytest.raises(ConfigError, match=message):
        load_experiment(p)


def test_missing_file_duplicate_names_and_non_utf8(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.toml: no such experiment file"):
        load_experiment(tmp_path / "nope.toml")
    a = write(tmp_path, TINY, "a.toml")
    b = write(tmp_path, TINY, "b.toml")
    with pytest.raises(ConfigError, match=r"b.toml: name 'tiny' is already used by .*a.toml"):
        load_experiments([a, b])
    bad = tmp_path / "latin.toml"
    bad.write_bytes(TINY.replace("tiny", "t\xe9").encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_experiment(bad)


def test_bad_config_writes_nothing(tmp_path):
    good = write(tmp_path, TINY, "good.toml")
    bad = write(tmp_path, TINY.replace('name = "tiny"', 'name = "bad"').replace("epochs = 3", "epochs = 0"), "bad.toml")
    out = tmp_path / "out"
    res = run([good, bad], out)
    assert res.exit_code != 0
    assert "bad.toml: train.epochs: expected an integer from 1 to 100000; got 0" in res.output
    assert not out.exists()


def test_a_bad_file_ends_two_workers_with_its_error_alone(tmp_path):
    """The helpers start before the files are read (``reglab run`` defaults to two workers): a
    command that stops at a bad file shuts them down quietly -- its error is all it prints (a
    traceback from the pool's teardown followed it before)."""
    (tmp_path / "models.py").write_text(BUILDER)
    p = write(tmp_path, TINY.split("[[model.layers]]")[0] + '[model]\nbuilder = "models.py:nope"\n')
    res = subprocess.run([sys.executable, "-m", "reglab.cli", "run", str(p), "--out", str(tmp_path / "out"),
                          "--workers", "2", "--no-progress"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 1
    assert res.stderr == f"Error: {p}: model.builder: 'models.py' has no function 'nope'\n"


def test_a_builder_that_raises_is_named_with_where_in_its_code(tmp_path):
    (tmp_path / "badb.py").write_text("def build(input_shape, n_outputs):\n    raise RuntimeError('boom in builder')\n")
    p = write(tmp_path, TINY.split("[[model.layers]]")[0] + '[model]\nbuilder = "badb.py:build"\n')
    res = run([p], tmp_path / "out")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output  # not a traceback
    assert (f"Error: {p}: model.builder: badb.py:build raised RuntimeError: boom in builder (at "
            f"{tmp_path / 'badb.py'}, line 2)") in res.output


def test_errors_found_only_by_building_are_reported_before_anything_trains(tmp_path):
    (tmp_path / "models.py").write_text(BUILDER)
    out = tmp_path / "out"
    cases = {
        "pattern": ('\n[regularize]\nparams = {"nope.*" = "l2"}\n', "regularize.params: parameter pattern 'nope.*' matches no"),
        "output": ('', "the model outputs 3 value(s) per example but the binary task of the data needs one unit"),
        "arg": ('', "the builder takes no argument(s) ['depth']"),
    }
    for name, (extra, msg) in cases.items():
        args = {"pattern": "{}", "output": "{}", "arg": "{depth = 2}"}[name]
        text = (TINY.split("[[model.layers]]")[0].replace('name = "tiny"', f'name = "{name}"') +
                f'[model]\nbuilder = "models.py:build"\nargs = {args}\n' + extra)
        if name == "output":
            (tmp_path / "three.py").write_text(BUILDER.replace("n_outputs)", "3)"))
            text = text.replace("models.py:build", "three.py:build")
        p = write(tmp_path, text, f"{name}.toml")
        res = run([write(tmp_path, TINY, "ok.toml"), p], out)
        assert res.exit_code != 0 and msg in res.output, (name, res.output)
        assert not out.exists(), name


def test_run_ids_hash_config_seed_and_input_files(tmp_path):
    spec = validate(tomllib.loads(TINY), "x.toml")
    same = validate(tomllib.loads(TINY.replace("seeds = 2", "seeds = 5")), "y.toml")
    other = validate(tomllib.loads(TINY.replace("l2 = 0.01", "l2 = 0.02")), "x.toml")
    assert Unit(spec, 0).run_id == Unit(same, 0).run_id  # seeds count and file name do not matter
    assert Unit(spec, 0).run_id != Unit(spec, 1).run_id
    assert Unit(spec, 0).run_id != Unit(other, 0).run_id
    # editing the builder's source or a data file reruns
    (tmp_path / "models.py").write_text(BUILDER)
    text = TINY.split("[[model.layers]]")[0] + '[model]\nbuilder = "models.py:build"\n'
    a = one(write(tmp_path, text))
    (tmp_path / "models.py").write_text(BUILDER + "\n# edited\n")
    assert one(write(tmp_path, text)).digest() != a.digest()


def test_runs_with_a_min_delta_get_new_ids_since_its_sign_follows_keras():
    """Early stopping with min_delta > 0 stopped by another rule before (a smaller fall counted as
    an improvement): such experiments' runs get new ids; those without min_delta keep theirs."""
    import hashlib

    def plain_digest(spec):  # the digest formula without the min_delta rule
        cfg = {k: v for k, v in spec.config.items() if k not in ("title", "seeds", "baseline_of", "name")}
        cfg["split_rule"] = 2
        return hashlib.sha256(json.dumps({"config": cfg, "inputs": spec.inputs}, sort_keys=True).encode()).hexdigest()[:16]

    es = "batch_size = 20\nearly_stopping = {patience = 2, min_delta = 0.01}"
    with_delta = validate(tomllib.loads(TINY.replace("batch_size = 20", es)), "x.toml")
    without = validate(tomllib.loads(TINY.replace("batch_size = 20", es.replace(", min_delta = 0.01", ""))), "x.toml")
    assert without.digest() == plain_digest(without)
    assert with_delta.digest() != plain_digest(with_delta)


def test_the_lecture_experiments_keep_their_identity():
    """Every lecture experiment's digest and its baseline's name and digest (run identities, so
    an existing results folder is reused as it is), as the code before the typed spec made them
    (10f286a)."""
    import hashlib

    from reglab.experiments.study import load_specs

    specs = load_specs([str(LECTURE.parent)])
    lines = sorted(f"{s.name}:{s.digest()}:{s.baseline().name}:{s.baseline().digest()}" for s in specs)
    assert len(lines) == 13 and lines[0] == "p1_regularized_loss:b443c92878239dbb:baseline.f6b0fe53d3:f6b0fe53d3258435"
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16] == "5e8fead9f3c10efc"


def test_a_results_folder_written_before_the_typed_spec_is_reused_as_it_is(tmp_path):
    """``tests/fixtures/written_by_10f286a``: ``reglab run tiny.toml`` as the code before the
    runner split and the typed spec wrote it. Run again now: 0 runs trained, and ``results.csv``
    written anew is the same byte for byte. (A new reglab version gives every run a new id on
    purpose; then this fixture is written anew by the version before it.)"""
    import shutil

    fixture = Path(__file__).parent / "fixtures" / "written_by_10f286a"
    work = tmp_path / "w"
    shutil.copytree(fixture, work)
    res = run([work / "tiny.toml"], work / "out")
    assert res.exit_code == 0 and "0 runs trained, 4 already done" in res.output, res.output
    assert (work / "out" / "results.csv").read_bytes() == (fixture / "out" / "results.csv").read_bytes()


def test_the_typed_sections_of_a_spec():
    """What reglab reads of an experiment, section by section; ``with_train`` sets keys after
    the others and removes those set to None."""
    spec = validate(tomllib.loads(TINY), "x.toml")
    tr = spec.train
    assert (tr.loss.written, tr.optimizer["name"], tr.optimizer["learning_rate"], tr.epochs, tr.batch_size) == (
        "binary_crossentropy", "adam", 0.01, 3, 20)
    assert tr.early_stopping is None and tr.device is None
    assert [la["units"] for la in spec.model.layers] == [4, 1] and spec.model.builder is None
    assert spec.model.described == "MLP 4-1" and spec.data.source == "blobs" and spec.data.transform is None
    assert spec.split.resample is True and spec.regularize.params is None
    assert spec.analysis.sparsity_layers == [] and spec.analysis.weight_histograms is False
    on = spec.with_train(device="cuda", epochs=5)
    assert list(on.config["train"])[-2:] == ["device", "epochs"] and on.train.epochs == 5
    assert on.digest() != spec.digest() and on.with_train(device=None, epochs=3).digest() == spec.digest()


@pytest.mark.parametrize("written,task,name,logits,fit,regression", [
    (None, "binary", "binary_crossentropy", False, "binary_crossentropy", None),
    (None, "multiclass", "sparse_categorical_crossentropy", False, "sparse_categorical_crossentropy", None),
    (None, "regression", "mean_squared_error", False, "mean_squared_error", None),
    ("mae", "regression", "mae", False, "mae", "mean_absolute_error"),
    ({"name": "binary_crossentropy", "from_logits": True}, "binary", "binary_crossentropy", True,
     "BinaryCrossentropy(from_logits=True)", None),
    ({"name": "regularized", "data_loss": "mse", "codes": ["L2"], "strength": 0.1}, "regression", "regularized",
     False, None, "mean_squared_error"),
    ({"name": "regularized", "codes": ["L2"], "strength": 0.1}, "binary", "regularized", False, None, None),
])
def test_what_the_loss_of_a_spec_means(written, task, name, logits, fit, regression):
    """``spec.train.loss``: the one reading of ``[train] loss`` -- its name, ``from_logits``, what
    ``fit_many`` takes (None: the builder returns a regularized loss), and the regression loss
    that makes integer targets a regression."""
    from reglab import losses
    from reglab.experiments.spec import Loss

    lo = Loss(written)
    assert (lo.name(task), lo.from_logits(task), lo.regression, lo.regularized) == (
        name, logits, regression, name == "regularized")
    got = lo.for_fit(task)
    if isinstance(got, losses.Loss):
        assert type(got).__name__ + f"(from_logits={got.from_logits})" == fit
    else:
        assert got == fit


def test_nothing_outside_the_schema_reads_the_raw_experiment_dictionary():
    """Only the schema (``schema.py`` and its section checks, ``sections.py``, which make it)
    and ``spec.py`` (its typed views) read keys of an experiment's ``config``; the rest reads
    the typed sections."""
    import re

    src = Path(reglab.__file__).parent
    pattern = re.compile(r"\.config\s*\[|\.config\.get\(|\.config\.items\(|\bcfg\s*\[")
    readers = sorted(str(p.relative_to(src)) for p in src.rglob("*.py") if pattern.search(p.read_text()))
    assert readers == ["experiments/schema.py", "experiments/sections.py", "experiments/spec.py"], readers


# ----------------------------------------------------------------------------- any model, any data


def _csv(path, n=60, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + noise * rng.normal(size=n)
    lines = ["a,b,c,target"] + [f"{r[0]},{r[1]},{r[2]},{t}" for r, t in zip(x, y)]
    path.write_text("\n".join(lines) + "\n")


REGRESSION = """
name = "reg"
seeds = 2
[data]
file = "data.csv"
target = "target"
standardize = true
[split]
validation = 0.25
test = 0.25
[train]
optimizer = {name = "adam", learning_rate = 0.02}
epochs = 40
batch_size = 10
[[model.layers]]
units = 8
activation = "relu"
[[model.layers]]
units = 1
"""


def test_csv_regression_gets_mse_metrics_and_an_mse_baseline(tmp_path):
    _csv(tmp_path / "data.csv")
    spec = one(write(tmp_path, REGRESSION + '[regularize]\nparams = {"@kernels" = {name = "L2", l2 = 1e-3}}\n', "reg.toml"))
    sp = splits_of(spec, 0)
    assert sp.task == "regression" and (sp.x_train.shape, sp.x_val.shape, sp.x_test.shape) == ((30, 3), (15, 3), (15, 3))
    # the scaler is fitted on the training split only
    np.testing.assert_allclose(sp.x_train.mean(0), 0, atol=1e-6)
    assert np.abs(sp.x_test.mean(0)).max() > 1e-3
    out = tmp_path / "out"
    res = run([tmp_path / "reg.toml"], out)
    assert res.exit_code == 0, res.output
    df = reglab.load_results(out)
    assert set(df["loss_name"]) == {"mean_squared_error"} and set(df["task"]) == {"regression"}
    assert {"test_mse", "test_mae", "test_r2", "val_mse"} <= set(df.columns)
    assert not any(c.endswith(("log_loss", "accuracy")) for c in df.columns)
    assert (df["test_r2"] > 0.5).all()  # a linear target, learned
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0].startswith("experiment,is_baseline,baseline,seed,task,loss_name,epochs_run,failed")
    # the regularized rows name their baseline; the baseline trains with MSE too
    assert set(df.loc[~df.is_baseline, "baseline"]) == set(df.loc[df.is_baseline, "experiment"])
    # the report of one experiment: its grammar, what "±" means, where R²'s comparison is
    assert CliRunner().invoke(main, ["report", str(out)]).exit_code == 0
    md = (out / "report.md").read_text()
    assert "(lower is better), the one experiment against its own unregularized baseline" in md
    assert "mean [low, high]: the interval itself, where mean ± half-width would leave the metric's range" in md
    assert "The comparisons on test R² are rows of `comparisons.csv`, like these." in md
    assert "each of 1 experiments" not in md


def test_builder_from_a_file_with_baseline_args_and_a_multiclass_npz_of_images(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=90)
    x = rng.normal(size=(90, 1, 4, 4)).astype(np.float32) + 2 * y[:, None, None, None]
    np.savez(tmp_path / "images.npz", x=x, y=y)
    (tmp_path / "models.py").write_text(BUILDER)
    (tmp_path / "cnn.py").write_text(CNN)
    text = """
name = "drop"
seeds = 3
[data]
file = "images.npz"
[train]
loss = {name = "sparse_categorical_crossentropy", from_logits = true}
optimizer = {name = "adam", learning_rate = 0.02}
epochs = 15
batch_size = 16
[model]
builder = "models.py:build"
args = {width = 5, dropout = 0.5}
[baseline]
args = {dropout = 0.0}
"""
    spec = one(write(tmp_path, text, "drop.toml"))
    assert spec.config["model"]["args"] == {"width": 5, "dropout": 0.5}
    assert spec.baseline().config["model"]["args"] == {"width": 5, "dropout": 0.0}
    one(write(tmp_path, text.replace('name = "drop"', 'name = "cnn"').replace("models.py:build", "cnn.py:build")
                    .replace("args = {width = 5, dropout = 0.5}", "args = {channels = 2}").split("[baseline]")[0] +
                    '[regularize]\nparams = {"@kernels" = "l2"}\n', "cnn.toml"))
    out = tmp_path / "out"
    res = run([tmp_path / "drop.toml", tmp_path / "cnn.toml"], out)
    assert res.exit_code == 0, res.output
    runs = load_runs(out)
    assert {r["engine"] for r in runs if r["experiment"] == "cnn"} == {"vmap"}  # the CNN's 3 seeds in one group
    assert {r["group_size"] for r in runs} == {3}
    df = reglab.load_results(out)
    assert set(df["task"]) == {"multiclass"}
    assert {"test_log_loss", "test_accuracy", "test_brier", "test_ece"} <= set(df.columns)
    assert df[["test_log_loss", "test_accuracy", "test_brier", "test_ece"]].notna().all().all()
    assert (df.groupby("experiment")["test_accuracy"].mean() > 0.6).all()  # the classes differ by their mean
    # the L2 on the CNN's kernels: conv and linear weights, not the BatchNorm or biases
    row = next(r for r in runs if r["experiment"] == "cnn")
    model = load_model(row, tmp_path / "cnn.toml")
    assert sorted(reglab.regularization_spec(model)["params"]) == ["0.weight", "4.weight"]


def test_split_files_and_a_loader(tmp_path):
    for k, seed in (("train", 0), ("validation", 1), ("test", 2)):
        _csv(tmp_path / f"{k}.csv", n=30, seed=seed)
    text = REGRESSION.replace('file = "data.csv"', 'files = {train = "train.csv", validation = "validation.csv", test = "test.csv"}')
    text = text.replace("[split]\nvalidation = 0.25\ntest = 0.25\n", "")
    spec = one(write(tmp_path, text, "files.toml"))
    sp = splits_of(spec, 1)
    assert (sp.x_train.shape[0], sp.x_val.shape[0], sp.x_test.shape[0]) == (30, 30, 30)
    bad = write(tmp_path, text + "\n[split]\ntest = 0.2\n", "bad.toml")
    with pytest.raises(ConfigError, match=r"data.files gives the splits"):
        load_experiment(bad)
    (tmp_path / "loader.py").write_text("import numpy as np\n"
                                        "def load(n=50):\n"
                                        "    rng = np.random.default_rng(0)\n"
                                        "    x = rng.normal(size=(n, 2)); return x, (x[:, 0] > 0).astype(int)\n")
    lt = TINY.replace('name = "blobs"\nn_samples = 80', 'loader = "loader.py:load"\nargs = {n = 60}')
    sp = splits_of(one(write(tmp_path, lt, "loader.toml")), 0)
    assert sp.task == "binary" and sp.x_train.shape == (36, 2) and sp.y_train.shape == (36, 1)
    assert sp.x_val.shape == (12, 2) and sp.x_test.shape == (12, 2)


@pytest.mark.parametrize("content, message", [
    ("a,b,target\n1,2,0\n3,nan,1\n", r"d.toml: data.file: '.*d.csv': 1 empty/NaN/inf input value\(s\), the first in "
                                     r"column 'b', line 3 of the file"),
    ("a,b,target\n1,2,0\n3,4,1\n5,inf,0\n", r"data.file: '.*d.csv': 1 empty/NaN/inf input value\(s\), the first in "
                                           r"column 'b', line 4 of the file"),
    ("a,b,target\n1,2,0\n3,4,\n5,6,1\n", r"data.target: '.*d.csv': 1 empty/NaN/inf target value\(s\), the first in "
                                        r"column 'target', line 3 of the file"),
    ("a,b,target\n1,2,0\n3,?,1\n", r"non-numeric input column\(s\) \['b'\]"),
    ("a,b,label\n1,2,0\n3,4,1\n", r"data.target: column 'target' not in"),
    ("a,b,target\n1,2,0\n3,4,2\n5,6,1\n7,8,1.5\n", None),
])
def test_bad_data_files_are_named(tmp_path, content, message):
    (tmp_path / "d.csv").write_text(content)
    p = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'file = "d.csv"\ntarget = "target"'), "d.toml")
    spec = one(p)
    if message is None:  # 1.5 among integers: regression, and BCE does not fit it
        with pytest.raises(ConfigError, match=r"binary_crossentropy is a classification loss but the data's task is regression"):
            prepare([spec])
        return
    with pytest.raises(ConfigError, match=message):
        prepare([spec])


def test_labels_that_do_not_fit_the_task_and_missing_files(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((6, 2)), y=np.array([0, 1, 2, 0, 1, 2]))
    p = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'file = "d.npz"\ntask = "binary"'), "d.toml")
    with pytest.raises(ConfigError, match=r"binary needs two classes"):
        prepare([one(p)])
    np.savez(tmp_path / "e.npz", x=np.zeros((6, 2)), y=np.array([0, 1, 5, 3, 4, 2]))
    p = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'file = "e.npz"\ntask = "multiclass"'), "e.toml")
    with pytest.raises(ConfigError, match=r"binary_crossentropy is a binary loss but the data have 6 classes"):
        prepare([one(p)])
    # a class with no example anywhere: a gap in the labels (it trained before, on an empty class)
    np.savez(tmp_path / "e.npz", x=np.zeros((6, 2)), y=np.array([0, 1, 5, 0, 1, 5]))
    with pytest.raises(ConfigError, match=r"e.toml: data: multiclass labels must be 0..K-1 with an example of every "
                                          r"class; class\(es\) \[2, 3, 4\] of 0..5 have none \(labels present: "
                                          r"\[0, 1, 5\]\): relabel them 0..2"):
        prepare([one(p)])
    np.savez(tmp_path / "e.npz", x=np.zeros((6, 2)), y=np.array([-1, 1, 2, 1, 1, 2]))  # named as negative, not as a gap
    with pytest.raises(ConfigError, match=r"multiclass labels must be 0..2; label -1 at index 0 is not"):
        prepare([one(p)])
    np.savez(tmp_path / "f.npz", x=np.zeros((6, 2)), y=np.zeros(5))
    p = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'file = "f.npz"'), "f.toml")
    with pytest.raises(ConfigError, match=r"f.toml: data.file \('.*f.npz'\): x has 6 examples of shape \(2,\) but "
                                          r"y has shape \(5,\)"):
        prepare([one(p)])
    np.savez(tmp_path / "h.npz", x=np.array([[0.0, 1.0]] * 5 + [[np.inf, 0.0]]), y=np.array([0, 1, 0, 1, 0, 1]))
    p = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'file = "h.npz"'), "h.toml")
    with pytest.raises(ConfigError, match=r"data.file \('.*h.npz'\): x has 1 NaN/inf value\(s\), the first in "
                                          r"example 5 \(counting from 0: x\[5\]\)"):
        prepare([one(p)])
    p = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'file = "gone.csv"\ntarget = "y"'), "g.toml")
    with pytest.raises(ConfigError, match=r"g.toml: data.file: no such file"):
        load_experiment(p)


@pytest.mark.parametrize("units, labels, message", [
    (2, [0, 1, 2], r"outputs 2 value\(s\) per example but the multiclass task of the data needs 3 \(one per class 0..2\)"),
    (4, [0, 1, 2], r"outputs 4 value\(s\) per example but the multiclass task of the data needs 3"),
    (3, [1, 2, 3], r"multiclass labels must be 0..K-1; these start at 1"),
    (1, list(range(38)), r"needs 38 \(one per class 0..37\); if the target is a count or a measurement, set data.task"),
])
def test_output_width_and_labels_are_checked_before_training(tmp_path, units, labels, message):
    y = np.array(labels * 4)
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).normal(size=(y.size, 2)), y=y)
    text = TINY.replace('name = "blobs"\nn_samples = 80', 'file = "d.npz"').replace(
        'loss = "binary_crossentropy"', 'loss = "sparse_categorical_crossentropy"').replace(
        'units = 1\nactivation = "sigmoid"', f'units = {units}\nactivation = "softmax"')
    with pytest.raises(ConfigError, match=message):
        prepare([one(write(tmp_path, text, "w.toml"))])


def test_mistakes_named_at_their_key(tmp_path):
    (tmp_path / "models.py").write_text(BUILDER)
    text = (TINY.split("[[model.layers]]")[0] + '[model]\nbuilder = "models.py:build"\n[baseline]\nargs = {dropuot = 0.0}\n')
    with pytest.raises(ConfigError, match=r"baseline.args: the builder takes no argument\(s\) \['dropuot'\]"):
        load_experiment(write(tmp_path, text, "b.toml"))
    sweep = TINY.replace("epochs = 3", "epoch = 3") + '\n[[sweep]]\npath = ["train", "batch_size"]\nvalues = [10, 20]\n'
    with pytest.raises(ConfigError) as err:
        load_experiment(write(tmp_path, sweep, "s.toml"))
    assert "unknown key(s) ['epoch']" in str(err.value) and "sweep point" not in str(err.value)
    st = TINY.replace("n_samples = 80", "n_samples = 80\nstandardize_target = true")
    with pytest.raises(ConfigError, match=r"data.standardize_target: only for regression targets; the task is binary"):
        prepare([one(write(tmp_path, st, "t.toml"))])
    with pytest.raises(FileNotFoundError, match="no such results folder"):
        reglab.load_results(tmp_path / "nothing")


def test_task_inference():
    from reglab.experiments.data import infer_task

    assert infer_task(np.array([0, 1, 1])) == "binary"
    assert infer_task(np.array([0.0, 1.0])) == "binary"
    assert infer_task(np.array([0, 1, 2])) == "multiclass"
    assert infer_task(np.array([0.5, 1.0])) == "regression"
    assert infer_task(np.zeros((4, 2))) == "regression"


def test_builtin_sklearn_sets_and_their_tasks():
    for name, task, n in (("sklearn.iris", "multiclass", 150), ("sklearn.breast_cancer", "binary", 569),
                          ("sklearn.wine", "multiclass", 178), ("sklearn.diabetes", "regression", 442),
                          ("sklearn.digits", "multiclass", 1797)):
        x, y, dist, t = reglab.datasets.sample(name)
        assert (t, x.shape[0], dist) == (task, n, None)


# ----------------------------------------------------------------------------- protocol


def test_test_labels_change_no_training_decision(tmp_path):
    """Early stopping and best weights see the validation split only: noise in the test labels
    changes the test scores and nothing else."""
    for k, seed in (("train", 0), ("validation", 1), ("test", 2)):
        _csv(tmp_path / f"{k}.csv", n=40, seed=seed, noise=1.0)
    rng = np.random.default_rng(9)
    lines = (tmp_path / "test.csv").read_text().splitlines()
    noisy = [lines[0]] + [",".join(line.split(",")[:3] + [str(rng.normal() * 5)]) for line in lines[1:]]
    (tmp_path / "noisy.csv").write_text("\n".join(noisy) + "\n")
    text = REGRESSION.replace('file = "data.csv"', 'files = {train = "train.csv", validation = "validation.csv", test = "TEST"}')
    text = text.replace("[split]\nvalidation = 0.25\ntest = 0.25\n", "").replace("epochs = 40", "epochs = 300")
    text = text.replace("batch_size = 10", "batch_size = 10\nearly_stopping = {patience = 3, restore_best_weights = true}")
    outs = []
    for test in ("test.csv", "noisy.csv"):
        d = tmp_path / test.split(".")[0]
        d.mkdir()
        for f in ("train.csv", "validation.csv", test):
            (d / f).write_text((tmp_path / f).read_text())
        p = write(d, text.replace("TEST", test), "es.toml")
        assert run([p], d / "out", "--no-baselines").exit_code == 0
        outs.append(sorted(load_runs(d / "out"), key=lambda r: r["seed"]))
    for a, b in zip(*outs):
        assert a["metrics"]["epochs_run"] == b["metrics"]["epochs_run"] < 300  # it did stop early
        assert a["history"] == b["history"]
        for k in ("val_mse", "val_mae", "val_r2"):
            assert a["metrics"][k] == b["metrics"][k]
        assert a["metrics"]["test_mse"] != b["metrics"]["test_mse"]


def test_sweep_grid_points_are_their_own_rows(tmp_path):
    text = TINY + '\n[[sweep]]\npath = ["model", "layers", 0, "kernel_regularizer", "l2"]\nvalues = [0.001, 0.1]\n' \
                  '\n[[sweep]]\npath = ["train", "optimizer", "learning_rate"]\nvalues = [0.01, 0.02]\n'
    specs = load_experiment(write(tmp_path, text))
    assert len(specs) == 4 and len({s.digest() for s in specs}) == 4
    assert specs[1].sweep_point == {"model/layers/0/kernel_regularizer/l2": 0.001, "train/optimizer/learning_rate": 0.02}
    assert len({s.baseline().name for s in specs}) == 2  # the learning rate is part of the baseline, l2 is not
    out = tmp_path / "out"
    assert run([tmp_path / "tiny.toml"], out, "--seeds", "1").exit_code == 0
    df = reglab.load_results(out)
    exp = df[~df.is_baseline]
    assert len(exp) == 4 and len(df) == 6
    assert sorted(zip(exp["model/layers/0/kernel_regularizer/l2"], exp["train/optimizer/learning_rate"])) == [
        (0.001, 0.01), (0.001, 0.02), (0.1, 0.01), (0.1, 0.02)]
    assert df.loc[df.is_baseline, "model/layers/0/kernel_regularizer/l2"].isna().all()
    # the note under the results table explains the forms its metric cells have (one run each
    # here), not the "[" of a grid point's name
    assert CliRunner().invoke(main, ["report", str(out)]).exit_code == 0
    md = (out / "report.md").read_text()
    results = md[md.index("## Results over seeds"):md.index("## Paired comparisons")]
    assert "| `tiny [l2=0.001, learning_rate=0.01]` |" in results
    assert '*"(one run)": no interval from one run.*' in results and "[low, high]" not in results


def test_known_distribution_adds_fresh_bayes_and_excess(tmp_path):
    out = tmp_path / "out"
    assert run([write(tmp_path, TINY)], out, "--seeds", "1").exit_code == 0
    df = reglab.load_results(out)
    for m in ("log_loss", "accuracy", "brier", "ece"):
        for p in ("val_", "test_", "fresh_", "bayes_", "excess_"):
            assert df[p + m].notna().all(), p + m
        np.testing.assert_allclose(df["excess_" + m], df["fresh_" + m] - df["bayes_" + m])
    assert df["bayes_accuracy"].iloc[0] == pytest.approx(0.846, abs=0.005)


def test_resample_false_shares_one_split(tmp_path):
    spec = one(write(tmp_path, TINY + "\n[split]\nresample = false\n"))
    a, b = splits_of(spec, 0), splits_of(spec, 5)
    assert np.array_equal(a.x_test, b.x_test)
    spec = one(write(tmp_path, TINY))
    assert not np.array_equal(splits_of(spec, 0).x_test, splits_of(spec, 5).x_test)


def test_no_nan_reaches_results_or_report_and_failed_runs_are_left_out(tmp_path):
    """A run that diverges has no figures (empty cells), is counted as failed, and keeps the
    report free of NaN/inf."""
    diverge = TINY.replace('name = "tiny"', 'name = "boom"').replace(
        'optimizer = {name = "adam", learning_rate = 0.01}', 'optimizer = {name = "sgd", learning_rate = 1e5}').replace(
        'loss = "binary_crossentropy"', 'loss = "mse"').replace('name = "blobs"', 'name = "blobs"\ntask = "regression"')
    diverge = diverge.replace('units = 1\nactivation = "sigmoid"', 'units = 1')
    out = tmp_path / "out"
    res = run([write(tmp_path, diverge, "boom.toml")], out, "--seeds", "2", "--no-baselines")
    assert res.exit_code == 0, res.output
    assert "diverged: boom: 2 of 2 seed(s) (0, 1)" in res.output  # said per experiment
    df = reglab.load_results(out)
    assert df["failed"].all()
    assert df.filter(like="test_").isna().all().all()
    csv = (out / "results.csv").read_text()
    assert "nan" not in csv.lower() and "inf" not in csv.lower()
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    assert "0 / 2" in md
    # a sweep: the grid point that diverged is named, not merged with the one that did not
    swept = diverge.replace('name = "boom"', 'name = "swept"') + \
        '\n[[sweep]]\npath = ["train", "optimizer", "learning_rate"]\nvalues = [1e-3, 1e5]\n'
    res = run([write(tmp_path, swept, "swept.toml")], tmp_path / "o2", "--seeds", "2", "--no-baselines")
    assert res.exit_code == 0, res.output
    assert "diverged: swept [train/optimizer/learning_rate = 100000.0]: 2 of 2 seed(s) (0, 1)" in res.output
    assert "learning_rate = 0.001" not in res.output
    for bad in ("nan", "inf", "–"):
        assert bad not in md.replace("info", "").replace("Infinity", "").lower().replace("inferred", ""), bad


# ----------------------------------------------------------------------------- runner


def test_resume_after_interruption_and_damaged_files(tmp_path):
    a = validate(tomllib.loads(TINY), "a.toml")
    b = validate(tomllib.loads(TINY.replace('name = "tiny"', 'name = "tiny_b"').replace("l2 = 0.01", "l2 = 0.1")), "b.toml")
    units = plan_units([a, b], seeds=2, baselines=False)
    out = tmp_path / "res"

    class Stop(Exception):
        pass

    def interrupt(spec, seeds):
        raise Stop  # the process dies after the first experiment's runs were written

    with pytest.raises(Stop):
        execute(units, out, progress=False, on_group_done=interrupt)
    done = load_runs(out)
    assert len({r["experiment"] for r in done}) == 1 and len(done) == 2
    first = done[0]["experiment"]
    first_mtimes = {p: p.stat().st_mtime_ns for p in out.glob(f"runs/{first}/*.json")}
    info = execute(units, out, progress=False)
    assert info == {**info, "trained": 2, "skipped": 2}  # only the interrupted experiment's runs
    assert {p: p.stat().st_mtime_ns for p in out.glob(f"runs/{first}/*.json")} == first_mtimes
    # a truncated result file or a damaged weights file is redone; an intact run is not
    victim = next(out.glob("runs/tiny_b/*.json"))
    victim.write_text(victim.read_text()[:50])
    pt = next(out.glob("runs/tiny/*.pt"))
    pt.write_bytes(pt.read_bytes()[:-10])
    info = execute(units, out, progress=False)
    assert info["trained"] == 2 and info["skipped"] == 2
    assert json.loads(victim.read_text())["metrics"]["n_test"] == 16


def test_path_strength_substitution_through_hparams():
    spec = one(LECTURE / "p6_all_together.toml")
    s = with_strength(spec, 0.5)
    layers = s.config["model"]["layers"]
    assert layers[0]["kernel_regularizer"]["config"] == {"l2": 0.5}
    assert layers[0]["activity_regularizer"]["config"] == {"l1": 0.5}
    p1 = with_strength(one(LECTURE / "p1_regularized_loss.toml"), 0.2)
    assert p1.config["train"]["loss"]["strength"] == 0.2
    kl = with_strength(one(LECTURE / "p7_kl_sparsity.toml"), 0.3)
    act = [la["activity_regularizer"] for la in kl.config["model"]["layers"] if "activity_regularizer" in la]
    assert act[-1]["config"] == {"rho": 0.05, "strength": 0.3}  # KLSparsity's strength, rho untouched
    with pytest.raises(ValueError, match="has no regularizer"):
        with_strength(one(LECTURE / "x_dropout.toml"), 0.1)


def test_cli_list_run_report_and_path(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["list", str(LECTURE)])
    assert res.exit_code == 0 and "p7_kl_sparsity" in res.output
    p = write(tmp_path, TINY)
    out = tmp_path / "out"
    res = run([p], out, "--seeds", "2")
    assert res.exit_code == 0, res.output
    assert "4 runs trained, 0 already done" in res.output  # 2 seeds x (tiny + its baseline)
    res = runner.invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    assert "tiny" in html and "data:image/png;base64," in html
    res = run([p], out, "--seeds", "0")
    assert res.exit_code != 0 and "--seeds" in res.output
    moons = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'name = "moons"\nn_samples = 120\nnoise = 0.3'),
                  "moons.toml")
    res = runner.invoke(main, ["path", str(moons), "--strengths", "0,0.01", "--seeds", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "paths" / "tiny.json").read_text())
    assert doc["strengths"] == [0.0, 0.01] and np.asarray(doc["metrics"]["excess_log_loss"]).shape == (2, 2)
    assert doc["select_metric"] == "val_log_loss"
    assert f"written: {out / 'paths' / 'tiny.json'}" in res.output
    # no known distribution: the held-out figure is the test log-loss, whose interval in the
    # verdict stays inside [0, inf) (the raw t-interval of 2 seeds reaches below 0)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(24, 2))
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] + 2 * rng.normal(size=24) > 0).astype(int))
    npz = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'file = "d.npz"'), "npz.toml")
    res = runner.invoke(main, ["path", str(npz), "--strengths", "0,0.01", "--seeds", "2", "--out", str(tmp_path / "o3")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "o3" / "paths" / "tiny.json").read_text())
    from reglab.diagnostics.statistics import mean_ci

    held = np.asarray(doc["metrics"]["test_log_loss"])[doc["strengths"].index(doc["best_strength"])]
    assert doc["held_out_metric"] == "test_log_loss" and mean_ci(held)[1] < 0  # the raw interval
    lo = float(res.output.split("test log loss is ")[1].split("[")[1].split(",")[0])
    assert lo == 0.0 and doc["chosen"][1] == 0.0


def test_run_unit_is_the_single_task_entry_point(tmp_path):
    from reglab.experiments.runner import run_unit

    spec = validate(tomllib.loads(TINY), "x.toml")
    unit = Unit(spec, 1)
    row = run_unit(unit, tmp_path)
    assert unit.done(tmp_path) and row["seed"] == 1 and row["run_id"] == unit.run_id
    mtime = unit.path(tmp_path).stat().st_mtime_ns
    again = run_unit(unit, tmp_path)  # finished: read back, not retrained
    assert unit.path(tmp_path).stat().st_mtime_ns == mtime and again["metrics"] == row["metrics"]
    execute([Unit(spec, 0), Unit(spec, 1)], tmp_path / "group", progress=False)
    grouped = json.loads(unit.path(tmp_path / "group").read_text())
    assert grouped["metrics"] == row["metrics"] and grouped["history"] == row["history"]


DROPOUT_ACTIVITY = TINY.replace('activation = "relu"\n', 'activation = "relu"\ndropout = 0.3\n'
                                'activity_regularizer = {name = "L1", l1 = 0.01}\n').replace("epochs = 3", "epochs = 4")


@pytest.mark.parametrize("threads", [1, 2])
def test_a_unit_does_not_depend_on_its_group(tmp_path, threads):
    """A seed trained in a group of four, and alone (what a resume after an interruption does),
    gives bit-identical metrics and histories -- penalties, dropout masks and all -- at 1 and 2
    threads."""
    import torch

    spec = validate(tomllib.loads(DROPOUT_ACTIVITY), "x.toml")
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        execute([Unit(spec, s) for s in range(4)], tmp_path / "group", progress=False)
        execute([Unit(spec, 2)], tmp_path / "alone", progress=False)
    finally:
        torch.set_num_threads(before)
    grouped = json.loads(Unit(spec, 2).path(tmp_path / "group").read_text())
    alone = json.loads(Unit(spec, 2).path(tmp_path / "alone").read_text())
    assert grouped["group_size"] == 4 and alone["group_size"] == 1 and grouped["engine"] == "dense"
    assert grouped["metrics"] == alone["metrics"] and grouped["history"] == alone["history"]
    assert grouped["history"]["history"]["penalty"][0] > 0
    other = json.loads(Unit(spec, 1).path(tmp_path / "group").read_text())
    assert other["metrics"]["val_log_loss"] != alone["metrics"]["val_log_loss"]  # seeds do differ


def _cnn_spec(tmp_path, module_text):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=60)
    np.savez(tmp_path / "images.npz", x=(rng.normal(size=(60, 1, 4, 4)) + y[:, None, None, None]).astype(np.float32),
             y=y)
    (tmp_path / "cnn.py").write_text(module_text)
    return one(write(tmp_path, """
name = "cnn"
[data]
file = "images.npz"
[train]
loss = {name = "sparse_categorical_crossentropy", from_logits = true}
epochs = 3
batch_size = 16
[model]
builder = "cnn.py:build"
""", "cnn.toml"))


def _numbers(path):
    run = json.loads(path.read_text())
    return run["metrics"], run["history"]


@pytest.mark.parametrize("threads", [1, 2])
def test_a_vmap_unit_gets_the_same_numbers_in_any_group(tmp_path, threads):
    """On the vmap path (a CNN with batch norm and dropout) a unit's numbers do not depend on its
    group: 4 seeds together, 2 of them together, a lost unit redone (beside a twin, not the whole
    group), one seed alone, and ``--seeds 2`` grown to 4 -- all bit-identical, at 1 and 2 threads."""
    from reglab.experiments.plan import plan_of

    spec = _cnn_spec(tmp_path, CNN.replace("nn.ReLU(), nn.Flatten()", "nn.ReLU(), nn.Dropout(0.3), nn.Flatten()"))
    assert plan_of(spec).group_rule == "pairs" and plan_of(validate(tomllib.loads(TINY), "t.toml")).group_rule == "any"
    units = [Unit(spec, s) for s in range(4)]
    out = tmp_path / "out"
    execute(units, out, progress=False, threads=threads)
    ref = {u.seed: _numbers(u.path(out)) for u in units}
    first = json.loads(units[2].path(out).read_text())
    assert first["engine"] == "vmap" and first["group_size"] == 4 and first["threads"] == threads
    assert len({json.dumps(r[0]) for r in ref.values()}) == 4  # four different models
    # a lost unit is redone beside a twin, the others are not rewritten
    others = {u.seed: u.path(out).stat().st_mtime_ns for u in units if u.seed != 2}
    units[2].path(out).unlink()
    info = execute(units, out, progress=False, threads=threads)
    assert info["trained"] == 1 and info["skipped"] == 3
    assert json.loads(units[2].path(out).read_text())["group_size"] == 2
    assert _numbers(units[2].path(out)) == ref[2]
    assert {u.seed: u.path(out).stat().st_mtime_ns for u in units if u.seed != 2} == others
    # one seed alone (a study of --seeds 1), and --seeds 2 grown to --seeds 4
    alone = tmp_path / "alone"
    assert execute([units[2]], alone, progress=False, threads=threads)["trained"] == 1
    assert _numbers(units[2].path(alone)) == ref[2]
    grown = tmp_path / "grown"
    execute(units[:2], grown, progress=False, threads=threads)
    assert execute(units, grown, progress=False, threads=threads)["trained"] == 2
    assert {u.seed: _numbers(u.path(grown)) for u in units} == ref


def test_a_redone_vmap_unit_trains_at_the_thread_count_its_grid_point_recorded(tmp_path):
    """Numbers on the vmap path depend on the thread count; a lost unit redone without
    ``--threads`` trains at the count its grid point's finished units recorded (here 2, given
    explicitly the first time; the rule alone would give this tiny CNN 1), so it gets the
    numbers of the run that was lost."""
    spec = _cnn_spec(tmp_path, CNN)
    units = [Unit(spec, s) for s in range(3)]
    out = tmp_path / "out"
    execute(units, out, progress=False, threads=2)
    before = _numbers(units[1].path(out))
    units[1].path(out).unlink()
    assert execute(units, out, progress=False)["trained"] == 1
    again = json.loads(units[1].path(out).read_text())
    assert again["threads"] == 2 and again["group_size"] == 2
    assert (again["metrics"], again["history"]) == before
    alone = tmp_path / "alone"  # a fresh run, by the rule
    execute(units[1:2], alone, progress=False)
    assert json.loads(units[1].path(alone).read_text())["threads"] == 1


def test_a_unit_with_other_randomness_is_redone_alone_with_the_numbers_it_had(tmp_path):
    """A forward pass that draws noise itself (not ``nn.Dropout``) trains on the per-model loop
    engine, each model drawing from its own generator as it would alone: a lost unit is redone by
    itself and equals the run that was lost, bit for bit, as does a run of it alone. (Under
    ``vmap`` its noise came from draws for the whole group, and a lost unit needed its whole
    group again.)"""
    from reglab.experiments.plan import plan_of

    noisy = CNN.replace("from torch import nn", """import torch
from torch import nn

class Noise(nn.Module):
    def forward(self, x):
        return x + 0.3 * torch.randn_like(x) if self.training else x
""").replace("nn.ReLU(), nn.Flatten()", "nn.ReLU(), Noise(), nn.Flatten()")
    spec = _cnn_spec(tmp_path, noisy)
    assert plan_of(spec).group_rule == "threads"
    units = [Unit(spec, s) for s in range(4)]
    out = tmp_path / "out"
    execute(units, out, progress=False, threads=1)
    before = _numbers(units[2].path(out))
    row = json.loads(units[2].path(out).read_text())
    assert row["engine"] == "loop" and "outside nn.Dropout" in row["engine_reason"]
    units[2].path(out).unlink()
    info = execute(units, out, progress=False, threads=1)
    assert info["trained"] == 1 and info["skipped"] == 3
    assert json.loads(units[2].path(out).read_text())["group_size"] == 1
    assert _numbers(units[2].path(out)) == before
    alone = execute([units[2]], tmp_path / "alone", progress=False, threads=1)
    assert alone["trained"] == 1
    assert _numbers(units[2].path(tmp_path / "alone")) == before


def test_two_workers_give_one_worker_results_and_concurrent_runs_share_groups(tmp_path):
    """``workers=2`` (this process and a helper) writes the runs ``workers=1`` writes; a group
    locked by another process is left to it and waited for."""
    from reglab.experiments.locks import GroupLocks

    a = validate(tomllib.loads(TINY), "a.toml")
    b = validate(tomllib.loads(TINY.replace('name = "tiny"', 'name = "tiny_b"').replace("l2 = 0.01", "l2 = 0.1")),
                 "b.toml")
    units = plan_units([a, b], seeds=2, baselines=False)
    one = execute(units, tmp_path / "one", progress=False, workers=1)
    two = execute(units, tmp_path / "two", progress=False, workers=2)
    assert one["trained"] == two["trained"] == 4
    rows = {o: {r["run_id"]: (r["metrics"], r["history"]) for r in load_runs(tmp_path / o)} for o in ("one", "two")}
    assert rows["one"] == rows["two"] and len(rows["one"]) == 4
    # another process holds tiny_b's lock: this run trains tiny, then waits for tiny_b, which
    # the other process "finishes" (copies in) before it releases the lock -- with one worker,
    # and with two (where the pool's thread claims for the helper and meets the lock)
    import sys

    for workers in (1, 2):
        out = tmp_path / f"shared{workers}"
        key = b.digest() + "/" + b.name
        script = f"""
import shutil, sys, time
from reglab.experiments.locks import GroupLocks
locks = GroupLocks({str(out)!r})
assert locks.try_acquire({key!r})
print("held", flush=True)
time.sleep(1.5)
shutil.copytree({str(tmp_path / "one" / "runs" / "tiny_b")!r}, {str(out / "runs" / "tiny_b")!r},
                dirs_exist_ok=True)  # execute makes its experiments' folders before it trains
locks.release_all()
"""
        other = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        assert other.stdout.readline().strip() == "held"
        info = execute(units, out, progress=False, workers=workers)
        assert other.wait(timeout=60) == 0
        assert info["trained"] == 2 and info["skipped"] == 2, workers  # tiny_b came from the other run
        assert {r["run_id"] for r in load_runs(out)} == set(rows["one"])
        assert not list((out / "locks").glob("*.lock")) or GroupLocks(out).try_acquire(a.digest() + "/" + a.name)


def test_a_finished_run_reloads_from_its_experiment_file_without_pickle(tmp_path):
    from reglab.diagnostics.evaluate import predict

    p = write(tmp_path, TINY)
    spec = one(p)
    execute([Unit(spec, 3)], tmp_path / "out", progress=False)
    row = load_runs(tmp_path / "out")[0]
    model = load_model(row, p)
    sp = splits_of(spec, 3)
    prob = predict(model, sp.x_test).reshape(-1)
    acc = float(((prob > 0.5) == (sp.y_test.reshape(-1) > 0.5)).mean())
    assert acc == pytest.approx(row["metrics"]["test_accuracy"])
    assert reglab.regularization_spec(model)["params"] == {"0.weight": {"class_name": "L2", "config": {"l2": 0.01}}}
    p.write_text(TINY.replace("l2 = 0.01", "l2 = 0.02"))  # not the file that produced the run
    with pytest.raises(ValueError, match="none of its grid points"):
        load_model(row, p)


def test_planted_runs_outside_their_folder_are_not_read(tmp_path):
    out = tmp_path / "out"
    execute([Unit(validate(tomllib.loads(TINY), "x.toml"), 0)], out, progress=False)
    src = next(out.glob("runs/tiny/*.json"))
    row = json.loads(src.read_text())
    row["experiment"] = "x/../../../pwned"
    (out / "runs" / "tiny" / "planted.json").write_text(json.dumps(row))
    (out / "runs" / "bare.json").write_text('"just a string"')
    assert [r["experiment"] for r in load_runs(out)] == ["tiny"]


# ----------------------------------------------------------------------------- the library is not one study


def test_the_library_has_no_lecture_inside():
    res = subprocess.run(["grep", "-rniE", r"lecture|LECTURE_|p6_all_together|75 (test |validation )?points",
                          str(ROOT / "src" / "reglab"), "--include=*.py"],
                         capture_output=True, text=True)
    assert res.returncode == 1 and res.stdout == "", res.stdout


STUDIES = [("digits_cnn", "multiclass", {"l2_kernels", "dropout", "l1_activity"}),
           ("diabetes", "regression", {"l1", "l2", "early_stopping"}),
           ("augmentation", "multiclass", {"shifts", "weight_decay", "dropout"})]


@pytest.mark.parametrize("name, task, experiments", STUDIES)
def test_shipped_studies_run_at_small_size(tmp_path, name, task, experiments):
    folder = ROOT / "studies" / name
    specs = load_experiments(sorted((folder / "experiments").glob("*.toml")))
    small = []
    for s in specs:
        cfg = json.loads(json.dumps(s.config))
        cfg["train"]["epochs"] = 2
        small.append(type(s)(cfg, s.path, s.inputs))
    prepare(small + [s.baseline() for s in small])
    out = tmp_path / "out"
    execute(plan_units(small, seeds=2), out, progress=False)
    df = reglab.load_results(out)
    assert set(df["task"]) == {task}
    assert set(df.loc[~df.is_baseline, "experiment"]) == experiments
    primary = "test_log_loss" if task == "multiclass" else "test_mse"
    assert df[primary].notna().all()
    from reglab.report.render import write_report

    paths = write_report(out)
    text = paths["markdown"].read_text()
    assert "Paired comparisons" in text
    if name == "augmentation":  # the augmented baseline rule, stated
        assert "Augmentation is regularization: such an experiment's baseline trains on the same examples" in text
        assert len({r["baseline"] for r in load_runs(out) if not r["is_baseline"]}) == 1  # one shared baseline


def test_a_run_reads_its_finished_runs_once_after_training(tmp_path, monkeypatch):
    # each run file is read and checked to see what is done when the run is planned and again
    # under its group's lock, and once after training, for the divergence messages and
    # results.csv together (they read it once each: ~0.7 s for the 340 runs of a study)
    from reglab.experiments import runner, schedule, store

    reads = []
    real = store.verified
    for module in (store, runner, schedule):  # every reader of the run store
        monkeypatch.setattr(module, "verified", lambda p: reads.append(p.name) or real(p))
    out = tmp_path / "out"
    res = run([write(tmp_path, TINY)], out, "--seeds", "3", "--no-baselines")
    assert res.exit_code == 0, res.output
    assert len(reads) == 3 * 3 and len(set(reads)) == 3
    assert len(reglab.load_results(out)) == 3


def test_a_run_hashes_each_file_at_most_twice(tmp_path, monkeypatch):
    """A run's weights and arrays are hashed once when written and once when trusted, per
    ``reglab run``: trained, then resumed (nothing trained), then after a finished run is
    deleted (only it retrained)."""
    from collections import Counter

    from reglab.experiments import code, group, store

    hashed = Counter()
    real = code.file_sha256
    for module in (code, group, store):  # every caller of the hash
        monkeypatch.setattr(module, "file_sha256", lambda p: hashed.update([Path(p).name]) or real(p))
    out = tmp_path / "out"
    p = write(tmp_path, TINY)
    for k in range(3):
        hashed.clear()
        res = run([p], out, "--seeds", "3")
        assert res.exit_code == 0, res.output
        files = sorted(out.glob("runs/*/*.pt")) + sorted(out.glob("runs/*/*.npz"))
        assert len(files) >= 6 and set(hashed) <= {f.name for f in files}, (hashed, files)
        assert max(hashed.values()) <= 2 and len(hashed) == len(files), (k, hashed)
        if k == 1:
            victim = sorted(out.glob("runs/tiny/*.json"))[0]
            for f in victim.parent.glob(victim.stem + ".*"):
                f.unlink()
    assert "1 runs trained, 5 already done" in res.output, res.output


def test_each_seeds_splits_are_read_once_per_run(tmp_path, monkeypatch):
    """``reglab run`` of an experiment and its baseline (3 seeds, each its own split, in this
    process): each seed's splits are read from the data once -- seed 0's by the checks, reused
    by both groups' training, the others by the first group to train, reused by the second
    (before the plan: 2 by the checks and 3 per group, 8 in all)."""
    from collections import Counter

    from reglab.experiments import build

    reads = Counter()
    real = build.load_splits
    monkeypatch.setattr(build, "load_splits", lambda *a, **k: reads.update([a[4]]) or real(*a, **k))
    res = run([write(tmp_path, TINY)], tmp_path / "out", "--seeds", "3")
    assert res.exit_code == 0 and "6 runs trained" in res.output, res.output
    assert reads == {0: 1, 1: 1, 2: 1}, reads


def test_splits_kept_for_reuse_are_copied_for_each_reader(tmp_path, monkeypatch):
    """A reader that writes into the splits it got (a forward pass that changes its input in
    place) changes no other reader's: each gets its own copy of the arrays kept, read once."""
    from reglab.experiments import build
    from reglab.experiments.plan import plan_of

    reads = []
    real = build.load_splits
    monkeypatch.setattr(build, "load_splits", lambda *a, **k: reads.append(a[4]) or real(*a, **k))
    plan = plan_of(validate(tomllib.loads(TINY), "x.toml"))
    first = plan.splits(0)
    clean = first.x_train.copy()
    for k in ("x_train", "x_val", "x_test", "y_train"):
        getattr(first, k)[...] = 7
    again = plan.splits(0)
    assert reads == [0] and np.array_equal(again.x_train, clean) and again.y_train.max() <= 1


def test_a_plans_engine_is_not_taken_where_its_choice_may_not_hold(tmp_path, monkeypatch):
    """A plan made where the fused kernel can be built, trained where it cannot (a Ray node
    without a compiler; here ``REGLAB_FUSED=0``): the group's ``fit_many`` chooses there, and
    trains on the Dense-stack engine (it had raised ``FusedUnavailable``)."""
    from reglab.experiments.group import train_group
    from reglab.experiments.plan import plan_of

    spec = validate(tomllib.loads(TINY), "x.toml")
    plan = plan_of(spec)
    if plan.engine.kind != "fused":
        pytest.skip("no fused kernel here")
    assert plan.engine_for(2, "cpu") is plan.engine
    monkeypatch.setenv("REGLAB_FUSED", "0")
    assert plan.engine_for(2, "cpu") == "auto"
    rows = train_group(spec, [0, 1], tmp_path / "out", plan=plan)
    assert [r["engine"] for r in rows] == ["dense", "dense"]


def test_the_builder_is_called_once_per_model_trained_and_once_per_group_before(tmp_path, monkeypatch):
    """Before training, each experiment's model is built once (``prepare``'s probe, which the
    engine's group rule reuses); then once per model trained: a run of 3 seeds of an experiment
    and its baseline calls the builder 2 + 6 times; after one run is deleted, 2 + 2 (the vmap
    engine trains the missing seed beside a twin, ``Plan.group_rule``)."""
    (tmp_path / "models.py").write_text(BUILDER.replace(
        "def build(input_shape, n_outputs, width=6, dropout=0.0):\n",
        "def build(input_shape, n_outputs, width=6, dropout=0.0):\n"
        "    open(__import__('os').environ['BUILD_LOG'], 'a').write('x')\n"))
    log = tmp_path / "builds.log"
    monkeypatch.setenv("BUILD_LOG", str(log))
    p = write(tmp_path, TINY.split("[[model.layers]]")[0].replace('"binary_crossentropy"', '{name = "binary_crossentropy", '
                                                                  'from_logits = true}') +
              '[model]\nbuilder = "models.py:build"\nargs = {width = 3, dropout = 0.2}\n'
              '[baseline]\nargs = {dropout = 0.0}\n')
    out = tmp_path / "out"
    res = run([p], out, "--seeds", "3")
    assert res.exit_code == 0 and "6 runs trained" in res.output, res.output
    assert len(log.read_text()) == 2 + 6
    victim = sorted(out.glob("runs/tiny/*.json"))[0]
    for f in victim.parent.glob(victim.stem + ".*"):
        f.unlink()
    log.write_text("")
    res = run([p], out, "--seeds", "3")
    assert res.exit_code == 0 and "1 runs trained, 5 already done" in res.output, res.output
    assert load_runs(out)[0]["engine"].startswith("vmap")
    assert len(log.read_text()) == 2 + 2


# ----------------------------------------------------------------------------- earlier versions of a file


def test_runs_of_an_edited_experiment_replace_the_earlier_ones_in_every_table(tmp_path):
    """After an edit (here: the builder's source), the earlier version's runs stay on disk but
    are never mixed with the new ones: results, comparisons and the report hold the current
    files' runs only, and say how many were left out. Reverting the edit makes the first
    version's runs current again (reused, not retrained)."""
    (tmp_path / "models.py").write_text(BUILDER)
    text = TINY.split("[[model.layers]]")[0].replace('"binary_crossentropy"', '{name = "binary_crossentropy", '
                                                     'from_logits = true}')
    text += '[model]\nbuilder = "models.py:build"\n[regularize]\nparams = {"@kernels" = {name = "L2", l2 = 0.01}}\n'
    p = write(tmp_path, text)
    other = write(tmp_path, TINY.replace('name = "tiny"', 'name = "other"'), "other.toml")
    out = tmp_path / "out"
    res = run([p, other], out)
    assert res.exit_code == 0, res.output
    first = reglab.load_results(out)
    assert len(first) == 8  # tiny, other and their two baselines, 2 seeds each
    (tmp_path / "models.py").write_text(BUILDER + "\n# edited\n")
    res = run([p], out)  # only tiny: other's runs stay current
    assert res.exit_code == 0, res.output
    assert "4 runs trained, 0 already done" in res.output
    assert "4 run(s) of earlier versions" in res.output  # tiny's and its baseline's first runs
    df = reglab.load_results(out)
    assert len(df) == 8 and sorted(df.groupby("experiment").size()) == [2, 2, 2, 2]
    new_base = df.loc[df.experiment == "tiny", "baseline"].iloc[0]
    assert new_base != first.loc[first.experiment == "tiny", "baseline"].iloc[0]
    assert set(df.experiment) == {"tiny", "other", new_base, df.loc[df.experiment == "other", "baseline"].iloc[0]}
    assert len(load_runs(out)) == 8
    left: list = []
    load_runs(out, left_out=left)
    assert len(left) == 4 and {r["experiment"] for r in left} == {"tiny", first.loc[first.experiment == "tiny", "baseline"].iloc[0]}
    rep = CliRunner().invoke(main, ["report", str(out)])
    assert rep.exit_code == 0, rep.output
    comp = reglab.load_comparisons(out)
    assert set(comp.loc[comp.experiment == "tiny", "n"]) == {2}  # 2 pairs, not 4 mixed ones
    md = (out / "report.md").read_text()
    line = next(x for x in md.splitlines() if "runs of earlier versions" in x)
    assert "4 runs of earlier versions of the experiment files (baseline." in line and ", tiny) lie under" in line
    (tmp_path / "models.py").write_text(BUILDER)  # reverted: the first version is current again
    res = run([p], out)
    assert "0 runs trained, 4 already done" in res.output
    # the report of the edited version is removed, not left beside the first version's results
    assert not (out / "comparisons.csv").exists() and not (out / "report.md").exists()
    assert "removed comparisons.csv, report.md, report.html of the earlier runs" in res.output
    res = run([p], out)  # nothing changed: nothing to say
    assert "removed" not in res.output
    again = reglab.load_results(out)
    assert again.equals(first)


def test_a_folder_without_a_record_and_the_python_api_leave_earlier_versions_out(tmp_path):
    """A folder written before ``current.json`` existed (or with it deleted): after an edit, the
    old version's experiment and baseline runs are left out (the baseline had no entry of its
    own and is named by no current run); ``execute`` records as the CLI does, so the Python API
    gets the same tables; ``run_unit`` (one task of a distributed run) records nothing."""
    p = write(tmp_path, TINY)
    out = tmp_path / "out"
    assert run([p], out).exit_code == 0
    (out / "current.json").unlink()
    old_base = reglab.load_results(out).query("is_baseline").experiment.iloc[0]
    edited = one(write(tmp_path, TINY.replace("units = 4", "units = 5"), "edited.toml"))  # the same name, edited
    (out / "results.csv").unlink()
    with pytest.warns(UserWarning, match=r"^note: 4 run\(s\) of earlier versions of baseline\.\w+, tiny are kept under "):
        info = execute(plan_units([edited]), out, progress=False)  # says what the CLI says
    df = reglab.load_results(out)
    assert len(df) == 4 and old_base not in set(df.experiment) and set(df.baseline.dropna()) == {edited.baseline().name}
    assert info["results_csv"] == out / "results.csv" and len(info["earlier"]) == 4 and len(info["runs"]) == 4
    written = (out / "results.csv").read_bytes()  # as `reglab run` writes it
    assert pd.read_csv(out / "results.csv")[["experiment", "seed"]].values.tolist() == df[["experiment", "seed"]].values.tolist()
    record = json.loads((out / "current.json").read_text())["experiments"]
    assert record["tiny"] == {"digests": [edited.digest()], "baselines": [edited.baseline().name]}
    assert json.loads((out / "current.json").read_text())["only"] is False
    from reglab.experiments.runner import run_unit

    run_unit(Unit(one(p), 3), out)  # the first version's seed 3: written, not recorded
    assert json.loads((out / "current.json").read_text())["experiments"] == record
    assert len(reglab.load_results(out)) == 4 and (out / "results.csv").read_bytes() == written  # nor tabled


def test_a_study_reports_only_the_experiments_it_lists(tmp_path):
    """``reglab study`` replaces the record: an experiment the study no longer lists (its file
    removed) is left out of its next report, with its baseline where no other experiment has it."""
    (tmp_path / "st" / "experiments").mkdir(parents=True)
    write(tmp_path / "st" / "experiments", TINY)
    gone = write(tmp_path / "st" / "experiments", TINY.replace('name = "tiny"', 'name = "gone"').replace(
        "epochs = 3", "epochs = 2"), "gone.toml")
    (tmp_path / "st" / "study.toml").write_text('title = "t"\nseeds = 1\n')
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["study", str(tmp_path / "st"), "--out", str(out), "--no-progress", "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert set(reglab.load_results(out).experiment.str.split(".").str[0]) == {"tiny", "gone", "baseline"}
    assert len(reglab.load_results(out)) == 4  # gone's 2 epochs give it its own baseline
    gone.unlink()
    res = CliRunner().invoke(main, ["study", str(tmp_path / "st"), "--out", str(out), "--no-progress", "--workers", "1"])
    assert res.exit_code == 0, res.output
    df = reglab.load_results(out)
    assert len(df) == 2 and "gone" not in set(df.experiment)
    assert "`gone`" not in (out / "report.md").read_text()


def test_a_damaged_record_of_the_current_runs_is_named(tmp_path):
    p = write(tmp_path, TINY)
    out = tmp_path / "out"
    assert run([p], out).exit_code == 0
    (out / "current.json").write_text("{not json")
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code != 0 and "current.json" in res.output and "damaged" in res.output
    res = run([p], out)
    assert res.exit_code != 0 and "current.json" in res.output and "damaged" in res.output


def test_a_sweep_over_tables_gives_a_column_of_their_json(tmp_path):
    text = TINY + '\n[[sweep]]\npath = ["model", "layers", 0, "kernel_regularizer"]\n' \
                  'values = ["l1", {name = "L2", l2 = 0.001}]\n'
    out = tmp_path / "out"
    res = run([write(tmp_path, text)], out, "--seeds", "1")
    assert res.exit_code == 0, res.output
    df = reglab.load_results(out)
    col = df.loc[~df.is_baseline, "model/layers/0/kernel_regularizer"]
    assert sorted(col) == ["l1", '{"l2": 0.001, "name": "L2"}']
    assert CliRunner().invoke(main, ["report", str(out)]).exit_code == 0
    assert len(reglab.load_comparisons(out).query("experiment == 'tiny'")["model/layers/0/kernel_regularizer"].unique()) == 2


def test_run_and_list_of_a_study_folder_use_its_seeds(tmp_path):
    """``study.toml``'s ``seeds`` overrides each file's, in ``reglab run STUDY_DIR`` and
    ``reglab list STUDY_DIR`` as in ``reglab study``; ``--seeds`` overrides both; a file given
    by itself keeps its own."""
    (tmp_path / "st" / "experiments").mkdir(parents=True)
    write(tmp_path / "st" / "experiments", TINY.replace("seeds = 2", "seeds = 4"))
    (tmp_path / "st" / "study.toml").write_text('title = "t"\nseeds = 1\n')
    listed = CliRunner().invoke(main, ["list", str(tmp_path / "st")])
    assert listed.exit_code == 0 and "1 seeds" in listed.output, listed.output
    res = run([tmp_path / "st"], tmp_path / "out")
    assert res.exit_code == 0 and "2 runs trained, 0 already done" in res.output, res.output  # tiny + baseline
    res = run([tmp_path / "st"], tmp_path / "out", "--seeds", "2")
    assert "2 runs trained, 2 already done" in res.output, res.output
    res = run([tmp_path / "st" / "experiments" / "tiny.toml"], tmp_path / "out")
    assert "4 runs trained, 4 already done" in res.output, res.output


def test_split_fractions_are_of_all_examples_and_split_files_are_checked_for_classes(tmp_path):
    """``validation = 0.1, test = 0.3`` of 400 examples: 40 and 120 (the validation share of the
    rest, 0.1 / 0.7 of 280, came out as 41); labels 1..4 across split files start at 1."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype(int))
    p = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'file = "d.npz"') +
              "[split]\nvalidation = 0.1\ntest = 0.3\n", "d.toml")
    sp = splits_of(one(p), 3)
    assert (len(sp.x_train), len(sp.x_val), len(sp.x_test)) == (240, 40, 120)
    for k, n in (("train", 30), ("test", 12)):
        np.savez(tmp_path / f"{k}.npz", x=rng.normal(size=(n, 2)), y=np.arange(n) % 4 + 1)
    p = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'files = {train = "train.npz", test = "test.npz"}\n'
                                     'task = "multiclass"'), "m.toml")
    with pytest.raises(ConfigError, match=r"m.toml: data: multiclass labels must be 0..K-1; these start at 1"):
        prepare([one(p)])


def test_list_without_paths_lists_the_default_study(tmp_path, monkeypatch):
    """``reglab list`` with no path lists the study ``studies/default`` names, as ``reglab
    study`` runs it; without that pointer, or with one that is not a folder name, it says what
    to give."""
    (tmp_path / "studies" / "st" / "experiments").mkdir(parents=True)
    write(tmp_path / "studies" / "st" / "experiments", TINY)
    (tmp_path / "studies" / "st" / "study.toml").write_text('title = "t"\nseeds = 3\n')
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["list"])
    assert res.exit_code != 0 and "give PATHS" in res.output and "studies/default" in res.output, res.output
    (tmp_path / "studies" / "default").write_text("../st\n")
    res = CliRunner().invoke(main, ["list"])
    assert res.exit_code != 0 and "one folder name under studies/" in res.output, res.output
    (tmp_path / "studies" / "default").write_text("st\n")
    res = CliRunner().invoke(main, ["list"])
    assert res.exit_code == 0 and "tiny" in res.output and "3 seeds" in res.output, res.output


def test_a_plan_is_plain_data_and_is_forgotten_after_a_run(tmp_path):
    """An experiment's plan keeps no model (its probe is dropped once the engine is chosen) and
    crosses a process boundary pickled as it is; once ``execute`` is done, the splits kept are
    dropped."""
    import pickle

    from reglab.experiments import plan as plans

    spec = validate(tomllib.loads(TINY), "x.toml")
    made = list(prepare([spec, spec.baseline(), spec]).values())
    assert [p.spec for p in made] == [spec, spec.baseline()] and plans._splits
    assert made[0].engine.kind in ("fused", "dense") and made[0].task == "binary" and made[0].n_outputs == 1
    assert not any(isinstance(v, torch.nn.Module) for v in vars(made[0]).values())
    assert pickle.loads(pickle.dumps(made[0])) == made[0]
    execute(plan_units([spec], seeds=2), tmp_path / "out", progress=False)
    assert not plans._splits
