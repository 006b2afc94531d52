"""The study report: ``report.md`` and a self-contained ``report.html`` (images embedded)."""

from __future__ import annotations

import base64
import concurrent.futures as cf
import multiprocessing as mp
import html
import json
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from ..diagnostics.metrics import LABELS, METRICS, metric_range
from ..experiments.current import named
from ..experiments.code import UserCodeError, call_user
from ..experiments.files import own_folder, write_text
from ..experiments.results import results_frame
from ..experiments.store import load_runs
from . import plots
from .comparisons import comparisons_frame
from .summary import MIN_PAIRS, Summary, compared_metrics, lower_is_better, metric_label, summarize

__all__ = ["write_report", "Section"]

#: a study's own section: (title, function(results DataFrame, runs, out) -> list of paragraphs, where
#: a paragraph that is a list of strings is a bulleted list)
Section = tuple[str, Callable[..., list[Any]]] | tuple[str, Callable[..., list[Any]], str]  # (title, fn[, where])


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
        if workers > 1 and len(self.jobs) > 1 and "fork" in mp.get_all_start_methods():
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

    def toc(self) -> None:
        """A table of contents of the level-2 headings (all of them, also those added later)."""
        self.blocks.append(("toc", None))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]], note: str | None = None) -> None:
        """A table; ``note`` is a paragraph under it (its cells never wrap, a note would)."""
        self.blocks.append(("table", (header, rows)))
        if note:
            self.blocks.append(("note", note))

    def img(self, path: Path, alt: str) -> None:
        self.blocks.append(("img", (path, alt)))

    def markdown(self, root: Path) -> str:
        out = []
        heads = [b[1] for k, b in self.blocks if k == "h" and b[0] == 2]
        for kind, b in self.blocks:
            if kind == "toc":
                out.append("Contents: " + " · ".join(f"[{h}](#{_anchor(h)})" for h in heads))
            elif kind == "h":
                out.append("#" * b[0] + " " + b[1])
            elif kind == "p":
                out.append(b)
            elif kind == "note":
                out.append(f"*{b}*")
            elif kind == "ul":
                out.append("\n".join(f"- {i}" for i in b))
            elif kind == "table":
                header, rows = b
                out.append("| " + " | ".join(_md_cell(c) for c in header) + " |\n|" + "---|" * len(header) + "\n" +
                           "\n".join("| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows))
            elif kind == "img":
                out.append(f"![{b[1]}]({Path(b[0]).resolve().relative_to(Path(root).resolve()).as_posix()})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, initial-scale=1'><link rel='icon' href='data:,'><title>{html.escape(title)}</title>",
               "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
               "line-height:1.45;color:#222}table{border-collapse:collapse;font-size:13px;margin:1em 0}"
               "td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f3f3f3}"
               "td:first-child,th:first-child,td:nth-child(2),th:nth-child(2){text-align:left}img{max-width:100%}"
               ".note{font-size:12px;color:#555;margin-top:-.5em}"
               "code{background:#f3f3f3;padding:0 3px}.sig{color:#0a6b0a;font-weight:600}"
               ".scroll{overflow-x:auto;max-width:100%}td{white-space:nowrap}</style></head><body>"]
        heads = [b[1] for k, b in self.blocks if k == "h" and b[0] == 2]
        for kind, b in self.blocks:
            if kind == "toc":
                out.append("<nav><p>Contents: " + " · ".join(f"<a href='#{_anchor(h)}'>{_inline(h)}</a>" for h in heads)
                           + "</p></nav>")
            elif kind == "h":
                out.append(f"<h{b[0]} id='{_anchor(b[1])}'>{_inline(b[1])}</h{b[0]}>")
            elif kind == "p":
                out.append(f"<p>{_inline(b)}</p>")
            elif kind == "note":
                out.append(f"<p class='note'>{_inline(b)}</p>")
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b) + "</ul>")
            elif kind == "table":
                header, rows = b
                out.append("<div class='scroll'><table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in header) +
                           "</tr>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>"
                                             for r in rows) + "</table></div>")
            elif kind == "img":
                data = base64.b64encode(b[0].read_bytes()).decode()
                out.append(f"<p><img alt='{html.escape(b[1])}' src='data:image/png;base64,{data}'></p>")
        out.append("</body></html>")
        return "\n".join(out)


