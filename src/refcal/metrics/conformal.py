r"""Split-conformal prediction sets (LAC and APS) from any calibrated distribution over the options.

Given a labelled calibration slice with probabilities ``p`` (n, k) and labels ``y``, a conformity score
``s(x, j)`` and a miscoverage level ``alpha``:

* **LAC** (least ambiguous set-valued classifier; Sadinle, Lei & Wasserman 2019): ``s(x, j) = 1 - p_j``.
* **APS** (adaptive prediction sets; Romano, Sesia & Candès 2020): the options sorted by decreasing
  probability (ties: lower index first), ``s(x, j)`` = the probability mass of the options ranked up to
  and including ``j``. With ``u`` ~ U(0, 1) per question the randomized score is ``s - u p_j``.

The threshold :math:`\hat q` is the :math:`\lceil (n+1)(1-\alpha) \rceil`-th smallest calibration score
(``inf`` when that exceeds ``n``: every option), and the set of a new question is

* LAC: :math:`\{j : 1 - p_j \le \hat q\}`;
* APS: the options in decreasing order up to and including the first whose cumulative mass reaches
  :math:`\hat q` (MAPIE's ``include_last_label=True``), so a set is never empty.

Under exchangeability of the calibration and test questions, :math:`P(y \in C(x)) \ge 1 - \alpha`
(Vovk et al. 2005; Angelopoulos & Bates 2021, §1): exact for LAC, conservative for APS (including the last
option only adds coverage). Options with probability 0 (missing options) are never in a set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from .core import _check

__all__ = ["SCORES", "ConformalSets", "conformity_scores", "conformal_quantile", "prediction_sets",
           "conformal_sets", "coverage", "set_sizes", "conformal_metrics"]

SCORES = ("lac", "aps")


def _check_score(score: str) -> str:
    if score not in SCORES:
        raise InputError(f"score must be one of {', '.join(SCORES)}; got {score!r}")
    return score


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)) or not 0 < alpha < 1:
        raise InputError(f"alpha must be a number in (0, 1) (the allowed miscoverage); got {alpha!r}")
    return float(alpha)


def _sorted_cumsum(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, cumulative mass in that order)``: options by decreasing probability, ties by index."""
    order = np.argsort(-p, axis=1, kind="stable")
    return order, np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)


def conformity_scores(probs: np.ndarray, labels: np.ndarray, *, score: str = "lac",
                      u: np.ndarray | None = None) -> np.ndarray:
    """Conformity score of each question's true option, shape (n,). ``u`` (n,) in [0, 1) randomizes APS."""
    p, y = _check(probs, labels, distribution=True)
    rows = np.arange(len(y))
    if _check_score(score) == "lac":
        return 1.0 - p[rows, y]
    order, cum = _sorted_cumsum(p)
    rank = np.argmax(order == y[:, None], axis=1)
    s = cum[rows, rank]
    if u is not None:
        u = np.asarray(u, dtype=np.float64)
        if u.shape != s.shape or not ((u >= 0) & (u <= 1)).all():
            raise InputError(f"u must hold {len(s)} numbers in [0, 1]")
        s = s - u * p[rows, y]
    return s


def conformal_quantile(scores: np.ndarray, *, alpha: float) -> float:
    r"""The :math:`\lceil (n+1)(1-\alpha)\rceil`-th smallest of ``scores`` (n,); ``inf`` past the largest."""
    alpha = _check_alpha(alpha)
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    if s.size == 0 or not np.isfinite(s).all():
        raise InputError("conformal calibration needs at least one finite conformity score")
    rank = int(np.ceil((s.size + 1) * (1 - alpha) - 1e-12))  # 1-based; the tolerance absorbs (n+1)(1-a) = integer
    return float("inf") if rank > s.size else float(s[rank - 1])


def prediction_sets(probs: np.ndarray, qhat: float, *, score: str = "lac") -> np.ndarray:
    """Boolean (n, k): option ``j`` is in question ``i``'s set (see the module docstring)."""
    p, _ = _check(probs, np.zeros(np.shape(probs)[0] if np.ndim(probs) == 2 else 0, dtype=np.int64),
                  distribution=True)
    present = p > 0
    if _check_score(score) == "lac":
        return present & (1.0 - p <= qhat)
    order, cum = _sorted_cumsum(p)
    before = cum - np.take_along_axis(p, order, axis=1)  # mass ranked strictly before each position
    keep_sorted = before < qhat  # up to and including the first position whose cumulative mass reaches qhat
    keep_sorted[:, 0] = True
    sets = np.zeros_like(present)
    np.put_along_axis(sets, order, keep_sorted, axis=1)
    return sets & present


def coverage(sets: np.ndarray, labels: np.ndarray) -> float:
    """Share of questions whose true option is in its set."""
    y = np.asarray(labels, dtype=np.int64)
    return float(np.mean(np.asarray(sets)[np.arange(len(y)), y]))


def set_sizes(sets: np.ndarray) -> np.ndarray:
    """Number of options in each set, shape (n,)."""
    return np.asarray(sets).sum(axis=1)


@dataclass(frozen=True)
class ConformalSets:
    """Prediction sets of the test questions: ``sets`` (n, k) bool, the threshold ``qhat`` fitted on
    ``n_calib`` labelled questions, and (with test labels) the empirical ``coverage``; ``mean_size``."""

    sets: np.ndarray
    qhat: float
    alpha: float
    score: str
    n_calib: int
    mean_size: float
    coverage: float | None = None


def conformal_sets(calib_probs: np.ndarray, calib_labels: np.ndarray, test_probs: np.ndarray,
                   test_labels: np.ndarray | None = None, *, alpha: float = 0.1, score: str = "lac",
                   u: np.ndarray | None = None) -> ConformalSets:
    """Split conformal: ``qhat`` from the calibration slice, sets for the test questions."""
    qhat = conformal_quantile(conformity_scores(calib_probs, calib_labels, score=score, u=u), alpha=alpha)
    sets = prediction_sets(test_probs, qhat, score=score)
    cov = None
    if test_labels is not None:
        _check(test_probs, test_labels, distribution=True)
        cov = coverage(sets, test_labels)
    return ConformalSets(sets, qhat, float(alpha), score, int(len(calib_labels)), float(set_sizes(sets).mean()), cov)


def conformal_metrics(probs: np.ndarray, labels: np.ndarray, *, alpha: float = 0.1,
                      seed: int | np.random.Generator | None = 0) -> dict[str, float]:
    """Coverage and mean set size of LAC and APS sets on labelled questions, split at random in halves
    (the first half calibrates ``qhat``, the second is covered): keys ``lac_coverage``, ``lac_size``,
    ``aps_coverage``, ``aps_size``; NaN below 4 questions."""
    p, y = _check(probs, labels, distribution=True)
    out = {f"{s}_{m}": float("nan") for s in SCORES for m in ("coverage", "size")}
    if len(y) < 4:
        return out
    perm = np.random.default_rng(seed).permutation(len(y))
    cal, test = perm[: len(y) // 2], perm[len(y) // 2:]
    for s in SCORES:
        res = conformal_sets(p[cal], y[cal], p[test], y[test], alpha=alpha, score=s)
        out[f"{s}_coverage"], out[f"{s}_size"] = float(res.coverage), res.mean_size
    return out
