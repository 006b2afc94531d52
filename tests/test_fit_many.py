"""fit_many equals separate fit runs, model by model (the lecture's programs 1-7 and a max-norm variant)."""

import numpy as np
import pytest
import torch

import reglab
from reglab import EarlyStopping, fit, fit_many

from .lecture import SCHEDULES, blobs, lecture_layers, reglab_program

EPOCHS = {1: 200, 2: 200, 3: 100, 4: 200, 5: 200, 6: 200, 7: 100}  # the lecture's full programs


def program_builder(program, dtype, maxnorm=False):
    def build():
        layers = lecture_layers(program)
        if maxnorm:
            layers = [dict(spec, kernel_constraint=reglab.MaxNorm(1.0)) for spec in layers]
        model = reglab.models.mlp(2, layers).to(dtype)
        if program == 1:
            _, loss = reglab_program(1, dtype=dtype)
            from .lecture import R_LIST
            loss = reglab.RegularizedLoss(reglab.losses.LogEpsBinaryCrossentropy(1e-6), model, R_LIST, strength=0.001)
            return model, loss
        return model
    return build


def separate(build, seed, program, epochs, data, loss="binary_crossentropy"):
    torch.manual_seed(seed)
    out = build()
    model, lo = out if isinstance(out, tuple) else (out, loss)
    lr, bs = SCHEDULES[program]
    xtr, ytr, xte, yte = data
    return fit(model, xtr, ytr, loss=lo, optimizer={"name": "adam", "learning_rate": lr}, epochs=epochs, batch_size=bs,
               validation_data=(xte, yte), seed=seed, progress=False), model


def assert_histories_close(a, b, rtol):
    assert a.keys() == b.keys()
    for k in a.keys():
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-300, err_msg=k)


# Programs 1 and 2 put L1 penalties on weights (kinks at 0) and program 2 trains at lr 0.005: their
# dynamics are chaotic, and a last-bit difference at epoch 1 (e.g. from BLAS rounding a width-1
# layer differently for one matrix than for a batch) grows to 1e-3 by epoch 200. The Dense-stack
# engine computes every model's numbers with the same kernels whatever M is, on matrices at the
# same alignment (MKL's rounding depends on it on AVX2 EPYCs), so the full programs must agree to
# 1e-9 (in fact the weights come out bit-identical, checked too). Three seeds make M = 3, an odd
# stack size that no SIMD width divides; the last batch (225 = 11 x 20 + 5, 4 x 50 + 25) is odd.
@pytest.mark.parametrize("program", [1, 2, 3, 4, 5, 6, 7])
def test_equivalence_float64_full_program(program):
    data = blobs(0)
    build = program_builder(program, torch.float64)
    lr, bs = SCHEDULES[program]
    seeds = [11, 12, 13]
    epochs = EPOCHS[program]
    res = fit_many(build, data[0], data[1], seeds=seeds, loss="binary_crossentropy",
                   optimizer={"name": "adam", "learning_rate": lr}, epochs=epochs, batch_size=bs,
                   validation_data=(data[2], data[3]), progress=False)
    assert len(res.histories) == 3 and not res.failed and res.engine == "dense"
    for i, s in enumerate(seeds[:2]):
        h, model = separate(build, s, program, epochs, data)
        assert len(h) == epochs
        assert_histories_close(res.histories[i], h, 1e-9)
        for (n, p), q in zip(model.named_parameters(), res.models[i].parameters()):
            assert torch.equal(p.detach(), q.detach()), n


def test_equivalence_float64_on_two_threads():
    """As above on 2 threads (where MKL splits a lone product across threads but not a batch's
    matrices), program 6 over 20 epochs: model 1 of 3 and the same model alone, bit for bit."""
    program, epochs = 6, 20
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        data = blobs(0)
        build = program_builder(program, torch.float64)
        lr, bs = SCHEDULES[program]
        res = fit_many(build, data[0], data[1], seeds=[11, 12, 13], loss="binary_crossentropy",
                       optimizer={"name": "adam", "learning_rate": lr}, epochs=epochs, batch_size=bs,
                       validation_data=(data[2], data[3]), progress=False)
        h, model = separate(build, 12, program, epochs, data)
    finally:
        torch.set_num_threads(before)
    assert res.engine == "dense"
    assert_histories_close(res.histories[1], h, 1e-9)
    for (n, p), q in zip(model.named_parameters(), res.models[1].parameters()):
        assert torch.equal(p.detach(), q.detach()), n


