"""Where an experiment trains: its ``device`` (``[train] device`` in an experiment file or in
``study.toml``, ``--device`` on the command line, in that order of precedence from last to first).

    device := "auto" | "cpu" | "cuda" | "cuda:" N

``"auto"`` is a GPU where torch sees one (``torch.cuda.is_available()``), else the CPU; the
default is ``"cpu"``. A GPU run's identity differs from a CPU run's (``kind`` enters the
experiment's digest: the two never mix in one experiment's results; which GPU does not), and
each run's JSON records the device and its name (``record``). Models train on the device --
``fit_many`` moves the data there once -- and are evaluated on the CPU.
"""

from __future__ import annotations

import dataclasses
import platform
import re
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["DEFAULT", "DeviceError", "check", "kind", "resolve", "of", "place", "record", "ray_device", "cpu_name"]

DEFAULT = "cpu"
_GRAMMAR = re.compile(r"auto|cpu|cuda(:\d+)?")
_WORDS = '"auto", "cpu", "cuda" or "cuda:N"'


class DeviceError(ValueError):
    """A device that is not one of the grammar's or that this machine does not have."""


def check(value: Any, where: str) -> str:
    """``value`` if it is a device of the grammar, else a ``DeviceError`` naming ``where``."""
    if not isinstance(value, str) or not _GRAMMAR.fullmatch(value):
        raise DeviceError(f"{where}: expected {_WORDS}; got {value!r}")
    return value


def kind(value: str | None) -> str:
    """``"cpu"`` or ``"cuda"``: what a run's identity says of its device (``"auto"`` as this
    machine resolves it)."""
    if value is None or value == "cpu":
        return "cpu"
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda"


def resolve(value: str | None, where: str) -> str:
    """The device to train on, ``"cpu"`` or ``"cuda:N"``, checked against this machine: a
    ``DeviceError`` naming ``where`` for a GPU torch does not see."""
    value = check(DEFAULT if value is None else value, where)
    if kind(value) == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise DeviceError(f"{where}: {value!r}, but torch sees no CUDA GPU on this machine "
                          f"(torch.cuda.is_available() is False, torch {torch.__version__}); use \"cpu\" or \"auto\"")
    n = torch.cuda.device_count()
    index = int(value.split(":")[1]) if ":" in value else torch.cuda.current_device()
    if index >= n:
        raise DeviceError(f"{where}: {value!r}, but this machine has {n} GPU(s): cuda:0 to cuda:{n - 1}")
    return f"cuda:{index}"


def of(spec: Any) -> str:
    """The device an experiment trains on (``resolve`` of its ``train.device``)."""
    return resolve(spec.config["train"].get("device"), f"{spec.path}: train.device")


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
        value = device if device is not None else s.config["train"].get("device")
        where = "--device" if device is not None else f"{s.path}: train.device"
        dev = ray_device(value, gpus_per_task, where) if gpus_per_task is not None else resolve(value, where)
        train = {k: v for k, v in s.config["train"].items() if k != "device"}
        if dev != "cpu":
            train["device"] = dev
        out.append(dataclasses.replace(s, config={**s.config, "train": train}))
    return out


def record(device: torch.device | str) -> dict[str, str]:
    """What a run's JSON says of where it trained: ``{"device": "cuda:0", "device_name": "NVIDIA
    H100 80GB HBM3"}`` (on a CPU, the processor's name)."""
    device = torch.device(device)
    if device.type == "cuda":
        return {"device": str(device), "device_name": torch.cuda.get_device_name(device)}
    return {"device": "cpu", "device_name": cpu_name()}


def cpu_name() -> str:
    """The processor's name (``/proc/cpuinfo``'s model name where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"
