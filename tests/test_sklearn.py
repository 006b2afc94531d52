import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.utils.estimator_checks import parametrize_with_checks

import reglab
from reglab.sklearn import RegularizedMLPClassifier

from .lecture import blobs

# No expected failures: every scikit-learn check passes (small epochs keep the suite fast;
# learning_rate 0.01 lets 30 epochs reach the accuracy check_classifiers_train asks for).
FAST = dict(hidden_layer_sizes=(16,), epochs=30, learning_rate=0.01, batch_size=32, random_state=0)


@parametrize_with_checks([RegularizedMLPClassifier(**FAST)])
def test_sklearn_compatible(estimator, check):
    check(estimator)  # raises AssertionError (or the check's own error) on any incompatibility
    assert estimator.get_params()["epochs"] == 30  # checks work on clones; our instance is untouched


def test_binary_and_multiclass_with_any_label_type():
    x, y, xt, yt = blobs()
    labels = np.where(y.ravel() > 0, "yes", "no")
    clf = RegularizedMLPClassifier(epochs=40, learning_rate=0.01, random_state=0).fit(x, labels)
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