def test_dense_engine_matches_autograd_over_a_program():
    """The hand-written backward pass against autograd (fit with an optimizer instance takes the
    autograd path): program 6 (all kinds of penalties) and 7 (KL) in float64 over 5 epochs."""
    data = blobs(2)
    for program in (1, 5, 6, 7):
        lr, bs = SCHEDULES[program]
        out = []
        for instance in (False, True):
            model, loss = reglab_program(program, seed=3)
            opt = {"name": "adam", "learning_rate": lr}
            if instance:
                opt = reglab.optimizers.get(opt, model.parameters())
            h = fit(model, data[0], data[1], loss=loss, optimizer=opt, epochs=5, batch_size=bs,
                    validation_data=(data[2], data[3]), seed=4, progress=False)
            out.append((h, [p.detach().clone() for p in model.parameters()]))
        assert_histories_close(out[0][0], out[1][0], 1e-12)
        for a, b in zip(out[0][1], out[1][1]):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("program", [1, 2, 3, 4, 5, 6, 7])
def test_equivalence_float32_five_epochs(program):
    data = blobs(1)
    build = program_builder(program, torch.float32)
    lr, bs = SCHEDULES[program]
    res = fit_many(build, data[0], data[1], seeds=[3, 4, 5], loss="binary_crossentropy",
                   optimizer={"name": "adam", "learning_rate": lr}, epochs=5, batch_size=bs,
                   validation_data=(data[2], data[3]), progress=False)
    for i, s in enumerate([3, 4, 5]):
        h, _ = separate(build, s, program, 5, data)
        assert_histories_close(res.histories[i], h, 1e-4)


def test_equivalence_with_max_norm_constraint():
    data = blobs(2)
    build = program_builder(6, torch.float64, maxnorm=True)
    res = fit_many(build, data[0], data[1], seeds=[1, 2], loss="binary_crossentropy",
                   optimizer={"name": "adam", "learning_rate": 0.01}, epochs=20, batch_size=20,
                   validation_data=(data[2], data[3]), progress=False)
    for i, s in enumerate([1, 2]):
        torch.manual_seed(s)
        m = build()
        h = fit(m, data[0], data[1], loss="binary_crossentropy", optimizer={"name": "adam", "learning_rate": 0.01},
                epochs=20, batch_size=20, validation_data=(data[2], data[3]), seed=s, progress=False)
        assert_histories_close(res.histories[i], h, 1e-9)
        assert float(res.models[i][0].weight.norm(dim=1).max()) <= 1.0 + 1e-6


def test_grid_over_strengths_in_one_run():
    data = blobs(0)

    def build(lam):
        return reglab.models.mlp(2, [dict(units=16, activation="relu", kernel_regularizer=reglab.L2(lam)),
                                     dict(units=1, activation="sigmoid")]).double()

    grid = [{"lam": 1e-4}, {"lam": 1e-1}]
    res = fit_many(build, data[0], data[1], seeds=[0, 1], grid=grid, loss="binary_crossentropy", epochs=10,
                   batch_size=25, validation_data=(data[2], data[3]), progress=False)
    assert [c for c in res.configs] == [{"seed": 0, "lam": 1e-4}, {"seed": 0, "lam": 1e-1}, {"seed": 1, "lam": 1e-4},
                                        {"seed": 1, "lam": 1e-1}]
    for i, cfg in enumerate(res.configs):
        torch.manual_seed(cfg["seed"])
        m = build(cfg["lam"])
        h = fit(m, data[0], data[1], loss="binary_crossentropy", epochs=10, batch_size=25,
                validation_data=(data[2], data[3]), seed=cfg["seed"], progress=False)
        assert_histories_close(res.histories[i], h, 1e-9)
    assert res.histories[1]["penalty"][-1] > 10 * res.histories[0]["penalty"][-1]


