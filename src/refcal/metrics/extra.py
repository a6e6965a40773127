r"""Classwise ECE, the Brier-score decomposition and the debiased ECE.

* **Classwise ECE** (Kull et al., NeurIPS 2019): the mean over options ``j`` of the equal-width binned ECE
  of the binary forecast ``p_j`` of the event ``y = j``, every question counted for every option (a
  missing option has ``p_j = 0`` and is never the label):
  :math:`\mathrm{cwECE} = \frac1k \sum_j \sum_b \frac{|B_{jb}|}{N} |\bar o_{jb} - \bar p_{jb}|`.
* **Brier decomposition** (Murphy 1973) of the paper's top-label Brier score
  :math:`\mathrm{BS} = \frac1N\sum_i (c_i - o_i)^2` over the ECE's equal-width bins: reliability
  :math:`\mathrm{REL} = \sum_b \frac{n_b}{N}(\bar c_b - \bar o_b)^2`, resolution
  :math:`\mathrm{RES} = \sum_b \frac{n_b}{N}(\bar o_b - \bar o)^2`, uncertainty :math:`\mathrm{UNC} = \bar o(1-\bar o)`.
  With binned forecasts the **exact** identity (Stephenson, Coelho & Jolliffe 2008) is

  .. math:: \mathrm{BS} = \mathrm{REL} - \mathrm{RES} + \mathrm{UNC} + \mathrm{WBV} - 2\,\mathrm{WBC},

  :math:`\mathrm{WBV} = \frac1N\sum_b\sum_{i\in b}(c_i - \bar c_b)^2` (within-bin variance of the
  confidence), :math:`\mathrm{WBC} = \frac1N\sum_b\sum_{i\in b}(c_i - \bar c_b)(o_i - \bar o_b)`
  (within-bin covariance); both vanish when every bin holds one confidence value, leaving Murphy's
  three-term identity.
* **Debiased ECE** (Kumar, Liang & Ma, "Verified Uncertainty Calibration", NeurIPS 2019): the plug-in
  squared ECE overestimates the true one by the bins' sampling variance; subtracting its unbiased estimate
  gives :math:`\widehat{\mathrm{ECE}^2} = \sum_b \frac{n_b}{N}\big[(\bar c_b - \bar o_b)^2 -
  \frac{\bar o_b(1-\bar o_b)}{n_b - 1}\big]` (a bin with fewer than 2 questions adds 0), and the debiased
  ECE is :math:`\sqrt{\max(0, \widehat{\mathrm{ECE}^2})}` — an :math:`\ell_2` calibration error, on equal-mass
  bins as in Kumar et al.'s code (``calibration.get_calibration_error(..., debias=True)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .core import TopLabel, _check, _check_bins, _conf_correct, reliability_bins

__all__ = ["classwise_ece", "BrierDecomposition", "brier_decomposition", "debiased_ece"]


def classwise_ece(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> float:
    """Classwise ECE (see the module docstring); needs a distribution (not a :class:`TopLabel`)."""
    p, y = _check(probs, labels, distribution=True)
    n_bins = _check_bins(n_bins)
    n, k = p.shape
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n_bins - 1)  # (n, k); 1.0 in the last bin
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1.0
    flat = (idx + n_bins * np.arange(k)[None, :]).ravel()  # one set of bins per option
    sums_p = np.bincount(flat, weights=p.ravel(), minlength=n_bins * k)
    sums_o = np.bincount(flat, weights=onehot.ravel(), minlength=n_bins * k)
    total = float(np.sum(np.abs(sums_o - sums_p))) / n  # sum_b n_b/N |o_b - p_b| = sum_b |S_o - S_p| / N
    return total / k


@dataclass(frozen=True)
class BrierDecomposition:
    """Terms of the binned Brier decomposition (see the module docstring); every value a fraction.

    ``brier == reliability - resolution + uncertainty + within_variance - 2 * within_covariance`` up to
    rounding; ``n_bins`` equal-width bins (the ECE's).
    """

    brier: float
    reliability: float
    resolution: float
    uncertainty: float
    within_variance: float
    within_covariance: float
    n_bins: int


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)


def brier_decomposition(probs: np.ndarray | TopLabel, labels: np.ndarray, *, n_bins: int = 10) -> BrierDecomposition:
    """Reliability, resolution and uncertainty of the top-label Brier score (and the two within-bin terms
    that make the identity exact for binned forecasts)."""
    p, y = _check(probs, labels)
    n_bins = _check_bins(n_bins)
    conf, corr = _conf_correct(p, y)
    bins = reliability_bins(p, y, n_bins=n_bins)
    nz = bins.counts > 0
    w = bins.counts[nz] / bins.n
    c_b, o_b, o = bins.confidence[nz], bins.accuracy[nz], float(corr.mean())
    idx = _bin_index(conf, n_bins)
    dc = conf - bins.confidence[idx]
    do = corr - bins.accuracy[idx]
    return BrierDecomposition(
        brier=float(np.mean((conf - corr) ** 2)),
        reliability=float(np.sum(w * (c_b - o_b) ** 2)),
        resolution=float(np.sum(w * (o_b - o) ** 2)),
        uncertainty=o * (1 - o),
        within_variance=float(np.mean(dc**2)),
        within_covariance=float(np.mean(dc * do)),
        n_bins=n_bins,
    )


def debiased_ece(probs: np.ndarray | TopLabel, labels: np.ndarray, *, n_bins: int = 10) -> float:
    """Kumar et al.'s debiased (l2) ECE on ``n_bins`` equal-mass bins (see the module docstring)."""
    bins = reliability_bins(probs, labels, n_bins=n_bins, strategy="quantile")
    return debiased_from_bins(bins.counts, bins.accuracy, bins.confidence)


def debiased_from_bins(counts: np.ndarray, accuracy: np.ndarray, confidence: np.ndarray) -> float:
    """The debiased ECE of per-bin counts, accuracies and mean confidences (shared with the block sums)."""
    n = counts.sum()
    ok = counts >= 2
    c = counts[ok].astype(np.float64)
    a, m = accuracy[ok], confidence[ok]
    sq = float(np.sum(c / n * ((m - a) ** 2 - a * (1 - a) / (c - 1))))
    return float(np.sqrt(max(sq, 0.0)))
