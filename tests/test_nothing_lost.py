"""Nothing lost, nothing written outside ``--out``: symlinks planted in a results folder are
never written through, a folder of reglab's that is a symlink or a file is a clear error, a full
disk ends with a one-line error and leaves nothing half-written to be trusted, and a study's
failing analysis is reported as failed while the rest of the study is done."""

import hashlib
import os
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


# ----------------------------------------------------------------------------- found by a hostile trial

CHDIR = '''
import os
from torch import nn

def build(input_shape, n_outputs):
    os.chdir(os.path.dirname(os.path.dirname(__file__)))  # one folder up
    return nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Dropout(0.2), nn.Linear(4, 1), nn.Sigmoid())
'''


def test_a_builder_that_changes_directory_writes_nothing_outside_out(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "m.py").write_text(CHDIR)
    (work / "e.toml").write_text(TINY.split("[[model.layers]]")[0] + '[model]\nbuilder = "m.py:build"\n'
                                 '[regularize]\nparams = {"@kernels" = {name = "L2", l2 = 0.01}}\n')
    monkeypatch.chdir(work)
    res = run("e.toml", "out", "--seeds", "2")
    assert res.exit_code == 0, res.output
    assert len(list((work / "out").glob("runs/*/*.json"))) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]  # nothing one folder up
    assert os.getcwd() == str(work)


def test_a_symlinked_lock_file_is_a_clear_error(copy, tmp_path):
    f, out, victim = copy
    before = _sha(victim)
    (out / ".current.json.lock").unlink(missing_ok=True)
    (out / ".current.json.lock").symlink_to(victim)
    res = run(f, out, "--seeds", "2")
    assert res.exit_code == 1 and "Traceback" not in res.output, res.output
    assert f"{out / '.current.json.lock'} is a symlink" in res.output
    assert _sha(victim) == before


@pytest.mark.parametrize("header,message", [("a,t,t", "the column name 't' appears twice"),
                                            ("t,t,y", "the column name 't' appears twice")])
def test_a_csv_with_a_repeated_column_name_is_refused(tmp_path, header, message):
    rows = "".join(f"{i % 3}.5,{i % 2},{i % 2}\n" for i in range(60))
    (tmp_path / "d.csv").write_text(header + "\n" + rows)
    f = tmp_path / "e.toml"
    f.write_text(TINY.replace('name = "blobs"\nn_samples = 80', f'file = "d.csv"\ntarget = "{header[-1]}"'))
    res = run(f, tmp_path / "out")
    assert res.exit_code == 1 and message in res.output and str(f) in res.output, res.output


def test_a_csv_with_a_header_and_no_rows_says_so(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,y\n")
    f = tmp_path / "e.toml"
    f.write_text(TINY.replace('name = "blobs"\nn_samples = 80', 'file = "d.csv"\ntarget = "y"'))
    res = run(f, tmp_path / "out")
    assert res.exit_code == 1 and "has a header (['a', 'b', 'y']) but no rows" in res.output, res.output


def test_sweep_values_that_mean_the_same_are_one_grid_point_twice(tmp_path):
    f = tmp_path / "e.toml"
    f.write_text(TINY + '[[sweep]]\npath = ["model", "layers", 0, "kernel_regularizer", "name"]\n'
                 'values = ["L2", "l2"]\n')
    res = run(f, tmp_path / "out")
    assert res.exit_code == 1 and "train the same experiment" in res.output, res.output


def test_files_under_out_get_the_modes_of_the_umask(copy):
    f, out, _ = copy
    old = os.umask(0o022)
    try:
        res = cli("report", out)
    finally:
        os.umask(old)
    assert res.exit_code == 0, res.output
    for name in ("results.csv", "comparisons.csv", "report.md", "report.html"):
        assert (out / name).stat().st_mode & 0o777 == 0o644, name


# a group trains for ~10 s of CPU here (400 epochs took 1.4 s: a helper past its ~5 s of imports
# was often killed after its group had ended, so nothing noticed: a flake of the test, not a loss)
# long enough that a helper's CPU time passes _helper_of's mark while it trains (3000 epochs were,
# until the loop's bookkeeping got faster: the helper then finished at 5.9 s of CPU, under the 6 s)
SLOW = TINY.replace("epochs = 3", "epochs = 12000").replace("n_samples = 80", "n_samples = 200")


def _helper_of(pid: int, timeout: float = 120.0) -> int:
    """The pid of a live child of ``pid`` (a helper) once one is training (its CPU time grows)."""
    import time
    from pathlib import Path

    from .test_faults import _children

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        for k in _children(pid):
            try:
                utime = int(Path(f"/proc/{k}/stat").read_text().rsplit(")", 1)[1].split()[11])
            except (OSError, IndexError, ValueError):
                continue
            if utime > 600:  # clock ticks: past its imports and warm-up, training
                return k
        time.sleep(0.1)
    raise AssertionError("no helper started training")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_helper_killed_or_terminated_alone_is_said_so(tmp_path, sig):
    """The system's OOM killer (SIGKILL) or a scheduler's SIGTERM reaching a helper process only:
    a clear message (exit 1 after a SIGKILL, 143 after a SIGTERM), the finished runs kept."""
    files = []
    for i, l2 in enumerate((0.01, 0.1)):
        f = tmp_path / f"e{i}.toml"
        f.write_text(SLOW.replace('name = "tiny"', f'name = "e{i}"').replace("l2 = 0.01", f"l2 = {l2}"))
        files.append(f)
    out = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-m", "reglab.cli", "run", *map(str, files), "--out", str(out),
                          "--no-progress", "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        os.kill(_helper_of(p.pid), sig)
        _, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert "Traceback" not in err, err
    if sig == signal.SIGKILL:
        assert p.returncode == 1 and "a helper process died" in err and "run the same command again" in err, err
    else:
        assert p.returncode == 143 and "terminated (SIGTERM)" in err, (p.returncode, err)


FAILS_LATER = '''
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1), nn.Sigmoid())

    def forward(self, x):
        if x.shape[0] == 4:  # the last, short batch of an epoch
            raise RuntimeError("a batch of four")
        return self.body(x)

def build(input_shape, n_outputs):
    return Net()
'''


def test_a_forward_that_fails_while_training_is_one_line_with_its_line(tmp_path):
    (tmp_path / "m.py").write_text(FAILS_LATER)
    f = tmp_path / "e.toml"
    f.write_text(TINY.split("[[model.layers]]")[0].replace("batch_size = 20", "batch_size = 22") +
                 '[model]\nbuilder = "m.py:build"\n[regularize]\nparams = {"@kernels" = {name = "L2", l2 = 0.01}}\n')
    res = run(f, tmp_path / "out", "--no-baselines")
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "a batch of four" in res.output and f"(at {tmp_path / 'm.py'}, line 11)" in res.output, res.output
