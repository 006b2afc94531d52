"""The fused Dense-stack engine (``reglab.engines.fused``): its terms against their Python
definitions and autograd, its numbers against the eager engine, its bits across fit/fit_many,
lanes, chunks and threads, failures and early stopping, and the fallback where no kernel builds."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab import activations, regularizers
from reglab.engines import choose_engine
from reglab.engines.fused import arch_of
from reglab.engines.fused.build import library, unavailable
from reglab.engines.fused.source import VERSION, Arch, source, term_order
from reglab.engines.fused.terms import ACTIVATIONS, DERIVS_NONNEG, LOSSES, NONNEG, PENALTIES
from reglab.losses import BinaryCrossentropy, MeanSquaredError

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=f"no fused kernel here: {unavailable()}")

L1, L2 = reglab.L1(0.001), reglab.L2(0.001)


def program6(width=8, depth=3):
    """The lecture's program 6, narrower: Dense(relu) layers with L2 kernels and biases and L1
    activity, a sigmoid output."""
    hidden = [dict(units=width, activation="relu", kernel_regularizer=L2, bias_regularizer=L2,
                   activity_regularizer=L1)] * depth
    return reglab.models.mlp(2, hidden + [dict(units=1, activation="sigmoid", kernel_regularizer=L2,
                                                bias_regularizer=L2)])


def blobs(n=90, seed=0):
    g = np.random.default_rng(seed)
    y = g.integers(0, 2, n)
    x = g.normal(size=(n, 2)) * 0.3 + y[:, None] * [0.6, 0.2]
    return x.astype("float32"), y.reshape(-1, 1).astype("float32")


X, Y = blobs()
XV, YV = blobs(40, seed=1)


def many(engine, seeds, epochs=3, build=program6, **kw):
    kw.setdefault("validation_data", (XV, YV))
    return reglab.fit_many(build, X, Y, seeds=seeds, loss="binary_crossentropy", optimizer="adam", epochs=epochs,
                           batch_size=16, progress=False, engine=engine, **kw)


def weights(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# ------------------------------------------------------------------ the terms


@pytest.fixture(scope="module")
def kernel():
    lib, why = library(source(arch_of(program6(), BinaryCrossentropy(), "adam")))
    assert lib is not None, why
    return lib


def _term(lib, name, *args, wide=False):
    """Term ``name`` of the kernel, element-wise on ``args`` (float32 vectors, or float64)."""
    k = term_order().index(name)
    if wide:
        args = [a.double().contiguous() for a in args] + [torch.zeros(1, dtype=torch.float64)] * (2 - len(args))
        out = torch.empty_like(args[0])
        assert lib.term_check64(k, out.numel(), args[0].data_ptr(), args[1].data_ptr(), out.data_ptr()) == 0
        return out
    lanes = lib.lanes()
    n = args[0].numel()
    pad = (-n) % lanes
    args = [torch.cat([a.float(), a.new_ones(pad).float() * 0.5]).contiguous() for a in args]
    args += [torch.zeros(1)] * (2 - len(args))
    out = torch.empty_like(args[0])
    assert lib.term_check32(k, out.numel(), args[0].data_ptr(), args[1].data_ptr(), out.data_ptr()) == 0
    return out[:n]


GRID = torch.cat([torch.linspace(-30, 30, 601), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 1e-7, 88.0, -87.0])])


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_value_and_derivative_match_reglab_and_autograd(kernel, name):
    fn = activations.get(name)
    z = GRID.clone().requires_grad_(True)
    y = fn(z)
    g = torch.linspace(-2, 2, z.numel())
    (dz,) = torch.autograd.grad(y, z, g)
    got_y = _term(kernel, f"act_{name}", GRID)
    got_dz = _term(kernel, f"dact_{name}", y.detach(), g)
    exact = name != "sigmoid"  # relu and linear exactly; the sigmoid's exp is the kernel's own
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=4e-7, atol=1e-30)
    torch.testing.assert_close(got_y, y.detach(), **tol)
    torch.testing.assert_close(got_dz, dz, **(dict(rtol=0, atol=0) if exact else dict(rtol=1e-6, atol=1e-12)))


@pytest.mark.parametrize("name", sorted(PENALTIES))
def test_penalty_terms_are_the_regularizers_own(kernel, name):
    reg = {"abs": regularizers.L1(1.0), "square": regularizers.L2(1.0)}[name]
    x = GRID.clone().requires_grad_(True)
    value = reg.compute(x, **reg.hparams())
    (grad,) = torch.autograd.grad(value, x)
    f = _term(kernel, f"pen_{name}", GRID)
    df = _term(kernel, f"dpen_{name}", GRID)
    assert torch.equal(f, PENALTIES[name].ref(GRID)) and torch.equal(df, PENALTIES[name].dref(GRID))
    torch.testing.assert_close(f.sum(), value.detach(), rtol=1e-6, atol=0)
    torch.testing.assert_close(df, grad, rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(DERIVS_NONNEG))
def test_a_derivatives_short_form_is_its_bits_on_outputs_never_below_zero(kernel, name):
    """``DERIVS_NONNEG``: on relu's and sigmoid's outputs (-0, +inf and NaN among them) the
    same bits as the full derivative."""
    z = torch.cat([GRID, torch.tensor([float("inf"), float("-inf"), float("nan")])])
    for act in sorted(NONNEG):
        y = _term(kernel, f"act_{act}", z)
        assert not (y < 0).any()
        full, short = _term(kernel, f"dpen_{name}", y), _term(kernel, f"dpen0_{name}", y)
        assert torch.equal(full.view(torch.int32), short.view(torch.int32)), act


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_losses_match_reglab_and_autograd(kernel, name):
    loss = {"binary_crossentropy": BinaryCrossentropy(), "mean_squared_error": MeanSquaredError()}[name]
    p = torch.cat([torch.linspace(1e-9, 1 - 1e-9, 401), torch.tensor([0.0, 1.0, 1e-7, 1 - 1e-7])])
    for target in (0.0, 1.0, 0.3):
        y = torch.full_like(p, target)
        want, dwant = loss.per_example_and_grad(p[:, None], y[:, None])
        got = _term(kernel, f"loss_{name}", p, y)
        dgot = _term(kernel, f"dloss_{name}", p, y)
        torch.testing.assert_close(got, want.reshape(-1), rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(dgot, dwant.reshape(-1), rtol=2e-6, atol=1e-6)
        inner = (p > 1e-6) & (p < 1 - 1e-6)  # autograd where the clip passes the gradient
        q = p[inner].clone().requires_grad_(True)
        (dq,) = torch.autograd.grad(loss.per_example(q[:, None], y[inner][:, None]).sum(), q)
        torch.testing.assert_close(dgot[inner], dq, rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_nan_output_has_a_nan_loss_and_derivative(kernel, name):
    """As torch's clamp and log: NaN in, NaN out (the kernel's own log once made NaN finite, so a
    model gone NaN trained on with a finite loss instead of failing)."""
    p = torch.full((8,), float("nan"))
    for target in (0.0, 1.0):
        y = torch.full_like(p, target)
        assert _term(kernel, f"loss_{name}", p, y).isnan().all()
        assert _term(kernel, f"dloss_{name}", p, y).isnan().all()


class _Term(torch.autograd.Function):
    """A kernel term (float64) whose backward is its declared derivative: ``gradcheck`` holds
    one against the other."""

    @staticmethod
    def forward(ctx, x, lib, kind, name, other):
        ctx.lib, ctx.kind, ctx.name, ctx.other = lib, kind, name, other
        if kind == "act":
            y = _term(lib, f"act_{name}", x, wide=True)
        elif kind == "pen":
            y = _term(lib, f"pen_{name}", x, wide=True)
        else:
            y = _term(lib, f"loss_{name}", x, other, wide=True)
        ctx.save_for_backward(x, y)
        return y

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        if ctx.kind == "act":
            return _term(ctx.lib, f"dact_{ctx.name}", y, g, wide=True), None, None, None, None
        if ctx.kind == "pen":
            return g * _term(ctx.lib, f"dpen_{ctx.name}", x, wide=True), None, None, None, None
        return g * _term(ctx.lib, f"dloss_{ctx.name}", x, ctx.other, wide=True), None, None, None, None


@pytest.mark.parametrize("kind, name", [("act", n) for n in ACTIVATIONS] + [("pen", n) for n in PENALTIES] +
                         [("loss", n) for n in LOSSES])
def test_every_term_derivative_passes_gradcheck_in_float64(kernel, kind, name):
    g = torch.Generator().manual_seed(0)
    if kind == "loss":
        x = torch.rand(24, generator=g, dtype=torch.float64) * 0.8 + 0.1
        other = torch.rand(24, generator=g, dtype=torch.float64)
    else:  # away from the kinks at 0 (relu, |x|), where no derivative exists
        x = (torch.rand(24, generator=g, dtype=torch.float64) + 0.1) * torch.tensor([1.0, -1.0]).repeat(12) * 3
        other = None
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: _Term.apply(t, kernel, kind, name, other), (x,))


def test_the_kernel_takes_nothing_from_the_c_library_math(kernel):
    """A model's bits do not depend on the C library: no single-precision libm function is
    linked, nor ``pow`` (the float64 ``exp``/``log`` serve only the float64 term checks)."""
    import re

    out = subprocess.run(["nm", "-D", "--undefined-only", kernel._name], capture_output=True, text=True).stdout
    names = {ln.split()[-1].split("@")[0] for ln in out.splitlines() if ln.strip()}
    assert not names & {"expf", "logf", "pow", "powf", "sqrtf", "tanhf", "exp2f", "sqrt"}, names
    assert not re.search(r"\b(std::)?(expf?|logf?)\(", source(arch_of(program6(), BinaryCrossentropy(), "adam")).replace(
        "v_exp(", "").replace("v_log(", "").replace("__builtin_exp(", "").replace("__builtin_log(", ""))


# ------------------------------------------------------------------ choosing it


def before_activation():
    """Keras's "activity before activation": a linear Dense with the activity penalty, then relu."""
    return reglab.models.mlp(2, [dict(units=4, activation="relu", activity_regularizer=L1,
                                      activity_before_activation=True), dict(units=1, activation="sigmoid")])


