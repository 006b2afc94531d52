"""Decoupled weight decay on a selector (issue 27, part 3): ``{"name": "adamw", "decay": "@kernels"}``
decays the kernels only, on every engine, as a hand-built param-group AdamW and Keras's
``exclude_from_weight_decay`` do; SGD and RMSprop decay as Keras does (decoupled)."""

import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab import optimizers as O
from reglab.engines.make import make_engine

LR, WD = 0.01, 0.1


def mlp(act=nn.ReLU):
    return nn.Sequential(nn.Linear(4, 8), act(), nn.Linear(8, 1))


def normed(act=nn.ReLU):
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), act(), nn.Linear(8, 1))


@pytest.mark.parametrize("kind, make", [("dense", mlp), ("vmap", normed), ("loop", normed)])
@pytest.mark.parametrize("name", ["adamw", "sgd", "rmsprop"])
def test_a_step_decays_the_kernels_only_on_every_engine(kind, make, name):
    """With zero gradients the update is nothing but the decay: every kernel is multiplied by
    exactly 1 - lr * wd, every bias and LayerNorm parameter is left bit for bit as it was."""
    torch.manual_seed(0)
    models = [make() for _ in range(3)]
    before = [{n: p.detach().clone() for n, p in m.named_parameters()} for m in models]
    stack = make_engine(kind, models, [reglab.losses.get("mse")] * 3, False, 2, 2, None)
    assert stack.kind == kind
    opt = O.get({"name": name, "weight_decay": WD, "learning_rate": LR, "decay": "@kernels"}, stack.optimized,
                stack.decayed)
    for p in stack.optimized:
        p.grad = torch.zeros_like(p)
    opt.step()
    stack.write_back()
    kernels = set(reglab.select(models[0], "@kernels"))
    assert kernels == {"0.weight", "2.weight" if make is mlp else "3.weight"}
    for m, b in zip(models, before):
        for n, p in m.named_parameters():
            want = b[n] * (1 - LR * WD) if n in kernels else b[n]
            assert torch.equal(p.detach(), want), (kind, name, n)


