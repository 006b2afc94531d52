"""``reglab.fit``: Keras's ``model.fit`` for any ``torch.nn.Module`` with attached regularizers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import _checks
from .. import losses as _losses
from .. import optimizers as _optimizers
from .. import threads as _threads
from ..devices import torch_device
from ..attach import quiet, refresh_constraints
from . import data as _data
from .callbacks import Callback, EarlyStopping
from ..engines.choose import choose_engine
from ..engines.make import make_engine
from .engine import ArrayData, LoaderData, run
from .sources import read_quietly
from .history import History

__all__ = ["fit", "prepare_arrays", "check_trainable", "check_callbacks"]


def check_trainable(model: Any, what: str = "model") -> nn.Parameter:
    """The model's first parameter, after checking that ``model`` is a ``torch.nn.Module`` that
    can train: it has parameters, some with ``requires_grad``, none on the ``meta`` device."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"{what} must be a torch.nn.Module (or, from a builder, (module, loss)); got "
                        f"{type(model).__name__}: {model!r:.80}")
    params = list(model.parameters())
    if not params:
        raise ValueError(f"{what} has no parameters to train")
    if any(p.is_meta for p in params):
        raise ValueError(f"{what} has parameters on the meta device (shapes without values): make them real before "
                         "training, e.g. model.to_empty(device='cpu') and then initialize them")
    if not any(p.requires_grad for p in params):
        raise ValueError(f"none of the {len(params)} parameters of {what} can train (requires_grad is False for all): "
                         "training would change nothing; unfreeze some with p.requires_grad_(True)")
    return params[0]


def _check_optimizer(model: nn.Module, optimizer: Any) -> None:
    """An optimizer instance steps some of the model's trainable parameters."""
    if isinstance(optimizer, torch.optim.Optimizer):
        mine = {id(p) for p in model.parameters() if p.requires_grad}
        if not any(id(p) in mine for g in optimizer.param_groups for p in g["params"]):
            raise ValueError("the optimizer updates none of the model's trainable parameters (was it made for another "
                             "model?): make it from this one, e.g. torch.optim.Adam(model.parameters())")


def check_callbacks(callbacks: Any) -> list[Callback]:
    """``callbacks`` as a list, each checked to be a reglab ``Callback``."""
    if isinstance(callbacks, Callback) or not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks must be a list of reglab callbacks (e.g. [reglab.EarlyStopping(...)]); got "
                        f"{callbacks!r:.80}")
    for i, c in enumerate(callbacks):
        if not isinstance(c, Callback):
            raise TypeError(f"callbacks[{i}] must be a reglab callback (reglab.EarlyStopping, reglab.CSVLogger, "
                            f"reglab.ModelCheckpoint or a subclass of reglab.Callback); got {type(c).__name__}: "
                            f"{c!r:.80}")
    return list(callbacks)

_METRICS = ("accuracy",)


def check_metrics(metrics: Sequence[str] | None) -> tuple[str, ...]:
    metrics = tuple(metrics or ())
    for m in metrics:
        if m not in _METRICS:
            raise ValueError(f"unknown metric {m!r}; supported: {list(_METRICS)}")
    return metrics


def expands_targets(loss: _losses.Loss, out: torch.Tensor, y_dim: int) -> bool:
    """Keras's ``squeeze_or_expand_to_same_rank``: targets of shape ``(n,)`` (``y_dim`` axes a
    batch) against outputs ``(n, 1)`` gain the last axis (not for sparse labels, nor a torch
    loss, which has its own rule)."""
    return (y_dim == out.dim() - 1 and out.dim() >= 2 and out.shape[-1] == 1 and loss.task != "sparse"
            and not isinstance(getattr(loss, "data_loss", loss), _losses.TorchLoss))


