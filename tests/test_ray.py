"""The study runner on Ray (``backend="ray"``, ``reglab run --backend ray``): the same runs as a
local run, a killed Ray worker retried with nothing lost or duplicated, interrupt and resume
across backends, and joining a cluster started with ``ray start --head``.

Every test starts its own local Ray (2 CPUs). Without Ray the tests skip, except under
``CI=true`` (``make test`` installs ``reglab[ray]``), where they fail."""

import importlib.util
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.test_faults import EXPERIMENT, _finished, _results, _wait_for

if importlib.util.find_spec("ray") is None:
    if os.environ.get("CI") == "true":
        raise RuntimeError("CI=true but Ray is not installed: make test installs reglab[ray]")
    pytest.skip("Ray is not installed (pip install 'reglab[ray]')", allow_module_level=True)

RAY_ENV = {**os.environ, "KERAS_BACKEND": "torch"}
CNN = """
name = "cnn"
seeds = 2
[data]
name = "sklearn.digits"
standardize = true
[split]
validation = 0.2
test = 0.2
[model]
builder = "{models}:build"
args = {{channels = 4, hidden = 16, dropout = 0.2}}
[train]
loss = {{name = "sparse_categorical_crossentropy", from_logits = true}}
epochs = 1
batch_size = 64
[regularize]
params = {{"@kernels" = {{name = "L2", l2 = 1e-3}}}}
[baseline]
args = {{dropout = 0.0}}
"""


def _files(folder: Path, epochs: int = 20) -> list[Path]:
    """Three MLP experiments (one shared baseline) on the Dense-stack engine and a CNN with
    dropout on the vmap path: 4 + 2 groups, 16 units."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (l2, dropout) in enumerate([(0.001, 0.0), (0.01, 0.0), (0.01, 0.2)]):
        p = folder / f"e{i}.toml"
        p.write_text(EXPERIMENT.format(name=f"e{i}", epochs=epochs, dropout=dropout, l2=l2))
        out.append(p)
    models = Path(__file__).resolve().parents[1] / "studies" / "digits_cnn" / "models.py"
    (folder / "cnn.toml").write_text(CNN.format(models=models))
    return out + [folder / "cnn.toml"]


def _units(files):
    from reglab.experiments.runner import plan_units
    from reglab.experiments.schema import load_experiments

    return plan_units(load_experiments([str(f) for f in files]))


def _cli(files, out: Path, *args: str, env=None, cwd=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reglab.cli", "--threads", "1", "run", *map(str, files),
                             "--out", str(out), "--no-progress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or RAY_ENV,
                            start_new_session=True, cwd=cwd)


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """The study trained locally (one process, one thread)."""
    from reglab.experiments.runner import execute

    root = tmp_path_factory.mktemp("ray")
    files = _files(root / "exp")
    info = execute(_units(files), root / "local", progress=False, threads=1)
    assert info["trained"] == 16
    return files, _results(root / "local")


def test_join_a_cluster_started_with_ray_start(tmp_path, local_reference):
    """``ray start --head`` (in another folder), then ``reglab run --backend ray --address auto``
    with relative paths: the runs land in the command's OUT (the tasks once resolved it from the
    cluster's folder and lost them) and equal the local ones."""
    files, ref = local_reference
    ray_bin = Path(sys.executable).parent / "ray"
    env = RAY_ENV
    (tmp_path / "head").mkdir()
    subprocess.run([str(ray_bin), "start", "--head", "--num-cpus", "2", "--include-dashboard", "false",
                    "--disable-usage-stats"], check=True, env=env, capture_output=True, timeout=120,
                   cwd=tmp_path / "head")
    try:
        work = files[0].parent.parent
        rel = [f.relative_to(work) for f in files]
        p = _cli(rel, Path("out"), "--backend", "ray", "--address", "auto", env=env, cwd=work)
        so, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        assert "16 runs trained, 0 already done" in so
        assert "ran on Ray: " in err and "6 task(s)" in err
        assert _results(work / "out") == ref
        assert not (tmp_path / "head" / "out").exists()
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_local_runs(tmp_path, local_reference, ray_cluster):
    """Every run's metrics and history equal, run for run, the same study trained locally (one
    thread per group on both); the tasks ran on this node."""
    from reglab.experiments.runner import execute

    files, ref = local_reference
    info = execute(_units(files), tmp_path / "out", progress=False, threads=1, backend="ray")
    assert info["trained"] == 16 and sum(info["where"].values()) == 6
    got = _results(tmp_path / "out")
    assert got.keys() == ref.keys()
    for rid in ref:
        assert got[rid] == ref[rid], rid
    # a second run finds everything done and trains nothing
    again = execute(_units(files), tmp_path / "out", progress=False, threads=1, backend="ray")
    assert again["trained"] == 0 and again["skipped"] == 16


