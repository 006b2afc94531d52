"""The Python API's argument errors name the argument and what was expected (each of these was
a bare AttributeError, StopIteration, a broadcasting or stacking error, or nothing at all)."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab import fit, fit_many
from reglab.constraints import Constraint

X = np.random.default_rng(0).normal(size=(40, 3)).astype("float32")
Y = (X[:, :1] > 0).astype("float32")
KW = dict(loss="binary_crossentropy", epochs=1, progress=False)


def _mlp():
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1), nn.Sigmoid())


def _frozen():
    m = _mlp()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _meta():
    return _mlp().to("meta")


class _WrongShape(Constraint):
    def __call__(self, w):
        return w.sum(0)


def _wrong_constraint():
    m = _mlp()
    reglab.constrain(m, {"0.weight": _WrongShape()})
    return m


def _non_scalar_regularizer():
    m = _mlp()
    reglab.regularize(m, params={"0.weight": lambda w: w ** 2})
    return m


def _fit(model, **kw):
    return lambda: fit(model() if callable(model) and not isinstance(model, nn.Module) else model, X, Y, **{**KW, **kw})


def _many(build, x=X, y=Y, **kw):
    return lambda: fit_many(build, x, y, seeds=[0, 1], **{**KW, **kw})


_SHARED = _mlp()


class _ReturnsNone(Constraint):
    def __call__(self, w):
        return None


def _none_constraint():
    m = _mlp()
    reglab.constrain(m, {"0.weight": _ReturnsNone()})
    return m


CASES = {
    "many_builder_returns_one_module": (_many(lambda: _SHARED), ValueError, ["share parameters", "new model"]),
    "many_repeated_seed": (lambda: fit_many(_mlp, X, Y, seeds=[0, 0], **KW), ValueError, ["seeds must differ"]),
    "many_repeated_grid_point": (lambda: fit_many(lambda lam: _mlp(), X, Y, seeds=[0], grid=[{"lam": 1}, {"lam": 1}],
                                                  **KW), ValueError, ["grid[1]", "repeats grid[0]"]),
    "fit_constraint_returns_none": (_fit(_none_constraint), ValueError, ["_ReturnsNone() returned NoneType"]),
    "fit_x_beyond_float32": (lambda: fit(_mlp(), X.astype("float64") * 1e39, Y, **KW), ValueError,
                             ["x holds", "beyond torch.float32's range"]),
    "fit_seed_string": (_fit(_mlp, seed="a"), ValueError, ["seed must be an integer", "'a'"]),
    "load_results_of_a_number": (lambda: reglab.load_results(3), TypeError, ["out must be a results folder"]),
    "fit_callback_int": (_fit(_mlp, callbacks=[5]), TypeError, ["callbacks[0]", "reglab callback", "int"]),
    "fit_callbacks_not_a_list": (_fit(_mlp, callbacks=reglab.EarlyStopping()), TypeError, ["callbacks must be a list"]),
    "many_callback_int": (_many(_mlp, callbacks=[5]), TypeError, ["callbacks[0]", "reglab callback"]),
    "many_builder_no_parameters": (_many(lambda: nn.Sigmoid()), ValueError, ["build()", "no parameters"]),
    "many_builder_returns_int": (_many(lambda: 5), TypeError, ["build()", "torch.nn.Module", "int"]),
    "many_three_arrays_two_models": (_many(_mlp, x=[X, X, X], y=[Y, Y, Y]), ValueError,
                                     ["x: a list of 3 arrays for 2 models"]),
    "fit_meta_device": (_fit(_meta), ValueError, ["meta device", "to_empty"]),
    "many_meta_device": (_many(_meta), ValueError, ["meta device"]),
    "fit_all_frozen": (_fit(_frozen), ValueError, ["none of the 4 parameters", "requires_grad"]),
    "many_all_frozen": (_many(_frozen), ValueError, ["none of the 4 parameters", "requires_grad"]),
    "fit_optimizer_of_another_model": (_fit(_mlp, optimizer=torch.optim.SGD(_mlp().parameters(), lr=0.1)),
                                       ValueError, ["optimizer updates none of the model's"]),
    "fit_non_scalar_regularizer": (_fit(_non_scalar_regularizer), ValueError,
                                   ["'0.weight'", "shape (4, 3)", "one number"]),
    "many_non_scalar_regularizer": (_many(_non_scalar_regularizer), ValueError, ["'0.weight'", "one number"]),
    "fit_constraint_wrong_shape": (_fit(_wrong_constraint), ValueError,
                                   ["_WrongShape() returned shape (3,)", "weight of shape (4, 3)"]),
    "many_constraint_wrong_shape": (_many(_wrong_constraint), ValueError,
                                    ["_WrongShape() returned shape (3,)", "weight of shape (4, 3)"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_argument_is_named(case):
    call, kind, words = CASES[case]
    with pytest.raises(kind) as info:
        call()
    for w in words:
        assert w in str(info.value), (w, str(info.value))


def test_a_constraint_of_the_right_shape_still_trains_and_projects():
    """The shape check lets a real constraint through: MaxNorm keeps every column's norm <= 1."""
    m = _mlp()
    reglab.constrain(m, {"0.weight": reglab.constraints.MaxNorm(1.0)})
    fit(m, X * 50, Y, **{**KW, "epochs": 3, "optimizer": {"name": "sgd", "learning_rate": 1.0}})
    assert float(m[0].weight.norm(dim=1).max()) <= 1.0 + 1e-5


def test_a_frozen_backbone_may_be_shared_by_the_models():
    """Models may share frozen parameters (a pretrained feature extractor): only trainable ones
    must be their own."""
    backbone = nn.Linear(3, 4).requires_grad_(False)
    res = fit_many(lambda: nn.Sequential(backbone, nn.ReLU(), nn.Linear(4, 1), nn.Sigmoid()), X, Y, seeds=[0, 1], **KW)
    assert len(res.models) == 2 and res.models[0][2].weight is not res.models[1][2].weight


def test_divergence_is_reported_without_a_warning():
    """A diverging group is a failed model in the result, said once by reglab, with no torch
    ``UserWarning`` printed per divergence."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        res = fit_many(lambda: nn.Linear(3, 1), X * 1e20, Y, seeds=[0, 1], loss="mse", epochs=2, progress=False,
                       optimizer={"name": "sgd", "learning_rate": 1e10})
    assert sorted(res.failed) == [0, 1] and res.failed[0]["value"] == float("inf")
    assert [str(w.message) for w in seen] == []
