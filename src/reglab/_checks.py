"""Argument validation used at the public boundary (scikit-learn style messages)."""

from __future__ import annotations

import math
from typing import Any


def non_negative_float(value: Any, name: str) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` naming ``name`` and the value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{name} must be a non-negative finite number; got {value!r} "
            f"of type {type(value).__name__}"
        )
    v = float(value)
    if math.isnan(v) or math.isinf(v) or v < 0:
        raise ValueError(f"{name} must be a non-negative finite number; got {name}={value!r}")
    return v


def positive_float(value: Any, name: str) -> float:
    v = non_negative_float(value, name)
    if v <= 0:
        raise ValueError(f"{name} must be > 0; got {name}={value!r}")
    return v


def open_unit_float(value: Any, name: str) -> float:
    v = non_negative_float(value, name)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1; got {name}={value!r}")
    return v


def positive_int(value: Any, name: str) -> int:
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {name}={value!r}")
    return int(value)


def integer(value: Any, name: str) -> int:
    """``value`` as an int: an integer (Python or numpy), not a bool, float or string."""
    import numpy as np

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer; got {name}={value!r} of type {type(value).__name__}")
    return int(value)


def flag(value: Any, name: str) -> bool:
    """``value``, checked to be ``True`` or ``False`` (not a string or number taken as truthy)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {name}={value!r} of type {type(value).__name__}")
    return value


def fraction(value: Any, name: str) -> float:
    """``value`` as a float in [0, 1) (a decay rate, a momentum)."""
    v = non_negative_float(value, name)
    if not v < 1.0:
        raise ValueError(f"{name} must lie in [0, 1); got {name}={value!r}")
    return v


def one_of(value: Any, name: str, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}; got {name}={value!r}")
    return value