def _hand_built(model, x, y, epochs, batch):
    """The reference: torch's own AdamW, two param groups (kernels decayed, the rest not), eps 0
    (where torch's and Keras's epsilon placements agree: tanh, so that no gradient is 0), a plain
    loop over unshuffled batches."""
    kernels = set(reglab.select(model, "@kernels"))
    groups = [{"params": [p for n, p in model.named_parameters() if n in kernels], "weight_decay": WD},
              {"params": [p for n, p in model.named_parameters() if n not in kernels], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=LR, eps=0.0)
    for _ in range(epochs):
        for s in range(0, len(x), batch):
            opt.zero_grad()
            nn.functional.mse_loss(model(x[s:s + batch]), y[s:s + batch]).backward()
            opt.step()


@pytest.mark.parametrize("make", [mlp, normed])
def test_fit_with_decay_on_kernels_equals_a_hand_built_param_group_adamw(make):
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(40, 4, generator=g, dtype=torch.float64), torch.randn(40, 1, generator=g, dtype=torch.float64)
    torch.manual_seed(1)
    mine = make(nn.Tanh).double()
    ref = make(nn.Tanh).double()
    ref.load_state_dict(mine.state_dict())
    reglab.fit(mine, x, y, loss="mse", optimizer={"name": "adamw", "learning_rate": LR, "weight_decay": WD,
                                                   "epsilon": 0.0, "decay": "@kernels"},
               epochs=3, batch_size=10, shuffle=False, progress=False)
    _hand_built(ref, x, y, 3, 10)
    for (n, a), b in zip(mine.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13, msg=n)


@pytest.mark.parametrize("engine, make", [("dense", mlp), ("vmap", normed)])
def test_fit_many_with_decay_equals_fit_per_model(engine, make):
    """Each stacked engine steps one (M, P) buffer; the decay mask over its columns gives every
    model what fit gives it alone (the loop engine, per-parameter groups)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(48, 4)).astype(np.float32), rng.normal(size=(48, 1)).astype(np.float32)
    opt = {"name": "adamw", "learning_rate": LR, "weight_decay": WD, "decay": "@kernels"}

    def build(seed):
        torch.manual_seed(seed)
        return make()

    many = reglab.fit_many(make, x, y, seeds=[0, 1, 2], loss="mse", optimizer=opt,
                           epochs=3, batch_size=16, engine=engine, threads=1)
    assert many.engine == engine
    for m, seed in zip(many.models, [0, 1, 2]):
        alone = build(seed)
        reglab.fit(alone, x, y, loss="mse", optimizer=opt, epochs=3, batch_size=16, seed=seed, progress=False,
                   threads=1)
        for (n, a), b in zip(m.named_parameters(), alone.parameters()):
            torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-7, msg=n)


@pytest.mark.parametrize("name, keras_name, extra", [("sgd", "SGD", {"momentum": 0.9}),
                                                      ("rmsprop", "RMSprop", {}),
                                                      ("rmsprop", "RMSprop", {"momentum": 0.5, "centered": True}),
                                                      ("adamw", "AdamW", {})])
def test_decay_on_kernels_equals_keras_exclude_from_weight_decay(keras, name, keras_name, extra):
    """Keras 3 (the oracle) with ``exclude_from_weight_decay(var_names=["bias"])`` and the same
    gradients, five steps: the same weights. SGD and RMSprop decay as Keras does, decoupled; RMSprop
    divides by sqrt(v + eps) as Keras does (torch's by sqrt(v) + eps: 1e-6 apart here)."""
    rng = np.random.default_rng(4)
    w0, b0 = rng.normal(size=(3, 2)), rng.normal(size=(2,))
    grads = [(rng.normal(size=(3, 2)), rng.normal(size=(2,))) for _ in range(5)]
    kw, kb = keras.Variable(w0, name="kernel"), keras.Variable(b0, name="bias")
    kopt = getattr(keras.optimizers, keras_name)(learning_rate=LR, weight_decay=WD, **extra)
    kopt.exclude_from_weight_decay(var_names=["bias"])
    lin = nn.Linear(3, 2).double()
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w0.T))
        lin.bias.copy_(torch.from_numpy(b0))
    stack = make_engine("loop", [lin], [reglab.losses.get("mse")], False, 2, 2, None)
    opt = O.get({"name": name, "learning_rate": LR, "weight_decay": WD, "decay": "@kernels", **extra},
                stack.optimized, stack.decayed)
    for gw, gb in grads:
        kopt.apply_gradients([(keras.ops.convert_to_tensor(gw), kw), (keras.ops.convert_to_tensor(gb), kb)])
        lin.weight.grad, lin.bias.grad = torch.from_numpy(gw.T.copy()), torch.from_numpy(gb.copy())
        opt.step()
    np.testing.assert_allclose(lin.weight.detach().numpy().T, keras.ops.convert_to_numpy(kw), rtol=1e-12)
    np.testing.assert_allclose(lin.bias.detach().numpy(), keras.ops.convert_to_numpy(kb), rtol=1e-12)
    assert not np.allclose(b0 - keras.ops.convert_to_numpy(kb), 0)  # the bias moved, by its gradient alone


def test_decay_errors_name_the_pattern_and_the_fix():
    x, y = np.zeros((8, 4), np.float32), np.zeros((8, 1), np.float32)
    with pytest.raises(ValueError, match=r"optimizer 'adamw': decay: parameter pattern '@Conv\*\.weight' selects no "
                                         r"parameter of the model; the module types owning parameters are: "
                                         r"Linear\(weight, bias\)"):
        reglab.fit(mlp(), x, y, loss="mse", optimizer={"name": "adamw", "decay": "@Conv*.weight"}, epochs=1,
                   progress=False)
    with pytest.raises(ValueError, match="there is no weight decay: give weight_decay > 0"):
        reglab.fit(mlp(), x, y, loss="mse", optimizer={"name": "adam", "decay": "@kernels"}, epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"decay must be a parameter pattern such as \"@kernels\" or a list of them; "
                                         "got 3"):
        reglab.fit(mlp(), x, y, loss="mse", optimizer={"name": "adamw", "decay": 3}, epochs=1, progress=False)
    with pytest.raises(ValueError, match="'@Conv\\*.weight' selects no parameter"):
        reglab.fit_many(mlp, x, y, seeds=[0, 1], loss="mse",
                        optimizer={"name": "adamw", "decay": ["@kernels", "@Conv*.weight"]}, epochs=1)


