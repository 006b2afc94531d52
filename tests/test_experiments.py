import json
from pathlib import Path

import pytest
import numpy as np
from click.testing import CliRunner

from reglab.cli import main
from reglab.experiments.path import with_strength
from reglab.experiments.runner import Unit, execute, load_results, plan_units
from reglab.experiments.schema import ConfigError, load_experiment, load_experiments, validate

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"

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


def write(tmp_path, text, name="tiny.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_every_lecture_program_has_a_valid_file_with_its_settings():
    specs = load_experiments(sorted(EXP.glob("*.toml")))
    progs = {s.program: s for s in specs if s.program}
    assert sorted(progs) == [1, 2, 3, 4, 5, 6, 7]
    expected = {1: (0.001, 200, 20), 2: (0.005, 200, 20), 3: (0.005, 100, 50), 4: (0.001, 200, 20), 5: (0.001, 200, 20),
                6: (0.001, 200, 20), 7: (0.001, 100, 50)}
    for p, (lr, ep, bs) in expected.items():
        sch = progs[p].schedule
        assert (sch["learning_rate"], sch["epochs"], sch["batch_size"]) == (lr, ep, bs), p
        layers = progs[p].config["model"]["layers"]
        assert [la["units"] for la in layers] == [32] * 5 + [1]
        assert progs[p].seeds == 20
    names = {s.name for s in specs}
    assert {"x_dropout", "x_adamw_decay", "x_l2_in_loss_adam", "x_early_stopping", "x_max_norm"} <= names
    # four distinct schedules -> four baselines, shared by programs with the same schedule
    assert len({s.baseline().name for s in specs}) == 4
    assert progs[1].baseline().name == progs[6].baseline().name != progs[2].baseline().name


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: "foo = 1\n" + t, r"tiny.toml: unknown key\(s\) \['foo'\]"),
        (lambda t: t.replace("epochs = 3", 'epochs = "3"'), r"tiny.toml: train.epochs: expected a positive integer; got '3'"),
        (lambda t: t.replace("l2 = 0.01", "l2 = -0.01"),
         r"tiny.toml: model.layers\[0\].kernel_regularizer: l2 must be a non-negative finite number; got l2=-0.01"),
        (lambda t: t.replace('name = "L2"', 'name = "L3"'), r"model.layers\[0\].kernel_regularizer: unknown regularizer 'L3'"),
        (lambda t: t.replace("units = 4", "units = 0"), r"model.layers\[0\].units: expected a positive integer; got 0"),
        (lambda t: t.replace('activation = "relu"', 'activation = "rectifier"'), r"model.layers\[0\].activation: unknown activation"),
        (lambda t: t.replace('name = "blobs"', 'name = "mnist"'), r"data.name: expected one of"),
        (lambda t: t.replace("learning_rate = 0.01", "learning_rate = -1"), r"train.optimizer: learning_rate must be"),
        (lambda t: t.replace("batch_size = 20", "batch_size = 20\nmomentum = 0.9"), r"train: unknown key\(s\) \['momentum'\]"),
        (lambda t: t.replace('name = "tiny"', 'name = "has space"'), r"name: expected a string of letters"),
        (lambda t: t.replace('[data]\nname = "blobs"', '[data]\nname = "blobs"\nrandom_state = 3'), r"data.random_state: set by the seed"),
        (lambda t: t.replace("[[model.layers]]\nunits = 4", "[[model.layers]]\nunits = 4\nwidth = 3"), r"model.layers\[0\]: unknown key\(s\) \['width'\]"),
        (lambda t: t + "\n[broken", r"tiny.toml: not valid TOML"),
    ],
)
def test_config_errors_name_file_key_and_expectation(tmp_path, edit, message):
    p = write(tmp_path, edit(TINY))
    with pytest.raises(ConfigError, match=message):
        load_experiment(p)


def test_missing_file_and_duplicate_names(tmp_path):
    with pytest.raises(ConfigError, match=r"nope.toml: no such experiment file"):
        load_experiment(tmp_path / "nope.toml")
    a = write(tmp_path, TINY, "a.toml")
    b = write(tmp_path, TINY, "b.toml")
    with pytest.raises(ConfigError, match=r"b.toml: name 'tiny' is already used by .*a.toml"):
        load_experiments([a, b])


def test_bad_config_writes_nothing(tmp_path):
    good = write(tmp_path, TINY, "good.toml")
    bad = write(tmp_path, TINY.replace('name = "tiny"', 'name = "bad"').replace("epochs = 3", "epochs = 0"), "bad.toml")
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["run", str(good), str(bad), "--out", str(out), "--no-progress"])
    assert res.exit_code != 0
    assert "bad.toml: train.epochs: expected a positive integer; got 0" in res.output
    assert not out.exists()


def test_run_ids_hash_config_and_seed():
    spec = validate(__import__("tomllib").loads(TINY), "x.toml")
    same = validate(__import__("tomllib").loads(TINY.replace("seeds = 2", "seeds = 5")), "y.toml")
    other = validate(__import__("tomllib").loads(TINY.replace("l2 = 0.01", "l2 = 0.02")), "x.toml")
    assert Unit(spec, 0).run_id == Unit(same, 0).run_id  # seeds count and file name do not matter
    assert Unit(spec, 0).run_id != Unit(spec, 1).run_id
    assert Unit(spec, 0).run_id != Unit(other, 0).run_id


