"""Where an experiment trains: its ``device`` (``[train] device`` in an experiment file or in
``study.toml``, ``--device`` on the command line, in that order of precedence from last to first;
the grammar is ``reglab.devices``'). The default is ``"cpu"``. A GPU run's identity differs from a
CPU run's (``kind`` enters the experiment's digest: the two never mix in one experiment's
results; which GPU does not), and each run's JSON records the device and its name (``record``).
Models train on the device -- ``fit_many`` moves the data there once -- and are evaluated on the
CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..devices import DeviceError, check, resolve

__all__ = ["of", "place", "ray_device"]


def of(spec: Any) -> str:
    """The device an experiment trains on (``resolve`` of its ``train.device``)."""
    return resolve(spec.train.device, f"{spec.path}: train.device")


def ray_device(value: str | None, gpus_per_task: float, where: str) -> str:
    """The device of a Ray task asking for ``gpus_per_task`` GPUs (Ray then shows the task its
    GPU as ``cuda``): ``"cuda"`` where GPUs are asked for (``value`` None, ``"auto"`` or
    ``"cuda"``), else ``"cpu"``. A task that asks for GPUs it would not use, or a GPU device
    without a GPU share (Ray hides the GPUs from such a task), is a ``DeviceError``."""
    value = check(value, where) if value is not None else None
    if gpus_per_task > 0:
        if value == "cpu":
            raise DeviceError(f"{where}: \"cpu\", but --gpus-per-task {gpus_per_task:g} asks a GPU share for every "
                              "task: drop --gpus-per-task or train on \"cuda\"")
        if value is not None and ":" in value:
            raise DeviceError(f"{where}: {value!r}: on Ray a task gets the GPU Ray gives it; say \"cuda\" or \"auto\"")
        return "cuda"
    if value not in (None, "cpu", "auto"):
        raise DeviceError(f"{where}: {value!r} on Ray needs a GPU share per task: add --gpus-per-task "
                          "(e.g. 0.25: four tasks per GPU)")
    return "cpu"


def place(specs: Sequence[Any], device: str | None = None, gpus_per_task: float | None = None) -> list[Any]:
    """The experiments with their device resolved once, before anything trains: ``device``
    (``--device``) over each file's ``train.device``, checked against this machine (``resolve``)
    or, for Ray tasks asking for ``gpus_per_task`` GPUs, against what Ray gives them
    (``ray_device``). A CPU experiment has no ``train.device`` (its identity is as it always
    was); a GPU one holds the device it trains on. A ``DeviceError`` names the file and key, or
    ``--device``."""
    out = []
    for s in specs:
        value = device if device is not None else s.train.device
        where = "--device" if device is not None else f"{s.path}: train.device"
        dev = ray_device(value, gpus_per_task, where) if gpus_per_task is not None else resolve(value, where)
        out.append(s.with_train(device=dev if dev != "cpu" else None))
    return out