def test_per_model_data_and_chunking_give_identical_results():
    sets = [blobs(s) for s in (5, 6, 7)]
    build = program_builder(4, torch.float64)
    kw = dict(seeds=[5, 6, 7], loss="binary_crossentropy", epochs=3, batch_size=20, progress=False,
              validation_data=([d[2] for d in sets], [d[3] for d in sets]))
    whole = fit_many(build, [d[0] for d in sets], [d[1] for d in sets], **kw)
    chunked = fit_many(build, [d[0] for d in sets], [d[1] for d in sets], memory_budget=1, **kw)
    assert chunked.chunks == 3 and whole.chunks == 1
    for a, b in zip(whole.histories, chunked.histories):
        assert_histories_close(a, b, 1e-12)
    h, _ = separate(build, 6, 4, 3, sets[1])
    assert_histories_close(whole.histories[1], h, 1e-9)


def test_early_stopping_per_model_and_divergence_isolated():
    data = blobs(0)

    def build(lr_scale):
        return reglab.models.mlp(2, [dict(units=8, activation="relu"), dict(units=1)])

    # model 1 gets targets so large that its float32 loss overflows; the others must be unaffected
    ys = [data[1], data[1] * 1e20 + 1e20, data[1]]
    res = fit_many(build, [data[0]] * 3, ys, seeds=[0, 1, 2], grid=[{"lr_scale": 1}], loss="mse",
                   optimizer={"name": "sgd", "learning_rate": 0.5}, epochs=30, batch_size=25,
                   validation_data=([data[2]] * 3, [data[3], data[3] * 1e20 + 1e20, data[3]]),
                   callbacks=[EarlyStopping(patience=2, restore_best_weights=True)], progress=False)
    assert set(res.failed) == {1}
    assert res.failed[1]["epoch"] >= 0
    assert all(torch.isfinite(p).all() for p in res.models[1].parameters())  # frozen at its last finite weights
    for i in (0, 2):
        torch.manual_seed(i)
        m = build(1)
        h = fit(m, data[0], data[1], loss="mse", optimizer={"name": "sgd", "learning_rate": 0.5}, epochs=30,
                batch_size=25, validation_data=(data[2], data[3]), seed=i,
                callbacks=[EarlyStopping(patience=2, restore_best_weights=True)], progress=False)
        assert_histories_close(res.histories[i], h, 1e-5)
        assert res.histories[i].meta["best_epoch"] == h.meta["best_epoch"]
        assert len(res.histories[i]) == len(h) < 30  # stopped early, at the same epoch
        for p, q in zip(m.parameters(), res.models[i].parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_fit_many_rejects_an_optimizer_instance_and_mixed_architectures():
    data = blobs(0)
    model = reglab.models.mlp(2, [dict(units=1)])
    with pytest.raises(ValueError, match="an optimizer instance is bound to one model"):
        fit_many(lambda: model, data[0], data[1], seeds=[0], loss="mse", optimizer=torch.optim.SGD(model.parameters(), 0.1))

    def build(kind):
        reg = reglab.L2(0.1) if kind == "l2" else reglab.L1(0.1)
        return reglab.models.mlp(2, [dict(units=1, kernel_regularizer=reg)])

    with pytest.raises(ValueError, match=r"penalty source '0.weight': model 1 has L1\(l1=0.1\), model 0 has L2\(l2=0.1\)"):
        fit_many(build, data[0], data[1], seeds=[0], grid=[{"kind": "l2"}, {"kind": "l1"}], loss="mse", progress=False)


def test_fit_many_names_the_grid_points_whose_architectures_differ():
    data = blobs(0)

    def build(width=4):
        return torch.nn.Sequential(torch.nn.Linear(2, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))

    with pytest.raises(ValueError, match=r"the model of \{'seed': 0, 'width': 8\} has \('0.weight', \(8, 2\)\) where "
                                         r"the model of \{'seed': 0, 'width': 4\} has \('0.weight', \(4, 2\)\)"):
        fit_many(build, data[0], data[1], seeds=[0], grid=[{"width": 4}, {"width": 8}], loss="mse", progress=False)


def test_torch_operations_per_step_do_not_depend_on_m():
    """Vectorized for real: one epoch of M = 2 and of M = 6 models issue the same torch operations
    (only the per-model shuffling permutations, drawn once per epoch, scale with M)."""
    from torch.profiler import ProfilerActivity, profile

    data = blobs(0)
    build = program_builder(6, torch.float32)
    counts = {}
    for m in (2, 6):
        fit_many(build, data[0], data[1], seeds=range(m), loss="binary_crossentropy", epochs=1, batch_size=20,
                 progress=False, engine="dense")  # warm-up (the eager engine: the fused one is one call an epoch)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fit_many(build, data[0], data[1], seeds=range(m), loss="binary_crossentropy", epochs=1, batch_size=20,
                     progress=False, engine="dense")
        ev = {e.key: e.count for e in prof.key_averages() if e.key.startswith("aten::")}
        counts[m] = ev
    train_ops = {"aten::bmm", "aten::addmm", "aten::linear", "aten::_fused_adamw_", "aten::relu", "aten::sigmoid"}
    seen = {k for k in counts[2] if k in train_ops}
    assert "aten::_fused_adamw_" in seen and len(seen) >= 3
    for k in seen:
        assert counts[2][k] == counts[6][k], (k, counts[2][k], counts[6][k])


