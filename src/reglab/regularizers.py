"""Regularizers: penalties on a tensor, with the names, defaults and math of Keras 3.

A regularizer is a small callable ``r(x) -> scalar tensor``. Two regularizers add (``r1 + r2``),
a number scales one (``0.5 * r``), and each serializes to a JSON-able config. Strength values are
kept as Python floats (Keras stores them as float32; the difference is below 1e-7 relative).

Every built-in separates its *math* (``compute(x, **hparams)``) from its *strengths*
(``hparams()``), so that the many-model engine can pass one strength per model while using the
same formula. ``value_and_grad(x, hparams)`` gives the penalty of each of M models and its
derivative in one call (the hand-written backward pass of ``reglab.vectorized.dense`` uses it);
the built-ins write the derivative next to the value (tested against autograd), any other
regularizer gets it from ``torch.func``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from . import _checks
from ._lanes import whole_vectors
from ._layout import to_keras

__all__ = [
    "Regularizer",
    "ElementwiseRegularizer",
    "L1",
    "L2",
    "L1L2",
    "Lp",
    "OrthogonalRegularizer",
    "KLSparsity",
    "FunctionRegularizer",
    "from_function",
    "register_regularizer",
    "get",
    "serialize",
    "deserialize",
]

_REGISTRY: dict[str, type[Regularizer]] = {}


def _snake(name: str) -> str:
    """Keras's ``to_snake_case``: ``"OrthogonalRegularizer" -> "orthogonal_regularizer"``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def register_regularizer(cls: type[Regularizer]) -> type[Regularizer]:
    """Class decorator: make a custom regularizer resolvable by ``get``/``deserialize``.

    Registers the class name and its snake-case alias (as Keras does).
    """
    _REGISTRY[cls.__name__] = cls
    _REGISTRY.setdefault(_snake(cls.__name__), cls)
    return cls


