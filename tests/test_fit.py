import json
import math
import os
import re
import signal

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import reglab
from reglab import EarlyStopping, History, TrainingDiverged

from .lecture import blobs, reglab_program


def small(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return reglab.models.mlp(2, [dict(units=8, activation="relu", kernel_regularizer=reglab.L2(0.01),
                                      activity_regularizer=reglab.L1(0.01)), dict(units=1, activation="sigmoid")]).to(dtype)


def data():
    return blobs(0)


def test_history_separates_data_loss_and_penalties():
    xtr, ytr, xte, yte = data()
    h = reglab.fit(small(), xtr, ytr, loss="binary_crossentropy", epochs=3, batch_size=25, validation_data=(xte, yte),
                   seed=0, progress=False)
    assert len(h) == 3 and h.epoch == [0, 1, 2]
    np.testing.assert_allclose(h["loss"], h["data_loss"] + h["penalty"], rtol=1e-5)
    np.testing.assert_allclose(h["penalty"], h["penalty/0.weight"] + h["penalty/0:activity"], rtol=1e-5)
    np.testing.assert_allclose(h["val_loss"], h["val_data_loss"] + h["val_penalty"], rtol=1e-5)
    assert h.penalty_sources == ["0.weight", "0:activity"]
    assert set(h.history) >= {"loss", "val_loss", "accuracy", "val_accuracy"}
    assert all(0 <= a <= 1 for a in h["val_accuracy"])


def test_val_data_loss_is_the_whole_set_data_loss_after_training():
    xtr, ytr, xte, yte = data()
    model = small()
    h = reglab.fit(model, xtr, ytr, loss="binary_crossentropy", epochs=2, batch_size=30, validation_data=(xte, yte),
                   seed=0, progress=False)
    model.eval()
    with torch.no_grad():
        p = model(torch.tensor(xte, dtype=torch.float32))
    whole = reglab.losses.BinaryCrossentropy()(p, torch.tensor(yte))
    assert h["val_data_loss"][-1] == pytest.approx(float(whole), rel=1e-5)
    acc = float(((p > 0.5).float() == torch.tensor(yte)).float().mean())
    assert h["val_accuracy"][-1] == pytest.approx(acc)


def test_same_seed_is_bit_identical_and_other_seed_differs():
    xtr, ytr, xte, yte = data()
    runs = []
    for seed in (7, 7, 8):
        h = reglab.fit(small(), xtr, ytr, loss="binary_crossentropy", epochs=3, batch_size=20,
                       validation_data=(xte, yte), seed=seed, progress=False)
        runs.append(h)
    assert runs[0] == runs[1]
    for k in runs[0].keys():
        assert np.array_equal(runs[0][k], runs[1][k])
    assert not np.array_equal(runs[0]["loss"], runs[2]["loss"])


def test_inputs_are_cast_to_the_model_dtype():
    xtr, ytr, _, _ = data()
    assert xtr.dtype == np.float64 and ytr.dtype == np.float32
    for dtype in (torch.float32, torch.float64):
        model = small(dtype=dtype)
        h = reglab.fit(model, xtr, ytr, loss="binary_crossentropy", epochs=1, batch_size=50, progress=False)
        assert np.isfinite(h["loss"]).all() and model[0].weight.dtype == dtype


def test_dataset_and_dataloader_inputs():
    xtr, ytr, xte, yte = data()
    ds = TensorDataset(torch.tensor(xtr, dtype=torch.float32), torch.tensor(ytr))
    h1 = reglab.fit(small(), ds, loss="binary_crossentropy", epochs=2, batch_size=25, seed=3, progress=False,
                    validation_data=DataLoader(TensorDataset(torch.tensor(xte), torch.tensor(yte)), batch_size=25))
    h2 = reglab.fit(small(), DataLoader(ds, batch_size=25), loss="binary_crossentropy", epochs=2, progress=False)
    assert len(h1) == 2 and "val_loss" in h1 and len(h2) == 2
    h3 = reglab.fit(small(), xtr, ytr, loss="binary_crossentropy", epochs=2, batch_size=25, shuffle=False, progress=False)
    h4 = reglab.fit(small(), DataLoader(ds, batch_size=25), loss="binary_crossentropy", epochs=2, progress=False)
    np.testing.assert_allclose(h3["loss"], h4["loss"], rtol=1e-6)  # the same batches in the same order


def test_torch_optimizer_instance_and_loss_callable():
    xtr, ytr, _, _ = data()
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    h = reglab.fit(model, xtr, ytr, loss=nn.BCELoss(), optimizer=opt, epochs=2, batch_size=25, progress=False)
    assert h["loss"][1] < h["loss"][0]


def test_constraints_hold_after_fit():
    xtr, ytr, _, _ = data()
    torch.manual_seed(0)
    model = reglab.models.mlp(2, [dict(units=16, activation="relu", kernel_constraint=reglab.MaxNorm(0.5)),
                                  dict(units=1, activation="sigmoid")])
    reglab.fit(model, xtr, ytr, loss="binary_crossentropy", optimizer={"name": "adam", "learning_rate": 0.05}, epochs=3,
               batch_size=20, progress=False)
    assert float(model[0].weight.norm(dim=1).max()) <= 0.5 + 1e-5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(x=np.zeros((10, 3)), y=np.zeros((10, 1))), r"the model could not run on x of shape \(10, 3\)"),
        (dict(x=np.zeros((10, 2)), y=np.zeros((9, 1))), r"x has 10 examples but y has 9"),
        (dict(x=np.zeros((10, 2)), y=np.zeros((10, 2))), r"binary_crossentropy: the model's output has shape \(1,\) per example, y \(shape \(10, 2\)\) has "
         r"\(2,\) per example, for x of shape \(10, 2\)$"),
        (dict(x=np.zeros((10, 2)), y=np.full((10, 1), 2.0)), r"y: binary cross-entropy needs labels in \{0, 1\}; found \[2.0\]"),
        (dict(x=np.array([["a", "b"]] * 4), y=np.zeros((4, 1))), r"x must be numeric; got an array of dtype <U1"),
        (dict(x=np.zeros((0, 2)), y=np.zeros((0, 1))), r"x is empty \(shape \(0, 2\)\)"),
        (dict(x=np.array([[0.0, np.nan]] * 3), y=np.zeros((3, 1))), r"x contains 3 NaN/inf value\(s\); first at index \(0, 1\)"),
        (dict(x=np.zeros((4, 2)), y=np.zeros((4, 1)), batch_size=0), r"batch_size must be a positive integer; got batch_size=0"),
        (dict(x=np.zeros((4, 2)), y=np.zeros((4, 1)), epochs=-1), r"epochs must be a positive integer; got epochs=-1"),
        (dict(x=np.zeros((4, 2)), y=np.zeros((4, 1)), metrics=["auc"]), r"unknown metric 'auc'"),
        (dict(x=np.zeros((4, 2)), y=np.zeros((4, 1)), optimizer="adamax"), r"unknown optimizer 'adamax'"),
        (dict(x=np.zeros((4, 2)), y=np.zeros((4, 1)), optimizer={"name": "adam", "learning_rate": -1}), r"learning_rate must be a non-negative finite number; got learning_rate=-1"),
        (dict(x=np.zeros((4, 2)), y=np.zeros((4, 1)), validation_data=(np.zeros((3, 2)), np.zeros((2, 1)))), r"validation_x has 3 examples but validation_y has 2"),
        (dict(x=np.zeros((4, 2)), y=np.zeros((4, 1)), validation_data=(np.full((3, 2), np.inf), np.zeros((3, 1)))), r"validation_x contains 6 NaN/inf"),
    ],
)
def test_bad_input_is_reported_before_training(kwargs, message):
    error, trained = _fit_error(small(), kwargs)
    assert re.search(message, error), error
    assert not trained