def test_fit_many_rejects_differing_constraints():
    data = blobs(0)

    def build(c):
        return reglab.models.mlp(2, [dict(units=2, kernel_constraint=reglab.MaxNorm(c)), dict(units=1)])

    with pytest.raises(ValueError, match=r"model 1 has constraints .* models trained together share their constraints"):
        fit_many(build, data[0], data[1], seeds=[0], grid=[{"c": 1.0}, {"c": 2.0}], loss="mse", progress=False)


@pytest.mark.parametrize("loss, out_act", [("binary_crossentropy", "sigmoid"), ("log_eps_binary_crossentropy", "sigmoid"),
                                           ("sparse_categorical_crossentropy", "softmax"),
                                           ("categorical_crossentropy", "softmax"), ("mse", None), ("mae", None)])
def test_a_diverging_model_fails_alone_for_every_loss(loss, out_act):
    """A strength of 1e30 under SGD diverges; its group's healthy models train on, equal to
    training them alone (torch's BCE kernel refused the NaN and took the whole group down)."""
    import reglab

    ds = reglab.datasets.blobs(0, n_samples=80)
    y = ds.y_train
    units = 1
    if loss == "sparse_categorical_crossentropy":
        y, units = ds.y_train.reshape(-1).astype(np.int64), 2
    elif loss == "categorical_crossentropy":
        y, units = np.eye(2, dtype=np.float32)[ds.y_train.reshape(-1).astype(int)], 2

    def build(lam):
        return torch.nn.Sequential(reglab.Dense(2, 8, activation="relu", kernel_regularizer=reglab.L2(lam)),
                                   reglab.Dense(8, units, activation=out_act))

    kw = dict(loss=loss, optimizer={"name": "sgd", "learning_rate": 0.1}, epochs=3, batch_size=20, progress=False)
    res = reglab.fit_many(build, ds.x_train, y, seeds=[0, 1], grid=[{"lam": 1e-3}, {"lam": 1e30}], **kw)
    assert sorted(res.failed) == [1, 3]
    alone = reglab.fit_many(build, ds.x_train, y, seeds=[1], grid=[{"lam": 1e-3}], **kw)
    np.testing.assert_allclose(res.histories[2]["loss"], alone.histories[0]["loss"], rtol=1e-6)  # float32 sums
    torch.manual_seed(0)
    m = build(1e-3)
    with pytest.raises(reglab.TrainingDiverged):
        reglab.fit(m, ds.x_train, y, **{**kw, "optimizer": {"name": "sgd", "learning_rate": 1e12}, "epochs": 5})