def _anchor(text: str) -> str:
    """A heading's anchor (GitHub's rule, roughly: lower case, letters, digits and hyphens)."""
    import re

    return re.sub(r"[^a-z0-9 _-]", "", text.lower()).strip().replace(" ", "-")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _inline(text: str) -> str:
    """Escape, then the two Markdown marks the report uses: **bold** and `code`."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _num(v: float, digits: int = 3) -> str | None:
    return None if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _ci(stat: tuple[float, float, float] | None, digits: int = 3, metric: str = "") -> str:
    """``mean ± half-width``, or ``mean [lo, hi]`` where the t-interval leaves the metric's range
    (an accuracy of 0.99 ± 0.02 is shown as 0.990 [0.970, 1.000]); ``n/a`` where it cannot be
    computed (the tables' notes say why)."""
    if stat is None or not math.isfinite(stat[0]):
        return "n/a"
    m, lo, hi = stat
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{m:.{digits}f} (one run)"
    low, high = metric_range(metric)
    if lo < low or hi > high:
        return f"{m:.{digits}f} [{max(lo, low):.{digits}f}, {min(hi, high):.{digits}f}]"
    return f"{m:.{digits}f} ± {(hi - lo) / 2:.{digits}f}"


def write_report(out: str | Path, meta: dict | None = None, title: str | None = None, intro: str | None = None,
                 sections: list[Section] = (), margins: dict[str, float] | None = None,
                 methods: str | dict[str, str] | None = None, runs: list[dict] | None = None,
                 earlier: list[dict] | None = None) -> dict[str, Path]:
    """Read the finished runs under ``out`` (and analyses written there) and write
    ``report.html``, ``report.md``, ``results.csv`` and ``comparisons.csv``. ``title``,
    ``intro``, ``sections``, ``margins`` and ``methods`` (``comparisons_frame``'s) come from the
    study (``reglab study``); the rest follows the study's contents and task. ``runs``:
    ``load_runs(out)``, where the caller has just read them (each read checks 340 runs: ~0.7 s),
    and ``earlier`` the runs of earlier versions it left out (``reglab.experiments.current``)."""
    out = Path(out)
    if runs is None:
        earlier = []
        runs = load_runs(out, left_out=earlier)
    if not runs:
        raise ValueError(f"no finished runs under {out / 'runs'}; run `reglab run` first")
    summ = summarize(runs)
    frame = results_frame(runs)
    figs = own_folder(out, "figures")
    for stale in ("report.md", "report.html", "comparisons.csv"):  # another version's: none is left beside
        (out / stale).unlink(missing_ok=True)                         # the new tables if this is cut short  # first: a symlink or a file there is an error before anything is written
    write_text(out / "results.csv", frame.to_csv(index=False, na_rep=""))  # the table the report is made from
    comp = comparisons_frame(frame, margins=margins, kinds=_baseline_kinds(runs), methods=methods)
    write_text(out / "comparisons.csv", comp.to_csv(index=False, na_rep=""))
    if meta is None:
        try:
            meta = json.loads((out / "study.json").read_text())
        except (OSError, ValueError):
            meta = {}
        meta = meta if isinstance(meta, dict) else {}
    doc = Doc()
    doc.h(1, title or "reglab study report")
    _section_findings(doc, comp, figs, any(r.get("validation_is_test") for r in runs))
    doc.toc()
    if intro:  # "{seeds}": the seeds of the study's rows, as run (--seeds included)
        n = sorted({len(e.runs) for e in summ.rows.values()})
        doc.p(intro.replace("{seeds}", str(n[0]) if len(n) == 1 else f"{n[0]}–{n[-1]}"))
    _section_protocol(doc, summ, comp, earlier or [])
    _section_table(doc, summ)
    _section_comparisons(doc, summ, comp)
    failed = []
    for sec_title, fn, *where in sections:
        doc.h(2, sec_title)
        try:
            blocks = _section_blocks(fn, where[0] if where else None, sec_title, frame, runs, out)
        except UserCodeError as e:
            failed.append(str(e))
            doc.p(f"This section failed and was left out: {e}")
            continue
        for block in blocks:
            (doc.bullets if isinstance(block, list) else doc.p)(block)
    _section_experiments(doc, summ, figs)
    _section_sparsity(doc, summ, figs)
    _section_weights(doc, summ, figs)
    failed += _section_analyses(doc, out, figs)
    _section_env(doc, meta, summ)
    doc.draw()
    md = out / "report.md"
    write_text(md, doc.markdown(out))
    page = out / "report.html"
    write_text(page, doc.html(title or "reglab study report"))
    return {"markdown": md, "html": page, "failed": failed}


def _section_blocks(fn: Callable[..., Any], where: str | None, title: str, frame, runs: list[dict],
                    out: Path) -> list:
    """A study's report section, called at its edge: its paragraphs (strings) and bulleted lists
    (lists of strings); whatever else it raises or returns is a ``UserCodeError`` naming ``where``
    (the study file and key; by default the function's file)."""
    if where is None:
        code = getattr(fn, "__code__", None)
        where = (f"report section {title!r}: {code.co_filename if code else getattr(fn, '__module__', '?')}:"
                 f"{getattr(fn, '__qualname__', fn)}")
    blocks = call_user(fn, where, frame, runs, out)
    ok = isinstance(blocks, (list, tuple)) and all(
        isinstance(b, str) or isinstance(b, list) and all(isinstance(s, str) for s in b) for b in blocks)
    if not ok:
        raise UserCodeError(f"{where}: it must return a list of paragraphs (strings) and bulleted lists (lists of "
                            f"strings); it returned {type(blocks).__name__}" +
                            (f" holding {sorted({type(b).__name__ for b in blocks})}"
                             if isinstance(blocks, (list, tuple)) else ""))
    return list(blocks)


def _baseline_kinds(runs: list[dict]) -> dict[str, str]:
    """Each baseline's data, split, model and loss (its ``kind``: baselines of one kind differ
    only in their schedule)."""
    out = {}
    for r in runs:
        if r.get("is_baseline") and isinstance(r.get("config"), dict):
            c = r["config"]
            out[r["experiment"]] = json.dumps([c.get("data"), c.get("split"), c.get("model"),
                                               (c.get("train") or {}).get("loss")], sort_keys=True, default=str)
    return out


def _headlines(comp):
    """Each experiment's headline metric: the first metric it is compared on (excess log-loss
    where the distribution is known, else test log-loss or test MSE) -- one per task in a study
    that mixes tasks. A Series, experiment -> metric, in order of appearance."""
    return comp.groupby("experiment", sort=False)["metric"].first()


def _section_findings(doc: Doc, comp, figs: Path, validation_is_test: bool = False) -> None:
    """Findings first: sentences made from ``comparisons.csv`` on each task's headline metric,
    and a forest plot of the same rows."""
    if comp.empty:
        return
    firsts = _headlines(comp)
    doc.h(2, "Findings")
    for k, metric in enumerate(dict.fromkeys(firsts)):
        _findings(doc, comp[comp["experiment"].isin(firsts[firsts == metric].index)], metric, figs,
                  validation_is_test, "forest.png" if k == 0 else f"forest_{k}.png")


def _findings(doc: Doc, comp, metric: str, figs: Path, validation_is_test: bool, png: str) -> None:
    rows = comp[(comp["metric"] == metric) & (comp["comparison"] == "own baseline")]
    label = metric_label(metric)
    sweep = [c for c in comp.columns if "/" in c]

    def name(r) -> str:
        point = ", ".join(f"{c.rsplit('/', 1)[-1]} = {r[c]:g}" if isinstance(r[c], float) else f"{c} = {r[c]}"
                          for c in sweep if r[c] == r[c])
        return f"`{r['experiment']}`" + (f" ({point})" if point else "")

    def cite(r) -> str:
        return f"{name(r)} {r['estimate']:+.3g} [{r['ci_low']:+.3g}, {r['ci_high']:+.3g}]"

    by = {v: [r for _, r in rows.iterrows() if r["verdict"] == v]
          for v in ("better", "worse", "equivalent", "inconclusive", "no verdict")}
    better = rows["better"].iloc[0]
    method = rows["method"].iloc[0]  # e.g. "paired t, Bonferroni over 12": the family's, as comparisons.csv says
    each = f"each of {len(rows)} experiments" if len(rows) > 1 else "the one experiment"
    text = [f"On the {label} ({better} is better), {each} against its own unregularized "
            f"baseline, paired over seeds (difference [95% interval: {method}]):"]
    if by["better"]:
        text.append(f"**{len(by['better'])} help{'s' if len(by['better']) == 1 else ''}**: " + "; ".join(cite(r) for r in sorted(
            by["better"], key=lambda r: r["estimate"] if better == "lower" else -r["estimate"])) + ".")
    if by["worse"]:
        text.append(f"**{len(by['worse'])} hurt{'s' if len(by['worse']) == 1 else ''}**: " + "; ".join(cite(r) for r in by["worse"]) + ".")
    if by["equivalent"]:
        text.append(f"**{len(by['equivalent'])} make{'s' if len(by['equivalent']) == 1 else ''} no difference worth "
                    "having** (the interval inside ± the margin): "
                    + "; ".join(f"{cite(r)}, margin {r['margin']:.3g}" for r in by["equivalent"]) + ".")
    if by["inconclusive"]:
        text.append(f"**{len(by['inconclusive'])} {'is' if len(by['inconclusive']) == 1 else 'are'} inconclusive** "
                    "with these seeds: " + "; ".join(
            f"{cite(r)}" + (f", about {int(r['n_needed'])} seeds would settle it" if pd.notna(r["n_needed"])
                            else "") for r in by["inconclusive"]) + ".")
    if by["no verdict"]:
        text.append(f"{len(by['no verdict'])} {'has' if len(by['no verdict']) == 1 else 'have'} fewer than "
                    f"{MIN_PAIRS} finished pairs and no verdict.")
    plain = comp[(comp["metric"] == metric) & (comp["comparison"] == "best plain baseline")]
    vs_plain = {(r["experiment"], *(r[c] for c in sweep)): r for _, r in plain.iterrows()}
    if len(plain):
        counts = plain["verdict"].value_counts()
        text.append("**Against the best plain baseline** of the same data, model and loss (the unregularized "
                    "schedule with the lowest validation loss" + (", chosen on the test points here: an optimistic "
                    "baseline" if validation_is_test else "") + "): " + ", ".join(
                        f"{int(counts[v])} {v}" for v in ("better", "worse", "equivalent", "inconclusive", "no verdict")
                        if v in counts) + ". The filled and hollow markers of the forest plot show both.")
    doc.p(" ".join(text[:1]))
    doc.bullets(text[1:])
    doc.p("Every number here is a row of `comparisons.csv` (all metrics, with p-values, the probability of "
          "improvement, the smallest detectable effect and the seeds needed).")
    def best_of(r):
        b = vs_plain.get((r["experiment"], *(r[c] for c in sweep)))
        return None if b is None else (b["estimate"], b["ci_low"], b["ci_high"], b["verdict"])

    forest_rows = [(name(r).replace("`", ""), r["estimate"], r["ci_low"], r["ci_high"], r["margin"], r["verdict"],
                    best_of(r)) for _, r in rows.iterrows()]
    doc.img(doc.figure(plots.forest, forest_rows, label, better, figs / png),
            f"forest plot: {label}, each experiment minus its own baseline, with intervals")


def _section_protocol(doc: Doc, summ: Summary, comp, earlier: list[dict]) -> None:
    doc.h(2, "Protocol")
    items = []
    if earlier:
        items.append(f"{len(earlier)} runs of earlier versions of the experiment files ({named(earlier)}) lie under "
                     "`runs/` and are left out: every table and figure holds the runs of the files as they are now "
                     "(their builders and data included).")
    for task in summ.tasks:
        rows = [e for e in summ.rows.values() if e.task == task]
        ms = [r["metrics"] for e in rows for r in e.runs]
        sizes = sorted({(m.get("n_train"), m.get("n_val"), m.get("n_test")) for m in ms})
        vt = any(r.get("validation_is_test") for e in rows for r in e.runs)
        known = any("excess_" + next(iter(METRICS[task])) in e.stats for e in rows)
        seeds = sorted({len(e.runs) for e in rows})
        items.append(f"**Task: {task}** ({len(rows)} experiments/grid points incl. baselines, "
                     f"{'/'.join(map(str, seeds))} seeds each). Metrics: "
                     f"{', '.join(LABELS[m] for m in METRICS[task])}" + (", and excess over the Bayes-optimal "
                     "prediction on a fresh sample of 100,000 points from the known distribution" if known else "") + ".")
        items.append("Examples per split (train / validation / test): " +
                     "; ".join(f"{a} / {b} / {c}" for a, b, c in sizes[:4]) + ".")
        augmented = sorted({e.key for e in rows for r in e.runs[:1]
                            if (r.get("config") or {}).get("data", {}).get("transform")})
        if augmented:
            items.append(f"**Augmentation** (`data.transform`) in {', '.join(f'`{k}`' for k in augmented)}: each "
                         "model draws its own random transform of every training example at every step; validation "
                         "and test examples are scored untransformed. Augmentation is regularization: such an "
                         "experiment's baseline trains on the same examples without it.")
        if vt:
            items.append("**Validation data = test data** in some experiments (their files say `validation = \"test\"`, "
                         "the protocol of the study they reproduce): early stopping and the choice of best weights "
                         "there have seen the test points, so their test scores are optimistic.")
        else:
            items.append("Training decisions (early stopping, best weights) use the validation split only; every "
                         "reported score comes from the test split, which no training decision saw.")
    boot = sorted({r["metric"] for _, r in comp.iterrows() if str(r["method"]).startswith("bootstrap")}) \
        if len(comp) else []
    items.append("Intervals of a mean are 95% Student-t intervals over the seeds that finished. Each experiment is "
                 "compared with **its own unregularized baseline** (the same data, model without its regularizers, "
                 "loss, optimizer settings, epochs and batch size) on the same seeds: paired differences with "
                 "intervals and p-values Bonferroni-adjusted over the family of one metric (an interval excludes 0 "
                 f"exactly when p < 0.05) -- paired t intervals" + (
                     f", except the percentile bootstrap (9,999 resamples of the seeds) on {', '.join(boot)}"
                     if boot else "") + f" -- and Cohen's d_z; fewer than {MIN_PAIRS} finished pairs get no "
                 "verdict. Failed (diverged) runs are kept out of the statistics and counted per row.")
    doc.bullets(items)


def _section_table(doc: Doc, summ: Summary) -> None:
    doc.h(2, "Results over seeds")
    for task in summ.tasks:
        rows = [e for e in summ.ordered() if e.task == task]
        known = any(k.startswith("excess_") for e in rows for k in e.stats)
        keys = compared_metrics(task, known)
        header = ["experiment", "title", "n finished / runs"] + [metric_label(k) for k in keys]
        table = []
        for e in rows:
            table.append([f"`{e.key}`", e.title, f"{len(e.finished)} / {len(e.runs)}"] +
                         [_ci(e.stats.get(k), 4 if k.startswith("excess") else 3, k) for k in keys])
        flat = " ".join(c for r in table for c in r[3:])  # the metric cells (a grid point's key has "[")
        notes = ["mean ± the half-width of its 95% t-interval over the finished seeds"] if "±" in flat else []
        if "[" in flat:
            notes.append("mean [low, high]: the interval itself, where mean ± half-width would leave the "
                         "metric's range")
        if "n/a" in flat:
            notes.append("n/a: no finished run has this figure")
        if "(one run)" in flat:
            notes.append("\"(one run)\": no interval from one run")
        doc.table(header, table, note="; ".join(notes) + "." if notes else None)


def _section_comparisons(doc: Doc, summ: Summary, comp) -> None:
    """The own-baseline rows of ``comparisons.csv`` on each task's first two metrics, sorted by
    effect (best first): the mean difference with its family's adjusted interval, the robust
    summaries beside it, the verdict and the probability of improvement."""
    doc.h(2, "Paired comparisons with each experiment's baseline")
    own = comp[comp["comparison"] == "own baseline"] if len(comp) else comp
    sweep = [c for c in comp.columns if "/" in c]
    for task in summ.tasks:
        rows = [e for e in summ.ordered() if e.task == task and not e.is_baseline]
        if not rows:
            continue
        known = any(k.startswith("excess_") for e in rows for k in e.stats)
        for metric in compared_metrics(task, known)[:2]:
            sub = own[own["metric"] == metric]
            table = []
            for _, r in sub.iterrows():
                e = next((x for x in rows if x.name == r["experiment"] and all(
                    x.sweep.get(c) == r[c] for c in sweep if c in x.sweep)), None)
                if e is None:
                    continue
                fail = ""
                if e.failure_test:
                    fail = f"{e.failure_test[0]} vs {e.failure_test[1]} failed (Fisher p = {e.failure_test[2]:.2g})"
                sign = 1.0 if r["better"] == "lower" else -1.0
                order = sign * r["estimate"] if r["estimate"] == r["estimate"] else math.inf
                table.append((order, [f"`{e.key}`", f"`{r['baseline']}`", str(int(r["n"]))] + _cmp_row(r) + [fail]))
            table.sort(key=lambda t: t[0])
            cells = [t[1] for t in table]
            header = ["experiment", "baseline", "pairs", "Δ mean", "adjusted 95% CI", "median Δ", "IQM Δ",
                      "p (adjusted)", "d_z", "verdict", "P(improvement) [95% CI]", "failures"]
            if not any(c[-1] for c in cells):  # no failed run anywhere: no column for it
                header, cells = header[:-1], [c[:-1] for c in cells]
            method = sub["method"].iloc[0] if len(sub) else ""
            doc.h(3, f"Δ {metric_label(metric)} (experiment − baseline; "
                     f"{'lower' if lower_is_better(metric) else 'higher'} is better)")
            doc.table(header, cells,
                      note=f"Intervals and p: {method} (a family is one metric against one kind of baseline); "
                           "IQM: the mean of the middle 50 % of the paired differences; verdict: better/worse when "
                           "the interval excludes 0, equivalent when it lies within the margin, else inconclusive.")
        rest = [metric_label(m) for m in compared_metrics(task, known)[2:]]
        if rest:
            doc.p(f"The comparisons on {', '.join(rest)} are rows of `comparisons.csv`, like these.")


def _cmp_row(r) -> list[str]:
    """A ``comparisons.csv`` row as cells: Δ, its CI, median, IQM, p, d_z, verdict, P(improvement)."""
    def f(v, d=3, sign=True):
        return "n/a" if v is None or v != v else (f"{v:+.{d}f}" if sign else f"{v:.{d}f}")

    ci = f"[{f(r['ci_low'])}, {f(r['ci_high'])}]" if r["ci_low"] == r["ci_low"] else "n/a"
    marks = {"better": "better ✱", "worse": "worse ✱", "equivalent": f"equivalent ≈ ±{r['margin']:.2g}",
             "inconclusive": "inconclusive", "no verdict": f"no verdict (fewer than {MIN_PAIRS} pairs)"}
    p = "n/a" if r["p_adjusted"] != r["p_adjusted"] else "< 1e-4" if r["p_adjusted"] == 0 else f"{r['p_adjusted']:.2g}"
    pi = (f"{r['p_improvement']:.2f} [{r['p_improvement_low']:.2f}, {r['p_improvement_high']:.2f}]"
          if r["p_improvement"] == r["p_improvement"] else "n/a")
    return [f(r["estimate"]), ci, f(r["median"]), f(r["iqm"]), p, f(r["effect_size"], 2),
            marks.get(r["verdict"], r["verdict"]), pi]


def _load_arrays(run: dict) -> dict[str, np.ndarray] | None:
    p = Path(run["_path"]).with_suffix(".npz")
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError):
        return None


