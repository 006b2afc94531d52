"""The vmap path of ``fit_many`` (any module): each model trains as ``fit`` trains it, and its
numbers do not depend on the group it trains in."""

import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab.vectorized.stack import random_calls

LOSS = {"name": "sparse_categorical_crossentropy", "from_logits": True}


def images(n=70, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    x = (rng.normal(size=(n, 2, 6, 6)) + y[:, None, None, None]).astype(np.float32)
    return x, y


def cnn():
    # (no bias before the batch norm: its gradient is rounding noise, which Adam and RMSprop scale up)
    return nn.Sequential(nn.Conv2d(2, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(),
                         nn.Linear(64, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def weights(model):
    return torch.cat([v.detach().flatten() for v in model.state_dict().values() if v.is_floating_point()])


OPTIMIZERS = ["adam", {"name": "adamw", "weight_decay": 0.05}, {"name": "sgd", "momentum": 0.9, "nesterov": True},
              "rmsprop"]


@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=["adam", "adamw", "sgd_nesterov", "rmsprop"])
def test_each_vmap_model_trains_as_fit_trains_it(optimizer):
    """Three CNNs with batch norm and two dropout layers trained together follow ``fit`` of each
    alone: the same dropout masks (each model's own generator), the same optimizer update (the
    row-padded buffer); only the batched kernels round differently (~1e-8)."""
    x, y = images()
    kw = dict(loss=LOSS, optimizer=optimizer, epochs=3, batch_size=16, validation_data=(x[:20], y[:20]), threads=1)
    many = reglab.fit_many(cnn, x, y, seeds=[0, 1, 2], progress=False, **kw)
    assert many.engine == "vmap"
    for i, seed in enumerate([0, 1, 2]):
        torch.manual_seed(seed)
        model = cnn()
        h = reglab.fit(model, x, y, seed=seed, progress=False, **kw)
        for k in h.keys():  # an accuracy may flip one example (of 20) sitting at a tie
            np.testing.assert_allclose(many.histories[i][k], h[k], rtol=2e-5, atol=0.051 if "acc" in k else 0,
                                       err_msg=k)
        np.testing.assert_allclose(weights(many.models[i]), weights(model), rtol=1e-4, atol=2e-5)
    assert not torch.equal(weights(many.models[0]), weights(many.models[1]))


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("optimizer", ["adam", {"name": "sgd", "momentum": 0.9}], ids=["adam", "sgd_momentum"])
def test_a_vmap_model_gets_the_same_numbers_in_every_group(threads, optimizer):
    """Seed 2's history and weights, bit for bit, in groups of 4, 2 and 3 models (it sits at
    index 2, 0 and 1; the stacked tensors' sizes differ), at 1 and 2 threads."""
    x, y = images()
    kw = dict(loss=LOSS, optimizer=optimizer, epochs=3, batch_size=16, validation_data=(x[:20], y[:20]),
              threads=threads, progress=False)
    seen = []
    for seeds in ([0, 1, 2, 3], [2, 5], [1, 2, 3]):
        res = reglab.fit_many(cnn, x, y, seeds=seeds, **kw)
        assert res.engine == "vmap" and res.threads == threads
        i = seeds.index(2)
        seen.append((res.histories[i].to_dict(), weights(res.models[i])))
    for hist, w in seen[1:]:
        assert hist == seen[0][0]
        assert torch.equal(w, seen[0][1])


def test_balanced_chunks_give_the_same_numbers_as_one_group():
    """A memory budget that splits five models into chunks of 3 and 2 (never 4 and 1: one model
    alone would train on other kernels) gives the one-group numbers, bit for bit."""
    x, y = images()
    kw = dict(loss=LOSS, epochs=2, batch_size=16, threads=1, progress=False)
    whole = reglab.fit_many(cnn, x, y, seeds=range(5), **kw)
    from reglab.vectorized.fit_many import _estimate_bytes

    per_model = _estimate_bytes(cnn(), 16, 6)
    chunked = reglab.fit_many(cnn, x, y, seeds=range(5), memory_budget=int(per_model * 4), **kw)
    assert whole.chunks == 1 and chunked.chunks == 2 and chunked.engine == "vmap"
    for a, b, ma, mb in zip(whole.histories, chunked.histories, whole.models, chunked.models):
        assert a.to_dict() == b.to_dict() and torch.equal(weights(ma), weights(mb))


class Noise(nn.Module):
    def forward(self, x):
        return x + torch.randn_like(x) if self.training else x


def test_random_calls_lists_dropout_calls_and_finds_other_randomness():
    """The probe lists every ``nn.Dropout`` call with its input shape, in order (a module called
    twice appears twice; p = 0 is no call), flags any other draw from the global generator, and
    changes nothing: the generator, batch-norm statistics, the mode, recorded activity."""
    drop = nn.Dropout(0.2)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.bn, self.b, self.drop, self.off = nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3), drop, \
                nn.Dropout(0.0)

        def forward(self, x):
            return self.off(self.drop(self.b(self.drop(self.bn(self.a(x))))))

    model = Twice().eval()
    reglab.regularize(model, activity={"a": reglab.L2(0.1)})
    x = torch.randn(6, 5)
    rng, stats = torch.get_rng_state(), model.bn.running_mean.clone()
    calls, other = random_calls(model, x)
    assert [(d is drop, tuple(s)) for d, s in calls] == [(True, (6, 4)), (True, (6, 3))]
    assert other is False
    assert torch.equal(torch.get_rng_state(), rng) and torch.equal(model.bn.running_mean, stats)
    assert not model.training and reglab.penalties(model) == {}
    noisy = nn.Sequential(nn.Linear(5, 4), Noise())
    rng = torch.get_rng_state()
    assert random_calls(noisy, x) == ([], True)
    assert torch.equal(torch.get_rng_state(), rng)


def test_frozen_parameters_stay_frozen_on_the_vmap_path():
    """A parameter with ``requires_grad=False`` (a frozen first layer) is left out of the
    optimizer's buffer: AdamW's weight decay does not touch it, as in ``fit``."""
    x, y = images()

    def build():
        m = cnn()
        m[0].weight.requires_grad_(False)
        return m

    kw = dict(loss=LOSS, optimizer={"name": "adamw", "weight_decay": 0.5}, epochs=2, batch_size=16, threads=1)
    res = reglab.fit_many(build, x, y, seeds=[0, 1], progress=False, **kw)
    assert res.engine == "vmap"
    for seed, model in zip([0, 1], res.models):
        torch.manual_seed(seed)
        fresh = build()
        assert torch.equal(model[0].weight, fresh[0].weight)  # frozen: bit for bit its initial value
        assert not torch.equal(model[5].weight, fresh[5].weight)
        reglab.fit(fresh, x, y, seed=seed, progress=False, **kw)
        np.testing.assert_allclose(model[5].weight.detach(), fresh[5].weight.detach(), rtol=1e-4, atol=2e-5)


def test_a_model_that_stopped_keeps_its_batch_norm_statistics():
    """Early stopping with batch norm: a model that stopped keeps its running statistics while its
    partners train on, so its numbers do not depend on how long they train (seed 1 beside seed 0,
    which stops at another epoch than seed 3)."""
    from reglab import EarlyStopping

    x, y = images()
    kw = dict(loss=LOSS, epochs=12, batch_size=16, validation_data=(x[:20], y[:20]), threads=1, progress=False)
    seen = []
    for seeds in ([1, 0], [1, 3]):
        res = reglab.fit_many(cnn, x, y, seeds=seeds, callbacks=[EarlyStopping(monitor="loss", patience=0)], **kw)
        seen.append(([len(h) for h in res.histories], weights(res.models[0]), res.models[0][1].num_batches_tracked))
    assert seen[0][0][0] == seen[1][0][0] < 12 and seen[0][0][1] != seen[1][0][1]  # partners stop at other epochs
    assert torch.equal(seen[0][1], seen[1][1]) and int(seen[0][2]) == int(seen[1][2])


def test_an_unused_parameter_is_not_decayed():
    """A parameter the forward pass never uses gets no update (torch skips a None gradient), on
    the vmap path too: AdamW's weight decay leaves it alone."""
    class Spare(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.spare = cnn(), nn.Linear(3, 3)

        def forward(self, x):
            return self.net(x)

    x, y = images()
    res = reglab.fit_many(Spare, x, y, seeds=[0, 1], loss=LOSS, optimizer={"name": "adamw", "weight_decay": 0.5},
                          epochs=2, batch_size=16, threads=1, progress=False)
    assert res.engine == "vmap"
    for seed, model in zip([0, 1], res.models):
        torch.manual_seed(seed)
        assert torch.equal(model.spare.weight, Spare().spare.weight)