@pytest.mark.parametrize("seeds,grid", [([0, 1, 2, 3], [{"l2": 1e-4}, {"l2": 3e-2}]), ([5, 1], [{"l2": 1e-4}])])
def test_stopped_models_leave_the_stack_and_the_others_train_on_bit_for_bit(monkeypatch, seeds, grid):
    # 8 (or 2) models with their own data, dropout, an L2 strength each and early stopping with restored
    # best weights stop at different epochs; once a quarter of the stack has stopped the engine
    # goes on with the others' rows only (DenseStack.keep). Each model must still equal `fit` of
    # it alone, bit for bit, history and weights, and the stopped ones keep their best weights.
    from reglab.vectorized.dense import DenseStack

    kept = []
    real_keep = DenseStack.keep

    def spy(self, rows, snap=None):
        kept.append((self.n_models, len(rows)))
        return real_keep(self, rows, snap)

    monkeypatch.setattr(DenseStack, "keep", spy)
    M = len(seeds) * len(grid)
    sets = [blobs(s) for s in range(M)]

    def build(l2=0.0):
        return reglab.models.mlp(2, [dict(units=16, activation="relu", kernel_regularizer=reglab.L2(l2), dropout=0.2),
                                     dict(units=8, activation="relu"), dict(units=1, activation="sigmoid")])

    stopper = dict(patience=3, restore_best_weights=True, start_from_epoch=2)
    common = dict(loss="binary_crossentropy", optimizer={"name": "adam", "learning_rate": 0.01}, epochs=60,
                  batch_size=32, progress=False)
    res = fit_many(build, [d[0] for d in sets], [d[1] for d in sets], seeds=seeds, grid=grid,
                   validation_data=([d[2] for d in sets], [d[3] for d in sets]),
                   callbacks=[EarlyStopping(**stopper)], threads=1, **common)
    assert res.engine == "dense"
    assert kept and kept[0][0] == M and all(n > k for n, k in kept)  # rows dropped (down to one model with 2)
    runs = [len(h) for h in res.histories]
    assert min(runs) < max(runs) <= 60
    for i, (cfg, h, m) in enumerate(zip(res.configs, res.histories, res.models)):
        torch.manual_seed(cfg["seed"])
        alone = build(cfg["l2"])
        ha = fit(alone, sets[i][0], sets[i][1], validation_data=(sets[i][2], sets[i][3]), seed=cfg["seed"],
                 callbacks=[EarlyStopping(**stopper)], threads=1, **common)
        assert h.keys() == ha.keys() and len(h) == len(ha), i
        for k in h.keys():
            np.testing.assert_array_equal(h[k], ha[k], err_msg=f"model {i}: {k}")
        assert h.meta["best_epoch"] == ha.meta["best_epoch"] and h.meta["stopped_epoch"] == ha.meta["stopped_epoch"]
        for p, q in zip(alone.parameters(), m.parameters()):
            np.testing.assert_array_equal(p.detach().numpy(), q.detach().numpy(), err_msg=f"model {i}")