def _safe(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:120]


def _section_experiments(doc: Doc, summ: Summary, figs: Path) -> None:
    grid = []
    for e in summ.ordered():
        if e.finished:
            first = min(e.finished, key=lambda r: r["seed"])
            arrays = _load_arrays(first)
            if arrays and "grid_p" in arrays:
                grid.append((e.key, arrays, first["seed"]))
    if grid:
        doc.h(2, "Decision boundaries")
        doc.p("One seed per experiment (named in each panel; the lowest finished seed), its training data, the model's "
              "boundary p = 0.5 (black) and the Bayes boundary (green, dashed). One seed's picture, not the average.")
        doc.img(doc.figure(plots.boundaries, grid, figs / "decision_boundaries.png"), "decision boundaries, one seed each")
    doc.h(2, "Training curves")
    rows, items, losses = [], [], set()
    for e in summ.ordered():
        verdicts = [r.get("overfitting", {}).get("verdict", "?") for r in e.finished]
        kinds: dict[str, int] = {}
        for v in verdicts:
            kinds[v.split(" after")[0]] = kinds.get(v.split(" after")[0], 0) + 1
        rows.append([f"`{e.key}`", e.title, f"{len(e.finished)} / {len(e.runs)}", str(e.n_failed),
                     ", ".join(f"{k} {n}" for k, n in kinds.items()) or "n/a"])
        if e.finished:
            items.append((e.key, plots.histories(e)))
            losses.add(e.runs[0].get("loss_name") or "loss")
    doc.p("Per experiment: seeds finished of those run, seeds that diverged (left out of every figure), and the "
          "verdicts of the validation curves. Then one panel per experiment, on one y scale.")
    doc.table(["experiment", "title", "finished", "diverged", "validation-curve verdicts"], rows)
    if items:
        loss = losses.pop() if len(losses) == 1 else "data loss (each experiment's own)"
        doc.img(doc.figure(plots.curves, items, loss, figs / "training_curves.png"), "training curves, one panel each")


