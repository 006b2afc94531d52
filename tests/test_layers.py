import numpy as np
import pytest
import torch

import reglab
from reglab import L1, L2, Dense, KLSparsity, Lp
from reglab.models import mlp


def lecture_layers(program):
    """Per-layer Dense arguments of the lecture's programs (2: L1/L2/L1L2, 3: L3, 4/5: activity,
    6: all together, 7: KL on the last hidden layer)."""
    relu = "relu"
    if program == 2:
        L1_, L2_, L12 = L1(0.001), L2(0.001), reglab.L1L2(0.001)
        pairs = [(L1_, L1_), (L2_, L2_), (L12, L12), (L1_, L12), (L12, L2_)]
        hidden = [dict(units=32, activation=relu, kernel_regularizer=k, bias_regularizer=b) for k, b in pairs]
        return hidden + [dict(units=1, activation="sigmoid", kernel_regularizer=L12, bias_regularizer=L2_)]
    if program == 3:
        r = Lp(3, 0.01)
        return [dict(units=32, activation=relu, kernel_regularizer=r, bias_regularizer=r) for _ in range(5)] + [
            dict(units=1, activation="sigmoid", kernel_regularizer=r, bias_regularizer=r)]
    if program in (4, 5):
        before = program == 5
        return [dict(units=32, activation=relu, activity_regularizer=L1(0.01), activity_before_activation=before)
                for _ in range(5)] + [dict(units=1, activation="sigmoid")]
    if program == 6:
        hidden = [dict(units=32, activation=relu, kernel_regularizer=L2(0.001), bias_regularizer=L2(0.001),
                       activity_regularizer=L1(0.001)) for _ in range(5)]
        return hidden + [dict(units=1, activation="sigmoid", kernel_regularizer=L2(0.001), bias_regularizer=L2(0.001))]
    if program == 7:
        hidden = [dict(units=32, activation=relu, activity_regularizer=L2(0.01)) for _ in range(4)]
        return hidden + [dict(units=32, activation=relu, activity_regularizer=KLSparsity(0.05, 0.1)),
                         dict(units=1, activation="sigmoid")]
    raise ValueError(program)


def keras_twin(keras, layers, program):
    """The same network in Keras, built from the lecture's code (custom L3/KL regularizers in Keras ops)."""
    ops = keras.ops

    class RegL3(keras.regularizers.Regularizer):
        def __init__(self, lam):
            self.R = lam

        def __call__(self, x):
            return self.R * ops.sum(ops.power(ops.abs(x), 3))

    class KLLoss(keras.regularizers.Regularizer):
        def __init__(self, lam, rho):
            self.R, self.rho = lam, rho

        def __call__(self, q):
            rho_hat = ops.clip(ops.mean(q, axis=0), 1e-6, 0.99999)
            kl = self.rho * ops.log(self.rho / rho_hat) + (1 - self.rho) * ops.log((1 - self.rho) / (1 - rho_hat))
            return self.R * ops.sum(kl)

    def conv(r):
        if r is None:
            return None
        if isinstance(r, Lp):
            return RegL3(r.factor)
        if isinstance(r, KLSparsity):
            return KLLoss(r.strength, r.rho)
        return keras.regularizers.deserialize({"class_name": type(r).__name__, "config": r.get_config()})

    x = inp = keras.Input((2,))
    for spec in layers:
        kw = dict(kernel_regularizer=conv(spec.get("kernel_regularizer")), bias_regularizer=conv(spec.get("bias_regularizer")),
                  activity_regularizer=conv(spec.get("activity_regularizer")))
        if spec.get("activity_before_activation"):
            x = keras.layers.Dense(spec["units"], **kw)(x)
            x = keras.layers.Activation(spec["activation"])(x)
        else:
            x = keras.layers.Dense(spec["units"], activation=spec["activation"], **kw)(x)
    return keras.Model(inp, x)


