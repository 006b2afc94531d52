import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reglab
from reglab import regularizers as R

from .conftest import to_np
from .lecture import keras_custom_regularizers

SHAPES = [(7,), (4, 3), (3, 9), (2, 3, 4, 5)]


def keras_view(w):
    """The Keras kernel holding the same numbers as a torch weight (reglab._layout rule)."""
    if w.ndim < 2:
        return w
    return np.transpose(w, tuple(range(2, w.ndim)) + (1, 0))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.L1(0.3), lambda m: m.L2(0.07), lambda m: m.L1L2(0.01, 0.2), lambda m: m.L1L2(0.001),
        lambda m: m.L1(), lambda m: m.L2(), lambda m: m.L1L2(l2=0.5),
    ],
)
def test_elementwise_parity_with_keras(keras, rng, shape, make):
    w = rng.normal(size=shape)
    ours = make(R)(torch.tensor(w))
    theirs = make(keras.regularizers)(keras.ops.convert_to_tensor(keras_view(w)))
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


@pytest.mark.parametrize("shape", [(4, 3), (3, 9), (6, 6), (1, 5)])
@pytest.mark.parametrize("mode", ["rows", "columns"])
@pytest.mark.parametrize("factor", [0.01, 0.7])
def test_orthogonal_parity_with_keras(keras, rng, shape, mode, factor):
    w = rng.normal(size=shape)  # torch layout (out, in)
    ours = R.OrthogonalRegularizer(factor, mode)(torch.tensor(w))
    theirs = keras.regularizers.OrthogonalRegularizer(factor, mode)(keras.ops.convert_to_tensor(w.T))
    if not math.isfinite(float(theirs)):  # n = 1: both divide 0 by 0
        assert not math.isfinite(float(ours))
        return
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def test_orthogonal_rows_means_keras_rows_on_the_kernel():
    # a Linear weight (out=2, in=3) whose Keras kernel K = W.T has orthogonal rows but not columns
    w = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    k = w.T  # rows of K: (1,0), (0,1), (1,1) -> not orthogonal; columns: (1,0,1),(0,1,1) -> cos 0.5
    rows = R.OrthogonalRegularizer(1.0, "rows")(w)
    cols = R.OrthogonalRegularizer(1.0, "columns")(w)
    assert float(cols) == pytest.approx(0.5 * 2 * 0.5 / 1.0)
    kn = k / k.norm(dim=1, keepdim=True)
    p = kn @ kn.T
    assert float(rows) == pytest.approx(0.5 * float((p - torch.diag(torch.diag(p))).abs().sum()) / 3.0)


def test_orthogonal_rejects_other_ranks():
    with pytest.raises(ValueError, match="rank-2"):
        R.OrthogonalRegularizer()(torch.ones(2, 2, 2))


@pytest.mark.parametrize(
    "alias", ["l1", "l2", "l1l2", "orthogonal_regularizer", "L1", "L2", "L1L2", "OrthogonalRegularizer"]
)
def test_aliases_match_keras(keras, alias):
    ours = R.get(alias)
    theirs = keras.regularizers.get(alias)
    assert type(ours).__name__ == type(theirs).__name__
    tc = theirs.get_config()
    oc = ours.get_config()
    assert set(oc) == set(tc)
    for k, v in tc.items():
        assert oc[k] == (pytest.approx(v, rel=1e-6) if isinstance(v, float) else v)


def test_l1l2_positional_is_pure_l1(keras):
    assert R.L1L2(0.001).get_config() == {"l1": 0.001, "l2": 0.0}
    assert keras.regularizers.L1L2(0.001).get_config()["l2"] == 0.0
    w = torch.randn(5, 4, dtype=torch.float64)
    assert float(R.L1L2(0.001)(w)) == pytest.approx(float(R.L1(0.001)(w)))


def test_keras_serialized_dict_is_accepted(keras):
    d = keras.regularizers.serialize(keras.regularizers.L1L2(l1=0.25, l2=0.5))
    r = R.get(d)
    assert isinstance(r, R.L1L2) and r.l1 == pytest.approx(0.25) and r.l2 == pytest.approx(0.5)


def test_custom_l3_matches_keras_custom_regularizer(keras, rng):
    RegL3, _ = keras_custom_regularizers(keras)  # the lecture's program 3, in Keras 3 ops
    w = rng.normal(size=(4, 6))
    assert float(R.Lp(3, 0.01)(torch.tensor(w))) == pytest.approx(float(RegL3(0.01)(keras.ops.convert_to_tensor(w))), rel=1e-9)


