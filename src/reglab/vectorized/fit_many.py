"""``reglab.fit_many``: train M models (seeds x grid points) in one vectorized run."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import _checks, _collector
from .. import losses as _losses
from .. import optimizers as _optimizers
from .. import threads as _threads
from ..engines.choose import EngineChoice, choose_engine
from ..engines.loop import rng_state, seed_global
from ..engines.make import make_engine
from ..engines.protocol import KINDS
from ..training.callbacks import EarlyStopping
from ..training.fit import check_callbacks, check_trainable
from ..training.engine import ArrayData, LoaderData, run
from ..training.sources import draws_random
from ..training.fit import check_metrics, loader_source, prepare_arrays
from ..training.history import History
from ..devices import torch_device

__all__ = ["fit_many", "ManyResult"]

CPU_CHUNK = 512


@dataclass
class ManyResult:
    """``histories[i]``, ``models[i]`` and ``configs[i]`` (``{"seed": s, **grid_point}``) of model i;
    ``failed`` maps model index -> where it diverged (its history stops there; its weights are its
    last finite ones, or its best epoch's where ``EarlyStopping`` restores the best weights)."""

    histories: list[History]
    models: list[nn.Module]
    configs: list[dict[str, Any]]
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False
    chunks: int = 1
    #: the engine that trained them (``reglab.engines.choose_engine``): "dense", "vmap" or "loop"
    engine: str = "dense"
    #: why that engine, in words
    engine_reason: str = ""
    #: torch threads the models trained with (the most over chunks; ``reglab.threads``)
    threads: int = 1

    def take(self, res: Any, idx: list[int], models: list[nn.Module]) -> None:
        """Add the loop's result ``res`` for the models ``idx`` (a chunk)."""
        self.histories.extend(res.histories)
        self.models.extend(models)
        self.failed.update({idx[k]: v for k, v in res.failed.items()})
        self.interrupted |= res.interrupted


def _per_model(a: Any, n_models: int, name: str) -> tuple[Any, bool]:
    if isinstance(a, (list, tuple)) and len(a) == n_models and all(
            hasattr(v, "shape") for v in a):
        shapes = {tuple(np.shape(v)) for v in a}
        if len(shapes) != 1:
            raise ValueError(f"{name}: the per-model arrays must have one shape; got {sorted(shapes)}")
        return a, True
    if isinstance(a, (list, tuple)) and len(a) > 1 and all(isinstance(v, (np.ndarray, torch.Tensor)) for v in a):
        raise ValueError(f"{name}: a list of {len(a)} arrays for {n_models} models (seeds x grid points): give one "
                         f"array per model ({n_models}, in the order of product(seeds, grid)), or one array for all")
    return a, False


def _estimate_bytes(model: nn.Module, batch_size: int, n_features: int) -> int:
    n_params = sum(p.numel() for p in model.parameters())
    itemsize = next(model.parameters()).element_size()
    widest = max((m.out_features for m in model.modules() if isinstance(m, nn.Linear)), default=n_features)
    n_layers = max(1, sum(1 for m in model.modules() if len(list(m.children())) == 0))
    # weights, grads, 2 optimizer moments, a best-weights copy, a pre-step copy; activations of a batch
    return itemsize * (6 * n_params + 4 * batch_size * widest * n_layers)


def _check_chunk(first: nn.Module, models: list[nn.Module], idx: list[int], configs: list[dict]) -> None:
    """A chunk's models: model 0's architecture, each a model of its own."""
    _check_one_architecture(first, models, [configs[i] for i in idx], configs[0])
    _check_distinct([first] + [m for i, m in zip(idx, models) if i != 0], configs[0]["seed"])


def _check_distinct(models: list[nn.Module], seed0: int) -> None:
    """Every built model is a model of its own: no trainable parameter shared with another (a
    builder that returns one module it keeps, or puts a shared layer in each, would train one set
    of weights; a frozen one, a shared pretrained backbone, may be shared)."""
    owner: dict[int, int] = {}
    for i, m in enumerate(models):
        for p in (q for q in m.parameters() if q.requires_grad):
            j = owner.setdefault(id(p), i)
            if j != i:
                raise ValueError("build() returned models that share parameters (the same module, or a layer kept "
                                 "outside the builder): it must build a new model, with new layers, on each call "
                                 f"(models {j} and {i} of the group of seed {seed0})")


def _check_one_architecture(first, models, configs, first_config) -> None:
    """Every model's parameters have model 0's names and shapes (else: name the grid points)."""
    want = [(n, tuple(p.shape)) for n, p in first.named_parameters()]
    for m, cfg in zip(models, configs):
        have = [(n, tuple(p.shape)) for n, p in m.named_parameters()]
        if have != want:
            a, b = next(((h, w) for h, w in zip(have, want) if h != w), (have[len(want):] or None, want[len(have):] or None))
            raise ValueError(f"fit_many trains models of one architecture together: the model of {cfg} has "
                             f"{a} where the model of {first_config} has {b}; train different architectures in "
                             "separate fit_many calls")


def fit_many(
    build: Callable[..., nn.Module | tuple[nn.Module, Any]],
    x: Any,
    y: Any = None,
    *,
    seeds: Sequence[int],
    grid: Sequence[Mapping[str, Any]] | None = None,
    loss: Any = None,
    optimizer: Any = "adam",
    epochs: int = 1,
    batch_size: int = 32,
    validation_data: Any = None,
    shuffle: bool = True,
    metrics: Sequence[str] | None = ("accuracy",),
    callbacks: Sequence[EarlyStopping] = (),
    device: str | torch.device | None = None,
    progress: bool = True,
    memory_budget: int | None = 2 * 1024**3,
    threads: int | None = None,
    engine: str | EngineChoice = "auto",
) -> ManyResult:
    """Train ``len(seeds) * len(grid)`` models of one architecture together.

    Model i, for the pair ``(seed_i, grid_i)`` in ``itertools.product(seeds, grid)``, is
    ``build(**grid_i)`` called right after ``torch.manual_seed(seed_i)`` and trained with
    ``seed=seed_i`` -- its history and weights equal ``reglab.fit`` on that model (tested): bit
    for bit on the Dense-stack and per-model engines; on the vmap engine with the same shuffles
    and dropout masks (CPU), up to the rounding of batched kernels, and on CPU bit for bit in any
    group of two or more. ``build`` may return ``(model, loss)`` (e.g. a ``RegularizedLoss``
    bound to the model). Regularizer strengths are read from each built model and stacked, so a
    grid over strengths trains in one run.

    ``engine``: ``"auto"`` (``reglab.engines.choose_engine``: Dense-stack, vmap, or the
    per-model loop for what vmap cannot batch or draw as each model alone -- recurrent layers,
    attention dropout, custom autograd functions), or ``"dense"``/``"vmap"``/``"loop"`` to force
    one (``EngineUnavailable`` says why it cannot), or an ``EngineChoice`` ``choose_engine`` made for
    a model of this ``build`` (a plan's: used as it is); in ``ManyResult.engine``, ``.engine_reason``.

    ``x, y`` and ``validation_data``: shared arrays, lists with one array per model (same
    shapes), a map-style ``Dataset`` of ``(x, y)`` (each model its own ``DataLoader``, shuffled by
    its seed, as ``fit(model, dataset, seed=s)``), a list of Datasets (one per model, ``y`` None)
    or a ``DataLoader`` (its batches serve every model). Integer inputs stay integers (``fit``'s
    rule). ``optimizer``: a Keras name/config. ``device``: as ``fit``'s (``reglab.devices``).
    ``callbacks``: one ``EarlyStopping`` at most, per model (stopped models cost nothing more).
    A model whose objective becomes NaN/inf is marked failed (``ManyResult.failed``) and frozen.
    ``memory_budget`` (bytes) splits M into chunks trained one after another (same results; on
    CPU at most ``CPU_CHUNK`` = 512 models, the measured sweet spot; ``None``: no chunking).
    ``threads``: torch's intra-op threads (restored after); None: ``reglab.threads``' rule.
    """
    grid = _grid(grid)
    seeds, epochs, batch_size, metrics, stoppers = _checked(seeds, optimizer, engine, epochs, batch_size, metrics,
                                                            threads, callbacks)
    configs = [{"seed": s, **g} for s, g in itertools.product(seeds, grid)]  # model i's
    M = len(configs)
    data = _Inputs(x, y, validation_data, M, batch_size, shuffle)
    rngs: dict[int, Any] = {}

    def make(i: int):
        return _build(build, configs[i], grid[i % len(grid)], loss, device, rngs, i)

    first, first_loss = make(0)
    train0 = data.train(first, first_loss, [0], configs)
    choice = engine if isinstance(engine, EngineChoice) else choose_engine(first, first_loss, train0.probe_batch(),
        n_models=M, optimizer=optimizer, arrays=data.arrays, data_draws=data.draws, engine=engine)
    bounds = _chunks(M, choice.kind, memory_budget, first, batch_size, train0)
    bar = _bar(M, progress)
    result = ManyResult([], [], configs, chunks=len(bounds) - 1, engine=choice.kind, engine_reason=choice.reason)
    for c0, c1 in zip(bounds, bounds[1:]):
        idx = list(range(c0, c1))
        built = _built(make, idx, (first, first_loss))
        _check_chunk(first, [b[0] for b in built], idx, configs)
        res = _train_chunk(choice.kind, built, idx, configs, data, [rngs[i] for i in idx], stoppers, result,
                           dict(optimizer=optimizer, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                                threads=threads, metrics=metrics))
        result.take(res, idx, [b[0] for b in built])
        bar.update(len(idx))
        if res.interrupted:
            break
    bar.close()
    return result


def _built(make: Callable[[int], Any], idx: list[int], first: Any) -> list:
    """A chunk's ``(model, loss)`` pairs (model 0's built already), with Python's cyclic
    collector paused meanwhile (``reglab._collector``: full collections walked every model built
    before, 20-25 % of building 1024). Not for training: a user's forward may make cycles."""
    with _collector.paused():
        return [first if i == 0 else make(i) for i in idx]


def _bar(M: int, progress: bool) -> Any:
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=M, desc="fit_many", unit="model", disable=not progress or not sys.stderr.isatty())


