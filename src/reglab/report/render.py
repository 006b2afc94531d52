"""The study report: ``report.md`` and a self-contained ``report.html`` (images embedded)."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import multiprocessing as mp
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics.evaluate import compare_predictions
from ..diagnostics.statistics import paired_comparison
from ..experiments.runner import load_results
from . import plots
from .summary import METRICS, Summary, lecture_accuracy_check, selection_by_loss_vs_accuracy, summarize

__all__ = ["write_report"]

LECTURE_Y = [1, 0, 0, 1, 0, 1, 1, 0, 1, 0]
LECTURE_A = [0.51, 0.49, 0.3, 0.7, 0.4, 0.6, 0.6, 0.4, 0.6, 0.3]
LECTURE_B = [0.9, 0.6, 0.1, 0.9, 0.1, 0.8, 0.9, 0.2, 0.8, 0.1]


class Doc:
    """A tiny document model rendered to both Markdown and HTML. Figures are registered as jobs
    (``figure``) and drawn together by ``draw`` -- in two processes when there are many."""

    def __init__(self) -> None:
        self.blocks: list[tuple[str, Any]] = []
        self.jobs: list[tuple[Any, tuple]] = []

    def figure(self, fn, *args) -> Path:
        """Schedule ``fn(*args)``, whose last argument is the PNG path it writes; return that path."""
        self.jobs.append((fn, args))
        return args[-1]

    def draw(self, workers: int = 2) -> None:
        if workers > 1 and len(self.jobs) > 8 and "fork" in mp.get_all_start_methods():
            # fork: the children need only matplotlib and the data already in memory
            with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
                for f in [pool.submit(fn, *args) for fn, args in self.jobs]:
                    f.result()
        else:
            for fn, args in self.jobs:
                fn(*args)
        self.jobs = []

    def h(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def img(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def markdown(self, root: Path) -> str:
        out = []
        for kind, b in self.blocks:
            if kind == "h":
                out.append("#" * b[0] + " " + b[1])
            elif kind == "p":
                out.append(b)
            elif kind == "ul":
                out.append("\n".join(f"- {i}" for i in b))
            elif kind == "table":
                header, rows = b
                out.append("| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n" +
                           "\n".join("| " + " | ".join(r) + " |" for r in rows))
            elif kind == "img":
                out.append(f"![{b[1]}]({b[0].relative_to(root).as_posix()})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
               "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
               "line-height:1.45;color:#222}table{border-collapse:collapse;font-size:13px;margin:1em 0}"
               "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}"
               "td:first-child,th:first-child,td:nth-child(2){text-align:left}img{max-width:100%}"
               "code{background:#f3f3f3;padding:0 3px}.sig{color:#0a6b0a;font-weight:600}</style></head><body>"]
        for kind, b in self.blocks:
            if kind == "h":
                out.append(f"<h{b[0]}>{_inline(b[1])}</h{b[0]}>")
            elif kind == "p":
                out.append(f"<p>{_inline(b)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b) + "</ul>")
            elif kind == "table":
                header, rows = b
                out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header) + "</tr>" +
                           "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows) +
                           "</table>")
            elif kind == "img":
                data = base64.b64encode(b[0].read_bytes()).decode()
                out.append(f"<p><img alt='{html.escape(b[1])}' src='data:image/png;base64,{data}'></p>")
        out.append("</body></html>")
        return "\n".join(out)


def _inline(text: str) -> str:
    """Escape, then the two Markdown marks the report uses: **bold** and `code`."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _ci(stat: tuple[float, float, float], digits: int = 3) -> str:
    m, lo, hi = stat
    if math.isnan(m):
        return "–"
    if math.isnan(lo):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def _cmp(c) -> str:
    if c is None:
        return "–"
    words = f"**{c.verdict}**" if c.significant else c.verdict
    return (f"{c.mean_difference:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}], p_Holm={c.p_adjusted:.2g}, "
            f"d={c.effect_size:+.2f}: {words}")


