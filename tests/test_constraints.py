import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import reglab
from reglab import attach
import reglab.attach.constraining  # noqa: F401  (its live set, read below)
from reglab import constraints as C

from .test_regularizers import keras_view

CASES = [
    ((4, 3), 0), ((4, 3), 1), ((4, 3), [0, 1]), ((4, 3), None), ((5, 3, 2, 2), [0, 1, 2]), ((5, 3, 2, 2), 3),
    ((6,), 0), ((5, 3, 2, 2), -1),
]


@pytest.mark.parametrize("shape, axis", CASES)
@pytest.mark.parametrize(
    "make",
    [
        lambda m, a: m.MaxNorm(1.3, axis=a), lambda m, a: m.MaxNorm(axis=a),
        lambda m, a: m.MinMaxNorm(0.5, 1.2, rate=0.7, axis=a), lambda m, a: m.MinMaxNorm(axis=a),
        lambda m, a: m.UnitNorm(axis=a), lambda m, a: m.NonNeg(),
    ],
)
def test_parity_with_keras(keras, rng, shape, axis, make):
    w = rng.normal(size=shape)  # torch layout
    ours = make(C, axis)(torch.tensor(w)).numpy()
    theirs = keras.ops.convert_to_numpy(make(keras.constraints, axis)(keras.ops.convert_to_tensor(keras_view(w))))
    np.testing.assert_allclose(keras_view(ours), theirs, rtol=1e-6, atol=1e-12)


def test_axis_zero_is_per_output_unit_of_a_linear_weight():
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64)  # two output units (rows in torch)
    out = C.MaxNorm(1.0)(w)
    torch.testing.assert_close(out.norm(dim=1), torch.tensor([1.0, 0.5], dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("alias", ["max_norm", "min_max_norm", "non_neg", "unit_norm", "MaxNorm", "MinMaxNorm", "NonNeg", "UnitNorm"])
def test_aliases_match_keras(keras, alias):
    ours, theirs = C.get(alias), keras.constraints.get(alias)
    assert type(ours).__name__ == type(theirs).__name__
    tc = {k: (list(v) if isinstance(v, tuple) else v) for k, v in theirs.get_config().items()}
    assert C.serialize(ours)["config"] == pytest.approx(tc)


weights = st.lists(st.floats(-3, 3, allow_nan=False), min_size=6, max_size=6).map(
    lambda v: torch.tensor(v, dtype=torch.float64).reshape(3, 2)
)


@settings(max_examples=60, deadline=None)
@given(w=weights, mx=st.floats(0.1, 3), mn=st.floats(0.0, 1.0), axis=st.sampled_from([0, 1, None]))
def test_projections_are_idempotent_and_satisfy_the_constraint(w, mx, mn, axis):
    dims = reglab._layout.keras_axis_to_torch(axis, 2)
    norms = lambda t: t.square().sum(dim=dims).sqrt()  # noqa: E731
    assume(bool((norms(w) >= 1e-3).all()))
    mn = min(mn, mx)
    for c in (C.MaxNorm(mx, axis), C.MinMaxNorm(mn, mx, 1.0, axis), C.UnitNorm(axis), C.NonNeg()):
        once = c(w)
        twice = c(once)
        # Keras's eps (1e-7) shrinks a norm n by a factor ~1 - 1e-7/n per application: <= 1e-4 for n >= 1e-3
        torch.testing.assert_close(twice, once, rtol=2e-4, atol=1e-6)
        if isinstance(c, C.NonNeg):
            assert bool((once >= 0).all())
            continue
        n = norms(once)
        if isinstance(c, C.MaxNorm):
            assert bool((n <= mx + 1e-9).all())
        elif isinstance(c, C.MinMaxNorm):
            assert bool((n <= mx + 1e-9).all()) and bool((n >= mn * (1 - 1e-4)).all())  # eps=1e-7 over norms >= 1e-3
        else:
            torch.testing.assert_close(n, torch.ones_like(n), rtol=0, atol=1e-4)  # 1 - 1e-7/n


def test_constraint_applies_after_each_optimizer_step_and_is_removable():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    h = reglab.constrain(model, {"0.weight": "max_norm", "2.weight": C.NonNeg()})
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(8, 3)).pow(2).sum().mul(-1).backward()  # push weights up
        opt.step()
        assert float(model[0].weight.norm(dim=1).max()) <= 2.0 + 1e-6
        assert float(model[2].weight.min()) >= 0.0
    h.remove()
    opt.zero_grad()
    model(torch.randn(8, 3)).pow(2).sum().mul(-1).backward()
    opt.step()
    assert float(model[0].weight.norm(dim=1).max()) > 2.0


def test_the_step_hook_leaves_an_engines_own_optimizer_alone_and_the_engine_projects():
    """An optimizer a training engine marks as stepping only its own buffers is skipped by the
    constraint hook (which would find nothing there); the stacked engines project themselves:
    max-norm holds after fit_many and fit, and fit_many's weights equal fit's bit for bit."""
    model = torch.nn.Linear(3, 2)
    reglab.constrain(model, {"weight": C.MaxNorm(0.1)})
    with torch.no_grad():
        model.weight.fill_(1.0)
    model.weight.grad = torch.zeros_like(model.weight)
    marked = torch.optim.SGD(model.parameters(), lr=0.0)
    attach.engine_owned(marked)
    marked.step()
    assert torch.equal(model.weight, torch.ones(2, 3))  # the hook skipped it
    torch.optim.SGD(model.parameters(), lr=0.0).step()
    assert torch.allclose(model.weight.norm(dim=1), torch.full((2,), 0.1))  # any other optimizer: projected

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2)).astype(np.float32) * 3
    y = (x[:, :1] > 0).astype(np.float32)

    def build():
        m = torch.nn.Sequential(reglab.Dense(2, 8, activation="relu"), reglab.Dense(8, 1, activation="sigmoid"))
        reglab.constrain(m, {"*.weight": C.MaxNorm(0.5)})
        return m
    kw = dict(loss="binary_crossentropy", optimizer={"name": "sgd", "learning_rate": 0.5}, epochs=3, batch_size=8)
    many = reglab.fit_many(build, x, y, seeds=[0, 1], **kw)
    assert many.engine == "dense"
    for m in many.models:
        for name, p in m.named_parameters():
            if name.endswith("weight"):
                assert float(p.norm(dim=1).max()) <= 0.5 + 1e-6, name
    torch.manual_seed(1)
    alone = build()
    reglab.fit(alone, x, y, seed=1, **kw)
    for a, b in zip(alone.parameters(), many.models[1].parameters()):
        assert torch.equal(a, b)