def _ray_task_pids() -> list[int]:
    """Ray workers now running a reglab task (Ray titles a busy worker ``ray::<function>``)."""
    pids = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read()
            except OSError:
                continue
            if cmd.startswith(b"ray::_ray_task"):
                pids.append(int(pid))
    return pids


def test_a_killed_worker_is_retried_and_nothing_is_lost_or_duplicated(tmp_path, local_reference, ray_cluster):
    from reglab.experiments.runner import execute

    files, ref = local_reference
    killed = []

    def killer():
        t0 = time.monotonic()
        while not killed and time.monotonic() - t0 < 120:
            pids = _ray_task_pids()
            if pids:
                time.sleep(0.3)  # mid-task
                try:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                except ProcessLookupError:
                    continue
            time.sleep(0.02)

    th = threading.Thread(target=killer)
    th.start()
    info = execute(_units(files), tmp_path / "out", progress=False, threads=1, backend="ray")
    th.join()
    assert killed, "no Ray task was caught running"
    assert info["trained"] == 16
    assert _results(tmp_path / "out") == ref
    jsons = sorted(p.name for p in (tmp_path / "out").glob("runs/*/*.json"))
    assert len(jsons) == len(set(jsons)) == 16
    assert not list((tmp_path / "out").glob("runs/*/.*.tmp"))


@pytest.mark.parametrize("first,then", [("local", "ray"), ("ray", "local")])
def test_interrupted_on_one_backend_resumed_on_the_other(tmp_path, local_reference, first, then):
    """Ctrl-C once the first runs exist: exit 130, what finished is kept and right; the other
    backend trains only the rest, and the end equals an uninterrupted run."""
    files, ref = local_reference
    out = tmp_path / "out"
    args = ("--backend", "ray") if first == "ray" else ("--workers", "1")
    p = _cli(files, out, *args)
    _wait_for(lambda: _finished(out) >= 1 or p.poll() is not None, timeout=180)
    assert p.poll() is None, "the run ended before it could be interrupted"
    os.kill(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and "interrupted:" in err, err
    assert "Traceback" not in err and "InvalidStateError" not in err, err
    kept = _results(out)
    assert 0 < len(kept) < 16
    for rid, row in kept.items():
        assert ref[rid] == row
    args = ("--backend", "ray") if then == "ray" else ("--workers", "1")
    q = _cli(files, out, *args)
    so, err = q.communicate(timeout=300)
    assert q.returncode == 0, err
    assert f"{16 - len(kept)} runs trained, {len(kept)} already done" in so
    assert _results(out) == ref


def test_a_task_larger_than_the_cluster_is_refused(tmp_path, local_reference, ray_cluster):
    from reglab.experiments.runner import execute

    files, _ = local_reference
    with pytest.raises(ValueError, match=r"each Ray task asks for 3 CPU\(s\) \(--threads\) but the cluster has 2"):
        execute(_units(files), tmp_path / "out", progress=False, threads=3, backend="ray")
    assert not list(tmp_path.glob("out/runs/*/*.json"))


def test_a_task_asks_ray_for_its_gpu_share(tmp_path):
    """``--gpus-per-task 0.5``: each task declares num_gpus 0.5, so Ray packs two tasks onto each
    GPU and gives a task its GPU (``ray.get_gpu_ids``). On this CPU machine the cluster declares
    one logical GPU: Ray's scheduling is real, the GPU is not (``tests/test_cuda.py`` trains on a
    real one where it is lent)."""
    import ray

    from reglab.experiments.ray_backend import RayBackendError, RayPool

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        pool = RayPool(None, 1, 1, gpus_per_task=0.5)
        assert pool.slots == 2 and pool.gpus == 0.5
        assert [f.result(timeout=120) for f in [pool.submit(ray.get_gpu_ids) for _ in range(2)]] == [[0], [0]]
        with pytest.raises(RayBackendError, match=r"each Ray task asks for 2 GPU\(s\) \(--gpus-per-task\) but the "
                                                  r"cluster has 1"):
            RayPool(None, 1, 1, gpus_per_task=2)
        plain = RayPool(None, 1, 1)
        assert plain.submit(ray.get_gpu_ids).result(timeout=120) == []
    finally:
        ray.shutdown()


def test_a_gpu_share_on_a_cluster_without_gpus_is_refused_before_training(tmp_path, local_reference, ray_cluster):
    from reglab.experiments.devices import place
    from reglab.experiments.runner import execute, plan_units
    from reglab.experiments.schema import load_experiments

    files, _ = local_reference
    specs = place(load_experiments([str(files[0])]), None, 0.5)
    assert specs[0].config["train"]["device"] == "cuda"
    with pytest.raises(ValueError, match=r"each Ray task asks for 0.5 GPU\(s\) \(--gpus-per-task\) but the cluster "
                                         r"has 0"):
        execute(plan_units(specs), tmp_path / "out", progress=False, threads=1, backend="ray", gpus_per_task=0.5)
    assert not list(tmp_path.glob("out/runs/*/*.json"))