def write_report(out: str | Path, meta: dict | None = None) -> dict[str, Path]:
    """Read ``out/runs`` (and the autoencoder/path results if present) and write the report."""
    out = Path(out)
    rows = load_results(out)
    if not rows:
        raise ValueError(f"no finished runs under {out / 'runs'}; run `reglab run` first")
    summ = summarize(rows)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    meta = meta or (json.loads((out / "study.json").read_text()) if (out / "study.json").is_file() else {})
    doc = Doc()
    doc.h(1, "reglab study: what regularization really does to the lecture's deep MLP")
    n_seeds = sorted({len(e.runs) for e in summ.experiments.values()})
    doc.p(f"Every program of the lecture, re-run on PyTorch with reglab, each over {', '.join(map(str, n_seeds))} "
          "seeds. A seed sets the data draw and the 75/25 split, the initialization and the shuffling, so the "
          "intervals below include sampling noise. Intervals are 95% Student-t intervals of the mean over seeds. "
          "Each program is compared with the unregularized baseline of **its own schedule** (learning rate, epochs, "
          "batch size) on the same seeds and splits: paired differences, Holm-corrected p-values over the family of "
          "comparisons, Cohen's d_z. Excess risk is the model's log-loss minus the Bayes-optimal log-loss on the same "
          "points (the data's distribution is known), on a fresh sample of 100,000 points.")
    _section_ab(doc, summ)
    _section_table(doc, summ)
    _section_claims(doc, summ)
    _section_programs(doc, summ, out, figs)
    _section_sparsity(doc, summ, figs)
    _section_weights(doc, summ, figs)
    _section_extra(doc, out, figs, "autoencoder.json", _autoencoder)
    _section_extra(doc, out, figs, "path.json", _path)
    _section_env(doc, meta, summ)
    doc.draw()
    md = out / "report.md"
    md.write_text(doc.markdown(out))
    page = out / "report.html"
    page.write_text(doc.html("reglab study report"))
    return {"markdown": md, "html": page}


def _section_ab(doc: Doc, summ: Summary) -> None:
    r = compare_predictions(LECTURE_Y, LECTURE_A, LECTURE_B)
    doc.h(2, "Why validation loss, not accuracy, ranks models")
    doc.p(f"The lecture's Model A gets every one of 10 validation points right (accuracy {r['a']['accuracy']:.2f}) but "
          f"barely: its log-loss is {r['a']['log_loss']:.4f}. Model B misses one (accuracy {r['b']['accuracy']:.2f}) and "
          f"is confident and right elsewhere: log-loss {r['b']['log_loss']:.4f}. B is the better model: "
          "`reglab.diagnostics.compare_predictions` reproduces the lecture's 0.50 vs 0.22. The tables below therefore "
          "rank by validation loss and excess risk; accuracy is shown, with its noise.")
    sel = selection_by_loss_vs_accuracy(summ)
    if sel:
        d = sel["difference"]
        doc.p(f"The same point on this study's own models: for each of {sel['seeds']} seeds (one split each) the "
              f"{sel['models_per_seed']} models trained on it were ranked on their 75 validation points. Picking the "
              f"lowest validation loss gives a fresh-sample excess log-loss of {_ci(sel['by_loss_excess'], 4)} "
              f"(accuracy {_ci(sel['by_loss_accuracy'])}); picking the highest validation accuracy gives "
              f"{_ci(sel['by_accuracy_excess'], 4)} (accuracy {_ci(sel['by_accuracy_accuracy'])}); paired difference "
              f"{d.mean_difference:+.4f} [{d.ci_low:+.4f}, {d.ci_high:+.4f}], p = {d.p_value:.2g} ({d.verdict}). "
              f"Rank agreement with the fresh excess log-loss (Kendall tau, mean over seeds): validation loss "
              f"{_ci(sel['tau_loss'], 2)}, validation accuracy {_ci(sel['tau_accuracy'], 2)}.")


