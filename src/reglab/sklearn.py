"""scikit-learn estimators around ``reglab.fit``: ``RegularizedMLPClassifier`` and
``RegularizedMLPRegressor`` (one shared base class, ``_RegularizedMLP``)."""

from __future__ import annotations

import copy
import math
import numbers
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch.func import functional_call

from . import _checks
from .attach import PenaltyPlan
from .models import mlp
from .regularizers import L2
from .training.callbacks import Callback
from .training.fit import fit

__all__ = ["RegularizedMLPClassifier", "RegularizedMLPRegressor"]


_ALPHA_DOC = """``alpha`` (default 0: no penalty) is Keras ``L2(alpha)`` on every layer's kernel (the
    ``Linear`` weights), never on the biases: ``alpha * sum(W**2)`` over all kernels is added to
    each batch's mean {loss}. It is a shortcut for ``kernel_regularizer=L2(alpha)`` (the same
    trained weights), so giving both a non-zero ``alpha`` and a ``kernel_regularizer`` is a
    ``ValueError`` (raised by ``fit``)."""

_REGULARIZERS_DOC = """Other regularizers are anything ``reglab.regularizers.get`` accepts (``"l2"``, ``L2(1e-3)``, a
    config dict) and apply to every hidden and output layer (activity: hidden layers only).

    Stopping, with ``MLPClassifier``'s parameters, meanings and defaults (``epochs`` is its
    ``max_iter``): with ``early_stopping=False`` training stops once the epoch's training loss
    (penalties included) has failed to fall below the best so far minus ``tol`` for more than
    ``n_iter_no_change`` epochs in a row; with ``early_stopping=True``, ``validation_fraction`` of the
    training data is held out (``train_test_split`` seeded by ``random_state``, stratified for
    classes) and the rule watches ``score`` on it (accuracy; R²) rising above the best so far plus
    ``tol``; the weights of the best-scoring epoch are put back at the end.
    ``n_iter_no_change=numpy.inf`` trains every epoch.

    After ``fit``: ``model_`` (the torch module), ``history_`` (``reglab.History``), ``n_iter_``
    (epochs run), ``loss_curve_``, ``best_loss_`` (None with early stopping),
    ``validation_scores_`` and ``best_validation_score_`` (None without), ``n_features_in_``"""


class NoImprovement:
    """scikit-learn's stopping rule for its MLPs (``_update_no_improvement_count``), one value at
    a time: a validation score (``higher=True``, improvement means ``v >= best + tol``) or a
    training loss (``higher=False``: ``v <= best - tol``). The count of epochs without improvement
    restarts on one; ``best`` moves on any strict gain; ``update`` says when to stop
    (``count > n_iter_no_change``) and whether ``v`` is the new best."""

    def __init__(self, tol: float, n_iter_no_change: float, higher: bool):
        self.tol, self.n_iter_no_change, self.higher = tol, n_iter_no_change, higher
        self.best = -math.inf if higher else math.inf
        self.count = 0

    def update(self, v: float) -> tuple[bool, bool]:
        """``(stop, is_best)`` after value ``v`` (NaN never improves and never counts, as sklearn)."""
        if self.higher:
            no_gain, is_best = v < self.best + self.tol, v > self.best
        else:
            no_gain, is_best = v > self.best - self.tol, v < self.best
        self.count = self.count + 1 if no_gain else 0
        if is_best:
            self.best = v
        return self.count > self.n_iter_no_change, is_best


class _Stopping(Callback):
    """Applies ``NoImprovement`` after every epoch: to the logged training loss, or to the
    estimator's ``score`` on the held-out ``(x_val, y_val)`` (the weights are live during
    training), keeping a copy of the best-scoring weights."""

    def __init__(self, est: _RegularizedMLP, val: tuple[np.ndarray, np.ndarray] | None):
        self.est, self.val = est, val
        self.rule = NoImprovement(est.tol, est.n_iter_no_change, higher=val is not None)
        self.scores: list[float] = []
        self.best_state: dict[str, torch.Tensor] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.val is None:
            v = float(logs["loss"])
        else:
            v = float(self.est.score(*self.val))
            self.scores.append(v)
        self.stop_training, is_best = self.rule.update(v)
        if is_best and self.val is not None:
            self.best_state = copy.deepcopy(self.model.state_dict())


