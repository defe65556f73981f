"""Data-free: the power-law exponent α of each layer's weight spectrum (Martin & Mahoney).

Heavy-Tailed Self-Regularization (Martin & Mahoney 2019–2021, the ``weightwatcher`` tool): the
empirical spectral density (ESD) of a trained layer's weight matrix ``W`` (the eigenvalues of
``WᵀW``, i.e. the squared singular values) has a power-law tail ``ρ(λ) ∝ λ^(−α)``; smaller
α means stronger correlations learned, and the authors read α < 2 as over-trained. It needs
no data at all, only the weights after each epoch.

* :func:`layer_eigenvalues`: the ESD of one weight tensor as ``weightwatcher`` forms it: a
  ``Linear``'s ``(out, in)`` matrix; a convolution's ``(out, in, k₁, k₂, …)`` kernel as
  ``k₁·k₂·…`` matrices ``(out, in)`` (one per kernel position), their eigenvalues pooled;
  eigenvalues ≤ 1e-5 dropped (the tool's threshold).
* :func:`power_law_fit`: the continuous power-law fit of Clauset, Shalizi & Newman (2009), as
  ``weightwatcher`` and the ``powerlaw`` package do it: for every candidate ``x_min`` (each
  eigenvalue but the largest) the maximum-likelihood ``α = 1 + n / Σ ln(λ_i / x_min)`` over
  the ``n`` eigenvalues ≥ ``x_min``, and the Kolmogorov–Smirnov distance between that tail and
  the fitted law; the ``x_min`` with the smallest distance wins. Spectra with fewer than
  ``min_eigenvalues`` (20, where ``weightwatcher`` switches to a small-sample estimator) give NaN.
* :func:`model_alpha`: one row per ``Linear``/convolution layer; the study's signal is the
  mean α over the layers with a finite α.

Each candidate is one vectorised NumPy pass, so the layers of a ResNet-18 at width 16 take about 0.1 s;
``tests/test_stopping.py`` checks the fit against ``powerlaw.Fit`` and ``weightwatcher``.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> pareto = (1 - rng.random(5000)) ** (-1 / 1.5)   # density ∝ x^(-2.5) on [1, ∞)
>>> round(power_law_fit(pareto).alpha, 1)
2.5
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

__all__ = ["EIGENVALUE_FLOOR", "PowerLawFit", "layer_eigenvalues", "model_alpha", "power_law_fit"]

#: Eigenvalues at or below this are dropped before the fit (``weightwatcher``'s ``EVALS_THRESH``).
EIGENVALUE_FLOOR = 1e-5
_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class PowerLawFit:
    """The fitted tail: ``alpha``, ``xmin``, the KS distance ``ks``, ``tail`` (eigenvalues ≥ ``xmin``), ``n`` (all)."""

    alpha: float
    xmin: float
    ks: float
    tail: int
    n: int


def layer_eigenvalues(weight: Tensor) -> np.ndarray:
    """Sorted eigenvalues of ``WᵀW`` of a 2-d weight, or pooled over the kernel positions of a conv weight."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a tensor, got {type(weight).__name__}")
    w = weight.detach().to("cpu", torch.float64)
    if w.ndim < 2:
        raise ValueError(f"weight must have at least 2 dimensions (out, in, ...), got shape {tuple(w.shape)}")
    mats = w.unsqueeze(0) if w.ndim == 2 else w.flatten(2).permute(2, 0, 1)
    sv = torch.linalg.svdvals(mats)
    evals = (sv * sv).flatten().numpy()
    return np.sort(evals[evals > EIGENVALUE_FLOOR])


def power_law_fit(eigenvalues: np.ndarray, min_eigenvalues: int = 20) -> PowerLawFit:
    """Clauset–Shalizi–Newman continuous power-law fit with ``x_min`` chosen by the KS distance (module docstring)."""
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    x = x[np.isfinite(x) & (x > 0)]
    n = len(x)
    if n < max(2, int(min_eigenvalues)):
        return PowerLawFit(math.nan, math.nan, math.nan, 0, n)
    logs = np.log(x)
    tail_sum = np.cumsum(logs[::-1])[::-1]  # Σ_{j >= i} ln x_j
    count = (n - np.arange(n - 1)).astype(np.float64)  # tail size of each candidate x_min = x[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        alpha = 1.0 + count / (tail_sum[:-1] - count * logs[:-1])
    ks = np.ones(n - 1)
    positions = np.arange(n, dtype=np.float64)
    for i in np.flatnonzero(np.isfinite(alpha) & (alpha > 1)):
        # fitted CDF 1 − (x / x_min)^(1 − α) against the empirical k / n of the tail
        fitted = -np.expm1((1.0 - alpha[i]) * (logs[i:] - logs[i]))
        ks[i] = np.abs(fitted - positions[: n - i] / count[i]).max()
    best = int(np.argmin(ks))
    return PowerLawFit(float(alpha[best]), float(x[best]), float(ks[best]), int(count[best]), n)


def model_alpha(model: nn.Module, min_eigenvalues: int = 20) -> pd.DataFrame:
    """One row per ``Linear``/convolution layer: ``layer, eigenvalues, alpha, xmin, ks, tail``.

    >>> net = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Flatten(), nn.Linear(32, 10))
    >>> list(model_alpha(net).columns)
    ['layer', 'eigenvalues', 'alpha', 'xmin', 'ks', 'tail']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    rows = []
    for name, module in model.named_modules():
        if isinstance(module, _LAYERS):
            fit = power_law_fit(layer_eigenvalues(module.weight), min_eigenvalues)
            rows.append(
                {
                    "layer": name,
                    "eigenvalues": fit.n,
                    "alpha": fit.alpha,
                    "xmin": fit.xmin,
                    "ks": fit.ks,
                    "tail": fit.tail,
                }
            )
    return pd.DataFrame(rows, columns=["layer", "eigenvalues", "alpha", "xmin", "ks", "tail"])
