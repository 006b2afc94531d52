"""``reglab tune`` and ``reglab.seed_objective``: real Optuna, real training at small sizes."""

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("optuna")

import reglab  # noqa: E402
from reglab.cli import main  # noqa: E402

from .test_experiments import _csv as experiments_csv  # noqa: E402  (a regression CSV of 3 features)
from reglab.experiments.schema import ConfigError, load_experiment  # noqa: E402
from reglab.tuning import TuneError, seed_objective, tune  # noqa: E402
from reglab.tuning.objective import load_searchable  # noqa: E402
from reglab.experiments.files import OutputError  # noqa: E402

L2 = "regularize/params/@kernels/l2"

TUNED = """
name = "reg_tuned"
seeds = 3
[data]
files = {train = "train.csv", validation = "validation.csv", test = "TEST"}
target = "target"
standardize = true
[train]
optimizer = {name = "adam", learning_rate = 0.02}
epochs = 8
batch_size = 10
[[model.layers]]
units = 8
activation = "relu"
[[model.layers]]
units = 1
[regularize]
params = {"@kernels" = {name = "L2", l2 = 1e-3}}
[[search]]
path = ["regularize", "params", "@kernels", "l2"]
low = 1e-5
high = 3.0
log = true
"""


def _csv(path, n, seed, noise=0.3):
    experiments_csv(path, n=n, seed=seed, noise=noise)


def _folder(tmp_path, name="d", test="test.csv", text=TUNED):
    d = tmp_path / name
    d.mkdir()
    _csv(d / "train.csv", 40, 0)
    _csv(d / "validation.csv", 30, 1)
    _csv(d / "test.csv", 30, 2)
    f = d / "tuned.toml"
    f.write_text(text.replace("TEST", test))
    return d, f


def _trials(res):
    return [(r["number"], r["params"], r["value"]) for r in res["trials"]]


def test_tune_batches_trials_reports_and_never_reads_the_test_split(tmp_path):
    d, f = _folder(tmp_path)
    res = tune(f, trials=4, out=d / "out", batch=2, seeds=2, final_seeds=5, say=lambda s: None)
    assert len(res["trials"]) == 4 and all(r["state"] == "COMPLETE" for r in res["trials"])
    # a trial's value is the mean of its seeds' validation MSE, read from the runs themselves
    for r in res["trials"]:
        o = r["objective"]
        assert o.metric == "val_mse" and o.minimize and len(o.values) == 2
        assert r["value"] == pytest.approx(np.mean(o.values), rel=1e-12)
    best = min(res["trials"], key=lambda r: r["value"])
    assert res["best"] == best["params"]
    # each batch of 2 trials x 2 seeds trained as one fit_many group of 4 models
    rows = [json.loads(p.read_text()) for p in (d / "out" / "search" / "runs" / "reg_tuned").glob("*.json")]
    assert len(rows) == 8 and {r["group_size"] for r in rows} == {4} and {r["seed"] for r in rows} == {0, 1}
    assert {r["sweep"][L2] for r in rows} == {r["params"][L2] for r in res["trials"]}
    # the final comparison: the chosen point and its baseline on 5 fresh seeds (2..6)
    final = reglab.load_results(d / "out" / "final")
    assert sorted(set(final.seed)) == [2, 3, 4, 5, 6] and set(final.is_baseline) == {True, False}
    assert {c["metric"] for c in res["final"]["comparisons"]} == {"test_mse", "test_mae", "test_r2"}
    text = (d / "out" / "tune.md").read_text()
    assert "**Chosen** (trial" in text and "Final comparison on fresh seeds" in text and (d / "out" / "tune.png").is_file()
    # noised test labels: the search (every trial, its value, the choice) is the same to the bit
    d2, f2 = _folder(tmp_path, "noisy", test="noisy.csv")
    rng = np.random.default_rng(5)
    lines = (d2 / "test.csv").read_text().splitlines()
    (d2 / "noisy.csv").write_text("\n".join([lines[0]] + [",".join(line.split(",")[:3] + [str(rng.normal() * 9)])
                                                          for line in lines[1:]]) + "\n")
    res2 = tune(f2, trials=4, out=d2 / "out", batch=2, seeds=2, final_seeds=5, say=lambda s: None)
    assert _trials(res2) == _trials(res) and res2["best"] == res["best"]
    assert res2["final"]["comparisons"][0]["estimate"] != res["final"]["comparisons"][0]["estimate"]


