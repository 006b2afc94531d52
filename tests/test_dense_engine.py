"""The Dense-stack engine's written-out derivatives against autograd, and what it accepts."""

import copy
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import reglab
from reglab import losses as L
from reglab import regularizers as R
from reglab._lanes import whole_vectors
from reglab.training.engine import ArrayData, evaluate_stack
from reglab.vectorized.dense import DenseStack, unsupported_reason

from .lecture import blobs, reglab_program


@pytest.fixture(autouse=True)
def _eager_dense_engine(monkeypatch):
    """These tests hold the eager Dense-stack engine (the fused engine's fallback, and the engine
    of what the fused kernel does not hold) to autograd: the fused engine is off here
    (``tests/test_fused.py`` holds it to this one)."""
    monkeypatch.setenv("REGLAB_FUSED", "0")


def _engine_and_autograd(build, x, y, **fit_kw):
    """Histories of ``fit`` on the engine (optimizer by name) and on autograd (an optimizer
    instance), each model from ``torch.manual_seed(1); build()``, trained with seed 2."""
    runs = []
    for instance in (False, True):
        torch.manual_seed(1)
        m = build()
        opt = reglab.optimizers.get("adam", m.parameters()) if instance else "adam"
        runs.append(reglab.fit(m, x, y, optimizer=opt, seed=2, progress=False, **fit_kw))
    return runs


def _second_of_three_equals_alone(build, x, y, key, **fit_kw):
    """Model 1 of ``fit_many`` over seeds 1, 2, 3 = ``fit`` of the same model alone: history
    ``key`` within 1e-12, weights bit for bit."""
    res = reglab.fit_many(build, x, y, seeds=[1, 2, 3], progress=False, **fit_kw)
    assert res.engine == "dense"
    torch.manual_seed(2)
    m = build()
    h = reglab.fit(m, x, y, seed=2, progress=False, **fit_kw)
    np.testing.assert_allclose(res.histories[1][key], h[key], rtol=1e-12)
    for p, q in zip(m.parameters(), res.models[1].parameters()):
        assert torch.equal(p.detach(), q.detach())

REGULARIZERS = [
    R.L1(0.01), R.L2(0.02), R.L1L2(0.01, 0.03), R.Lp(3, 0.01), R.Lp(2.5, 0.2), R.KLSparsity(0.1, 0.5),
    R.L1(0.01) + R.L2(0.5), 0.5 * R.L1L2(0.2, 0.1), R.OrthogonalRegularizer(0.1),
    R.from_function(lambda x: 0.3 * x.pow(4).sum()),
]


@pytest.mark.parametrize("reg", REGULARIZERS, ids=lambda r: repr(r)[:40])
def test_value_and_grad_equals_compute_and_autograd_per_model(reg):
    torch.manual_seed(0)
    M = 3
    x = torch.rand(M, 6, 5, dtype=torch.float64) * 2 - (0.0 if isinstance(reg, R.KLSparsity) else 1.0)
    x[1, 0, 0] = 0.0  # a kink of |x|
    hp0 = reg.hparams()
    # model m's strengths: (m + 1) times the regularizer's own
    hp = {k: torch.tensor([v * (m + 1) for m in range(M)], dtype=torch.float64) for k, v in hp0.items()}
    values, grads = reg.value_and_grad(x, hp)
    assert values.shape == (M,) and grads.shape == x.shape
    for m in range(M):
        xm = x[m].clone().requires_grad_()
        v = reg.compute(xm, **{k: v[m] for k, v in hp.items()}) if hp else reg(xm)
        (g,) = torch.autograd.grad(v, xm)
        np.testing.assert_allclose(values[m].item(), v.item(), rtol=1e-12)
        np.testing.assert_allclose(grads[m].numpy(), g.numpy(), rtol=1e-12, atol=1e-15)


def test_kl_gradient_is_zero_where_the_clip_holds():
    reg = R.KLSparsity(0.05, 1.0)
    x = torch.zeros(1, 4, 3, dtype=torch.float64)  # a dead unit: mean 0 < 1e-6
    x[0, :, 1] = 0.5
    _, g = reg.value_and_grad(x, {"strength": torch.ones(1, dtype=torch.float64)})
    assert torch.all(g[0, :, 0] == 0) and torch.all(g[0, :, 1] != 0)


