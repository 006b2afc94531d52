"""Studies on Datasets with random augmentation (issue 27, part 2): a loader's Datasets per role,
``[data] transform``, per-model augmentation draws (``fit_many`` equals ``fit``), resume after
Ctrl-C, and the errors a user meets before anything trains."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import reglab
from reglab.experiments.augment import Augmented

from .test_experiments import run, write
from .test_faults import _results, _wait_for

# A user's own Dataset (written for this test only): digits with Gaussian pixel noise drawn from
# torch's generator at every read of the training split.
LOADER = '''
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import Dataset


class Noisy(Dataset):
    def __init__(self, x, y, noise):
        self.x, self.y, self.noise = torch.tensor(x, dtype=torch.float32), torch.tensor(y), noise

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return (x + self.noise * torch.randn_like(x) if self.noise else x), self.y[i]


def load(n=360, noise=0.3, roles=("train", "validation", "test")):
    x, y = load_digits(return_X_y=True)
    x, y = x[:n] / 16.0, y[:n]
    parts = np.array_split(np.arange(n), 3)
    return {r: Noisy(x[p], y[p], noise if r == "train" else 0.0) for r, p in zip(roles, parts)}


def one_dataset():
    return load()["train"]


class Stream(torch.utils.data.IterableDataset):
    def __iter__(self):
        return iter([])


def streams():
    return {"train": Stream(), "test": load()["test"]}
'''

EXPERIMENT = '''
name = "noisy"
seeds = 3
[data]
loader = "loader.py:load"
{args}
[model]
builder = "models.py:build"
[train]
loss = {{name = "sparse_categorical_crossentropy", from_logits = true}}
optimizer = {{name = "adam", learning_rate = 0.01}}
epochs = {epochs}
batch_size = 32
[regularize]
params = {{"@kernels" = {{name = "L2", l2 = 1e-3}}}}
'''

MODELS = '''
from torch import nn

def build(input_shape, n_outputs):
    return nn.Sequential(nn.Linear(input_shape[0], 16), nn.ReLU(), nn.Linear(16, n_outputs))
'''

SHIFT = '''
import torch

def shift(x):
    return torch.roll(x, int(torch.randint(-1, 2, ()).item()), dims=0)

def raises(x):
    return 1 / 0

def wrong_shape(x):
    return x[:3]

def numpy_noise(x):
    import numpy as np
    return x + torch.as_tensor(np.random.normal(0, 0.1, x.shape), dtype=x.dtype)

calls = [0]

def fails_later(x):
    calls[0] += 1
    if calls[0] > 20:
        raise ValueError("rare")
    return x

def shrinks_later(x):
    calls[0] += 1
    return x[:-1] if calls[0] > 20 else x

def far(x):
    return x + 100.0

def nothing(x):
    return None
'''

TRANSFORMED = '''
name = "shifted"
seeds = 2
[data]
name = "sklearn.digits"
standardize = true
transform = "aug.py:{fn}"
[split]
validation = 0.2
test = 0.2
[model]
builder = "models.py:build"
[train]
loss = {{name = "sparse_categorical_crossentropy", from_logits = true}}
epochs = 2
batch_size = 64
'''


def _study(folder: Path, epochs: int = 3, args: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loader.py").write_text(LOADER)
    (folder / "models.py").write_text(MODELS)
    (folder / "aug.py").write_text(SHIFT)
    p = folder / "noisy.toml"
    p.write_text(EXPERIMENT.format(epochs=epochs, args=args))
    return p


def _cli(p: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "reglab.cli", "--threads", "1", "run", str(p), "--out", str(out),
                             "--no-progress", "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def test_a_study_on_an_augmenting_dataset_resumes_after_ctrl_c_as_if_uninterrupted(tmp_path):
    """The loader's training Dataset adds noise at every read; the runs train on the per-model
    loop (each model its own draws), and an interrupted study resumed gives the numbers of one
    that was not interrupted, run for run."""
    p = _study(tmp_path / "s", epochs=40)
    ref = _cli(p, tmp_path / "ref")
    so, err = ref.communicate(timeout=600)
    assert ref.returncode == 0, err
    want = _results(tmp_path / "ref")
    assert len(want) == 6
    rows = [json.loads(f.read_text()) for f in (tmp_path / "ref" / "runs").glob("*/*.json")]
    assert {r["engine"] for r in rows} == {"loop"}
    assert "reading its examples draws random numbers" in rows[0]["engine_reason"]
    out = tmp_path / "out"
    q = _cli(p, out)
    _wait_for(lambda: len(list(out.glob("runs/*/*.json"))) >= 3 or q.poll() is not None, timeout=300)
    assert q.poll() is None, "the run ended before it could be interrupted"
    os.killpg(q.pid, signal.SIGINT)
    _, err = q.communicate(timeout=60)
    assert q.returncode == 130, err
    kept = _results(out)
    assert 3 <= len(kept) < 6 and all(want[k] == v for k, v in kept.items())
    again = _cli(p, out)
    so, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert _results(out) == want


def _noisy_sets():
    import importlib.util

    spec = importlib.util.spec_from_loader("noisy_loader", loader=None)
    mod = importlib.util.module_from_spec(spec)
    exec(LOADER, mod.__dict__)
    return mod


def test_fit_many_on_one_augmenting_dataset_per_model_equals_fit_per_model():
    """One Dataset per model (a study's seeds with their own splits), each drawing noise: every
    model's weights equal fit's on its own Dataset with its seed, bit for bit; the data are the
    Datasets' own (not copied per model)."""
    from torch.utils.data import Subset

    base = _noisy_sets().load()["train"]
    sets = [Subset(base, range(10 * i, 10 * i + 100)) for i in range(3)]

    def build():
        return nn.Sequential(nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))

    kw = dict(loss={"name": "sparse_categorical_crossentropy", "from_logits": True}, epochs=3, batch_size=16,
              threads=1)
    many = reglab.fit_many(build, sets[:2] + [sets[0]], seeds=[0, 1, 2], progress=False, **kw)
    assert many.engine == "loop"
    for m, ds, seed in zip(many.models, sets[:2] + [sets[0]], [0, 1, 2]):
        torch.manual_seed(seed)
        alone = build()
        reglab.fit(alone, ds, seed=seed, progress=False, **kw)
        for a, b in zip(m.parameters(), alone.parameters()):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"x: a list of 2 Datasets for 3 models"):
        reglab.fit_many(build, sets[:2], seeds=[0, 1, 2], progress=False, **kw)
    with pytest.raises(ValueError, match=r"x: the per-model Datasets must have one length; got \[100, 99\]"):
        reglab.fit_many(build, [sets[0], Subset(base, range(99))], seeds=[0, 1], progress=False, **kw)