def test_interrupted_and_resumed_search_equals_the_uninterrupted_one(tmp_path):
    d, f = _folder(tmp_path)
    kw = dict(trials=6, batch=2, seeds=2, final_seeds=5, say=lambda s: None)
    whole = tune(f, out=d / "whole", **kw)
    out = d / "cut"
    db = out / "tune.sqlite3"

    def interrupt_in_second_batch():  # a real SIGINT once the second batch is asked (it is training then)
        while True:
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                    if con.execute("select count(*) from trials").fetchone()[0] >= 4:
                        break
            except sqlite3.Error:
                pass
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt_in_second_batch, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        tune(f, out=out, **kw)
    watcher.join(5)
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        states = [s for (s,) in con.execute("select state from trials order by number")]
    assert states[:2] == ["COMPLETE", "COMPLETE"] and "RUNNING" in states[2:]  # the cut batch was asked, not told
    seen = []
    res = tune(f, out=out, **{**kw, "say": seen.append})
    assert any(line.startswith("resuming trial(s) [2, 3]") for line in seen), (states, seen)
    assert _trials(res) == _trials(whole) and res["best"] == whole["best"]
    assert res["trained"] == 8  # batches 2 and 3 (2 trials x 2 seeds each); batch 1's runs were kept
    # finished: a rerun trains nothing and asks nothing
    again = tune(f, out=out, **kw)
    assert again["trained"] == 0 and _trials(again) == _trials(whole)


def test_seed_objective_is_the_batched_trials_value(tmp_path):
    d, f = _folder(tmp_path)
    res = tune(f, trials=2, out=d / "out", batch=2, seeds=2, final_seeds=5, say=lambda s: None)
    r = res["trials"][1]
    alone = seed_objective(f, r["params"], seeds=2)  # trained alone, in a temporary folder
    assert alone.values == r["objective"].values  # bit for bit: the batch changes no model's numbers
    assert alone.mean == pytest.approx(r["value"], rel=1e-15)
    assert alone.low < alone.mean < alone.high
    lo_acc = seed_objective(f, {L2: 1e-3}, seeds=[0, 1], metric="r2")
    assert lo_acc.metric == "val_r2" and not lo_acc.minimize
    with pytest.raises(ValueError, match="metric 'accuracy' is not a regression metric"):
        seed_objective(f, {L2: 1e-3}, seeds=2, metric="accuracy")
    with pytest.raises(ValueError, match=r"params: \['nope'\] are not searched"):
        seed_objective(f, {"nope": 1.0}, seeds=2)


BAD = [
    ('path = ["regularize", "params", "@kernels", "l3"]', "'regularize/params/@kernels/l3' is not in the file"),
    ('low = 1e-5\nhigh = 3.0\nlog = true', None),
    ('low = 0.1\nhigh = 1e-3', "low must be below high; got low = 0.1, high = 0.001"),
    ('low = 0.0\nhigh = 1.0\nlog = true', "log = true needs a positive low"),
    ('choices = []', "search[0].choices: expected a non-empty list"),
]


@pytest.mark.parametrize("change, message", BAD[:1] + BAD[2:])
def test_bad_search_tables_are_refused_before_anything_trains(tmp_path, change, message):
    text = TUNED
    if change.startswith("path"):
        text = text.replace('path = ["regularize", "params", "@kernels", "l2"]', change)
    else:
        text = text.replace("low = 1e-5\nhigh = 3.0\nlog = true", change)
    d, f = _folder(tmp_path, text=text)
    with pytest.raises(ConfigError, match=__import__("re").escape(message)):
        tune(f, trials=2, out=d / "out", seeds=2, say=lambda s: None)
    assert not (d / "out").exists()
    res = CliRunner().invoke(main, ["run", str(f), "--out", str(d / "out2"), "--no-progress"])  # `run` checks it too
    assert res.exit_code == 1 and message in res.output and not (d / "out2").exists()


