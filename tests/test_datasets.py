import numpy as np
import pytest
from sklearn.datasets import make_blobs, make_circles, make_moons

from reglab import datasets as D


def test_blobs_is_the_lecture_data():
    ds = D.blobs(random_state=0)
    assert ds.x_train.shape == (225, 2) and ds.x_test.shape == (75, 2)
    assert ds.y_train.dtype == np.float32 and ds.y_train.shape == (225, 1)
    x, y = make_blobs(n_samples=300, n_features=2, centers=[[0.0, 0.0], [0.5, 0.1]], cluster_std=0.25,
                      center_box=(-1.0, 1.0), random_state=0)
    assert sorted(map(tuple, np.vstack([ds.x_train, ds.x_test]))) == sorted(map(tuple, x))
    assert ds.y_train.sum() + ds.y_test.sum() == y.sum() == 150


def test_blobs_bayes_reference_golden():
    dist = D.blobs().distribution
    assert dist.bayes_accuracy == pytest.approx(0.846, abs=5e-4)
    assert dist.bayes_log_loss == pytest.approx(0.347, abs=5e-4)


def test_closed_form_bayes_log_loss_matches_monte_carlo():
    dist = D.TwoGaussians()
    x, y = make_blobs(n_samples=400_000, centers=[[0, 0], [0.5, 0.1]], cluster_std=0.25, random_state=7)
    p = np.clip(dist.posterior(x), 1e-7, 1 - 1e-7)
    ll = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    se = ll.std() / np.sqrt(ll.size)
    assert abs(ll.mean() - dist.bayes_log_loss) < 4 * se
    acc = ((p > 0.5) == y).mean()
    assert abs(acc - dist.bayes_accuracy) < 4 * np.sqrt(acc * (1 - acc) / y.size)


@pytest.mark.parametrize(
    "dist, make",
    [
        (D.TwoGaussians(), lambda n, s: make_blobs(n_samples=n, centers=[[0, 0], [0.5, 0.1]], cluster_std=0.25, random_state=s)),
        (D.Moons(0.2), lambda n, s: make_moons(n_samples=n, noise=0.2, random_state=s)),
        (D.Circles(0.1, 0.5), lambda n, s: make_circles(n_samples=n, noise=0.1, factor=0.5, random_state=s)),
        (D.Moons(0.35), lambda n, s: make_moons(n_samples=n, noise=0.35, random_state=s)),
    ],
    ids=["blobs", "moons", "circles", "noisy-moons"],
)
def test_posterior_is_calibrated_on_scikit_learn_samples(dist, make):
    """Monte Carlo check of the quadrature posterior: among sklearn's points with posterior in a
    bin, the fraction of class 1 equals the mean posterior (within sampling error)."""
    x, y = make(120_000, 3)
    p = dist.posterior(x)
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(p, edges) - 1, 0, 9)
    for b in range(10):
        sel = which == b
        if sel.sum() < 500:
            continue
        freq, mean_p = y[sel].mean(), p[sel].mean()
        se = np.sqrt(max(mean_p * (1 - mean_p), 1e-4) / sel.sum())
        assert abs(freq - mean_p) < 5 * se + 2e-3, (b, freq, mean_p)
    # and the posterior is informative: Bayes accuracy well above chance
    assert ((p > 0.5) == y).mean() > 0.8


def test_excess_risk_of_the_bayes_rule_is_zero_and_of_a_coin_is_positive():
    ds = D.blobs(0)
    dist = ds.distribution
    q = dist.posterior(ds.x_test)
    assert dist.excess_risk(ds.x_test, ds.y_test, q) == {"log_loss": 0.0, "accuracy": 0.0}
    coin = dist.excess_risk(ds.x_test, ds.y_test, np.full(75, 0.5))
    assert coin["log_loss"] > 0.2


def test_seed_changes_draw_and_split():
    a, b = D.blobs(1), D.blobs(2)
    assert not np.array_equal(a.x_train, b.x_train)
    assert np.array_equal(D.moons(3).x_test, D.moons(3).x_test)


def test_npz_round_trip(tmp_path):
    for ds in (D.blobs(4), D.circles(1), D.digits(0)):
        ds.save(tmp_path / f"{ds.name}.npz")
        back = D.load(tmp_path / f"{ds.name}.npz")
        for k in ("x_train", "y_train", "x_test", "y_test"):
            assert np.array_equal(getattr(back, k), getattr(ds, k))
        assert type(back.distribution) is type(ds.distribution)
    assert D.digits().x_train.shape[1] == 64 and D.digits().x_train.max() <= 1.0
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        D.get("mnist")


def test_sparse_autoencoder_acceptance(tmp_path):
    """The lecture study's KL autoencoder: mean code activation within [rho/2, 2 rho] (its setting)."""
    from pathlib import Path

    from reglab.experiments.code import resolve

    run_autoencoder, _, _ = resolve("autoencoder.py:run", Path(__file__).parents[1] / "studies" / "lecture", "test")
    RHO = run_autoencoder.__globals__["RHO"]
    doc = run_autoencoder(tmp_path)
    kl = doc["models"]["kl_sparsity"]["mean_code_activation"]
    assert RHO / 2 <= kl <= 2 * RHO and doc["kl_within_target"]
    assert doc["models"]["none"]["mean_code_activation"] > 4 * RHO  # the unregularized code is not sparse
    assert doc["models"]["kl_sparsity"]["reconstruction_mse"] < doc["models"]["l1_activity"]["reconstruction_mse"]
    assert (tmp_path / "figures" / "autoencoder_features.png").is_file()
