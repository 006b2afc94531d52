"""A baseline must differ from its experiment: an experiment file none of whose grid points
trains anything other than its baseline is refused before training, naming the file and
``[baseline] args``; ``--no-baselines``, a ``[baseline] args`` and a sweep's zero point pass."""

from click.testing import CliRunner

from reglab.cli import main

from .test_experiments import BUILDER

FILE = """
name = "drop"
seeds = 2
[data]
name = "blobs"
n_samples = 80
[model]
builder = "models.py:build"
args = {dropout = 0.3}
[train]
loss = {name = "binary_crossentropy", from_logits = true}
epochs = 2
batch_size = 20
"""


def _run(tmp_path, text, *extra):
    (tmp_path / "models.py").write_text(BUILDER)
    f = tmp_path / "drop.toml"
    f.write_text(text)
    res = CliRunner().invoke(main, ["run", str(f), "--out", str(tmp_path / "out"), "--no-progress", "--workers", "1",
                                    *extra])
    return f, res, sorted((tmp_path / "out").glob("runs/*/*.json"))


def test_an_experiment_equal_to_its_baseline_is_refused_before_training(tmp_path):
    f, res, runs = _run(tmp_path, FILE)
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"{f}: baseline: the experiment 'drop' trains exactly what its unregularized baseline trains" in res.output
    assert "[baseline] args = {dropout = 0.0}" in res.output and "--no-baselines" in res.output
    assert runs == []


def test_baseline_args_or_no_baselines_or_a_sweep_point_pass(tmp_path):
    _, res, runs = _run(tmp_path, FILE + "[baseline]\nargs = {dropout = 0.0}\n")
    assert res.exit_code == 0 and len(runs) == 4, res.output
    (tmp_path / "no").mkdir()
    _, res, runs = _run(tmp_path / "no", FILE, "--no-baselines")
    assert res.exit_code == 0 and len(runs) == 2, res.output
    (tmp_path / "sw").mkdir()
    _, res, runs = _run(tmp_path / "sw", FILE + '[[sweep]]\npath = ["model", "args", "dropout"]\nvalues = [0.0, 0.3]\n'
                        '[baseline]\nargs = {dropout = 0.0}\n')
    assert res.exit_code == 0 and len(runs) == 6, res.output  # 2 points x 2 seeds + one shared baseline x 2
