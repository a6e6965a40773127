"""The binned and scoring metrics: pure functions of probabilities ``(n, k)`` and labels ``(n,)``.

Conventions (SPEC §3)
---------------------
- ``confidence = max_j p_j``; ``prediction = argmax_j p_j`` (ties: first index, as ``numpy.argmax``);
  ``correct = 1[prediction == label]``.
- Every function returns a **fraction** (ECE 0.087, not 8.7 %); reports multiply by 100.
- Equal-width bins are ``[e_b, e_{b+1})`` with ``e = linspace(0, 1, n_bins + 1)``; the last bin is closed, so a
  confidence of exactly 1.0 falls in it. This is ``numpy.histogram``'s convention (and netcal's).
- Inputs are validated once per call: ``probs`` finite, in [0, 1], rows summing to 1 (within 1e-6);
  ``labels`` integer option indices in ``[0, k)`` (``-1`` = unknown is refused: these metrics need labels).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import InputError
from ..options import MAX_BINS

__all__ = [
    "ReliabilityBins", "SelectiveCurve", "RiskCoverage",
    "reliability_bins", "ece", "mce", "aece", "brier", "brier_multiclass", "nll", "accuracy", "auroc",
    "selective_accuracy", "risk_coverage", "aurc", "DEFAULT_THRESHOLDS", "TopLabel",
]

log = logging.getLogger("refcal.metrics")  # the package's logger: one name for every module

#: thresholds of the paper's selective-classification figure: 0.50, 0.55, ..., 0.95
DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
_SUM_TOL = 1e-6
#: set while bootstrap resamples are evaluated: :func:`auroc` then leaves its warning to the NaN count
_QUIET: ContextVar[bool] = ContextVar("refcal_metrics_quiet", default=False)


# ---------------------------------------------------------------------------------------------- top label
@dataclass(frozen=True, eq=False)
class TopLabel:
    """Answers with a stated confidence and no distribution over the options (verbalised confidence).

    ``prediction`` (n,) int: the option answered, ``-1`` for no answer (always wrong); ``confidence`` (n,)
    in [0, 1]. Every metric of confidence and correctness accepts it in place of ``probs`` (ECE, MCE,
    AECE, the top-label Brier score, accuracy, AUROC, AURC, reliability bins, selective accuracy,
    risk-coverage, :func:`bootstrap_ci`); the NLL and the multiclass Brier score need a distribution and
    refuse it (:func:`evaluate` gives them as NaN).
    """

    prediction: np.ndarray
    confidence: np.ndarray

    def __len__(self) -> int:
        return len(self.confidence)

    def __getitem__(self, idx: Any) -> TopLabel:
        return TopLabel(self.prediction[idx], self.confidence[idx])


def _check_top_label(t: TopLabel, labels: np.ndarray, need_labels: bool) -> tuple[TopLabel, np.ndarray]:
    pred, conf = np.asarray(t.prediction), np.asarray(t.confidence, dtype=np.float64)
    if conf.ndim != 1 or conf.size == 0 or pred.shape != conf.shape or not np.issubdtype(pred.dtype, np.integer):
        raise InputError("a TopLabel needs equally long, non-empty 1-D integer predictions and confidences")
    if not (np.isfinite(conf).all() and (conf >= 0).all() and (conf <= 1).all()):
        raise InputError("TopLabel confidences must lie in [0, 1]; parse and clip stated confidences first")
    y = _check_labels(labels, len(conf), None, need_labels)
    return TopLabel(pred.astype(np.int64), conf), y


# ---------------------------------------------------------------------------------------------- validation
def _check(probs: np.ndarray | TopLabel, labels: np.ndarray, *, need_labels: bool = True,
           distribution: bool = False) -> tuple[Any, np.ndarray]:
    """Validate once at the public boundary; return float64 probs (or a checked :class:`TopLabel`, unless
    the metric needs a ``distribution``) and int64 labels."""
    if isinstance(probs, TopLabel):
        if distribution:
            raise InputError("this metric needs a probability for every option; a TopLabel (stated confidence "
                             "of one answer) has none")
        return _check_top_label(probs, labels, need_labels)
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise InputError(f"probs must be a non-empty 2-D array of shape (n, k); got shape {p.shape}")
    if not np.issubdtype(p.dtype, np.number) or np.issubdtype(p.dtype, np.complexfloating):
        raise InputError(f"probs must hold real numbers; got dtype {p.dtype}")
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all():
        r = int(np.flatnonzero(~np.isfinite(p).all(axis=1))[0])
        raise InputError(f"probs row {r} holds NaN or inf; pass probabilities (use softmax on logits first)")
    if (p < 0).any() or (p > 1).any():
        r = int(np.flatnonzero(((p < 0) | (p > 1)).any(axis=1))[0])
        raise InputError(f"probs row {r} has values outside [0, 1]; pass probabilities, not logits")
    sums = p.sum(axis=1)
    bad = np.abs(sums - 1.0) > _SUM_TOL
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"probs row {r} sums to {sums[r]:.6g}, not 1; pass normalised probabilities (softmax of the logits)"
        )
    return p, _check_labels(labels, p.shape[0], p.shape[1], need_labels)


def _check_labels(labels: np.ndarray, n: int, k: int | None, need_labels: bool) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise InputError(f"labels must have shape ({n},) to match probs; got shape {y.shape}")
    if y.dtype == bool or not np.issubdtype(y.dtype, np.number):
        raise InputError(f"labels must be integer option indices; got dtype {y.dtype}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.isfinite(y).all() or (y != np.round(y)).any():
            raise InputError("labels must be integer option indices; found NaN or a fractional value")
    y = y.astype(np.int64)
    if need_labels and (y < 0).any():
        r = int(np.flatnonzero(y < 0)[0])
        raise InputError(
            f"label of row {r} is {y[r]} (unknown); calibration metrics need a label for every question — "
            "drop unlabelled rows first"
        )
    if (k is not None and (y >= k).any()) or (y < -1).any():
        r = int(np.flatnonzero((y >= (k if k is not None else np.inf)) | (y < -1))[0])
        raise InputError(f"label of row {r} is {y[r]} but there are only {k} options (0-based)")
    return y


def _conf_correct(p: np.ndarray | TopLabel, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(p, TopLabel):
        return p.confidence, ((p.prediction == y) & (p.prediction >= 0)).astype(np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


def _check_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or not 1 <= n_bins <= MAX_BINS:
        raise InputError(f"n_bins (--bins) must be an integer from 1 to {MAX_BINS}; got {n_bins!r}")
    return int(n_bins)


# ---------------------------------------------------------------------------------------------- binning
@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics behind ECE/MCE/AECE and the reliability diagram.

    Attributes
    ----------
    edges : ndarray, shape (B + 1,)
        Bin boundaries on [0, 1]. For ``quantile`` bins they are midpoints between neighbouring groups
        (for drawing only; membership is by rank, see :func:`reliability_bins`).
    counts : ndarray of int64, shape (B,)
    accuracy : ndarray, shape (B,)
        Mean correctness per bin; NaN for an empty bin.
    confidence : ndarray, shape (B,)
        Mean confidence per bin; NaN for an empty bin.
    strategy : {"uniform", "quantile"}
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    strategy: str

    @property
    def n(self) -> int:
        """Number of questions binned."""
        return int(self.counts.sum())

    @property
    def gap(self) -> np.ndarray:
        """``|accuracy - confidence|`` per bin, shape (B,); NaN for an empty bin."""
        return np.abs(self.accuracy - self.confidence)

    def weighted_gap(self) -> float:
        """``sum_b |b|/N * gap_b`` (the ECE of these bins)."""
        nz = self.counts > 0
        return float(np.sum(self.counts[nz] / self.n * self.gap[nz]))


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10,
    strategy: Literal["uniform", "quantile"] = "uniform",
) -> ReliabilityBins:
    """Bin questions by confidence and return count, accuracy and mean confidence per bin.

    Parameters
    ----------
    probs : array, shape (n, k)
    labels : array of int, shape (n,)
    n_bins : int
        ``B``. For ``quantile``, ``min(B, n)`` groups are used so that no group is empty.
    strategy : {"uniform", "quantile"}
        ``uniform``: equal-width bins ``[e_b, e_{b+1})``, last bin closed.
        ``quantile`` (equal mass): questions sorted by confidence (stable, so ties keep input order) and
        split into groups whose sizes differ by at most one (``numpy.array_split``).
    """
    p, y = _check(probs, labels)
    n_bins = _check_bins(n_bins)
    conf, corr = _conf_correct(p, y)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        # side="right" gives [e_b, e_{b+1}); the clip puts 1.0 into the last bin
        idx = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    elif strategy == "quantile":
        n_bins = min(n_bins, len(conf))
        chunks = np.array_split(np.argsort(conf, kind="stable"), n_bins)
        idx = np.empty(len(conf), dtype=np.int64)
        for b, chunk in enumerate(chunks):
            idx[chunk] = b
        lo = np.array([conf[c].min() for c in chunks])
        hi = np.array([conf[c].max() for c in chunks])
        edges = np.concatenate([[0.0], (hi[:-1] + lo[1:]) / 2, [1.0]])
    else:
        raise InputError(f"strategy must be 'uniform' or 'quantile'; got {strategy!r}")
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.bincount(idx, weights=corr, minlength=n_bins) / counts
        mconf = np.bincount(idx, weights=conf, minlength=n_bins) / counts
    return ReliabilityBins(edges, counts, acc, mconf, strategy)


def ece(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> float:
    r"""Expected calibration error with equal-width bins.

    .. math:: \mathrm{ECE} = \sum_b \frac{|B_b|}{N} \, |\mathrm{acc}(B_b) - \mathrm{conf}(B_b)|
    """
    return reliability_bins(probs, labels, n_bins=n_bins).weighted_gap()


def mce(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> float:
    """Maximum calibration error: ``max_b |acc(B_b) - conf(B_b)|`` over non-empty equal-width bins."""
    bins = reliability_bins(probs, labels, n_bins=n_bins)
    return float(np.max(bins.gap[bins.counts > 0]))


def aece(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> float:
    """Adaptive ECE: the ECE formula over ``n_bins`` equal-mass bins (see :func:`reliability_bins`)."""
    return reliability_bins(probs, labels, n_bins=n_bins, strategy="quantile").weighted_gap()


# ---------------------------------------------------------------------------------------------- scores
def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    r"""The paper's (top-label) Brier score: :math:`\frac1N\sum_i (\mathrm{conf}_i - \mathrm{correct}_i)^2`."""
    conf, corr = _conf_correct(*_check(probs, labels))
    return float(np.mean((conf - corr) ** 2))