LOSSES = [L.BinaryCrossentropy(), L.BinaryCrossentropy(from_logits=True), L.LogEpsBinaryCrossentropy(1e-6),
          L.MeanSquaredError(), L.MeanAbsoluteError(), L.CategoricalCrossentropy(),
          L.CategoricalCrossentropy(from_logits=True), L.SparseCategoricalCrossentropy(),
          L.SparseCategoricalCrossentropy(from_logits=True)]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda lo: f"{lo.name}{getattr(lo, 'from_logits', '')}")
def test_per_example_grad_equals_autograd(loss):
    torch.manual_seed(1)
    logits = getattr(loss, "from_logits", False)
    p = torch.randn(2, 7, 3, dtype=torch.float64) if logits else torch.rand(2, 7, 3, dtype=torch.float64)
    if isinstance(loss, L.BinaryCrossentropy) and not logits:
        p[0, 0, 0], p[0, 1, 1] = 0.0, 1.0  # inside the clip: no gradient
    if isinstance(loss, (L.CategoricalCrossentropy, L.SparseCategoricalCrossentropy)) and not logits:
        p[0, 0] = torch.tensor([1e-9, 0.5, 0.5], dtype=torch.float64)  # a clipped class probability
    y = (torch.rand(2, 7, 3, dtype=torch.float64) > 0.5).to(torch.float64)
    if isinstance(loss, L.CategoricalCrossentropy):
        y = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 7)), 3).to(torch.float64)
        y[0, 0] = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if isinstance(loss, L.SparseCategoricalCrossentropy):
        y = torch.randint(0, 3, (2, 7, 1)).to(torch.float64)
        y[0, 0, 0] = 0.0
    p.requires_grad_()
    (g,) = torch.autograd.grad(loss.per_example(p, y).sum(), p)
    np.testing.assert_allclose(loss.per_example_grad(p.detach(), y).numpy(), g.numpy(), rtol=1e-12, atol=1e-15)


def test_whole_vectors_gives_each_element_the_same_bits_anywhere():
    x = torch.randn(257, 20, 1, dtype=torch.float64)
    full = whole_vectors(torch.sigmoid, x)
    assert torch.equal(full, torch.sigmoid(x))
    for k in (0, 1, 100, 256):
        assert torch.equal(whole_vectors(torch.sigmoid, x[k:k + 1])[0], full[k])


