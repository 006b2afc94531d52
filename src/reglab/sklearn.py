"""``RegularizedMLPClassifier``: a scikit-learn estimator around ``reglab.fit``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .diagnostics.evaluate import predict
from .models import mlp
from .training.fit import fit

__all__ = ["RegularizedMLPClassifier"]


class RegularizedMLPClassifier(ClassifierMixin, BaseEstimator):
    """A Dense MLP classifier with Keras-style regularizers, trained with ``reglab.fit``.

    Binary targets use one sigmoid unit and binary cross-entropy; more classes use softmax and
    (sparse) categorical cross-entropy. Labels of any type are encoded internally (``classes_``).
    Regularizers are anything ``reglab.regularizers.get`` accepts (``"l2"``, ``L2(1e-3)``, a config
    dict) and apply to every hidden and output layer (activity: hidden layers only).

    After ``fit``: ``model_`` (the torch module), ``history_`` (``reglab.History``), ``classes_``,
    ``n_features_in_``.
    """

    def __init__(self, hidden_layer_sizes: tuple[int, ...] = (32, 32), activation: str = "relu",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None, activity_regularizer: Any = None,
                 optimizer: str = "adam", learning_rate: float = 0.001, epochs: int = 200, batch_size: int = 32,
                 shuffle: bool = True, random_state: int | None = None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.kernel_regularizer = kernel_regularizer
        self.bias_regularizer = bias_regularizer
        self.activity_regularizer = activity_regularizer
        self.optimizer = optimizer
        self.learning_rate = learning_rate
        self.epochs = epochs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.random_state = random_state

    def _layers(self, n_out: int, out_act: str) -> list[dict[str, Any]]:
        sizes = tuple(self.hidden_layer_sizes)
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s <= 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be positive integers; got {self.hidden_layer_sizes!r}")
        common = dict(kernel_regularizer=self.kernel_regularizer, bias_regularizer=self.bias_regularizer)
        hidden = [dict(units=int(s), activation=self.activation, activity_regularizer=self.activity_regularizer, **common)
                  for s in sizes]
        return hidden + [dict(units=n_out, activation=out_act, **common)]

    def fit(self, X: Any, y: Any) -> RegularizedMLPClassifier:
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        k = len(self.classes_)
        seed = self.random_state if self.random_state is not None else int(np.random.randint(0, 2**31 - 1))
        if k == 1:  # one class seen: nothing to learn, predict it
            self.model_, self.history_ = None, None
            return self
        binary = k == 2
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.model_ = mlp(X.shape[1], self._layers(1 if binary else k, "sigmoid" if binary else "softmax"))
        yt = y_enc.reshape(-1, 1).astype(np.float32) if binary else y_enc.astype(np.int64)
        self.history_ = fit(self.model_, X, yt, loss="binary_crossentropy" if binary else "sparse_categorical_crossentropy",
                            optimizer={"name": self.optimizer, "learning_rate": self.learning_rate}, epochs=self.epochs,
                            batch_size=self.batch_size, shuffle=self.shuffle, seed=int(seed), progress=False)
        self.n_iter_ = len(self.history_)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "classes_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        if self.model_ is None:
            return np.ones((X.shape[0], 1))
        p = predict(self.model_, X).astype(np.float64)
        if len(self.classes_) == 2:
            p = p.reshape(-1)
            return np.column_stack([1.0 - p, p])
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X: Any) -> np.ndarray:
        proba = self.predict_proba(X)  # checks fitted-ness before classes_ is touched
        return self.classes_[np.argmax(proba, axis=1)]