def prepare_arrays(model: nn.Module, x: Any, y: Any, loss: _losses.Loss, dtype, device, prefix: str = ""):
    """Validate and convert ``x, y``; check one forward pass against the loss's expected shapes.

    A float ``x`` is cast to the model's parameter dtype (a Keras program's x is often float64, its
    y float32; both become the model's dtype, float32 by default); float targets likewise. An
    integer ``x`` stays integer (``probe_inputs``).
    """
    if y is None:
        raise ValueError(f"{prefix}y is required when {prefix}x is an array")
    xt = _data.as_tensor(x, f"{prefix}x", dtype, device, keep_ints=True)
    yt = _data.targets(y, f"{prefix}y", loss, dtype, device)
    _data.check_lengths(xt, yt, f"{prefix}x", f"{prefix}y")
    probe = xt[:PROBE]
    out, as_float = probe_inputs(model, probe, dtype, f"{prefix}x of shape {tuple(xt.shape)}")
    if as_float:
        xt = xt.to(dtype)
    if expands_targets(loss, out, yt.dim()):
        yt = yt.unsqueeze(-1)
    try:
        loss.check_shapes(tuple(out.shape), tuple(yt[:len(probe)].shape))
    except ValueError as e:
        raise ValueError(f"{loss.name}: the model's output has shape {tuple(out.shape[1:])} per example, {prefix}y "
                         f"(shape {tuple(yt.shape)}) has {tuple(yt.shape[1:])} per example, for {prefix}x of shape "
                         f"{tuple(xt.shape)}") from None
    check_targets_and_outputs(loss, out, yt, prefix)
    return xt, yt


#: examples of the first batch the model is run on before training (shapes, output range)
PROBE = 32


def probe_inputs(model: nn.Module, xb: torch.Tensor, dtype: torch.dtype, what: str) -> tuple[torch.Tensor, bool]:
    """The model's output on ``xb`` (``_probe``) and whether integer inputs must become floats:
    integers stay integers (token ids for an ``nn.Embedding``) where the model takes them; a
    model that fails on them but runs on floats (an MLP on integer features) gets floats, as
    Keras casts inputs to its ``Input`` layer's float dtype."""
    try:
        return _probe(model, xb, what), False
    except ValueError as first:
        if xb.is_floating_point():
            raise
        try:
            return _probe(model, xb.to(dtype), what), True
        except ValueError:
            raise first from None


def model_inputs(model: nn.Module, x: Any) -> torch.Tensor:
    """``x`` as ``model`` takes it, on its device (``probe_inputs``' rule: floats in its float
    dtype, integers kept where the model runs on them, else floats)."""
    p0 = next(model.parameters())
    t = _data.as_input(torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x), p0.dtype)
    t = t.to(p0.device)
    if t.is_floating_point() or t.dtype == torch.bool:
        return t
    try:
        return t.to(p0.dtype) if probe_inputs(model, t[:1], p0.dtype, "x")[1] else t
    except ValueError:  # the model runs on neither: its own error comes at the real forward pass
        return t


def _probe(model: nn.Module, xb: torch.Tensor, what: str) -> torch.Tensor:
    """The model's output on ``xb`` in eval mode, without grad or a recorded penalty (the model is
    left as it was); a failure names ``what`` it ran on."""
    with quiet(model):  # a probe draws nothing from training's random stream
        try:
            out = model(xb)
        except (Exception, SystemExit) as e:  # the user's forward: sys.exit() in it is an error too
            raise ValueError(f"the model could not run on {what}: "
                             f"{f'it called sys.exit({e.code!r})' if isinstance(e, SystemExit) else e}") from e
    if not torch.is_tensor(out):
        raise ValueError(f"the model returns a {type(out).__name__}, not a tensor: reglab trains a model whose forward "
                         "returns its predictions (one tensor); wrap it to return the one the loss compares with y")
    if not (out.is_floating_point() or out.is_complex()):
        raise ValueError(f"the model returns {out.dtype} values: predictions must be floating point (a loss needs their "
                         "gradient); return the scores or probabilities, not class indices")
    return out