def test_dropping_rows_keeps_the_stacks_own_numbers(monkeypatch):
    # the same group with and without dropping stopped models' rows: equal bit for bit, also where
    # the validation pass depends on the stack's size (one pass or batch by batch: 8 models x
    # 18,000 points x 32 units is past eval_batches' limit, 6 models are not); and a stack whose
    # dropout masks come from one generator for all models (CUDA) keeps its rows
    from reglab.vectorized.dense import DenseStack

    rng = np.random.default_rng(0)
    xv = rng.normal(size=(18_000, 2)).astype(np.float32)
    yv = (xv.sum(1) > 0).astype(np.float32)[:, None]
    sets = [blobs(s) for s in range(8)]

    def build():
        return reglab.models.mlp(2, [dict(units=32, activation="relu"), dict(units=1, activation="sigmoid")])

    def train():
        return fit_many(build, [d[0] for d in sets], [d[1] for d in sets], seeds=range(8), validation_data=(xv, yv),
                        loss="binary_crossentropy", optimizer={"name": "adam", "learning_rate": 0.02}, epochs=25,
                        batch_size=64, callbacks=[EarlyStopping(patience=2, min_delta=1e-3)], threads=1, progress=False,
                        engine="dense")

    dropped = []
    real_keep = DenseStack.keep
    monkeypatch.setattr(DenseStack, "keep", lambda self, rows, snap=None: dropped.append(len(rows)) or real_keep(self, rows, snap))
    a = train()
    assert dropped and dropped[0] <= 6 and min(len(h) for h in a.histories) < max(len(h) for h in a.histories)
    monkeypatch.setattr(DenseStack, "can_keep", property(lambda self: False))
    n = len(dropped)
    b = train()
    assert len(dropped) == n  # no rows dropped
    for i, (ha, hb) in enumerate(zip(a.histories, b.histories)):
        assert len(ha) == len(hb)
        for k in ha.keys():
            np.testing.assert_array_equal(ha[k], hb[k], err_msg=f"model {i}: {k}")
    monkeypatch.undo()
    model = reglab.models.mlp(2, [dict(units=4, activation="relu", dropout=0.5), dict(units=1)])
    stack = DenseStack([model, build_twin(model)], [reglab.losses.get("mse")] * 2, False, 2, 2)
    assert not stack.can_keep  # masks from the global generator, drawn for the whole stack
    stack.dropout_generators = [torch.Generator(), torch.Generator()]
    assert stack.can_keep


def build_twin(model):
    import copy

    return copy.deepcopy(model)


def test_seed_global_sets_what_torch_manual_seed_sets():
    """``fit_many`` seeds each model's build with ``seed_global``: the CPU generator's state is
    the one ``torch.manual_seed`` gives, for any seed (a CPU-only machine skips CUDA's queued
    seeding, with its stack trace)."""
    from reglab.engines.loop import seed_global

    for seed in (0, 1, 12345, 2**40 + 7):
        torch.manual_seed(seed)
        want = torch.get_rng_state()
        torch.manual_seed(seed + 1)
        seed_global(seed)
        assert torch.equal(torch.get_rng_state(), want)
        assert torch.initial_seed() == seed


@pytest.mark.parametrize("engine", ["loop", "vmap", "dense", "auto"])
def test_a_model_gone_nan_fails_at_its_step_on_every_engine(engine):
    """A model whose weights are NaN from the start fails at epoch 0, batch 0, on every engine
    (the per-model loop once crashed restoring its weights inside the step's graph, vmap on the
    NaN check of the BCE, the fused kernel trained it on with a finite loss), keeps those
    weights, and the others train exactly as without it."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x.sum(1, keepdims=True) > 0).astype(np.float32)

    def build(bad=0):
        model = reglab.models.mlp(4, [{"units": 8, "activation": "relu"}, {"units": 1, "activation": "sigmoid"}])
        if bad:
            with torch.no_grad():
                model[0].weight[0, 0] = float("nan")
        return model

    kw = dict(loss="binary_crossentropy", batch_size=20, epochs=2, progress=False, engine=engine)
    res = fit_many(build, x, y, seeds=[0, 1], grid=[{"bad": 0}, {"bad": 1}], **kw)
    assert sorted(res.failed) == [1, 3]
    assert all(res.failed[i]["epoch"] == 0 and res.failed[i]["batch"] == 0 for i in (1, 3))
    assert [len(h) for h in res.histories] == [2, 0, 2, 0]
    assert res.models[1][0].weight.isnan().sum() == 1  # its own (epoch-start) weights
    alone = fit_many(build, x, y, seeds=[0, 1], **kw)
    for a, b in zip(alone.models, res.models[::2]):
        assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
