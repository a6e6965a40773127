r"""DACA + k labels: the label-free DACA temperature as the prior of a Bayesian temperature fit on k labels.

With :math:`\beta = 1/\tau`, the chat logits :math:`g_i` and labels :math:`y_i` of the k labelled questions,

.. math:: \mathrm{NLL}(\beta) = \sum_{i \le k} \big[\log\textstyle\sum_j e^{\beta g_{ij}} - \beta g_{i y_i}\big],
          \qquad \beta \sim \mathcal N(\beta_0, s^2), \quad \beta_0 = 1/\tau_\mathrm{DACA},

where :math:`\tau_\mathrm{DACA}` is fitted without labels on every calibration question. The fitted
temperature is the MAP :math:`\hat\beta_s = \arg\min_\beta \mathrm{NLL}(\beta) + (\beta-\beta_0)^2/(2s^2)`.

**The prior width s is weighed by the marginal likelihood of the k labels**, under the Laplace
approximation

.. math:: \log p(y \mid s) \approx -\mathrm{NLL}(\hat\beta_s) - \frac{(\hat\beta_s-\beta_0)^2}{2s^2}
          - \log s - \tfrac12 \log H_s, \qquad H_s = \mathrm{NLL}''(\hat\beta_s) + s^{-2},

on a log-spaced grid of :math:`s / \beta_0` in [1e-3, 1e2] (61 points). ``width="average"`` (the default)
gives each width a log-uniform hyperprior over the grid and returns the posterior mean
:math:`\beta = \sum_s w_s \hat\beta_s`, :math:`w_s \propto p(y \mid s)` (hierarchical Bayes);
``width="evidence"`` takes the single most likely width (type-II maximum likelihood, refined by a bounded
1-D search). Measured on the synthetic worlds (12–20 label draws, 900 / 2,100 splits): with 10 / 25 / 100
labels the average gave ECE 4.5 / 4.0 / 3.7 % where DACA is right (DACA 4.7 / 4.3 / 4.6 %; the single
width 6.2 / 5.6 / 3.5 %, worse than DACA alone with few labels) and 8.4 / 9.2 / 2.9 % where DACA is wrong
(DACA 9.4 / 9.7 / 9.4 %; single width 8.0 / 8.5 / 2.6 %): averaging never did worse than DACA, which is
the promise of adding labels to it, at the price of moving more slowly when DACA is wrong.
Why the marginal likelihood and not leave-one-out cross-validation:

* the NLL is convex in :math:`\beta` (its second derivative is the variance of :math:`g` under the
  calibrated distribution), so the posterior is log-concave and unimodal in one dimension: the Laplace
  approximation is accurate and costs one Newton solve per width;
* every one of the k labels serves both the width and the fit, where LOO's criterion is a sum of k noisy
  held-out losses that is flat and jumpy at k = 10;
* the limits are right: with k = 0 the posterior is the prior, so the fit **is** DACA; as k grows the
  likelihood dominates and the fit tends to labelled temperature scaling; when the labels agree with
  :math:`\beta_0` the evidence favours a narrow prior and the fit stays at DACA's temperature.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from ..errors import FitError, InputError, NotFittedError
from . import _pairfile
from ._base import TASKS, _is_real, _plain_number
from ._maps import apply_temperature
from ._validate import check_logits, check_optional_labels, check_pair

__all__ = ["DACAWithLabels", "METHOD"]

METHOD = "daca_k"
_GRID = np.logspace(-3, 2, 61)  # prior widths s / beta_0


def _nll_derivatives(beta: float, g: np.ndarray, gy: np.ndarray) -> tuple[float, float, float]:
    """``NLL(beta)`` and its first two derivatives for logits ``g`` (m, k) (-inf = missing) and the true
    options' logits ``gy`` (m,)."""
    z = beta * g
    lse = logsumexp(z, axis=1, keepdims=True)
    q = np.exp(z - lse)
    gz = np.where(np.isfinite(g), g, 0.0)
    mean = np.sum(q * gz, axis=1)
    var = np.sum(q * (gz - mean[:, None]) ** 2, axis=1)
    return float(np.sum(lse[:, 0] - beta * gy)), float(np.sum(mean - gy)), float(np.sum(var))


def _map_beta(g: np.ndarray, gy: np.ndarray, beta0: float, s: float, lo: float, hi: float) -> tuple[float, float, float]:
    """``(beta_MAP, NLL(beta_MAP), NLL''(beta_MAP))`` by safeguarded Newton on the convex posterior."""
    prec = 1.0 / s**2
    b = min(max(beta0, lo), hi)
    a_lo, a_hi = lo, hi  # bracket of the root of the derivative
    for _ in range(200):
        f, d1, d2 = _nll_derivatives(b, g, gy)
        grad, hess = d1 + prec * (b - beta0), d2 + prec
        if grad > 0:
            a_hi = b
        else:
            a_lo = b
        if abs(grad) <= 1e-12 * max(1.0, abs(d1)) + 1e-14:
            break
        nxt = b - grad / hess if hess > 0 else (a_lo + a_hi) / 2
        if not a_lo < nxt < a_hi:
            nxt = (a_lo + a_hi) / 2  # Newton left the bracket: bisect
        if abs(nxt - b) <= 1e-15 * max(1.0, b):
            b = nxt
            break
        b = nxt
    f, _, d2 = _nll_derivatives(b, g, gy)
    return b, f, d2