def test_a_transform_augments_the_training_split_only_and_each_model_draws_its_own(tmp_path):
    """[data] transform: seed 0's run is the same in a group of two as alone (its own draws), two
    runs repeat bit for bit, the baseline trains without the transform (shared with a plain
    experiment's), and the report states the rule."""
    (tmp_path / "aug.py").write_text(SHIFT)
    (tmp_path / "models.py").write_text(MODELS)
    p = write(tmp_path, TRANSFORMED.format(fn="shift"), "shifted.toml")
    from reglab.experiments.schema import load_experiment

    spec = load_experiment(p)[0]
    assert "data.transform" in spec.inputs and "transform" not in spec.baseline().config["data"]
    plain = write(tmp_path, TRANSFORMED.format(fn="shift").replace('transform = "aug.py:shift"\n', "")
                  .replace('name = "shifted"', 'name = "plain"') + '[regularize]\nparams = {"@kernels" = '
                  '{name = "L2", l2 = 1e-3}}\n', "plain.toml")
    assert load_experiment(plain)[0].baseline().digest() == spec.baseline().digest()
    outs = []
    for name, seeds in (("a", "2"), ("b", "2"), ("c", "1")):
        res = run([p], tmp_path / name, "--seeds", seeds, "--no-baselines")
        assert res.exit_code == 0, res.output
        outs.append(_results(tmp_path / name))
    assert outs[0] == outs[1]  # a run repeats bit for bit
    assert next(iter(outs[2].values())) in outs[0].values()  # seed 0 alone = seed 0 in a group of two
    from reglab.experiments.runner import splits_of

    sp = splits_of(spec, 0)
    ds = sp.training()
    assert isinstance(ds, Augmented) and len(ds) == len(sp.x_train)
    assert np.shares_memory(ds.x.numpy(), sp.x_train)  # not copied
    torch.manual_seed(0)
    moved = [not torch.equal(ds[i][0], torch.from_numpy(sp.x_train[i])) for i in range(20)]
    assert any(moved) and not all(moved)  # shifted by -1, 0 or 1: some moved, some not
    assert sp.x_val is not None and splits_of(spec.baseline(), 0).training() is None


