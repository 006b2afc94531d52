"""``OUT/tune.md`` and ``OUT/tune.png``: the search (every trial's seed-mean validation metric
with its 95% interval, the chosen point) and the final comparison on fresh seeds."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..diagnostics.statistics import mean_ci
from ..experiments.files import atomic_write, write_text
from .objective import Searchable

__all__ = ["write_tune_report"]


def _num(v: float) -> str:
    return f"{v:.4f}" if math.isfinite(v) else "–"


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else repr(v) if isinstance(v, str) else str(v)


def _figure(path: Path, s: Searchable, rows: list[dict], best: int, metric: str) -> bool:
    """The objective against each searched value, one panel per value (at most six): its seed
    interval as an error bar, the chosen trial in red; choices (strings, booleans) as categories.
    False where no trial finished."""
    ok = [r for r in rows if r["objective"].ok]
    if not ok:
        return False
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dims = s.dims[:6]
    fig, axes = plt.subplots(1, len(dims), figsize=(4.2 * len(dims) + 1.0, 3.8), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], dims):
        numeric = d.choices is None or all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in d.choices)
        ticks = list(d.choices) if not numeric else None
        for r in ok:
            o, v = r["objective"], r["params"][d.column]
            x = ticks.index(v) if ticks is not None else v
            lo, hi = (o.mean - o.low, o.high - o.mean) if math.isfinite(o.low) else (0.0, 0.0)
            ax.errorbar([x], [o.mean], yerr=[[lo], [hi]], fmt="o", color="tab:red" if r["number"] == best else
                        "tab:blue", ecolor="0.6", capsize=3, zorder=3 if r["number"] == best else 2)
        if ticks is not None:
            ax.set_xticks(range(len(ticks)), [str(t) for t in ticks])
            ax.set_xlim(-0.5, len(ticks) - 0.5)
        elif d.log:
            ax.set_xscale("log")
        ax.set_xlabel(d.column)
    axes[0][0].set_ylabel(f"{metric} (mean over seeds, 95% CI)")
    fig.suptitle("Each trial's seed-mean validation metric (red: chosen)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return True


def _trial_table(rows: list[dict], cols: list[str], best: int | None, metric: str) -> list[str]:
    """The trials as a Markdown table: values, seed-mean metric with its interval, and the paired
    difference from the chosen trial."""
    chosen = next((r["objective"] for r in rows if r["number"] == best), None)
    lines = ["| trial | " + " | ".join(f"`{c}`" for c in cols) + f" | {metric} | 95% interval | difference from the "
             "chosen, paired [95%] | seeds failed |", "|---" * (len(cols) + 5) + "|"]
    for r in rows:
        ob = r["objective"]
        mark = " (chosen)" if r["number"] == best else ""
        diff = ([a - b for a, b in zip(ob.values, chosen.values)]
                if chosen is not None and r["number"] != best and ob.ok and chosen.ok else [])
        d, dlo, dhi = mean_ci(diff) if len(diff) > 1 else (math.nan, math.nan, math.nan)
        lines.append(f"| {r['number']}{mark} | " + " | ".join(_value(r["params"][c]) for c in cols) +
                     f" | {_num(ob.mean)} | [{_num(ob.low)}, {_num(ob.high)}] | {_num(d)} [{_num(dlo)}, {_num(dhi)}] "
                     f"| {ob.failed} |")
    return lines


def write_tune_report(out: Path, s: Searchable, rows: list[dict], best: int, metric: str, minimize: bool,
                      seeds: int, final: dict[str, Any], base_rows: list[dict] = (),
                      base_best: int | None = None) -> Path:
    """Write ``out/tune.md`` (and ``out/tune.png``); returns the Markdown file's path."""
    chosen = next((r for r in rows if r["number"] == best), None)
    if chosen is None:
        raise RuntimeError(f"the chosen trial {best} has no runs in the search folder")  # a bug, never a user error
    o = chosen["objective"]
    cols = [d.column for d in s.dims]
    lines = [f"# Tuning `{s.spec.name}` ({s.file})", "",
             f"Searched: {'; '.join(d.describe() for d in s.dims)}. {len(rows)} trials, each trained on {seeds} seeds "
             f"(0-{seeds - 1}); a trial's value is the mean over its seeds of the **validation** {metric} "
             f"({'lower' if minimize else 'higher'} is better), with its 95% interval (Student t over seeds). No "
             "test point was seen by the search.", "",
             f"**Chosen** (trial {best}): " + ", ".join(f"`{c}` = {_value(chosen['params'][c])}" for c in cols) +
             f" -- {metric} {_num(o.mean)} [{_num(o.low)}, {_num(o.high)}].", ""]
    if _figure(out / "tune.png", s, rows, best, metric):
        lines += ["![the search](tune.png)", ""]
    lines += ["## Final comparison on fresh seeds", ""]
    if final.get("same_as_baseline"):
        lines += ["**The chosen setting trains what its baseline trains** (its regularization is off or zero): the search "
                  "found no regularization worth having, and the comparison with its own baseline below is of a "
                  "setting with itself.", ""]
    comp = final["comparisons"]
    if comp:
        lines += [f"The chosen setting and its unregularized baseline, trained on seeds the search never used, "
                  f"compared on the **test** split (paired over seeds; full report: "
                  f"[final/report.md](final/report.md)).", "",
                  "| against | baseline | metric | better when | difference (experiment - baseline) | 95% interval | "
                  "verdict |", "|---|---|---|---|---|---|---|"]
        for c in comp:
            lines.append(f"| {c.get('comparison', 'own baseline')} | `{c['baseline']}` | {c['metric']} | {c['better']} | "
                         f"{_num(float(c['estimate']))} | [{_num(float(c['ci_low']))}, {_num(float(c['ci_high']))}] | "
                         f"{c['verdict']} |")
        lines.append("")
    else:
        lines += ["No comparison could be made (see [final/report.md](final/report.md)).", ""]
    lines += ["## Trials", "", "Every trial trains the same seeds (the same initializations and, where the file "
              "resamples, the same splits), so two trials' difference is paired over seeds: its interval leaves out "
              "the seed-to-seed spread that all trials share, which the seed interval of each trial includes.", ""]
    lines += _trial_table(rows, cols, best, metric)
    if base_rows:
        bcols = [d.column for d in s.baseline_dims]
        lines += ["", "## The baseline's search", "", f"The unregularized baseline searched over "
                  f"{', '.join(f'`{c}`' for c in bcols)} with the same budget and seeds; the final comparison's "
                  "\"best plain baseline\" rows weigh its chosen schedule against the chosen setting's own baseline "
                  "on the validation split.", ""]
        lines += _trial_table(list(base_rows), bcols, base_best, metric)
    path = out / "tune.md"
    write_text(path, "\n".join(lines) + "\n")
    return path
