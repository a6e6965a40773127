"""Calibration metrics: pure functions of probabilities ``(n, k)`` (or a :class:`TopLabel`) and labels ``(n,)``.

Conventions (SPEC §3)
---------------------
- ``confidence = max_j p_j``; ``prediction = argmax_j p_j`` (ties: first index, as ``numpy.argmax``);
  ``correct = 1[prediction == label]``.
- Every function returns a **fraction** (ECE 0.087, not 8.7 %); reports multiply by 100.
- Equal-width bins are ``[e_b, e_{b+1})`` with ``e = linspace(0, 1, n_bins + 1)``; the last bin is closed, so a
  confidence of exactly 1.0 falls in it. This is ``numpy.histogram``'s convention (and netcal's).
- Inputs are validated once per call: ``probs`` finite, in [0, 1], rows summing to 1 (within 1e-6);
  ``labels`` integer option indices in ``[0, k)`` (``-1`` = unknown is refused: these metrics need labels).

Modules: :mod:`.core` (binned ECE / MCE / AECE, Brier, NLL, accuracy, AUROC, selective curves),
:mod:`.smooth` (smooth ECE), :mod:`.extra` (classwise ECE, Brier decomposition, debiased ECE),
:mod:`.summary` (:data:`METRICS`, :func:`evaluate`), :mod:`.bootstrap` (intervals), :mod:`.sums` (the same
metrics from block-wise sums, for files too large for memory), :mod:`.columns` (the one table of metric
columns that every table reads), :mod:`.conformal` (split-conformal prediction sets).
"""

from .bootstrap import (
    BOOTSTRAPPED,
    ConfidenceInterval,
    bootstrap_all,
    bootstrap_ci,
    bootstrap_nll_ci,
    nll_from_log_proba,
)
from .columns import COLUMNS, Column, columns
from .conformal import (
    ConformalSets,
    conformal_metrics,
    conformal_quantile,
    conformal_sets,
    conformity_scores,
    coverage,
    prediction_sets,
    set_sizes,
)
from .core import (
    DEFAULT_THRESHOLDS,
    ReliabilityBins,
    RiskCoverage,
    SelectiveCurve,
    TopLabel,
    accuracy,
    aece,
    aurc,
    auroc,
    brier,
    brier_multiclass,
    ece,
    log,
    mce,
    nll,
    reliability_bins,
    risk_coverage,
    selective_accuracy,
)
from .extra import BrierDecomposition, brier_decomposition, classwise_ece, debiased_ece
from .smooth import smooth_ece, smooth_ece_at, smooth_ece_bandwidth
from .summary import METRICS, evaluate

__all__ = [
    "ReliabilityBins", "SelectiveCurve", "RiskCoverage", "ConfidenceInterval", "BrierDecomposition",
    "reliability_bins", "ece", "mce", "aece", "brier", "brier_multiclass", "nll", "accuracy", "auroc",
    "selective_accuracy", "risk_coverage", "aurc", "bootstrap_ci", "bootstrap_nll_ci", "nll_from_log_proba",
    "BOOTSTRAPPED", "bootstrap_all", "smooth_ece", "smooth_ece_at", "smooth_ece_bandwidth", "classwise_ece", "brier_decomposition", "debiased_ece",
    "evaluate", "METRICS", "COLUMNS", "Column", "columns",
    "ConformalSets", "conformal_quantile", "conformal_sets", "conformity_scores", "coverage", "set_sizes",
    "prediction_sets", "conformal_metrics",
    "DEFAULT_THRESHOLDS", "TopLabel", "log",
]
