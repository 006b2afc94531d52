"""The thread rule (``reglab.threads``): the rule itself, what ``fit``/``fit_many``/the CLI pass to
torch, a busy core seen by the idle measurement, and numbers that do not depend on it."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab.engines.fused import unavailable as fused_unavailable
from reglab import threads as T
from reglab.training.callbacks import Callback


def _mlp(width=32):
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, 1), nn.Sigmoid())


class _Seen(Callback):
    """Records torch's thread count during training."""

    def __init__(self):
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(torch.get_num_threads())


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_rule():
    W = T.PARALLEL_WORK
    assert T.choose(W * 0.99, cap=8, idle=8.0) == 1          # small work: one thread, however idle
    assert T.choose(W * 100, cap=1, idle=8.0) == 1           # one core allowed
    assert T.choose(W * 1.0, cap=8, idle=8.0) == 2           # 1 + floor(W / W_PAR)
    assert T.choose(W * 3.5, cap=8, idle=8.0) == 4
    assert T.choose(W * 100, cap=2, idle=2.0) == 2           # capped by C
    assert T.choose(W * 100, cap=2, idle=1.1) == 1           # a busy core: never more than the idle ones
    assert T.choose(W * 100, cap=4, idle=0.2) == 1           # at least one
    assert T.choose(None, cap=4, idle=2.6) == 3              # unknown work: as many as idle, up to C
    assert T.choose(W * 100, cap=4, idle=None) == 4          # idle unknown (no /proc/stat)


def test_step_work_counts_the_forward_times_three():
    # forward of one example: 2*(2*32) + 2*(32*1) = 192 flops; x3 (backward), x20 (batch), x4 (models)
    assert T.step_work(_mlp(), torch.zeros(1, 2), batch_size=20, n_models=4) == 3 * 192 * 20 * 4
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    # conv: 2 * (6*6 outputs * 4 channels) * (3*3*1) = 2592; linear: 2 * 144 * 3 = 864
    assert T.step_work(conv, torch.zeros(1, 1, 8, 8), batch_size=1) == 3 * (2592 + 864)


def test_step_work_leaves_the_model_as_it_was():
    m = nn.Sequential(nn.Linear(2, 8), nn.Dropout(0.5), nn.Linear(8, 1))
    reglab.regularize(m, activity={"0": reglab.L1(0.1)})
    state = torch.get_rng_state()
    T.step_work(m, torch.ones(1, 2), batch_size=4)
    assert m.training and torch.equal(torch.get_rng_state(), state)   # mode kept, no mask drawn
    assert float(reglab.penalty(m)) == 0.0                              # the count left no activity term


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", 10**6])
def test_a_bad_thread_count_is_refused_before_training(bad):
    ds = reglab.datasets.blobs(random_state=0)
    m = _mlp()
    w = m[0].weight.detach().clone()
    with pytest.raises(ValueError, match=r"threads must be an int from 1 to 1024 or None .*threads=" + repr(bad).replace(".", r"\.")):
        reglab.fit(m, ds.x_train, ds.y_train, loss="binary_crossentropy", epochs=1, progress=False, threads=bad)
    assert torch.equal(m[0].weight, w)
    with pytest.raises(ValueError, match="threads must be an int from 1 to 1024"):
        reglab.fit_many(_mlp, ds.x_train, ds.y_train, seeds=[0], loss="binary_crossentropy", progress=False,
                        threads=bad)


def test_fit_uses_the_given_threads_and_restores_torchs(two_threads):
    ds = reglab.datasets.blobs(random_state=0)
    for threads, expect in ((1, 1), (2, 2), (None, 1)):   # None: the README's model is far below W_PAR
        cb = _Seen()
        reglab.fit(_mlp(), ds.x_train, ds.y_train, loss="binary_crossentropy", epochs=2, progress=False,
                   callbacks=[cb], threads=threads)
        assert cb.seen == [expect, expect]
        assert torch.get_num_threads() == 2


def test_fit_many_records_its_threads(two_threads):
    ds = reglab.datasets.blobs(random_state=0)
    r = reglab.fit_many(_mlp, ds.x_train, ds.y_train, seeds=range(3), loss="binary_crossentropy", progress=False)
    assert r.threads == 1 and torch.get_num_threads() == 2
    r = reglab.fit_many(_mlp, ds.x_train, ds.y_train, seeds=range(3), loss="binary_crossentropy", progress=False,
                        threads=2)
    assert r.threads == 2


def test_set_explicit_wins_over_the_rule(two_threads):
    ds = reglab.datasets.blobs(random_state=0)
    T.set_explicit(2)
    try:
        cb = _Seen()
        reglab.fit(_mlp(), ds.x_train, ds.y_train, loss="binary_crossentropy", epochs=1, progress=False, callbacks=[cb])
        assert cb.seen == [2]
        cb = _Seen()
        reglab.fit(_mlp(), ds.x_train, ds.y_train, loss="binary_crossentropy", epochs=1, progress=False,
                   callbacks=[cb], threads=1)   # an argument wins over the process-wide setting
        assert cb.seen == [1]
    finally:
        T.set_explicit(None)


