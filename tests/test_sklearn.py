import warnings

import numpy as np
import pytest
import torch
from scipy.stats import loguniform
from sklearn.datasets import make_regression
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, RandomizedSearchCV
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.utils.estimator_checks import parametrize_with_checks

import reglab
from reglab.models import mlp
from reglab.sklearn import RegularizedMLPClassifier, RegularizedMLPRegressor

from .lecture import blobs

# No expected failures: every scikit-learn check passes (small epochs keep the suite fast;
# learning_rate 0.01 lets 30 epochs reach the accuracy check_classifiers_train asks for, and the
# R² > 0.5 check_regressors_train asks for -- which it checks with alpha set to 0.01).
FAST = dict(hidden_layer_sizes=(16,), epochs=30, learning_rate=0.01, batch_size=32, random_state=0)


@parametrize_with_checks([RegularizedMLPClassifier(**FAST), RegularizedMLPRegressor(**FAST)])
def test_sklearn_compatible(estimator, check):
    check(estimator)  # raises AssertionError (or the check's own error) on any incompatibility
    assert estimator.get_params()["epochs"] == 30  # checks work on clones; our instance is untouched


def test_binary_and_multiclass_with_any_label_type():
    x, y, xt, yt = blobs()
    labels = np.where(y.ravel() > 0, "yes", "no")
    clf = RegularizedMLPClassifier(epochs=40, learning_rate=0.01, random_state=0, n_iter_no_change=np.inf).fit(x, labels)
    assert list(clf.classes_) == ["no", "yes"]
    assert clf.score(xt, np.where(yt.ravel() > 0, "yes", "no")) > 0.75
    assert clf.predict_proba(xt).shape == (75, 2)
    np.testing.assert_allclose(clf.predict_proba(xt).sum(1), 1.0, rtol=1e-6)
    assert len(clf.history_) == 40
    rng = np.random.default_rng(0)
    centers = np.array([[0, 0], [3, 0], [0, 3]])
    yy = rng.integers(0, 3, 300)
    xx = centers[yy] + rng.normal(size=(300, 2)) * 0.5
    clf3 = RegularizedMLPClassifier(epochs=30, learning_rate=0.01, kernel_regularizer="l2", random_state=0).fit(xx, yy * 10)
    assert list(clf3.classes_) == [0, 10, 20]
    assert clf3.score(xx, yy * 10) > 0.9
    assert "penalty/0.weight" in clf3.history_


def test_grid_search_over_regularization_strength():
    x, y, _, _ = blobs()
    grid = GridSearchCV(RegularizedMLPClassifier(hidden_layer_sizes=(16,), epochs=15, learning_rate=0.01, random_state=0),
                        {"kernel_regularizer": [reglab.L2(1e-4), reglab.L2(10.0)]}, cv=3, scoring="neg_log_loss")
    grid.fit(x, y.ravel())
    scores = grid.cv_results_["mean_test_score"]
    assert scores.shape == (2,) and np.all(np.isfinite(scores))
    assert grid.best_params_["kernel_regularizer"] == reglab.L2(1e-4)  # a huge L2 flattens the model
    assert scores[0] > scores[1]


def test_bad_hidden_sizes():
    x, y, _, _ = blobs()
    with pytest.raises(ValueError, match=r"hidden_layer_sizes must be positive integers"):
        RegularizedMLPClassifier(hidden_layer_sizes=(0,), epochs=1).fit(x, y.ravel())


# ----------------------------------------------------------------------------- alpha


def _weights(est):
    return {k: v.detach().clone() for k, v in est.model_.state_dict().items()}


