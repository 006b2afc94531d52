"""Labels as users have them: class names in a CSV are encoded (sorted; the mapping in each
run's JSON and in ``reglab list``), integer targets with a regression loss are a regression, and
a mismatch names ``data.task`` or the loss and the fix."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from reglab.cli import main

NAMES = np.array(["virginica", "setosa", "versicolor"])


def _csv(path, target_values, header="species"):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(len(target_values), 3))
    path.write_text("a,b,c," + header + "\n" + "".join(
        ",".join(f"{v:.4f}" for v in r) + f",{t}\n" for r, t in zip(x, target_values)))


def _file(tmp_path, csv, target, loss, units, activation, extra=""):
    f = tmp_path / "e.toml"
    f.write_text(f'name = "e"\nseeds = 2\n[data]\nfile = "{csv}"\ntarget = "{target}"\n{extra}\n[train]\n'
                 f'loss = "{loss}"\nepochs = 2\nbatch_size = 16\n[[model.layers]]\nunits = 6\nactivation = "relu"\n'
                 'kernel_regularizer = {name = "L2", l2 = 0.01}\n[[model.layers]]\n'
                 f'units = {units}\n' + (f'activation = "{activation}"\n' if activation else ""))
    return f


def _run(f, out):
    return CliRunner().invoke(main, ["run", str(f), "--out", str(out), "--no-progress", "--workers", "1"])


def test_string_labels_are_encoded_in_sorted_order_and_recorded(tmp_path):
    labels = NAMES[np.random.default_rng(1).integers(0, 3, 120)]
    _csv(tmp_path / "iris.csv", labels)
    f = _file(tmp_path, "iris.csv", "species", "sparse_categorical_crossentropy", 3, "softmax")
    res = _run(f, tmp_path / "out")
    assert res.exit_code == 0, res.output
    rows = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("runs/e/*.json")]
    assert len(rows) == 2 and all(r["task"] == "multiclass" for r in rows)
    assert all(r["classes"] == ["setosa", "versicolor", "virginica"] for r in rows)
    from reglab.experiments.runner import splits_of
    from reglab.experiments.schema import load_experiment

    sp = splits_of(load_experiment(f)[0], 0)
    assert sp.classes == ["setosa", "versicolor", "virginica"]
    assert sorted(np.unique(np.concatenate([sp.y_train, sp.y_val, sp.y_test])).tolist()) == [0, 1, 2]
    listed = CliRunner().invoke(main, ["list", str(f)])
    assert "labels: setosa = 0, versicolor = 1, virginica = 2" in listed.output, listed.output


def test_two_string_classes_are_a_binary_task(tmp_path):
    _csv(tmp_path / "yn.csv", np.array(["yes", "no"])[np.arange(100) % 2], header="answer")
    f = _file(tmp_path, "yn.csv", "answer", "binary_crossentropy", 1, "sigmoid")
    res = _run(f, tmp_path / "out")
    assert res.exit_code == 0, res.output
    row = json.loads(next((tmp_path / "out").glob("runs/e/*.json")).read_text())
    assert row["task"] == "binary" and row["classes"] == ["no", "yes"]


def test_integer_targets_with_a_regression_loss_are_a_regression(tmp_path):
    _csv(tmp_path / "counts.csv", np.random.default_rng(2).poisson(4, 100), header="count")
    f = _file(tmp_path, "counts.csv", "count", "mse", 1, None)
    res = _run(f, tmp_path / "out")
    assert res.exit_code == 0, res.output
    row = json.loads(next((tmp_path / "out").glob("runs/e/*.json")).read_text())
    assert row["task"] == "regression" and "classes" not in row and np.isfinite(row["metrics"]["test_mse"])


@pytest.mark.parametrize("extra,loss,key", [("", "mse", "train.loss"), ('task = "regression"', "mse", "data.task")])
def test_class_names_with_a_regression_are_a_clear_error(tmp_path, extra, loss, key):
    _csv(tmp_path / "iris.csv", NAMES[np.arange(60) % 3])
    f = _file(tmp_path, "iris.csv", "species", loss, 1, None, extra)
    res = _run(f, tmp_path / "out")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"{f}: {key}: the targets are class names (strings)" in res.output, res.output
    assert not list((tmp_path / "out").glob("runs/*/*.json"))