def _odd_nets(dtype):
    """Layer widths and batch sizes that leave a model's matrices at every offset of a stack's
    tensors (relevant: MKL's rounding depends on alignment on some CPUs, ``dense._ALIGN``)."""
    def dense_net(seed):
        torch.manual_seed(seed)
        return reglab.models.mlp(3, [
            dict(units=7, activation="tanh", activity_regularizer=R.L2(0.01)),
            dict(units=32, activation="relu", activity_regularizer=R.L1(0.01)),
            dict(units=5, activation="sigmoid", kernel_regularizer=R.L2(0.01)),
            dict(units=3, activation="softmax")]).to(dtype), L.get("sparse_categorical_crossentropy")

    def plain_net(seed):  # no biases: the batch and new tensors feed the products directly
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(3, 9, bias=False), nn.Tanh(), nn.Linear(9, 32, bias=False), nn.ReLU(),
                             nn.Linear(32, 3, bias=False), nn.Sigmoid(), nn.Linear(3, 1)).to(dtype), L.get("mse")
    return dense_net, plain_net


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_models_step_does_not_depend_on_its_stack(dtype, threads):
    """One training step of a model alone and at each position of stacks of 2, 3 and 5 (the other
    models different): the same loss and gradient, bit for bit, for odd batch sizes and widths, on 1
    and 2 threads (MKL splits a lone product across threads but not a batch's: ``dense._product``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for net in _odd_nets(dtype):
            for B in (5, 20, 25):
                g = torch.Generator().manual_seed(B)
                x = torch.randn(B, 3, generator=g).to(dtype)
                y = torch.randint(0, 3, (B,), generator=g) if net.__name__ == "dense_net" else \
                    torch.randn(B, 1, generator=g).to(dtype)

                def step(seeds, pos):
                    built = [net(s) for s in seeds]
                    stack = DenseStack([m for m, _ in built], [lo for _, lo in built], False, 2, y.dim())
                    try:
                        stack.train(True)
                        xs = torch.randn((len(seeds),) + tuple(x.shape), generator=g).to(dtype)
                        xs[pos] = x
                        data, _, _, _ = stack.objective(xs if len(seeds) > 1 else x, y)
                        stack.backward(None, None)
                        return data[pos].clone(), stack.gflat[pos].clone()
                    finally:
                        stack.write_back()
                alone = step([7], 0)
                for M in (2, 3, 5):
                    for pos in range(M):
                        seeds = [100 + i for i in range(M)]
                        seeds[pos] = 7
                        data, grad = step(seeds, pos)
                        assert torch.equal(data, alone[0]), (net.__name__, B, M, pos)
                        assert torch.equal(grad, alone[1]), (net.__name__, B, M, pos)
    finally:
        torch.set_num_threads(before)


def test_one_pass_validation_equals_batched_keras_validation():
    data = blobs(0)
    model, loss = reglab_program(6, seed=0)
    x = torch.tensor(data[2]); y = torch.tensor(data[3], dtype=torch.float64)
    stack = DenseStack([model], [reglab.losses.get(loss)], True, 2, 2)
    try:
        assert len(list(stack.eval_batches(ArrayData(x, y), 20))) == 1
        one = evaluate_stack(stack, ArrayData(x, y), 20)
        stack._one_pass = False
        assert len(list(stack.eval_batches(ArrayData(x, y), 20))) == 4
        batched = evaluate_stack(stack, ArrayData(x, y), 20)
    finally:
        stack.write_back()
    assert one.keys() == batched.keys() and "val_penalty/0:activity" in one
    for k in one:
        np.testing.assert_allclose(one[k], batched[k], rtol=1e-12, err_msg=k)


def test_what_the_engine_accepts():
    dense = reglab.models.mlp(2, [dict(units=4, activation="tanh"), dict(units=1, activation="sigmoid")])
    assert unsupported_reason(dense, L.BinaryCrossentropy()) is None
    assert unsupported_reason(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), L.MeanSquaredError()) is None
    assert unsupported_reason(reglab.models.mlp(2, [dict(units=4, dropout=0.5), dict(units=1)]),
                              L.MeanSquaredError()) is None
    assert "AlphaDropout" in unsupported_reason(nn.Sequential(nn.Linear(2, 3), nn.AlphaDropout(0.2), nn.Linear(3, 1)),
                                                L.MeanSquaredError())
    assert "not a plain" in unsupported_reason(nn.Linear(2, 1), L.MeanSquaredError())
    assert "per_example_grad" in unsupported_reason(dense, L.TorchLoss(torch.nn.MSELoss()))
    assert "elu" in unsupported_reason(reglab.models.mlp(2, [dict(units=4, activation="elu")]), L.MeanSquaredError())
    h = dense[0].register_forward_hook(lambda *a: None)
    assert "hook" in unsupported_reason(dense, L.MeanSquaredError())
    h.remove()


def test_fit_many_falls_back_to_vmap_for_other_modules():
    data = blobs(0)

    def build():
        m = reglab.models.mlp(2, [dict(units=8, activation="relu", kernel_regularizer=reglab.L2(0.01)),
                                  dict(units=1, activation="sigmoid")])
        return nn.Sequential(m[0], nn.Identity(), nn.BatchNorm1d(8, affine=False, track_running_stats=False), m[1])
    res = reglab.fit_many(build, data[0], data[1], seeds=[0, 1], loss="binary_crossentropy", epochs=3,
                          batch_size=20, progress=False)
    assert res.engine == "vmap"

    def build_dense():
        return reglab.models.mlp(2, [dict(units=8, activation="relu", kernel_regularizer=reglab.L2(0.01)),
                                     dict(units=1, activation="sigmoid")])
    res2 = reglab.fit_many(build_dense, data[0], data[1], seeds=[0, 1], loss="binary_crossentropy", epochs=3,
                           batch_size=20, progress=False)
    assert res2.engine == "dense"
    assert all(np.isfinite(h["loss"]).all() for h in res.histories + res2.histories)


def test_fit_leaves_the_model_its_own_storage():
    data = blobs(0)
    model, loss = reglab_program(6, seed=0)
    before = [p.data_ptr() for p in model.parameters()]
    reglab.fit(model, data[0], data[1], loss=loss, epochs=1, batch_size=20, progress=False)
    ptrs = [p.data_ptr() for p in model.parameters()]
    assert len(set(ptrs)) == len(ptrs) and ptrs != before
    assert all(p.is_contiguous() and p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_keras_adam_fast_step_equals_the_regular_step(dtype):
    """KerasAdam's functional fast path gives the bits of Optimizer.step, weight decay included."""
    from reglab.optimizers import KerasAdam

    torch.manual_seed(0)
    a = [torch.randn(3, 5, dtype=dtype), torch.randn(7, dtype=dtype)]
    b = [t.clone() for t in a]
    fast, slow = KerasAdam(a, learning_rate=0.01, weight_decay=0.01), KerasAdam(b, learning_rate=0.01, weight_decay=0.01)
    slow._fast_step = lambda: False
    taken = []
    orig = fast._fast_step
    fast._fast_step = lambda: taken.append(orig()) or taken[-1]
    for k in range(30):
        grads = [torch.randn_like(t) for t in a]
        for ps in (a, b):
            for t, g in zip(ps, grads):
                if k % 7 == 3 and t.grad is not None:
                    t.grad.copy_(g)  # the same gradient tensors (the cached lists stay valid)
                else:
                    t.grad = g.clone()  # new ones (the cache must notice)
        if k == 10:  # state tensors replaced (by other values): the fast path must not step the old ones
            for y in b:
                slow.state[y]["exp_avg"].mul_(0.5)
            fast.load_state_dict(copy.deepcopy(slow.state_dict()))
            for x, y in zip(a, b):
                x.copy_(y)
        fast.step()
        slow.step()
    assert taken[0] is False and all(taken[1:])  # state exists after the first step
    for x, y in zip(a, b):
        assert torch.equal(x, y)
        assert torch.equal(fast.state[x]["exp_avg_sq"], slow.state[y]["exp_avg_sq"])


