"""What training one experiment's group needs, resolved once per experiment (``plan_of``).

A ``Plan`` holds what seed 0's splits say (the task, the input shape, the output width, the class
names), the loss, the metrics for the task, and the engine the one chooser
(``reglab.engines.choose_engine``) picks for a group of the experiment's models -- decided on a
model built once, as seed 0's, and put through every check that can fail before training
(``prepare.probe_model``). Training reads these from the plan (``Plan.fit``), so nothing about the
experiment is worked out again, and ``fit_many`` trains on the plan's engine instead of choosing
its own, wherever the choice holds (the same device, machine and fused-kernel availability;
elsewhere, a Ray node, ``fit_many`` chooses). ``fit_group`` is the one ``fit_many`` call of an
experiment's models (a regularization path's too, whose grid changes the strengths the plan
probed: there ``fit_many`` chooses). A plan is plain data: it crosses to a helper process or a Ray
task pickled as it is.

Splits are read through ``Plan.splits``; the last ``KEEP_SPLITS`` read are kept by what they are
made from (the data and split tables, the input files' hashes, the seed that draws them), so seed
0's, read for the checks, serve its group's training in this process, and the experiments on the
same data (its baseline, the other grid points) read each seed once. Each caller gets its own copy
of the arrays (a forward pass that writes into its input changes no other group's data), as when
each read its own. ``runner.execute`` drops them when it ends (``forget_splits``)."""

from __future__ import annotations

import collections
import dataclasses
import json
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..engines.choose import EngineChoice, choose_engine
from ..training.sources import draws_random
from . import devices as _devices
from .build import builder, early_stopping, splits_of, training_data
from .data import ARRAYS, Splits
from .devices import DeviceError
from .prepare import probe_model
from .spec import ExperimentSpec

__all__ = ["Plan", "plan_of", "prepare", "forget_splits", "fit_group", "group_key"]

#: splits kept (``Plan.splits``): the last few read, not every seed's of a study
KEEP_SPLITS = 3

_splits: collections.OrderedDict[str, Splits] = collections.OrderedDict()


@dataclass(frozen=True)
class Plan:
    """One experiment (``spec``, a grid point) resolved for training. ``engine`` trains a group
    of two or more of its models, ``alone`` one model; both hold where ``chosen_on`` says
    (``_where``: the device, the machine, whether a fused kernel can be built there)."""

    spec: ExperimentSpec
    task: str
    input_shape: tuple[int, ...]
    n_outputs: int
    classes: list[str] | None
    validation_is_test: bool
    engine: EngineChoice
    alone: EngineChoice
    chosen_on: str

    @property
    def loss_name(self) -> str:
        return self.spec.train.loss.name(self.task)

    @property
    def group_rule(self) -> str:
        """How a unit's numbers depend on the ``fit_many`` group it trains in (the rule of the
        plan's engine, ``EngineChoice.group_rule``) --

        - ``"any"``: not at all -- the Dense-stack engines, alone or in a group of any size (at 1
          and 2 threads alike);
        - ``"threads"``: not on the group, but on the thread count, as its kernels' own numbers
          do -- the per-model loop, each model as ``fit`` trains it alone;
        - ``"pairs"``: at a given thread count, the same in every group of two or more -- the vmap
          engine, whose optimizer steps each model's tensors apart and whose dropout masks come
          from each model's own generator; one model alone trains on the loop, whose kernels (a
          convolution, a batch norm) round differently from their batched forms.

        Each tested at 1 and 2 threads."""
        return self.engine.group_rule

    def splits(self, seed: int) -> Splits:
        """The splits of ``seed`` (the same for every seed where ``[split] resample = false``)."""
        return _splits_of(self.spec, seed)

    def builder(self, spec: ExperimentSpec | None = None) -> Callable[[], Any]:
        """``build() -> model`` (or ``(model, loss)``) of ``spec`` (default: the plan's), for
        seed 0's input shape and output width."""
        return builder(spec or self.spec, self.input_shape, self.n_outputs)

    def engine_for(self, n_models: int, device: str) -> EngineChoice | str:
        """The plan's engine for a group of ``n_models`` on ``device``; ``"auto"`` (``fit_many``
        chooses) where the choice may not hold: another device (a Ray driver without the GPU its
        tasks train on), another machine, or one where a fused kernel is (not) to be had."""
        if _where(device) != self.chosen_on:
            return "auto"
        return self.engine if n_models >= 2 else self.alone

    def fit(self, build: Callable[..., Any], seeds: Sequence[int], grid: Sequence[Mapping[str, Any]] | None,
            data: Sequence[Splits], shared: bool, progress: bool = False, threads: int | None = None) -> Any:
        """``fit_group`` on the plan's engine."""
        n = len(seeds) * len(grid or [None])
        return fit_group(self.spec, self.task, build, seeds, grid, data, shared, progress, threads,
                         engine=self.engine_for(n, _devices.of(self.spec)))