def _section_table(doc: Doc, summ: Summary) -> None:
    doc.h(2, "Results over seeds")
    header = ["experiment", "title", "val data loss", "test accuracy", "excess log-loss (fresh)", "lecture acc.",
              "seed 0 acc. (one split)", "Δ val data loss vs baseline"]
    rows = []
    for e in summ.ordered():
        lec = e.config.get("lecture", {}).get("accuracy")
        seed0 = e.by_seed("test_accuracy").get(0)
        rows.append([f"`{e.name}`", e.title, _ci(e.stats["val_data_loss"]), _ci(e.stats["test_accuracy"]),
                     _ci(e.stats["excess_log_loss"], 4), f"{lec:.2f}" if lec is not None else "",
                     f"{seed0:.3f}" if seed0 is not None else "",
                     _cmp(e.comparisons.get("val_data_loss")) if e.baseline else "(baseline)"])
    doc.table(header, rows)
    doc.p("\"seed 0 acc.\" is the lecture's view: one fixed split (data seed 0), one initialization, one number "
          "on 75 test points -- compare its spread across rows with the intervals beside it.")
    doc.h(3, "Paired comparisons with the schedule's baseline, on the other metrics")
    rows = []
    for e in summ.ordered():
        if not e.baseline:
            continue
        rows.append([f"`{e.name}`", f"`{e.baseline}`", _cmp(e.comparisons.get("test_accuracy")),
                     _cmp(e.comparisons.get("excess_log_loss"))])
    doc.table(["experiment", "baseline", "Δ test accuracy", "Δ excess log-loss (fresh sample)"], rows)