class DACAWithLabels:
    """DACA + k labels (see the module docstring): one temperature, fitted on both models' logits of every
    calibration question (the label-free DACA prior) and the labels of those that have one.

    Parameters
    ----------
    prior_sd : float or None, default None
        Width ``s`` of the prior on ``beta = 1/tau``; ``None`` weighs the grid of widths by their Laplace
        marginal likelihood (see ``width``).
    width : {"average", "evidence"}, default "average"
        With ``prior_sd=None``: the posterior mean over widths, or the single most likely width.
    temperature_bounds : (float, float)
        The fitted temperature stays within these (``beta`` within their inverses).

    Attributes
    ----------
    temperature_ : float
        The MAP temperature ``1 / beta``.
    prior_temperature_ : float
        DACA's label-free temperature ``1 / beta_0``.
    prior_sd_ : float or None
        The prior width used: the given or most likely one, or (``average``) the posterior geometric mean of
        the widths; ``None`` when no label was given (the fit is DACA's).
    log_evidence_ : float or None
        Laplace log marginal likelihood of the labels at ``prior_sd_`` (``average``: averaged over the
        hyperprior).
    n_labels_, n_, n_agree_ : int
        Labelled questions, questions, agreeing questions (DACA's fit).
    """

    method = METHOD
    description = "DACA + k labels: MAP temperature with DACA's label-free temperature as the prior"
    task_ = TASKS[0]
    scaling = "temperature"

    def __init__(self, *, prior_sd: float | None = None, width: str = "average",
                 temperature_bounds: tuple[float, float] = (1e-3, 1e4)):
        self.prior_sd = prior_sd
        self.width = width
        self.temperature_bounds = temperature_bounds

    def __repr__(self) -> str:
        return (f"DACAWithLabels(prior_sd={self.prior_sd!r}, width={self.width!r}, "
                f"temperature_bounds={self.temperature_bounds!r})")

    def _check_params(self) -> None:
        if self.prior_sd is not None and not (_is_real(self.prior_sd) and 0 < self.prior_sd < np.inf):
            raise InputError(f"prior_sd must be a positive number or None, got {self.prior_sd!r}")
        if self.width not in ("average", "evidence"):
            raise InputError(f"width must be 'average' or 'evidence', got {self.width!r}")
        b = self.temperature_bounds
        if not (isinstance(b, list | tuple) and len(b) == 2 and all(_is_real(v) for v in b) and 0 < b[0] < b[1] < np.inf):
            raise InputError(f"temperature_bounds must be (low, high) with 0 < low < high, got {b!r}")

    def fit(self, base_logits: object, chat_logits: object, labels: object) -> DACAWithLabels:
        """Fit on both models' logits (n, k) and labels (n,) where ``-1`` marks an unlabelled question.

        Only the labelled questions' labels are read; with none, the result is DACA's temperature.

        Raises
        ------
        InputError, MismatchError
            Malformed or inconsistent inputs.
        FitError
            DACA cannot be fitted (no agreeing question).
        """
        from .alignment import DACA

        self._check_params()
        f, g = check_pair(base_logits, chat_logits)
        y = check_optional_labels(labels, g.shape[0], g.shape[1])
        known = y >= 0
        if np.any(~np.isfinite(g[known, y[known]])):
            raise InputError("a label points at a missing option (-inf logit); fix the labels or the scores")
        lo_t, hi_t = (float(v) for v in self.temperature_bounds)
        daca = DACA(scaling="temperature", temperature_bounds=(lo_t, hi_t)).fit(f, g)
        beta0 = 1.0 / daca.temperature_
        self.prior_temperature_ = float(daca.temperature_)
        self.n_, self.n_agree_, self.n_options_ = int(g.shape[0]), int(daca.n_agree_), int(g.shape[1])
        self.n_labels_ = int(known.sum())
        self.prior_sd_ = self.log_evidence_ = None
        if self.n_labels_ == 0:
            self.temperature_ = self.prior_temperature_
            return self
        gl = g[known]
        gy = gl[np.arange(gl.shape[0]), y[known]]
        lo, hi = 1.0 / hi_t, 1.0 / lo_t

        def fit_at(log_s: float) -> tuple[float, float]:
            """(MAP beta, negative Laplace log evidence) at the width exp(log_s)."""
            s = float(np.exp(log_s))
            b, nll, d2 = _map_beta(gl, gy, beta0, s, lo, hi)
            return b, nll + (b - beta0) ** 2 / (2 * s**2) + log_s + 0.5 * np.log(d2 + 1 / s**2)

        if self.prior_sd is not None:
            log_s = float(np.log(self.prior_sd))
            beta, neg = fit_at(log_s)
        else:
            logs = np.log(_GRID * beta0)
            betas, vals = (np.array(v) for v in zip(*(fit_at(v) for v in logs), strict=True))
            if self.width == "average":  # log-uniform hyperprior on the grid: posterior weights of the widths
                w = np.exp(-(vals - vals.min()))
                w /= w.sum()
                beta, log_s = float(w @ betas), float(w @ logs)
                neg = float(vals.min() - np.log(np.mean(np.exp(-(vals - vals.min())))))
            else:
                i = int(np.argmin(vals))
                log_s = float(logs[i])
                if 0 < i < len(logs) - 1:  # refine between the neighbours of the best grid point
                    res = minimize_scalar(lambda v: fit_at(v)[1], bounds=(logs[i - 1], logs[i + 1]),
                                          method="bounded", options={"xatol": 1e-6})
                    if res.fun < vals[i]:
                        log_s = float(res.x)
                beta, neg = fit_at(log_s)
        if not np.isfinite(beta) or beta <= 0:  # pragma: no cover - the bracket keeps beta in [lo, hi]
            raise FitError(f"the DACA + k labels fit returned beta = {beta!r}")
        self.prior_sd_, self.log_evidence_ = float(np.exp(log_s)), float(-neg)
        self.temperature_ = float(1.0 / beta)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "temperature_"):
            raise NotFittedError("this DACAWithLabels is not fitted yet; call fit(base_logits, chat_logits, labels)")

    def predict_log_proba(self, chat_logits: object, base: object = None) -> np.ndarray:
        """Calibrated log-probabilities (n, k): ``log_softmax(g / tau)``; ``base`` (the base model's logits) is not used."""
        from .._math import log_softmax

        self._check_fitted()
        return log_softmax(apply_temperature(check_logits(chat_logits, "chat_logits"), self.temperature_))

    def predict_proba(self, chat_logits: object, base: object = None) -> np.ndarray:
        return np.exp(self.predict_log_proba(chat_logits))

    # ------------------------------------------------------------------ export
    def _hyperparameters(self) -> dict[str, Any]:
        return {"prior_sd": _plain_number(self.prior_sd), "width": self.width,
                "temperature_bounds": [_plain_number(v) for v in self.temperature_bounds]}

    def to_dict(self, *, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Plain-JSON description, read back by :func:`refcal.calibrate.load_calibrator`."""
        head, provenance = _pairfile.header(self, inputs)
        return {**head, "task": self.task_, "temperature": self.temperature_,
                "parameters": {"temperature": self.temperature_, "prior_temperature": self.prior_temperature_,
                               "prior_sd": self.prior_sd_, "log_evidence": self.log_evidence_},
                "n_options": self.n_options_, "n": self.n_, "n_agree": self.n_agree_, "n_labels": self.n_labels_,
                "hyperparameters": self._hyperparameters(), "inputs": provenance}

    def save(self, path: str | os.PathLike, *, inputs: dict[str, Any] | None = None) -> None:
        """Write :meth:`to_dict` as JSON atomically (see :meth:`refcal.DACA.save`)."""
        _pairfile.save(self, path, inputs)

    @classmethod
    def from_dict(cls, data: dict, source: str) -> DACAWithLabels:
        """Inverse of :meth:`to_dict`; every field checked."""
        r = _pairfile.Reader(data, source, METHOD)
        cal = r.build(cls, {"prior_sd", "width", "temperature_bounds"}, "temperature")
        params = r.obj("parameters")
        lo, hi = cal.temperature_bounds
        for name in ("temperature", "prior_temperature"):
            t = r.real(params[name], f"parameters.{name}")
            if not lo * (1 - 1e-12) <= t <= hi * (1 + 1e-12):
                raise r.bad(f"parameters.{name} must lie within temperature_bounds [{lo:g}, {hi:g}], got {t!r}")
            setattr(cal, f"{name}_", t)
        if data.get("temperature", cal.temperature_) != cal.temperature_:
            raise r.bad("temperature differs from parameters.temperature")
        cal.n_options_ = r.integer(data["n_options"], "n_options", 2)
        cal.n_ = r.integer(data["n"], "n", 1)
        cal.n_agree_ = r.integer(data["n_agree"], "n_agree", 1)
        cal.n_labels_ = r.integer(data["n_labels"], "n_labels", 0)
        if cal.n_agree_ > cal.n_ or cal.n_labels_ > cal.n_:
            raise r.bad("n_agree and n_labels cannot exceed n")
        sd, ev = params["prior_sd"], params["log_evidence"]
        cal.prior_sd_ = None if sd is None else r.real(sd, "parameters.prior_sd")
        cal.log_evidence_ = None if ev is None else r.real(ev, "parameters.log_evidence")
        return cal
