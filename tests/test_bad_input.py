"""Bad input: every malformed experiment file is a clear error (file, key, expectation) before
anything trains, and junk in a results folder never crashes ``reglab report`` or ``reglab run``."""

import os
import shutil

import pytest
from click.testing import CliRunner

from reglab.cli import main

from .test_experiments import TINY  # the same tiny experiment file

KREG = 'kernel_regularizer = {name = "L2", l2 = 0.01}'
OPT = 'optimizer = {name = "adam", learning_rate = 0.01}'
LAST = 'units = 1\nactivation = "sigmoid"'


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def run(path, out, *extra):
    return cli("run", path, "--out", out, "--no-progress", "--workers", "1", *extra)


def trained(out):
    return sorted(out.glob("runs/*/*.json"))


def _r(old, new):
    return lambda t: t.replace(old, new)


def _add_train(line):
    return lambda t: t.replace("batch_size = 20", "batch_size = 20\n" + line)


# (edit of TINY, or raw bytes; key names the message must contain)
BAD_FILES = {
    "01_non_utf8": (b"\xff\xfe name = 'x'", ["UTF-8"]),
    # "list": the message states the expectation, not just a bare KeyError 'terms'
    "02_sum_without_terms": (_r(KREG, 'kernel_regularizer = {name = "Sum"}'), ["kernel_regularizer", "terms", "list"]),
    "02_sum_terms_5": (_r(KREG, 'kernel_regularizer = {name = "Sum", terms = 5}'), ["kernel_regularizer", "terms"]),
    "03_n_samples_float": (_r("n_samples = 80", "n_samples = 2e9"), ["n_samples"]),
    "03_n_samples_huge": (_r("n_samples = 80", "n_samples = 2000000000"), ["n_samples"]),
    # the key is the last layer's units (the message must not pass on "2 units" in a hint)
    "04_three_units_binary": (_r(LAST, 'units = 3\nactivation = "sigmoid"'), ["layers[1].units"]),
    "05_maxnorm_axis_5": (_r(LAST, LAST + '\nkernel_constraint = {name = "MaxNorm", max_value = 2, axis = 5}'),
                          ["kernel_constraint", "axis"]),
    "05_regularize_constraints_axis_5": (
        lambda t: t + '\n[regularize]\nconstraints = {"@kernels" = {name = "MaxNorm", max_value = 2, axis = 5}}\n',
        ["constraints", "axis"]),
    "06_monitor_nope": (lambda t: t + '\n[train.early_stopping]\nmonitor = "nope"\n', ["monitor"]),
    "07_l1_inf": (_r(KREG, 'kernel_regularizer = {name = "L1", l1 = inf}'), ["kernel_regularizer", "l1"]),
    "07_kl_strength_inf": (_r(KREG, 'activity_regularizer = {name = "KLSparsity", rho = 0.05, strength = inf}'),
                           ["activity_regularizer", "strength"]),
    "07_regularized_loss_strength_inf": (
        _r('loss = "binary_crossentropy"',
           'loss = {name = "regularized", data_loss = "binary_crossentropy", codes = [2, -1, -1, -1], strength = inf}'),
        ["loss", "strength"]),
    "08_lr_1e300": (_r(OPT, 'optimizer = {name = "adam", learning_rate = 1e300}'), ["learning_rate"]),
    "08_lr_negative": (_r(OPT, 'optimizer = {name = "adam", learning_rate = -1}'), ["learning_rate"]),
    "08_lr_nan": (_r(OPT, 'optimizer = {name = "adam", learning_rate = nan}'), ["learning_rate"]),
    "09_epochs_int64_max": (_r("epochs = 3", "epochs = 9223372036854775807"), ["epochs"]),
    "09_epochs_float": (_r("epochs = 3", "epochs = 1e9"), ["epochs"]),
    "10_units_huge": (_r("units = 4", "units = 100000000"), ["units"]),
    "11_sparsity_layer_99": (lambda t: t + '\n[analysis]\nsparsity_layers = ["99"]\n', ["sparsity_layers"]),
    "12_name_300_chars": (_r('name = "tiny"', f'name = "{"n" * 300}"'), ["name"]),
    "13_seeds_huge": (_r("seeds = 2", "seeds = 1000000000"), ["seeds"]),
    "13_seeds_float": (_r("seeds = 2", "seeds = 1e9"), ["seeds"]),
    "14_restore_best_weights_yes": (_add_train('early_stopping = {restore_best_weights = "yes"}'),
                                    ["restore_best_weights"]),
    "15_codes_too_short": (
        _r('loss = "binary_crossentropy"',
           'loss = {name = "regularized", data_loss = "binary_crossentropy", codes = [2], strength = 0.001}'),
        ["codes"]),
    # a linear output (logits) with a loss that expects probabilities: fit's own check, before training
    "16_logits_with_probability_loss": (_r(LAST, "units = 1"), ["train.loss", "probabilities", "sigmoid"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_experiment_file_is_a_clear_error_before_training(tmp_path, case):
    edit, keys = BAD_FILES[case]
    f = tmp_path / "bad_input.toml"
    if isinstance(edit, bytes):
        f.write_bytes(edit)
    else:
        f.write_text(edit(TINY))
    out = tmp_path / "out"
    res = run(f, out)
    assert isinstance(res.exception, SystemExit), (
        f"not a click error: {type(res.exception).__name__}: {res.exception}\n{res.output}")
    assert res.exit_code == 1, res.output
    assert "bad_input.toml" in res.output, res.output
    for key in keys:
        assert key in res.output, (key, res.output)
    assert "Traceback" not in res.output
    assert trained(out) == [], "something trained"


# ----------------------------------------------------------------------------- titles


def test_16_bad_mathtext_title_is_accepted_and_drawn_literally(tmp_path):
    f = tmp_path / "tiny.toml"
    f.write_text(TINY.replace('seeds = 2', 'seeds = 2\ntitle = "$\\\\undefinedmacro$"'))
    out = tmp_path / "out"
    res = run(f, out)
    assert res.exit_code == 0 and res.exception is None, res.output
    assert len(trained(out)) == 4
    res = cli("report", out)
    assert res.exit_code == 0 and res.exception is None, (type(res.exception).__name__, res.exception, res.output)
    assert (out / "report.html").is_file()
    assert "$\\undefinedmacro$" in (out / "report.html").read_text()
    assert "$\\undefinedmacro$" in (out / "report.md").read_text()


def test_17_pipe_in_title_does_not_break_the_markdown_table(tmp_path):
    f = tmp_path / "tiny.toml"
    f.write_text(TINY.replace('seeds = 2', 'seeds = 2\ntitle = "left | right"'))
    out = tmp_path / "out"
    assert run(f, out).exit_code == 0
    res = cli("report", out)
    assert res.exit_code == 0, res.output
    md = (out / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("|") and "`tiny`" in line]
    assert rows, md
    assert "left \\| right" in rows[0]
    assert "left | right" not in rows[0].replace("\\|", "")
    header = next(line for line in md.splitlines() if line.startswith("| experiment"))
    cells = lambda line: len(line.replace("\\|", "").split("|"))  # noqa: E731
    assert cells(rows[0]) == cells(header)


# ----------------------------------------------------------------------------- results-folder junk


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A valid small results folder: TINY over 2 seeds (plus its baseline), via the CLI."""
    d = tmp_path_factory.mktemp("finished")
    f = d / "tiny.toml"
    f.write_text(TINY)
    out = d / "out"
    res = run(f, out, "--seeds", "2")
    assert res.exit_code == 0, res.output
    assert len(trained(out)) == 4
    return f, out


def _bare_string(out):
    (out / "runs" / "tiny" / "junk.json").write_text('"hello"')


def _no_files(out):
    (out / "runs" / "tiny" / "empty.json").write_text('{"metrics": {}}')


def _dir_json(out):
    (out / "runs" / "tiny" / "x.json").mkdir()


def _figures_file(out):
    shutil.rmtree(out / "figures", ignore_errors=True)
    (out / "figures").write_text("not a folder")


def _corrupt_study(out):
    (out / "study.json").write_text("{not json")


JUNK = {"bare_string_json": _bare_string, "metrics_only_json": _no_files, "directory_named_x_json": _dir_json,
        "corrupt_study_json": _corrupt_study}


def test_figures_being_a_file_is_a_clear_error_and_run_still_works(tmp_path, finished):
    f, src = finished
    out = tmp_path / "out"
    shutil.copytree(src, out)
    _figures_file(out)
    res = cli("report", out)
    assert isinstance(res.exception, SystemExit) and res.exit_code == 1
    assert "figures is a file, not a folder" in res.output, res.output
    res = run(f, out, "--seeds", "2")
    assert res.exit_code == 0 and "0 runs trained, 4 already done" in res.output, res.output


def test_an_output_folder_that_cannot_be_made_fails_before_training(tmp_path):
    f = tmp_path / "tiny.toml"
    f.write_text(TINY)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    res = run(f, blocker / "out")
    assert isinstance(res.exception, SystemExit) and res.exit_code == 1
    assert "not writable" in res.output and str(blocker / "out") in res.output, res.output
    assert not list(tmp_path.glob("**/*.pt"))


@pytest.mark.parametrize("case", sorted(JUNK))
def test_junk_in_results_folder_never_crashes_report_or_run(tmp_path, finished, case):
    f, src = finished
    out = tmp_path / "out"
    shutil.copytree(src, out)
    JUNK[case](out)
    res = cli("report", out)
    assert res.exit_code == 0 and res.exception is None, (type(res.exception).__name__, res.exception, res.output)
    md = (out / "report.md").read_text()
    assert "`tiny`" in md and "2 / 2" in md
    assert (out / "report.html").is_file()
    res = run(f, out, "--seeds", "2")
    assert res.exit_code == 0 and res.exception is None, (type(res.exception).__name__, res.exception, res.output)
    assert "0 runs trained, 4 already done" in res.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_output_folder_fails_clearly_before_training(tmp_path):
    f = tmp_path / "tiny.toml"
    f.write_text(TINY)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o500)
    try:
        res = run(f, out)
        assert isinstance(res.exception, SystemExit), (type(res.exception).__name__, res.exception)
        assert res.exit_code == 1
        assert str(out) in res.output and "not writable" in res.output, res.output
        assert trained(out) == []
    finally:
        out.chmod(0o700)
