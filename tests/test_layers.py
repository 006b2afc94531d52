import numpy as np
import pytest
import torch

import reglab
from reglab import Dense
from reglab.models import mlp

from .lecture import keras_program, lecture_layers


@pytest.mark.parametrize("program", [2, 3, 4, 5, 6, 7])
def test_layer_penalties_equal_keras_model_losses(keras, program):
    torch.manual_seed(program)
    layers = lecture_layers(program)
    model = mlp(2, layers).double()
    kmodel = keras_program(keras, program, model)  # same architecture and regularizers, model's weights
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