def test_chosen_for_supported_models_and_not_for_the_rest():
    x, y = torch.as_tensor(X[:2]), torch.as_tensor(Y[:2])
    bce = BinaryCrossentropy()
    assert choose_engine(program6(), bce, (x, y), n_models=4).kind == "fused"
    assert choose_engine(program6(), bce, (x, y), n_models=1).kind == "fused"
    dropout = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Dropout(0.2), nn.Linear(4, 1), nn.Sigmoid())
    tanh = reglab.models.mlp(2, [dict(units=4, activation="tanh"), dict(units=1, activation="sigmoid")])
    for model, opt, why in [(dropout, "adam", "op dropout"), (tanh, "adam", "activation 'tanh'"),
                            (program6(), "sgd", "Keras's Adam"),
                            (program6(), {"name": "adam", "weight_decay": 0.01}, "Keras's Adam"),
                            (program6().double(), "adam", "float32"),
                            (before_activation(), "adam", "not on a Dense layer's output")]:
        choice = choose_engine(model, bce, (x.to(next(model.parameters()).dtype), y), n_models=4, optimizer=opt)
        assert choice.kind == "dense", (why, choice)
        with pytest.raises(ValueError, match=f"engine='fused' cannot train this model: .*{why}"):
            choose_engine(model, bce, (x, y), n_models=4, optimizer=opt, engine="fused")


