import numpy as np
import pytest
import torch

from reglab import History
from reglab.diagnostics import (compare_predictions, evaluate, holm, mean_ci, overfitting, paired_comparison, sparsity,
                                with_adjusted)


Y = [1, 0, 0, 1, 0, 1, 1, 0, 1, 0]
A = [0.51, 0.49, 0.3, 0.7, 0.4, 0.6, 0.6, 0.4, 0.6, 0.3]
B = [0.9, 0.6, 0.1, 0.9, 0.1, 0.8, 0.9, 0.2, 0.8, 0.1]


def test_lecture_model_a_model_b_golden():
    r = compare_predictions(Y, A, B)
    assert r["a"]["accuracy"] == 1.0 and r["b"]["accuracy"] == 0.9
    assert r["a"]["log_loss"] == pytest.approx(0.4971, abs=1e-4)
    assert r["b"]["log_loss"] == pytest.approx(0.2218, abs=1e-4)
    assert r["b"]["log_loss"] < r["a"]["log_loss"]  # B is the better model despite lower accuracy


def test_evaluate_uses_the_same_names():
    model = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Sigmoid())
    with torch.no_grad():
        model[0].weight.fill_(0.0)
        model[0].bias.fill_(0.0)  # p = 0.5 everywhere
    res = evaluate(model, np.zeros((4, 1)), np.array([[1.0], [0.0], [1.0], [0.0]]))
    assert res["log_loss"] == pytest.approx(np.log(2), rel=1e-6) and res["loss"] == res["log_loss"]
    assert res["accuracy"] == 0.5  # p > 0.5 is False -> predicts 0


def hist(val, train):
    h = History()
    for i, (v, t) in enumerate(zip(val, train)):
        h.append(i, {"val_data_loss": v, "data_loss": t, "loss": t})
    return h


def test_overfitting_verdicts():
    over = overfitting(hist([0.7, 0.5, 0.4, 0.45, 0.55, 0.6], [0.7, 0.5, 0.35, 0.25, 0.2, 0.15]))
    assert over.verdict == "overfitting after epoch 2" and over.best_epoch == 2
    assert over.gap_final == pytest.approx(0.45) and over.rise_after_best == pytest.approx(0.5)
    good = overfitting(hist([0.7, 0.5, 0.41, 0.40, 0.40, 0.405], [0.7, 0.5, 0.4, 0.39, 0.38, 0.38]))
    assert good.verdict == "good"
    under = overfitting(hist([0.70, 0.69, 0.69, 0.69], [0.70, 0.69, 0.69, 0.68]))
    assert under.verdict == "underfit"
    still = overfitting(hist([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], [0.9, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]))
    assert still.verdict == "underfit"  # validation loss still falling fast: train longer
    with pytest.raises(ValueError, match="needs a History with validation data"):
        overfitting(History())


def test_sparsity_on_a_known_model():
    lin = torch.nn.Linear(2, 3)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0]]))
        lin.bias.zero_()
    model = torch.nn.Sequential(lin, torch.nn.ReLU())
    x = np.array([[1.0, 5.0], [2.0, 5.0], [-1.0, 5.0], [0.5, 5.0]])
    s = sparsity(model, x, ["1"])
    layer = s["layers"]["1"]
    # unit 0 active on 3 of 4 points, unit 1 dead, unit 2 active on 1
    assert layer["dead_fraction"] == pytest.approx(1 / 3)
    assert layer["l0_per_example"] == pytest.approx(1.0)
    assert layer["mean_activation"] == pytest.approx((1 + 2 + 0.5 + 1) / 12)
    assert layer["below_threshold_fraction"] == pytest.approx(8 / 12)
    assert sum(layer["histogram"]["counts"]) == 12
    assert s["weights"]["0.weight"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match=r"layers \['encoder'\] are not modules"):
        sparsity(model, x, ["encoder"])


def test_mean_ci_golden():
    m, lo, hi = mean_ci([1.0, 2.0, 3.0, 4.0])
    # t(0.975, 3) = 3.182446, sd = 1.290994, se = 0.645497
    assert m == 2.5 and lo == pytest.approx(2.5 - 3.182446 * 0.645497, rel=1e-5) and hi == pytest.approx(2.5 + 2.054294, rel=1e-5)


def test_paired_verdicts_clear_difference_and_identical_pair():
    rng = np.random.default_rng(0)
    base = rng.normal(0.5, 0.05, 20)
    better = base - 0.05 + rng.normal(0, 0.005, 20)
    c = paired_comparison(better, base, n_comparisons=3)
    assert c.significant and c.verdict == "significant"
    assert c.mean_difference == pytest.approx(-0.05, abs=0.005) and c.ci_high < 0 and c.effect_size < -3
    same = paired_comparison(base, base)
    assert same.p_value == 1.0 and not same.significant and same.verdict == "not significant"
    noise = paired_comparison(base + rng.normal(0, 0.05, 20), base)
    assert noise.ci_low < 0 < noise.ci_high or not noise.significant


def test_holm_golden():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    c = with_adjusted(paired_comparison([1.0, 2.0, 3.0], [0.0, 1.0, 2.5]), 0.2)
    assert c.p_adjusted == 0.2 and c.verdict == "not significant"


def test_task_metrics_golden_values():
    """Binary, multiclass and regression scores against scikit-learn and hand-computed numbers."""
    from sklearn import metrics as sk

    from reglab.diagnostics.metrics import score, to_probabilities

    y = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0])
    p = np.array([0.51, 0.49, 0.3, 0.7, 0.4, 0.6, 0.6, 0.4, 0.6, 0.3])
    s = score("binary", y, p)
    assert s["log_loss"] == pytest.approx(sk.log_loss(y, p)) and s["log_loss"] == pytest.approx(0.4971, abs=1e-4)
    assert s["accuracy"] == 1.0 and s["brier"] == pytest.approx(sk.brier_score_loss(y, p))
    # ECE, 15 bins of the top-label confidence: every prediction right, mean confidence 0.589
    assert s["ece"] == pytest.approx(1 - np.maximum(p, 1 - p).mean())
    P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.4, 0.1]])
    yc = np.array([0, 1, 1, 0])
    s = score("multiclass", yc, P)
    assert s["log_loss"] == pytest.approx(sk.log_loss(yc, P, labels=[0, 1, 2]))
    assert s["accuracy"] == pytest.approx(0.75)
    assert s["brier"] == pytest.approx(np.mean(((P - np.eye(3)[yc]) ** 2).sum(1)))
    # bins: 0.7 (right), 0.8 (right), 0.4 (wrong), 0.5 (right), each its own bin -> mean |acc - conf|
    assert s["ece"] == pytest.approx((0.3 + 0.2 + 0.4 + 0.5) / 4)
    r = score("regression", np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.0, 2.0]))
    assert r == pytest.approx({"mse": (0.25 + 1) / 3, "mae": 0.5, "r2": sk.r2_score([1, 2, 3], [1.5, 2, 2])})
    z = np.array([[0.0, np.log(3.0)]])
    np.testing.assert_allclose(to_probabilities(z, "multiclass", True), [[0.25, 0.75]])
    np.testing.assert_allclose(to_probabilities(np.array([[0.0]]), "binary", True), [0.5])