def _fit_error(model, kwargs) -> tuple[str, bool]:
    """The ValueError ``fit`` raises, and whether any weight changed before it."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kw = dict(loss="binary_crossentropy", epochs=1, batch_size=4, progress=False)
    kw.update(kwargs)
    with pytest.raises(ValueError) as e:
        reglab.fit(model, **kw)
    return str(e.value), any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _ten_classes(softmax: bool):
    torch.manual_seed(0)
    layers = [nn.Linear(3, 10)] + ([nn.Softmax(dim=-1)] if softmax else [])
    return nn.Sequential(*layers)


@pytest.mark.parametrize("softmax, kwargs, message", [
    (True, dict(y=np.arange(12) % 11), r"^y\[10\] = 10: a label must be an integer from 0 to 9 for a model with 10 "
                                        r"outputs \(1 of 12 labels are not\)"),
    (True, dict(y=np.r_[np.zeros(5), -1, np.zeros(6)]), r"^y\[5\] = -1: a label must be an integer from 0 to 9"),
    (False, dict(y=np.arange(12) % 10), r"sparse_categorical_crossentropy expects probabilities \(from_logits=False\), "
                                         r"but the model's outputs on the first 12 examples range over \[.*\]: end the "
                                         r"model with a softmax, or use SparseCategoricalCrossentropy\(from_logits=True\)"),
])
def test_labels_and_logits_are_checked_before_training(softmax, kwargs, message):
    x = np.random.default_rng(0).normal(size=(12, 3)).astype("float32")
    error, trained = _fit_error(_ten_classes(softmax), dict(x=x, loss="sparse_categorical_crossentropy", **kwargs))
    assert re.search(message, error), error
    assert not trained
    # the same data with from_logits=True (raw logits) or a softmax model trains
    y = np.arange(12) % 10
    h = reglab.fit(_ten_classes(softmax), x, y, epochs=1, batch_size=4, progress=False,
                   loss=reglab.losses.SparseCategoricalCrossentropy(from_logits=not softmax))
    assert len(h) == 1 and 0 < h["loss"][0] < 10


def test_divergence_stops_with_history_and_last_finite_weights():
    xtr, ytr, xte, yte = data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch \d+ \(0-based\), batch \d+: the data loss") as err:
        reglab.fit(model, xtr, ytr * 1000, loss="mse", optimizer={"name": "sgd", "learning_rate": 10.0}, epochs=50,
                   batch_size=25, validation_data=(xte, yte * 1000), progress=False)
    e = err.value
    assert len(e.history) == e.epoch  # every completed epoch is kept
    assert all(torch.isfinite(v).all() for v in e.state_dict.values())
    for k, v in model.state_dict().items():
        assert torch.equal(v, e.state_dict[k])  # and the model holds them
    if e.epoch > 0:
        assert np.isfinite(e.history["loss"]).all()


def test_keyboard_interrupt_returns_history_so_far():
    xtr, ytr, _, _ = data()

    class Interrupt(reglab.training.Callback):
        def on_epoch_end(self, epoch, logs):
            if epoch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    model = small()
    h = reglab.fit(model, xtr, ytr, loss="binary_crossentropy", epochs=10, batch_size=25, callbacks=[Interrupt()],
                   progress=False)
    assert h.meta["interrupted"] is True
    assert h.meta["interrupted_epoch"] == 2 and len(h) == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_early_stopping_keras_semantics_and_restore_best_weights():
    xtr, ytr, xte, yte = data()
    model = small()
    snaps = {}

    class Keep(reglab.training.Callback):
        def on_epoch_end(self, epoch, logs):
            snaps[epoch] = {k: v.clone() for k, v in self.model.state_dict().items()}

    es = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    h = reglab.fit(model, xtr, ytr * 0 + (xtr[:, :1] > 10), loss="binary_crossentropy", epochs=40, batch_size=25,
                   optimizer={"name": "adam", "learning_rate": 0.05}, validation_data=(xte, yte), callbacks=[es, Keep()],
                   progress=False)
    v = h["val_loss"]
    best = int(np.argmin(v))
    assert h.meta["best_epoch"] == best
    assert len(h) == best + 3  # patience 2: stops two epochs after the best, as Keras
    for k, t in model.state_dict().items():
        assert torch.equal(t, snaps[best][k])


def test_early_stopping_monitor_must_exist():
    xtr, ytr, _, _ = data()
    with pytest.raises(ValueError, match=r"EarlyStopping monitors 'val_loss', which is not logged"):
        reglab.fit(small(), xtr, ytr, loss="binary_crossentropy", epochs=2, callbacks=[EarlyStopping()], progress=False)


def test_checkpoint_and_csv_logger(tmp_path):
    xtr, ytr, xte, yte = data()
    model = small()
    ck = reglab.ModelCheckpoint(tmp_path / "best.pt", save_best_only=True)
    log = reglab.CSVLogger(tmp_path / "log.csv")
    h = reglab.fit(model, xtr, ytr, loss="binary_crossentropy", epochs=3, batch_size=25, validation_data=(xte, yte),
                   callbacks=[ck, log], progress=False)
    state = torch.load(tmp_path / "best.pt", weights_only=True)
    assert set(state) == set(model.state_dict())
    rows = (tmp_path / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("epoch,")
    header = rows[0].split(",")
    last = dict(zip(header, rows[-1].split(",")))
    assert float(last["val_loss"]) == h["val_loss"][-1]


def test_history_round_trips_losslessly(tmp_path):
    xtr, ytr, xte, yte = data()
    h = reglab.fit(small(), xtr, ytr, loss="binary_crossentropy", epochs=3, batch_size=25, validation_data=(xte, yte),
                   progress=False)
    h.save(tmp_path / "h.json")
    h.save(tmp_path / "h.csv")
    assert History.load(tmp_path / "h.json") == h
    back = History.load(tmp_path / "h.csv")
    for k in h.keys():
        assert np.array_equal(back[k], h[k])
    json.loads((tmp_path / "h.json").read_text())
    with pytest.raises(ValueError, match=r"path must end in .json or .csv"):
        h.save(tmp_path / "h.pkl")


def test_regularized_loss_penalty_is_logged_as_a_source():
    xtr, ytr, xte, yte = data()
    model, loss = reglab_program(1, dtype=torch.float32)
    h = reglab.fit(model, xtr, ytr, loss=loss, epochs=2, batch_size=20, validation_data=(xte, yte), progress=False)
    assert h.penalty_sources == ["loss:penalty"]
    assert h["penalty/loss:penalty"][0] > 0
    np.testing.assert_allclose(h["loss"], h["data_loss"] + h["penalty"], rtol=1e-5)
    assert not math.isnan(h["val_loss"][0])


def test_validation_split_holds_out_the_last_examples_like_keras():
    xtr, ytr, _, _ = data()
    a = reglab.fit(small(), xtr, ytr, loss="binary_crossentropy", epochs=2, batch_size=25, validation_split=0.2, seed=0,
                   progress=False)
    b = reglab.fit(small(), xtr[:180], ytr[:180], loss="binary_crossentropy", epochs=2, batch_size=25,
                   validation_data=(xtr[180:], ytr[180:]), seed=0, progress=False)
    assert a == b
    with pytest.raises(ValueError, match=r"validation_split must be a number in \(0, 1\); got validation_split=1.5"):
        reglab.fit(small(), xtr, ytr, loss="binary_crossentropy", validation_split=1.5, progress=False)


def test_training_flushes_denormals_in_every_thread_and_restores():
    """Flush-to-zero is per thread; torch's worker threads must get it too (a pool created before
    training would otherwise keep computing on denormals, 2-5x slower). Checked by its effect: a
    parallel multiply of denormals gives exact zeros only if every thread flushes."""
    from reglab.training.engine import _FlushDenormals

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.full((1_000_000,), 1e-39, dtype=torch.float32)  # float32 denormals
        assert int((x * 0.5 != 0).sum()) == x.numel()  # the pool now exists, FTZ off
        with _FlushDenormals():
            assert int((x * 0.5 != 0).sum()) == 0
        assert int((x * 0.5 != 0).sum()) == x.numel()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("loss", ["mse", "mae", "binary_crossentropy"])
def test_targets_of_shape_n_against_outputs_n_by_1_as_in_keras(keras, loss):
    """Keras expands y of shape (n,) to the outputs' rank (squeeze_or_expand_to_same_rank); so
    does fit: the same history as with y of shape (n, 1), and Keras's loss value."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 1), nn.Sigmoid())

    flat = reglab.fit(model(), x, y, loss=loss, epochs=2, batch_size=10, shuffle=False, progress=False)
    column = reglab.fit(model(), x, y[:, None], loss=loss, epochs=2, batch_size=10, shuffle=False, progress=False)
    assert flat["loss"].tolist() == column["loss"].tolist()
    with torch.no_grad():
        pred = model()(torch.as_tensor(x))
    ours = float(reglab.losses.get(loss)(pred, torch.as_tensor(y)[:, None]))
    wrapper = {"mse": keras.losses.MeanSquaredError, "mae": keras.losses.MeanAbsoluteError,
               "binary_crossentropy": keras.losses.BinaryCrossentropy}[loss]()  # what Keras's fit uses
    theirs = float(wrapper(y.astype("float64"), pred.numpy().astype("float64")))
    assert ours == pytest.approx(theirs, rel=1e-6)