def _section_claims(doc: Doc, summ: Summary) -> None:
    doc.h(2, "The lecture's claims, checked")
    items = []
    exps = summ.experiments
    any_run = next(iter(exps.values())).runs[0]["metrics"]
    bayes_acc = any_run.get("fresh_bayes_accuracy")
    bayes_ll = any_run.get("fresh_bayes_log_loss")
    if bayes_acc is not None:
        items.append(f"**Bayes limit.** On the lecture's data the best possible accuracy is {bayes_acc:.3f} and the best "
                     f"possible log-loss {bayes_ll:.3f} (closed form: 0.846 and 0.347). No model can do better on average.")
    for e in summ.ordered():
        lec = e.config.get("lecture", {}).get("accuracy")
        if lec is None:
            continue
        chk = lecture_accuracy_check(lec)
        m = e.stats["test_accuracy"][0]
        inside = chk["low"] <= (bayes_acc or 0.846) <= chk["high"]
        items.append(
            f"**Program {e.program}** reported accuracy {lec:.2f} on 75 test points ({chk['correct']}/75): its 95% "
            f"Wilson interval is [{chk['low']:.2f}, {chk['high']:.2f}], which "
            f"{'contains' if inside else 'does not contain'} the Bayes accuracy -- "
            f"{'one split cannot tell it from the best possible classifier, nor from the other programs' if inside else 'surprising'}. "
            f"Over {len(e.runs)} seeds reglab measures {_ci(e.stats['test_accuracy'])}.")
    # regularization helps?
    helped = [e for e in summ.ordered() if (c := e.comparisons.get("val_data_loss")) and c.significant and c.mean_difference < 0]
    hurt = [e for e in summ.ordered() if (c := e.comparisons.get("val_data_loss")) and c.significant and c.mean_difference > 0]
    noise = [e for e in summ.ordered() if (c := e.comparisons.get("val_data_loss")) and not c.significant]
    items.append("**\"Regularization helps\"** (the lecture's accuracies 0.84-0.87): on validation data loss, "
                 f"{len(helped)} experiment(s) are significantly better than their baseline "
                 f"({', '.join(f'`{e.name}`' for e in helped) or 'none'}), {len(hurt)} significantly worse "
                 f"({', '.join(f'`{e.name}`' for e in hurt) or 'none'}) and {len(noise)} indistinguishable from it "
                 f"({', '.join(f'`{e.name}`' for e in noise) or 'none'}). Accuracy differences of 0.01-0.03 between "
                 "programs are within the noise of 75 test points.")
    acc_sig = [e for e in summ.ordered() if (c := e.comparisons.get("test_accuracy")) and c.significant]
    items.append(f"On test accuracy, {len(acc_sig)} experiment(s) differ significantly from their baseline "
                 f"({', '.join(f'`{e.name}`' for e in acc_sig) or 'none'}).")
    for b in [e for e in summ.ordered() if e.config.get("baseline")]:
        n_over = _n_overfitting(b.runs)
        rises = [r.get("overfitting", {}).get("rise_after_best", np.nan) for r in b.runs]
        items.append(f"**Overfitting of the deep MLP** (`{b.name}`): in {n_over}/{len(b.runs)} seeds the validation data "
                     f"loss bottoms out and then rises by more than 5% (median rise {100 * np.nanmedian(rises):.0f}%) "
                     "while the training loss keeps falling -- the lecture's picture "
                     f"{'holds' if n_over > len(b.runs) / 2 else 'holds only for some seeds'} on this schedule.")
    reg_rows = []
    for e in summ.ordered():
        if not e.baseline or e.baseline not in exps:
            continue
        n_over = _n_overfitting(e.runs)
        b = exps[e.baseline]
        b_over = _n_overfitting(b.runs)
        reg_rows.append(f"`{e.name}` {n_over}/{len(e.runs)} (baseline {b_over}/{len(b.runs)})")
    if reg_rows:
        items.append("**\"With regularization both training and validation losses keep decreasing\"** (the lecture's "
                     "second picture). Seeds whose validation data loss rose more than 5% after its minimum: "
                     + "; ".join(reg_rows) + ". Where the count stays high, the regularizer did not remove the "
                     "overfitting at the lecture's strength.")
    if "p2_layer_regularizers" in exps:
        items.append("**L1L2(0.001) is pure L1.** Keras's `L1L2(l1=0.0, l2=0.0)` takes l1 first, so the lecture's "
                     "\"L1L2\" layers in program 2 carry no L2 term at all; reglab follows Keras "
                     "(`L1L2(0.001).get_config() == {'l1': 0.001, 'l2': 0.0}`).")
    if "p7_kl_sparsity" in exps:
        e = exps["p7_kl_sparsity"]
        means = [r["sparsity"]["layers"]["4"]["mean_activation"] for r in e.runs if "sparsity" in r]
        if means:
            m = float(np.mean(means))
            items.append(f"**KL sparsity (program 7)** asks the last hidden layer for a mean activation of rho = 0.05; "
                         f"it reaches {m:.3f} on average over seeds. Keras divides every activity penalty by the "
                         "batch size, so strength 0.1 acts as 0.1/50 = 0.002 per KL unit: "
                         f"{'the constraint is met' if m <= 0.1 else 'too weak to enforce rho on this network'} "
                         "(the autoencoder section shows a strength that does enforce it).")
    if "x_adamw_decay" in exps and "x_l2_in_loss_adam" in exps:
        a, b = exps["x_adamw_decay"], exps["x_l2_in_loss_adam"]
        sa, sb = a.by_seed("val_data_loss"), b.by_seed("val_data_loss")
        common = sorted(set(sa) & set(sb))
        if len(common) > 1:
            c = paired_comparison([sa[s] for s in common], [sb[s] for s in common])
            items.append(f"**AdamW is not L2 under Adam.** At the strength where they coincide under SGD "
                         f"(wd = 2 lambda), decoupled decay minus L2-in-the-loss on validation data loss: "
                         f"{c.mean_difference:+.3f} [{c.ci_low:+.3f}, {c.ci_high:+.3f}], p = {c.p_value:.2g} "
                         f"({c.verdict}).")
    doc.bullets(items)