class _RegularizedMLP(BaseEstimator):
    """What the classifier and the regressor share: the parameters, their checks (in ``fit``, as
    scikit-learn does), building the Dense stack and training it with ``reglab.fit``."""

    def __init__(self, hidden_layer_sizes: tuple[int, ...] = (32, 32), activation: str = "relu", *,
                 alpha: float = 0.0, kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 activity_regularizer: Any = None, optimizer: str = "adam", learning_rate: float = 0.001,
                 epochs: int = 200, batch_size: int = 32, shuffle: bool = True, random_state: int | None = None,
                 early_stopping: bool = False, validation_fraction: float = 0.1, n_iter_no_change: int = 10,
                 tol: float = 1e-4):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.alpha = alpha
        self.kernel_regularizer = kernel_regularizer
        self.bias_regularizer = bias_regularizer
        self.activity_regularizer = activity_regularizer
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.random_state = random_state
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol

    def _check_stopping(self) -> None:
        """The stopping parameters, checked as scikit-learn's ``_parameter_constraints`` do."""
        _checks.flag(bool(self.early_stopping) if isinstance(self.early_stopping, np.bool_) else self.early_stopping,
                     "early_stopping")
        _checks.fraction(self.validation_fraction, "validation_fraction")
        if bool(self.early_stopping) and not self.validation_fraction > 0:
            raise ValueError("validation_fraction must be above 0 with early_stopping=True (it is the share of the "
                             f"training data held out to score each epoch); got validation_fraction="
                             f"{self.validation_fraction!r}")
        if not (self.n_iter_no_change == np.inf and not isinstance(self.n_iter_no_change, bool)):
            _checks.positive_int(self.n_iter_no_change, "n_iter_no_change")
        _checks.non_negative_float(float(self.tol) if isinstance(self.tol, np.floating) else self.tol, "tol")

    def _held_out(self, X: np.ndarray, y: np.ndarray, y_score: np.ndarray, seed: int, stratify: bool):
        """``(X_train, y_train, (X_val, y_score_val))``: with ``early_stopping``, sklearn's split
        (``train_test_split`` with ``test_size=validation_fraction``, stratified on the classes
        where asked); ``y_score`` is what ``score`` compares with (the original labels)."""
        if not self.early_stopping:
            return X, y, None
        idx = np.arange(len(X))
        tr, va = train_test_split(idx, random_state=seed, test_size=self.validation_fraction,
                                  stratify=y_score if stratify else None)
        if len(va) < 2:
            raise ValueError("The validation set is too small. Increase 'validation_fraction' or the size of "
                             f"your dataset (validation_fraction={self.validation_fraction!r} of {len(X)} samples "
                             f"holds out {len(va)}).")
        return X[tr], y[tr], (X[va], y_score[va])

    def _kernel_regularizer(self) -> Any:
        """``L2(alpha)`` for a non-zero ``alpha``, else ``kernel_regularizer``; both is an error."""
        alpha = self.alpha
        if alpha is None:
            alpha = 0.0
        elif isinstance(alpha, numbers.Real) and not isinstance(alpha, (bool, np.bool_)):
            alpha = float(alpha)  # numpy scalars (e.g. from scipy.stats.loguniform) included
        alpha = _checks.non_negative_float(alpha, "alpha")
        if alpha == 0.0:
            return self.kernel_regularizer
        if self.kernel_regularizer is not None:
            raise ValueError(f"give alpha or kernel_regularizer, not both (alpha={self.alpha!r} means "
                             f"kernel_regularizer=L2({alpha!r})); got alpha={self.alpha!r} and "
                             f"kernel_regularizer={self.kernel_regularizer!r}")
        return L2(alpha)

    def _layer_specs(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """The hidden layers' specs and the regularizers the output layer shares with them."""
        sizes = self.hidden_layer_sizes
        sizes = tuple(sizes) if hasattr(sizes, "__iter__") else (sizes,)  # an int is one layer, as sklearn's
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers; got {self.hidden_layer_sizes!r}")
        common = dict(kernel_regularizer=self._kernel_regularizer(), bias_regularizer=self.bias_regularizer)
        hidden = [dict(units=int(s), activation=self.activation, activity_regularizer=self.activity_regularizer, **common)
                  for s in sizes]
        return hidden, common

    def _seed(self) -> int:
        return int(self.random_state) if self.random_state is not None else int(np.random.randint(0, 2**31 - 1))

    def _train(self, hidden: list[dict[str, Any]], common: dict[str, Any], X: np.ndarray, y: np.ndarray,
               n_out: int, out_activation: str | None, loss: str, seed: int,
               val: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Build the MLP (seeded by ``seed``) and train it, stopping by ``NoImprovement`` on the
        training loss or (``val``) on the held-out score; sets ``model_``, ``history_``,
        ``n_iter_`` and sklearn's stopping attributes."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.model_ = mlp(X.shape[1], hidden + [dict(units=n_out, activation=out_activation, **common)])
        stopping = _Stopping(self, val)
        self.history_ = fit(self.model_, X, y, loss=loss,
                            optimizer={"name": self.optimizer, "learning_rate": self.learning_rate}, epochs=self.epochs,
                            batch_size=self.batch_size, shuffle=self.shuffle, seed=seed, progress=False,
                            callbacks=[stopping])
        if stopping.best_state is not None:
            self.model_.load_state_dict(stopping.best_state)
        self.n_iter_ = len(self.history_)
        self.loss_curve_ = [float(v) for v in self.history_.history["loss"]]
        self.validation_scores_ = stopping.scores if val is not None else None
        self.best_validation_score_ = stopping.rule.best if val is not None else None
        self.best_loss_ = None if val is not None else stopping.rule.best

    def _outputs(self, X: Any) -> np.ndarray:
        """The trained model's outputs on ``X``, shape ``(n, n_out)``, computed in float64 from the
        (float32) trained weights: a row's output then does not depend on which other rows share its
        batch (float32 matmul kernels round differently for different row counts, beyond the 1e-7
        that ``check_methods_subset_invariance`` allows)."""
        X = validate_data(self, X, reset=False, dtype=np.float64)
        model = self.model_
        state = {k: v.detach().to(torch.float64) for k, v in [*model.named_parameters(), *model.named_buffers()]}
        xt = torch.as_tensor(X, dtype=torch.float64)
        was = model.training
        model.eval()
        try:
            with torch.no_grad(), PenaltyPlan(model).collect():  # no activity penalty recorded
                out = [functional_call(model, state, (xt[i:i + 4096],)) for i in range(0, len(xt), 4096)]
        finally:
            model.train(was)
        return torch.cat(out).numpy()


class RegularizedMLPClassifier(ClassifierMixin, _RegularizedMLP):
    __doc__ = f"""A Dense MLP classifier with Keras-style regularizers, trained with ``reglab.fit``.

    Binary targets use one sigmoid unit and binary cross-entropy; more classes use softmax and
    (sparse) categorical cross-entropy. Labels of any type are encoded internally (``classes_``).

    {_ALPHA_DOC.format(loss="cross-entropy")} scikit-learn's ``MLPClassifier(alpha=a)`` instead adds
    ``0.5 * a * sum(W**2) / n`` to each batch's mean log-loss, ``n`` the number of samples in that
    batch (``_backprop`` in ``sklearn/neural_network/_multilayer_perceptron.py``), so ``alpha =
    a / (2 * batch_size)`` here is exactly sklearn's objective on every full batch (sklearn's
    smaller last batch gets a larger penalty; with ``solver="lbfgs"``, ``n`` is the whole training
    set).

    {_REGULARIZERS_DOC}, ``classes_``.
    """

    def fit(self, X: Any, y: Any) -> RegularizedMLPClassifier:
        hidden, common = self._layer_specs()
        self._check_stopping()
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        k = len(self.classes_)
        if k == 1:  # one class seen: nothing to learn, predict it
            self.model_, self.history_, self.n_iter_ = None, None, 0
            return self
        binary = k == 2
        yt = y_enc.reshape(-1, 1).astype(np.float32) if binary else y_enc.astype(np.int64)
        seed = self._seed()
        X, yt, val = self._held_out(X, yt, y, seed, stratify=True)
        self._train(hidden, common, X, yt, 1 if binary else k, "sigmoid" if binary else "softmax",
                    "binary_crossentropy" if binary else "sparse_categorical_crossentropy", seed, val)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "classes_")
        if self.model_ is None:
            X = validate_data(self, X, reset=False, dtype=np.float64)
            return np.ones((X.shape[0], 1))
        p = self._outputs(X)
        if len(self.classes_) == 2:
            p = p.reshape(-1)
            return np.column_stack([1.0 - p, p])
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # checks fitted-ness before classes_ is touched
        return self.classes_[np.argmax(proba, axis=1)]


class RegularizedMLPRegressor(RegressorMixin, _RegularizedMLP):
    __doc__ = f"""A Dense MLP regressor with Keras-style regularizers, trained with ``reglab.fit``.

    Linear output units (one per target) and mean squared error (Keras ``"mse"``); ``y`` may be 1-D
    (``predict`` returns shape ``(n,)``) or 2-D (``(n, k)``); ``score`` is R² (``RegressorMixin``).
    Targets are not rescaled: standardize a large-valued ``y`` first (e.g. with
    ``sklearn.compose.TransformedTargetRegressor``).

    {_ALPHA_DOC.format(loss="squared error")} scikit-learn's ``MLPRegressor(alpha=a)`` minimizes
    ``0.5 * mean((y - p)**2) + 0.5 * a * sum(W**2) / n`` on each batch of ``n`` samples
    (``_backprop`` in ``sklearn/neural_network/_multilayer_perceptron.py``), exactly half of this
    estimator's objective with ``alpha = a / batch_size``: the same minimizer, and for 1-D ``y``
    the same SGD steps at half sklearn's learning rate (Adam, nearly scale-invariant, takes about
    the same steps at the same learning rate).

    {_REGULARIZERS_DOC}, ``n_outputs_``.
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X: Any, y: Any) -> RegularizedMLPRegressor:
        hidden, common = self._layer_specs()
        self._check_stopping()
        X, y = validate_data(self, X, y, dtype=np.float64, multi_output=True, y_numeric=True)
        self._y_1d = y.ndim == 1
        y2 = y.reshape(-1, 1) if self._y_1d else y
        self.n_outputs_ = y2.shape[1]
        seed = self._seed()
        X, y2, val = self._held_out(X, y2, y, seed, stratify=False)
        self._train(hidden, common, X, y2, self.n_outputs_, None, "mse", seed, val)
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        out = self._outputs(X)
        return out.reshape(-1) if self._y_1d else out