class Regularizer:
    """Base class. Subclass and implement ``__call__(x)`` (a custom regularizer), or, for a
    regularizer whose strengths the many-model engine can vary per model, implement
    ``compute(x, **hparams)`` and ``hparams()``.

    Keras equivalent: ``keras.regularizers.Regularizer``.
    """

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.compute(x, **self.hparams())

    def compute(self, x: torch.Tensor, **hparams: Any) -> torch.Tensor:
        """The penalty of ``x`` with the given strengths (which may be tensors)."""
        if type(self).__call__ is Regularizer.__call__:
            raise NotImplementedError(
                f"{type(self).__name__} must implement __call__(x) or compute(x, **hparams)"
            )
        return self(x)

    def hparams(self) -> dict[str, float]:
        """The numeric strengths that ``compute`` takes, by name (empty for custom ones)."""
        return {}

    def with_hparams(self, **values: float) -> Regularizer:
        """A copy with some strengths (keys of ``hparams()``) replaced -- how a sweep or a
        regularization path sets a strength, whatever the regularizer calls it."""
        bad = set(values) - set(self.hparams())
        if bad:
            raise ValueError(f"{type(self).__name__} has no strength(s) {sorted(bad)}; its strengths are "
                             f"{sorted(self.hparams())}")
        return type(self).from_config({**self.get_config(), **{k: float(v) for k, v in values.items()}})

    #: True where ``value_and_grad`` is written by hand (no ``torch.func`` needed)
    native_grad = False
    #: True where value and derivative are linear in the strength (an engine may then fold a
    #: factor, such as Keras's 1 / batch size for activity penalties, into the strength)
    linear_in_strength = False

    def value_and_grad(self, x: torch.Tensor, hparams: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The penalties of M models and their derivatives, in one call.

        ``x`` has shape ``(M, *shape)``: model m's tensor is ``x[m]``; each strength in ``hparams``
        (the keys of ``hparams()``) is an ``(M,)`` tensor. Returns ``(values (M,), d values / d x)``,
        the derivative with ``x``'s shape. This default differentiates ``compute`` with
        ``torch.func`` (vmap of grad); the built-ins override it with the closed form.
        """
        from torch.func import grad_and_value, vmap

        if hparams:
            def one(t, hp):
                return self.compute(t, **hp)
        else:
            def one(t, hp):
                return self(t)
        g, v = vmap(grad_and_value(one))(x, dict(hparams))
        return v, g

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(
            f"{type(self).__name__} does not implement get_config(), so it cannot be serialized"
        )

    def structure(self) -> Any:
        """What must agree between regularizers stacked over models: everything but the
        strengths (``hparams``). A composite gives its terms' structures."""
        try:
            cfg = self.get_config()
        except NotImplementedError:
            return (type(self).__name__, id(type(self)))
        hp = self.hparams()
        return (type(self).__name__, tuple(sorted((k, repr(v)) for k, v in cfg.items() if k not in hp)))

    def elementwise_sum(self, hp: Mapping[str, Any]) -> list[tuple[Any, Callable, Callable, Any]] | None:
        """This regularizer as a sum of element-wise terms ``[(key, f, f', strength)]`` with
        strengths ``hp`` (per-model tensors), or None where it is not one. Terms with one key
        share ``f`` and ``f'``. A composite gives its terms' (the one walker of ``Sum``/``Scaled``)."""
        return None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Regularizer:
        return cls(**config)

    def __add__(self, other: Regularizer) -> Regularizer:
        if not isinstance(other, Regularizer):
            return NotImplemented
        return Sum(self, other)

    def __mul__(self, factor: float) -> Regularizer:
        if isinstance(factor, bool) or not isinstance(factor, (int, float)):
            return NotImplemented
        return Scaled(factor, self)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        try:
            cfg = self.get_config()
        except NotImplementedError:
            return f"{type(self).__name__}()"
        args = ", ".join(f"{k}={v!r}" for k, v in cfg.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        if type(self) is not type(other):
            return NotImplemented
        try:
            return self.get_config() == other.get_config()  # type: ignore[union-attr]
        except NotImplementedError:
            return self is other

    __hash__ = object.__hash__


def _per_model(s: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """An ``(M,)`` strength shaped to broadcast against ``x`` of shape ``(M, ...)``."""
    return s.reshape((-1,) + (1,) * (x.dim() - 1))


def _sum_per_model(t: torch.Tensor) -> torch.Tensor:
    """Each model's sum, accumulated in float64 and rounded to ``t``'s dtype: a value that does
    not depend on how many models share the stack (a float32 sum's order does)."""
    return t.reshape(t.shape[0], -1).sum(1, dtype=torch.float64).to(t.dtype)


class ElementwiseRegularizer(Regularizer):
    """``sum_k s_k * sum_i f_k(x_i)``: a sum of element-wise terms, each with its own strength.

    Subclasses give ``elementwise_terms()``: ``(strength name, f, f')`` triples. ``compute`` and
    ``value_and_grad`` are both derived from them, so each formula is written once.
    """

    native_grad = True

    def elementwise_terms(self) -> list[tuple[str, Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]]:
        raise NotImplementedError

    def elementwise_sum(self, hp):
        out = []
        for name, f, df in self.elementwise_terms():
            local = "<locals>" in getattr(f, "__qualname__", "<locals>")
            key = (f, df) if not local else (type(self), repr(self.get_config()), name)
            out.append((key, f, df, hp[name]))
        return out

    def compute(self, x, **hp):
        total = None
        for name, f, _ in self.elementwise_terms():
            v = hp[name] * f(x).sum()
            total = v if total is None else total + v
        return total

    def value_and_grad(self, x, hparams):
        value = grad = None
        for name, f, df in self.elementwise_terms():
            s = hparams[name]
            v = s * _sum_per_model(f(x))
            g = _per_model(s, x) * df(x)
            value = v if value is None else value + v
            grad = g if grad is None else grad + g
        return value, grad


def _abs(x):
    return x.abs()


def _sign(x):
    return torch.sign(x)  # autograd's derivative of |x| (0 at 0)


def _square(x):
    return torch.mul(x, x)  # the bits of x.square() (pow by 2 is x * x in ATen), without pow's dispatch


# What engines may use without calling these functions (``reglab.vectorized.penalties``):
_abs.identity_on_nonnegative = True  # |x| = x where x >= 0 (a relu's or sigmoid's output)
_sign.constant_on_positive = 1.0  # sign(x) = 1 where x > 0
_square.is_square = True  # f(x) = x * x: an accumulation may be one addcmul


def _twice(x):
    return 2.0 * x


_twice.linear_coefficient = 2.0  # f'(x) = 2 x: engines may fold the 2 into a strength map

@register_regularizer
class L1(ElementwiseRegularizer):
    """``l1 * sum(|x|)``. Keras: ``keras.regularizers.L1(l1=0.01)``."""

    def __init__(self, l1: float = 0.01):
        self.l1 = _checks.non_negative_float(0.01 if l1 is None else l1, "l1")

    def elementwise_terms(self):
        return [("l1", _abs, _sign)]

    def hparams(self):
        return {"l1": self.l1}

    def get_config(self):
        return {"l1": self.l1}


@register_regularizer
class L2(ElementwiseRegularizer):
    """``l2 * sum(x**2)``. Keras: ``keras.regularizers.L2(l2=0.01)`` (no factor 1/2)."""

    def __init__(self, l2: float = 0.01):
        self.l2 = _checks.non_negative_float(0.01 if l2 is None else l2, "l2")

    def elementwise_terms(self):
        return [("l2", _square, _twice)]

    def hparams(self):
        return {"l2": self.l2}

    def get_config(self):
        return {"l2": self.l2}


@register_regularizer
class L1L2(ElementwiseRegularizer):
    """``l1 * sum(|x|) + l2 * sum(x**2)``. Keras: ``keras.regularizers.L1L2(l1=0.0, l2=0.0)``.

    Both defaults are 0, so ``L1L2(0.001)`` is pure L1 with ``l1=0.001`` -- exactly as in Keras.
    A Keras program's "L1L2(0.001)" layers are therefore L1 layers.
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1 = _checks.non_negative_float(0.0 if l1 is None else l1, "l1")
        self.l2 = _checks.non_negative_float(0.0 if l2 is None else l2, "l2")

    def elementwise_terms(self):
        # Keras skips a zero term; adding 0 * sum is the same number and keeps one graph.
        return [("l1", _abs, _sign), ("l2", _square, _twice)]

    def hparams(self):
        return {"l1": self.l1, "l2": self.l2}

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


@register_regularizer
class Lp(ElementwiseRegularizer):
    """``factor * sum(|x|**p)`` for ``p > 0`` (not in Keras; a custom "L3" is ``Lp(3, 0.01)``)."""

    def __init__(self, p: float = 2.0, factor: float = 0.01):
        self.p = _checks.positive_float(p, "p")
        self.factor = _checks.non_negative_float(factor, "factor")

    def elementwise_terms(self):
        p = self.p

        def f(x):
            return x.abs().pow(p)

        def df(x):  # p |x|^(p-1) sign(x); same-bits pow wherever x sits (see reglab._lanes)
            return p * whole_vectors(lambda a: a.pow(p - 1.0), x.abs()) * torch.sign(x)

        return [("factor", f, df)]

    def hparams(self):
        return {"factor": self.factor}

    def get_config(self):
        return {"p": self.p, "factor": self.factor}


@register_regularizer
class OrthogonalRegularizer(Regularizer):
    """Mean absolute cosine between rows (or columns) of a Keras-layout kernel.

    On the Keras view ``K`` of the weight (see ``reglab._layout``; for a Linear weight
    ``K = W.T`` of shape ``(in, out)``): ``mode="rows"`` normalizes the rows of ``K`` and takes
    ``P = K Kᵀ``; ``mode="columns"`` normalizes the columns and takes ``P = Kᵀ K``; then::

        factor * 0.5 * sum(|P - diag(P)|) / (n (n - 1) / 2)

    with ``n`` the size of ``P``. Normalization is ``v * min(1/||v||, 1e7)`` as in Keras.
    Rank-2 inputs only. Keras: ``keras.regularizers.OrthogonalRegularizer(factor=0.01, mode="rows")``.
    """

    def __init__(self, factor: float = 0.01, mode: str = "rows"):
        self.factor = _checks.non_negative_float(factor, "factor")
        self.mode = _checks.one_of(mode, "mode", ("rows", "columns"))

    def compute(self, x, factor):
        if x.dim() != 2:
            raise ValueError(
                f"OrthogonalRegularizer takes rank-2 tensors; got shape {tuple(x.shape)}"
            )
        k = to_keras(x)
        if self.mode == "columns":
            k = k.transpose(0, 1)
        inv = torch.rsqrt(k.square().sum(dim=1, keepdim=True)).clamp(max=1e7)
        k = k * inv
        prod = k @ k.transpose(0, 1)
        n = prod.shape[0]
        off = prod * (1.0 - torch.eye(n, dtype=prod.dtype, device=prod.device))
        pairs = n * (n - 1.0) / 2.0
        return factor * 0.5 * off.abs().sum() / pairs

    def hparams(self):
        return {"factor": self.factor}

    def get_config(self):
        return {"factor": self.factor, "mode": self.mode}


@register_regularizer
class KLSparsity(Regularizer):
    """Sparsity of units through the Bernoulli KL divergence (sparse autoencoders).

    For activations ``q`` of shape ``(batch, units, ...)``::

        rho_hat_j = clip(mean_i q_ij, 1e-6, 0.99999)
        strength * sum_j [rho log(rho / rho_hat_j) + (1 - rho) log((1 - rho) / (1 - rho_hat_j))]

    As an activity regularizer it is, like every activity penalty, then divided by the batch size
    (Keras scaling), which is what a Keras program with this regularizer does.
    """

    linear_in_strength = True

    def __init__(self, rho: float = 0.05, strength: float = 0.1):
        self.rho = _checks.open_unit_float(rho, "rho")
        self.strength = _checks.non_negative_float(strength, "strength")

    native_grad = True
    _LO, _HI = 1e-6, 0.99999

    def _kl(self, rho_hat):
        rho = self.rho
        return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))

    def _dkl(self, rho_hat):
        rho = self.rho
        return -rho / rho_hat + (1 - rho) / (1 - rho_hat)

    def compute(self, x, strength):
        rho_hat = x.mean(dim=0).clamp(self._LO, self._HI)
        return strength * self._kl(rho_hat).sum()

    def value_and_grad(self, x, hparams):
        s = hparams["strength"]
        mean = x.mean(dim=1)  # (M, units, ...): each model's batch mean
        rho_hat = mean.clamp(self._LO, self._HI)
        value = s * _sum_per_model(self._kl(rho_hat))
        inside = (mean >= self._LO) & (mean <= self._HI)  # the clip passes no gradient outside
        d = torch.where(inside, self._dkl(rho_hat), 0.0) * _per_model(s, mean) / x.shape[1]
        return value, d.unsqueeze(1).expand_as(x)

    def hparams(self):
        return {"strength": self.strength}

    def get_config(self):
        return {"rho": self.rho, "strength": self.strength}


def _split(hparams: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    n = len(prefix)
    return {k[n:]: v for k, v in hparams.items() if k.startswith(prefix)}


class Sum(Regularizer):
    """``r1(x) + r2(x) + ...``, made by ``r1 + r2``."""

    def __init__(self, *terms: Regularizer):
        flat: list[Regularizer] = []
        for t in terms:
            if not isinstance(t, Regularizer):
                raise ValueError(f"Sum terms must be Regularizers; got {t!r}")
            flat.extend(t.terms if isinstance(t, Sum) else [t])
        self.terms = flat

    def compute(self, x, **hp):
        total = None
        for i, t in enumerate(self.terms):
            v = t.compute(x, **_split(hp, f"{i}/"))
            total = v if total is None else total + v
        return total

    def hparams(self):
        return {f"{i}/{k}": v for i, t in enumerate(self.terms) for k, v in t.hparams().items()}

    @property
    def native_grad(self):  # type: ignore[override]
        return all(t.native_grad for t in self.terms)

    def value_and_grad(self, x, hparams):
        value = grad = None
        for i, t in enumerate(self.terms):
            v, g = t.value_and_grad(x, _split(hparams, f"{i}/"))
            value = v if value is None else value + v
            grad = g if grad is None else grad + g
        return value, grad

    def with_hparams(self, **values):
        return Sum(*[t.with_hparams(**_split(values, f"{i}/")) for i, t in enumerate(self.terms)])

    def structure(self):
        return ("Sum", tuple(t.structure() for t in self.terms))

    def elementwise_sum(self, hp):
        out = []
        for i, t in enumerate(self.terms):
            part = t.elementwise_sum(_split(hp, f"{i}/"))
            if part is None:
                return None
            out.extend(part)
        return out

    def get_config(self):
        return {"terms": [serialize(t) for t in self.terms]}

    @classmethod
    def from_config(cls, config):
        terms = config.get("terms")
        if not isinstance(terms, (list, tuple)) or not terms:
            raise ValueError(f"Sum needs terms = a non-empty list of regularizers, e.g. "
                             f"[{{name = \"L1\", l1 = 0.01}}, {{name = \"L2\", l2 = 0.01}}]; got terms={terms!r}")
        return cls(*[deserialize(t) for t in terms])


class Scaled(Regularizer):
    """``factor * r(x)``, made by ``factor * r``."""

    def __init__(self, factor: float, regularizer: Regularizer):
        self.factor = _checks.non_negative_float(factor, "factor")
        if not isinstance(regularizer, Regularizer):
            raise ValueError(f"regularizer must be a Regularizer; got {regularizer!r}")
        self.regularizer = regularizer

    def compute(self, x, factor, **hp):
        return factor * self.regularizer.compute(x, **_split(hp, "inner/"))

    def hparams(self):
        inner = {f"inner/{k}": v for k, v in self.regularizer.hparams().items()}
        return {"factor": self.factor, **inner}

    @property
    def native_grad(self):  # type: ignore[override]
        return self.regularizer.native_grad

    def value_and_grad(self, x, hparams):
        f = hparams["factor"]
        v, g = self.regularizer.value_and_grad(x, _split(hparams, "inner/"))
        return f * v, _per_model(f, g) * g

    def with_hparams(self, **values):
        inner = self.regularizer.with_hparams(**_split(values, "inner/"))
        return Scaled(float(values.get("factor", self.factor)), inner)

    def structure(self):
        return ("Scaled", self.regularizer.structure())

    def elementwise_sum(self, hp):
        inner = self.regularizer.elementwise_sum(_split(hp, "inner/"))
        return None if inner is None else [(k, f, df, hp["factor"] * st) for k, f, df, st in inner]

    def get_config(self):
        return {"factor": self.factor, "regularizer": serialize(self.regularizer)}

    @classmethod
    def from_config(cls, config):
        return cls(config["factor"], deserialize(config["regularizer"]))


register_regularizer(Sum)
register_regularizer(Scaled)


class FunctionRegularizer(Regularizer):
    """Wrap a plain function ``fn(x) -> scalar tensor`` as a regularizer.

    Serializable only if ``fn`` is registered by name with ``from_function(fn, name=...)``.
    """

    _functions: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor] | str, name: str | None = None):
        if isinstance(fn, str):
            if fn not in self._functions:
                raise ValueError(f"no regularizer function registered under name {fn!r}")
            name, fn = fn, self._functions[fn]
        if not callable(fn):
            raise ValueError(f"fn must be callable; got {fn!r}")
        self.fn = fn
        self.name = name

    def __call__(self, x):
        return self.fn(x)

    def get_config(self):
        if self.name is None:
            raise NotImplementedError(
                "this FunctionRegularizer wraps an unnamed function; create it with "
                "reglab.regularizers.from_function(fn, name='...') to make it serializable"
            )
        return {"fn": self.name}


register_regularizer(FunctionRegularizer)


def from_function(fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None) -> Regularizer:
    """Make a regularizer from ``fn(x) -> scalar``; with ``name`` it is also serializable."""
    if name is not None:
        FunctionRegularizer._functions[name] = fn
    return FunctionRegularizer(fn, name=name)


def serialize(regularizer: Regularizer | None) -> dict[str, Any] | None:
    """``{"class_name": ..., "config": {...}}`` (the shape Keras uses)."""
    if regularizer is None:
        return None
    return {"class_name": type(regularizer).__name__, "config": regularizer.get_config()}


def deserialize(config: Mapping[str, Any]) -> Regularizer:
    """Inverse of ``serialize``; also accepts Keras's serialized dicts (extra keys ignored)."""
    if not isinstance(config, Mapping) or "class_name" not in config:
        raise ValueError(
            f"a serialized regularizer must be a dict with 'class_name' and 'config'; got {config!r}"
        )
    name = config["class_name"]
    cls = _REGISTRY.get(name)
    if cls is None:
        raise ValueError(
            f"unknown regularizer {name!r}; expected one of {sorted(_REGISTRY)} "
            "(register custom classes with reglab.regularizers.register_regularizer)"
        )
    return cls.from_config(dict(config.get("config") or {}))


def get(identifier: Any) -> Regularizer | None:
    """Resolve ``None``, a name (``"l1"``, ``"L2"``, ``"l1l2"``, ``"orthogonal_regularizer"``, ...),
    a serialized dict, a class or an instance to a regularizer, as ``keras.regularizers.get``.

    A name gives the class with its defaults (``"l1l2"`` has both strengths 0, as in Keras).
    """
    if identifier is None:
        return None
    if isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, Mapping):
        return deserialize(identifier)
    if isinstance(identifier, str):
        cls = _REGISTRY.get(identifier)
        if cls is None or cls in (Sum, Scaled, FunctionRegularizer):
            raise ValueError(
                f"unknown regularizer {identifier!r}; expected one of "
                f"{sorted(k for k, c in _REGISTRY.items() if c not in (Sum, Scaled, FunctionRegularizer))}"
            )
        return cls()
    if isinstance(identifier, type) and issubclass(identifier, Regularizer):
        return identifier()
    if callable(identifier):
        return from_function(identifier)
    raise ValueError(f"could not interpret regularizer identifier {identifier!r}")


