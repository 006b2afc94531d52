"""Figures (matplotlib, Agg backend) from finished runs; each function writes one PNG."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib
import numpy as np

from ..diagnostics.statistics import mean_ci
from ..experiments.files import atomic_write
from .summary import RowSummary

matplotlib.use("Agg")  # files only; pyplot is imported after this, inside the functions' module scope
import matplotlib.pyplot as plt  # noqa: E402  (must follow use("Agg"))
from matplotlib.font_manager import FontProperties  # noqa: E402



def _lit(text: object) -> str:
    """Text from an experiment file, drawn literally: a "$" is a dollar sign, not mathtext. (Math
    stays on for matplotlib's own text: log-axis ticks such as 10^3 are mathtext.)"""
    return str(text).replace("$", r"\$")


__all__ = ["save", "grid", "tick_inches", "forest", "curves", "histories", "boundaries", "activation_histograms", "weight_histograms", "path_plot"]


def _band(ax, arr: np.ndarray, color: str, label: str, dashed: bool = False) -> None:
    """Mean over seeds with its 95% t-interval as a band (runs of different lengths are NaN-padded)."""
    from scipy import stats

    ep = np.arange(1, arr.shape[1] + 1)
    n = np.sum(~np.isnan(arr), axis=0)
    # an epoch is drawn only while at least half the runs (and 5, or all when fewer ran) still
    # run: a mean of the few runs that went on longest is not the experiment's curve
    keep = n >= max(min(5, arr.shape[0]), int(np.ceil(arr.shape[0] / 2)))
    arr, ep, n = arr[:, keep], ep[keep], n[keep]
    if not ep.size:
        return
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # epochs that only some runs reached
        mean = np.nanmean(arr, axis=0)
        sd = np.nanstd(arr, axis=0, ddof=1)
        half = stats.t.ppf(0.975, np.maximum(n - 1, 1)) * sd / np.sqrt(n)  # same interval as mean_ci, per epoch
    ax.plot(ep, mean, color=color, label=_lit(label), lw=1.2, ls="--" if dashed else "-")
    ok = n >= 2
    # a loss is >= 0: the band does not go below what the metric can be
    ax.fill_between(ep[ok], np.maximum(mean - half, 0.0)[ok], (mean + half)[ok], color=color, alpha=0.25, lw=0)


def save(fig, path: Path, layout: dict[str, float] | None = None) -> Path:
    """Lay out, write as PNG (144 dpi: sharp at 2x) and close a figure. ``layout``: a fixed
    layout (``grid``'s arguments) for figures whose text is known in advance; without it,
    ``tight_layout``, which measures the text by drawing the whole figure once more (for a
    grid of 17 panels, 40-60 % of its drawing time)."""
    if layout is None:
        fig.tight_layout()
    else:
        grid(fig, **layout)
    try:
        atomic_write(Path(path), lambda f: fig.savefig(f, dpi=144, format="png"))  # never through a planted symlink
    finally:
        plt.close(fig)
    return path


def tick_inches(ax, fontsize: float, axis: str = "y") -> float:
    """The width in inches of ``ax``'s widest tick label on ``axis``, estimated without drawing:
    its formatter's labels for the ticks inside the limits, at 0.65 em a character (DejaVu Sans
    digits are 0.64 em, its minus sign 0.84). For a fixed layout's margins (linear axes)."""
    a = ax.yaxis if axis == "y" else ax.xaxis
    lo, hi = sorted(ax.get_ylim() if axis == "y" else ax.get_xlim())
    ticks = [t for t in a.get_majorticklocs() if lo <= t <= hi]
    fmt = a.get_major_formatter()
    fmt.set_locs(ticks)
    return max((len(t) for t in fmt.format_ticks(ticks)), default=1) * 0.65 * fontsize / 72


def grid(fig, rows: int, cols: int, left: float, right: float, bottom: float, top: float, wgap: float,
         hgap: float) -> None:
    """Place a figure's ``rows x cols`` panels with margins and gaps in inches: panel width
    ``w = (W - left - right - (cols - 1) wgap) / cols`` (height alike), and matplotlib's
    ``wspace = wgap / w``, ``hspace = hgap / h`` (fractions of a panel)."""
    W, H = fig.get_size_inches()
    w = (W - left - right - (cols - 1) * wgap) / cols
    h = (H - top - bottom - (rows - 1) * hgap) / rows
    fig.subplots_adjust(left=left / W, right=1 - right / W, bottom=bottom / H, top=1 - top / H,
                        wspace=wgap / w, hspace=hgap / h)


def _stack(runs: list[dict], key: str) -> np.ndarray:
    hs = [r["history"]["history"].get(key, []) for r in runs]
    n = max((len(h) for h in hs), default=0)
    out = np.full((len(hs), n), np.nan)
    for i, h in enumerate(hs):
        out[i, :len(h)] = h
    return out


def histories(e: RowSummary) -> dict[str, np.ndarray]:
    """The finished runs' curves as ``(runs, epochs)`` arrays (NaN past a run's last epoch):
    what ``curves`` draws, small enough to hand to a drawing process."""
    return {k: _stack(e.finished, k) for k in ("data_loss", "val_data_loss", "loss", "val_loss")}


def curves(items: list[tuple[str, dict[str, np.ndarray]]], loss: str, path: Path) -> Path:
    """Small multiples, one panel per experiment (``(label, histories)``): train and validation
    data loss (solid) and the training objective, data loss + penalties (dashed), mean and 95% CI
    over the finished seeds, drawn while at least half of them still run. Panels share the y axis,
    so curves compare across experiments."""
    cols = min(4, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.5 * rows + 0.4), sharey=True, squeeze=False)
    for ax, (label, series) in zip(axes.ravel(), items):
        _band(ax, series["data_loss"], "tab:blue", "train data loss")
        _band(ax, series["val_data_loss"], "tab:red", "validation data loss")
        if not np.array_equal(series["loss"], series["data_loss"], equal_nan=True):
            _band(ax, series["loss"], "tab:blue", "train objective (+ penalties)", dashed=True)
        ax.set_title(_lit(f"{label} ({series['loss'].shape[0]} seeds)"), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(items):]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel(str(loss).replace("_", " "), fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=3, frameon=False, fontsize=8)
    # the legend row (0.3 in) above the first row's titles; y tick labels (7 pt) and the y label
    # (8 pt) only in the first column
    shown = axes.ravel()[:len(items)]
    left = max(tick_inches(ax, 7) for ax in axes[:, 0]) + 0.42
    xw = max(tick_inches(ax, 7, "x") for ax in shown)  # edge x tick labels reach half out of a panel
    return save(fig, path, dict(rows=rows, cols=cols, left=left, right=max(0.1, xw / 2 + 0.05), bottom=0.45, top=0.6,
                                wgap=max(0.12, xw + 0.05), hgap=0.45))