def test_a_searched_path_that_is_swept_too_and_other_files_are_refused(tmp_path):
    swept = TUNED + '[[sweep]]\npath = ["regularize", "params", "@kernels", "l2"]\nvalues = [1e-3, 1e-2]\n'
    d, f = _folder(tmp_path, text=swept)
    with pytest.raises(ConfigError, match="is swept too"):
        load_experiment(f)
    d, f = _folder(tmp_path, "plain", text=TUNED.split("[[search]]")[0])
    with pytest.raises(ConfigError, match=r"search: missing; `reglab tune` needs a \[\[search\]\] table"):
        load_searchable(f)
    lecture = TUNED.replace('files = {train = "train.csv", validation = "validation.csv", test = "TEST"}',
                            'name = "blobs"').replace('target = "target"\n', "") + '[split]\ntest = 0.25\nvalidation = "test"\n'
    lecture = lecture.replace("[train]", '[train]\nloss = "binary_crossentropy"')
    d, f = _folder(tmp_path, "lect", text=lecture.replace("units = 1\n", 'units = 1\nactivation = "sigmoid"\n'))
    with pytest.raises(ConfigError, match="the validation data are the test data here"):
        load_searchable(f)


def test_a_search_table_does_not_change_what_run_trains(tmp_path):
    d, f = _folder(tmp_path)
    plain = d / "plain.toml"
    plain.write_text(f.read_text().split("[[search]]")[0])
    assert load_experiment(f)[0].digest() == load_experiment(plain)[0].digest()


def test_damaged_foreign_or_other_searches_in_out_are_refused_and_kept(tmp_path):
    d, f = _folder(tmp_path)
    out = d / "out"
    out.mkdir()
    db = out / "tune.sqlite3"
    db.write_bytes(b"not a database at all" * 50)
    with pytest.raises(TuneError, match="not a readable SQLite database"):
        tune(f, trials=2, out=out, seeds=2, say=lambda s: None)
    assert db.read_bytes() == b"not a database at all" * 50 and not (out / "search").exists()
    db.unlink()
    with sqlite3.connect(db) as con:
        con.execute("create table mine (x int)")
    before = db.read_bytes()
    with pytest.raises(TuneError, match="holds no reglab search"):
        tune(f, trials=2, out=out, seeds=2, say=lambda s: None)
    assert db.read_bytes() == before
    db.unlink()
    tune(f, trials=2, out=out, batch=2, seeds=2, final_seeds=5, say=lambda s: None)
    f.write_text(f.read_text().replace("high = 3.0", "high = 1.0"))
    with pytest.raises(TuneError, match="the search there was of another setting"):
        tune(f, trials=2, out=out, seeds=2, say=lambda s: None)


def test_tune_command_line(tmp_path):
    d, f = _folder(tmp_path)
    res = CliRunner().invoke(main, ["tune", str(f), "--trials", "2", "--batch", "2", "--seeds", "2", "--final-seeds",
                                    "5", "--out", str(d / "out")])
    assert res.exit_code == 0, res.output
    assert "trial 0: regularize/params/@kernels/l2 = " in res.output and "chosen: regularize/params/@kernels/l2 = " in res.output
    assert "final, against the own baseline, test_mse: " in res.output and (d / "out" / "final" / "report.html").is_file()
    res = CliRunner().invoke(main, ["tune", str(f), "--final-seeds", "3", "--out", str(d / "out")])
    assert res.exit_code == 2 and "--final-seeds" in res.output


