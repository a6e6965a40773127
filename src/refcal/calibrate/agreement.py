"""Agreement-aware DACA (``daca_agree``): one temperature where base and chat agree, another where they differ.

DACA fits one temperature on the questions where the two models pick the same answer and applies it
everywhere. When the chat model's over-confidence differs between agreeing and disagreeing questions
(it usually does: where the models disagree at most one of them is right), one temperature cannot serve
both. The agreement of the two models is known for every question at deployment (both models' logits are
there), so a calibrator may use it without labels:

* agreeing questions: ``tau_a`` = DACA's temperature, ``min sum_{m=1} KL(softmax(f) || softmax(g / tau))``;
* disagreeing questions: ``tau_d`` makes the chat model's confidence in its own answer ``b = argmax g``
  match the base model's probability of that answer, ``t = softmax(f)_b``, under the log loss:
  ``min sum_{m=0} BCE(t, softmax(g / tau)_b)``.

Derivation, assumptions and measured verdict: ``docs/METHODS.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from .._math import log_softmax
from ..errors import FitError, InputError
from ._scaling import bound_message, check_bounds, scale_by_temperature, warn_at_bound
from ._solvers import fit_temperature
from ._validate import check_pair
from .alignment import agreement_mask
from .base import Calibrator, Reader, is_real

__all__ = ["AgreementDACA", "answer_cross_entropy", "top_label"]

METHOD = "daca_agree"


def answer_cross_entropy(log_tau: float, g: np.ndarray, t: np.ndarray) -> float:
    """Mean binary cross-entropy between targets ``t`` (n,) and ``softmax(g / tau)_b``, ``b = argmax g``.

    Computed in log-space: ``log q_b`` and ``log(1 - q_b) = logsumexp_{j != b} log q_j`` (never
    ``log(1 - exp(...))``), so rows with a confidence that rounds to 1 keep a finite, exact loss.
    """
    b = np.argmax(g, axis=1)
    log_c, log_1mc = top_label(log_softmax(g / math.exp(log_tau)), b)
    return float(-np.mean(t * log_c + (1.0 - t) * log_1mc))


def top_label(log_p: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(log p_b, log(1 - p_b))`` per row for log-probabilities ``log_p`` and chosen options ``b``; the
    second in log-space (log-sum-exp of the other options), exact when ``p_b`` rounds to 1."""
    rows = np.arange(log_p.shape[0])
    log_c = log_p[rows, b]
    others = log_p.copy()
    others[rows, b] = -np.inf
    top = others.max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_rest = top + np.log(np.exp(others - top[:, None]).sum(axis=1))
    return log_c, log_rest