def _n_overfitting(runs: list[dict]) -> int:
    """Runs whose validation curve got the verdict "overfitting after epoch k"."""
    return sum(r.get("overfitting", {}).get("verdict", "").startswith("overfitting") for r in runs)


def _load_arrays(run: dict) -> dict[str, np.ndarray] | None:
    p = Path(run["_path"]).with_suffix(".npz")
    if not p.is_file():
        return None
    with np.load(p, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _section_programs(doc: Doc, summ: Summary, out: Path, figs: Path) -> None:
    doc.h(2, "Programs one by one")
    for e in summ.ordered():
        doc.h(3, f"`{e.name}` -- {e.title}")
        verdicts = [r.get("overfitting", {}).get("verdict", "?") for r in e.runs]
        kinds = {v.split(" after")[0]: 0 for v in verdicts}
        for v in verdicts:
            kinds[v.split(" after")[0]] += 1
        fails = sum(1 for r in e.runs if r.get("failed"))
        doc.p(f"{len(e.runs)} seeds; validation-curve verdicts: " +
              ", ".join(f"{k} {n}" for k, n in kinds.items()) + (f"; {fails} run(s) diverged" if fails else "") +
              f". Test accuracy {_ci(e.stats['test_accuracy'])}, validation data loss {_ci(e.stats['val_data_loss'])}.")
        doc.img(doc.figure(plots.curves, e, figs / f"curves_{e.name}.png"), f"curves {e.name}")
        seed0 = [r for r in e.runs if r["seed"] == 0]
        arrays = _load_arrays(seed0[0]) if seed0 else None
        if arrays and "grid_p" in arrays:
            doc.img(doc.figure(plots.boundary, e, arrays, figs / f"boundary_{e.name}.png"), f"decision boundary {e.name}")


def _section_sparsity(doc: Doc, summ: Summary, figs: Path) -> None:
    rows = []
    hist_items = []
    for e in summ.ordered():
        runs = [r for r in e.runs if "sparsity" in r]
        if not runs:
            continue
        for layer in runs[0]["sparsity"]["layers"]:
            vals = {k: [r["sparsity"]["layers"][layer][k] for r in runs] for k in
                    ("mean_activation", "dead_fraction", "l0_per_example", "below_threshold_fraction")}
            units = runs[0]["sparsity"]["layers"][layer]["units"]
            rows.append([f"`{e.name}`", f"`{layer}`", f"{np.mean(vals['mean_activation']):.4f}",
                         f"{100 * np.mean(vals['dead_fraction']):.0f}%", f"{np.mean(vals['l0_per_example']):.1f} / {units}",
                         f"{100 * np.mean(vals['below_threshold_fraction']):.0f}%"])
        if e.name == "p7_kl_sparsity" or (e.config.get("baseline") and "4" in runs[0]["sparsity"]["layers"]
                                          and e.config["train"]["batch_size"] == 50):
            seed0 = min(runs, key=lambda r: r["seed"])
            hist_items.append((f"{e.name}: last hidden layer", seed0["sparsity"]["layers"]["4"]))
    if not rows:
        return
    doc.h(2, "Sparsity of hidden activations")
    doc.p("Measured on each seed's test split, in eval mode, averaged over seeds. Dead: units never above 1e-3; "
          "L0: units above 1e-3 per example.")
    doc.table(["experiment", "layer", "mean activation", "dead units", "L0 per example", "activations ≤ 1e-3"], rows)
    if hist_items:
        doc.img(doc.figure(plots.activation_histograms, hist_items, 0.05, figs / "kl_activation_histogram.png"),
                "activation histograms")


def _section_weights(doc: Doc, summ: Summary, figs: Path) -> None:
    e = summ.experiments.get("p2_layer_regularizers")
    if e is None or "weights" not in e.runs[0]:
        return
    l1 = np.concatenate([np.asarray(r["weights"]["0.weight"] + r["weights"]["3.weight"]) for r in e.runs])
    l2 = np.concatenate([np.asarray(r["weights"]["1.weight"]) for r in e.runs])
    doc.h(2, "Weights under L1 and under L2 (program 2)")
    def frac(w, t):
        return f"{100 * np.mean(w < t):.0f}%"

    med1, med2 = float(np.median(l1)), float(np.median(l2))
    doc.p(f"Kernel magnitudes pooled over seeds: the L1 layers (0 and 3) against the L2 layer (1). Below 1e-3: "
          f"L1 {frac(l1, 1e-3)}, L2 {frac(l2, 1e-3)}; below 1e-8: L1 {frac(l1, 1e-8)}, L2 {frac(l2, 1e-8)}; medians "
          f"{med1:.1e} and {med2:.1e}. Under Adam an L1 penalty does not produce exact zeros: its constant-size "
          "gradient makes small weights oscillate around 0 at roughly the learning-rate scale, which is the bump near "
          "1e-3. The weights an L2 penalty drives to ~0 are mostly those of units that no longer receive a data gradient "
          "(dead ReLUs); the rest keep their size. Read the histogram, not the textbook picture.")
    doc.img(doc.figure(plots.weight_histograms, {"L1(0.001) kernels": l1, "L2(0.001) kernel": l2},
                       figs / "weights_l1_l2.png"), "weights L1 vs L2")


def _section_extra(doc: Doc, out: Path, figs: Path, name: str, fn) -> None:
    p = out / name
    if p.is_file():
        fn(doc, json.loads(p.read_text()), out, figs)


def _autoencoder(doc: Doc, ae: dict, out: Path, figs: Path) -> None:
    doc.h(2, "Sparse autoencoder on digits")
    doc.p(ae["description"])
    rows = [[f"`{k}`", v["regularizer"], f"{v['mean_code_activation']:.4f}", f"{v['reconstruction_mse']:.5f}",
             f"{100 * v['dead_fraction']:.0f}%", f"{v['l0_per_example']:.1f}"] for k, v in ae["models"].items()]
    doc.table(["model", "code regularizer", "mean code activation", "test reconstruction MSE", "dead units", "L0"], rows)
    doc.p(ae["verdict"])
    for f in ae.get("figures", []):
        doc.img(out / f, f)


def _path(doc: Doc, pd: dict, out: Path, figs: Path) -> None:
    doc.h(2, "Regularization path")
    doc.p(pd["description"])
    doc.table(["strength", "val data loss", "test accuracy", "excess log-loss (fresh)"],
              [[f"{s:.2g}", *[_ci(tuple(pd["stats"][k][i])) for k in ("val_data_loss", "test_accuracy", "excess_log_loss")]]
               for i, s in enumerate(pd["strengths"])])
    doc.p(pd["verdict"])
    doc.img(doc.figure(plots.path_plot, pd, figs / "regularization_path.png"), "regularization path")


def _section_env(doc: Doc, meta: dict, summ: Summary) -> None:
    doc.h(2, "Environment")
    items = [f"{k}: {v}" for k, v in meta.get("environment", {}).items()]
    if "wall_seconds" in meta:
        items.append(f"wall time of the study: {meta['wall_seconds']:.1f} s ({meta.get('trained', '?')} runs trained, "
                     f"{meta.get('skipped', '?')} reused from earlier)")
    seeds = sorted({s for e in summ.experiments.values() for s in e.seeds})
    items.append(f"seeds: {seeds[0]}..{seeds[-1]} ({len(seeds)} per experiment unless noted)")
    items.append("metric definitions: " + "; ".join(f"{k} = {v[0]}" for k, v in METRICS.items()))
    doc.bullets(items)