@pytest.mark.parametrize("cls", [RegularizedMLPClassifier, RegularizedMLPRegressor])
def test_alpha_is_l2_on_kernels(cls):
    x, y, _, _ = blobs()
    kw = dict(hidden_layer_sizes=(8, 8), epochs=5, learning_rate=0.01, random_state=3)
    lam = 0.02
    by_alpha = cls(alpha=lam, **kw).fit(x, y.ravel())
    by_reg = cls(kernel_regularizer=reglab.L2(lam), **kw).fit(x, y.ravel())
    w_alpha, w_reg = _weights(by_alpha), _weights(by_reg)
    assert all(torch.equal(w_alpha[k], w_reg[k]) for k in w_alpha)  # bit-identical training
    np.testing.assert_array_equal(by_alpha.history_["loss"], by_reg.history_["loss"])
    w_none = _weights(cls(**kw).fit(x, y.ravel()))  # alpha=0.0 default: no penalty, other weights
    assert max(float((w_alpha[k] - w_none[k]).abs().max()) for k in w_alpha) > 1e-4
    # the penalty sources are the three kernels only, each lam * sum(W**2); biases are free
    terms = reglab.penalties(by_alpha.model_)
    assert sorted(terms) == ["0.weight", "1.weight", "2.weight"]
    for name, value in terms.items():
        expect = lam * float((w_alpha[name].double() ** 2).sum())
        assert float(value.detach()) == pytest.approx(expect, rel=1e-5)
    assert by_alpha.history_.penalty_sources == ["0.weight", "1.weight", "2.weight"]
    # a numpy scalar (as a search's distribution gives) works; None means no penalty as 0.0 does
    w_np = _weights(cls(alpha=np.float32(lam), **kw).fit(x, y.ravel()))
    assert all(torch.allclose(w_np[k], w_alpha[k], rtol=1e-5, atol=1e-7) for k in w_np)
    w_nonealpha = _weights(cls(alpha=None, **kw).fit(x, y.ravel()))
    assert all(torch.equal(w_nonealpha[k], w_none[k]) for k in w_none)


@pytest.mark.parametrize("cls", [RegularizedMLPClassifier, RegularizedMLPRegressor])
def test_alpha_and_kernel_regularizer_together_is_an_error_at_fit(cls):
    x, y, _, _ = blobs()
    est = cls(alpha=1e-3, kernel_regularizer="l1", epochs=1)  # constructing is fine (sklearn: checks in fit)
    with pytest.raises(ValueError, match=r"alpha.*kernel_regularizer.*not both.*alpha=0\.001.*kernel_regularizer='l1'"):
        est.fit(x, y.ravel())
    assert not hasattr(est, "model_")
    # alpha=0 with a kernel regularizer is fine: the regularizer is used
    ok = cls(alpha=0.0, kernel_regularizer=reglab.L1(1e-3), epochs=1, random_state=0).fit(x, y.ravel())
    assert sorted(reglab.penalties(ok.model_)) == ["0.weight", "1.weight", "2.weight"]
    for bad in (-1.0, float("nan"), "big", True):
        with pytest.raises(ValueError, match=r"alpha must be a non-negative finite number"):
            cls(alpha=bad, epochs=1).fit(x, y.ravel())


def _one_sgd_epoch_against_sklearn(sk_cls, y, loss, out_activation, lam, lr_reglab, a, lr_sk, batch):
    """Train the same initial weights for one epoch of plain SGD (no shuffling) with sklearn's
    ``MLP*(alpha=a)`` and with ``reglab.fit`` and ``L2(lam)`` on the kernels; largest weight gap."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3))
    y = y(x)
    torch.manual_seed(0)
    reg = reglab.L2(lam) if lam else None
    model = mlp(3, [dict(units=8, activation="relu", kernel_regularizer=reg),
                    dict(units=1, activation=out_activation, kernel_regularizer=reg)]).double()
    sk = sk_cls(hidden_layer_sizes=(8,), activation="relu", solver="sgd", alpha=a, batch_size=batch,
                learning_rate_init=lr_sk, momentum=0.0, nesterovs_momentum=False, shuffle=False, max_iter=1,
                warm_start=True, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk.fit(x, y)  # builds sklearn's layers; then start from reglab's weights (sklearn's kernels are W.T)
        sk.coefs_ = [model[i].weight.detach().numpy().T.copy() for i in (0, 1)]
        sk.intercepts_ = [model[i].bias.detach().numpy().copy() for i in (0, 1)]
        sk.fit(x, y)  # warm start: one epoch from those weights
    reglab.fit(model, x, y.reshape(-1, 1).astype(np.float64), loss=loss, optimizer={"name": "sgd", "learning_rate": lr_reglab},
               epochs=1, batch_size=batch, shuffle=False, progress=False)
    gaps = [np.abs(sk.coefs_[i] - model[i].weight.detach().numpy().T).max() for i in (0, 1)]
    gaps += [np.abs(sk.intercepts_[i] - model[i].bias.detach().numpy()).max() for i in (0, 1)]
    return max(gaps)


def test_alpha_against_scikit_learn_mlp_classifier():
    """The docstring's claim: reglab alpha = sklearn alpha / (2 * batch_size) is sklearn's objective."""
    a, batch, lr = 1.0, 16, 0.1  # 64 samples: four full batches
    labels = lambda x: (x[:, 0] + x[:, 1] > 0).astype(int)  # noqa: E731
    run = lambda lam: _one_sgd_epoch_against_sklearn(MLPClassifier, labels, "binary_crossentropy", "sigmoid",  # noqa: E731
                                                     lam, lr, a, lr, batch)
    assert run(a / (2 * batch)) < 1e-12  # the same four SGD steps, to float64 rounding
    assert run(0.0) > 1e-2  # the penalty matters here ...
    assert run(a) > 1e-1  # ... and reglab alpha = sklearn alpha is a much stronger one


def test_alpha_against_scikit_learn_mlp_regressor():
    """sklearn's regressor halves its squared error too: alpha = sklearn alpha / batch_size, at half
    sklearn's learning rate, gives the same SGD steps (for 1-D y)."""
    a, batch, lr = 1.0, 16, 0.1
    target = lambda x: x @ np.array([1.0, -2.0, 0.5])  # noqa: E731
    run = lambda lam, lr_reglab: _one_sgd_epoch_against_sklearn(MLPRegressor, target, "mse", None, lam,  # noqa: E731
                                                                lr_reglab, a, lr, batch)
    assert run(a / batch, lr / 2) < 1e-12
    assert run(a / (2 * batch), lr / 2) > 1e-3  # the classifier's factor is wrong here


