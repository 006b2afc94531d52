"""Data losses with Keras names and math, and a regularized loss function (penalty written into the loss).

All losses are called torch-style, ``loss(y_pred, y_true)``, and return the mean over the batch
of the per-example loss (Keras's ``sum_over_batch_size`` reduction; the per-example loss is the
mean over the last axis for element-wise losses, as in Keras). ``per_example`` gives the
un-reduced values (used for batch-size-weighted epoch means).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import regularizers as _regularizers
from ._lanes import whole_vectors
from .attach import match_names, owner_of

EPSILON = 1e-7  # keras.config.epsilon()

__all__ = [
    "Loss",
    "BinaryCrossentropy",
    "CategoricalCrossentropy",
    "SparseCategoricalCrossentropy",
    "MeanSquaredError",
    "MeanAbsoluteError",
    "LogEpsBinaryCrossentropy",
    "RegularizedLoss",
    "get",
]


class Loss:
    """Base: implement ``per_example(y_pred, y_true) -> (batch,)``."""

    name = "loss"
    #: "binary", "categorical", "sparse" or None: what accuracy means for this loss
    task: str | None = None

    #: True where ``per_example_grad`` is written (the Dense-stack engine needs it)
    native_grad = False

    #: the penalty source this loss adds to its model's (``RegularizedLoss``: ``"loss:penalty"``),
    #: or None; every engine treats it as one more source, through ``terms``, ``strength`` and
    #: ``penalty``
    source_name: str | None = None
    #: that source's ``[(parameter name, regularizer)]`` at unit strength
    terms: Sequence[tuple[str, Any]] = ()
    #: that source's strength (the one number models trained together may differ in)
    strength: float = 0.0

    def penalty(self, model: nn.Module | None = None, strength: Any = None) -> torch.Tensor | None:
        """The value of the loss's own penalty source on ``model`` (None: it has none)."""
        return None

    def per_example(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_example_grad(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """``d per_example[i] / d y_pred[i]`` for every example i (shape of ``y_pred``; leading
        model axes allowed). Used by the hand-written backward pass of ``reglab.vectorized.dense``."""
        raise NotImplementedError(f"{type(self).__name__} has no per_example_grad")

    def per_example_and_grad(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(per_example, per_example_grad)`` in one call (losses may share work between them)."""
        return self.per_example(y_pred, y_true), self.per_example_grad(y_pred, y_true)

    def __call__(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        return self.per_example(y_pred, y_true).mean()

    def check_shapes(self, pred_shape: tuple[int, ...], true_shape: tuple[int, ...]) -> None:
        if tuple(pred_shape) != tuple(true_shape):
            raise ValueError(
                f"{self.name}: model output shape {tuple(pred_shape)} and y shape {tuple(true_shape)} differ"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _mean_last(v: torch.Tensor) -> torch.Tensor:
    if v.dim() <= 1:
        return v
    # the mean of one number is that number (the same bits, no kernel)
    return v.squeeze(-1) if v.shape[-1] == 1 else v.mean(dim=-1)


def _mean_last_grad(g: torch.Tensor) -> torch.Tensor:
    """The derivative of ``_mean_last`` applied to an element-wise derivative ``g``."""
    return g / g.shape[-1] if g.dim() > 1 and g.shape[-1] != 1 else g


_ONES: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}
_BCE_BWD = torch.ops.aten.binary_cross_entropy_backward.default  # torch's BCE derivative kernel


def _one(like: torch.Tensor) -> torch.Tensor:
    """A 0-dim 1 of ``like``'s dtype and device (made once: the incoming gradient of a backward kernel)."""
    key = (like.dtype, like.device)
    one = _ONES.get(key)
    if one is None:
        one = _ONES[key] = torch.ones((), dtype=like.dtype, device=like.device)
    return one


def _bce(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """torch's element-wise BCE of clipped probabilities; where a diverged model's output is NaN
    (the kernel refuses it, which would take down every model of a stack) the value is NaN,
    so that only that model is seen as diverged. The check costs nothing until it is needed."""
    try:
        return F.binary_cross_entropy(p, y, reduction="none")
    except RuntimeError:
        nan = torch.isnan(p)
        try:
            some = bool(nan.any())
        except RuntimeError:  # under torch.vmap, which branches on no data: the NaN-safe form
            some = True       # (an input outside [0, 1] still raises in it)
        if not some:
            raise
        v = F.binary_cross_entropy(torch.where(nan, 0.5, p), y, reduction="none")
        return torch.where(nan, torch.nan, v)


class BinaryCrossentropy(Loss):
    """``-mean(y log p + (1 - y) log(1 - p))`` with ``p`` clipped to ``[1e-7, 1 - 1e-7]``.
    Keras: ``"binary_crossentropy"`` on probabilities (``from_logits=False``)."""

    name = "binary_crossentropy"
    task = "binary"

    def __init__(self, from_logits: bool = False):
        self.from_logits = bool(from_logits)

    native_grad = True

    def per_example(self, y_pred, y_true):
        if self.from_logits:
            return _mean_last(F.binary_cross_entropy_with_logits(y_pred, y_true, reduction="none"))
        p = y_pred.clamp(EPSILON, 1.0 - EPSILON)
        return _mean_last(_bce(p, y_true))

    def per_example_grad(self, y_pred, y_true):
        return self.per_example_and_grad(y_pred, y_true)[1]

    def per_example_and_grad(self, y_pred, y_true):
        if self.from_logits:  # d/dz = sigmoid(z) - y
            return self.per_example(y_pred, y_true), _mean_last_grad(whole_vectors(torch.sigmoid, y_pred) - y_true)
        # torch's BCE kernels on the clipped p: value -(y log p + (1-y) log(1-p)), derivative
        # (p - y) / (p (1 - p)); the clip passes no gradient (p != y_pred there)
        p = y_pred.clamp(EPSILON, 1.0 - EPSILON)
        v = _bce(p, y_true)
        g = _BCE_BWD(_one(p), p, y_true, None, 0) * (p == y_pred)
        return _mean_last(v), _mean_last_grad(g)


class LogEpsBinaryCrossentropy(Loss):
    """A hand-written cross-entropy (as in Keras programs that write their own loss): ``-mean(y log(p + eps) + (1 - y) log(1 - p + eps))``,
    ``eps = 1e-6`` (no clipping)."""

    name = "log_eps_binary_crossentropy"
    task = "binary"

    def __init__(self, eps: float = 1e-6):
        self.eps = float(eps)

    native_grad = True

    def per_example(self, y_pred, y_true):
        v = -(y_true * torch.log(y_pred + self.eps) + (1.0 - y_true) * torch.log(1.0 - y_pred + self.eps))
        return _mean_last(v)

    def per_example_grad(self, y_pred, y_true):
        return _mean_last_grad(-y_true / (y_pred + self.eps) + (1.0 - y_true) / (1.0 - y_pred + self.eps))


class CategoricalCrossentropy(Loss):
    """``-sum(y log(p / sum p))`` with clipping to ``[1e-7, 1 - 1e-7]``. Keras: ``"categorical_crossentropy"``."""

    name = "categorical_crossentropy"
    task = "categorical"

    def __init__(self, from_logits: bool = False):
        self.from_logits = bool(from_logits)

    native_grad = True

    def per_example(self, y_pred, y_true):
        if self.from_logits:
            logp = F.log_softmax(y_pred, dim=-1)
        else:
            p = y_pred / y_pred.sum(dim=-1, keepdim=True)
            logp = torch.log(p.clamp(EPSILON, 1.0 - EPSILON))
        return -(y_true * logp).sum(dim=-1)

    def per_example_grad(self, y_pred, y_true):
        return _categorical_grad(y_pred, y_true, self.from_logits)


def _categorical_grad(y_pred: torch.Tensor, y: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """``d/d y_pred`` of ``-sum(y log q)``: ``q = softmax(y_pred)`` (logits) or the clipped
    ``y_pred / sum(y_pred)`` (probabilities, Keras)."""
    if from_logits:
        return torch.softmax(y_pred, dim=-1) * y.sum(dim=-1, keepdim=True) - y
    s = y_pred.sum(dim=-1, keepdim=True)
    p = y_pred / s
    pc = p.clamp(EPSILON, 1.0 - EPSILON)
    dp = -y / pc * (pc == p)  # the clip passes no gradient
    return (dp - (dp * p).sum(dim=-1, keepdim=True)) / s


class SparseCategoricalCrossentropy(Loss):
    """Categorical cross-entropy with integer labels. Keras: ``"sparse_categorical_crossentropy"``."""

    name = "sparse_categorical_crossentropy"
    task = "sparse"

    def __init__(self, from_logits: bool = False):
        self.from_logits = bool(from_logits)

    def check_shapes(self, pred_shape, true_shape):
        t = tuple(true_shape)
        if t and len(t) == len(pred_shape) and t[-1] == 1:
            t = t[:-1]
        if t != tuple(pred_shape[:-1]):
            raise ValueError(f"{self.name}: y shape {tuple(true_shape)} does not match model output {tuple(pred_shape)}")

    native_grad = True

    @staticmethod
    def _labels(y_pred, y_true):
        y = y_true.long()
        return y.squeeze(-1) if y.dim() == y_pred.dim() else y

    def per_example_grad(self, y_pred, y_true):
        onehot = F.one_hot(self._labels(y_pred, y_true), y_pred.shape[-1]).to(y_pred.dtype)
        return _categorical_grad(y_pred, onehot, self.from_logits)

    def per_example(self, y_pred, y_true):
        y = self._labels(y_pred, y_true)
        if self.from_logits:
            logp = F.log_softmax(y_pred, dim=-1)
        else:
            p = y_pred / y_pred.sum(dim=-1, keepdim=True)
            logp = torch.log(p.clamp(EPSILON, 1.0 - EPSILON))
        return -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)


class MeanSquaredError(Loss):
    """``mean((y - p)**2)``. Keras: ``"mse"``/``"mean_squared_error"``."""

    name = "mean_squared_error"

    native_grad = True

    def per_example(self, y_pred, y_true):
        return _mean_last((y_pred - y_true).square())

    def per_example_grad(self, y_pred, y_true):
        return _mean_last_grad(2.0 * (y_pred - y_true))


class MeanAbsoluteError(Loss):
    """``mean(|y - p|)``. Keras: ``"mae"``/``"mean_absolute_error"``."""

    name = "mean_absolute_error"

    native_grad = True

    def per_example(self, y_pred, y_true):
        return _mean_last((y_pred - y_true).abs())

    def per_example_grad(self, y_pred, y_true):
        return _mean_last_grad(torch.sign(y_pred - y_true))


class TorchLoss(Loss):
    """Adapter for a torch loss callable ``fn(y_pred, y_true)`` (e.g. ``nn.MSELoss()``)."""

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)
        if isinstance(fn, nn.BCELoss | nn.BCEWithLogitsLoss):
            self.task = "binary"
        elif isinstance(fn, nn.CrossEntropyLoss):
            self.task = "sparse"

    def check_shapes(self, pred_shape, true_shape):
        """An element-wise torch loss (``nn.MSELoss``, ``F.l1_loss``, ...) broadcasts an output of
        shape (n, 1) against y of shape (n,) to (n, n) -- every output against every target --
        with only a warning; that is refused. Other callables check what they need themselves."""
        if not _elementwise(self.fn) or tuple(pred_shape) == tuple(true_shape):
            return
        try:
            both = torch.broadcast_shapes(tuple(pred_shape), tuple(true_shape))
        except RuntimeError:
            return  # the torch loss raises its own error
        if tuple(both) != tuple(pred_shape):
            raise ValueError(f"{self.name}: model output shape {tuple(pred_shape)} and y shape {tuple(true_shape)} "
                             f"would broadcast to {tuple(both)}")

    def per_example(self, y_pred, y_true):
        # a torch loss reduces itself: one value per batch, repeated so batch-weighted means are exact
        v = self.fn(y_pred, y_true)
        return v.reshape(1).expand(y_pred.shape[0])

    def __call__(self, y_pred, y_true):
        return self.fn(y_pred, y_true)


def _elementwise(fn: Any) -> bool:
    """Whether ``fn`` is one of torch's element-wise losses (which broadcast output and target)."""
    import torch.nn.functional as F

    modules = (nn.MSELoss, nn.L1Loss, nn.SmoothL1Loss, nn.HuberLoss, nn.BCELoss, nn.BCEWithLogitsLoss, nn.KLDivLoss,
               nn.PoissonNLLLoss, nn.SoftMarginLoss)
    functions = (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.binary_cross_entropy,
                 F.binary_cross_entropy_with_logits, F.kl_div, F.poisson_nll_loss, F.soft_margin_loss)
    return isinstance(fn, modules) or any(fn is f for f in functions)


_LOSSES: dict[str, Callable[[], Loss]] = {
    "binary_crossentropy": BinaryCrossentropy,
    "bce": BinaryCrossentropy,
    "log_eps_binary_crossentropy": LogEpsBinaryCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "mse": MeanSquaredError,
    "mean_squared_error": MeanSquaredError,
    "mae": MeanAbsoluteError,
    "mean_absolute_error": MeanAbsoluteError,
}


def get(identifier: Any) -> Loss:
    """A Keras loss name, a config ``{"name": ..., **options}`` (e.g. ``{"name":
    "sparse_categorical_crossentropy", "from_logits": True}``, as experiment files write it), a
    reglab ``Loss``, or a torch loss callable ``fn(y_pred, y_true)``."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, dict):
        import inspect

        opts = dict(identifier)
        name = opts.pop("name", None)
        if not isinstance(name, str) or name not in _LOSSES:
            raise ValueError(f"a loss config needs name = one of {sorted(_LOSSES)}; got {identifier!r}")
        cls = _LOSSES[name]
        allowed = [k for k in inspect.signature(cls).parameters if k not in ("self", "args", "kwargs")]
        bad = sorted(set(opts) - set(allowed))
        if bad:
            raise ValueError(f"loss {name!r} takes no option {', '.join(map(repr, bad))}; its options: "
                             f"{', '.join(allowed) or 'none'}")
        return cls(**opts)
    if isinstance(identifier, str):
        try:
            return _LOSSES[identifier]()
        except KeyError:
            raise ValueError(f"unknown loss {identifier!r}; expected one of {sorted(_LOSSES)} or a callable") from None
    if callable(identifier):
        return TorchLoss(identifier)
    raise ValueError(f"loss must be a name, a {{'name': ...}} config, a reglab Loss or a callable; got {identifier!r}")


#: Per-tensor regularizer codes (an ``r_list``): 1 = L1, 2 = L2, 12 = L1 and L2 (unit strength), -1/0 = none.
R_LIST_CODES = {1: lambda: _regularizers.L1(1.0), 2: lambda: _regularizers.L2(1.0),
                 12: lambda: _regularizers.L1L2(1.0, 1.0), -1: lambda: None, 0: lambda: None}


class RegularizedLoss(Loss):
    """``data_loss(y_pred, y) + strength * sum_k r_k(theta_k)`` -- regularization written into the loss.

    ``regularizers`` is either ``{param_glob: regularizer}`` or a list aligned with
    ``list(model.parameters())`` whose entries are regularizers, ``None``, or codes
    (1 = L1, 2 = L2, 12 = both, -1 = none; unit strength, scaled by ``strength``). A list whose
    length differs from the number of parameter tensors is an error: a hand-written ``r_list``
    has 10 entries for 12 tensors and ``zip`` silently leaves the output layer unregularized.

    The penalty is exposed as the penalty source ``source_name`` (``"loss:penalty"``) so that
    ``fit`` logs the data loss and the penalty separately.
    """

    source_name = "loss:penalty"

    def __init__(self, data_loss: Any, model: nn.Module, regularizers: Mapping[str, Any] | Sequence[Any], strength: float = 1.0):
        self.data_loss = get(data_loss)
        self.task = self.data_loss.task
        self.name = f"regularized_{self.data_loss.name}"
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0 or strength == float("inf"):
            raise ValueError(f"strength must be a non-negative finite number; got strength={strength!r}")
        self.strength = float(strength)
        names = [n for n, _ in model.named_parameters()]
        if isinstance(regularizers, Mapping):
            hits = match_names(names, {k: _regularizers.get(v) for k, v in regularizers.items()}, "parameter", model)
            self.terms = [(n, hits[n][1]) for n in names if n in hits]
        else:
            regs = list(regularizers)
            if len(regs) != len(names):
                raise ValueError(
                    f"regularizers list has {len(regs)} entries but the model has {len(names)} parameter "
                    f"tensors ({', '.join(names)}); give one entry per tensor (None for none). "
                    "zip() would silently leave the last tensors unregularized"
                )
            terms = []
            for n, r in zip(names, regs):
                if isinstance(r, int) and not isinstance(r, bool):
                    if r not in R_LIST_CODES:
                        raise ValueError(f"regularizer code {r!r} for {n!r} is not one of {sorted(R_LIST_CODES)}")
                    r = R_LIST_CODES[r]()
                else:
                    r = _regularizers.get(r)
                if r is not None:
                    terms.append((n, r))
            self.terms = terms
        self._model = model

    def check_shapes(self, pred_shape, true_shape):
        self.data_loss.check_shapes(pred_shape, true_shape)

    def per_example(self, y_pred, y_true):
        return self.data_loss.per_example(y_pred, y_true)

    @property
    def native_grad(self):  # type: ignore[override]
        return self.data_loss.native_grad

    def per_example_grad(self, y_pred, y_true):
        return self.data_loss.per_example_grad(y_pred, y_true)

    def penalty(self, model: nn.Module | None = None, strength: Any = None) -> torch.Tensor:
        """``strength * sum_k r_k(theta_k)`` on ``model`` (default: the model given at construction)."""
        m = self._model if model is None else model
        total = sum(r(_get_tensor(m, n)) for n, r in self.terms)
        s = self.strength if strength is None else strength
        if not self.terms:
            p = next(m.parameters())
            return torch.zeros((), dtype=p.dtype, device=p.device)
        return s * total

    def __call__(self, y_pred, y_true):
        return self.data_loss(y_pred, y_true) + self.penalty()


def _get_tensor(model: nn.Module, dotted: str) -> torch.Tensor:
    # getattr (not named_parameters) so that torch.func.functional_call's swapped tensors are seen
    owner, attr = owner_of(model, dotted)
    return getattr(owner, attr)