# ------------------------------------------------------------------ numbers


def test_one_epoch_agrees_with_the_eager_engine():
    fused, dense = many("fused", range(3), epochs=1), many("dense", range(3), epochs=1)
    assert fused.engine == "fused" and dense.engine == "dense"
    for a, b in zip(fused.histories, dense.histories):
        assert a.keys() == b.keys()
        for k in a.keys():
            assert abs(a[k][0] - b[k][0]) <= 1e-6 * max(1.0, abs(b[k][0])), k
        assert a.meta["engine"] == f"fused/{VERSION}" and "engine" not in b.meta
    for a, b in zip(fused.models, dense.models):
        assert (weights(a) - weights(b)).abs().max() <= 1e-6


def test_a_whole_run_drifts_from_the_eager_engine_no_more_than_the_eager_engine_from_float64():
    """Over 40 epochs each engine is float32 arithmetic in another order: the fused engine's
    distance from the eager one stays within the eager engine's own distance from the same math
    in float64 (weights and final validation loss, median over 4 models)."""
    def f64():
        return program6().double()

    seeds, epochs = range(4), 40
    fused, dense = many("fused", seeds, epochs), many("dense", seeds, epochs)
    wide = reglab.fit_many(f64, X.astype("float64"), Y.astype("float64"), seeds=seeds, loss="binary_crossentropy",
                           optimizer="adam", epochs=epochs, batch_size=16, progress=False, engine="dense",
                           validation_data=(XV.astype("float64"), YV.astype("float64")))

    def spread(a, b):
        w = [float((weights(m1).double() - weights(m2).double()).abs().max()) for m1, m2 in zip(a.models, b.models)]
        v = [abs(h1["val_loss"][-1] - h2["val_loss"][-1]) for h1, h2 in zip(a.histories, b.histories)]
        return np.median(w), np.median(v)

    (w_fd, v_fd), (w_d64, v_d64) = spread(fused, dense), spread(dense, wide)
    assert w_fd <= 2 * w_d64 and v_fd <= 2 * v_d64 + 1e-6, (w_fd, w_d64, v_fd, v_d64)


