"""One engine seam: which engine trains which model (one chooser), forced engines, and every model
``fit`` trains also training in ``fit_many`` -- with each model's numbers equal to ``fit`` of that
model alone (bit for bit on the per-model loop and the Dense-stack engine)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import reglab
from reglab.engines import EngineUnavailable, choose_engine
from reglab.engines.choose import EngineChoice
from reglab.losses import get as get_loss


# ----------------------------------------------------------------------------- models no other test uses


class Recurrent(nn.Module):
    """A sequence classifier: an ``nn.GRU``/``nn.LSTM``/``nn.RNN`` over (B, T, F), its last state."""

    def __init__(self, kind="GRU", features=3, hidden=5, classes=3):
        super().__init__()
        self.rnn = getattr(nn, kind)(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class CellLoop(nn.Module):
    """An ``nn.LSTMCell`` stepped over time by hand."""

    def __init__(self, features=3, hidden=5, classes=3):
        super().__init__()
        self.cell = nn.LSTMCell(features, hidden)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        return self.head(state[0])


class Attention(nn.Module):
    """A ``TransformerEncoderLayer`` (attention dropout drawn by ``F.dropout`` inside) and a head."""

    def __init__(self, features=3, classes=3, dropout=0.1):
        super().__init__()
        self.inp = nn.Linear(features, 8)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=dropout, batch_first=True)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.enc(self.inp(x)).mean(1))


class BagOfTokens(nn.Module):
    """Token ids (integers, no cast here) -> mean embedding -> logits."""

    def __init__(self, vocab=12, dim=4, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


def bn_cnn(classes=3):
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * 4 * 4, classes))


class Square(torch.autograd.Function):
    """x^2 with its own backward and no ``setup_context``: ``torch.vmap`` refuses it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return Square.apply(self.lin(x))