def test_kl_sparsity_matches_lecture_formula(keras, rng):
    _, KLLoss = keras_custom_regularizers(keras)  # the lecture's program 7, in Keras 3 ops
    q = np.maximum(rng.normal(size=(20, 32)), 0) * 0.3  # relu-like, some exact zeros
    q[:, 3] = 0.0  # a dead unit: clipping at 1e-6 matters
    ours = R.KLSparsity(0.05, 0.1)(torch.tensor(q))
    theirs = KLLoss(0.1, 0.05)(keras.ops.convert_to_tensor(q))
    # Keras's clip bounds go through float32 (1e-6 -> 9.99999997e-07), hence rel 1e-6, not exact
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
    # golden value at rho_hat == rho: zero
    assert float(R.KLSparsity(0.2, 1.0)(torch.full((4, 3), 0.2, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize(
    "reg",
    [R.L1(0.3), R.L2(0.2), R.L1L2(0.1, 0.2), R.Lp(3, 0.5), R.Lp(1.5, 0.5), R.OrthogonalRegularizer(0.4, "rows"),
     R.OrthogonalRegularizer(0.4, "columns"), R.KLSparsity(0.1, 0.3), R.L1(0.1) + 2 * R.L2(0.3)],
    ids=repr,
)
def test_gradcheck(reg):
    g = torch.Generator().manual_seed(0)
    if isinstance(reg, R.KLSparsity):
        x = (torch.rand(6, 4, generator=g, dtype=torch.float64) * 0.5 + 0.05).requires_grad_()
    else:
        x = (torch.randn(5, 4, generator=g, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(reg, (x,))


def test_gradient_of_l2_is_2_lambda_w():
    w = torch.randn(3, 3, dtype=torch.float64, requires_grad=True)
    R.L2(0.25)(w).backward()
    torch.testing.assert_close(w.grad, 0.5 * w.detach())


strengths = st.floats(0, 10, allow_nan=False)
arrays = st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=20)


@settings(max_examples=40, deadline=None)
@given(a=strengths, c=st.floats(0, 10), xs=arrays)
def test_l1_l2_scale_linearly(a, c, xs):
    x = torch.tensor(xs, dtype=torch.float64)
    for cls in (R.L1, R.L2):
        assert float(cls(a * c)(x)) == pytest.approx(c * float(cls(a)(x)), rel=1e-9, abs=1e-12)
        assert float((c * cls(a))(x)) == pytest.approx(c * float(cls(a)(x)), rel=1e-9, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(a=strengths, b=strengths, xs=arrays)
def test_composition_adds(a, b, xs):
    x = torch.tensor(xs, dtype=torch.float64)
    combo = R.L1(a) + R.L2(b) + R.Lp(3, a)
    expected = float(R.L1(a)(x)) + float(R.L2(b)(x)) + float(R.Lp(3, a)(x))
    assert float(combo(x)) == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert float(combo(x)) == pytest.approx(float(R.L1L2(a, b)(x) + R.Lp(3, a)(x)), rel=1e-9, abs=1e-12)


reg_strategy = st.one_of(
    st.builds(R.L1, strengths), st.builds(R.L2, strengths), st.builds(R.L1L2, strengths, strengths),
    st.builds(R.Lp, st.floats(0.5, 4), strengths),
    st.builds(R.OrthogonalRegularizer, strengths, st.sampled_from(["rows", "columns"])),
    st.builds(R.KLSparsity, st.floats(0.01, 0.99), strengths),
)


@settings(max_examples=60, deadline=None)
@given(r1=reg_strategy, r2=reg_strategy, c=strengths)
def test_config_round_trip_is_identity(r1, r2, c):
    import json

    for r in (r1, r1 + r2, c * r1, c * (r1 + r2)):
        cfg = json.loads(json.dumps(R.serialize(r)))
        back = R.deserialize(cfg)
        assert back == r
        assert R.serialize(back) == R.serialize(r)
        x = torch.rand(4, 3, dtype=torch.float64) * 0.5 + 0.1
        assert float(back(x)) == pytest.approx(float(r(x)), rel=1e-12, abs=1e-15)


def test_custom_subclass_and_function():
    class Cubes(R.Regularizer):
        def __call__(self, x):
            return (x**3).sum()

    x = torch.tensor([1.0, 2.0])
    assert float(Cubes()(x)) == 9.0
    assert float((Cubes() + R.L1(1.0))(x)) == 12.0
    f = R.from_function(lambda x: x.abs().max(), name="max_abs")
    assert float(f(torch.tensor([-3.0, 2.0]))) == 3.0
    assert float(R.deserialize(R.serialize(f))(torch.tensor([-4.0]))) == 4.0
    with pytest.raises(NotImplementedError, match="from_function"):
        R.from_function(lambda x: x.sum()).get_config()
    with pytest.raises(NotImplementedError, match="must implement"):
        R.Regularizer()(x)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: R.L1(-0.1), r"l1 must be a non-negative finite number; got l1=-0.1"),
        (lambda: R.L2(float("nan")), r"l2 must be a non-negative finite number; got l2=nan"),
        (lambda: R.L1L2(0.1, float("inf")), r"l2 must be a non-negative finite number; got l2=inf"),
        (lambda: R.L1("big"), r"l1 must be a non-negative finite number; got 'big' of type str"),
        (lambda: R.KLSparsity(rho=1.0), r"rho must lie strictly between 0 and 1; got rho=1.0"),
        (lambda: R.KLSparsity(rho=0.0), r"rho must lie strictly between 0 and 1; got rho=0.0"),
        (lambda: R.KLSparsity(strength=-1), r"strength must be a non-negative finite number; got strength=-1"),
        (lambda: R.Lp(0, 0.1), r"p must be > 0; got p=0"),
        (lambda: R.Lp(-2, 0.1), r"p must be a non-negative finite number; got p=-2"),
        (lambda: R.OrthogonalRegularizer(mode="diag"), r"mode must be one of \['columns', 'rows'\]; got mode='diag'"),
        (lambda: R.get("l3"), r"unknown regularizer 'l3'; expected one of"),
        (lambda: R.deserialize({"class_name": "Nope", "config": {}}), r"unknown regularizer 'Nope'"),
        (lambda: R.get(3.0), r"could not interpret regularizer identifier 3.0"),
        (lambda: 2 * R.L1() if False else R.Scaled(-1.0, R.L1()), r"factor must be a non-negative finite number; got factor=-1.0"),
    ],
)
def test_validation_messages(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_get_resolves_everything():
    assert R.get(None) is None
    r = R.L2(0.3)
    assert R.get(r) is r
    assert isinstance(R.get(R.L1), R.L1)
    assert R.get({"class_name": "L2", "config": {"l2": 0.5}}) == R.L2(0.5)
    assert R.get("kl_sparsity") == R.KLSparsity()
    assert isinstance(reglab.L1(), reglab.Regularizer)
    assert float(to_np(R.get("l1l2")(torch.ones(3)))) == 0.0