@pytest.mark.parametrize("fn, message", [
    ("raises", r"data\.transform: aug\.py:raises raised ZeroDivisionError: division by zero \(at .*aug\.py, line 8\)"),
    ("wrong_shape", r"data\.transform: aug\.py:wrong_shape: returned shape \(3,\) for example 0 of shape \(64,\); a "
                    r"transform keeps the example's shape"),
    ("nothing", r"data\.transform: aug\.py:nothing: returned NoneType for example 0; expected a tensor"),
    ("missing", r"data\.transform: .*missing"),
    ("numpy_noise", r"data\.transform: aug\.py:numpy_noise: gave two different results for example 0 from the same "
                    r"torch random state: it draws from another generator"),
])
def test_a_bad_transform_is_named_before_anything_trains(tmp_path, fn, message):
    (tmp_path / "aug.py").write_text(SHIFT)
    (tmp_path / "models.py").write_text(MODELS)
    p = write(tmp_path, TRANSFORMED.format(fn=fn), "shifted.toml")
    res = run([p], tmp_path / "out")
    assert res.exit_code == 1
    assert __import__("re").search(rf"{p.name}: {message}", res.output), res.output
    assert not list((tmp_path / "out").glob("runs/*/*.json"))


@pytest.mark.parametrize("fn, message", [
    ("fails_later", r"data\.transform: aug\.py:fails_later raised ValueError: rare \(at .*aug\.py, line \d+\)\. "
                    r"Finished runs are kept"),
    ("shrinks_later", r"data\.transform: aug\.py:shrinks_later: returned shape \(63,\) for an example of shape "
                      r"\(64,\); a transform keeps the example's shape\. Finished runs are kept"),
])
def test_a_transform_that_fails_during_training_is_named_in_one_line(tmp_path, fn, message):
    """Past the two examples checked before training, every call is still the user's code at its
    edge: what it raised, or what was wrong with what it returned, names the file and the key."""
    (tmp_path / "aug.py").write_text(SHIFT)
    (tmp_path / "models.py").write_text(MODELS)
    p = write(tmp_path, TRANSFORMED.format(fn=fn), "shifted.toml")
    res = run([p], tmp_path / "out", "--no-baselines")
    assert res.exit_code == 1
    assert __import__("re").search(rf"^Error: {__import__('re').escape(str(p))}: {message}", res.output), res.output
    assert "Traceback" not in res.output


def test_a_path_trains_with_the_transform(tmp_path):
    """``reglab path`` (and a study's [[path]]) trains as ``reglab run`` does: on the transformed
    examples (it had trained on the arrays and ignored the transform)."""
    from reglab.experiments.path import regularization_path
    from reglab.experiments.schema import load_experiment

    (tmp_path / "aug.py").write_text(SHIFT)
    (tmp_path / "models.py").write_text(MODELS)
    reg = '[regularize]\nparams = {"@kernels" = {name = "L2", l2 = 1e-3}}\n'
    far = load_experiment(write(tmp_path, TRANSFORMED.format(fn="far") + reg, "far.toml"))[0]
    plain = load_experiment(write(tmp_path, TRANSFORMED.format(fn="far").replace('transform = "aug.py:far"\n', "") +
                                  reg, "plain.toml"))[0]
    a, b = (regularization_path(s, [0.0, 1e-3], [0, 1])["metrics"]["val_log_loss"] for s in (far, plain))
    assert a != b  # inputs shifted by +100 in training only: not the plain path's numbers


