"""What ``reglab.attach`` keeps on modules, and its public readers: the tables of parameter
regularizers and constraints and the activity state (by module), handles, name matching."""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import constraints as _constraints
from .. import regularizers as _regularizers
from .. import selectors as _selectors

#: the attribute names of what is attached to a module (in its ``__dict__``)
PARAMS = "_reglab_param_regularizers"
ACTIVITY = "_reglab_activity"
CONSTRAINTS = "_reglab_constraints"


class Handle:
    """Returned by ``regularize``/``constrain``; ``remove()`` detaches what was attached."""

    def __init__(self) -> None:
        self._undo: list[Any] = []
        self.sources: list[str] = []

    def _add(self, fn) -> None:
        self._undo.append(fn)

    def attach(self, model: nn.Module, name: str, table_name: str, obj: Any) -> nn.Module:
        """Put ``obj`` in the table ``table_name`` of the module owning parameter ``name`` (by the
        parameter's attribute name), undone by ``remove()``; returns the owner."""
        owner, attr = owner_of(model, name)
        table = owner.__dict__.setdefault(table_name, {})
        table[attr] = obj
        self._add(functools.partial(table.pop, attr, None))
        self.sources.append(name)
        return owner

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()

    def __enter__(self) -> Handle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Handle(sources={self.sources})"


def match_names(names: list[str], patterns: Mapping[str, Any], what: str,
           model: nn.Module | None = None) -> dict[str, tuple[str, Any]]:
    """name -> (pattern, value); every pattern must match, no name may match two patterns.

    ``names`` are ``model``'s parameter names (``what="parameter"``) or module names
    (``what="module"``). A pattern is a name glob or a type selector (``"@kernels"``,
    ``"@Conv*.weight"``, ``"@ReLU"``; see ``reglab.selectors``); a selector needs ``model``.
    """
    chosen: dict[str, tuple[str, Any]] = {}
    for pattern, value in patterns.items():
        if not isinstance(pattern, str):
            raise ValueError(f"{what} patterns must be strings; got {pattern!r}")
        selector = _selectors.is_selector(pattern)
        if selector:
            if model is None:
                raise ValueError(f"{what} pattern {pattern!r} is a type selector; it needs the model "
                                 "(match_names(..., model=model)); name globs do not")
            selected = set(_selectors.select(model, pattern, what))
            hits = [n for n in names if n in selected]
        else:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(repr(n) for n in names[:12]) + (" ..." if len(names) > 12 else "")
            types = f"; {_selectors.describe_types(model, what)}" if selector else ""
            raise ValueError(f"{what} pattern {pattern!r} matches no {what} name; the names are: {shown}{types}")
        for n in hits:
            if n in chosen:
                raise ValueError(
                    f"{what} {n!r} is matched by two patterns, {chosen[n][0]!r} and {pattern!r}; "
                    "make the patterns disjoint (combine regularizers with +)"
                )
            chosen[n] = (pattern, value)
    return chosen


def owner_of(model: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    mod_path, _, attr = dotted.rpartition(".")
    return (model.get_submodule(mod_path) if mod_path else model), attr


def resolve(value: Any, where: str, get: Any, what: str) -> Any:
    """``get(value)`` (a regularizers/constraints ``get``) with errors naming ``where``."""
    try:
        obj = get(value)
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    if obj is None:
        raise ValueError(f"{where}: {what} is None")
    return obj


@dataclass
class ActivityState:
    regularizer: _regularizers.Regularizer
    hook: Any = None
    total: torch.Tensor | None = None
    count: int = 0
    grad_enabled: bool = True
    read: bool = False

    def __deepcopy__(self, memo):
        """A copy of the module starts with no recorded term (a recorded term is part of a
        graph, which ``deepcopy`` cannot copy)."""
        import copy

        return ActivityState(copy.deepcopy(self.regularizer, memo), copy.deepcopy(self.hook, memo))


def param_sources(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, _regularizers.Regularizer]]:
    """(source name, owner module, attribute, regularizer) of every parameter regularizer, once per tensor."""
    seen: set[int] = set()
    for path, mod in model.named_modules():
        table = mod.__dict__.get(PARAMS)
        if not table:
            continue
        for attr, reg in table.items():
            t = getattr(mod, attr)
            if id(t) in seen:
                continue
            seen.add(id(t))
            yield (f"{path}.{attr}" if path else attr), mod, attr, reg


def activity_regularizer(module: nn.Module) -> _regularizers.Regularizer | None:
    """The activity regularizer attached to ``module``'s output, or None."""
    state = module.__dict__.get(ACTIVITY)
    return None if state is None else state.regularizer


def activity_sources(model: nn.Module) -> Iterator[tuple[str, nn.Module, ActivityState]]:
    for path, mod in model.named_modules():
        state = mod.__dict__.get(ACTIVITY)
        if state is not None:
            yield f"{path}:activity", mod, state


def constraint_sources(model: nn.Module) -> Iterator[tuple[str, nn.Module, str, _constraints.Constraint]]:
    for path, mod in model.named_modules():
        for attr, c in (mod.__dict__.get(CONSTRAINTS) or {}).items():
            yield (f"{path}.{attr}" if path else attr), mod, attr, c