def test_a_models_bits_do_not_depend_on_fit_many_its_lane_or_the_threads():
    """``fit`` (one model in a chunk) and ``fit_many`` (the model in lane 9 of 11 or lane 6 of 9,
    chunk 1 or 0 with 8 lanes), on 1 and 2 threads: the same history and weights, bit for bit."""
    seed = 9
    torch.manual_seed(seed)
    model = program6()
    alone = reglab.fit(model, X, Y, loss="binary_crossentropy", optimizer="adam", epochs=3, batch_size=16,
                       validation_data=(XV, YV), progress=False, seed=seed)
    assert alone.meta["engine"] == f"fused/{VERSION}"
    threads = torch.get_num_threads()
    try:
        for n_threads, seeds in ((1, range(11)), (2, range(3, 12))):
            torch.set_num_threads(n_threads)
            res = many("auto", seeds)
            i = list(seeds).index(seed)
            assert res.engine == "fused"
            assert res.histories[i].history == alone.history
            assert torch.equal(weights(res.models[i]), weights(model))
    finally:
        torch.set_num_threads(threads)


def regression():
    return reglab.models.mlp(2, [dict(units=8, activation="relu"), dict(units=1)])


def test_a_diverging_model_fails_at_its_step_and_the_others_train_as_alone():
    """Model 1's sixth example overflows its output: its data loss is inf in the step that
    draws it, where the kernel freezes it (its weights stay the last finite ones)."""
    xs = [X.copy() for _ in range(3)]
    xs[1][5] = 3e38
    kw = dict(loss="mse", optimizer="adam", epochs=2, batch_size=16, progress=False, shuffle=False)
    res = reglab.fit_many(regression, xs, [Y] * 3, seeds=[0, 1, 2], **kw)
    assert res.engine == "fused" and list(res.failed) == [1]
    assert res.failed[1] == {"epoch": 0, "batch": 0, "value": float("inf")}
    assert len(res.histories[1]) == 0 and len(res.histories[0]) == 2
    torch.manual_seed(1)
    assert torch.equal(weights(res.models[1]), weights(regression()))  # frozen before its first step
    alone = reglab.fit_many(regression, X, Y, seeds=[2], **kw)
    assert torch.equal(weights(alone.models[0]), weights(res.models[2]))
    torch.manual_seed(1)
    model = regression()
    with pytest.raises(reglab.TrainingDiverged, match=r"at epoch 0 \(0-based\), batch 0: the data loss became inf"):
        reglab.fit(model, xs[1], Y, seed=1, **kw)
    torch.manual_seed(1)
    assert torch.equal(weights(model), weights(regression()))


def test_a_model_gone_nan_fails_at_its_step_as_on_the_eager_engine():
    """A model whose weights are NaN from the start: its data loss is NaN at epoch 0, batch 0, on
    the fused engine as on the eager one; the others train as alone."""
    def build(bad=0):
        model = program6()
        if bad:
            with torch.no_grad():
                model[0].weight[0, 0] = float("nan")
        return model

    runs = {e: many(e, [0, 1], epochs=2, build=build, grid=[{"bad": 0}, {"bad": 1}]) for e in ("auto", "dense")}
    assert runs["auto"].engine == "fused"
    for res in runs.values():
        assert list(res.failed) == [1, 3] and res.failed[1]["epoch"] == 0 and res.failed[1]["batch"] == 0
        assert math.isnan(res.failed[1]["value"]) and len(res.histories[1]) == 0 and len(res.histories[0]) == 2