def test_a_list_of_patterns_decays_their_union():
    torch.manual_seed(0)
    m = normed()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    stack = make_engine("loop", [m], [reglab.losses.get("mse")], False, 2, 2, None)
    opt = O.get({"name": "sgd", "weight_decay": WD, "decay": ["@kernels", "@LayerNorm.weight"]}, stack.optimized,
                stack.decayed)
    for p in stack.optimized:
        p.grad = torch.zeros_like(p)
    opt.step()
    moved = {n for n, p in m.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == {"0.weight", "1.weight", "3.weight"}


def test_an_experiment_file_decays_the_kernels_and_its_baseline_does_not_decay(tmp_path):
    from .test_experiments import TINY, one, run, write

    from reglab.experiments.runner import load_runs

    text = TINY.replace('{name = "adam", learning_rate = 0.01}',
                        '{name = "adamw", learning_rate = 0.01, weight_decay = 0.05, decay = "@kernels"}')
    spec = one(write(tmp_path, text))
    assert spec.config["train"]["optimizer"]["decay"] == "@kernels"
    assert spec.baseline().config["train"]["optimizer"] == {"name": "adam", "learning_rate": 0.01}
    everything = one(write(tmp_path, text.replace(', decay = "@kernels"', ""), "all.toml"))
    assert everything.digest() != spec.digest()  # kernels only is another experiment
    res = run([tmp_path / "tiny.toml"], tmp_path / "out", "--no-baselines")
    assert res.exit_code == 0, res.output
    assert sorted(r["seed"] for r in load_runs(tmp_path / "out")) == [0, 1]


@pytest.mark.parametrize("decay, message", [
    ('"@Conv*.weight"', r"train\.optimizer\.decay: parameter pattern '@Conv\*\.weight' selects no parameter of the "
                        r"model; the module types owning parameters are: Dense\(weight, bias\)"),
    ("[]", r"train\.optimizer: decay must be a parameter pattern"),
    ("7", r"train\.optimizer: decay must be a parameter pattern"),
])
def test_an_experiment_file_with_a_bad_decay_is_refused_before_training(tmp_path, decay, message):
    from .test_experiments import TINY, run, write

    text = TINY.replace('{name = "adam", learning_rate = 0.01}',
                        f'{{name = "adamw", learning_rate = 0.01, decay = {decay}}}')
    res = run([write(tmp_path, text)], tmp_path / "out")
    assert res.exit_code != 0
    assert message and __import__("re").search(message, res.output), res.output
    assert not (tmp_path / "out" / "runs").exists() or not any((tmp_path / "out" / "runs").rglob("*.json"))


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_step_hooks_run_once_per_step_after_torchs_own_optimizers_exist(name):
    """torch wraps a class's ``step`` with its hook runner once an instance of it exists; a
    Keras optimizer calling its torch base's wrapped ``step`` ran every hook twice (first seen
    with AdamW, after a test made a ``torch.optim.AdamW``)."""
    q = torch.zeros(1, requires_grad=True)
    for cls in (torch.optim.AdamW, torch.optim.SGD, torch.optim.RMSprop):
        cls([q], lr=0.1)  # their step is now torch's wrapper
    p = torch.zeros(3, requires_grad=True)
    opt = O.get({"name": name, "weight_decay": 0.1}, [p])
    calls = []
    opt.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt.register_step_post_hook(lambda *a: calls.append("post"))
    for _ in range(3):
        p.grad = torch.ones(3)
        opt.step()
    assert calls == ["pre", "post"] * 3