SPIN = "import os, time\nos.sched_setaffinity(0, {%d})\nt = time.time()\nwhile time.time() - t < 20: pass\n"


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2
                    or not os.path.exists("/proc/stat"), reason="needs Linux and two usable cores")
def test_a_busy_core_gets_no_thread(two_threads):
    """A CPU-bound process on one of our cores: the idle measurement sees it, and large work that
    would get two threads on an idle machine gets one (OpenMP's threads would wait for it)."""
    cpu = sorted(os.sched_getaffinity(0))[0]
    spin = subprocess.Popen([sys.executable, "-c", SPIN % cpu])
    try:
        time.sleep(0.3)
        idle = T.idle_cores(0.3)
        assert idle <= len(os.sched_getaffinity(0)) - 0.7
        big = nn.Sequential(nn.Linear(2, 4096), nn.ReLU(), nn.Linear(4096, 1))
        assert T.step_work(big, torch.zeros(1, 2), 64, 50) >= 2 * T.PARALLEL_WORK
        if len(os.sched_getaffinity(0)) == 2:
            assert T.decide(None, big, torch.zeros(1, 2), 64, 50) == 1
    finally:
        spin.kill()
        spin.wait()


def test_per_worker_share():
    n = T.usable_cores()
    assert T.per_worker(1) == n and T.per_worker(n) == 1 and T.per_worker(4 * n) == 1


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dense_engine_numbers_do_not_depend_on_threads(dropout):
    """fit and fit_many on 1 and 2 threads: the same bits, and fit == fit_many on each."""
    ds = reglab.datasets.blobs(random_state=0)

    def build():
        return nn.Sequential(reglab.Dense(2, 32, activation="relu", kernel_regularizer=reglab.L2(1e-3),
                                          activity_regularizer=reglab.L1(1e-3)),
                             nn.Dropout(dropout), reglab.Dense(32, 1, activation="sigmoid"))

    runs = {}
    for t in (1, 2):
        r = reglab.fit_many(build, ds.x_train, ds.y_train, seeds=range(4), loss="binary_crossentropy", epochs=5,
                            batch_size=20, validation_data=(ds.x_test, ds.y_test), progress=False, threads=t)
        # both Dense engines (the fused one where a compiler builds it): no thread dependence
        assert r.engine == ("fused" if dropout == 0 and fused_unavailable() is None else "dense") and r.threads == t
        torch.manual_seed(2)
        h = reglab.fit(build(), ds.x_train, ds.y_train, loss="binary_crossentropy", epochs=5, batch_size=20,
                       validation_data=(ds.x_test, ds.y_test), seed=2, progress=False, threads=t)
        assert np.array_equal(h["loss"], r.histories[2]["loss"])
        assert np.array_equal(h["val_data_loss"], r.histories[2]["val_data_loss"])
        runs[t] = r
    for a, b in zip(runs[1].histories, runs[2].histories):
        assert np.array_equal(a["loss"], b["loss"]) and np.array_equal(a["val_data_loss"], b["val_data_loss"])
    for ma, mb in zip(runs[1].models, runs[2].models):
        for pa, pb in zip(ma.parameters(), mb.parameters()):
            assert torch.equal(pa, pb)
    assert np.isfinite(runs[1].histories[0]["loss"]).all()


def test_cli_threads_reach_every_run(tmp_path):
    """``reglab --threads 2 run`` and ``reglab run ... --threads 2`` (two workers): every run
    records 2 threads; without it the rule gives this tiny MLP one."""
    exp = tmp_path / "tiny.toml"
    exp.write_text('name = "tiny"\nseeds = 2\n[data]\nname = "blobs"\n[train]\nloss = "binary_crossentropy"\n'
                   'epochs = 2\nbatch_size = 50\n[[model.layers]]\nunits = 4\nactivation = "relu"\n'
                   '[[model.layers]]\nunits = 1\nactivation = "sigmoid"\nkernel_regularizer = {name = "L2", l2 = 0.01}\n')
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    for before, after, out, expect in ((["--threads", "2"], [], "a", 2), ([], ["--threads", "2"], "c", 2),
                                       ([], [], "b", 1)):
        subprocess.run([sys.executable, "-m", "reglab.cli", *before, "run", str(exp), "--out", str(tmp_path / out),
                        "--workers", "2", *after], check=True, env=env, capture_output=True, timeout=300)
        rows = [json.loads(p.read_text()) for p in (tmp_path / out / "runs").glob("*/*.json")]
        assert len(rows) == 4 and {r["threads"] for r in rows} == {expect}