def test_the_baseline_is_tuned_as_hard_where_the_file_asks(tmp_path):
    lr = ('\n[[search]]\nname = "lr"\npath = ["train", "optimizer", "learning_rate"]\nlow = 1e-3\nhigh = 5e-2\n'
          'log = true\nbaseline = true\n')
    d, f = _folder(tmp_path, text=TUNED + lr)
    res = tune(f, trials=2, out=d / "out", batch=2, seeds=2, final_seeds=5, say=lambda s: None)
    assert set(res["best"]) == {L2, "lr"} and set(res["baseline_best"]) == {"lr"}
    assert len(res["baseline_trials"]) == 2  # the same budget: 2 trials of 2 seeds
    base = reglab.load_results(d / "out" / "final")
    bases = sorted(set(base[base.is_baseline].experiment))
    assert res["baseline_best"]["lr"] != res["best"]["lr"]
    assert len(bases) == 2 and sorted(set(base.seed)) == [2, 3, 4, 5, 6]  # own and tuned baseline, fresh seeds
    kinds = {(c["comparison"], c["baseline"]) for c in res["final"]["comparisons"]}
    assert {k for k, _ in kinds} == {"own baseline", "best plain baseline"} and {b for _, b in kinds} <= set(bases)
    assert "## The baseline's search" in (d / "out" / "tune.md").read_text()
    bad = TUNED.replace("log = true\n", "log = true\nbaseline = true\n")
    d2, f2 = _folder(tmp_path, "bad", text=bad)
    with pytest.raises(ConfigError, match=r"search\[0\]\.baseline: only a value of \[train\]"):
        load_experiment(f2)


