"""Fault injection in a study's side tasks and report: SIGINT and SIGTERM inside the
regularization path and inside the report phase stop ``reglab study`` with 130 / 143 and a
message, store nothing cut short as finished (no path document, no report of another version),
and the resumed study ends with exactly the results, comparisons and path of an uninterrupted
one. A planted file outside ``--out`` never changes."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXPERIMENT = """
name = "wide"
seeds = 2
[data]
name = "blobs"
n_samples = 120
[train]
loss = "binary_crossentropy"
optimizer = {name = "adam", learning_rate = 0.01}
epochs = 6
batch_size = 20
[model]
builder = "../net.py:build"
[regularize]
params = {"*.weight" = {name = "L2", l2 = 0.01}}
"""

# the forward sleeps while training when REGLAB_TEST_MARK names a folder (the path phase then
# lasts long enough to be interrupted in), after leaving a marker there; the sleep changes no number
NET = '''
import os, time
from pathlib import Path
from torch import nn


class Net(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, 8), nn.ReLU(), nn.Linear(8, 1), nn.Sigmoid())

    def forward(self, x):
        mark = os.environ.get("REGLAB_TEST_MARK")
        if mark and self.training and os.environ.get("REGLAB_TEST_PHASE") == "path":
            Path(mark, "path").touch()
            time.sleep(0.02)
        return self.body(x)


def build(input_shape, n_outputs):
    return Net(input_shape[0])
'''

SECTION = '''
import os, time
from pathlib import Path


def section(results, runs, out):
    mark = os.environ.get("REGLAB_TEST_MARK")
    if mark and os.environ.get("REGLAB_TEST_PHASE") == "report":
        Path(mark, "report").touch()
        time.sleep(120)
    return [f"{len(runs)} runs"]
'''

STUDY = """
title = "faults"
[[path]]
experiment = "wide"
strengths = [0, 0.01]
seeds = 2
[[section]]
title = "Counted"
function = "section.py:section"
"""


def _study(root: Path) -> Path:
    d = root / "study"
    (d / "experiments").mkdir(parents=True)
    (d / "experiments" / "wide.toml").write_text(EXPERIMENT)
    (d / "net.py").write_text(NET)
    (d / "section.py").write_text(SECTION)
    (d / "study.toml").write_text(STUDY)
    return d


def _start(study: Path, out: Path, workers: int, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reglab.cli", "study", str(study), "--out", str(out),
                             "--no-progress", "--workers", str(workers)], env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _study_here(study: Path, out: Path, workers: int):
    """``reglab study`` in this process (the runs that are not interrupted: no start-up to pay)."""
    from click.testing import CliRunner

    from reglab.cli import main

    return CliRunner().invoke(main, ["study", str(study), "--out", str(out), "--no-progress", "--workers",
                                     str(workers)])


def _path_doc(out: Path) -> dict:
    doc = json.loads((out / "paths" / "wide.json").read_text())
    return {k: v for k, v in doc.items() if k not in ("seconds", "description")}  # wall times differ


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("study_faults")
    study = _study(root)
    out = root / "ref"
    res = _study_here(study, out, workers=1)
    assert res.exit_code == 0, res.output
    return study, {"results": (out / "results.csv").read_text(), "comparisons": (out / "comparisons.csv").read_text(),
                   "path": _path_doc(out)}


# each chain: the first signal inside the path, the second inside the report of the resumed
# study, then a last run to the end; one chain in one process, the other with a helper and the
# signal sent to the whole process group (as a scheduler does)
CHAINS = [((signal.SIGINT, signal.SIGTERM), 1, False), ((signal.SIGTERM, signal.SIGINT), 2, True)]


@pytest.mark.parametrize("sigs,workers,group", CHAINS, ids=["INT-path-TERM-report-1-worker",
                                                            "TERM-path-INT-report-2-workers-group"])
def test_interrupted_path_and_report_resume_to_an_uninterrupted_study(tmp_path, reference, sigs, workers, group):
    study, ref = reference
    out = tmp_path / "out"
    victim = tmp_path / "victim.txt"
    victim.write_text("outside --out\n")
    before = _sha(victim)
    marks = tmp_path / "marks"
    marks.mkdir()
    for sig, phase in zip(sigs, ("path", "report")):
        p = _start(study, out, workers, {"REGLAB_TEST_MARK": str(marks), "REGLAB_TEST_PHASE": phase})
        t0 = time.monotonic()
        while not (marks / phase).exists():
            assert p.poll() is None, p.communicate()
            assert time.monotonic() - t0 < 240, "the phase never started"
            time.sleep(0.05)
        time.sleep(0.3)
        (os.killpg if group else os.kill)(p.pid, sig)
        so, err = p.communicate(timeout=60)
        assert p.returncode == 128 + sig, (p.returncode, err)
        word = "interrupted" if sig == signal.SIGINT else "terminated (SIGTERM)"
        assert word in err and "run the same command again" in err, err
        assert "Traceback" not in err and "Aborted" not in err and "leaked" not in err, err
        if phase == "path":  # the path cut short is not stored as finished
            assert not (out / "paths" / "wide.json").exists()
        else:  # the path (traced again: the cut one was not kept) and the runs are kept; no report of
            assert "1 side task(s)" in so, so  # another version is left
            assert _path_doc(out) == ref["path"]
            for name in ("report.md", "report.html"):
                assert not (out / name).exists(), name
            if (out / "comparisons.csv").exists():  # written before the sections: this version's
                assert (out / "comparisons.csv").read_text() == ref["comparisons"]
        (marks / phase).unlink()
    res = _study_here(study, out, workers)
    assert res.exit_code == 0, res.output
    assert "0 runs trained, 4 reused; 0 side task(s)" in res.output, res.output  # the runs and the path were kept
    assert (out / "results.csv").read_text() == ref["results"]
    assert (out / "comparisons.csv").read_text() == ref["comparisons"]
    assert _path_doc(out) == ref["path"]
    assert (out / "report.md").is_file()
    assert _sha(victim) == before
    assert not list(out.rglob(".*.tmp"))
