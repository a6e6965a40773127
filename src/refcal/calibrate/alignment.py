"""Label-free calibrators: DACA and the naive alignment baseline (SPEC §2)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._math import log_softmax
from ..errors import FitError
from ._scaling import ScalingCalibrator
from ._validate import check_pair, check_sample_weight
from .base import Reader


def agreement_mask(base_logits: np.ndarray, chat_logits: np.ndarray) -> np.ndarray:
    """``m(x) = 1[argmax f(x) == argmax g(x)]`` (ties: first index), shape (n,) bool.

    Computed on the unscaled logits: a temperature never changes an argmax.
    """
    return np.argmax(base_logits, axis=1) == np.argmax(chat_logits, axis=1)


class _AlignmentCalibrator(ScalingCalibrator):
    _masked = True
    streamable_fit = True

    def fit(self, base_logits: object, chat_logits: object, *, sample_weight: object = None) -> _AlignmentCalibrator:
        """Fit the chat model's calibrator so its distribution matches the base model's.

        Minimises ``(1 / sum_x s(x)) * sum_x s(x) m(x) KL(p(x) || softmax(map(g(x))))`` with
        ``p = softmax(f)``, sample weights ``s`` and the agreement mask ``m`` (all ones for naive
        alignment). The mask is computed once, from the unscaled logits, and stays frozen while vector or
        matrix scaling (which could move an argmax) is fitted.

        Parameters
        ----------
        base_logits : array-like of float, shape (n, k)
            Base (pre-trained) model option logits ``f``; -inf marks a missing option.
        chat_logits : array-like of float, shape (n, k)
            Chat (post-trained) model option logits ``g``, missing options exactly where ``f`` has them.
        sample_weight : array-like of float, shape (n,), optional
            Non-negative per-question weights; weight 2 is the same as duplicating the question.

        Returns
        -------
        self

        Raises
        ------
        InputError, MismatchError
            Malformed or inconsistent logits or weights.
        FitError
            No question where both models pick the same answer (DACA), or the solver failed.
        """
        self._check_params()
        f, g = check_pair(base_logits, chat_logits)
        w = check_sample_weight(sample_weight, f.shape[0])
        agree = agreement_mask(f, g)
        self.n_ = int(f.shape[0])
        self.n_agree_ = int(agree.sum())
        self.agreement_rate_ = self.n_agree_ / self.n_
        weight = w * agree if self._masked else w
        if not np.any(weight > 0):
            raise FitError(
                "no question where base and chat pick the same answer"
                + (" (with positive sample_weight)" if self.n_agree_ else "")
                + "; DACA needs agreement examples: add questions, or check that both score files list the "
                "options in the same order"
            )
        keep = weight > 0  # log-softmax of the rows that count only
        self._fit_core(log_softmax(f[keep]), g[keep], weight[keep], float(w.sum()))
        return self

    def fitted_params(self) -> dict[str, Any]:
        return {**super().fitted_params(), "n_agree": self.n_agree_, "agreement_rate": self.agreement_rate_}

    def _state(self) -> dict[str, Any]:
        return {**super()._state(),
                "agreement": {"n": self.n_, "n_agree": self.n_agree_, "agreement_rate": self.agreement_rate_}}

    def _read_state(self, r: Reader) -> None:
        super()._read_state(r)
        r.agreement(self)


class DACA(_AlignmentCalibrator):
    """Disagreement-Aware Confidence Alignment (Luo et al., NeurIPS 2025): label-free calibration.

    Fits a temperature (or vector / matrix scaling) of the chat model's option logits so that its
    distribution matches the base model's, **only on questions where the two models pick the same
    answer**: ``min mean_x m(x) KL(softmax(f(x)) || softmax(map(g(x))))``.

    Parameters
    ----------
    scaling : {"temperature", "vector", "matrix"}, default "temperature"
        ``g / tau`` (fitted as ``beta = 1/tau`` by a safeguarded Newton method on the convex objective),
        ``w * g + c`` or ``W g + c`` (L-BFGS-B from the identity). For ragged rows, missing options are 0
        inside ``W g`` and -inf again afterwards.
    l2 : float, default 0.0
        Vector / matrix scaling only: adds ``(l2 / 2) * ||theta - identity||^2`` to the objective, a pull
        towards the identity map for small calibration sets.
    max_iter : int, default 1000
        Iteration cap of the solver.
    tol : float, default 1e-10
        Newton: relative step size at which to stop (the result is then exact to rounding). L-BFGS-B:
        gradient tolerance.
    temperature_bounds : (float, float), default (1e-3, 1e4)
        Allowed temperature range. If the optimum lies outside (e.g. a flat base distribution drives
        ``tau -> inf``), the bound is returned, ``at_bound_`` says which, and ``on_bound`` decides.
    on_bound : {"warn", "raise"}, default "warn"
        Emit a :class:`CalibrationWarning` or raise :class:`~refcal.errors.FitError` at a bound.

    Attributes
    ----------
    temperature_ : float
        Fitted temperature (temperature scaling).
    coef_ : ndarray, shape (k,) or (k, k)
        ``w`` or ``W`` (vector / matrix scaling).
    intercept_ : ndarray, shape (k,)
        ``c`` (vector / matrix scaling).
    n_, n_agree_, agreement_rate_ : int, int, float
        Questions, agreeing questions, and their ratio (unweighted).
    n_options_ : int
        ``k`` of the fitting data.
    n_iter_, converged_, objective_, solver_message_, at_bound_
        Solver record; ``objective_`` is the minimised weighted-mean KL (plus the L2 term).
    """

    method = "daca"
    description = "DACA: KL(base || scaled chat) on questions where base and chat agree"


class NaiveAlignment(_AlignmentCalibrator):
    """Naive alignment: like :class:`DACA` but every question counts (``m(x) = 1``).

    The paper's failing baseline: on disagreement questions the base distribution pulls the chat
    model's confidence in its (different) answer down, so the fitted temperature is too high. Same
    parameters and attributes as :class:`DACA` (``n_agree_`` is reported but not used).
    """

    method = "naive"
    description = "naive alignment: KL(base || scaled chat) on every question"
    _masked = False