def fit_group(spec: ExperimentSpec, task: str, build: Callable[..., Any], seeds: Sequence[int],
              grid: Sequence[Mapping[str, Any]] | None, data: Sequence[Splits], shared: bool, progress: bool = False,
              threads: int | None = None, engine: EngineChoice | str = "auto") -> Any:
    """``fit_many`` of ``build`` over ``product(seeds, grid)`` with the experiment's loss for
    ``task``, optimizer, schedule, early stopping and device, logging accuracy for a classifier,
    on ``data`` (one ``Splits`` per model; ``shared``: the first serves every model)."""
    from ..vectorized.fit_many import fit_many

    tr = spec.train
    x, y = training_data(list(data), shared)
    val = ((data[0].x_val, data[0].y_val) if shared else ([d.x_val for d in data], [d.y_val for d in data]))
    return fit_many(build, x, y, seeds=list(seeds), grid=grid, loss=tr.loss.for_fit(task), optimizer=tr.optimizer,
                    epochs=tr.epochs, batch_size=tr.batch_size, validation_data=val, callbacks=early_stopping(spec),
                    progress=progress, threads=threads, device=_devices.of(spec),
                    metrics=("accuracy",) if task != "regression" else (), engine=engine)


def group_key(spec: ExperimentSpec) -> str:
    """What names a grid point in a run: its digest and its name."""
    return spec.digest() + "/" + spec.name


def plan_of(spec: ExperimentSpec) -> Plan:
    """The experiment's plan: its model built as seed 0's and checked (``probe_model``; a
    ``ConfigError`` names file and key), the engine chosen on it. It builds a model, drawing
    from the global random generator: make plans in the thread that trains, before training."""
    from .data_tables import DataError
    from .schema import ConfigError

    try:
        sp = _splits_of(spec, 0)
    except (DataError, ValueError) as e:
        raise ConfigError(str(e)) from None
    model, loss = probe_model(spec, sp)
    try:
        device = _devices.of(spec)
    except DeviceError:  # not on this machine (a Ray driver): chosen on the CPU, for the rule
        device = "cpu"
    engine, alone = _choices(spec, sp, model.to(device), loss)
    return Plan(spec, sp.task, sp.input_shape, sp.n_outputs, sp.classes, sp.validation_is_test, engine, alone,
                _where(device))


def prepare(specs: Iterable[ExperimentSpec]) -> dict[str, Plan]:
    """Everything that can fail before training, for every experiment: its plan (``plan_of``,
    once per grid point, by ``group_key``) -- the data (files, shapes, NaN, labels), the builder,
    the ``[regularize]`` patterns, the model output against the loss, the analysis layers.
    Raises ``ConfigError`` naming file and key."""
    plans: dict[str, Plan] = {}
    for s in specs:
        if group_key(s) not in plans:
            plans[group_key(s)] = plan_of(s)
    return plans


def forget_splits() -> None:
    """Drop the splits kept (a run is over: they would only hold memory)."""
    _splits.clear()


def _where(device: str) -> str:
    """What an engine choice depends on besides the model and data: the device, the machine,
    and whether a fused kernel can be built there (``REGLAB_FUSED``, a compiler)."""
    from ..engines.fused import unavailable

    return f"{device} on {socket.gethostname()}, fused kernel: {unavailable() or 'available'}"


def _choices(spec: ExperimentSpec, sp: Splits, model: torch.nn.Module, loss: Any) -> tuple[EngineChoice, EngineChoice]:
    """``choose_engine``'s engine for a group of two or more of the experiment's models, and for
    one, probed on seed 0's first examples as the model takes them."""
    from ..training.engine import ArrayData
    from ..training.fit import prepare_arrays

    p0 = next(model.parameters())
    data = ArrayData(*prepare_arrays(model, sp.x_train[:2], sp.y_train[:2], loss, p0.dtype, p0.device))
    sets = sp.training()  # examples read one by one: each model reads (and augments) its own

    def choice(n: int) -> EngineChoice:
        return choose_engine(model, loss, data.probe_batch(), n_models=n, optimizer=spec.train.optimizer,
                             arrays=sets is None, data_draws=sets is not None and draws_random(sets))

    return choice(2), choice(1)


def _splits_of(spec: ExperimentSpec, seed: int) -> Splits:
    """``build.splits_of``, kept for the next ``KEEP_SPLITS`` reads of other splits; a copy of
    its arrays for each caller."""
    drawn = seed if spec.split.resample else 0
    key = json.dumps([spec.data.table, spec.split.table, str(spec.base), spec.inputs, spec.train.loss.regression,
                      drawn], sort_keys=True, default=str)
    if key in _splits:
        _splits.move_to_end(key)
    else:
        _splits[key] = splits_of(spec, seed)
        while len(_splits) > KEEP_SPLITS:
            _splits.popitem(last=False)
    sp = _splits[key]
    return dataclasses.replace(sp, **{k: getattr(sp, k).copy() for k in ARRAYS})