def loader_source(model: nn.Module, loader: DataLoader, loss: _losses.Loss, dtype, device, prefix: str) -> LoaderData:
    """A ``DataLoader`` as a training (``prefix`` ``""``) or validation source, checked before
    training: the model runs on its dataset's first example and its output has the range the
    loss expects (``check_targets_and_outputs``); sparse labels are then checked batch by batch
    against the model's classes; integer inputs become floats where the model cannot take them
    (``probe_inputs``); other targets become floats, ``(n,)`` against outputs ``(n, 1)`` gaining
    the last axis (``expands_targets``), as arrays' do. An iterable dataset is not probed (that
    would advance it)."""
    from torch.utils.data import IterableDataset

    name = f"{prefix or 'training '}data"
    floats = loss.task != "sparse"
    if isinstance(loader.dataset, IterableDataset):
        return LoaderData(loader, dtype, device, name=name, float_y=floats)
    try:
        item = read_quietly(loader.dataset, 0)
        x0, y0 = item[0], item[1]
    except Exception:  # an unusual dataset: the batches are checked as they come
        return LoaderData(loader, dtype, device, name=name, float_y=floats)
    x0 = _data.as_input(torch.as_tensor(x0), dtype).to(device).unsqueeze(0)
    out, as_float = probe_inputs(model, x0, dtype, f"{prefix}dataset[0]'s x")
    y0 = torch.as_tensor(y0)
    y = y0.to(device).reshape(1, -1)
    check_targets_and_outputs(loss, out, y[:, 0] if y.shape[1] == 1 else y, f"{prefix}dataset[0]: ")
    base = getattr(loss, "data_loss", loss)
    sparse = isinstance(base, _losses.SparseCategoricalCrossentropy) and out.dim() >= 2
    return LoaderData(loader, dtype, device, classes=out.shape[-1] if sparse else None, name=name,
                      ints_as_float=as_float, float_y=floats, expand_y=expands_targets(loss, out, y0.dim() + 1))


def check_targets_and_outputs(loss: _losses.Loss, out: torch.Tensor, yt: torch.Tensor, prefix: str = "") -> None:
    """Before training: integer labels within the model's classes (sparse cross-entropy), and
    probabilities where the loss expects them (``from_logits=False``) -- a model with raw
    logits would otherwise train silently on clipped values."""
    base = getattr(loss, "data_loss", loss)
    if base.task == "sparse" and out.dim() >= 2 and isinstance(base, _losses.SparseCategoricalCrossentropy):
        k = out.shape[-1]
        labels = yt.reshape(-1)
        bad = (labels < 0) | (labels >= k) | (labels != labels.round())
        if bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise ValueError(f"{prefix}y[{i}] = {labels[i].item():g}: a label must be an integer from 0 to {k - 1} "
                             f"for a model with {k} outputs ({int(bad.sum())} of {labels.numel()} labels are not)")
    if getattr(base, "from_logits", True) is False and base.task in ("binary", "categorical", "sparse"):
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{base.name} expects probabilities (from_logits=False), but the model's outputs on the "
                             f"first {out.shape[0]} examples range over [{lo:.3g}, {hi:.3g}]: end the model with a "
                             f"{'sigmoid' if base.task == 'binary' else 'softmax'}, or use "
                             f"{type(base).__name__}(from_logits=True)")


def _as_source(model, x, y, loss, dtype, device, batch_size, shuffle, seed, prefix):
    if isinstance(x, Dataset):
        g = torch.Generator()
        if seed is not None:
            g.manual_seed(int(seed))
        x = DataLoader(x, batch_size=batch_size, shuffle=shuffle, generator=g)
    if isinstance(x, DataLoader):
        return loader_source(model, x, loss, dtype, device, prefix), False
    xt, yt = prepare_arrays(model, x, y, loss, dtype, device, prefix)
    return ArrayData(xt, yt), shuffle