def test_resume_after_interruption_and_truncated_file(tmp_path):
    a = validate(__import__("tomllib").loads(TINY), "a.toml")
    b = validate(__import__("tomllib").loads(TINY.replace('name = "tiny"', 'name = "tiny_b"').replace("l2 = 0.01", "l2 = 0.1")), "b.toml")
    units = plan_units([a, b], seeds=2, baselines=False)
    out = tmp_path / "res"

    class Stop(Exception):
        pass

    def interrupt(spec, seeds):
        raise Stop  # the process dies after the first experiment's runs were written

    with pytest.raises(Stop):
        execute(units, out, progress=False, on_group_done=interrupt)
    done = load_results(out)
    assert {r["experiment"] for r in done} == {"tiny"} and len(done) == 2
    first_mtimes = {p: p.stat().st_mtime_ns for p in out.glob("runs/tiny/*.json")}
    info = execute(units, out, progress=False)
    assert info == {**info, "trained": 2, "skipped": 2}  # only the interrupted experiment's runs
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/tiny/*.json")} == first_mtimes
    # a truncated result file is redone; an intact one is not
    victim = next(out.glob("runs/tiny_b/*.json"))
    victim.write_text(victim.read_text()[:50])
    info = execute(units, out, progress=False)
    assert info["trained"] == 1 and info["skipped"] == 3
    assert json.loads(victim.read_text())["metrics"]["n_test"] == 20


def test_path_strength_substitution():
    spec = load_experiment(EXP / "p6_all_together.toml")
    s = with_strength(spec, 0.5)
    layers = s.config["model"]["layers"]
    assert layers[0]["kernel_regularizer"]["config"] == {"l2": 0.5}
    assert layers[0]["activity_regularizer"]["config"] == {"l1": 0.5}
    p1 = with_strength(load_experiment(EXP / "p1_regularized_loss.toml"), 0.2)
    assert p1.config["train"]["loss"]["strength"] == 0.2
    with pytest.raises(ValueError, match="has no regularizer"):
        with_strength(load_experiment(EXP / "x_dropout.toml"), 0.1)


def test_cli_list_and_run_and_report(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["list", str(EXP)])
    assert res.exit_code == 0 and "p7_kl_sparsity" in res.output and "program 7" in res.output
    p = write(tmp_path, TINY)
    out = tmp_path / "out"
    res = runner.invoke(main, ["run", str(p), "--seeds", "2", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "4 runs trained, 0 already done" in res.output  # 2 seeds x (tiny + its baseline)
    res = runner.invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    html = (out / "report.html").read_text()
    assert "tiny" in html and "data:image/png;base64," in html
    res = runner.invoke(main, ["run", str(p), "--seeds", "0", "--out", str(out)])
    assert res.exit_code != 0 and "must be positive" in res.output


def test_cli_path_and_other_datasets(tmp_path):
    runner = CliRunner()
    moons = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'name = "moons"\nn_samples = 120\nnoise = 0.3'),
                  "moons.toml")
    out = tmp_path / "out"
    res = runner.invoke(main, ["path", str(moons), "--strengths", "0,0.01", "--seeds", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "Chosen lambda" in res.output
    doc = json.loads((out / "path.json").read_text())
    assert doc["strengths"] == [0.0, 0.01] and np.asarray(doc["metrics"]["excess_log_loss"]).shape == (2, 2)
    res = runner.invoke(main, ["path", str(moons), "--strengths", "-1", "--out", str(out)])
    assert res.exit_code != 0 and "expected non-negative numbers" in res.output
    digits = write(tmp_path, TINY.replace('name = "blobs"\nn_samples = 80', 'name = "digits"')
                   .replace('loss = "binary_crossentropy"', 'loss = "sparse_categorical_crossentropy"')
                   .replace('units = 1\nactivation = "sigmoid"', 'units = 10\nactivation = "softmax"'), "digits.toml")
    spec = load_experiment(digits)
    execute(plan_units([spec], seeds=1), tmp_path / "d", progress=False)
    rows = load_results(tmp_path / "d")
    assert {r["experiment"] for r in rows} == {"tiny", spec.baseline().name}
    assert all(0 <= r["metrics"]["val_accuracy"] <= 1 for r in rows)


def test_run_unit_is_the_single_task_entry_point(tmp_path):
    from reglab.experiments.runner import run_unit

    spec = validate(__import__("tomllib").loads(TINY), "x.toml")
    unit = Unit(spec, 1)
    row = run_unit(unit, tmp_path)
    assert unit.done(tmp_path) and row["seed"] == 1 and row["run_id"] == unit.run_id
    mtime = unit.path(tmp_path).stat().st_mtime_ns
    again = run_unit(unit, tmp_path)  # finished: read back, not retrained
    assert unit.path(tmp_path).stat().st_mtime_ns == mtime and again["metrics"] == row["metrics"]
    # a vectorized group gives the same numbers for that unit as running it alone
    execute([Unit(spec, 0), Unit(spec, 1)], tmp_path / "group", progress=False)
    grouped = json.loads(unit.path(tmp_path / "group").read_text())
    np.testing.assert_allclose(grouped["metrics"]["val_data_loss"], row["metrics"]["val_data_loss"], rtol=1e-4)


def test_a_finished_run_reloads_its_model_without_pickle(tmp_path):
    from reglab.diagnostics.evaluate import predict
    from reglab.experiments.runner import load_model

    spec = validate(__import__("tomllib").loads(TINY), "x.toml")
    execute([Unit(spec, 3)], tmp_path, progress=False)
    row = load_results(tmp_path)[0]
    model = load_model(row["_path"])
    ds = __import__("reglab").datasets.blobs(3, n_samples=80)
    p = predict(model, ds.x_test).reshape(-1)
    acc = float(((p > 0.5) == (ds.y_test.reshape(-1) > 0.5)).mean())
    assert acc == pytest.approx(row["metrics"]["test_accuracy"])
    assert __import__("reglab").regularization_spec(model)["params"] == {
        "0.weight": {"class_name": "L2", "config": {"l2": 0.01}}}
