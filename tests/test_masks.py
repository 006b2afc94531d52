import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import reglab
from reglab.vectorized import masks


def _one_by_one(gens, calls, dtype):
    """What each model's nn.Dropout calls draw alone: empty_like(x).bernoulli_(q) / q per call."""
    out = []
    for p, shape in calls:
        noise = torch.empty((len(gens),) + shape, dtype=dtype)
        for m, g in enumerate(gens):
            if p == 1:
                noise[m].zero_()
            else:
                noise[m].bernoulli_(1.0 - p, generator=g)
                noise[m].div_(1.0 - p)
        out.append(noise)
    return out


def test_the_recipe_holds_on_this_torch_build():
    assert masks.recipe_holds()


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 5), st.lists(st.tuples(st.sampled_from([0.1, 0.2, 0.5, 0.8, 1.0, 1 / 3]),
                                             st.tuples(st.integers(0, 7), st.integers(1, 9))), min_size=1, max_size=4),
       st.sampled_from([torch.float32, torch.float64]), st.integers(0, 2**31))
def test_a_stacks_masks_are_each_models_own_bernoulli_draws(M, calls, dtype, seed):
    """draw = every model's masks drawn alone by torch's bernoulli_, bit for bit, and each
    generator left in the same state (so later draws agree too)."""
    mine = [torch.Generator().manual_seed(seed + m) for m in range(M)]
    ref = [torch.Generator().manual_seed(seed + m) for m in range(M)]
    got = masks.draw(mine, calls, dtype)
    want = _one_by_one(ref, calls, dtype)
    for a, b in zip(got, want):
        assert a.dtype == dtype and a.shape == b.shape and torch.equal(a, b)
    for a, b in zip(mine, ref):
        assert torch.equal(a.get_state(), b.get_state())


def test_dropout_one_on_the_dense_engine_zeroes_its_input_as_torch_does():
    """Reproducer: Dropout(1.0) on the Dense-stack engine divided by 1 - p = 0 (NaN, "training
    diverged"); torch multiplies by zero and draws nothing. Now fit trains: the layers before it
    get no gradient, the output bias does; fit_many's models equal fit's."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2)).astype(np.float32)
    y = (x[:, :1] > 0).astype(np.float32)

    def build():
        return nn.Sequential(reglab.Dense(2, 4, activation="relu"), nn.Dropout(1.0),
                             reglab.Dense(4, 1, activation="sigmoid"))
    kw = dict(loss="binary_crossentropy", optimizer={"name": "sgd", "learning_rate": 0.5}, epochs=2, batch_size=8)
    torch.manual_seed(0)
    m = build()
    w0 = m[0].weight.detach().clone()
    b2 = m[2].bias.detach().clone()
    h = reglab.fit(m, x, y, seed=0, **kw)
    assert np.isfinite(h.history["loss"]).all()
    assert torch.equal(m[0].weight, w0) and not torch.equal(m[2].bias, b2)
    many = reglab.fit_many(build, x, y, seeds=[0, 1], **kw)
    assert many.engine == "dense"
    for a, b in zip(m.parameters(), many.models[0].parameters()):
        assert torch.equal(a, b)