def _grid(grid: Sequence[Mapping[str, Any]] | None) -> list[dict]:
    """The grid points as dicts (``[{}]``: none), each once."""
    points = [dict(g) for g in (grid or [{}])]
    for i, g in enumerate(points):
        if g in points[:i]:
            raise ValueError(f"grid[{i}] = {g!r} repeats grid[{points.index(g)}]: each grid point once")
    return points


def _checked(seeds, optimizer, engine, epochs, batch_size, metrics, threads, callbacks) -> tuple:
    """``fit_many``'s arguments checked where they enter: ``(seeds, epochs, batch_size, metrics,
    [the EarlyStopping])``."""
    try:
        seeds = [int(s) for s in seeds]
    except (TypeError, ValueError):
        raise ValueError(f"seeds must be integers; got seeds={seeds!r}") from None
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must differ (a repeated seed trains the same model twice); got seeds={seeds}")
    if isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError("fit_many needs an optimizer name or config (an optimizer instance is bound to one model)")
    given = engine.kind if isinstance(engine, EngineChoice) else engine
    if given not in KINDS and engine != "auto":
        raise ValueError(f"engine must be 'auto', one of {list(KINDS)} or an EngineChoice; got engine={engine!r}")
    epochs = _checks.positive_int(epochs, "epochs")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    metrics = check_metrics(metrics)
    _threads.check(threads)
    callbacks = check_callbacks(callbacks)
    stoppers = [c for c in callbacks if isinstance(c, EarlyStopping)]
    if len(stoppers) != len(callbacks) or len(stoppers) > 1:
        raise ValueError(f"fit_many takes one callback, an EarlyStopping; got {callbacks!r}")
    return seeds, epochs, batch_size, metrics, stoppers


