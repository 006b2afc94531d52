"""Sparse autoencoder on scikit-learn's digits: KL sparsity vs L1 activity vs none.

Encoder ``Dense(64 -> 32, sigmoid)`` whose output (the code) carries the activity regularizer,
decoder ``Dense(32 -> 64, sigmoid)``; mean-squared reconstruction error; Keras Adam. As in Keras,
activity penalties are divided by the batch size, so the KL strength that reaches a mean code
activation near ``rho`` is larger than the unscaled formula suggests: with batch size ``B`` the KL
term acts with weight ``strength / B``. ``KL_STRENGTH`` was chosen by measurement (see the report)
so that the mean code activation lies within [rho/2, 2 rho]; ``L1_STRENGTH`` likewise gives a
comparably sparse code for the L1 comparison.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reglab import datasets as _datasets
from reglab import fit
from reglab.diagnostics.evaluate import predict
from reglab.diagnostics.sparsity import sparsity
from reglab.layers import Dense
from reglab.regularizers import L1, KLSparsity

__all__ = ["run", "RHO", "KL_STRENGTH", "L1_STRENGTH"]

RHO = 0.05
KL_STRENGTH = 1.0
L1_STRENGTH = 0.01
EPOCHS = 60
BATCH = 64


def autoencoder(code_regularizer: Any = None) -> torch.nn.Sequential:
    return torch.nn.Sequential(Dense(64, 32, activation="sigmoid", activity_regularizer=code_regularizer),
                               Dense(32, 64, activation="sigmoid"))


def run(out: str | Path, seed: int = 0, epochs: int = EPOCHS, progress: bool = False) -> dict:
    """Train the three autoencoders; return the analysis document (``reglab study`` writes it to
    ``out/analyses/autoencoder.json``) and write its figures."""
    out = Path(out)
    t0 = time.perf_counter()
    ds = _datasets.digits(random_state=seed)
    regs = {"none": None, "l1_activity": L1(L1_STRENGTH), "kl_sparsity": KLSparsity(RHO, KL_STRENGTH)}
    models, results = {}, {}
    for name, reg in regs.items():
        torch.manual_seed(seed)
        model = autoencoder(reg)
        h = fit(model, ds.x_train, ds.x_train, loss="mse", optimizer={"name": "adam", "learning_rate": 0.005},
                epochs=epochs, batch_size=BATCH, validation_data=(ds.x_test, ds.x_test), seed=seed, metrics=(),
                progress=progress)
        rec = predict(model, ds.x_test)
        sp = sparsity(model, ds.x_test, ["0"])["layers"]["0"]
        models[name] = model
        results[name] = {
            "regularizer": repr(reg) if reg is not None else "none",
            "mean_code_activation": sp["mean_activation"],
            "reconstruction_mse": float(np.mean((rec - ds.x_test) ** 2)),
            "dead_fraction": sp["dead_fraction"],
            "l0_per_example": sp["l0_per_example"],
            "histogram": sp["histogram"],
            "final_val_loss": float(h["val_loss"][-1]),
        }
    kl = results["kl_sparsity"]
    within = RHO / 2 <= kl["mean_code_activation"] <= 2 * RHO
    figures = _figures(models, results, ds, out)
    doc = {
        "title": "Sparse autoencoder on digits (the lecture's program 7 idea where it works)",
        "table": {"header": ["model", "code regularizer", "mean code activation", "test reconstruction MSE",
                             "dead units", "L0"],
                  "rows": [[f"`{k}`", v["regularizer"], f"{v['mean_code_activation']:.4f}",
                            f"{v['reconstruction_mse']:.5f}", f"{100 * v['dead_fraction']:.0f}%",
                            f"{v['l0_per_example']:.1f}"] for k, v in results.items()]},
        "description": (f"Autoencoder 64 -> 32 (sigmoid code) -> 64 on the digits ({ds.x_train.shape[0]} train / "
                        f"{ds.x_test.shape[0]} test images, pixels in [0, 1]), MSE loss, Adam lr 0.005, batch {BATCH}, "
                        f"{epochs} epochs, seed {seed}. KL sparsity with rho = {RHO} and strength {KL_STRENGTH} (acting as "
                        f"{KL_STRENGTH}/{BATCH} = {KL_STRENGTH / BATCH:.3f} after Keras's division by the batch size; "
                        f"chosen by measurement so that the mean code activation lands within [rho/2, 2 rho]); L1 "
                        f"activity {L1_STRENGTH} for comparison."),
        "models": results,
        "rho": RHO,
        "kl_within_target": within,
        "verdict": (f"KL sparsity puts the mean code activation at {kl['mean_code_activation']:.4f} "
                    f"({'within' if within else 'OUTSIDE'} [{RHO / 2}, {2 * RHO}]) at a reconstruction MSE of "
                    f"{kl['reconstruction_mse']:.5f}, against {results['none']['reconstruction_mse']:.5f} unregularized "
                    f"(mean activation {results['none']['mean_code_activation']:.3f}) and "
                    f"{results['l1_activity']['reconstruction_mse']:.5f} with L1 activity "
                    f"(mean activation {results['l1_activity']['mean_code_activation']:.3f})."),
        "figures": figures,
        "seconds": time.perf_counter() - t0,
    }
    return doc


def _figures(models, results, ds, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    names = []
    fig, axes = plt.subplots(len(models), 1, figsize=(10, 2.0 * len(models)))
    for ax, (name, model) in zip(axes, models.items()):
        w = model[0].weight.detach().cpu().numpy()  # (32, 64): one learned feature per code unit
        tiles = [(r - r.min()) / (np.ptp(r) + 1e-12) for r in w]
        grid = np.ones((2 * 9 - 1, 16 * 9 - 1))
        for i, t in enumerate(tiles):
            rr, cc = divmod(i, 16)
            grid[rr * 9:rr * 9 + 8, cc * 9:cc * 9 + 8] = t.reshape(8, 8)
        ax.imshow(grid, cmap="gray", interpolation="nearest")
        ax.set_title(f"{name}: encoder features (one 8x8 tile per code unit)", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(figs / "autoencoder_features.png", dpi=90)
    plt.close(fig)
    names.append("figures/autoencoder_features.png")
    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.2))
    for ax, (name, r) in zip(axes, results.items()):
        e = np.asarray(r["histogram"]["edges"])
        ax.bar(e[:-1], r["histogram"]["counts"], width=np.diff(e), align="edge", color="tab:purple")
        ax.axvline(r["mean_code_activation"], color="k", lw=1, label=f"mean {r['mean_code_activation']:.3f}")
        ax.axvline(RHO, color="tab:green", ls="--", lw=1, label=f"rho {RHO}")
        ax.set_yscale("log")
        ax.set_title(f"{name}: code activations", fontsize=9)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(figs / "autoencoder_code_histogram.png", dpi=90)
    plt.close(fig)
    names.append("figures/autoencoder_code_histogram.png")
    return names
