"""Nothing lost, nothing written outside ``--out``: symlinks planted in a results folder are
never written through, a folder of reglab's that is a symlink or a file is a clear error, a full
disk ends with a one-line error and leaves nothing half-written to be trusted, and a study's
failing analysis is reported as failed while the rest of the study is done."""

import hashlib
import resource
import shutil
import signal
import subprocess
import sys

import pytest
from click.testing import CliRunner

from reglab.cli import main

from .test_experiments import TINY


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def run(path, out, *extra):
    return cli("run", path, "--out", out, "--no-progress", "--workers", "1", *extra)


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """TINY over 2 seeds (and its baseline), trained once; each test copies it."""
    d = tmp_path_factory.mktemp("lost")
    f = d / "tiny.toml"
    f.write_text(TINY)
    res = run(f, d / "out", "--seeds", "2")
    assert res.exit_code == 0, res.output
    return f, d / "out"


@pytest.fixture
def copy(tmp_path, finished):
    f, src = finished
    out = tmp_path / "out"
    shutil.copytree(src, out, symlinks=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("a file outside --out\n")
    return f, out, victim


@pytest.mark.parametrize("name", ["results.csv", "comparisons.csv", "report.md", "report.html"])
def test_a_planted_symlink_is_replaced_not_written_through(copy, name):
    f, out, victim = copy
    before = _sha(victim)
    (out / name).unlink(missing_ok=True)
    (out / name).symlink_to(victim)
    res = cli("report", out)
    assert res.exit_code == 0, res.output
    assert _sha(victim) == before
    assert not (out / name).is_symlink() and (out / name).stat().st_size > 0
    if name == "results.csv":  # `reglab run` rewrites results.csv too
        (out / name).unlink()
        (out / name).symlink_to(victim)
        res = run(f, out, "--seeds", "2")
        assert res.exit_code == 0 and "0 runs trained" in res.output, res.output
        assert _sha(victim) == before and not (out / name).is_symlink()


@pytest.mark.parametrize("folder", ["runs/tiny", "runs", "locks", "figures", "paths"])
@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_a_folder_of_reglab_that_is_a_symlink_or_a_file_is_a_clear_error(copy, tmp_path, folder, kind):
    f, out, victim = copy
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(out / folder, ignore_errors=True)
    if kind == "symlink":
        (out / folder).symlink_to(elsewhere, target_is_directory=True)
    else:
        (out / folder).write_text("not a folder")
    if folder == "paths":
        res = cli("path", f, "--strengths", "0,0.01", "--seeds", "1", "--out", out)
    elif folder == "figures":
        res = cli("report", out)
    else:
        res = run(f, out, "--seeds", "2")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert str(out / folder) in res.output, res.output
    assert ("is a symlink" if kind == "symlink" else "is a file, not a folder") in res.output, res.output
    assert "Traceback" not in res.output
    assert list(elsewhere.iterdir()) == []  # nothing went there


def _limited(limit: int):
    """A child whose files may grow to ``limit`` bytes (a disk that fills): a larger write fails
    with EFBIG ("File too large"), SIGXFSZ ignored so that it fails instead of killing."""
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def _cli_sub(*args, limit=None):
    return subprocess.run([sys.executable, "-m", "reglab.cli", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=_limited(limit) if limit else None, timeout=300)


def test_a_full_disk_while_reporting_is_one_line_and_leaves_nothing_half_written(copy):
    f, out, _ = copy
    results = (out / "results.csv").read_bytes()
    for p in ("report.md", "report.html", "comparisons.csv"):
        (out / p).unlink(missing_ok=True)
    p = _cli_sub("report", out, limit=8_000)  # the tables fit, the figures and the page do not
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and p.stderr.count("\n") <= 2, p.stderr
    assert "cannot write " + str(out) in p.stderr and "File too large" in p.stderr, p.stderr
    assert "What had finished is kept" in p.stderr
    for name in ("report.md", "report.html"):
        assert not (out / name).exists()
    assert not [q for q in out.rglob("*") if q.is_file() and q.stat().st_size == 0 and q.suffix != ".lock"]
    assert not list(out.rglob(".*.tmp"))
    assert (out / "results.csv").read_bytes() == results  # rewritten whole, with the same rows
    res = cli("report", out)  # with room again, the report is written
    assert res.exit_code == 0 and (out / "report.html").stat().st_size > 8_000, res.output


def test_a_full_disk_while_training_keeps_what_finished_and_resumes(tmp_path):
    f = tmp_path / "tiny.toml"
    f.write_text(TINY)
    out = tmp_path / "out"
    p = _cli_sub("run", f, "--out", out, "--seeds", "2", "--no-progress", "--workers", "1", limit=1_500)
    assert p.returncode == 1, p.stderr
    assert "Traceback" not in p.stderr and "cannot write " + str(out / "runs") in p.stderr, p.stderr
    assert not list(out.rglob(".*.tmp"))
    from reglab.experiments.runner import load_runs

    assert load_runs(out) == []  # no run whose files were cut short is trusted
    res = run(f, out, "--seeds", "2")
    assert res.exit_code == 0 and "4 runs trained" in res.output, res.output


ANALYSIS = '''
import os

def run(out, fail=True):
    if fail and not os.environ.get("REGLAB_TEST_FIXED"):
        raise RuntimeError("the analysis broke")
    return {"title": "A fine analysis", "description": "it worked", "verdict": "fine"}
'''


def test_a_failing_analysis_is_reported_as_failed_and_the_study_is_done(tmp_path, monkeypatch):
    st = tmp_path / "study"
    (st / "experiments").mkdir(parents=True)
    (st / "experiments" / "tiny.toml").write_text(TINY)
    (st / "an.py").write_text(ANALYSIS)
    (st / "study.toml").write_text('title = "t"\n[[analysis]]\nname = "an"\nfunction = "an.py:run"\n')
    out = tmp_path / "out"
    res = cli("study", st, "--out", out, "--no-progress", "--workers", "1")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "an.py:run raised RuntimeError: the analysis broke (at " + str(st / "an.py") + ", line 6)" in res.output
    assert "everything else is done and in the report" in res.output
    assert len(list(out.glob("runs/*/*.json"))) == 4  # trained all the same
    md = (out / "report.md").read_text()
    assert "This analysis failed" in md and "the analysis broke" in md
    monkeypatch.setenv("REGLAB_TEST_FIXED", "1")  # fixed: the next study runs it again, trains nothing
    res = cli("study", st, "--out", out, "--no-progress", "--workers", "1")
    assert res.exit_code == 0, res.output
    assert "0 runs trained, 4 reused; 1 side task(s)" in res.output
    assert "A fine analysis" in (out / "report.md").read_text()


@pytest.mark.parametrize("where", ["builder", "loader"])
@pytest.mark.parametrize("code", [0, 3])
def test_sys_exit_in_user_code_is_an_error_not_a_quiet_success(tmp_path, where, code):
    (tmp_path / "user.py").write_text(
        "import sys\nfrom torch import nn\n\n"
        "def build(input_shape, n_outputs):\n    sys.exit(%d)\n\n"
        "def load():\n    sys.exit(%d)\n" % (code, code))
    text = TINY.split("[[model.layers]]")[0] + '[model]\nbuilder = "user.py:build"\n'
    if where == "loader":
        text = TINY.replace('name = "blobs"\nn_samples = 80', 'loader = "user.py:load"')
    f = tmp_path / "e.toml"
    f.write_text(text)
    res = run(f, tmp_path / "out")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    key = "model.builder: user.py:build" if where == "builder" else "data.loader: user.py:load"
    assert f"{f}: {key} called sys.exit({code}) (at {tmp_path / 'user.py'}, line" in res.output, res.output
    assert not list((tmp_path / "out").glob("runs/*/*.json"))


def test_nothing_is_written_beside_out_by_a_run(tmp_path):
    """A whole run writes only under --out (its experiment folder is left as it was)."""
    f = tmp_path / "exp" / "tiny.toml"
    f.parent.mkdir()
    f.write_text(TINY)
    before = {p: _sha(p) for p in tmp_path.rglob("*") if p.is_file()}
    res = run(f, tmp_path / "out")
    assert res.exit_code == 0, res.output
    after = {p: _sha(p) for p in tmp_path.rglob("*") if p.is_file() and (tmp_path / "out") not in p.parents}
    assert after == before