def test_grid_search_over_alpha():
    x, y, _, _ = blobs()
    grid = GridSearchCV(RegularizedMLPClassifier(hidden_layer_sizes=(16,), epochs=15, learning_rate=0.01, random_state=0),
                        {"alpha": [0.0, 1e-4, 10.0]}, cv=3, scoring="neg_log_loss")
    grid.fit(x, y.ravel())
    scores = grid.cv_results_["mean_test_score"]
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    assert grid.best_params_["alpha"] in (0.0, 1e-4)  # alpha=10 flattens the model: log-loss near log 2
    assert scores[2] < min(scores[:2]) - 0.05
    assert scores[2] == pytest.approx(-np.log(2), abs=0.02)
    assert grid.best_estimator_.alpha == grid.best_params_["alpha"]
    assert sorted(reglab.penalties(grid.best_estimator_.model_)) == (
        [] if grid.best_params_["alpha"] == 0.0 else ["0.weight", "1.weight"])


def test_randomized_search_over_log_uniform_alpha():
    x, y = make_regression(n_samples=200, n_features=5, noise=5.0, random_state=0)
    y = (y - y.mean()) / y.std()
    search = RandomizedSearchCV(
        RegularizedMLPRegressor(hidden_layer_sizes=(16,), epochs=20, learning_rate=0.01, random_state=0),
        {"alpha": loguniform(1e-4, 1e1)}, n_iter=4, cv=3, random_state=3)
    search.fit(x, y)
    alphas = np.array(search.cv_results_["param_alpha"], dtype=float)
    scores = search.cv_results_["mean_test_score"]
    assert alphas.shape == (4,) and np.all((1e-4 <= alphas) & (alphas <= 1e1)) and len(set(alphas)) == 4
    assert np.all(np.isfinite(scores))
    order = np.argsort(alphas)  # samples ~0.003, 0.036, 0.057, 0.35: more L2, lower R²
    assert np.all(np.diff(scores[order]) < 0)
    assert search.best_params_["alpha"] == alphas.min()
    assert scores[order[0]] > 0.95 and scores[order[-1]] < 0.9


# ----------------------------------------------------------------------------- regressor


