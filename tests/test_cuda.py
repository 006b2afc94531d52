"""The cuda path (skipped where no GPU is present; run on a lent GPU machine)."""

import numpy as np
import pytest
import torch

import reglab
from reglab.diagnostics import evaluate, sparsity

from .lecture import R_LIST, blobs, lecture_layers

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def build(program=6, dtype=torch.float64):
    def make():
        model = reglab.models.mlp(2, [dict(spec, kernel_constraint=reglab.MaxNorm(3.0)) for spec in
                                      lecture_layers(program)]).to(dtype)
        if program == 1:
            return model, reglab.RegularizedLoss("log_eps_binary_crossentropy", model, R_LIST, strength=0.001)
        return model
    return make


@pytest.mark.parametrize("program", [1, 6, 7])
def test_fit_on_cuda_matches_cpu(program):
    xtr, ytr, xte, yte = blobs(0)
    hs = {}
    for dev in ("cpu", "cuda"):
        torch.manual_seed(0)
        out = build(program)()
        model, loss = out if isinstance(out, tuple) else (out, "binary_crossentropy")
        if dev == "cuda" and isinstance(loss, reglab.RegularizedLoss):
            model.to("cuda")
            loss = reglab.RegularizedLoss("log_eps_binary_crossentropy", model, R_LIST, strength=0.001)
        hs[dev] = reglab.fit(model, xtr, ytr, loss=loss, epochs=5, batch_size=20, validation_data=(xte, yte), seed=1,
                             device=dev, progress=False)
        assert next(model.parameters()).device.type == dev
        if dev == "cuda":
            res = evaluate(model, xte, yte)
            assert 0 <= res["accuracy"] <= 1
            assert sparsity(model, xte, ["4"])["layers"]["4"]["units"] == 32
    for k in hs["cpu"].keys():
        np.testing.assert_allclose(hs["cuda"][k], hs["cpu"][k], rtol=1e-6, atol=1e-9, err_msg=k)


def test_fit_many_on_cuda_matches_fit_on_cuda():
    xtr, ytr, xte, yte = blobs(0)
    res = reglab.fit_many(build(6), xtr, ytr, seeds=[1, 2, 3], loss="binary_crossentropy", epochs=5, batch_size=20,
                          validation_data=(xte, yte), device="cuda", progress=False)
    for i, s in enumerate([1, 2, 3]):
        torch.manual_seed(s)
        m = build(6)().to("cuda")
        h = reglab.fit(m, xtr, ytr, loss="binary_crossentropy", epochs=5, batch_size=20, validation_data=(xte, yte),
                       seed=s, progress=False)
        for k in h.keys():
            np.testing.assert_allclose(res.histories[i][k], h[k], rtol=1e-6, atol=1e-9, err_msg=k)
        assert next(res.models[i].parameters()).device.type == "cuda"
        assert float(res.models[i][0].weight.norm(dim=1).max()) <= 3.0 + 1e-6


def test_penalties_and_constraints_on_cuda():
    d = reglab.Dense(4, 3, kernel_regularizer=reglab.OrthogonalRegularizer(0.1), activity_regularizer="l1",
                     kernel_constraint="unit_norm").cuda()
    d(torch.randn(5, 4, device="cuda"))
    p = reglab.penalty(d)
    assert p.device.type == "cuda" and p.requires_grad
    opt = reglab.optimizers.get("adam", d.parameters())
    p.backward()
    opt.step()
    torch.testing.assert_close(d.weight.norm(dim=1), torch.ones(3, device="cuda"), rtol=1e-5, atol=1e-5)


def test_the_loop_engine_on_cuda_trains_each_model_as_fit_does():
    """A GRU and attention with dropout (vmap cannot give each model its own draws on a GPU):
    the per-model loop, each model's CUDA draws from its own state, equal to fit on CUDA."""
    from .test_engines import SPARSE, Attention, Recurrent, sequences

    x, y = sequences()
    for build in (lambda: Recurrent("GRU"), Attention):
        res = reglab.fit_many(build, x, y, seeds=[0, 1], loss=SPARSE, epochs=2, batch_size=16, device="cuda",
                              progress=False, threads=1)
        assert res.engine == "loop"
        for i, s in enumerate([0, 1]):
            torch.manual_seed(s)
            m = build().to("cuda")
            h = reglab.fit(m, x, y, loss=SPARSE, epochs=2, batch_size=16, seed=s, progress=False, threads=1)
            assert res.histories[i].history == h.history
            assert next(res.models[i].parameters()).device.type == "cuda"


def _runs(out):
    import json

    return [json.loads(f.read_text()) for f in sorted((out / "runs").glob("*/*.json"))]


def test_a_study_trains_on_the_gpu_records_it_and_keeps_it_apart_from_the_cpu(tmp_path):
    """``reglab run --device cuda``: every run (the baseline's too) says it trained on the GPU
    and names it; a CPU run of the same file is another run, trained again, never mixed in."""
    from click.testing import CliRunner

    from reglab.cli import main

    from .test_experiments import TINY, write

    p = write(tmp_path, TINY)
    out = tmp_path / "out"
    args = ["run", str(p), "--out", str(out), "--no-progress", "--workers", "1"]
    res = CliRunner().invoke(main, args + ["--device", "cuda"])
    assert res.exit_code == 0, res.output
    rows = _runs(out)
    assert len(rows) == 4
    assert {r["device"] for r in rows} == {f"cuda:{torch.cuda.current_device()}"}
    assert {r["device_name"] for r in rows} == {torch.cuda.get_device_name()}
    res = CliRunner().invoke(main, args + ["--device", "cpu"])
    assert res.exit_code == 0 and "4 runs trained, 0 already done" in res.output
    from reglab.experiments.runner import load_runs

    assert len(_runs(out)) == 8  # both kept on disk
    assert {r["device"] for r in load_runs(out)} == {"cpu"}  # the tables hold the runs of the files as last run


def test_a_study_on_ray_with_a_gpu_share_per_task(tmp_path):
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed")
    from .test_experiments import TINY, write

    p = write(tmp_path, TINY)
    res = subprocess.run([sys.executable, "-m", "reglab.cli", "--threads", "1", "run", str(p), "--out",
                          str(tmp_path / "out"), "--no-progress", "--backend", "ray", "--gpus-per-task", "0.5"],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert {r["device"] for r in _runs(tmp_path / "out")} == {"cuda:0"}