def _validation_source(model, validation_data, loss_fn, dtype, dev, batch_size):
    """``validation_data`` (``(x_val, y_val)``, a ``Dataset`` or a ``DataLoader``) as a source, or None."""
    if validation_data is None:
        return None
    if isinstance(validation_data, (DataLoader, Dataset)):
        return _as_source(model, validation_data, None, loss_fn, dtype, dev, batch_size, False, None, "validation_")[0]
    if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
        raise ValueError("validation_data must be (x_val, y_val), a Dataset or a DataLoader")
    return _as_source(model, validation_data[0], validation_data[1], loss_fn, dtype, dev, batch_size, False, None,
                      "validation_")[0]


def _split_callbacks(model: nn.Module, callbacks: Sequence[Callback]) -> tuple[list[EarlyStopping], list[Callback]]:
    """``(the EarlyStopping (at most one), the other callbacks, given the model)``."""
    callbacks = list(callbacks)
    stoppers = [c for c in callbacks if isinstance(c, EarlyStopping)]
    if len(stoppers) > 1:
        raise ValueError("give at most one EarlyStopping callback")
    others = [c for c in callbacks if not isinstance(c, EarlyStopping)]
    for c in others:
        c.model = model
    return stoppers, others


def _split_off_validation(x: Any, y: Any, validation_data: Any, validation_split: float) -> tuple[Any, Any, Any]:
    """``(x, y, validation_data)`` with Keras's ``validation_split``: the last fraction of the
    arrays (before shuffling) held out, where no ``validation_data`` is given."""
    if not validation_split:
        return x, y, validation_data
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)) or not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be a number in (0, 1); got validation_split={validation_split!r}")
    if isinstance(x, (Dataset, DataLoader)):
        raise ValueError("validation_split needs array inputs; give validation_data for a Dataset/DataLoader")
    if validation_data is None:
        n = len(x)
        cut = n - int(n * validation_split)  # Keras: the last samples are held out
        if cut <= 0 or cut >= n:
            raise ValueError(f"validation_split={validation_split} leaves no training or no validation data "
                             f"with {n} examples")
        validation_data = (x[cut:], y[cut:])
        x, y = x[:cut], y[:cut]
    return x, y, validation_data


