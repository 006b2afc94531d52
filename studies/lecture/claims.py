"""The lecture's own report sections: its Model A/B example and its claims, checked against the
study's runs. Each function takes ``(results DataFrame, runs, out)`` and returns paragraphs
(a list of strings is a bulleted list) -- see ``reglab.experiments.study``."""

from __future__ import annotations

import numpy as np

from reglab import load_comparisons
from reglab.diagnostics import compare_predictions
from reglab.diagnostics.statistics import binomial_ci, paired_comparison
from reglab.report.summary import selection_by_loss_vs_accuracy, summarize

# the lecture's ten validation points and two models' predicted probabilities
Y = [1, 0, 0, 1, 0, 1, 1, 0, 1, 0]
MODEL_A = [0.51, 0.49, 0.3, 0.7, 0.4, 0.6, 0.6, 0.4, 0.6, 0.3]
MODEL_B = [0.9, 0.6, 0.1, 0.9, 0.1, 0.8, 0.9, 0.2, 0.8, 0.1]


def _ci(stat, digits=3):
    m, lo, hi = stat
    return f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}" if np.isfinite(lo) else f"{m:.{digits}f}"


def model_a_b(frame, runs, out):
    r = compare_predictions(Y, MODEL_A, MODEL_B)
    paras = [f"The lecture's Model A gets every one of 10 validation points right (accuracy {r['a']['accuracy']:.2f}) "
             f"but barely: its log-loss is {r['a']['log_loss']:.4f}. Model B misses one (accuracy "
             f"{r['b']['accuracy']:.2f}) and is confident and right elsewhere: log-loss {r['b']['log_loss']:.4f}. B is "
             "the better model: `reglab.diagnostics.compare_predictions` reproduces the lecture's 0.50 vs 0.22."]
    sel = selection_by_loss_vs_accuracy(summarize(runs))
    if sel:
        d = sel["difference"]
        paras.append(
            f"The same point on this study's own models: for each of {sel['seeds']} seeds (one split each) the "
            f"{sel['models_per_seed']} models trained on it were ranked on their 75 validation points. Picking the "
            f"lowest validation loss gives a fresh-sample excess log-loss of {_ci(sel['by_loss_excess'], 4)} "
            f"(accuracy {_ci(sel['by_loss_accuracy'])}); picking the highest validation accuracy gives "
            f"{_ci(sel['by_accuracy_excess'], 4)} (accuracy {_ci(sel['by_accuracy_accuracy'])}); paired difference "
            f"{d.mean_difference:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}], p = {d.p_value:.2g} ({d.verdict}). "
            f"Rank agreement with the fresh excess log-loss (Kendall tau, mean over seeds): validation loss "
            f"{_ci(sel['tau_loss'], 2)}, validation accuracy {_ci(sel['tau_accuracy'], 2)}.")
    return paras


def _n_overfitting(runs):
    return sum(r.get("overfitting", {}).get("verdict", "").startswith("overfitting") for r in runs)


