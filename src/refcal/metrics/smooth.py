r"""Smooth ECE (Błasiok & Nakkiran, "Smooth ECE: Principled Reliability Diagrams via Kernel Smoothing", 2023).

With confidences :math:`f_i`, residuals :math:`r_i = f_i - o_i` (``o`` = correct) and a Gaussian kernel
:math:`K_\sigma` reflected at 0 and 1 (so no mass leaks out of [0, 1]), the smoothed residual and density are

.. math:: \hat r_\sigma(t) = \frac{\sum_i K_\sigma(t, f_i)\, r_i}{\sum_i K_\sigma(t, f_i)}, \qquad
          \hat\delta_\sigma(t) = \tfrac1n \sum_i K_\sigma(t, f_i),
          \qquad \mathrm{smECE}_\sigma = \int_0^1 |\hat r_\sigma(t)|\, \hat\delta_\sigma(t)\, dt,

and smECE is :math:`\mathrm{smECE}_{\sigma^*}` at the fixed point :math:`\mathrm{smECE}_{\sigma^*} = \sigma^*`
(the map is decreasing in :math:`\sigma`, so bisection finds it). Unlike binned ECE it is consistent (a
continuous function of the predictor) and needs no bin count.

This module computes it **the way the authors' package relplot 1.0.3 does**, so the two agree to ~1e-12
(the tests check 1e-6): the points are split linearly onto a grid of ``m = max(2000, round(20/σ)) // 2 + 1``
nodes on [0, 1]; the grid is convolved with the kernel (reflected at both ends, by FFT here, directly in
relplot); the result is interpolated linearly at ``E = max(200, round(10/σ))`` evaluation points; the
integral is the ratio :math:`\sum_t |S_r(t)| / \sum_t (S_1(t) + 10^{-4})` of the smoothed residual and
density sums (relplot's ``eps`` of 1e-4 included); the fixed point is 10 bisection steps on [0, 1] (σ = 1
when smECE_1 >= 1, a width below 1e-3 stops the search). The grid gives an error of order 1/m against the
exact integral, far below the estimator's sampling error.
"""

from __future__ import annotations

import numpy as np

from .core import TopLabel, _check, _conf_correct

__all__ = ["smooth_ece", "smooth_ece_bandwidth", "smooth_ece_at"]

_EPS_DENSITY = 1e-4  # relplot's ``BaseKernelMixin.smooth`` eps
_MESH = 200  # relplot's ``config.smECE_mesh_pts``
_BISECT = 10
_MIN_WIDTH = 1e-3


def _smooth_sums(f: np.ndarray, v: np.ndarray, sigma: float, t_eval: np.ndarray) -> np.ndarray:
    """``sum_i K_sigma(t, f_i) v_i`` at ``t_eval`` for each row of ``v`` (r, n) (reflected Gaussian on a grid;
    see the module docstring): one FFT of the kernel, one of the r grids."""
    from scipy import fft

    m = max(2000, round(20 / sigma)) // 2 + 1
    pos = f * (m - 1)
    lo = np.clip(pos.astype(np.int64), 0, m - 2)
    frac = pos - lo
    grid = np.stack([np.bincount(lo, weights=(1 - frac) * w, minlength=m) + np.bincount(lo + 1, weights=frac * w, minlength=m)
                     for w in v])
    t = np.linspace(0.0, 1.0, m)
    kernel = np.exp(-((t - 0.5) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    ext = np.concatenate([grid[:, ::-1][:, :-1], grid, grid[:, ::-1][:, 1:]], axis=1)  # reflect at 0 and 1
    size = fft.next_fast_len(ext.shape[1] + m - 1, real=True)
    full = fft.irfft(fft.rfft(ext, size, axis=1) * fft.rfft(kernel, size), size, axis=1)
    # "valid" part of the convolution (kernel symmetric), then the m nodes of [0, 1] (relplot's slice)
    smoothed = full[:, m - 1: ext.shape[1]][:, m // 2: m // 2 + m]
    # linear interpolation of the grid at t_eval (relplot's ``interpolate``: last cell closed)
    idx = np.clip((t_eval * (m - 1)).astype(np.int64), 0, m - 2)
    w = (t_eval - idx / (m - 1)) * (m - 1)
    return smoothed[:, idx] * (1 - w) + smoothed[:, idx + 1] * w


def _smece_sigma(conf: np.ndarray, corr: np.ndarray, sigma: float) -> float:
    t = np.linspace(0.0, 1.0, max(round(10 / sigma), _MESH))
    s_r, s_1 = _smooth_sums(conf, np.stack([conf - corr, np.ones_like(conf)]), sigma, t)
    return float(np.sum(np.abs(s_r)) / np.sum(s_1 + _EPS_DENSITY))


def _fixed_point(conf: np.ndarray, corr: np.ndarray) -> float:
    """The bandwidth σ* with smECE_σ* = σ* (bisection, as relplot's ``search_param``)."""
    def too_narrow(s: float) -> bool:  # smECE_s > s: the fixed point lies above s
        return s < _MIN_WIDTH or s < _smece_sigma(conf, corr, s)

    if too_narrow(1.0):
        return 1.0
    hi, lo = 1.0, 0.0  # smECE_hi <= hi < ... the fixed point lies in (lo, hi]
    for _ in range(_BISECT):
        mid = (hi + lo) / 2
        if too_narrow(mid):
            lo = mid
        else:
            hi = mid
    return hi


def smooth_ece_from(conf: np.ndarray, corr: np.ndarray, sigma: float | None = None) -> tuple[float, float]:
    """``(smECE, σ)`` of confidences (n,) and 0/1 correctness (n,), already checked (for the block sums)."""
    s = _fixed_point(conf, corr) if sigma is None else float(sigma)
    return _smece_sigma(conf, corr, s), s


def smooth_ece(probs: np.ndarray | TopLabel, labels: np.ndarray) -> float:
    """Smooth ECE of the top-label confidence (a fraction, like :func:`~refcal.metrics.ece`), with the
    bandwidth chosen by the fixed-point rule (see the module docstring)."""
    conf, corr = _conf_correct(*_check(probs, labels))
    return smooth_ece_from(conf, corr)[0]


def smooth_ece_bandwidth(probs: np.ndarray | TopLabel, labels: np.ndarray) -> float:
    """The kernel width σ* at which :func:`smooth_ece` is evaluated (smECE at σ* equals σ*)."""
    conf, corr = _conf_correct(*_check(probs, labels))
    return _fixed_point(conf, corr)


def smooth_ece_at(probs: np.ndarray | TopLabel, labels: np.ndarray, *, sigma: float) -> float:
    """Smooth ECE at a fixed kernel width ``sigma`` in (0, 1] (relplot's ``smECE_sigma``)."""
    from ..errors import InputError

    if isinstance(sigma, bool) or not isinstance(sigma, (int, float, np.floating)) or not 0 < sigma <= 1:
        raise InputError(f"sigma must be a number in (0, 1]; got {sigma!r}")
    conf, corr = _conf_correct(*_check(probs, labels))
    return _smece_sigma(conf, corr, float(sigma))