def test_regressor_fits_make_regression_1d_and_2d():
    x, y = make_regression(n_samples=200, n_features=5, n_targets=2, noise=5.0, random_state=0)
    y = (y - y.mean(0)) / y.std(0)
    xtr, ytr, xte, yte = x[:150], y[:150], x[150:], y[150:]
    kw = dict(hidden_layer_sizes=(16,), epochs=30, learning_rate=0.01, random_state=0)
    one = RegularizedMLPRegressor(**kw).fit(xtr, ytr[:, 0])
    p1 = one.predict(xte)
    assert p1.shape == (50,) and p1.dtype == np.float64
    assert one.n_outputs_ == 1 and one.n_iter_ == 30 and len(one.history_) == 30
    assert one.score(xte, yte[:, 0]) > 0.97  # R² on held-out data (noise-free ceiling ~0.998)
    assert one.history_["loss"][-1] < 0.1 * one.history_["loss"][0]
    two = RegularizedMLPRegressor(**kw).fit(xtr, ytr)
    p2 = two.predict(xte)
    assert p2.shape == (50, 2) and p2.dtype == np.float64 and two.n_outputs_ == 2
    assert two.score(xte, yte) > 0.97
    # a column y trains the same one-output model as a 1-D y, but predicts a column
    col = RegularizedMLPRegressor(**kw).fit(xtr, ytr[:, :1])
    assert col.predict(xte).shape == (50, 1)
    np.testing.assert_array_equal(col.predict(xte)[:, 0], p1)
    # a strong alpha shrinks the kernels and costs fit quality
    strong = RegularizedMLPRegressor(alpha=1.0, **kw).fit(xtr, ytr[:, 0])
    norm = lambda est: sum(float((m.weight.detach() ** 2).sum()) for m in est.model_ if hasattr(m, "weight"))  # noqa: E731
    assert norm(strong) < 0.5 * norm(one)
    assert strong.score(xte, yte[:, 0]) < one.score(xte, yte[:, 0])


# ----------------------------------------------------------------------------- stopping (sklearn's rule)

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from reglab.sklearn import NoImprovement  # noqa: E402


def _sklearn_stop_epoch(losses, tol, n_iter_no_change):
    """The epoch (1-based) at which scikit-learn's own MLP rule stops on this training-loss curve
    (its ``_update_no_improvement_count`` run on a real ``MLPClassifier``), and its ``best_loss_``."""
    sk = MLPClassifier(tol=tol, n_iter_no_change=n_iter_no_change)
    sk.loss_curve_, sk.best_loss_, sk._no_improvement_count = [], np.inf, 0
    for i, v in enumerate(losses):
        sk.loss_curve_.append(v)
        sk._update_no_improvement_count(False, None, None, None)
        if sk._no_improvement_count > sk.n_iter_no_change:
            return i + 1, sk.best_loss_
    return None, sk.best_loss_


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.5, 0.4999, 0.49, 0.45, 0.4, 0.41, float("nan"), 0.3]), min_size=1, max_size=40),
       st.sampled_from([0.0, 1e-4, 0.02]), st.integers(1, 4))
def test_stopping_rule_is_sklearns(losses, tol, n):
    """``NoImprovement`` stops at the epoch scikit-learn's rule stops, with its best; on scores
    (higher is better: the negated losses) it stops at the same epoch."""
    want, best = _sklearn_stop_epoch(losses, tol, n)
    for higher, sign in ((False, 1.0), (True, -1.0)):
        rule, got = NoImprovement(tol, n, higher=higher), None
        for i, v in enumerate(losses):
            if rule.update(sign * v)[0]:
                got = i + 1
                break
        assert got == want
        assert sign * rule.best == best


def test_training_loss_plateau_stops_as_mlpclassifier_does():
    """Default parameters (early_stopping=False, tol=1e-4, n_iter_no_change=10): a large learning
    rate makes the loss plateau; training stops there, as MLPClassifier's does on the same data,
    and n_iter_no_change=inf trains every epoch."""
    x, y, _, _ = blobs()
    kw = dict(hidden_layer_sizes=(32, 32), learning_rate=0.01, batch_size=32, random_state=0)
    est = RegularizedMLPClassifier(epochs=200, **kw).fit(x, y.ravel())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sk = MLPClassifier(max_iter=200, learning_rate_init=0.01, hidden_layer_sizes=(32, 32), batch_size=32,
                           random_state=0).fit(x, y.ravel())
    assert sk.n_iter_ < 200 and est.n_iter_ < 200  # both stop on the plateau
    assert est.n_iter_ == len(est.loss_curve_) == len(est.history_)
    assert est.best_loss_ == min(est.loss_curve_) and est.validation_scores_ is None
    assert est.best_validation_score_ is None
    # the last n_iter_no_change + 1 epochs never beat the best before them by tol
    before = min(est.loss_curve_[:-11])
    assert all(v > before - 1e-4 for v in est.loss_curve_[-11:])
    full = RegularizedMLPClassifier(epochs=est.n_iter_ + 5, n_iter_no_change=np.inf, **kw).fit(x, y.ravel())
    assert full.n_iter_ == est.n_iter_ + 5
    assert full.loss_curve_[:est.n_iter_] == est.loss_curve_  # the same run, only longer