def _section_sparsity(doc: Doc, summ: Summary, figs: Path) -> None:
    rows = []
    hist_items = []
    for e in summ.ordered():
        runs = [r for r in e.finished if "sparsity" in r]
        if not runs:
            continue
        for layer in runs[0]["sparsity"]["layers"]:
            vals = {k: [r["sparsity"]["layers"][layer][k] for r in runs] for k in
                    ("mean_activation", "dead_fraction", "l0_per_example", "below_threshold_fraction")}
            units = runs[0]["sparsity"]["layers"][layer]["units"]
            rows.append([f"`{e.key}`", f"`{layer}`", f"{np.mean(vals['mean_activation']):.4f}",
                         f"{100 * np.mean(vals['dead_fraction']):.0f}%", f"{np.mean(vals['l0_per_example']):.1f} / {units}",
                         f"{100 * np.mean(vals['below_threshold_fraction']):.0f}%"])
        seed0 = min(runs, key=lambda r: r["seed"])
        last = list(seed0["sparsity"]["layers"])[-1]
        hist_items.append((f"{e.key}: layer {last}, seed {seed0['seed']}", seed0["sparsity"]["layers"][last]))
    if not rows:
        return
    doc.h(2, "Sparsity of hidden activations")
    doc.p("Measured on each seed's test split, in eval mode, averaged over the finished seeds. Dead: units never above "
          "1e-3; L0: units above 1e-3 per example. The histograms show one seed each (named in the panel).")
    doc.table(["experiment", "layer", "mean activation", "dead units", "L0 per example", "activations ≤ 1e-3"], rows)
    doc.img(doc.figure(plots.activation_histograms, hist_items[:4], None, figs / "activation_histograms.png"),
            "activation histograms")


