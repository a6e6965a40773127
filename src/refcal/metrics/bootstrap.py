"""Percentile-bootstrap intervals of any metric (resampling questions with replacement)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from ..errors import InputError
from .core import _QUIET, _check, log
from .summary import METRICS

__all__ = ["ConfidenceInterval", "BOOTSTRAPPED", "bootstrap_ci", "bootstrap_all", "bootstrap_nll_ci", "nll_from_log_proba"]


class ConfidenceInterval(NamedTuple):
    """Point estimate on the full data and a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float


def bootstrap_ci(
    metric: Callable[[np.ndarray, np.ndarray], float] | str, probs: np.ndarray, labels: np.ndarray, *,
    n_boot: int = 1000, alpha: float = 0.05, seed: int | np.random.Generator | None = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of ``metric`` (resampling questions with replacement).

    Parameters
    ----------
    metric : callable ``(probs, labels) -> float`` or the name of a metric in :data:`METRICS`
    n_boot : int
        Number of resamples.
    alpha : float
        The interval covers ``1 - alpha``: quantiles ``alpha/2`` and ``1 - alpha/2``.
    seed : int, Generator or None

    Notes
    -----
    Resamples whose value is NaN (e.g. AUROC on a resample with only correct answers) are left out and
    counted in a warning; if all are NaN the interval is NaN.
    """
    if isinstance(metric, str):
        if metric not in METRICS:
            raise InputError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
        metric = METRICS[metric]
    p, y = _check(probs, labels)
    return _percentile_interval(lambda i: metric(p[i], y[i]), float(metric(p, y)), len(y), n_boot, alpha, seed)


def nll_from_log_proba(log_probs: np.ndarray, labels: np.ndarray) -> float:
    r"""Negative log-likelihood :math:`-\frac1N\sum_i \log p_{i, y_i}` from log-probabilities.

    Unlike :func:`nll` on ``exp(log_probs)`` it does not underflow: a log-probability of -800 counts as
    800, not as ``inf``. ``inf`` only where a true option has log-probability ``-inf``.
    """
    return float(np.mean(_label_losses(log_probs, labels)))


def bootstrap_nll_ci(
    log_probs: np.ndarray, labels: np.ndarray, *, n_boot: int = 1000, alpha: float = 0.05,
    seed: int | np.random.Generator | None = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap interval of :func:`nll_from_log_proba`.

    The resamples are the ones :func:`bootstrap_ci` draws with the same ``seed``, so the NLL interval and
    the ECE / Brier intervals describe the same resampled data sets; the interval is finite whenever the
    NLL is.
    """
    losses = _label_losses(log_probs, labels)
    return _percentile_interval(lambda i: float(np.mean(losses[i])), float(np.mean(losses)), len(losses),
                                n_boot, alpha, seed)


def _label_losses(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``-log_probs[i, y_i]``, validated: log-probabilities (NaN-free, <= 0, rows normalised) and labels."""
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.ndim != 2 or lp.shape[0] == 0 or lp.shape[1] == 0:
        raise InputError(f"log_probs must be a non-empty 2-D array of shape (n, k); got shape {lp.shape}")
    if np.isnan(lp).any() or (lp > 1e-9).any() or np.isposinf(lp).any():
        raise InputError("log_probs must be log-probabilities (no NaN, none above 0); use log_softmax on logits")
    with np.errstate(under="ignore"):
        p = np.exp(lp)
    _, y = _check(p / p.sum(axis=1, keepdims=True), labels)
    return -lp[np.arange(len(y)), y]


def _percentile_interval(stat: Callable[[np.ndarray], float], estimate: float, n: int, n_boot: int,
                         alpha: float, seed: int | np.random.Generator | None) -> ConfidenceInterval:
    """Percentile bootstrap of ``stat(indices)`` over ``n_boot`` resamples of ``n`` questions."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise InputError(f"n_boot must be a positive integer; got {n_boot!r}")
    if not 0 < alpha < 1:
        raise InputError(f"alpha must lie in (0, 1); got {alpha!r}")
    rng = np.random.default_rng(seed)
    token = _QUIET.set(True)  # a NaN resample is counted below, once, not warned about per resample
    try:
        stats = np.array([stat(i) for i in (rng.integers(0, n, n) for _ in range(int(n_boot)))], dtype=np.float64)
    finally:
        _QUIET.reset(token)
    ok = ~np.isnan(stats)
    if not ok.all():
        log.warning("bootstrap: %d of %d resamples gave NaN and were left out", int((~ok).sum()), n_boot)
    if not ok.any():
        return ConfidenceInterval(estimate, float("nan"), float("nan"))
    lo, hi = _quantiles(stats[ok], (alpha / 2, 1 - alpha / 2))
    return ConfidenceInterval(estimate, lo, hi)


def _quantiles(values: np.ndarray, qs: Sequence[float]) -> list[float]:
    """``numpy.quantile`` (linear interpolation) that also holds with infinite values: between two equal
    values the quantile is that value (``inf``, not ``inf - inf`` = NaN with a RuntimeWarning)."""
    v = np.sort(values)
    if np.isfinite(v).all():
        return [float(x) for x in np.quantile(v, list(qs))]
    out = []
    for q in qs:
        pos = q * (len(v) - 1)
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        frac = pos - lo
        a, b = v[lo], v[hi]
        out.append(float(a if a == b or frac == 0 else b if frac == 1 else a + frac * (b - a)))
    return out




#: the metrics :func:`bootstrap_all` gives intervals for (``refcal run`` writes them to ``metrics.json``)
BOOTSTRAPPED = ("ece", "brier", "smooth_ece", "classwise_ece", "debiased_ece", "brier_reliability",
                "brier_resolution")


def bootstrap_all(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10, n_boot: int = 1000,
                  alpha: float = 0.05, seed: int | np.random.Generator | None = 0,
                  names: Sequence[str] = BOOTSTRAPPED) -> dict[str, ConfidenceInterval]:
    """:func:`bootstrap_ci` of each metric of ``names`` on the same resamples (the same ``seed``); a metric
    that needs a distribution is skipped for a :class:`~refcal.metrics.TopLabel`.

    The smooth ECE is resampled at the bandwidth σ* chosen on all the questions (re-choosing it on every
    resample costs ten more kernel passes each; the interval is then that of ``smooth_ece_at(σ*)``, whose
    value on all the questions is the estimate).
    """
    from .core import TopLabel
    from .smooth import smooth_ece_at, smooth_ece_bandwidth
    from .summary import BINNED, DISTRIBUTION_ONLY

    out = {}
    for name in names:
        if isinstance(probs, TopLabel) and name in DISTRIBUTION_ONLY:
            continue
        fn = METRICS[name]
        if name == "smooth_ece":
            sigma = smooth_ece_bandwidth(probs, labels)
            fn = lambda q, y, s=sigma: smooth_ece_at(q, y, sigma=s)  # noqa: E731
        metric = (lambda q, y, fn=fn: fn(q, y, n_bins=n_bins)) if name in BINNED else fn
        out[name] = bootstrap_ci(metric, probs, labels, n_boot=n_boot, alpha=alpha, seed=seed)
    return out