class Branchy(nn.Module):
    """Control flow on the data: vmap cannot batch a Python ``if`` on a tensor."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        h = self.lin(x)
        return h if bool(h.sum() > 0) else -h


def sequences(n=40, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 6, 3)).astype(np.float32)
    return x, (x[:, :, 0].sum(1) > 0).astype(np.int64) + (x[:, :, 1].sum(1) > 1)


def tokens(n=40, seed=0):
    g = np.random.default_rng(seed)
    ids = g.integers(0, 12, size=(n, 5))
    return ids, (ids % 3 == 0).sum(1).clip(0, 2)


def features(n=40, seed=0):
    g = np.random.default_rng(seed + 1)
    return g.normal(size=(n, 4)), np.arange(n) % 3


def images(n=40, seed=0):
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 1, 4, 4)).astype(np.float32)
    return x, (x[:, 0, :2].sum((1, 2)) > 0).astype(np.int64) + (x[:, 0, 2:].sum((1, 2)) > 1)


SPARSE = {"name": "sparse_categorical_crossentropy", "from_logits": True}

CASES = {  # name: (build, data, expected engine for 3 models, what the reason names)
    "mlp": (lambda: reglab.models.mlp(4, [dict(units=5, activation="relu"), dict(units=3)]), features, "dense",
            "Sequential"),
    "gru": (lambda: Recurrent("GRU"), sequences, "loop", "aten::gru"),
    "lstm": (lambda: Recurrent("LSTM"), sequences, "loop", "aten::lstm"),
    "rnn": (lambda: Recurrent("RNN"), sequences, "loop", "aten::rnn_tanh"),
    "lstm_cell": (CellLoop, sequences, "loop", "aten::lstm_cell"),
    "attention_dropout": (Attention, sequences, "loop", "outside nn.Dropout"),
    "bn_cnn": (bn_cnn, images, "vmap", "vmap"),
    "embedding": (BagOfTokens, tokens, "vmap", "vmap"),
    "custom_function": (Custom, features, "loop", "setup_context"),
    "data_dependent_control_flow": (Branchy, features, "loop", "control flow"),
}


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", list(CASES))
def test_the_engine_table(name):
    """Which engine trains three models of each kind, and the reason says why (the one chooser)."""
    build, data, kind, why = CASES[name]
    torch.manual_seed(0)
    model = build()
    x, y = data()
    xb = torch.as_tensor(x[:2])
    xb = xb.float() if xb.is_floating_point() else xb
    choice = choose_engine(model, get_loss(SPARSE), (xb, torch.as_tensor(y[:2])), n_models=3)
    assert choice.kind == kind, choice.reason
    assert why in choice.reason
    # one model alone: the per-model loop wherever the Dense-stack engine does not apply
    alone = choose_engine(model, get_loss(SPARSE), (xb, torch.as_tensor(y[:2])), n_models=1)
    assert alone.kind == ("dense" if kind == "dense" else "loop")
    assert choice.group_rule == {"dense": "any", "vmap": "pairs", "loop": "threads"}[kind]


def test_the_vmap_refusal_names_the_module_and_the_op():
    torch.manual_seed(0)
    x, y = sequences()
    choice = choose_engine(Recurrent("LSTM"), get_loss(SPARSE), (torch.as_tensor(x[:2]), torch.as_tensor(y[:2])),
                           n_models=2)
    assert choice.reason.startswith("torch.vmap cannot batch 'rnn' (LSTM): it has no batching rule for aten::lstm.input")


@pytest.mark.parametrize("engine, build, data, message", [
    ("vmap", lambda: Recurrent("GRU"), sequences,
     r"^engine='vmap' cannot train this model: torch.vmap cannot batch 'rnn' \(GRU\): it has no batching rule for "
     r"aten::gru.input$"),
    ("vmap", Attention, sequences, r"^engine='vmap' cannot train this model: 'enc.self_attn' \(MultiheadAttention\) draws "
     r"random numbers outside nn.Dropout"),
    ("dense", bn_cnn, images, r"^engine='dense' cannot train this model: its inputs have 3 axes per example"),
    ("dense", BagOfTokens, tokens, r"^engine='dense' cannot train this model: its inputs are torch.int64"),
])
def test_a_forced_engine_that_cannot_train_the_model_says_why_in_one_line(engine, build, data, message):
    x, y = data()
    with pytest.raises(EngineUnavailable, match=message) as err:
        reglab.fit_many(build, x, y, seeds=[0, 1], loss=SPARSE, epochs=1, progress=False, engine=engine)
    assert "\n" not in str(err.value)


def test_an_unknown_engine_is_refused_before_anything_is_built():
    built = []
    with pytest.raises(ValueError, match=r"engine must be 'auto', one of \['fused', 'dense', 'vmap', 'loop'\] or an "
                                         r"EngineChoice; got engine='jit'"):
        reglab.fit_many(lambda: built.append(1) or Custom(), np.zeros((4, 4)), np.zeros(4), seeds=[0], loss="mse",
                        engine="jit")
    with pytest.raises(ValueError, match=r"got engine=EngineChoice\(kind='jit'"):
        reglab.fit_many(lambda: built.append(1) or Custom(), np.zeros((4, 4)), np.zeros(4), seeds=[0], loss="mse",
                        engine=EngineChoice("jit", "mine"))
    assert not built


def test_fit_many_trains_on_the_engine_choice_it_is_given_without_choosing_again(monkeypatch):
    """An ``EngineChoice`` (an experiment plan's) is used as it is: the chooser is not called
    again, and the models get the numbers the chooser's own choice gives them."""
    fm = sys.modules["reglab.vectorized.fit_many"]  # the module (the package's name is the function)
    x, y = sequences()
    kw = dict(seeds=[0, 1], loss=SPARSE, epochs=2, batch_size=8, progress=False, threads=1)
    build = lambda: Recurrent("GRU")  # noqa: E731
    auto = reglab.fit_many(build, x, y, **kw)
    torch.manual_seed(0)
    choice = choose_engine(build(), get_loss(SPARSE), (torch.as_tensor(x[:2]), torch.as_tensor(y[:2])), n_models=2)
    assert (choice.kind, auto.engine) == ("loop", "loop")
    monkeypatch.setattr(fm, "choose_engine", lambda *a, **k: pytest.fail("chosen again"))
    given = reglab.fit_many(build, x, y, engine=choice, **kw)
    assert (given.engine, given.engine_reason) == (choice.kind, choice.reason)
    for a, b in zip(auto.models, given.models):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def _fit_alone(build, seed, x, y, **kw):
    torch.manual_seed(seed)
    model = build()
    h = reglab.fit(model, x, y, loss=SPARSE, seed=seed, progress=False, threads=1, **kw)
    return h, model


@pytest.mark.parametrize("name", ["gru", "lstm", "rnn", "lstm_cell", "attention_dropout", "bn_cnn", "embedding",
                                  "custom_function", "data_dependent_control_flow"])
def test_every_model_trains_in_fit_many_as_fit_trains_it_alone(name):
    """3 seeds with validation data: each model's history and final weights equal ``fit`` of that
    model alone -- bit for bit on the loop engine; within the vmap tolerance on vmap, and bit for
    bit there too when the loop is forced."""
    build, data, kind, _ = CASES[name]
    x, y = data()
    xv, yv = data(seed=1)
    kw = dict(epochs=2, batch_size=16, validation_data=(xv, yv))
    many = reglab.fit_many(build, x, y, seeds=[0, 1, 2], loss=SPARSE, progress=False, threads=1, **kw)
    assert many.engine == kind
    forced = reglab.fit_many(build, x, y, seeds=[0, 1, 2], loss=SPARSE, progress=False, threads=1, engine="loop", **kw)
    assert forced.engine == "loop"
    for i, seed in enumerate([0, 1, 2]):
        h, model = _fit_alone(build, seed, x, y, **kw)
        for k in h.history:
            np.testing.assert_array_equal(forced.histories[i][k], h[k], err_msg=f"{name} seed {seed}: {k}")
        for k, v in weights(model).items():
            assert torch.equal(weights(forced.models[i])[k], v), f"{name} seed {seed}: {k}"
        if kind == "loop":
            assert many.histories[i].history == forced.histories[i].history
        else:
            for k in h.history:
                np.testing.assert_allclose(many.histories[i][k], h[k], rtol=2e-5, atol=0.051 if "acc" in k else 1e-6)


def test_integer_inputs_stay_integers_and_float_models_still_get_floats():
    """An nn.Embedding model trains on integer ids with no cast in its forward; an MLP given
    integer features still trains (on floats), as before."""
    x, y = tokens()
    torch.manual_seed(0)
    h = reglab.fit(BagOfTokens(), x, y, loss=SPARSE, epochs=2, batch_size=8, progress=False)
    assert np.isfinite(h["loss"]).all() and h["loss"][-1] < h["loss"][0]
    torch.manual_seed(0)
    ints = reglab.fit(reglab.models.mlp(5, [dict(units=3)]), x, y, loss=SPARSE, epochs=1, progress=False)
    torch.manual_seed(0)
    floats = reglab.fit(reglab.models.mlp(5, [dict(units=3)]), x.astype(np.float32), y, loss=SPARSE, epochs=1,
                        progress=False)
    assert ints.history == floats.history


class Jitter(Dataset):
    """A map-style dataset with random augmentation (noise from the global generator)."""

    def __init__(self, x, y):
        self.x, self.y = torch.as_tensor(x), torch.as_tensor(y)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


@pytest.mark.parametrize("build", [lambda: Recurrent("GRU"), bn_cnn], ids=["loop", "vmap"])
def test_fit_many_takes_a_dataset_and_a_dataloader_as_fit_does(build):
    """A Dataset: each model its own loader, shuffled by its seed, as ``fit(model, dataset,
    seed=s)``; a DataLoader: its batches serve every model (here unshuffled: each equals fit)."""
    x, y = sequences() if build().__class__ is Recurrent else images()
    ds = Jitter(x, y)
    many = reglab.fit_many(build, ds, seeds=[3, 4], loss=SPARSE, epochs=2, batch_size=8, progress=False, threads=1,
                           engine="loop")
    loader = DataLoader(TensorDataset(torch.as_tensor(x), torch.as_tensor(y)), batch_size=8)
    shared = reglab.fit_many(build, loader, seeds=[3, 4], loss=SPARSE, epochs=2, progress=False, threads=1,
                             validation_data=loader)
    for i, seed in enumerate([3, 4]):
        torch.manual_seed(seed)
        model = build()
        h = reglab.fit(model, ds, loss=SPARSE, epochs=2, batch_size=8, seed=seed, progress=False, threads=1)
        assert many.histories[i].history == h.history
        torch.manual_seed(seed)
        h2 = reglab.fit(build(), loader, loss=SPARSE, epochs=2, validation_data=loader, progress=False, threads=1)
        if shared.engine == "loop":
            assert shared.histories[i].history == h2.history
        else:
            np.testing.assert_allclose(shared.histories[i]["loss"], h2["loss"], rtol=2e-5)
    assert shared.histories[0].history != shared.histories[1].history  # other initial weights


def test_the_loop_engine_stops_each_model_and_isolates_a_failure():
    """Per-model early stopping and a model that diverges: the others go on, each as fit alone."""

    class Diverges(Recurrent):
        def __init__(self, boom):
            super().__init__("GRU")
            self.boom, self.calls = boom, 0

        def forward(self, x):
            self.calls += self.training
            out = super().forward(x)
            return out * float("nan") if self.boom and self.calls >= 4 else out

    x, y = sequences()
    xv, yv = sequences(seed=2)
    es = reglab.EarlyStopping(monitor="val_loss", patience=1, min_delta=0.5, restore_best_weights=True)
    kw = dict(epochs=6, batch_size=16, validation_data=(xv, yv), callbacks=[es])
    many = reglab.fit_many(Diverges, x, y, seeds=[0], grid=[{"boom": False}, {"boom": True}], loss=SPARSE,
                           progress=False, threads=1, **kw)
    assert many.engine == "loop" and list(many.failed) == [1] and many.failed[1]["epoch"] == 1
    torch.manual_seed(0)
    model = Diverges(False)
    h = reglab.fit(model, x, y, loss=SPARSE, seed=0, progress=False, threads=1, **kw)
    assert len(h) < 6 and many.histories[0].history == h.history
    for k, v in weights(model).items():
        assert torch.equal(weights(many.models[0])[k], v)


@pytest.mark.parametrize("mode, values", [("min", [1.0, 0.8, 0.75, 0.74, 0.5]),
                                          ("max", [0.5, 0.7, 0.75, 0.76, 0.9])])
def test_early_stopping_min_delta_asks_for_an_improvement_of_more_than_it_as_keras(mode, values):
    """Keras 3's EarlyStopping (the oracle) fed the same monitored values: it stops at the same
    epoch (reglab had min_delta's sign flipped: a fall of less than min_delta counted)."""
    import keras

    class Holder:
        stop_training = False

    ref = keras.callbacks.EarlyStopping(monitor="m", min_delta=0.1, patience=1, mode=mode)
    ref.set_model(Holder())
    ref.on_train_begin()
    mine = reglab.EarlyStopping(monitor="m", min_delta=0.1, patience=1, mode=mode)
    mine.reset(1)
    stopped = None
    for epoch, v in enumerate(values):
        ref.on_epoch_end(epoch, {"m": v})
        _, stop = mine.update(epoch, np.array([v]), np.array([True]))
        assert bool(stop[0]) == ref.model.stop_training, f"epoch {epoch}"
        if stop[0]:
            stopped = epoch
            break
    assert stopped == 2


STUDY_MODELS = '''
"""A user's own models, written for this study only."""
import torch
from torch import nn


class Seq(nn.Module):
    def __init__(self, kind, features, classes):
        super().__init__()
        self.kind = kind
        self.rnn = nn.LSTMCell(features, 5) if kind == "LSTMCell" else getattr(nn, kind)(features, 5, batch_first=True)
        self.head = nn.Linear(5, classes)

    def forward(self, x):
        if self.kind == "LSTMCell":
            state = None
            for t in range(x.shape[1]):
                state = self.rnn(x[:, t], state)
            return self.head(state[0])
        return self.head(self.rnn(x)[0][:, -1])


class Attn(nn.Module):
    def __init__(self, features, classes):
        super().__init__()
        self.inp = nn.Linear(features, 8)
        self.enc = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.enc(self.inp(x)).mean(1))


class Bag(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.emb = nn.Embedding(12, 4)
        self.head = nn.Linear(4, classes)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


def sequence(input_shape, n_outputs, kind="GRU"):
    return Seq(kind, input_shape[-1], n_outputs)


def attention(input_shape, n_outputs):
    return Attn(input_shape[-1], n_outputs)


def bag(input_shape, n_outputs):
    return Bag(n_outputs)


def cnn(input_shape, n_outputs):
    c, h, w = input_shape
    return nn.Sequential(nn.Conv2d(c, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                         nn.Linear(3 * h * w, n_outputs))
'''

STUDY_EXPERIMENT = '''
name = "{name}"
[data]
file = "../{data}.npz"
[split]
validation = 0.25
test = 0.25
[model]
builder = "../models.py:{builder}"
args = {args}
[regularize]
params = {{"@kernels" = {{name = "L2", l2 = 1e-3}}}}
[train]
loss = {{name = "sparse_categorical_crossentropy", from_logits = true}}
optimizer = {{name = "adam", learning_rate = 0.003}}
epochs = 2
batch_size = 16
'''

STUDY = {  # experiment: (data, builder, args, engine)
    "gru": ("seq", "sequence", '{kind = "GRU"}', "loop"),
    "lstm": ("seq", "sequence", '{kind = "LSTM"}', "loop"),
    "rnn": ("seq", "sequence", '{kind = "RNN"}', "loop"),
    "lstm_cell": ("seq", "sequence", '{kind = "LSTMCell"}', "loop"),
    "attention": ("seq", "attention", "{}", "loop"),
    "bn_cnn": ("img", "cnn", "{}", "vmap"),
    "bag": ("tok", "bag", "{}", "vmap"),
}


def test_a_study_of_a_users_own_models_trains_each_as_fit_trains_it(tmp_path):
    """``reglab study`` on a folder of a user's own models (3 seeds each): every one trains, its
    run records the engine and why, and each run's history and weights equal ``fit`` of that
    model alone on its split (bit for bit on the loop; the vmap tolerance on vmap). ``reglab list``
    shows the engine."""
    from click.testing import CliRunner

    from reglab.cli import main
    from reglab.experiments.build import builder
    from reglab.experiments.runner import splits_of
    from reglab.experiments.schema import load_experiment

    st = tmp_path / "st"
    (st / "experiments").mkdir(parents=True)
    (st / "models.py").write_text(STUDY_MODELS)
    for name, make in (("seq", sequences), ("tok", tokens), ("img", images)):
        x, y = make(n=48)
        np.savez(st / f"{name}.npz", x=x, y=y)
    for name, (data, build, args, _) in STUDY.items():
        (st / "experiments" / f"{name}.toml").write_text(STUDY_EXPERIMENT.format(name=name, data=data, builder=build,
                                                                                 args=args))
    (st / "study.toml").write_text('title = "my models"\nseeds = 3\n')
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["study", str(st), "--out", str(out), "--no-progress", "--workers", "1",
                                    "--threads", "1"])
    assert res.exit_code == 0, res.output
    listed = CliRunner().invoke(main, ["list", str(st / "experiments" / "gru.toml")])
    assert listed.exit_code == 0 and "engine: loop" in listed.output, listed.output
    runs = {}
    for f in (out / "runs").rglob("*.json"):
        row = json.loads(f.read_text())
        if not row["is_baseline"]:
            runs[(row["experiment"], row["seed"])] = (row, f)
    assert len(runs) == 3 * len(STUDY)
    for name, (_, _, _, kind) in STUDY.items():
        spec = load_experiment(st / "experiments" / f"{name}.toml")[0]
        for seed in range(3):
            row, f = runs[(name, seed)]
            assert row["engine"] == kind and row["engine_reason"]
            sp = splits_of(spec, seed)
            torch.manual_seed(seed)
            model = builder(spec, sp.input_shape, sp.n_outputs)()
            h = reglab.fit(model, sp.x_train, sp.y_train, loss=spec.train.loss.for_fit(sp.task), optimizer=spec.config["train"]["optimizer"],
                           epochs=2, batch_size=16, validation_data=(sp.x_val, sp.y_val), seed=seed, progress=False,
                           threads=1)
            state = torch.load(f.with_suffix(".pt"), weights_only=True)
            for k in h.history:
                if kind == "loop":
                    assert row["history"]["history"][k] == h.history[k], (name, seed, k)
                else:
                    np.testing.assert_allclose(row["history"]["history"][k], h[k], rtol=2e-5, atol=0.051 if "acc" in k else 1e-6)
            for k, v in model.state_dict().items():
                if kind == "loop":
                    assert torch.equal(state[k], v), (name, seed, k)
                else:
                    np.testing.assert_allclose(state[k].float(), v.float(), rtol=1e-4, atol=2e-5, err_msg=f"{name} {seed} {k}")


