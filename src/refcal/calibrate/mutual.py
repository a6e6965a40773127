"""Mutual calibration (``mutual``): a label-free projection of the chat model's confidence onto the
confidences that are mutually calibrated with a reference (base) model.

Reconstructed from the public description of Kong, Song, Wang and Wu, "Calibration without Ground Truth"
(arXiv 2601.19862); the reconstruction, its assumptions and its guarantee are in ``docs/METHODS.md``.
In short, every (question, option) pair is one forecast of the event "this option is right":

* ``Q1`` = the chat model's probability of the option, grouped into ``n_bins`` equal-mass bins ``j``;
  ``Q0`` = the reference's probability of the same option, in ``n_ref_bins`` equal-mass bins ``i``;
* two predictors are *mutually calibrated* when some joint law of (bins, outcome) that reproduces the
  observed counts ``n_ij`` makes both calibrated. With ``y_ij`` the expected number of right answers in
  cell ``(i, j)`` (``0 <= y_ij <= n_ij``), the reference is calibrated when ``sum_j y_ij = R_i`` (the sum of
  its probabilities in bin ``i``), and a map ``h`` of the chat bins is then calibrated when
  ``h_j = sum_i y_ij / n_j``. The set of such ``h`` is convex (a linear image of a polytope);
* the fitted map is the Bregman projection of the chat bins' mean probabilities ``c_j`` onto that set
  under the chosen proper loss: ``min sum_j n_j D(h_j, c_j)`` (``D`` = binary KL for the log loss, squared
  difference for the Brier score), a smooth convex program in ``y`` solved by SLSQP.

Right answers may sit anywhere inside a reference bin, so the projection moves a chat bin only as far as
a max-flow cut forces it (``sum_{j in T} n_j h_j <= sum_i min(R_i, n_iT)`` for every set ``T`` of chat
bins); it is the identity whenever the chat model's probabilities add up to the reference's in every
reference bin (``docs/METHODS.md`` works this through on the packaged pair).

At apply time every option's chat probability is mapped through the piecewise-linear interpolation of
``(c_j, h_j)`` (made increasing by isotonic regression; constant beyond the first and last knot, which
clamps the most and least confident probabilities even when ``h == c``) and each question is renormalised.
The map is increasing, so no option overtakes the chat model's answer; but it is flat beyond the last knot,
so with many options two of them can tie at the clamped value. The chat model's answer ``argmax g`` is
kept anyway: on a question whose calibrated argmax is another option (a tie, where the first index wins),
the answer's mapped probability is set a relative ``1e-9`` above the largest other one before renormalising,
so the calibrated argmax is the chat model's answer on every question, whatever ``k`` (every other question
is left exactly as the map gives it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression, minimize

from .._math import log_softmax
from ..errors import FitError, InputError
from ._validate import check_logits, check_pair
from .base import Calibrator, Reader, is_real

__all__ = ["MutualCalibration", "project_mutual"]

METHOD = "mutual"
LOSSES = ("log", "brier")
_EPS = 1e-9
#: how far above the largest other option the chat model's answer is put where the map ties them
_KEEP_ANSWER = 1e-9


def _equal_mass_bins(x: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-mass bins of ``x``: (bin index per row, inner edges). Ties stay in one bin, so there may be
    fewer non-empty bins than ``n_bins``."""
    edges = np.unique(np.quantile(x, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, x, side="right"), edges


def _divergence(h: np.ndarray, c: np.ndarray, loss: str) -> tuple[np.ndarray, np.ndarray]:
    """``D(h, c)`` and ``dD/dh`` of the proper loss's Bregman divergence for binary outcomes."""
    if loss == "brier":
        return (h - c) ** 2, 2 * (h - c)
    hc = np.clip(h, _EPS, 1 - _EPS)
    d = hc * np.log(hc / c) + (1 - hc) * np.log((1 - hc) / (1 - c))
    return d, np.log(hc / c) - np.log((1 - hc) / (1 - c))


def project_mutual(counts: np.ndarray, ref_sums: np.ndarray, c: np.ndarray, loss: str = "log",
                   max_iter: int = 500) -> tuple[np.ndarray, Any]:
    """The Bregman projection of the chat bins' confidences ``c`` (J,) onto the reference-compatible set.

    Parameters
    ----------
    counts : ndarray (I, J)
        Questions per (reference bin, chat bin).
    ref_sums : ndarray (I,)
        Expected right answers per reference bin if the reference is calibrated (sum of its probabilities).
    c : ndarray (J,)
        Mean chat confidence per chat bin, in (0, 1).

    Returns
    -------
    h : ndarray (J,)
        The projected confidences; ``h == c`` when ``c`` is already mutually calibrated with the reference.
    res : scipy OptimizeResult
    """
    n_i, n_j = counts.shape
    cells = np.argwhere(counts > 0)
    cnt = counts[cells[:, 0], cells[:, 1]].astype(float)
    col_n = counts.sum(axis=0).astype(float)
    # variables u = y / n in [0, 1]; start at the reference's rate in every cell of its bin (feasible)
    rate = ref_sums / np.maximum(counts.sum(axis=1), 1)
    u0 = rate[cells[:, 0]]
    a_eq = np.zeros((n_i, cells.shape[0]))
    a_eq[cells[:, 0], np.arange(cells.shape[0])] = cnt
    cc = np.clip(c, _EPS, 1 - _EPS)
    scale = float(col_n.sum())

    def h_of(u: np.ndarray) -> np.ndarray:
        return np.bincount(cells[:, 1], weights=cnt * u, minlength=n_j) / col_n

    def fun(u: np.ndarray) -> tuple[float, np.ndarray]:
        d, dd = _divergence(h_of(u), cc, loss)
        # d/du_cell of sum_j n_j D(h_j) = n_j D'(h_j) * cnt / n_j = cnt * D'(h_j)
        return float(col_n @ d) / scale, cnt * dd[cells[:, 1]] / scale

    cons = [{"type": "eq", "fun": lambda u: (a_eq @ u - ref_sums) / scale, "jac": lambda u: a_eq / scale}]
    res = minimize(fun, u0, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * cells.shape[0], constraints=cons,
                   options={"maxiter": max_iter, "ftol": 1e-12})
    return np.clip(h_of(np.clip(res.x, 0, 1)), 0.0, 1.0), res


class MutualCalibration(Calibrator):
    """Mutual calibration against a reference model (label-free); see the module docstring.

    Parameters
    ----------
    n_bins : int, default 10
        Equal-mass bins of the chat model's confidence (the resolution of the fitted map).
    n_ref_bins : int, default 10
        Equal-mass bins of the reference's probability of the chat model's answer.
    loss : {"log", "brier"}, default "log"
        Proper loss whose Bregman divergence defines the projection (and the guarantee).

    Attributes
    ----------
    bin_confidence_ : ndarray (J,)
        Mean chat confidence of each non-empty chat bin, increasing.
    bin_projected_ : ndarray (J,)
        The projected confidence of each bin (the map's knots).
    bin_counts_ : ndarray (J,)
        Calibration questions per chat bin.
    divergence_ : float
        ``mean_j n_j D(h_j, c_j)`` at the projection: the guaranteed loss reduction (binned), 0 when the
        chat model is already mutually calibrated with the reference.
    n_, n_iter_, converged_, objective_
        Questions and solver record.
    """

    method = METHOD
    description = ("mutual calibration: the chat model's option probabilities mapped through the Bregman projection "
                   "of its binned confidences onto those mutually calibrated with the base model's")
    #: a binned map of option probabilities (what ``to_dict`` writes as ``scaling``)
    scaling = "binned"
    solver_name = "slsqp+isotonic"

    def __init__(self, *, n_bins: int = 10, n_ref_bins: int = 10, loss: str = "log"):
        self.n_bins = n_bins
        self.n_ref_bins = n_ref_bins
        self.loss = loss

    def _check_params(self) -> None:
        for name in ("n_bins", "n_ref_bins"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")

    def fit(self, base_logits: object, chat_logits: object) -> MutualCalibration:
        """Fit the map from both models' option logits (no labels).

        Raises
        ------
        InputError, MismatchError
            Malformed or inconsistent logits.
        FitError
            The projection did not converge.
        """
        self._check_params()
        f, g = check_pair(base_logits, chat_logits)
        present = np.isfinite(g)
        conf = np.exp(log_softmax(g))[present]  # every (question, option) pair: event "this option is right"
        ref = np.exp(log_softmax(f))[present]
        j, _ = _equal_mass_bins(conf, self.n_bins)
        i, _ = _equal_mass_bins(ref, self.n_ref_bins)
        # keep non-empty bins only, renumbered in order
        used_j, j = np.unique(j, return_inverse=True)
        used_i, i = np.unique(i, return_inverse=True)
        counts = np.zeros((used_i.size, used_j.size))
        np.add.at(counts, (i, j), 1.0)
        ref_sums = np.bincount(i, weights=ref, minlength=used_i.size)
        col_n = counts.sum(axis=0)
        c = np.bincount(j, weights=conf, minlength=used_j.size) / col_n
        h, res = project_mutual(counts, ref_sums, c, self.loss)
        if not np.isfinite(res.fun):
            raise FitError(f"the mutual-calibration projection failed: {res.message}")
        self.bin_unordered_ = h  # the projection itself, before the monotone (isotonic) step
        h = isotonic_regression(h, weights=col_n).x
        self.n_ = int(f.shape[0])
        self.n_options_ = int(g.shape[1])
        self.bin_confidence_, self.bin_projected_, self.bin_counts_ = c, h, col_n.astype(np.int64)
        d, _ = _divergence(h, np.clip(c, _EPS, 1 - _EPS), self.loss)
        self.divergence_ = float(col_n @ d / col_n.sum())
        self.n_iter_, self.converged_, self.objective_ = int(res.nit), bool(res.success), float(res.fun)
        return self

    def confidence_map(self, conf: np.ndarray) -> np.ndarray:
        """The fitted map applied to chat confidences (piecewise linear through the bins' knots)."""
        self._check_fitted()
        return np.interp(conf, self.bin_confidence_, self.bin_projected_)

    def predict_log_proba(self, chat: object, base: object = None) -> np.ndarray:
        """Calibrated log-probabilities (n, k): every option's chat probability goes through the fitted
        increasing map, then each row is renormalised; the chat model's answer stays the argmax (see the
        module docstring). ``base`` is not read."""
        self._check_fitted()
        g = check_logits(chat, "chat_logits")
        present = np.isfinite(g)
        h = np.zeros(g.shape)
        h[present] = np.clip(self.confidence_map(np.exp(log_softmax(g))[present]), _EPS, 1.0)
        with np.errstate(divide="ignore"):
            lp = np.log(h / h.sum(axis=1, keepdims=True))
        b = np.argmax(g, axis=1)
        moved = np.flatnonzero(np.argmax(lp, axis=1) != b)  # a tie at the clamped top (first index wins)
        if moved.size:
            hm, bm = h[moved], b[moved]
            others = hm.copy()
            others[np.arange(moved.size), bm] = -np.inf
            hm[np.arange(moved.size), bm] = others.max(axis=1) * (1 + _KEEP_ANSWER)
            with np.errstate(divide="ignore"):
                lp[moved] = np.log(hm / hm.sum(axis=1, keepdims=True))
        return lp

    # ------------------------------------------------------------------ export
    def fitted_params(self) -> dict[str, Any]:
        return {**super().fitted_params(), "divergence": self.divergence_}

    def _state(self) -> dict[str, Any]:
        return {
            "parameters": {"bin_confidence": [float(v) for v in self.bin_confidence_],
                           "bin_projected": [float(v) for v in self.bin_projected_],
                           "bin_unordered": [float(v) for v in self.bin_unordered_],
                           "bin_counts": [int(v) for v in self.bin_counts_]},
            "n_options": self.n_options_, "n": self.n_, "divergence": self.divergence_,
        }

    def _read_state(self, r: Reader) -> None:
        """The knots are probabilities, non-decreasing (the map is increasing), one count per knot."""
        data, params = r.data, r.obj("parameters")
        knots = {}
        for name in ("bin_confidence", "bin_projected", "bin_unordered"):
            v = params[name]
            if not (isinstance(v, list) and 1 <= len(v) <= self.n_bins and all(is_real(x) and 0 <= x <= 1 for x in v)):
                raise r.bad(f"parameters.{name} must be a list of 1 to n_bins = {self.n_bins} probabilities")
            knots[name] = np.asarray(v, dtype=np.float64)
        counts = params["bin_counts"]
        if not (isinstance(counts, list) and all(not isinstance(c, bool) and isinstance(c, int) and c >= 1
                                                 for c in counts)):
            raise r.bad("parameters.bin_counts must be a list of positive integers")
        if len({len(counts), *(k.size for k in knots.values())}) != 1:
            raise r.bad("parameters.bin_confidence, bin_projected, bin_unordered and bin_counts differ in length")
        for name in ("bin_confidence", "bin_projected"):
            if np.any(np.diff(knots[name]) < 0):
                raise r.bad(f"parameters.{name} must be non-decreasing")
        self.bin_confidence_, self.bin_projected_ = knots["bin_confidence"], knots["bin_projected"]
        self.bin_unordered_, self.bin_counts_ = knots["bin_unordered"], np.asarray(counts, dtype=np.int64)
        self.n_options_ = r.integer(data["n_options"], "n_options", 2)
        self.n_ = r.integer(data["n"], "n", 1)
        if int(self.bin_counts_.sum()) > self.n_ * self.n_options_:
            raise r.bad(f"bin_counts add up to more than n x n_options = {self.n_ * self.n_options_} pairs")
        self.divergence_ = r.real(data["divergence"], "divergence")
        if self.divergence_ < 0:
            raise r.bad(f"divergence must be >= 0, got {self.divergence_!r}")