def _section_weights(doc: Doc, summ: Summary, figs: Path) -> None:
    for e in summ.ordered():
        runs = [r for r in e.finished if "weights" in r]
        if not runs:
            continue
        if not doc.blocks or doc.blocks[-1] != ("h", (2, "Weight magnitudes")):
            doc.h(2, "Weight magnitudes")
        groups = {name: np.concatenate([np.asarray(r["weights"][name]) for r in runs]) for name in runs[0]["weights"]}
        doc.p(f"`{e.key}`: |w| of every weight tensor, pooled over {len(runs)} seeds; share below 1e-3: " +
              ", ".join(f"`{n}` {100 * np.mean(w < 1e-3):.0f}%" for n, w in groups.items()) + ".")
        doc.img(doc.figure(plots.weight_histograms, dict(list(groups.items())[:6]), figs / f"weights_{_safe(e.key)}.png"),
                f"weight histograms {e.key}")


def _inside(out: Path, rel: Any) -> Path | None:
    """``out / rel`` if it is a file inside ``out`` (nothing read from a results folder may name
    a path outside it)."""
    if not isinstance(rel, str):
        return None
    p = (out / rel).resolve()
    try:
        p.relative_to(out.resolve())
    except ValueError:
        return None
    return p if p.is_file() else None