# ----------------------------------------------------------------------------- found by a fresh-eyes trial


class PaddedBag(nn.Module):
    """An embedding with ``padding_idx``: its row stays zero (torch gives it no gradient)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 4, padding_idx=0)
        self.head = nn.Linear(4, 3)

    def forward(self, ids):
        return self.head(self.emb(ids).mean(1))


class InputBranch(nn.Module):
    """Control flow on the inputs only (vmap fails on it once each model has its own batch)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        if bool((x.abs() > 10).any()):
            x = x.clamp(-10, 10)
        return self.lin(x)


class LeavesAutograd(nn.Module):
    """A forward that reads a tensor's numbers through numpy (no storage under vmap)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        h = self.lin(x)
        scale = float(np.abs(h.detach().numpy()).mean())
        return h * (1.0 + 0.0 * scale)


@pytest.mark.parametrize("build, data, why", [
    (PaddedBag, tokens, "'emb.weight'"),
    (InputBranch, features, "control flow"),
    (LeavesAutograd, features, "torch.vmap"),
])
def test_models_vmap_gets_wrong_or_fails_on_train_on_the_loop_as_fit(build, data, why):
    """A batching rule that gives another gradient (an embedding's padding row), control flow on
    the inputs (each model has its own shuffled batch), a forward that leaves torch: the probe
    finds them and the loop trains each model exactly as fit (before: wrong numbers for every
    model but the first; a raw RuntimeError in training; a raw error from the chooser)."""
    x, y = data()
    many = reglab.fit_many(build, x, y, seeds=[0, 1, 2], loss=SPARSE, epochs=2, batch_size=8, progress=False, threads=1)
    assert many.engine == "loop" and why in many.engine_reason, many.engine_reason
    for i, seed in enumerate([0, 1, 2]):
        h, model = _fit_alone(build, seed, x, y, epochs=2, batch_size=8)
        assert many.histories[i].history == h.history
        for k, v in weights(model).items():
            assert torch.equal(weights(many.models[i])[k], v), k
    if build is PaddedBag:
        assert all(bool((m.emb.weight[0] == 0).all()) for m in many.models)


class Augmented(Dataset):
    """A dataset whose examples get random noise (augmentation drawn from the global generator)."""

    def __init__(self, x, y):
        self.x, self.y = torch.as_tensor(x), torch.as_tensor(y)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(self.x[i].shape), self.y[i]


@pytest.mark.parametrize("build", [lambda: Recurrent("GRU"), lambda: reglab.models.mlp(
    18, [dict(units=5, activation="relu"), dict(units=3)])], ids=["gru", "mlp"])
def test_a_dataset_that_augments_gives_each_model_its_own_draws_as_fit(build):
    """Each model's augmentation comes from its own random state, in the order fit draws it (with
    its own dropout and shuffling): fit_many equals fit alone, and model 0's numbers do not
    depend on the models beside it (before: 1e-3-1e-2 apart, and other for M = 1, 2, 3)."""
    x, y = sequences(n=24)
    if not isinstance(build(), Recurrent):
        x = x.reshape(len(x), -1)
    ds = Augmented(x, y)
    runs = {M: reglab.fit_many(build, ds, seeds=list(range(M)), loss=SPARSE, epochs=2, batch_size=8, progress=False,
                               threads=1) for M in (1, 3)}
    assert runs[3].engine == "loop" and "reading its examples draws random numbers" in runs[3].engine_reason
    for i in range(3):
        torch.manual_seed(i)
        model = build()
        h = reglab.fit(model, ds, loss=SPARSE, epochs=2, batch_size=8, seed=i, progress=False, threads=1)
        assert runs[3].histories[i].history == h.history
    assert runs[1].histories[0].history == runs[3].histories[0].history


def test_a_model_returning_a_tuple_is_a_clear_error_in_fit_and_fit_many():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            h = self.lin(x)
            return h, h.detach()

    x, y = features()
    msg = r"the model returns a tuple, not a tensor: reglab trains a model whose forward returns its predictions"
    with pytest.raises(ValueError, match=msg):
        reglab.fit(Pair(), x, y, loss=SPARSE, progress=False)
    with pytest.raises(ValueError, match=msg):
        reglab.fit_many(Pair, x, y, seeds=[0, 1], loss=SPARSE, progress=False)


def test_the_reason_names_the_module_that_draws_and_a_diverging_model_warns_nothing():
    class StackedGRU(nn.Module):
        def __init__(self, gain=1.0):
            super().__init__()
            self.gain = gain
            self.rnn = nn.GRU(3, 5, num_layers=2, dropout=0.3, batch_first=True)
            self.head = nn.Linear(5, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1]) * self.gain

    x, y = sequences()
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        many = reglab.fit_many(StackedGRU, x, y, seeds=[0], grid=[{"gain": 1.0}, {"gain": float("inf")}], loss=SPARSE,
                               epochs=1, batch_size=16, progress=False, threads=1)
    assert many.engine == "loop" and "'rnn' (GRU) draws random numbers" in many.engine_reason, many.engine_reason
    assert list(many.failed) == [1]
    assert not [w for w in caught if "reglab" in w.filename], [str(w.message) for w in caught]


def test_choosing_an_engine_leaves_the_model_and_the_random_generators_as_they_were():
    """The probes (training-mode passes, gradients, vmap) touch no batch-norm statistic, no
    weight and no global random state (the models' numbers come after them)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.Dropout(0.2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(48, 3))
    x, y = images()
    before = weights(model)
    rng = torch.get_rng_state()
    choice = choose_engine(model, get_loss(SPARSE), (torch.as_tensor(x[:2]), torch.as_tensor(y[:2])), n_models=3)
    assert choice.kind == "vmap" and model.training
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in weights(model).items():
        assert torch.equal(v, before[k]), k


def test_without_a_compiler_the_eager_engine_trains_and_one_line_says_so(tmp_path):
    code = ("import reglab, numpy as np, torch\n"
            "x = np.random.default_rng(0).normal(size=(40, 2)).astype('float32'); y = (x[:, :1] > 0).astype('float32')\n"
            "b = lambda: reglab.models.mlp(2, [dict(units=4, activation='relu'), dict(units=1, activation='sigmoid')])\n"
            "for _ in range(2):\n"
            "    r = reglab.fit_many(b, x, y, seeds=[0, 1], loss='binary_crossentropy', epochs=2, progress=False)\n"
            "    print(r.engine)\n")
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), REGLAB_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["dense", "dense"]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("reglab:")]
    assert lines == ["reglab: no C++ compiler (set CXX, or install g++); Dense-stack models train on the eager engine"]
    assert not (tmp_path / "cache").exists()