def fit(
    model: nn.Module,
    x: Any,
    y: Any = None,
    *,
    loss: Any,
    optimizer: Any = "adam",
    epochs: int = 1,
    batch_size: int = 32,
    validation_data: Any = None,
    validation_split: float = 0.0,
    shuffle: bool = True,
    seed: int | None = None,
    metrics: Sequence[str] | None = ("accuracy",),
    callbacks: Sequence[Callback] = (),
    device: str | torch.device | None = None,
    progress: bool = True,
    threads: int | None = None,
) -> History:
    """Train ``model`` on ``(x, y)`` like Keras's ``fit`` and return its ``History``.

    - Objective per batch = mean data loss + ``reglab.penalty`` terms (all attached regularizers,
      and a ``RegularizedLoss``'s penalty); constraints are applied after every step.
    - ``loss``: a Keras name (``"binary_crossentropy"``, ``"mse"``, ...), a ``reglab.losses.Loss``,
      a ``RegularizedLoss`` or a torch loss callable ``fn(y_pred, y_true)``.
    - ``optimizer``: a torch optimizer instance (used as is) or a Keras name/config
      (``"adam"``, ``{"name": "adam", "learning_rate": 0.005}``, ``"sgd"``, ``"rmsprop"``,
      ``"adamw"``) meaning Keras's optimizer, defaults and update rule. The default is ``"adam"``,
      the optimizer of the Keras programs reproduced here (Keras's ``compile`` defaults to ``"rmsprop"``).
    - ``x``: an array/tensor (with ``y``), a ``Dataset`` or a ``DataLoader`` of ``(x, y)``.
      Float inputs are cast to the model's parameter dtype; integer inputs stay integers (token
      ids for an ``nn.Embedding``) unless the model cannot take them (then floats, as before).
    - ``validation_split``: as Keras, the *last* fraction of ``x, y`` (before shuffling) is held out
      as validation data (arrays only; ignored when ``validation_data`` is given).
    - ``seed`` fixes the shuffling order only (initialize the model before ``fit``); the same seed
      gives a bit-identical history on CPU.
    - ``threads``: torch's intra-op threads for this run (restored after); None: the ``reglab.threads``
      rule (one thread for small models, never more than the idle cores).
    - ``device``: where the model trains (moved there first): ``"auto"`` (a GPU where torch sees
      one), ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (``reglab.devices``: a GPU torch does not see is an
      error) or any torch device.
    - NaN/inf in the objective raises ``TrainingDiverged`` (epoch, batch, history, last finite
      weights); Ctrl-C stops after the current step and returns the history marked
      ``meta["interrupted"]``.

    The engine is ``reglab.engines.choose_engine``'s: a plain ``nn.Sequential`` of
    ``Dense``/``nn.Linear``, activation and ``nn.Dropout`` layers, trained on arrays with an
    optimizer given by name or config, runs on the Dense-stack engine (``reglab.engines.dense``:
    the same math with the backward pass written out, ~4x faster than a hand-written autograd
    loop here (``benchmarks/bench_fit_overhead.py``), and bit-identical to the same model inside
    ``fit_many``); anything else on the per-model engine (``reglab.engines.loop``: autograd).
    Both give the same history to ~1e-12 in float64 (tested).

    See ``reglab.training.history`` for what each History key means.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    epochs = _checks.positive_int(epochs, "epochs")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    metrics = check_metrics(metrics)
    _threads.check(threads)
    check_trainable(model)
    callbacks = check_callbacks(callbacks)
    if seed is not None:
        seed = _checks.integer(seed, "seed")
    if device is not None:
        model.to(torch_device(device))
    p0 = next(model.parameters())
    _check_optimizer(model, optimizer)
    dtype, dev = p0.dtype, p0.device
    loss_fn = _losses.get(loss)
    refresh_constraints(model)
    x, y, validation_data = _split_off_validation(x, y, validation_data, validation_split)
    train, do_shuffle = _as_source(model, x, y, loss_fn, dtype, dev, batch_size, shuffle, seed, "")
    val = _validation_source(model, validation_data, loss_fn, dtype, dev, batch_size)
    stoppers, others = _split_callbacks(model, callbacks)
    per_step = batch_size if isinstance(train, ArrayData) else (train.loader.batch_size or 1)
    with _threads.using(_threads.decide(threads, model, train.example(), per_step)):
        return _train(model, loss_fn, optimizer, train, val, metrics, epochs, batch_size, do_shuffle, seed, others,
                      stoppers, progress)


def _train(model, loss_fn, optimizer, train, val, metrics, epochs, batch_size, do_shuffle, seed, others, stoppers,
           progress) -> History:
    """``fit`` past its checks: the engine is chosen (``choose_engine``) and the model trained."""
    with_acc = "accuracy" in metrics and loss_fn.task is not None
    choice = choose_engine(model, loss_fn, train.probe_batch(), n_models=1, optimizer=optimizer,
                           arrays=isinstance(train, ArrayData) and (val is None or isinstance(val, ArrayData)))
    stack = make_engine(choice.kind, [model], [loss_fn], with_acc, *train.dims())
    try:
        opt = _optimizers.get(optimizer, stack.optimized, stack.decayed)
    except ValueError:
        stack.write_back()  # give the model its own storage back
        raise
    try:
        result = run(stack, opt, train, val, epochs=epochs, batch_size=batch_size, shuffle=do_shuffle, seeds=[seed],
                     callbacks=others, early_stopping=stoppers[0] if stoppers else None, progress=progress,
                     raise_on_divergence=True)
    finally:
        stack.write_back()
    return result.histories[0]