def test_a_dataloader_label_outside_the_classes_is_named_by_batch_and_position():
    """A DataLoader's labels cannot be checked before training without a pass over it: every
    batch is checked as it comes (torch said ``index 3 is out of bounds for dimension 1``)."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    y[21] = 3
    m = nn.Linear(4, 3)
    with pytest.raises(ValueError) as e:
        reglab.fit(m, DataLoader(TensorDataset(x, y), batch_size=16), loss=reglab.losses.SparseCategoricalCrossentropy(
            from_logits=True), epochs=1, progress=False)
    assert str(e.value) == ("training data: batch 1, example 5: label 3; a label must be an integer from 0 to 2 for a "
                            "model with 3 outputs (1 of 16 labels in this batch are not)")
    y[21] = 2
    h = reglab.fit(m, DataLoader(TensorDataset(x, y), batch_size=16), epochs=2, progress=False,
                   loss=reglab.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert len(h["loss"]) == 2 and np.isfinite(h["loss"]).all()


def test_a_dataloader_of_logits_for_a_probability_loss_is_refused_before_training():
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    m = nn.Linear(4, 3)
    w = m.weight.detach().clone()
    ds = TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,)))
    with pytest.raises(ValueError, match=r"sparse_categorical_crossentropy expects probabilities \(from_logits=False\).*first 1 "
                                         r"examples range over .*SparseCategoricalCrossentropy\(from_logits=True\)"):
        reglab.fit(m, DataLoader(ds, batch_size=16), loss="sparse_categorical_crossentropy", epochs=1, progress=False)
    assert torch.equal(m.weight, w)  # nothing trained


@pytest.mark.parametrize("loss", [nn.MSELoss(), torch.nn.functional.l1_loss, nn.BCEWithLogitsLoss()],
                         ids=["MSELoss", "l1_loss", "BCEWithLogitsLoss"])
def test_a_torch_loss_that_would_broadcast_output_against_y_is_refused(loss):
    """Output (n, 1) against y (n,): torch broadcasts to (n, n) with a warning and trains on every
    output against every target (it did, to a loss of 2.1 instead of ~1)."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 4)).astype("float32"), (rng.random(64) > 0.5).astype("float32")
    m = nn.Linear(4, 1)
    w = m.weight.detach().clone()
    with pytest.raises(ValueError) as e:
        reglab.fit(m, x, y, loss=loss, epochs=1, progress=False, metrics=())
    assert str(e.value).endswith("the model's output has shape (1,) per example, y (shape (64,)) has () per "
                                 "example, for x of shape (64, 4)")
    assert torch.equal(m.weight, w)
    h = reglab.fit(m, x, y[:, None], loss=loss, epochs=1, progress=False, metrics=())   # the same data, shaped
    assert len(h["loss"]) == 1 and np.isfinite(h["loss"]).all()
