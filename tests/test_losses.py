import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab import losses as Ls


@pytest.mark.parametrize(
    "name, kname, make",
    [
        ("binary_crossentropy", "binary_crossentropy", lambda r: (r.uniform(0, 1, (8, 1)), (r.uniform(size=(8, 1)) > 0.5) * 1.0)),
        ("mse", "mse", lambda r: (r.normal(size=(8, 3)), r.normal(size=(8, 3)))),
        ("mae", "mae", lambda r: (r.normal(size=(8, 3)), r.normal(size=(8, 3)))),
        ("categorical_crossentropy", "categorical_crossentropy",
         lambda r: (r.dirichlet(np.ones(4), 8), np.eye(4)[r.integers(0, 4, 8)])),
    ],
)
def test_loss_parity_with_keras(keras, rng, name, kname, make):
    p, y = make(rng)
    if name == "binary_crossentropy":
        p[0, 0], y[0, 0] = 0.0, 1.0  # clipping at 1e-7 matters
    ours = Ls.get(name)(torch.tensor(p), torch.tensor(y))
    theirs = keras.losses.get(kname)(y, p)
    assert float(ours) == pytest.approx(float(keras.ops.mean(theirs)), rel=1e-6)


def test_sparse_categorical(keras, rng):
    p = rng.dirichlet(np.ones(5), 7)
    y = rng.integers(0, 5, 7)
    ours = Ls.get("sparse_categorical_crossentropy")(torch.tensor(p), torch.tensor(y))
    theirs = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, p))
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def lecture_mlp():
    torch.manual_seed(0)
    return reglab.models.mlp(2, [dict(units=32, activation="relu")] * 5 + [dict(units=1, activation="sigmoid")]).double()


def test_regularized_loss_reproduces_program_1():
    import reglab.models  # noqa: F401

    model = lecture_mlp()
    codes = [1, -1, 2, 2, 12, 2, 1, 2, -1, 2, None, None]  # the lecture's r_list, made explicit for 12 tensors
    rl = reglab.RegularizedLoss(Ls.LogEpsBinaryCrossentropy(1e-6), model, codes, strength=0.001)
    x = torch.randn(10, 2, dtype=torch.float64)
    y = (torch.rand(10, 1) > 0.5).double()
    p = model(x)
    params = list(model.parameters())
    reg = 0.0
    for code, t in zip(codes, params):
        if code in (1, 12):
            reg = reg + t.abs().sum()
        if code in (2, 12):
            reg = reg + t.square().sum()
    bce = -torch.mean(y * torch.log(p + 1e-6) + (1 - y) * torch.log(1 - p + 1e-6))
    assert float(rl(p, y)) == pytest.approx(float(bce + 0.001 * reg), rel=1e-12)
    assert float(rl.penalty()) == pytest.approx(float(0.001 * reg), rel=1e-12)
    assert float(rl.per_example(p, y).mean()) == pytest.approx(float(bce), rel=1e-12)


def test_regularized_loss_rejects_the_lectures_short_list():
    model = lecture_mlp()
    with pytest.raises(ValueError, match=r"regularizers list has 10 entries but the model has 12 parameter tensors .*zip\(\) would silently"):
        reglab.RegularizedLoss("binary_crossentropy", model, [1, -1, 2, 2, 12, 2, 1, 2, -1, 2], strength=0.001)


def test_regularized_loss_by_pattern_and_errors():
    model = lecture_mlp()
    rl = reglab.RegularizedLoss("binary_crossentropy", model, {"*.weight": "l2"}, strength=2.0)
    expected = 2.0 * sum(0.01 * float(m.weight.square().sum()) for m in model)
    assert float(rl.penalty()) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match=r"strength must be a non-negative finite number; got strength=-1"):
        reglab.RegularizedLoss("mse", model, {"*.weight": "l2"}, strength=-1)
    with pytest.raises(ValueError, match=r"regularizer code 3 for '0.weight' is not one of"):
        reglab.RegularizedLoss("mse", model, [3] + [None] * 11)
    with pytest.raises(ValueError, match=r"unknown loss 'hinge2'"):
        Ls.get("hinge2")


def test_torch_loss_callable_is_accepted():
    loss = Ls.get(nn.MSELoss())
    a, b = torch.randn(4, 2), torch.randn(4, 2)
    assert float(loss(a, b)) == pytest.approx(float(((a - b) ** 2).mean()))


def test_a_loss_config_as_experiment_files_write_it():
    """fit(loss={"name": ..., "from_logits": True}) was refused though experiment files take it."""
    import numpy as np
    import torch
    from torch import nn

    import reglab
    from reglab import losses as L

    lo = L.get({"name": "sparse_categorical_crossentropy", "from_logits": True})
    assert isinstance(lo, L.SparseCategoricalCrossentropy) and lo.from_logits is True
    assert isinstance(L.get({"name": "mse"}), L.MeanSquaredError)
    with pytest.raises(ValueError, match=r"loss 'mse' takes no option 'from_logits'; its options: none"):
        L.get({"name": "mse", "from_logits": True})
    with pytest.raises(ValueError, match=r"a loss config needs name = one of \['bce', "):
        L.get({"name": "hinge"})
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 3, 40)
    h1 = reglab.fit(nn.Linear(4, 3), x, y, loss={"name": "sparse_categorical_crossentropy", "from_logits": True},
                    epochs=2, seed=0, progress=False)
    torch.manual_seed(0)
    h2 = reglab.fit(nn.Linear(4, 3), x, y, loss=L.SparseCategoricalCrossentropy(from_logits=True), epochs=2, seed=0,
                    progress=False)
    assert np.array_equal(h1["loss"], h2["loss"]) and len(h1["loss"]) == 2