def claims(frame, runs, out):
    summ = summarize(runs)
    rows = summ.ordered()
    items = []
    any_m = next(r["metrics"] for r in runs if "bayes_accuracy" in r["metrics"])
    items.append(f"**Bayes limit.** On the lecture's data the best possible accuracy is {any_m['bayes_accuracy']:.3f} "
                 f"and the best possible log-loss {any_m['bayes_log_loss']:.3f} (closed form: 0.846 and 0.347). No "
                 "model can do better on average.")
    for e in rows:
        ref = e.config.get("reference", {})
        if "accuracy" not in ref:
            continue
        n = ref.get("n", 75)
        k = int(round(ref["accuracy"] * n))
        lo, hi = binomial_ci(k, n)
        inside = lo <= any_m["bayes_accuracy"] <= hi
        acc = e.stats.get("test_accuracy")
        items.append(f"**{ref.get('label', e.name).capitalize()}** reported accuracy {ref['accuracy']:.2f} on {n} test "
                     f"points ({k}/{n}): its 95% Wilson interval [{lo:.2f}, {hi:.2f}] "
                     f"{'contains' if inside else 'does not contain'} the Bayes accuracy -- "
                     f"{'one split cannot tell it from the best possible classifier, nor from the other programs' if inside else 'surprising'}."
                     + (f" Over {len(e.finished)} seeds reglab measures {_ci(acc)}." if acc else ""))
    comp = load_comparisons(out)  # the report's own comparisons, written before its sections
    own = comp[(comp["metric"] == "excess_log_loss") & (comp["comparison"] == "own baseline")]
    by = {v: sorted(own.loc[own["verdict"] == v, "experiment"]) for v in ("better", "worse", "equivalent",
                                                                          "inconclusive")}
    names = {v: ", ".join(f"`{x}`" for x in xs) or "none" for v, xs in by.items()}
    items.append("**\"Regularization helps\"** (the lecture's accuracies 0.84-0.87): on the fresh-sample excess "
                 f"log-loss, {len(by['better'])} experiment(s) are better than their own baseline ({names['better']}), "
                 f"{len(by['worse'])} worse ({names['worse']}), {len(by['equivalent'])} equivalent to it within the "
                 f"margin ({names['equivalent']}) and {len(by['inconclusive'])} inconclusive ({names['inconclusive']}) "
                 "-- the verdicts of `comparisons.csv`. Accuracy differences of 0.01-0.03 between programs are within "
                 "the noise of 75 test points.")
    for b in [e for e in rows if e.is_baseline]:
        n_over = _n_overfitting(b.finished)
        rises = [r.get("overfitting", {}).get("rise_after_best", np.nan) for r in b.finished]
        items.append(f"**Overfitting of the deep MLP** (`{b.name}`, {b.title}): in {n_over}/{len(b.finished)} seeds the "
                     f"validation data loss bottoms out and then rises by more than 5% (median rise "
                     f"{100 * np.nanmedian(rises):.0f}%) while the training loss keeps falling -- the lecture's picture "
                     f"{'holds' if n_over > len(b.finished) / 2 else 'holds only for some seeds'} on this schedule.")
    reg_rows = [f"`{e.name}` {_n_overfitting(e.finished)}/{len(e.finished)} (baseline "
                f"{_n_overfitting(summ.rows[e.baseline].finished)}/{len(summ.rows[e.baseline].finished)})"
                for e in rows if e.baseline in summ.rows]
    if reg_rows:
        items.append("**\"With regularization both training and validation losses keep decreasing\"** (the lecture's "
                     "second picture). Seeds whose validation data loss rose more than 5% after its minimum: "
                     + "; ".join(reg_rows) + ". Where the count stays high, the regularizer did not remove the "
                     "overfitting at the lecture's strength.")
    by = {e.name: e for e in rows}
    if "p2_layer_regularizers" in by:
        items.append("**L1L2(0.001) is pure L1.** Keras's `L1L2(l1=0.0, l2=0.0)` takes l1 first, so the lecture's "
                     "\"L1L2\" layers in program 2 carry no L2 term at all; reglab follows Keras "
                     "(`L1L2(0.001).get_config() == {'l1': 0.001, 'l2': 0.0}`).")
        e = by["p2_layer_regularizers"]
        ws = [r for r in e.finished if "weights" in r]
        if ws:
            l1 = np.concatenate([np.asarray(r["weights"]["0.weight"] + r["weights"]["3.weight"]) for r in ws])
            l2 = np.concatenate([np.asarray(r["weights"]["1.weight"]) for r in ws])
            items.append(f"**Weights under L1 and under L2 (program 2)**, pooled over {len(ws)} seeds: below 1e-3, L1 "
                         f"layers 0 and 3 {100 * np.mean(l1 < 1e-3):.0f}%, L2 layer 1 {100 * np.mean(l2 < 1e-3):.0f}%; "
                         f"below 1e-8: {100 * np.mean(l1 < 1e-8):.0f}% and {100 * np.mean(l2 < 1e-8):.0f}%. Under Adam "
                         "an L1 penalty does not produce exact zeros: its constant-size gradient makes small weights "
                         "oscillate around 0 at roughly the learning-rate scale (the weight histograms below).")
    if "p7_kl_sparsity" in by:
        e = by["p7_kl_sparsity"]
        means = [r["sparsity"]["layers"]["4"]["mean_activation"] for r in e.finished if "sparsity" in r]
        if means:
            m = float(np.mean(means))
            items.append(f"**KL sparsity (program 7)** asks the last hidden layer for a mean activation of rho = 0.05; "
                         f"it reaches {m:.3f} on average over seeds. Keras divides every activity penalty by the batch "
                         "size, so strength 0.1 acts as 0.1/50 = 0.002 per KL unit: "
                         f"{'the constraint is met' if m <= 0.1 else 'too weak to enforce rho on this network'} "
                         "(the autoencoder section shows a strength that does enforce it).")
    pairs = [("x_adamw_decay", "x_l2_in_loss_adam",
              "**AdamW is not L2 under Adam.** At the strength where they coincide under SGD (wd = 2 lambda), "
              "decoupled decay minus L2-in-the-loss on the fresh excess log-loss: "),
             ("x_adamw_kernels", "x_adamw_decay",
              "**AdamW on the kernels only, or on everything?** Decaying the kernels alone (the biases not decayed) "
              "minus decaying every parameter, on the fresh excess log-loss: ")]
    for one, other, text in pairs:
        c = _paired(by, one, other, "excess_log_loss")
        if c is not None:
            items.append(f"{text}{c.mean_difference:+.4f} [{c.ci_low:+.4f}, {c.ci_high:+.4f}], p = {c.p_value:.2g} "
                         f"({c.verdict}).")
    return [items]


def _paired(by, one: str, other: str, metric: str):
    """The paired comparison of experiment ``one`` minus ``other`` on ``metric`` over their common
    seeds, or None where either is missing or fewer than two seeds are common."""
    if one not in by or other not in by:
        return None
    a, b = by[one].by_seed(metric), by[other].by_seed(metric)
    common = sorted(set(a) & set(b))
    return paired_comparison([a[s] for s in common], [b[s] for s in common]) if len(common) > 1 else None
