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
import os
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from .._math import log_softmax
from ..errors import FitError, InputError, NotFittedError
from . import _pairfile
from ._base import TASKS, _is_real, _plain_number
from ._solvers import fit_temperature
from ._validate import check_pair
from .alignment import agreement_mask

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


class AgreementDACA:
    """Agreement-aware DACA: separate temperatures for questions where base and chat agree / disagree.

    Label-free. ``fit(base_logits, chat_logits)``; at apply time the agreement of each question is read
    from both models' logits, so ``predict_log_proba`` takes both.

    Parameters
    ----------
    temperature_bounds : (float, float), default (1e-3, 1e4)
        Allowed temperature range on both sides.
    min_group : int, default 1
        A side (agreeing / disagreeing) with fewer calibration questions than this borrows the other
        side's temperature (``fallback_`` says which); an empty side always does.

    Attributes
    ----------
    temperature_agree_, temperature_disagree_ : float
        Fitted temperatures (``temperature_agree_`` equals :class:`DACA`'s ``temperature_``).
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
    #: multiple-choice option logits only
    #: both sides are temperatures (``refcal apply`` may transfer it to another option count)
    scaling = "temperature"
    task_ = TASKS[0]
    description = ("agreement-aware DACA: DACA's temperature where base and chat agree; where they disagree, "
                   "a temperature matching the chat's confidence to the base's probability of the chat's answer")

    def __init__(self, *, temperature_bounds: tuple[float, float] = (1e-3, 1e4), min_group: int = 1):
        self.temperature_bounds = temperature_bounds
        self.min_group = min_group

    def __repr__(self) -> str:
        return f"AgreementDACA(temperature_bounds={self.temperature_bounds!r}, min_group={self.min_group!r})"

    def _hyperparameters(self) -> dict[str, Any]:
        return {"temperature_bounds": [_plain_number(b) for b in self.temperature_bounds],
                "min_group": _plain_number(self.min_group)}

    def _check_params(self) -> None:
        b = self.temperature_bounds
        ok = (isinstance(b, list | tuple) and len(b) == 2 and all(_is_real(v) for v in b)
              and 0 < b[0] < b[1] < math.inf)
        if not ok:
            raise InputError(f"temperature_bounds must be (low, high) with 0 < low < high, got {b!r}")
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
        self.n_options_ = int(g.shape[1])
        self.n_iter_, self.converged_, self.objective_ = int(it), True, float(obj)
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
    def _check_fitted(self) -> None:
        if not hasattr(self, "objective_"):
            raise NotFittedError("this AgreementDACA is not fitted yet; call fit(base_logits, chat_logits) first")

    def transform(self, base_logits: object, chat_logits: object) -> np.ndarray:
        """Calibrated chat logits: ``g / tau_a`` where base and chat agree, ``g / tau_d`` where they differ."""
        self._check_fitted()
        f, g = check_pair(base_logits, chat_logits)
        agree = agreement_mask(f, g)
        tau = np.where(agree, self.temperature_agree_, self.temperature_disagree_)
        return g / tau[:, None]

    def predict_log_proba(self, base_logits: object, chat_logits: object) -> np.ndarray:
        """Calibrated log-probabilities of the chat model, shape (n, k)."""
        return log_softmax(self.transform(base_logits, chat_logits))

    def predict_proba(self, base_logits: object, chat_logits: object) -> np.ndarray:
        """Calibrated probabilities of the chat model, shape (n, k); rows sum to 1."""
        return np.exp(self.predict_log_proba(base_logits, chat_logits))

    # ------------------------------------------------------------------ export
    def to_dict(self, *, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Plain-JSON description, read back by :func:`refcal.calibrate.load_calibrator`."""
        head, provenance = _pairfile.header(self, inputs)
        return {
            **head,
            "parameters": {"temperature_agree": self.temperature_agree_,
                           "temperature_disagree": self.temperature_disagree_},
            "n_options": self.n_options_, "n": self.n_,
            "agreement": {"n": self.n_, "n_agree": self.n_agree_, "agreement_rate": self.agreement_rate_},
            "target_disagree": None if math.isnan(self.target_disagree_) else self.target_disagree_,
            "fallback": self.fallback_,
            "hyperparameters": self._hyperparameters(),
            "solver": {"name": "newton+brent", "n_iter": self.n_iter_, "converged": self.converged_,
                       "objective": self.objective_},
            "inputs": provenance,
        }

    def save(self, path: str | os.PathLike, *, inputs: dict[str, Any] | None = None) -> None:
        """Write :meth:`to_dict` as JSON atomically (see :meth:`refcal.DACA.save`)."""
        _pairfile.save(self, path, inputs)

    @classmethod
    def from_dict(cls, data: dict, source: str) -> AgreementDACA:
        """Inverse of :meth:`to_dict`, every field checked (a hand-edited file is refused, never applied)."""
        r = _pairfile.Reader(data, source, METHOD)
        cal = r.build(cls, {"temperature_bounds", "min_group"}, "temperature")
        lo, hi = cal.temperature_bounds
        params = r.obj("parameters")
        for side in ("agree", "disagree"):
            t = params[f"temperature_{side}"]
            if not (_is_real(t) and math.isfinite(t) and lo * (1 - 1e-12) <= t <= hi * (1 + 1e-12)):
                raise r.bad(f"temperature_{side} must be a number within [{lo:g}, {hi:g}], got {t!r}")
            setattr(cal, f"temperature_{side}_", float(t))
        cal.n_options_ = r.integer(data["n_options"], "n_options", 2)
        cal.n_ = r.integer(data["n"], "n", 1)
        agreement = r.obj("agreement")
        cal.n_agree_ = r.integer(agreement["n_agree"], "agreement.n_agree", 0)
        rate = agreement["agreement_rate"]
        if cal.n_agree_ > cal.n_ or not (_is_real(rate) and 0 <= rate <= 1):
            raise r.bad(f"agreement {cal.n_agree_} of {cal.n_} questions, rate {rate!r}")
        cal.agreement_rate_ = float(rate)
        target = data["target_disagree"]
        if target is not None and not (_is_real(target) and 0 <= target <= 1):
            raise r.bad(f"target_disagree must be null or a probability, got {target!r}")
        cal.target_disagree_ = float("nan") if target is None else float(target)
        if data["fallback"] not in (None, "agree<-disagree", "disagree<-agree"):
            raise r.bad(f"fallback must be null, \"agree<-disagree\" or \"disagree<-agree\", got {data['fallback']!r}")
        cal.fallback_ = data["fallback"]
        r.solver(cal)
        return cal