def test_early_stopping_stops_and_restores_each_model_as_alone():
    stop = dict(monitor="val_loss", patience=1, min_delta=0.004, restore_best_weights=True)
    res = many("fused", range(6), epochs=12, callbacks=[reglab.EarlyStopping(**stop)])
    ref = many("dense", range(6), epochs=12, callbacks=[reglab.EarlyStopping(**stop)])
    stopped = [h.meta["stopped_epoch"] for h in res.histories]
    assert stopped == [h.meta["stopped_epoch"] for h in ref.histories] and any(stopped)
    for m, seed in zip(res.models, range(6)):
        alone = many("fused", [seed], epochs=12, callbacks=[reglab.EarlyStopping(**stop)])
        assert torch.equal(weights(alone.models[0]), weights(m))


# ------------------------------------------------------------------ without a compiler


def test_a_kernel_is_built_once_and_cached_across_processes(tmp_path):
    code = ("import time, reglab\n"
            "from reglab.engines.fused.build import library\n"
            "from reglab.engines.fused.source import Arch, source\n"
            "a = Arch((3, 5, 1), ('relu', 'sigmoid'), (), (), 'binary_crossentropy', True)\n"
            "t = time.perf_counter(); lib, why = library(source(a)); print(why, time.perf_counter() - t)\n")
    env = dict(os.environ, REGLAB_CACHE=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
            for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    assert [r.stdout.split()[0] for r in runs] == ["None", "None"]
    assert len(list((tmp_path / "fused").glob("*.so"))) == 1
    assert float(runs[1].stdout.split()[1]) < float(runs[0].stdout.split()[1])


def test_arch_declares_its_parameters_in_torch_order():
    a = Arch((3, 5, 2), ("relu", "linear"), (), (), "mean_squared_error", False)
    assert a.n_params == 3 * 5 + 5 + 5 * 2 + 2 and a.offsets() == [(0, 15), (20, 30)]


def test_runs_of_two_engines_are_not_mixed_in_one_experiments_results():
    from reglab.experiments.results import results_frame

    def row(seed, engine, meta):
        return {"experiment": "e", "seed": seed, "engine": engine, "history": {"meta": meta}, "metrics": {}}

    frame = results_frame([row(0, "fused", {"engine": "fused/1"}), row(1, "fused", {"engine": "fused/1"}),
                           row(0, "dense", {}) | {"experiment": "other"}])
    assert len(frame) == 3
    with pytest.raises(ValueError, match=r"experiment 'e': its runs were trained by different engines "
                                         r"\(dense: seeds \[1\]; fused/1: seeds \[0\]\)"):
        results_frame([row(0, "fused", {"engine": "fused/1"}), row(1, "dense", {})])
    # two grid points of a sweep (relu on the fused engine, tanh on the eager one) are two points
    relu, tanh = ({"sweep": {"model/layers/0/activation": a}} for a in ("relu", "tanh"))
    frame = results_frame([row(0, "fused", {"engine": "fused/1"}) | relu, row(1, "fused", {"engine": "fused/1"}) | relu,
                           row(0, "dense", {}) | tanh, row(1, "dense", {}) | tanh])
    assert len(frame) == 4
    with pytest.raises(ValueError, match=r"experiment 'e' at \{\"model/layers/0/activation\": \"tanh\"\}: its runs"):
        results_frame([row(0, "fused", {"engine": "fused/1"}) | tanh, row(1, "dense", {}) | tanh])


def test_validation_without_per_example_outputs_gives_the_same_sums():
    """Validation each epoch asks the kernel for sums only (no per-example buffer): the same
    bits as the pass that also writes each example's loss and correct."""
    from types import SimpleNamespace

    from reglab.engines.fused.stack import FusedStack

    models = []
    for s in range(11):  # two chunks, the second partly empty
        torch.manual_seed(s)
        models.append(program6())
    st = FusedStack(models, [reglab.losses.get("binary_crossentropy")] * 11, True, 2, 2)
    x, y = torch.as_tensor(XV), torch.as_tensor(YV)
    full = st.evaluate_sums(x, y, False)
    sums = st.evaluate_sums(x, y, False, per_example=False)
    assert sums[1] is None and sums[2] is None and full[1].shape == (11, len(XV))
    assert torch.equal(full[0], sums[0]) and torch.equal(full[3], sums[3])
    rows, names, acc = st.evaluation(SimpleNamespace(x=x, y=y, per_model=False, n=len(XV)))
    assert acc and torch.equal(rows[:2], full[0])
    assert torch.allclose(full[0][0] / len(XV), full[1].mean(1).double().float(), rtol=1e-5)