def _section_analyses(doc: Doc, out: Path, figs: Path) -> list[str]:
    """The paths and the analyses written under ``out``; returns the failures of analyses that
    failed (rendered in their place)."""
    failed = []
    for p in sorted((out / "paths").glob("*.json")) if (out / "paths").is_dir() else []:
        try:
            _path(doc, json.loads(p.read_text()), figs)
        except (ValueError, KeyError, TypeError, AttributeError):
            doc.p(f"`paths/{p.name}` is damaged and was skipped.")
    for f in sorted((out / "analyses").glob("*.json")) if (out / "analyses").is_dir() else []:
        try:
            a = json.loads(f.read_text())
            doc.h(2, str(a["title"]))
            if a.get("failed"):
                doc.p(f"This analysis failed: {a['failed']}. The rest of the study is unaffected; the next "
                      "`reglab study` tries it again.")
                failed.append(str(a["failed"]))
                continue
            doc.p(str(a.get("description", "")))
            if a.get("table"):
                doc.table([str(c) for c in a["table"]["header"]], [[str(c) for c in r] for r in a["table"]["rows"]])
            if a.get("verdict"):
                doc.p(str(a["verdict"]))
            for fig in a.get("figures", []):
                path = _inside(out, fig)
                if path is not None and path.suffix == ".png":
                    doc.img(path, str(fig))
        except (ValueError, KeyError, TypeError, AttributeError):
            doc.p(f"`{f.name}` is damaged and was skipped.")
    return failed