def test_without_a_compiler_a_study_with_helpers_says_so_once(tmp_path):
    """The line is the machine's, said by the process that chooses the engines; the helpers that
    train the groups say nothing (two workers, two experiments)."""
    exp = ("name = \"{name}\"\nseeds = 2\n[data]\nname = \"blobs\"\nn_samples = 60\n[train]\nloss = \"binary_crossentropy\"\n"
           "epochs = 2\nbatch_size = 20\n[[model.layers]]\nunits = 4\nactivation = \"relu\"\n"
           "kernel_regularizer = {{name = \"L2\", l2 = {l2}}}\n[[model.layers]]\nunits = 1\nactivation = \"sigmoid\"\n")
    for name, l2 in (("a", 0.01), ("b", 0.1)):
        (tmp_path / f"{name}.toml").write_text(exp.format(name=name, l2=l2))
    env = dict(os.environ, CXX=str(tmp_path / "no-such-compiler"), REGLAB_CACHE=str(tmp_path / "cache"))
    out = subprocess.run([sys.executable, "-m", "reglab.cli", "run", str(tmp_path / "a.toml"), str(tmp_path / "b.toml"),
                          "--out", str(tmp_path / "out"), "--workers", "2", "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("reglab:")]
    assert lines == ["reglab: no C++ compiler (set CXX, or install g++); Dense-stack models train on the eager engine"]