def _build(build: Callable[..., Any], config: dict, point: dict, loss: Any, device: Any, rngs: dict, i: int):
    """Model i: ``build(**point)`` right after ``torch.manual_seed(seed)`` (``seed_global``), with its loss; its
    random state right after the build goes into ``rngs[i]`` (where it draws from alone)."""
    seed_global(config["seed"])
    out = build(**point)
    model, lo = (out if isinstance(out, tuple) and len(out) == 2 else (out, loss))
    if lo is None:
        raise ValueError("give loss=..., or let build return (model, loss)")
    args = ", ".join(f"{k}={v!r}" for k, v in point.items())
    check_trainable(model, f"the model build({args}) returned (seed {config['seed']})")
    if device is not None:
        model.to(torch_device(device))  # "auto", or a GPU checked to exist
    rngs[i] = rng_state([d for d in {p.device for p in model.parameters()} if d.type == "cuda"])
    return model, _losses.get(lo)


def _train_chunk(kind: str, built: list, idx: list[int], configs: list[dict], data: Any, rngs: list, stoppers: list,
                 result: ManyResult, settings: dict[str, Any]) -> Any:
    """Train the models ``built`` (``(model, loss)``; models ``idx``) on engine ``kind``: the
    loop's result. ``settings``: ``fit_many``'s optimizer, epochs, batch_size, shuffle, threads,
    metrics; ``result.threads`` notes the thread count."""
    models = [b[0] for b in built]
    losses = [b[1] for b in built]
    train = data.train(models[0], losses[0], idx, configs)
    val = data.validation(models[0], losses[0], idx)
    work_models = 1 if kind == "loop" else len(idx)  # the loop's kernels run one model's work
    n_threads = _threads.decide(settings["threads"], models[0], train.example(), settings["batch_size"], work_models)
    result.threads = max(result.threads, n_threads) if idx[0] else n_threads
    with _threads.using(n_threads):
        with_acc = "accuracy" in settings["metrics"] and losses[0].task is not None
        es = None
        if stoppers:  # a fresh one per chunk, with the user's settings
            es = EarlyStopping(**{k: getattr(stoppers[0], k) for k in (
                "monitor", "patience", "mode", "baseline", "restore_best_weights", "start_from_epoch")},
                min_delta=abs(stoppers[0].min_delta))
        stack = make_engine(kind, models, losses, with_acc, *train.dims(), rngs)
        try:
            opt = _optimizers.get(settings["optimizer"], stack.optimized, stack.decayed)
            res = run(stack, opt, train, val, epochs=settings["epochs"], batch_size=settings["batch_size"],
                      shuffle=settings["shuffle"], seeds=[configs[i]["seed"] for i in idx], early_stopping=es,
                      progress=False, desc="fit_many")
            stack = res.stack  # the stack that trained last (the engine drops stopped models' rows)
        finally:
            stack.write_back()
    return res


