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

from .. import _checks
from .. import losses as _losses
from .. import optimizers as _optimizers
from .. import threads as _threads
from ..training.callbacks import EarlyStopping
from ..attach import refresh_constraints
from ..training.engine import ArrayData, SingleStack, run
from ..training.fit import check_metrics, prepare_arrays
from ..training.history import History
from .dense import DenseStack, NotTransformable, takes
from .stack import VmapStack

__all__ = ["fit_many", "ManyResult"]

CPU_CHUNK = 512


@dataclass
class ManyResult:
    """``histories[i]``, ``models[i]`` and ``configs[i]`` (``{"seed": s, **grid_point}``) of model i;
    ``failed`` maps model index -> where it diverged (its history and weights stop there)."""

    histories: list[History]
    models: list[nn.Module]
    configs: list[dict[str, Any]]
    failed: dict[int, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False
    chunks: int = 1
    #: "dense" (``reglab.vectorized.dense``), "vmap" or "single" (autograd, one model)
    engine: str = "dense"
    #: torch threads the models trained with (the most over chunks; ``reglab.threads``)
    threads: int = 1


def _per_model(a: Any, n_models: int, name: str) -> tuple[Any, bool]:
    if isinstance(a, (list, tuple)) and len(a) == n_models and all(
            hasattr(v, "shape") for v in a):
        shapes = {tuple(np.shape(v)) for v in a}
        if len(shapes) != 1:
            raise ValueError(f"{name}: the per-model arrays must have one shape; got {sorted(shapes)}")
        return a, True
    return a, False


def _estimate_bytes(model: nn.Module, batch_size: int, n_features: int) -> int:
    n_params = sum(p.numel() for p in model.parameters())
    itemsize = next(model.parameters()).element_size()
    widest = max((m.out_features for m in model.modules() if isinstance(m, nn.Linear)), default=n_features)
    n_layers = max(1, sum(1 for m in model.modules() if len(list(m.children())) == 0))
    # weights, grads, 2 optimizer moments, a best-weights copy, a pre-step copy; activations of a batch
    return itemsize * (6 * n_params + 4 * batch_size * widest * n_layers)


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


def _generator(state: torch.Tensor) -> torch.Generator:
    g = torch.Generator()
    g.set_state(state)
    return g


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
) -> ManyResult:
    """Train ``len(seeds) * len(grid)`` models of one architecture together.

    Model i, for the pair ``(seed_i, grid_i)`` in ``itertools.product(seeds, grid)``, is
    ``build(**grid_i)`` called right after ``torch.manual_seed(seed_i)`` and trained with
    ``seed=seed_i`` -- its history equals ``reglab.fit`` on that model (tested): bit for bit on the
    Dense-stack engine; on the vmap path (any other module) with the same shuffles and dropout
    masks (CPU), up to the rounding of batched kernels, and on CPU bit for bit in any group of two
    or more. ``build`` may
    return ``(model, loss)`` (e.g. a ``RegularizedLoss`` bound to the model). Regularizer strengths
    are read from each built model and stacked, so a grid over strengths trains in one run.

    ``x, y`` and ``validation_data`` are shared arrays, or lists with one array per model (same
    shapes). ``optimizer`` is a Keras name/config (an instance is bound to one model).
    ``callbacks`` may hold one ``EarlyStopping``, applied per model (on the Dense-stack engine
    stopped models leave the stack once a quarter of it has stopped, and then cost nothing more). A model whose objective
    becomes NaN/inf is marked failed (``ManyResult.failed``) and frozen; the others go on.
    ``memory_budget`` (bytes) splits M into chunks trained one after another (same results); on
    CPU chunks also hold at most ``CPU_CHUNK`` (512) models, the measured sweet spot (``None``: no chunking).
    ``threads``: torch's intra-op threads (restored after); None: the ``reglab.threads`` rule for
    the chunk's work per step.
    """
    grid = [dict(g) for g in (grid or [{}])]
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    if isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError("fit_many needs an optimizer name or config (an optimizer instance is bound to one model)")
    epochs = _checks.positive_int(epochs, "epochs")
    batch_size = _checks.positive_int(batch_size, "batch_size")
    metrics = check_metrics(metrics)
    _threads.check(threads)
    stoppers = [c for c in callbacks if isinstance(c, EarlyStopping)]
    if len(stoppers) != len(list(callbacks)) or len(stoppers) > 1:
        raise ValueError("fit_many accepts only one EarlyStopping callback")
    configs = [{"seed": s, **g} for s, g in itertools.product(seeds, grid)]
    M = len(configs)
    x, x_per = _per_model(x, M, "x")
    y, _ = _per_model(y, M, "y")
    if validation_data is not None:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be (x_val, y_val)")
        xv, v_per = _per_model(validation_data[0], M, "validation x")
        yv, _ = _per_model(validation_data[1], M, "validation y")

    rngs: dict[int, torch.Tensor] = {}

    def make(i: int):
        torch.manual_seed(configs[i]["seed"])
        out = build(**grid[i % len(grid)])
        model, lo = (out if isinstance(out, tuple) else (out, loss))
        if lo is None:
            raise ValueError("give loss=..., or let build return (model, loss)")
        if device is not None:
            model.to(device)
        rngs[i] = torch.get_rng_state()  # where a model trained alone draws its dropout masks from
        return model, _losses.get(lo)

    first, first_loss = make(0)
    per_model_bytes = _estimate_bytes(first, batch_size, int(np.shape(x[0] if x_per else x)[-1]))
    chunk = M if not memory_budget else max(1, min(M, int(memory_budget // max(per_model_bytes, 1))))
    if memory_budget and next(first.parameters()).device.type == "cpu":
        # measured (benchmarks/RESULTS.md): on CPU a 32x5 MLP trains fastest per model at M ~ 512 (2 threads);
        # beyond that the stacked tensors outgrow the caches and elementwise passes slow down
        chunk = min(chunk, CPU_CHUNK)
    n_chunks = math.ceil(M / chunk)
    if M > 1 and not takes(first, first_loss, len(np.shape(x[0] if x_per else x)) - 1):
        # the vmap path: chunks of two models at least (even past the memory budget), as a lone
        # model trains on other kernels than a stacked one (``reglab.vectorized.stack``)
        n_chunks = min(n_chunks, M // 2)
    from tqdm.auto import tqdm
    import sys

    bar = tqdm(total=M, desc="fit_many", unit="model", disable=not progress or not sys.stderr.isatty())
    result = ManyResult([], [], configs, chunks=n_chunks)
    bounds = [round(k * M / n_chunks) for k in range(n_chunks + 1)]  # chunks of near-equal size
    for c0, c1 in zip(bounds, bounds[1:]):
        idx = list(range(c0, c1))
        built = [(first, first_loss) if i == 0 else make(i) for i in idx]
        models = [b[0] for b in built]
        losses = [b[1] for b in built]
        _check_one_architecture(first, models, [configs[i] for i in idx], configs[0])
        p0 = next(models[0].parameters())
        dtype, dev = p0.dtype, p0.device

        single = len(idx) == 1  # one model: the plain fit path (same numbers, less overhead than vmap)

        def arrays(xa, ya, per, prefix):
            if per and single:
                return ArrayData(*prepare_arrays(models[0], xa[idx[0]], ya[idx[0]], losses[0], dtype, dev, prefix))
            if per:
                pairs = [prepare_arrays(models[0], xa[i], ya[i], losses[0], dtype, dev, prefix) for i in idx]
                return ArrayData(torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs]), per_model=True)
            xt, yt = prepare_arrays(models[0], xa, ya, losses[0], dtype, dev, prefix)
            return ArrayData(xt, yt)

        train = arrays(x, y, x_per, "")
        val = arrays(xv, yv, v_per, "validation_") if validation_data is not None else None
        x_dim = train.x.dim() - (1 if train.per_model else 0)
        y_dim = train.y.dim() - (1 if train.per_model else 0)
        n_threads = _threads.decide(threads, models[0], train.example(), batch_size, len(idx))
        result.threads = max(result.threads, n_threads) if c0 else n_threads
        with _threads.using(n_threads):
            with_acc = "accuracy" in metrics and losses[0].task is not None
            stack = None
            if takes(models[0], losses[0], x_dim - 1):
                try:
                    stack = DenseStack(models, losses, with_acc, x_dim, y_dim)
                    result.engine = "dense"
                    if not single and dev.type == "cpu":
                        stack.dropout_generators = [_generator(rngs[i]) for i in idx]
                except NotTransformable:
                    if not single:  # vmap would fail on it too; one model can use autograd
                        raise
            if stack is None and single:
                refresh_constraints(models[0])
                stack = SingleStack(models[0], losses[0], with_acc)
                result.engine = "single"
            elif stack is None:
                stack = VmapStack(models, losses, with_acc, x_dim, y_dim)
                result.engine = "vmap"
                if dev.type == "cpu":
                    stack.dropout_generators = [_generator(rngs[i]) for i in idx]
            opt = _optimizers.get(optimizer, getattr(stack, "optimized", stack.params))
            es = None
            if stoppers:
                es = EarlyStopping(**{k: getattr(stoppers[0], k) for k in ("monitor", "patience", "mode", "baseline",
                                                                         "restore_best_weights", "start_from_epoch")},
                                   min_delta=abs(stoppers[0].min_delta))
            res = run(stack, opt, train, val, epochs=epochs, batch_size=batch_size, shuffle=shuffle,
                      seeds=[configs[i]["seed"] for i in idx], early_stopping=es, progress=False, desc="fit_many")
            stack = res.stack  # the stack that trained last (the engine drops stopped models' rows)
            if hasattr(stack, "write_back"):
                stack.write_back()
        result.histories.extend(res.histories)
        result.models.extend(models)
        result.failed.update({idx[k]: v for k, v in res.failed.items()})
        result.interrupted |= res.interrupted
        bar.update(len(idx))
        if res.interrupted:
            break
    bar.close()
    return result