def boundaries(items: list[tuple[str, dict[str, np.ndarray], int]], path: Path) -> Path:
    """A grid with shared axes: per experiment, one seed's training data with the model's
    decision boundary (p = 0.5) and the Bayes boundary."""
    cols = min(4, len(items))
    rows = -(-len(items) // cols)
    # one set of limits for every panel, set once (shared axes would re-propagate every
    # autoscale to all panels: quadratic in their number, 5 s for 17 panels)
    lim = [(min(float(a[k].min()) for _, a, _ in items), max(float(a[k].max()) for _, a, _ in items))
           for k in ("grid_x", "grid_y")]
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (key, arrays, seed) in zip(axes.ravel(), items):
        _boundary(ax, key, arrays, seed)
        ax.set_xlim(*lim[0])
        ax.set_ylim(*lim[1])
    for i, ax in enumerate(axes.ravel()):
        if i >= len(items):
            ax.axis("off")
            continue
        r, c = divmod(i, cols)
        if i + cols < len(items):  # a panel below: its x tick labels say the same
            ax.tick_params(labelbottom=False)
            ax.set_xlabel("")
        if c:
            ax.tick_params(labelleft=False)
            ax.set_ylabel("")
    # y tick labels and the y label (7 pt) in the first column; gaps and a right margin wide enough
    # for the edge x tick labels, which reach half out of their panel
    size = FontProperties(size=plt.rcParams["ytick.labelsize"]).get_size_in_points()
    left = max(tick_inches(ax, size) for ax in axes[:, 0]) + 0.42
    xw = max(tick_inches(ax, size, "x") for ax in axes.ravel()[:len(items)])
    return save(fig, path, dict(rows=rows, cols=cols, left=left, right=max(0.15, xw / 2 + 0.05), bottom=0.5, top=0.3,
                                wgap=max(0.3, xw + 0.1), hgap=0.3))


def _boundary(ax, key: str, arrays: dict[str, np.ndarray], seed: int) -> None:
    x, y = arrays["x_train"], arrays["y_train"].reshape(-1)
    ax.scatter(x[:, 0], x[:, 1], c=np.where(y > 0.5, "tab:blue", "tab:red"), s=14, alpha=0.5)
    gx, gy = arrays["grid_x"], arrays["grid_y"]
    ax.contourf(gx, gy, arrays["grid_p"], levels=[0, 0.5, 1], colors=["tab:red", "tab:blue"], alpha=0.08)
    ax.contour(gx, gy, arrays["grid_p"], levels=[0.5], colors="k", linewidths=1.5)
    if "grid_bayes" in arrays:
        ax.contour(gx, gy, arrays["grid_bayes"], levels=[0.5], colors="tab:green", linewidths=1.5, linestyles="--")
    ax.plot([], [], "k-", label="model (p = 0.5)")
    ax.plot([], [], color="tab:green", ls="--", label="Bayes boundary")
    ax.legend(loc="lower right", fontsize=6, frameon=True)
    ax.set_title(_lit(f"{key}, seed {seed}"), fontsize=8)
    ax.set_xlabel("x1", fontsize=7)
    ax.set_ylabel("x2", fontsize=7)


def activation_histograms(items: list[tuple[str, dict]], rho: float | None, path: Path) -> Path:
    """Histograms of a hidden layer's activations (seed 0) with the mean activation marked."""
    fig, axes = plt.subplots(1, len(items), figsize=(4.2 * len(items), 3.4), squeeze=False)
    for ax, (label, layer) in zip(axes[0], items):
        h = layer["histogram"]
        edges = np.asarray(h["edges"])
        ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge", color="tab:purple", alpha=0.8)
        ax.axvline(layer["mean_activation"], color="k", lw=1, label=f"mean {layer['mean_activation']:.3f}")
        if rho is not None:
            ax.axvline(rho, color="tab:green", ls="--", lw=1, label=f"rho {rho}")
        ax.set_yscale("log")
        ax.set_title(_lit(label), fontsize=9)
        ax.set_xlabel("activation")
        ax.legend(fontsize=8, frameon=False)
    return save(fig, path, dict(rows=1, cols=len(items), left=0.6, right=0.35, bottom=0.5, top=0.3, wgap=0.75,
                                hgap=0.0))


def weight_histograms(groups: dict[str, np.ndarray], path: Path) -> Path:
    """|w| histograms (log scale) for groups of weights, e.g. L1- vs L2-regularized layers."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    bins = np.logspace(-8, 0.5, 60)
    for (label, w), c in zip(groups.items(), ["tab:orange", "tab:blue", "tab:gray"]):
        w = np.clip(np.asarray(w, dtype=float), 1e-8, None)
        ax.hist(w, bins=bins, histtype="step", lw=1.5, color=c, label=_lit(label), weights=np.full(w.size, 1.0 / w.size))
    ax.set_xscale("log")
    ax.set_xlabel("|w|  (values below 1e-8 counted at 1e-8)")
    ax.set_ylabel("fraction of weights")
    ax.legend(fontsize=8, frameon=False)
    return save(fig, path)


def path_plot(path_data: dict, path: Path) -> Path:
    """The path's metrics against the strength, with 95% bands; the x axis shows only the
    strengths tried, evenly spaced (0 stands apart on the left)."""
    lam = np.asarray(path_data["strengths"])
    keys = list(path_data["metrics"])
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    pos = np.arange(lam.size, dtype=float)
    if lam.size > 1 and lam[0] == 0:
        pos[1:] += 0.5
    for ax, k in zip(axes[0], keys):
        v = np.asarray(path_data["metrics"][k], dtype=float)  # (K, seeds)
        st = np.array([mean_ci(row) for row in v])
        ax.plot(pos, st[:, 0], "o-", color="tab:blue", ms=3)
        ok = ~np.isnan(st[:, 1])
        ax.fill_between(pos[ok], st[ok, 1], st[ok, 2], color="tab:blue", alpha=0.25, lw=0)
        if path_data.get("best_strength") is not None:
            ax.axvline(pos[list(lam).index(path_data["best_strength"])], color="k", ls=":", lw=1)
        ax.set_xticks(pos, [f"{x:.0e}" if x else "0" for x in lam], rotation=45, fontsize=7)
        ax.set_xlabel("lambda (strength tried; 0 = no regularization)")
        ax.set_title(k.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
    return save(fig, path, dict(rows=1, cols=len(keys), left=0.6, right=0.15, bottom=0.85, top=0.3, wgap=0.65,
                                hgap=0.0))


def forest(rows: list[tuple], metric: str, better: str, path: Path) -> Path:
    """Forest plot: per experiment ``(label, estimate, ci_low, ci_high, margin, verdict[, best])``
    the paired difference from its own baseline with its interval (filled marker), and where
    given ``best = (estimate, ci_low, ci_high, verdict)`` from the best plain baseline (hollow
    marker, just below); the zero line and the margin band (differences too small to matter);
    colour by verdict."""
    colours = {"better": "tab:green", "worse": "tab:red", "equivalent": "tab:blue", "inconclusive": "0.45",
               "no verdict": "0.7"}
    n = len(rows)
    fig, ax = plt.subplots(figsize=(8.5, 1.1 + 0.42 * n))
    for i, r in enumerate(rows):
        label, est, lo, hi, margin, verdict = r[:6]
        y = n - 1 - i
        if np.isfinite(margin):
            ax.fill_betweenx([y - 0.45, y + 0.45], -margin, margin, color="tab:blue", alpha=0.08, lw=0)
        series = [(y + 0.12, est, lo, hi, verdict, True)]
        if len(r) > 6 and r[6] is not None:
            series.append((y - 0.18, *r[6], False))
        for yy, e, a, b, v, own in series:
            c = colours.get(v, "k")
            if np.isfinite(a) and np.isfinite(b):
                ax.plot([a, b], [yy, yy], color=c, lw=2 if own else 1.2)
            ax.plot([e], [yy], "o", color=c, ms=5, mfc=c if own else "white")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(n))
    ax.set_yticklabels([_lit(f"{r[0]}  ({r[5]}" + (f"; vs plain: {r[6][3]}" if len(r) > 6 and r[6] else "") + ")")
                        for r in reversed(rows)], fontsize=8)
    ax.set_xlabel(f"experiment - baseline, {metric} ({better} is better)\nfilled: against its own baseline; "
                  "hollow: against the best plain baseline; band: the margin", fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)
