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