def test_kill_9_then_the_same_command_goes_on_as_if_uninterrupted(tmp_path):
    """``kill -9`` of ``reglab tune`` while a batch trains (its values stored): the same command
    goes on with the trials and values of an uninterrupted search."""
    import subprocess
    import sys

    d, f = _folder(tmp_path)
    whole = tune(f, out=d / "whole", trials=6, batch=2, seeds=2, final_seeds=5, say=lambda s: None)
    out = d / "cut"
    cmd = [sys.executable, "-m", "reglab.cli", "tune", str(f), "--trials", "6", "--batch", "2", "--seeds", "2",
           "--final-seeds", "5", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = out / "tune.sqlite3"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                if con.execute("select count(*) from trial_params").fetchone()[0] >= 4:
                    break  # the second batch is asked, its values stored: it trains now
        except sqlite3.Error:
            pass
        time.sleep(0.005)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    res = CliRunner().invoke(main, cmd[3:])
    assert res.exit_code == 0, res.output
    again = tune(f, out=out, trials=6, batch=2, seeds=2, final_seeds=5, say=lambda s: None)
    assert _trials(again) == _trials(whole) and again["best"] == whole["best"] and again["trained"] == 0


def test_values_the_file_cannot_take_are_said_when_it_loads(tmp_path):
    bad = TUNED + '\n[[search]]\npath = ["model", "layers", 0, "activation"]\nchoices = ["relu", "nosuchact"]\n'
    d, f = _folder(tmp_path, text=bad)
    with pytest.raises(ConfigError, match=r"nosuchact.*\(at the search point .*model/layers/0/activation = 'nosuchact'"):
        tune(f, trials=2, out=d / "out", seeds=2, say=lambda s: None)
    assert not (d / "out").exists()


def test_a_study_cut_short_before_its_setting_was_recorded_is_taken_up(tmp_path):
    """A kill between Optuna's making the study and reglab's recording its setting (or between
    two baselines' studies) leaves a study with no setting and no trials: it is reglab's, taken
    up; and a new tune.sqlite3 is renamed into place whole (an interrupted start leaves none)."""
    import optuna

    d, f = _folder(tmp_path)
    out = d / "out"
    out.mkdir()
    (out / ".tune.sqlite3.999.tmp").write_bytes(b"half")  # an earlier start cut short
    optuna.create_study(study_name="reglab-tune", storage=f"sqlite:///{out / 'tune.sqlite3'}")
    res = tune(f, trials=2, out=out, batch=2, seeds=2, final_seeds=5, say=lambda s: None)
    assert len(res["trials"]) == 2
    d2, f2 = _folder(tmp_path, "fresh")
    tune(f2, trials=1, out=d2 / "out", batch=1, seeds=2, final_seeds=5, say=lambda s: None)
    assert not list((d2 / "out").glob(".tune.sqlite3.*.tmp"))


def test_export_and_tune_say_what_is_wrong_with_their_folders(tmp_path):
    d, f = _folder(tmp_path)
    (d / "afile").write_text("x")
    res = CliRunner().invoke(main, ["tune", str(f), "--out", str(d / "afile" / "sub"), "--trials", "1"])
    assert res.exit_code == 1 and "cannot make the folder" in res.output
    tune(f, trials=1, out=d / "out", batch=1, seeds=2, final_seeds=5, say=lambda s: None)
    res = CliRunner().invoke(main, ["export", "tensorboard", str(d / "out"), str(d / "logs")])
    assert res.exit_code == 1 and "no finished runs to export" in res.output and "out/final" in res.output
    res = CliRunner().invoke(main, ["export", "tensorboard", str(d / "out" / "final"), str(d / "afile" / "sub")])
    assert res.exit_code == 1 and "is a file, so the TensorBoard log folder cannot be made there" in res.output
    res = CliRunner().invoke(main, ["export", "tensorboard", str(d / "out" / "search"), str(d / "logs")])
    assert res.exit_code == 0, res.output


def test_a_chosen_setting_without_regularization_is_said(tmp_path):
    text = TUNED.replace("low = 1e-5\nhigh = 3.0\nlog = true", "choices = [0.0]")
    d, f = _folder(tmp_path, text=text)
    res = CliRunner().invoke(main, ["tune", str(f), "--trials", "1", "--batch", "1", "--seeds", "2", "--final-seeds",
                                    "5", "--out", str(d / "out")])
    assert res.exit_code == 0, res.output
    assert "the chosen setting trains what its baseline trains" in res.output
    assert "**The chosen setting trains what its baseline trains**" in (d / "out" / "tune.md").read_text()


def test_list_says_what_tune_searches():
    res = CliRunner().invoke(main, ["list", str(Path(__file__).resolve().parents[1] / "studies" / "lecture" / "tune")])
    assert res.exit_code == 0, res.output
    assert "reglab tune searches: l2 from 1e-06 to 0.1 (log-uniform)" in res.output


def test_trials_of_different_regularizer_kinds_train_apart(tmp_path):
    """Kinds (L1 against L2) and constraints cannot share a fit_many group; strengths can."""
    text = TUNED.replace('params = {"@kernels" = {name = "L2", l2 = 1e-3}}', 'params = {"@kernels" = "l2"}').replace(
        'path = ["regularize", "params", "@kernels", "l2"]\nlow = 1e-5\nhigh = 3.0\nlog = true',
        'path = ["regularize", "params", "@kernels"]\nchoices = ["l1", "l2"]')
    d, f = _folder(tmp_path, text=text)
    res = tune(f, trials=2, out=d / "out", batch=2, seeds=2, final_seeds=5, say=lambda s: None)
    assert len(res["trials"]) == 2 and all(r["state"] == "COMPLETE" for r in res["trials"])


def test_a_changed_search_sampler_seed_or_metric_is_another_search(tmp_path):
    d, f = _folder(tmp_path)
    out = d / "out"
    tune(f, trials=1, out=out, batch=1, seeds=2, final_seeds=5, say=lambda s: None)
    tune(f, trials=1, out=out, batch=1, seeds=2, final_seeds=5, metric="mse", say=lambda s: None)  # the default, named
    with pytest.raises(TuneError, match="--sampler-seed: 0 there, 5000 here"):
        tune(f, trials=1, out=out, batch=1, seeds=2, final_seeds=5, sampler_seed=5000, say=lambda s: None)
    moved = f.read_text().replace('path = ["regularize", "params", "@kernels", "l2"]',
                                  'name = "x"\npath = ["train", "optimizer", "learning_rate"]').replace("high = 3.0", "high = 0.1")
    f.write_text(moved)
    with pytest.raises(TuneError, match="the searched ranges"):
        tune(f, trials=2, out=out, batch=1, seeds=2, final_seeds=5, say=lambda s: None)
    res = tune(f, trials=1, out=d / "big", batch=1, seeds=2, final_seeds=5, sampler_seed=2**31 - 1, say=lambda s: None)
    assert len(res["trials"]) == 1
    with pytest.raises(ValueError, match="sampler_seed must be an integer >= 0"):
        tune(f, trials=1, out=d / "neg", sampler_seed=-1, say=lambda s: None)


def test_nothing_is_written_through_a_symlink_in_out(tmp_path):
    d, f = _folder(tmp_path)
    out, elsewhere = d / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "final").symlink_to(elsewhere)
    with pytest.raises(OutputError, match="is a symlink"):
        tune(f, trials=1, out=out, batch=1, seeds=2, final_seeds=5, say=lambda s: None)
    assert not any(elsewhere.iterdir())


