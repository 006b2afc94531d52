"""Known data distributions and their Bayes-optimal predictions.

Each distribution mirrors a scikit-learn generator (same parameters, same meaning) and knows
``posterior(x) = P(y=1 | x)``. From it: the Bayes log-loss and accuracy, the lowest any model can
reach, and every model's *excess risk* over them.

- ``TwoGaussians`` (``make_blobs`` with two centers): closed-form posterior, a logistic function
  of the projection on the line between the centers; Bayes accuracy ``Phi(d / 2 sigma)`` and
  Bayes log-loss by 1-D quadrature.
- ``Moons`` and ``Circles`` (``make_moons``, ``make_circles``): points lie on curves
  ``c_k(t)`` with ``t`` uniform, plus isotropic Gaussian noise, so
  ``p(x | y=k) = E_t[N(x; c_k(t), sigma^2 I)]``, computed by quadrature over ``t``. Their Bayes
  risks are Monte-Carlo averages of the exact posterior over a large sample (fixed seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import integrate, special, stats
from sklearn.datasets import make_blobs, make_circles, make_moons

__all__ = ["Distribution", "TwoGaussians", "Moons", "Circles"]

_CLIP = 1e-7


def _log_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _CLIP, 1 - _CLIP)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


class Distribution:
    """Base: ``posterior``, ``sample``, ``bayes_log_loss``, ``bayes_accuracy``, ``excess_risk``."""

    name = "distribution"
    mc_samples = 100_000

    def posterior(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def sample(self, n: int, random_state: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    @cached_property
    def _mc(self) -> tuple[float, float]:
        x, y = self.sample(self.mc_samples, random_state=12345)
        p = self.posterior(x)
        return float(_log_loss(y, p).mean()), float(((p > 0.5) == (y > 0.5)).mean())

    @property
    def bayes_log_loss(self) -> float:
        return self._mc[0]

    @property
    def bayes_accuracy(self) -> float:
        return self._mc[1]

    def excess_risk(self, x: np.ndarray, y: np.ndarray, p: np.ndarray) -> dict[str, float]:
        """Model log-loss/accuracy minus the Bayes posterior's on the same points ``(x, y)``."""
        y = np.asarray(y, dtype=float).reshape(-1)
        p = np.asarray(p, dtype=float).reshape(-1)
        q = self.posterior(x)
        return {
            "log_loss": float(_log_loss(y, p).mean() - _log_loss(y, q).mean()),
            "accuracy": float(((p > 0.5) == (y > 0.5)).mean() - ((q > 0.5) == (y > 0.5)).mean()),
        }

    def params(self) -> dict:
        return {}


@dataclass(frozen=True)
class TwoGaussians(Distribution):
    """Two isotropic Gaussians with equal priors (``make_blobs(centers=[c0, c1], cluster_std=sigma)``)."""

    c0: tuple[float, float] = (0.0, 0.0)
    c1: tuple[float, float] = (0.5, 0.1)
    sigma: float = 0.25
    name = "blobs"

    def posterior(self, x):
        x = np.asarray(x, dtype=float)
        c0, c1 = np.asarray(self.c0), np.asarray(self.c1)
        logit = (np.sum((x - c0) ** 2, axis=1) - np.sum((x - c1) ** 2, axis=1)) / (2 * self.sigma**2)
        return special.expit(logit)

    def sample(self, n, random_state=None):
        x, y = make_blobs(n_samples=n, n_features=2, centers=[list(self.c0), list(self.c1)], cluster_std=self.sigma,
                          random_state=random_state)
        return x, y.astype(float)

    @property
    def _d(self) -> float:
        return float(np.linalg.norm(np.subtract(self.c1, self.c0)))

    @property
    def bayes_accuracy(self) -> float:
        return float(stats.norm.cdf(self._d / (2 * self.sigma)))

    @property
    def bayes_log_loss(self) -> float:
        # projection t on the unit vector c0 -> c1, centred: t ~ N(+-d/2, sigma^2), logit = d t / sigma^2
        d, s = self._d, self.sigma

        def integrand(t):
            return stats.norm.pdf(t, d / 2, s) * -special.log_expit(d * t / s**2)

        val, _ = integrate.quad(integrand, d / 2 - 12 * s, d / 2 + 12 * s, limit=200)
        return float(val)

    def params(self):
        return {"c0": list(self.c0), "c1": list(self.c1), "sigma": self.sigma}


class _Curves(Distribution):
    """Two curves ``c_0(t), c_1(t)`` for ``t`` uniform on ``[0, T)``, plus N(0, sigma^2 I) noise."""

    n_nodes = 256
    period = np.pi

    def curve(self, k: int, t: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _class_density(self, k: int, x: np.ndarray) -> np.ndarray:
        # midpoint rule over t (periodic for circles, smooth for moons): error far below MC noise
        t = (np.arange(self.n_nodes) + 0.5) * self.period / self.n_nodes
        c = self.curve(k, t)  # (T, 2)
        s2 = self.noise**2
        d2 = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)  # (n, T)
        return np.exp(-d2 / (2 * s2)).mean(axis=1)

    def posterior(self, x):
        x = np.asarray(x, dtype=float)
        out = np.empty(x.shape[0])
        for i in range(0, x.shape[0], 4096):  # bound memory
            xi = x[i:i + 4096]
            p0, p1 = self._class_density(0, xi), self._class_density(1, xi)
            tot = p0 + p1
            out[i:i + 4096] = np.where(tot > 0, p1 / np.where(tot > 0, tot, 1.0), 0.5)
        return out

    def params(self):
        return {"noise": self.noise}


@dataclass(frozen=True)
class Moons(_Curves):
    """``make_moons(noise=...)``: upper arc ``(cos t, sin t)`` is class 0, lower arc
    ``(1 - cos t, 0.5 - sin t)`` class 1, ``t`` uniform on ``[0, pi]``."""

    noise: float = 0.2
    name = "moons"
    period = np.pi

    def curve(self, k, t):
        if k == 0:
            return np.stack([np.cos(t), np.sin(t)], axis=1)
        return np.stack([1 - np.cos(t), 0.5 - np.sin(t)], axis=1)

    def sample(self, n, random_state=None):
        x, y = make_moons(n_samples=n, noise=self.noise, random_state=random_state)
        return x, y.astype(float)


@dataclass(frozen=True)
class Circles(_Curves):
    """``make_circles(noise=..., factor=...)``: outer unit circle is class 0, inner circle of radius
    ``factor`` class 1, angle uniform on ``[0, 2 pi)``."""

    noise: float = 0.1
    factor: float = 0.5
    name = "circles"
    period = 2 * np.pi

    def curve(self, k, t):
        r = 1.0 if k == 0 else self.factor
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)

    def sample(self, n, random_state=None):
        x, y = make_circles(n_samples=n, noise=self.noise, factor=self.factor, random_state=random_state)
        return x, y.astype(float)

    def params(self):
        return {"noise": self.noise, "factor": self.factor}