def _path(doc: Doc, pd: dict, figs: Path) -> None:
    doc.h(2, f"Regularization path of `{pd['experiment']}`")
    doc.p(str(pd["description"]))
    keys = list(pd["stats"])
    doc.table(["strength"] + [metric_label(k) for k in keys],
              [[f"{s:.2g}", *[_ci(tuple(pd["stats"][k][i]), 4, k) for k in keys]] for i, s in enumerate(pd["strengths"])])
    doc.p(str(pd["verdict"]))
    doc.img(doc.figure(plots.path_plot, pd, figs / f"regularization_path_{_safe(str(pd['experiment']))}.png"),
            f"regularization path of {pd['experiment']}")


def _section_env(doc: Doc, meta: dict, summ: Summary) -> None:
    doc.h(2, "Environment")
    env = meta.get("environment", {})
    items = [f"{k}: {v}" + (" (the process that ran the command)" if k == "torch threads" else "")
             for k, v in (env.items() if isinstance(env, dict) else [])]
    used: dict[Any, int] = {}
    for e in summ.rows.values():
        for r in e.runs:
            used[r.get("threads", "not recorded")] = used.get(r.get("threads", "not recorded"), 0) + 1
    items.append("torch threads each run trained with (reglab.threads): " + ", ".join(
        f"{k} ({n} run{'s' if n != 1 else ''})" for k, n in sorted(used.items(), key=lambda kv: str(kv[0]))))
    if isinstance(meta.get("wall_seconds"), (int, float)):
        items.append(f"wall time of the study: {meta['wall_seconds']:.1f} s ({meta.get('trained', '?')} runs trained, "
                     f"{meta.get('skipped', '?')} reused from earlier)")
    seeds = sorted({s for e in summ.rows.values() for s in (r["seed"] for r in e.runs)})
    items.append(f"seeds: {seeds[0]}..{seeds[-1]}")
    items.append("metric definitions: " + "; ".join(f"{LABELS[m]} ({t})" for t in summ.tasks for m in METRICS[t]) +
                 " -- see `reglab.diagnostics.metrics`")
    doc.bullets(items)