def brier_multiclass(probs: np.ndarray, labels: np.ndarray) -> float:
    r"""Multiclass Brier score: :math:`\frac1N\sum_i \sum_j (p_{ij} - 1[y_i = j])^2`, in [0, 2]."""
    p, y = _check(probs, labels, distribution=True)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(y)), y] = 1.0
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    r"""Negative log-likelihood :math:`-\frac1N\sum_i \log p_{i, y_i}`.

    Returns ``inf`` when some true label has probability exactly 0: that is the correct value of the
    log-loss, and no probability is clipped (scikit-learn's ``log_loss`` clips, so it disagrees there).
    Probabilities that underflowed to 0 after ``exp`` of very negative log-probabilities also give
    ``inf``; compute the NLL from log-probabilities directly if that matters.
    """
    p, y = _check(probs, labels, distribution=True)
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log(p[np.arange(len(y)), y])))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of questions whose argmax option (first on ties) is the label."""
    return float(np.mean(_conf_correct(*_check(probs, labels))[1]))


def auroc(probs: np.ndarray, labels: np.ndarray, *, warn: bool = True) -> float:
    """Area under the ROC curve of confidence as a score separating correct from wrong answers.

    Computed as the Mann-Whitney statistic with average ranks, so tied confidences count 1/2 (identical to
    ``sklearn.metrics.roc_auc_score(correct, confidence)``).

    Returns NaN — and, with ``warn``, logs a warning — when every answer is correct or every answer is
    wrong: the AUROC is undefined without both classes. It is not an error because a perfect (or hopeless)
    model on a small split is a legitimate outcome that should not abort an evaluation; reports print it
    as "n/a". Callers that evaluate many subsets (bootstrap resamples, the units of a run) pass
    ``warn=False`` and report the NaN values they count once (:func:`bootstrap_ci` does so itself).
    """
    from scipy.stats import rankdata

    conf, corr = _conf_correct(*_check(probs, labels))
    n_pos = int(corr.sum())
    n_neg = len(corr) - n_pos
    if n_pos == 0 or n_neg == 0:
        if warn and not _QUIET.get():
                log.warning("AUROC is undefined: all %d answers are %s; returning NaN", len(corr),
                        "correct" if n_neg == 0 else "wrong")
        return float("nan")
    ranks = rankdata(conf)  # average ranks for ties
    return float((ranks[corr == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ---------------------------------------------------------------------------------------------- selective
@dataclass(frozen=True)
class SelectiveCurve:
    """Selective accuracy at confidence thresholds (answer only when ``confidence >= t``).

    Attributes
    ----------
    thresholds, accuracy, coverage : ndarray, shape (T,)
        ``accuracy`` is NaN where no question is selected (``coverage`` 0): accuracy of an empty set is
        undefined.
    n_selected : ndarray of int64, shape (T,)
    """

    thresholds: np.ndarray
    accuracy: np.ndarray
    coverage: np.ndarray
    n_selected: np.ndarray


def selective_accuracy(
    probs: np.ndarray, labels: np.ndarray, *, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
) -> SelectiveCurve:
    """Accuracy and coverage of the questions with ``confidence >= t`` for each threshold ``t``."""
    conf, corr = _conf_correct(*_check(probs, labels))
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or not np.isfinite(t).all():
        raise InputError("thresholds must be a non-empty 1-D sequence of finite numbers")
    sel = conf[None, :] >= t[:, None]
    n_sel = sel.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = (sel * corr[None, :]).sum(axis=1) / n_sel
    return SelectiveCurve(t, acc, n_sel / len(conf), n_sel.astype(np.int64))


@dataclass(frozen=True)
class RiskCoverage:
    """Risk–coverage curve: keep the ``m`` most confident questions, ``m = 1..n``.

    Attributes
    ----------
    coverage : ndarray, shape (n,)
        ``m / n``.
    risk : ndarray, shape (n,)
        Error rate among the kept questions; with tied confidences, the expected error rate over random
        orderings of the ties (so the curve does not depend on input order).
    """

    coverage: np.ndarray
    risk: np.ndarray


def risk_coverage(probs: np.ndarray, labels: np.ndarray) -> RiskCoverage:
    """Risk–coverage curve of confidence-ranked selection (see :class:`RiskCoverage`)."""
    conf, corr = _conf_correct(*_check(probs, labels))
    n = len(conf)
    err = 1.0 - corr
    order = np.argsort(-conf, kind="stable")
    c, e = conf[order], err[order]
    # tie groups in the descending order: errors are spread evenly within a group (their expectation)
    starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
    sizes = np.diff(np.r_[starts, n])
    group_err = np.add.reduceat(e, starts)
    before = np.r_[0.0, np.cumsum(group_err)[:-1]]
    gid = np.repeat(np.arange(len(starts)), sizes)
    pos = np.arange(1, n + 1) - starts[gid]  # 1-based position inside the tie group
    cum_err = before[gid] + pos * group_err[gid] / sizes[gid]
    m = np.arange(1, n + 1)
    return RiskCoverage(m / n, cum_err / m)


def aurc(probs: np.ndarray, labels: np.ndarray) -> float:
    r"""Area under the risk–coverage curve, :math:`\frac1n\sum_{m=1}^n \mathrm{risk}(m)` (lower is better).

    Without ties this is Geifman & El-Yaniv's AURC; with ties it is its mean over random tie orders.
    """
    return float(np.mean(risk_coverage(probs, labels).risk))