class AgreementDACA(Calibrator):
    """Agreement-aware DACA: separate temperatures for questions where base and chat agree / disagree.

    Label-free. ``fit(base_logits, chat_logits)``; at apply time the agreement of each question is read
    from both models' logits, so ``predict_log_proba(chat, base)`` needs both (``needs_base_at_apply``).

    Parameters
    ----------
    temperature_bounds : (float, float), default (1e-3, 1e4)
        Allowed temperature range on both sides. A temperature fitted at a bound is warned about (a
        :class:`CalibrationWarning`, like DACA's) and recorded (``at_bound_agree_`` / ``at_bound_disagree_``):
        at the upper bound the calibrated probabilities of that side are near uniform.
    min_group : int, default 1
        A side (agreeing / disagreeing) with fewer calibration questions than this borrows the other
        side's temperature (``fallback_`` says which); an empty side always does.

    Attributes
    ----------
    temperature_agree_, temperature_disagree_ : float
        Fitted temperatures (``temperature_agree_`` equals :class:`DACA`'s ``temperature_``).
    at_bound_agree_, at_bound_disagree_ : str or None
        ``"max_temperature"`` / ``"min_temperature"`` when that temperature sits at a bound of its solver.
    n_, n_agree_, agreement_rate_ : int, int, float
        Questions, agreeing questions, ratio.
    target_disagree_ : float
        Mean base-model probability of the chat model's answer on the disagreeing questions.
    fallback_ : str or None
        ``"agree<-disagree"`` / ``"disagree<-agree"`` when one side borrowed the other's temperature.
    n_iter_, converged_, objective_ : int, bool, float
        Solver record (Newton iterations of the agreeing side plus bounded Brent's of the disagreeing side;
        objective = agreeing-side KL + disagreeing-side cross-entropy, each a mean over its side).
    """

    method = METHOD
    #: both sides are temperatures (``refcal apply`` may transfer it to another option count)
    scaling = "temperature"
    needs_base_at_apply = True
    solver_name = "newton+brent"
    description = ("agreement-aware DACA: DACA's temperature where base and chat agree; where they disagree, "
                   "a temperature matching the chat's confidence to the base's probability of the chat's answer")

    def __init__(self, *, temperature_bounds: tuple[float, float] = (1e-3, 1e4), min_group: int = 1):
        self.temperature_bounds = temperature_bounds
        self.min_group = min_group

    def _check_params(self) -> None:
        check_bounds(self.temperature_bounds)
        m = self.min_group
        if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
            raise InputError(f"min_group must be an integer >= 1, got {m!r}")

    # ------------------------------------------------------------------ fitting
    def fit(self, base_logits: object, chat_logits: object) -> AgreementDACA:
        """Fit both temperatures from the two models' option logits (no labels).

        Raises
        ------
        InputError, MismatchError
            Malformed or inconsistent logits.
        FitError
            Every question that counts has tied chat logits, or a solver failed.
        """
        self._check_params()
        f, g = check_pair(base_logits, chat_logits)
        lo, hi = (float(v) for v in self.temperature_bounds)
        agree = agreement_mask(f, g)
        self.n_ = int(f.shape[0])
        self.n_agree_ = int(agree.sum())
        self.agreement_rate_ = self.n_agree_ / self.n_
        n_dis = self.n_ - self.n_agree_
        use_a, use_d = self.n_agree_ >= self.min_group, n_dis >= self.min_group
        if not (use_a or use_d):
            use_a, use_d = self.n_agree_ > 0, n_dis > 0  # both sides small: fit what exists
        it, obj = 0, 0.0
        tau_a = tau_d = None
        if use_a:
            res = fit_temperature(log_softmax(f[agree]), g[agree], np.full(self.n_agree_, 1.0 / self.n_agree_),
                                  bounds=(lo, hi), max_iter=1000, tol=1e-10)
            if not res.converged:
                raise FitError(f"the agreeing side's temperature did not converge: {res.message}")
            tau_a, it, obj = float(res.params), it + res.n_iter, obj + float(res.objective)
        dis = ~agree
        if use_d:
            fd, gd = f[dis], g[dis]
            spread = gd.max(axis=1) - np.where(np.isfinite(gd), gd, np.inf).min(axis=1)
            if not np.any(spread > 0):
                raise FitError("every disagreeing question has tied chat scores on all its options; check the "
                               "score files (identical logits usually mean a scoring bug)")
            t = np.exp(log_softmax(fd))[np.arange(gd.shape[0]), np.argmax(gd, axis=1)]
            self.target_disagree_ = float(t.mean())
            tau_d, n_it, value = self._fit_answer(gd, t, lo, hi)
            it, obj = it + n_it, obj + value
        else:
            self.target_disagree_ = float("nan")
        self.fallback_ = None
        if tau_a is None:
            tau_a, self.fallback_ = tau_d, "agree<-disagree"
        elif tau_d is None:
            tau_d, self.fallback_ = tau_a, "disagree<-agree"
        self.temperature_agree_, self.temperature_disagree_ = float(tau_a), float(tau_d)
        self.at_bound_agree_, self.at_bound_disagree_ = (_at_bound(t, lo, hi) for t in (tau_a, tau_d))
        self.n_options_ = int(g.shape[1])
        self.n_iter_, self.converged_, self.objective_ = int(it), True, float(obj)
        for side in ("agree", "disagree"):
            at = getattr(self, f"at_bound_{side}_")
            if at is not None:
                where = " where the models agree" if side == "agree" else " where the models disagree"
                warn_at_bound(bound_message(at, getattr(self, f"temperature_{side}_"), where), stacklevel=3)
        return self

    @staticmethod
    def _fit_answer(g: np.ndarray, t: np.ndarray, lo: float, hi: float) -> tuple[float, int, float]:
        """``argmin_tau`` of :func:`answer_cross_entropy` over ``[lo, hi]``: a grid over ``log tau`` finds the
        basin (the loss need not be convex in ``tau``), bounded Brent refines it to ``xatol = 1e-10``."""
        grid = np.linspace(math.log(lo), math.log(hi), 161)
        values = [answer_cross_entropy(u, g, t) for u in grid]
        i = int(np.argmin(values))
        a, b = grid[max(i - 1, 0)], grid[min(i + 1, grid.size - 1)]
        res = minimize_scalar(answer_cross_entropy, bounds=(a, b), args=(g, t), method="bounded",
                              options={"xatol": 1e-10, "maxiter": 500})
        u, value = (float(res.x), float(res.fun)) if res.fun <= values[i] else (float(grid[i]), float(values[i]))
        return math.exp(u), int(grid.size + res.nfev), value

    # ------------------------------------------------------------------ prediction
    def transform(self, chat_logits: object, base_logits: object) -> np.ndarray:
        """Calibrated chat logits: ``g / tau_a`` where base and chat agree, ``g / tau_d`` where they differ."""
        self._check_fitted()
        f, g = check_pair(base_logits, chat_logits)
        tau = np.where(agreement_mask(f, g), self.temperature_agree_, self.temperature_disagree_)
        for side in ("agree", "disagree"):  # a hand-edited file: the same guard as DACA's
            scale_by_temperature(g[:0], getattr(self, f"temperature_{side}_"), f"temperature_{side}_")
        return scale_by_temperature(g, tau, "temperature")

    def predict_log_proba(self, chat: object, base: object = None) -> np.ndarray:
        """Calibrated log-probabilities of the chat model (n, k); ``base``: the base model's logits (required)."""
        return log_softmax(self.transform(chat, self._base_at_apply(base)))

    # ------------------------------------------------------------------ export
    def fitted_params(self) -> dict[str, Any]:
        return {**super().fitted_params(), "n_agree": self.n_agree_, "agreement_rate": self.agreement_rate_,
                "temperature_agree": self.temperature_agree_, "temperature_disagree": self.temperature_disagree_,
                "temperature_agree_at_bound": self.at_bound_agree_ is not None,
                "temperature_disagree_at_bound": self.at_bound_disagree_ is not None}

    def _state(self) -> dict[str, Any]:
        return {
            "parameters": {"temperature_agree": self.temperature_agree_,
                           "temperature_disagree": self.temperature_disagree_},
            "n_options": self.n_options_, "n": self.n_,
            "agreement": {"n": self.n_, "n_agree": self.n_agree_, "agreement_rate": self.agreement_rate_},
            "target_disagree": None if math.isnan(self.target_disagree_) else self.target_disagree_,
            "fallback": self.fallback_,
        }

    def _solver_record(self) -> dict[str, Any]:
        return {**super()._solver_record(), "at_bound": {"agree": self.at_bound_agree_,
                                                         "disagree": self.at_bound_disagree_}}

    def _read_state(self, r: Reader) -> None:
        data, params = r.data, r.obj("parameters")
        for side in ("agree", "disagree"):
            name = f"temperature_{side}"
            setattr(self, f"{name}_", r.temperature(params[name], name, self.temperature_bounds))
        self.n_options_ = r.integer(data["n_options"], "n_options", 2)
        self.n_ = r.integer(data["n"], "n", 1)
        r.agreement(self)
        target = data["target_disagree"]
        if target is not None and not (is_real(target) and 0 <= target <= 1):
            raise r.bad(f"target_disagree must be null or a probability, got {target!r}")
        self.target_disagree_ = float("nan") if target is None else float(target)
        if data["fallback"] not in (None, "agree<-disagree", "disagree<-agree"):
            raise r.bad(f"fallback must be null, \"agree<-disagree\" or \"disagree<-agree\", got {data['fallback']!r}")
        self.fallback_ = data["fallback"]

    def _read_solver(self, r: Reader) -> None:
        super()._read_solver(r)
        lo, hi = (float(v) for v in self.temperature_bounds)
        at = r.obj("solver").get("at_bound")
        if at is None:  # format_version 1 did not record it: the same test as fit's
            at = {side: _at_bound(getattr(self, f"temperature_{side}_"), lo, hi) for side in ("agree", "disagree")}
        if not (isinstance(at, dict) and set(at) == {"agree", "disagree"}
                and all(v in (None, "max_temperature", "min_temperature") for v in at.values())):
            raise r.bad(f"solver.at_bound must be {{\"agree\": ..., \"disagree\": ...}} with null, \"max_temperature\" "
                        f"or \"min_temperature\", got {at!r}")
        self.at_bound_agree_, self.at_bound_disagree_ = at["agree"], at["disagree"]


def _at_bound(tau: float, lo: float, hi: float) -> str | None:
    """Which bound ``tau`` sits at (within 1e-6 relative: the solvers stop within 1e-10 of it), or None."""
    if tau >= hi * (1 - 1e-6):
        return "max_temperature"
    if tau <= lo * (1 + 1e-6):
        return "min_temperature"
    return None