def test_multiclass_softmax_net_on_the_engine_equals_autograd_and_fit_many():
    """Digits-like 3-class problem, softmax output, sparse labels: dense fit = autograd fit
    (1e-12 over 5 epochs, float64) and fit_many of 3 models = separate fits, bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(90, 4, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()

    def build():
        return reglab.models.mlp(4, [dict(units=8, activation="tanh", kernel_regularizer=reglab.L2(0.01)),
                                     dict(units=3, activation="softmax")]).to(torch.float64)
    runs = _engine_and_autograd(build, x, y, loss="sparse_categorical_crossentropy", epochs=5, batch_size=16)
    for k in runs[0].keys():
        np.testing.assert_allclose(runs[0][k], runs[1][k], rtol=1e-12, err_msg=k)
    _second_of_three_equals_alone(build, x, y, "loss", loss="sparse_categorical_crossentropy", epochs=20,
                                  batch_size=16)


def test_a_regularizer_torch_func_cannot_transform_falls_back_in_fit_and_is_named_in_fit_many():
    data = blobs(0)

    def odd(x):  # .item() cannot run under torch.func's vmap
        return x.square().sum() * (1.0 + 0.0 * float(x.abs().max().item()))

    def build():
        return reglab.models.mlp(2, [dict(units=4, activation="relu", kernel_regularizer=R.from_function(odd)),
                                     dict(units=1, activation="sigmoid")])
    torch.manual_seed(0)
    m = build()
    h = reglab.fit(m, data[0], data[1], loss="binary_crossentropy", epochs=2, batch_size=20, seed=0, progress=False)
    assert len(h) == 2 and np.isfinite(h["penalty/0.weight"]).all() and h["penalty/0.weight"][0] > 0
    one = reglab.fit_many(build, data[0], data[1], seeds=[0], loss="binary_crossentropy", epochs=2, batch_size=20,
                          progress=False)
    assert one.engine == "loop"
    np.testing.assert_allclose(one.histories[0]["loss"], h["loss"], rtol=1e-6)
    # two models: vmap cannot batch it either, so the per-model engine trains them, each as fit
    two = reglab.fit_many(build, data[0], data[1], seeds=[0, 1], loss="binary_crossentropy", epochs=2,
                          batch_size=20, progress=False)
    assert two.engine == "loop" and "vmap" in two.engine_reason
    np.testing.assert_array_equal(two.histories[0]["loss"], h["loss"])
    with pytest.raises(ValueError, match=r"engine='dense' cannot train this model: penalty source '0.weight'.*torch.func"):
        reglab.fit_many(build, data[0], data[1], seeds=[0, 1], loss="binary_crossentropy", epochs=1,
                        progress=False, engine="dense")


def test_plain_torch_layers_root_activity_and_no_bias_match_autograd():
    """nn.Linear without bias, nn.ReLU/nn.Tanh modules, an activity penalty on the Sequential itself and one
    on the same output from its last layer (two sources on one output), L1L2 on a bias."""
    data = blobs(3)

    def build():
        torch.manual_seed(5)
        m = nn.Sequential(nn.Linear(2, 6, bias=False), nn.ReLU(), nn.Linear(6, 5), nn.Tanh(),
                          nn.Linear(5, 1), nn.Sigmoid()).double()
        reglab.regularize(m, params={"2.bias": reglab.L1L2(0.01, 0.02), "0.weight": "l2"},
                          activity={"": reglab.L1(0.01), "5": reglab.L2(0.03), "1": reglab.L1(0.02)})
        return m
    assert unsupported_reason(build(), L.BinaryCrossentropy()) is None
    out = []
    for instance in (False, True):
        m = build()
        opt = reglab.optimizers.get("adam", m.parameters()) if instance else "adam"
        out.append(reglab.fit(m, data[0], data[1], loss="binary_crossentropy", optimizer=opt, epochs=4,
                              batch_size=16, validation_data=(data[2], data[3]), seed=1, progress=False))
    assert out[0].keys() == out[1].keys() and "penalty/:activity" in out[0]
    for k in out[0].keys():
        np.testing.assert_allclose(out[0][k], out[1][k], rtol=1e-12, err_msg=k)


def test_dropout_on_the_engine_draws_what_nn_dropout_draws():
    """fit with Dropout layers on the engine = the autograd path (same masks from the global RNG,
    same scaling; validation without dropout), float64 over 4 epochs."""
    data = blobs(1)

    def build():
        torch.manual_seed(7)
        return reglab.models.mlp(2, [dict(units=16, activation="relu", dropout=0.3, activity_regularizer=reglab.L1(0.01)),
                                     dict(units=8, activation="relu", dropout=0.5),
                                     dict(units=1, activation="sigmoid")]).double()
    assert unsupported_reason(build(), L.BinaryCrossentropy()) is None
    out = []
    for instance in (False, True):
        m = build()
        opt = reglab.optimizers.get("adam", m.parameters()) if instance else "adam"
        torch.manual_seed(11)  # the dropout draws
        out.append((reglab.fit(m, data[0], data[1], loss="binary_crossentropy", optimizer=opt, epochs=4, batch_size=20,
                               validation_data=(data[2], data[3]), seed=3, progress=False),
                    [p.detach().clone() for p in m.parameters()]))
    for k in out[0][0].keys():
        np.testing.assert_allclose(out[0][0][k], out[1][0][k], rtol=1e-12, err_msg=k)
    for a, b in zip(out[0][1], out[1][1]):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-14)
    assert out[0][0]["loss"][0] != out[0][0]["val_loss"][0]


def test_unhooked_step_skips_the_wrapper_only_while_no_hook_or_patch_exists():
    from torch.optim import optimizer as topt

    from reglab.optimizers import KerasAdam, unhooked_step

    p = torch.zeros(3, requires_grad=True)
    opt = KerasAdam([p])
    calls = []
    for k in range(4):
        if k == 1:
            h = opt.register_step_post_hook(lambda *a: calls.append("local"))
        if k == 2:
            h.remove()
            g = topt.register_optimizer_step_pre_hook(lambda *a: calls.append("global"))
        if k == 3:
            g.remove()
        p.grad = torch.ones(3)
        unhooked_step(opt)
    assert calls == ["local", "global"] and opt._t == 4
    assert float(p[0]) == pytest.approx(-0.004, rel=1e-5)  # four Adam steps of lr 0.001 on a constant gradient


def test_a_tensor_penalized_by_its_layer_and_by_a_regularized_loss():
    """Two sources on one tensor (two channels of the grouped penalties), strengths differing per
    tensor inside the RegularizedLoss (L1, L2, L1L2 codes): engine = autograd, both logged."""
    data = blobs(4)
    out = []
    for instance in (False, True):
        torch.manual_seed(3)
        m = reglab.models.mlp(2, [dict(units=6, activation="relu", kernel_regularizer=reglab.L2(0.02)),
                                  dict(units=1, activation="sigmoid", bias_regularizer=reglab.L1(0.01))]).double()
        loss = reglab.RegularizedLoss("binary_crossentropy", m, [1, 2, 12, -1], strength=0.05)
        opt = reglab.optimizers.get("adam", m.parameters()) if instance else "adam"
        out.append(reglab.fit(m, data[0], data[1], loss=loss, optimizer=opt, epochs=3, batch_size=20, seed=0,
                              progress=False))
    assert {"penalty/0.weight", "penalty/1.bias", "penalty/loss:penalty"} <= set(out[0].keys())
    for k in out[0].keys():
        np.testing.assert_allclose(out[0][k], out[1][k], rtol=1e-12, err_msg=k)


def test_unit_dimensions_with_activity_penalties_match_autograd_and_fit_many():
    """Width-1 layers (input, hidden and output) and a last batch of one example put every product
    on its element-wise kernel, with activity derivatives folded into the next layer's dh
    (addcmul, sum + add): engine = autograd (1e-12, float64), and a model inside fit_many = alone,
    bit for bit."""
    torch.manual_seed(0)
    x = torch.randn(21, 1, dtype=torch.float64)  # batches of 4: the last one holds 1 example
    y = (x[:, :1] + 0.3 * torch.randn(21, 1, dtype=torch.float64) > 0).double()

    def build():
        L1, L2 = reglab.L1(0.01), reglab.L2(0.02)
        return reglab.models.mlp(1, [dict(units=5, activation="tanh", activity_regularizer=L1, kernel_regularizer=L2),
                                     dict(units=1, activation="relu", activity_regularizer=L2),
                                     dict(units=3, activation="sigmoid", activity_regularizer=L1, bias_regularizer=L1),
                                     dict(units=1, activation="sigmoid")]).to(torch.float64)
    kw = dict(loss="binary_crossentropy", epochs=6, batch_size=4, validation_data=(x[:7], y[:7]))
    runs = _engine_and_autograd(build, x, y, **kw)
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0].keys():
        np.testing.assert_allclose(runs[0][k], runs[1][k], rtol=1e-12, atol=1e-15, err_msg=k)
    _second_of_three_equals_alone(build, x, y, "val_loss", **kw)


def _assert_sums_equal_values(pg, feed, weights, rtol, atol=1e-12):
    """``pg.totals()`` after ``accumulate(x, w)`` over ``feed`` = ``sum w * values(x)``; returns it."""
    expected = sum(w * pg.values(x) for w, x in zip(weights, feed))
    for w, x in zip(weights, feed):
        pg.accumulate(x, w)
    got = pg.totals()
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=rtol, atol=atol)
    return got


def _assert_grad_maps_equal_autograd(pg, x, layers, rtol, atol=1e-12):
    """``C + sum Lam * f'(x)`` from ``pg.grad_maps`` (in ``x``'s layout) = autograd of ``values(x).sum()``."""
    x = x.clone().requires_grad_(True)
    pg.values(x).sum().backward()
    const, maps = pg.grad_maps(x.dim() - (3 if layers else 2))
    d = sum(lam * (x if df is None else df(x)) for lam, df in maps) + (0 if const is None else const)
    np.testing.assert_allclose(d.detach().numpy(), x.grad.numpy(), rtol=rtol, atol=atol)


def test_penalty_sums_over_steps_equal_the_sum_of_each_steps_values():
    """PenaltyGroups.totals after accumulate(x_t, w_t) = sum_t w_t * values(x_t), per model and
    source, with strengths differing by model, on (M, W), (M, B, W) and layered (L, M, B, W / L)
    buffers; the sums start again from 0 after totals."""
    from reglab.vectorized.penalties import PenaltyGroups, elementwise_terms

    g = torch.Generator().manual_seed(0)
    M, B, W = 3, 4, 10
    strengths = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)

    def groups(nonnegative, layers):
        pg = PenaltyGroups(M, W, torch.float64, "cpu", layers=layers)
        for name, reg, spans in (("a", R.L1L2(1.0, 2.0), [(0, 3), (5, 6)]), ("b", R.L2(1.0), [(3, 5)]),
                                 ("c", 0.5 * R.L1(1.0), [(6, 10)])):
            hp = {k: strengths * v for k, v in reg.hparams().items()} if not isinstance(reg, R.Scaled) else \
                {"factor": torch.full((M,), 0.5, dtype=torch.float64), "inner/l1": strengths}
            pg.add(0, name, spans, elementwise_terms(reg, hp), nonnegative=nonnegative)
        pg.build()
        return pg

    for shape, nonneg, layers in (((M, W), False, 0), ((M, B, W), False, 0), ((M, B, W), True, 0),
                                  ((M, B, W), False, 2)):
        pg = groups(nonneg, layers)
        xs = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(3)]
        if nonneg:
            xs = [x.clamp_min(0) for x in xs]
        # the buffers as the group takes them: layered (L, M, B, W / L) holds the same columns
        feed = [x.reshape(M, B, layers, W // layers).permute(2, 0, 1, 3).contiguous() for x in xs] if layers else xs
        got = _assert_sums_equal_values(pg, feed, [20.0, 20.0, 5.0], 1e-12, atol=0)
        assert got.shape == (M, 3)
        # each source by hand for model 2 and the first buffer (|x| = x on nonnegative values)
        x = xs[0][2].reshape(-1, W) if len(shape) == 3 else xs[0][2][None]
        by_hand = [0.3 * x[:, [0, 1, 2, 5]].abs().sum() + 0.6 * (x[:, [0, 1, 2, 5]] ** 2).sum(),
                   0.3 * (x[:, 3:5] ** 2).sum(), 0.5 * 0.3 * x[:, 6:].abs().sum()]
        np.testing.assert_allclose(pg.values(feed[0])[2].numpy(), torch.stack(by_hand).numpy(), rtol=1e-12)
        assert torch.equal(pg.totals(), torch.zeros(M, 3, dtype=torch.float64))  # started again
        _assert_grad_maps_equal_autograd(pg, feed[1], layers, 1e-12, atol=1e-15)


def test_a_penalty_alone_turning_infinite_fails_its_model_at_the_end_of_the_epoch():
    """The engine sums penalty values over an epoch's steps; a model whose penalty alone becomes
    inf (a huge bias: the clipped cross-entropy stays finite) is failed at that epoch, the
    others train as alone; fit raises naming the source."""
    x, y, _, _ = blobs(0)

    def build():
        m = reglab.models.mlp(2, [dict(units=4, activation="relu"),
                                  dict(units=1, activation="sigmoid", bias_regularizer=R.L2(0.01))])
        if torch.initial_seed() == 1:
            with torch.no_grad():
                m[-1].bias.fill_(1e30)  # 0.01 * 1e60 overflows float32
        return m

    kw = dict(loss="binary_crossentropy", epochs=3, batch_size=50, progress=False)
    res = reglab.fit_many(build, x, y, seeds=[0, 1, 2], **kw)
    assert res.engine == "dense"
    assert set(res.failed) == {1}
    assert res.failed[1]["epoch"] == 0 and res.failed[1]["batch"] == 4  # the epoch's last batch (225 / 50)
    assert res.failed[1]["value"] == float("inf")
    assert len(res.histories[1]) == 0 and len(res.histories[0]) == 3
    for i in (0, 2):
        torch.manual_seed(i)
        h = reglab.fit(build(), x, y, seed=i, **kw)
        np.testing.assert_allclose(res.histories[i]["loss"], h["loss"], rtol=1e-6)
    torch.manual_seed(1)
    with pytest.raises(reglab.TrainingDiverged,
                       match=r"diverged in epoch 0 \(0-based; penalties summed over its batches 0-4\): "
                             r"penalty source\(s\) \['1.bias'\] became inf") as err:
        reglab.fit(build(), x, y, seed=1, **kw)
    assert (err.value.epoch, err.value.batch, len(err.value.history)) == (0, 4, 0)
    assert all(torch.isfinite(v).all() for v in err.value.state_dict.values())  # the weights themselves are finite


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_penalty_groups_property_sums_and_derivatives(data):
    """For random sources (L1, L2, L1L2, Lp(3), scaled sums) on random disjoint spans of a plain
    or layered buffer, with per-model strengths: the accumulated totals equal the weighted sum of
    each step's values, each value equals the regularizer's own compute() on its span, and the
    derivative maps equal autograd's."""
    from reglab.vectorized.penalties import PenaltyGroups, elementwise_terms

    M = data.draw(st.integers(1, 3))
    B = data.draw(st.integers(1, 4))
    layers = data.draw(st.integers(0, 3))
    width = data.draw(st.integers(2, 6)) * max(layers, 1)
    kinds = [lambda: R.L1(1.0), lambda: R.L2(1.0), lambda: R.L1L2(1.0, 1.0), lambda: R.Lp(3, 1.0),
             lambda: 0.5 * (R.L1(1.0) + R.L2(1.0))]
    cuts = sorted(set(data.draw(st.lists(st.integers(1, width - 1), max_size=3))))
    edges = [0] + cuts + [width]
    seed = data.draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    pg = PenaltyGroups(M, width, torch.float64, "cpu", layers=layers)
    sources = []
    for n, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        reg = kinds[data.draw(st.integers(0, len(kinds) - 1))]()
        scale = torch.rand(M, generator=g, dtype=torch.float64) + 0.1  # a strength per model
        hp = {k: scale * float(v) for k, v in reg.hparams().items()}  # as a stack reads them, per model
        pg.add(0, f"s{n}", [(a, b)], elementwise_terms(reg, hp))
        sources.append((reg, hp, a, b))
    pg.build()
    shape = (layers, M, B, width // layers) if layers else (M, B, width)
    xs = [torch.randn(shape, generator=g, dtype=torch.float64) for _ in range(2)]
    _assert_sums_equal_values(pg, xs, [float(data.draw(st.integers(1, 20))) for _ in xs], 1e-10)
    cols = xs[0].permute(1, 2, 0, 3).reshape(M, B, width) if layers else xs[0]  # (M, B, width)
    vals = pg.values(xs[0])
    for n, (reg, hp, a, b) in enumerate(sources):
        for m in range(M):
            own = reg.compute(cols[m, :, a:b], **{k: v[m] for k, v in hp.items()})
            np.testing.assert_allclose(float(vals[m, n]), float(own), rtol=1e-10, atol=1e-12)
    _assert_grad_maps_equal_autograd(pg, xs[1], layers, 1e-10)



def test_keras_adam_resumed_from_its_state_dict_steps_as_the_uninterrupted_one():
    """Keras's epsilon depends on the step count (``epsilon / sqrt(1 - beta_2**t)`` in torch's
    form): an optimizer loaded from a state dict must go on at the saved step, not at step 1."""
    from reglab.optimizers import KerasAdam

    torch.manual_seed(0)
    a = torch.randn(4, 3, dtype=torch.float64)
    grads = [torch.randn(4, 3, dtype=torch.float64) * 1e-3 for _ in range(8)]
    whole = KerasAdam([a], learning_rate=0.01, epsilon=1e-3)  # a large epsilon: its scaling shows
    for g in grads[:5]:
        a.grad = g.clone()
        whole.step()
    b = a.clone()
    resumed = KerasAdam([b], learning_rate=0.01, epsilon=1e-3)
    resumed.load_state_dict(copy.deepcopy(whole.state_dict()))
    for g in grads[5:]:
        for p, opt in ((a, whole), (b, resumed)):
            p.grad = g.clone()
            opt.step()
    assert torch.equal(a, b)