def copy_weights(model, kmodel):
    dense = [m for m in model if isinstance(m, Dense)]
    kdense = [layer for layer in kmodel.layers if layer.__class__.__name__ == "Dense"]
    assert len(dense) == len(kdense)
    for d, k in zip(dense, kdense):
        k.set_weights([d.weight.detach().numpy().T, d.bias.detach().numpy()])


@pytest.mark.parametrize("program", [2, 3, 4, 5, 6, 7])
def test_layer_penalties_equal_keras_model_losses(keras, program):
    torch.manual_seed(program)
    layers = lecture_layers(program)
    model = mlp(2, layers).double()
    kmodel = keras_twin(keras, layers, program)
    copy_weights(model, kmodel)
    x = np.random.default_rng(program).normal(size=(20, 2))
    ours_out = model(torch.tensor(x))
    theirs_out = kmodel(x)
    # Keras 3's torch backend rounds 64-bit matmul results to float32 (dtypes.BIT64_TO_BIT32_DTYPE),
    # so "float64" Keras agrees with a true float64 forward pass to ~1e-7 only
    np.testing.assert_allclose(ours_out.detach().numpy(), keras.ops.convert_to_numpy(theirs_out), rtol=1e-6)
    ours = sorted(float(v) for v in reglab.penalties(model).values())
    theirs = sorted(float(keras.ops.convert_to_numpy(v)) for v in kmodel.losses)
    assert len(ours) == len(theirs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    assert float(reglab.penalty(model)) == pytest.approx(sum(theirs), rel=1e-6)


def test_dense_defaults_and_keras_strings():
    torch.manual_seed(0)
    d = Dense(3, 5, activation="relu", kernel_regularizer="l2", bias_regularizer="l1", activity_regularizer="l1l2",
              kernel_constraint="max_norm", bias_constraint="non_neg")
    assert torch.all(d.bias == 0)  # bias_initializer="zeros"
    assert float(d.weight.abs().max()) <= np.sqrt(6 / 8)  # glorot_uniform limit
    x = torch.randn(4, 3)
    d(x)
    assert set(reglab.penalties(d)) == {"weight", "bias", ":activity"}
    assert float(reglab.penalties(d)["weight"]) == pytest.approx(0.01 * float(d.weight.square().sum()), rel=1e-6)
    spec = reglab.regularization_spec(d)
    assert spec["constraints"] == {"weight": {"class_name": "MaxNorm", "config": {"max_value": 2.0, "axis": 0}},
                                   "bias": {"class_name": "NonNeg", "config": {}}}
    d.handle.remove()
    d(x)
    assert reglab.penalties(d) == {}
    assert reglab.regularization_spec(d) == {"params": {}, "activity": {}, "constraints": {}}


def test_glorot_uniform_matches_keras_distribution(keras):
    torch.manual_seed(0)
    w = torch.cat([Dense(32, 32).weight.flatten() for _ in range(50)])
    limit = np.sqrt(6 / 64)
    assert float(w.abs().max()) <= limit
    assert float(w.std()) == pytest.approx(limit / np.sqrt(3), rel=0.02)  # uniform(-a, a) has std a/sqrt(3)


def test_dense_argument_errors():
    with pytest.raises(ValueError, match=r"out_features must be a positive integer; got out_features=0"):
        Dense(2, 0)
    with pytest.raises(ValueError, match=r"unknown activation 'relux'"):
        Dense(2, 2, activation="relux")
    with pytest.raises(ValueError, match=r"unknown initializer 'glorot'"):
        Dense(2, 2, kernel_initializer="glorot")
    with pytest.raises(ValueError, match=r"params\['weight'\]: unknown regularizer 'l5'"):
        Dense(2, 2, kernel_regularizer="l5")
    with pytest.raises(ValueError, match=r"layer 0: unknown keys \['unit'\]"):
        mlp(2, [dict(unit=3)])