def _chunks(M: int, kind: str, memory_budget: int | None, first: nn.Module, batch_size: int, train: Any) -> list[int]:
    """The bounds of the chunks of near-equal size the M models train in, one after another."""
    ex = train.example()
    per_model_bytes = _estimate_bytes(first, batch_size, int(ex.shape[-1]) if ex is not None and ex.dim() else 1)
    chunk = M if not memory_budget else max(1, min(M, int(memory_budget // max(per_model_bytes, 1))))
    if memory_budget and next(first.parameters()).device.type == "cpu":
        # measured (benchmarks/RESULTS.md): on CPU a 32x5 MLP trains fastest per model at M ~ 512 (2 threads);
        # beyond that the stacked tensors outgrow the caches and elementwise passes slow down
        chunk = min(chunk, CPU_CHUNK)
    n_chunks = math.ceil(M / chunk)
    if kind == "vmap":
        # chunks of two models at least (even past the memory budget), as a lone model trains
        # on other kernels than a stacked one (``reglab.engines.vmap``)
        n_chunks = max(1, min(n_chunks, M // 2))
    return [round(k * M / n_chunks) for k in range(n_chunks + 1)]


class _Inputs:
    """``fit_many``'s data in the forms it takes (shared or per-model arrays, a ``Dataset``, a
    ``DataLoader``), made into the sources the loop reads, chunk by chunk."""

    def __init__(self, x: Any, y: Any, validation_data: Any, M: int, batch_size: int, shuffle: bool):
        self.batch_size, self.shuffle = batch_size, shuffle
        #: one map-style Dataset per model (each model's own examples, read by its own loader)
        self.sets = list(x) if isinstance(x, (list, tuple)) and x and all(isinstance(d, Dataset) for d in x) else None
        if self.sets is not None and len(self.sets) != M:
            raise ValueError(f"x: a list of {len(self.sets)} Datasets for {M} models (seeds x grid points): give one "
                             f"per model ({M}, in the order of product(seeds, grid)), or one Dataset for all")
        if self.sets is not None:
            lengths = [len(d) for d in self.sets]
            if len(set(lengths)) != 1:  # their batches are stacked, step by step
                raise ValueError(f"x: the per-model Datasets must have one length; got {lengths[:5]}")
            self.x, self.x_per, self.y = self.sets[0], False, None
        else:
            self.x, self.x_per = _per_model(x, M, "x")
            self.y, _ = _per_model(y, M, "y")
        self.loader = isinstance(self.x, (Dataset, DataLoader))
        self.val = None
        if validation_data is not None:
            if isinstance(validation_data, (Dataset, DataLoader)):
                self.val, self.v_per = validation_data, False
            elif not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be (x_val, y_val), a Dataset or a DataLoader")
            else:
                xv, self.v_per = _per_model(validation_data[0], M, "validation x")
                yv, _ = _per_model(validation_data[1], M, "validation y")
                self.val = (xv, yv)
        self.arrays = not self.loader and not isinstance(self.val, (Dataset, DataLoader))
        #: each model reads its own examples of a dataset that draws random numbers (augmentation)
        self.draws = isinstance(self.x, Dataset) and draws_random(self.x)

    def train(self, model: nn.Module, loss: Any, idx: list[int], configs: list[dict]) -> Any:
        if isinstance(self.x, DataLoader):
            return self._loader(model, loss, self.x, "")
        if isinstance(self.x, Dataset):
            sets = self.sets or [self.x] * (max(idx) + 1)
            one = self._loader(model, loss, self._dataloader(sets[idx[0]], configs[idx[0]]["seed"], self.shuffle), "")
            if len(idx) == 1:
                return one
            one.loaders = [self._dataloader(sets[i], configs[i]["seed"], self.shuffle) for i in idx]
            return one
        return self._arrays(model, loss, self.x, self.y, self.x_per, idx, "")

    def validation(self, model: nn.Module, loss: Any, idx: list[int]) -> Any:
        if self.val is None:
            return None
        if isinstance(self.val, (Dataset, DataLoader)):
            v = self.val if isinstance(self.val, DataLoader) else self._dataloader(self.val, None, False)
            return self._loader(model, loss, v, "validation_")
        return self._arrays(model, loss, self.val[0], self.val[1], self.v_per, idx, "validation_")

    def _dataloader(self, ds: Dataset, seed: int | None, shuffle: bool) -> DataLoader:
        g = torch.Generator()  # as ``fit`` makes it for a Dataset
        if seed is not None:
            g.manual_seed(int(seed))
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, generator=g)

    @staticmethod
    def _loader(model, loss, loader, prefix):
        p0 = next(model.parameters())
        return loader_source(model, loader, loss, p0.dtype, p0.device, prefix)

    @staticmethod
    def _arrays(model, loss, xa, ya, per, idx, prefix) -> ArrayData:
        p0 = next(model.parameters())
        dtype, dev = p0.dtype, p0.device
        if per and len(idx) == 1:
            return ArrayData(*prepare_arrays(model, xa[idx[0]], ya[idx[0]], loss, dtype, dev, prefix))
        if per:
            pairs = [prepare_arrays(model, xa[i], ya[i], loss, dtype, dev, prefix) for i in idx]
            return ArrayData(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), per_model=True)
        return ArrayData(*prepare_arrays(model, xa, ya, loss, dtype, dev, prefix))