@pytest.mark.parametrize("cls", [RegularizedMLPClassifier, RegularizedMLPRegressor])
def test_early_stopping_holds_out_a_split_and_restores_the_best_epoch(cls):
    rng = np.random.default_rng(0)
    if cls is RegularizedMLPClassifier:
        x, y, xt, yt = blobs()
        y, yt = y.ravel(), yt.ravel()
    else:
        x = rng.normal(size=(300, 4))
        y = x @ np.array([1.0, -0.5, 0.25, 0.0]) + 0.5 * rng.normal(size=300)
        x, y, xt, yt = x[:240], y[:240], x[240:], y[240:]
    kw = dict(hidden_layer_sizes=(32, 32), learning_rate=0.01, batch_size=16, epochs=150, random_state=0)
    est = cls(early_stopping=True, validation_fraction=0.2, n_iter_no_change=5, **kw).fit(x, y)
    assert est.n_iter_ < 150 and est.best_loss_ is None
    assert len(est.validation_scores_) == est.n_iter_ == len(est.history_)
    assert est.best_validation_score_ == max(est.validation_scores_)
    # the weights kept are the best epoch's: the held-out split scores best_validation_score_ again
    from sklearn.model_selection import train_test_split
    strat = y if cls is RegularizedMLPClassifier else None
    _, xv, _, yv = train_test_split(x, y, random_state=0, test_size=0.2, stratify=strat)
    assert est.score(xv, yv) == pytest.approx(est.best_validation_score_, abs=1e-12)
    last = est.validation_scores_[-1]
    best_i = int(np.argmax(est.validation_scores_))
    assert best_i < est.n_iter_ - 1 or last == est.best_validation_score_
    # scikit-learn's own MLP stops early on the same data and settings too
    sk_cls = MLPClassifier if cls is RegularizedMLPClassifier else MLPRegressor
    sk = sk_cls(hidden_layer_sizes=(32, 32), learning_rate_init=0.01, batch_size=16, max_iter=150, random_state=0,
                early_stopping=True, validation_fraction=0.2, n_iter_no_change=5).fit(x, y)
    assert sk.n_iter_ < 150
    assert est.score(xt, yt) > sk.score(xt, yt) - 0.05  # and it does no worse on the test points


@pytest.mark.parametrize("kw, what", [
    (dict(early_stopping="yes"), "early_stopping must be True or False"),
    (dict(validation_fraction=1.0), "validation_fraction must lie in [0, 1)"),
    (dict(n_iter_no_change=0), "n_iter_no_change must be a positive integer"),
    (dict(n_iter_no_change=2.5), "n_iter_no_change must be a positive integer"),
    (dict(tol=-1.0), "tol must be a non-negative finite number"),
    (dict(early_stopping=True, validation_fraction=0.01), "The validation set is too small"),
    (dict(early_stopping=True, validation_fraction=0.0), "validation_fraction must be above 0 with early_stopping=True"),
])
@pytest.mark.parametrize("cls", [RegularizedMLPClassifier, RegularizedMLPRegressor])
def test_stopping_parameters_are_checked_in_fit(kw, what, cls):
    x, y, _, _ = blobs()
    est = cls(epochs=1, **kw)  # constructing is fine (sklearn: checks in fit)
    if cls is RegularizedMLPClassifier and "too small" in what:
        what = "The test_size = 1 should be greater or equal to the number of classes = 2"  # sklearn's own
    with pytest.raises(ValueError, match=__import__("re").escape(what)):
        est.fit(x[:50], y[:50].ravel())


def test_hidden_layer_sizes_may_be_an_int_as_in_sklearn():
    x, y, _, _ = blobs()
    est = RegularizedMLPClassifier(hidden_layer_sizes=16, epochs=2, random_state=0).fit(x, y.ravel())
    assert [m.out_features for m in est.model_ if hasattr(m, "out_features")] == [16, 1]