def test_an_augmenting_datasets_examples_are_read_each_with_its_own_draw(tmp_path):
    """The training split's arrays (probes, shapes, labels) are read once from the Dataset in one
    pass: each example gets a draw of its own (each read had started from the same random state,
    so every image got the same noise, the same shift)."""
    from reglab.experiments.runner import splits_of
    from reglab.experiments.schema import load_experiment

    spec = load_experiment(_study(tmp_path))[0]
    sp = splits_of(spec, 0)
    clean = _noisy_sets().load(noise=0.0)["train"]
    noise = sp.x_train - np.stack([clean[i][0].numpy() for i in range(len(clean))])
    assert noise.std() > 0.2 and not np.allclose(noise[0], noise[1])
    state = torch.get_rng_state()
    splits_of(spec, 0)
    assert torch.equal(state, torch.get_rng_state())  # the global random state untouched


def test_a_binary_dataset_with_scalar_integer_labels_trains_as_its_arrays_do():
    """Keras's rule for targets (n,) against outputs (n, 1), and float targets for binary
    cross-entropy, hold for a Dataset as for arrays (a TensorDataset of int labels crashed in
    the engine chooser's probe)."""
    from torch.utils.data import TensorDataset

    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, generator=g)
    y = (x[:, 0] > 0).long()

    def build():
        torch.manual_seed(0)
        return reglab.models.mlp(3, [{"units": 8, "activation": "relu"}, {"units": 1, "activation": "sigmoid"}])

    kw = dict(loss="binary_crossentropy", epochs=2, batch_size=16, shuffle=False, progress=False, threads=1)
    a, b = build(), build()
    ha = reglab.fit(a, TensorDataset(x, y), **kw)
    hb = reglab.fit(b, x.numpy(), y.numpy(), **kw)
    np.testing.assert_allclose(ha["loss"], hb["loss"], rtol=1e-6)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    many = reglab.fit_many(build, TensorDataset(x, y), seeds=[0, 1], loss="binary_crossentropy", epochs=1)
    assert all(np.isfinite(h["loss"]).all() for h in many.histories)


@pytest.mark.parametrize("args, key, message", [
    ('args = {roles = ["train", "test", "x"]}', "data.loader",
     r"a dict must have keys train and test"),
    ('args = {roles = ["train", "test", "validation"]}\nstandardize = true', "data.standardize",
     r"the training split is a loader's Dataset: do this in the Dataset"),
    ('args = {roles = ["train", "test", "validation"]}\ntransform = "aug.py:shift"', "data.transform",
     r"the training split is a loader's Dataset"),
])
def test_a_loader_dataset_that_cannot_train_is_named(tmp_path, args, key, message):
    p = _study(tmp_path, args=args)
    res = run([p], tmp_path / "out")
    assert res.exit_code == 1 and f"{key}: " in res.output and __import__("re").search(message, res.output), \
        res.output


def test_validation_is_not_cut_from_an_augmenting_dataset(tmp_path):
    p = _study(tmp_path)
    (tmp_path / "loader.py").write_text(LOADER + '''

def two():
    d = load()
    return {"train": d["train"], "test": d["test"]}
''')
    text = p.read_text()
    p.write_text(text.replace('loader = "loader.py:load"', 'loader = "loader.py:two"'))
    res = run([p], tmp_path / "out")
    assert res.exit_code == 1
    assert "split.validation: the training Dataset draws random numbers (augmentation), so validation examples cut " \
           "from it would be augmented" in res.output
    p.write_text(text.replace('loader = "loader.py:load"', 'loader = "loader.py:two"') + '[split]\nvalidation = "test"\n')
    res = run([p], tmp_path / "out", "--seeds", "1")
    assert res.exit_code == 0, res.output
    p.write_text(text.replace('loader = "loader.py:load"', 'loader = "loader.py:one_dataset"'))
    res = run([p], tmp_path / "out")
    assert res.exit_code == 1 and "data.loader: returned one Dataset; return a dict of Datasets per role" in res.output
    p.write_text(text.replace('loader = "loader.py:load"', 'loader = "loader.py:streams"'))
    res = run([p], tmp_path / "out")
    assert res.exit_code == 1 and "data.loader['train']: an IterableDataset; a study reads map-style Datasets" in \
        res.output