def test_an_abandoned_trial_shifts_no_later_value(tmp_path):
    """A trial asked but given no value (a kill -9 inside the asking) fails; the search then
    asks what it would have asked without it."""
    import optuna

    d, f = _folder(tmp_path)
    whole = tune(f, trials=3, out=d / "whole", batch=1, seeds=2, final_seeds=5, say=lambda s: None)
    out = d / "cut"
    tune(f, trials=1, out=out, batch=1, seeds=2, final_seeds=5, say=lambda s: None)
    optuna.load_study(study_name="reglab-tune", storage=f"sqlite:///{out / 'tune.sqlite3'}").ask()  # abandoned
    res = tune(f, trials=3, out=out, batch=1, seeds=2, final_seeds=5, say=lambda s: None)
    assert [(r["params"], r["value"]) for r in res["trials"]] == [(r["params"], r["value"]) for r in whole["trials"]]


def test_seed_objective_checks_its_arguments_before_training(tmp_path):
    d, f = _folder(tmp_path)
    for bad in (2.5, [0, -1], [], True):
        with pytest.raises(ValueError, match="seeds must be a positive count"):
            seed_objective(f, {L2: 1e-3}, seeds=bad)
    with pytest.raises(ValueError, match="metric 'nonsense' is not a regression metric"):
        seed_objective(f, {L2: 1e-3}, seeds=2, metric="nonsense", out=d / "o")
    assert not (d / "o" / "runs").exists()
    assert len(seed_objective(f, {L2: 1e-3}, seeds=np.int64(2)).values) == 2


def test_tensorboard_folders_never_come_from_a_run_file(tmp_path):
    from reglab.report.tensorboard import export_tensorboard

    d, f = _folder(tmp_path)
    tune(f, trials=1, out=d / "out", batch=1, seeds=2, final_seeds=5, say=lambda s: None)
    search = d / "out" / "search"
    for p in (search / "runs" / "reg_tuned").glob("*.json"):
        row = json.loads(p.read_text())
        row["digest"] = "/../../../"
        p.write_text(json.dumps(row))
    export_tensorboard(search, d / "logs")  # (the digest is not checked by the run store: only its files are)
    assert not list((d / "logs").parent.glob("seed-*")) and list((d / "logs" / "reg_tuned").glob("point-*/seed-*"))


def test_more_baselines_are_recorded_only_for_experiments_being_recorded(tmp_path):
    from reglab.experiments.current import mark_current
    from reglab.experiments.store import Unit

    d, f = _folder(tmp_path)
    spec = load_searchable(f).spec
    units = [Unit(spec, 0), Unit(spec.baseline(), 0)]
    mark_current(d / "o", units, baselines={spec.name: ["baseline.x"]})
    rec = json.loads((d / "o" / "current.json").read_text())["experiments"][spec.name]
    assert rec["baselines"] == [spec.baseline().name, "baseline.x"] and rec["digests"] == [spec.digest()]
    for bad in ({"other": ["baseline.x"]}, {spec.name: "baseline.x"}):
        with pytest.raises(ValueError, match="expected an experiment among the units and a list of baseline names"):
            mark_current(d / "o", units, baselines=bad)
