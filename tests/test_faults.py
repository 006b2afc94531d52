"""Fault injection: ``reglab run`` killed (SIGINT, SIGKILL) at several moments, then resumed,
ends with exactly the results of an uninterrupted run; helpers die with their parent."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXPERIMENT = """
name = "{name}"
seeds = 3
[data]
name = "blobs"
n_samples = 200
[train]
loss = "binary_crossentropy"
optimizer = {{name = "adam", learning_rate = 0.01}}
epochs = {epochs}
batch_size = 20
[[model.layers]]
units = 16
activation = "relu"
dropout = {dropout}
kernel_regularizer = {{name = "L2", l2 = {l2}}}
[[model.layers]]
units = 1
activation = "sigmoid"
"""


def _files(folder: Path, epochs: int = 20) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (l2, dropout) in enumerate([(0.001, 0.0), (0.01, 0.0), (0.1, 0.0), (0.01, 0.2)]):
        p = folder / f"e{i}.toml"
        p.write_text(EXPERIMENT.format(name=f"e{i}", epochs=epochs, dropout=dropout, l2=l2))
        out.append(p)
    return out


def _start(files, out: Path, workers: int = 2) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reglab.cli", "run", *map(str, files), "--out", str(out),
                             "--no-progress", "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finished(out: Path) -> int:
    return len(list(out.glob("runs/*/*.json")))


def _results(out: Path) -> dict:
    from reglab.experiments.runner import load_runs

    return {r["run_id"]: (r["experiment"], r["seed"], r["metrics"], r["history"]) for r in load_runs(out)}


def _wait_for(cond, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    files = _files(root / "exp")
    p = _start(files, root / "ref")
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    res = _results(root / "ref")
    assert len(res) == 15  # 4 experiments x 3 seeds + one shared baseline x 3
    return files, res


# (signal, moment): "start" = before any run is written, "first" = as the first run appears
# (a group is being written), "half" = once half the runs exist
CASES = [(signal.SIGINT, "start"), (signal.SIGINT, "first"), (signal.SIGINT, "half"),
         (signal.SIGKILL, "first"), (signal.SIGKILL, "half")]


@pytest.mark.parametrize("sig,moment", CASES, ids=[f"{s.name}-{m}" for s, m in CASES])
def test_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path, reference, sig, moment):
    files, ref = reference
    out = tmp_path / "out"
    p = _start(files, out)
    if moment == "start":
        _wait_for(lambda: (out / "locks").is_dir())  # planned, training
    else:
        n = 1 if moment == "first" else len(ref) // 2
        _wait_for(lambda: _finished(out) >= n or p.poll() is not None)
    assert p.poll() is None, "the run ended before it could be interrupted"
    t_kill = time.monotonic()
    os.kill(p.pid, sig)
    _, err = p.communicate(timeout=60)
    stopped_in = time.monotonic() - t_kill
    kept = _results(out)
    if sig == signal.SIGINT:
        assert p.returncode == 130 and "interrupted:" in err and "resume" in err, err
        assert f"{len(kept)} of {len(ref)} runs are finished and kept" in err
        assert stopped_in < 10
        assert "Traceback" not in err, err
    else:
        assert p.returncode == -signal.SIGKILL
        assert _wait_gone(p.pid) == [], "a helper outlived its killed parent"
    for rid, row in kept.items():  # what was kept is finished and right
        assert ref[rid] == row
    q = _start(files, out)
    so, err = q.communicate(timeout=300)
    assert q.returncode == 0, err
    assert f"{len(ref) - len(kept)} runs trained, {len(kept)} already done" in so
    assert _results(out) == ref
    assert not list(out.glob("runs/*/.*.tmp"))  # no partial file is left behind


def _session_alive(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid`` (the run was started in its own session)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            alive.append(int(stat.parent.name))
    return alive


def _wait_gone(sid: int, timeout: float = 5.0) -> list[int]:
    """The processes of the killed run's session still alive after ``timeout`` (none, we hope)."""
    t0 = time.monotonic()
    while (alive := _session_alive(sid)) and time.monotonic() - t0 < timeout:
        time.sleep(0.1)
    return alive


def test_helpers_end_with_their_parent(tmp_path):
    """After ``kill -9`` of ``reglab run``, its helper processes exit within a second or two and
    write nothing more."""
    files = _files(tmp_path / "exp", epochs=400)
    out = tmp_path / "out"
    p = _start(files, out)
    _wait_for(lambda: _finished(out) >= 1 or p.poll() is not None)
    children = _children(p.pid)
    assert p.poll() is None and children, "no helper process to watch"
    assert set(children) <= set(_session_alive(p.pid))
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=10)
    assert _wait_gone(p.pid, timeout=5.0) == []
    written = _finished(out)
    time.sleep(1.0)
    assert _finished(out) == written, "a helper wrote runs after its parent died"
    assert json.loads(next(out.glob("runs/*/*.json")).read_text())["metrics"]


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def test_two_concurrent_runs_share_the_work(tmp_path, reference):
    """Two ``reglab run`` processes on one folder at once: every unit is trained exactly once
    (each skips or waits for the groups the other holds), and the results are the reference's."""
    files, ref = reference
    out = tmp_path / "out"
    a, b = _start(files, out), _start(files, out)
    outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == b.returncode == 0, outs
    trained = [int(o.split(" runs trained")[0].split()[-1]) for o, _ in outs]
    assert sum(trained) == len(ref), outs  # nothing trained twice
    assert _results(out) == ref


def test_concurrent_json_writers_and_readers_never_see_a_partial_file(tmp_path):
    """``write_json`` from two processes, 300 writes each, while this process reads: no writer
    fails and no read sees partial JSON (unique temporary names, then an atomic rename)."""
    target = tmp_path / "x.json"
    script = f"""
import sys
from pathlib import Path
from reglab.experiments.runner import write_json
for i in range(300):
    write_json(Path({str(target)!r}), {{"writer": sys.argv[1], "i": i, "pad": "x" * 20000}})
"""
    writers = [subprocess.Popen([sys.executable, "-c", script, w], stderr=subprocess.PIPE, text=True)
               for w in "ab"]
    reads = bad = 0
    while any(w.poll() is None for w in writers):
        try:
            doc = json.loads(target.read_text())
            reads += 1
            bad += doc["writer"] not in "ab" or len(doc["pad"]) != 20000
        except FileNotFoundError:
            continue
        except ValueError:
            bad += 1
    errs = [w.communicate()[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errs
    assert bad == 0 and reads > 10
    assert not list(tmp_path.glob(".*.tmp"))
