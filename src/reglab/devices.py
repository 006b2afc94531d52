"""Where models train: a device of the grammar

    device := "auto" | "cpu" | "cuda" | "cuda:" N

``"auto"`` is a GPU where torch sees one (``torch.cuda.is_available()``), else the CPU. ``fit``
and ``fit_many`` take one (or any torch device), as do experiment files (``[train] device``,
``reglab.experiments.devices``); a GPU that torch does not see is an error naming where it was
asked for (``resolve``). ``record`` says where a run trained.
"""

from __future__ import annotations

import platform
import re
from typing import Any

import torch

__all__ = ["DEFAULT", "DeviceError", "check", "kind", "resolve", "torch_device", "record", "cpu_name"]

DEFAULT = "cpu"
_GRAMMAR = re.compile(r"auto|cpu|cuda(:(0|[1-9]\d*))?")
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


def torch_device(device: Any, where: str = "device") -> torch.device:
    """``device`` as a ``torch.device``: a string of the grammar resolved on this machine
    (``resolve``: ``"auto"``, a GPU checked to exist), any other torch device as torch reads it."""
    if isinstance(device, str) and _GRAMMAR.fullmatch(device):
        return torch.device(resolve(device, where))
    return torch.device(device)


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