def test_apply_constraints_for_hand_written_loops():
    model = torch.nn.Linear(2, 2)
    reglab.constrain(model, {"weight": C.UnitNorm()})
    with torch.no_grad():
        model.weight.mul_(10)
    reglab.apply_constraints(model)
    torch.testing.assert_close(model.weight.norm(dim=1), torch.ones(2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: C.MaxNorm(-1), r"max_value must be a non-negative finite number; got max_value=-1"),
        (lambda: C.MinMaxNorm(2.0, 1.0), r"min_value must be <= max_value; got min_value=2.0, max_value=1.0"),
        (lambda: C.UnitNorm(axis="rows"), r"axis must be an int, a sequence of ints or None; got axis='rows'"),
        (lambda: C.get("maxnorm"), r"unknown constraint 'maxnorm'"),
        (lambda: C.MaxNorm(axis=5)(torch.ones(2, 2)), r"axis 5 is out of range for a tensor of rank 2"),
        (lambda: reglab.constrain(torch.nn.Linear(2, 2), {"*.kernel": "max_norm"}), r"parameter pattern '\*.kernel' matches no parameter name"),
    ],
)
def test_validation_messages(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_idempotence_case_found_by_hypothesis():
    # a unit column of norm 2**-7: the second application moves it by 1e-7 / n = 1.3e-5 (Keras's eps)
    w = torch.tensor([0.0, 0.0078125, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64).reshape(3, 2)
    once = C.UnitNorm(0)(w)
    torch.testing.assert_close(C.UnitNorm(0)(once), once, rtol=2e-4, atol=1e-6)
    assert float((C.UnitNorm(0)(once) - once).abs().max()) > 1e-6  # not exactly idempotent, as in Keras


@pytest.mark.parametrize("c", [C.MaxNorm(0.5), C.MaxNorm(1.0, axis=1), C.MaxNorm(1.0, axis=None), C.MaxNorm(1.0, axis=(0, 1)),
                               C.MaxNorm(1.0, axis=-1), C.MinMaxNorm(0.2, 0.7, 0.5), C.UnitNorm(), C.UnitNorm(axis=None),
                               C.NonNeg()])
@pytest.mark.parametrize("shape", [(7, 5, 3), (7, 4, 3, 3, 2), (7, 6)])
def test_stacked_constraint_is_bit_identical_to_one_model_at_a_time(c, shape):
    """``stacked`` (the Dense-stack engine's after-step projection) equals the constraint applied
    to each model's weight, and ``torch.vmap`` of it, exactly."""
    w = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(len(shape)))
    try:
        each = torch.stack([c(x) for x in w])
    except ValueError:  # an axis beyond this rank: an error for one model as for the stack
        with pytest.raises(ValueError):
            c.stacked(w)
        return
    assert torch.equal(c.stacked(w), each) and torch.equal(torch.vmap(c)(w), each)
    assert not torch.equal(each, w) or isinstance(c, C.NonNeg)


def _plain_loop(model, steps=20):
    """A user's own loop with a stock optimizer: reglab is not called."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 4, generator=torch.Generator().manual_seed(1)).to(next(model.parameters()).dtype)
    for _ in range(steps):
        opt.zero_grad()
        ((model(x) - 10) ** 2).mean().backward()  # a far target: the weights grow
        opt.step()
    return model


def _row_norms(model):
    return torch.linalg.vector_norm(model[0].weight.detach().double(), dim=1)


def _constrained():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    reglab.constrain(model, {"0.weight": C.MaxNorm(0.5)})
    return model


def _torch_roundtrip(model):
    import io

    buf = io.BytesIO()
    torch.save(model, buf)  # the user's whole-model save; reglab itself never unpickles
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _swap(convert):
    def go(model):
        before = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(True)
        try:
            return convert(model)
        finally:
            torch.__future__.set_swap_module_params_on_conversion(before)
    return go


def _assign_state(model):
    import copy

    fresh = copy.deepcopy(model)
    fresh.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)
    return fresh


COPIES = {
    "deepcopy": lambda m: __import__("copy").deepcopy(m),
    "torch_save_load": _torch_roundtrip,
    "double": lambda m: m.double(),
    "double_swap": _swap(lambda m: m.double()),
    "to_float64_swap": _swap(lambda m: m.to(torch.float64)),
    "load_state_dict_assign": _assign_state,
    "compile_eager": lambda m: torch.compile(m, backend="eager"),
}


@pytest.mark.parametrize("how", sorted(COPIES))
def test_constraints_hold_in_a_plain_loop_after_copies_and_conversions(how):
    """MaxNorm(0.5) is enforced in a plain PyTorch loop on a copied/converted/reloaded model,
    without ``refresh_constraints``; the unconstrained control grows past it."""
    model = COPIES[how](_constrained())
    _plain_loop(model)
    inner = getattr(model, "_orig_mod", model)
    assert _row_norms(inner).max() <= 0.5 + 1e-6
    torch.manual_seed(0)
    free = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    assert _row_norms(_plain_loop(free)).max() > 1.0


def test_constraint_handles_and_gone_models():
    import gc

    model = _constrained()
    copy_ = __import__("copy").deepcopy(model)
    n = len(attach.constraining._LIVE)
    del copy_
    gc.collect()
    assert len(attach.constraining._LIVE) <= n  # weak: a model that is gone leaves
    h = reglab.constrain(model, {"2.weight": C.NonNeg()})
    h.remove()
    _plain_loop(model)
    assert (model[2].weight < 0).any()  # removed: not enforced
    assert _row_norms(model).max() <= 0.5 + 1e-6


def test_a_copied_or_orphaned_constrained_submodule_stays_constrained():
    """The reviewer's cases: a deepcopy of a constrained child, and the child trained alone once
    the model it was constrained through is gone."""
    import copy
    import gc

    model = _constrained()
    child = torch.nn.Sequential(copy.deepcopy(model[0]))  # a copy of the owner, inside a new model
    _plain_loop(torch.nn.Sequential(*child, torch.nn.ReLU(), torch.nn.Linear(8, 1)))
    assert _row_norms(child).max() <= 0.5 + 1e-6
    lin = torch.nn.Linear(4, 8)
    reglab.constrain(torch.nn.Sequential(lin), {"0.weight": C.MaxNorm(0.5)})
    gc.collect()  # the Sequential is gone; lin keeps its constraint
    orphan = torch.nn.Sequential(lin, torch.nn.ReLU(), torch.nn.Linear(8, 1))
    _plain_loop(orphan)
    assert _row_norms(orphan).max() <= 0.5 + 1e-6
