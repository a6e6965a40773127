"""Few-label calibrators: fitted on the labels of a handful of calibration questions.

Three **top-label** maps, fitted on ``(confidence, correct)`` pairs of the chat model's answer
(``confidence = max_j softmax(g)_j``, ``correct = 1[argmax g == y]``), following Gupta & Ramdas's
top-label calibration:

* :class:`PlattScaling` — ``c' = sigmoid(a * z + b)`` on the confidence logit ``z = log c - log(1 - c)``
  (two parameters; Platt's 1999 smoothed targets ``(N+ + 1)/(N+ + 2)`` and ``1/(N- + 2)``, as in
  scikit-learn's ``CalibratedClassifierCV(method="sigmoid")``, keep it finite when every answer is right);
* :class:`IsotonicCalibration` — the increasing step-and-ramp map of isotonic regression (scikit-learn's
  ``IsotonicRegression(out_of_bounds="clip")``: tied confidences pooled, linear between knots);
* :class:`HistogramBinning` — Zadrozny & Elkan's histogram binning: equal-mass (or equal-width) bins of the
  confidence, each mapped to its share of right answers.

A top-label map moves only the confidence of the chat model's answer; the other options keep their ratios
and share the rest, ``p'_j = p_j (1 - c') / (1 - c)``. The mapped confidence is kept in ``[eps, 1 - eps]``
(a few labels often give a bin of only right answers, and a confidence of 1 makes one wrong answer cost an
infinite NLL) and never below the value that keeps the answer the chat model's (the runner-up's share).

:class:`DACAWithLabels` ("DACA + k labels") is a temperature: the label-free DACA temperature is the prior
of a Bayesian temperature fit on the labelled questions (see its docstring).

All save to plain JSON and load with :func:`refcal.calibrate.load_calibrator`.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from scipy.optimize import isotonic_regression
from scipy.special import expit, logsumexp

from .._math import log_softmax
from ..errors import FitError, InputError, NotFittedError
from . import _pairfile
from ._base import TASKS, _is_real, _plain_number
from ._validate import check_labels, check_logits

__all__ = ["PlattScaling", "IsotonicCalibration", "HistogramBinning", "TopLabelMap", "top_label_inputs"]

_Z_MAX = 50.0  # |confidence logit| beyond this is a certainty in float64 (sigmoid(50) = 1 - 2e-22)


def top_label_inputs(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(log-probabilities (n, k), answer (n,), confidence (n,), confidence logit (n,))`` of checked logits.

    The logit ``log c - log(1 - c)`` is computed from the log-probabilities (``log(1 - c)`` as the
    log-sum-exp of the other options), so it stays exact for confidences within 1e-16 of 1; it is clipped
    to +-50.
    """
    lp = log_softmax(logits)
    n = lp.shape[0]
    a = np.argmax(logits, axis=1)  # the chat model's answer (SPEC: argmax of its logits; softmax may tie them)
    rows = np.arange(n)
    top = lp[rows, a]
    others = lp.copy()
    others[rows, a] = -np.inf
    with np.errstate(divide="ignore"):
        rest = logsumexp(others, axis=1)  # log(1 - c); -inf with a single present option
    z = np.clip(top - rest, -_Z_MAX, _Z_MAX)
    return lp, a, np.exp(top), z


class TopLabelMap:
    """Base of the top-label maps: ``fit(chat_logits, labels)``, ``confidence_map``, ``predict_log_proba``,
    JSON export. Subclasses set ``method``, ``description``, ``_params()`` and implement ``_fit_map`` and
    ``_map``."""

    method = ""
    description = ""
    task_ = TASKS[0]
    scaling = "top-label"
    _hyper: tuple[str, ...] = ("eps",)

    def __init__(self, *, eps: float = 1e-3):
        self.eps = eps

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)!r}' for k in self._hyper)})"

    def _check_params(self) -> None:
        if not (_is_real(self.eps) and 0 < self.eps < 0.5):
            raise InputError(f"eps must be a number in (0, 0.5), got {self.eps!r}")

    # ------------------------------------------------------------------ fitting
    def fit(self, chat_logits: object, labels: object) -> TopLabelMap:
        """Fit the map on the chat model's logits (n, k) and the labels (n,) of those questions.

        Every label must be known (``-1`` is refused: pass only the labelled questions).

        Raises
        ------
        InputError
            Malformed logits or labels, or no question.
        """
        self._check_params()
        g = check_logits(chat_logits, "chat_logits")
        y = check_labels(labels, g)
        _, a, conf, z = top_label_inputs(g)
        correct = (a == y).astype(np.float64)
        self.n_ = int(g.shape[0])
        self.n_options_ = int(g.shape[1])
        self.n_correct_ = int(correct.sum())
        self._fit_map(conf, z, correct)
        return self

    def _fit_map(self, conf: np.ndarray, z: np.ndarray, correct: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    def _map(self, conf: np.ndarray, z: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(chat_logits, labels) first")

    # ------------------------------------------------------------------ prediction
    def confidence_map(self, conf: object) -> np.ndarray:
        """The fitted map of confidences in [0, 1] (any shape), before the ``eps`` clip."""
        self._check_fitted()
        c = np.asarray(conf, dtype=np.float64)
        if not (np.isfinite(c).all() and (c >= 0).all() and (c <= 1).all()):
            raise InputError("confidences must be numbers in [0, 1]")
        with np.errstate(divide="ignore"):
            z = np.clip(np.log(c) - np.log1p(-c), -_Z_MAX, _Z_MAX)
        return self._map(c, z)

    def predict_log_proba(self, chat_logits: object, base: object = None) -> np.ndarray:
        """Calibrated log-probabilities (n, k): the answer's confidence mapped, the other options rescaled
        (see the module docstring); the answer stays the chat model's. ``base`` (the base model's logits) is not used."""
        self._check_fitted()
        g = check_logits(chat_logits, "chat_logits")
        lp, a, conf, z = top_label_inputs(g)
        rows = np.arange(len(a))
        new = np.clip(self._map(conf, z), self.eps, 1 - self.eps)
        others = lp.copy()
        others[rows, a] = -np.inf
        with np.errstate(divide="ignore"):
            log_rest = logsumexp(others, axis=1)  # log(1 - c)
            runner_up = np.exp(others.max(axis=1))
        # the answer must stay the argmax: c' >= p2 (1 - c') / (1 - c), i.e. c' >= p2 / (1 - c + p2)
        single = ~np.isfinite(log_rest)
        floor = np.where(single, 0.0, runner_up / np.maximum(np.exp(log_rest) + runner_up, 1e-300))
        new = np.maximum(new, floor * (1 + 1e-9))
        out = others + (np.log1p(-np.minimum(new, 1.0)) - np.where(single, 0.0, log_rest))[:, None]
        out[rows, a] = np.log(new)
        out[single] = lp[single]  # one present option: nothing to redistribute
        return out

    def predict_proba(self, chat_logits: object, base: object = None) -> np.ndarray:
        """Calibrated probabilities (n, k); rows sum to 1."""
        return np.exp(self.predict_log_proba(chat_logits))

    # ------------------------------------------------------------------ export
    def _params(self) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def _hyperparameters(self) -> dict[str, Any]:
        return {k: _plain_number(getattr(self, k)) for k in self._hyper}

    def to_dict(self, *, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Plain-JSON description, read back by :func:`refcal.calibrate.load_calibrator`."""
        head, provenance = _pairfile.header(self, inputs)
        return {**head, "task": self.task_, "parameters": self._params(), "n_options": self.n_options_,
                "n": self.n_, "n_correct": self.n_correct_, "hyperparameters": self._hyperparameters(),
                "inputs": provenance}

    def save(self, path: str | os.PathLike, *, inputs: dict[str, Any] | None = None) -> None:
        """Write :meth:`to_dict` as JSON atomically (see :meth:`refcal.DACA.save`)."""
        _pairfile.save(self, path, inputs)

    @classmethod
    def from_dict(cls, data: dict, source: str) -> TopLabelMap:
        """Inverse of :meth:`to_dict`; every field checked (a hand-edited file is refused, never applied)."""
        r = _pairfile.Reader(data, source, cls.method)
        cal = r.build(cls, set(cls._hyper), cls.scaling)
        if data.get("task", TASKS[0]) != TASKS[0]:
            raise r.bad(f"task must be {TASKS[0]!r} for {cls.method}, got {data.get('task')!r}")
        cal.n_options_ = r.integer(data["n_options"], "n_options", 2)
        cal.n_ = r.integer(data["n"], "n", 1)
        cal.n_correct_ = r.integer(data["n_correct"], "n_correct", 0)
        if cal.n_correct_ > cal.n_:
            raise r.bad(f"n_correct {cal.n_correct_} exceeds n {cal.n_}")
        cal._load_params(r, r.obj("parameters"))
        return cal

    def _load_params(self, r: _pairfile.Reader, params: dict) -> None:  # pragma: no cover
        raise NotImplementedError


def _probabilities(r: _pairfile.Reader, value: Any, name: str, *, increasing: bool) -> np.ndarray:
    if not (isinstance(value, list) and value and all(_is_real(x) and 0 <= x <= 1 for x in value)):
        raise r.bad(f"parameters.{name} must be a non-empty list of numbers in [0, 1]")
    arr = np.asarray(value, dtype=np.float64)
    if increasing and np.any(np.diff(arr) < 0):
        raise r.bad(f"parameters.{name} must be non-decreasing")
    return arr


# ---------------------------------------------------------------------------------------------- Platt
class PlattScaling(TopLabelMap):
    """Platt scaling of the top-label confidence: ``c' = sigmoid(a z + b)``, ``z`` the confidence logit.

    Fitted by Newton's method on the cross-entropy against Platt's smoothed targets (a strictly convex
    problem in ``(a, b)``, solved to a gradient of 1e-12). ``a = 1, b = 0`` is the identity.

    Attributes
    ----------
    a_, b_ : float
        Slope and intercept on the logit scale (scikit-learn's ``_sigmoid_calibration`` returns ``-a, -b``).
    n_iter_ : int
    """

    method = "platt"
    description = "Platt scaling of the chat model's top-label confidence (labelled)"

    def _fit_map(self, conf: np.ndarray, z: np.ndarray, correct: np.ndarray) -> None:
        n_pos = correct.sum()
        n_neg = correct.size - n_pos
        t = np.where(correct > 0, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
        x = np.column_stack([z, np.ones_like(z)])
        w = np.zeros(2)

        def loss(w: np.ndarray) -> float:
            s = x @ w  # -log sigmoid(s) = logaddexp(0, -s)
            return float(np.sum(t * np.logaddexp(0, -s) + (1 - t) * np.logaddexp(0, s)))

        f = loss(w)
        self.n_iter_ = 0
        while self.n_iter_ < 100:
            self.n_iter_ += 1
            q = expit(x @ w)
            grad = x.T @ (q - t)
            hess = x.T @ (x * (q * (1 - q))[:, None]) + 1e-12 * np.eye(2)
            step = np.linalg.solve(hess, grad)
            lr = 1.0
            while lr > 1e-10 and loss(w - lr * step) > f + 1e-4 * lr * (grad @ -step):
                lr /= 2  # backtracking (Armijo)
            w = w - lr * step
            f = loss(w)
            if np.max(np.abs(grad)) < 1e-12 * max(1.0, correct.size) or lr <= 1e-10:
                break
        if not np.isfinite(w).all():  # pragma: no cover - the smoothed targets keep the optimum finite
            raise FitError("Platt scaling diverged")
        self.a_, self.b_ = float(w[0]), float(w[1])

    def _map(self, conf: np.ndarray, z: np.ndarray) -> np.ndarray:
        return expit(self.a_ * z + self.b_)

    def _params(self) -> dict[str, Any]:
        return {"a": self.a_, "b": self.b_}

    def _load_params(self, r: _pairfile.Reader, params: dict) -> None:
        self.a_, self.b_ = r.real(params["a"], "parameters.a"), r.real(params["b"], "parameters.b")
        self.n_iter_ = 0


# ---------------------------------------------------------------------------------------------- isotonic
class IsotonicCalibration(TopLabelMap):
    """Isotonic regression of correctness on confidence (pool-adjacent-violators), applied by linear
    interpolation between the fitted knots and clamped beyond them: scikit-learn's
    ``IsotonicRegression(out_of_bounds="clip")`` on ``(confidence, correct)``.

    Attributes
    ----------
    x_, y_ : ndarray (m,)
        Knots: the distinct calibration confidences and their fitted (non-decreasing) accuracies.
    """

    method = "isotonic"
    description = "isotonic regression of the chat model's top-label confidence (labelled)"

    def _fit_map(self, conf: np.ndarray, z: np.ndarray, correct: np.ndarray) -> None:
        x, inv = np.unique(conf, return_inverse=True)  # tied confidences pooled (weighted mean)
        w = np.bincount(inv).astype(np.float64)
        mean = np.bincount(inv, weights=correct) / w
        self.x_ = x
        self.y_ = np.clip(isotonic_regression(mean, weights=w, increasing=True).x, 0.0, 1.0)

    def _map(self, conf: np.ndarray, z: np.ndarray) -> np.ndarray:
        if self.x_.size == 1:
            return np.full(np.shape(conf), self.y_[0])
        return np.interp(conf, self.x_, self.y_)

    def _params(self) -> dict[str, Any]:
        return {"x": [float(v) for v in self.x_], "y": [float(v) for v in self.y_]}

    def _load_params(self, r: _pairfile.Reader, params: dict) -> None:
        self.x_ = _probabilities(r, params["x"], "x", increasing=True)
        self.y_ = _probabilities(r, params["y"], "y", increasing=True)
        if self.x_.size != self.y_.size or np.any(np.diff(self.x_) <= 0):
            raise r.bad("parameters.x must be strictly increasing and as long as parameters.y")


# ---------------------------------------------------------------------------------------------- histogram
class HistogramBinning(TopLabelMap):
    """Histogram binning (Zadrozny & Elkan 2001): each confidence bin is mapped to its share of right answers.

    Parameters
    ----------
    n_bins : int, default 10
        Most bins; with ``strategy="quantile"`` at most ``n // min_per_bin`` are used (at least 1), so every
        bin holds ``min_per_bin`` questions or more.
    strategy : {"quantile", "uniform"}
        Equal-mass bins (sorted confidences split as ``numpy.array_split``; edges halfway between
        neighbouring groups) or equal-width bins on [0, 1] (an empty bin keeps its midpoint as its value).
    min_per_bin : int, default 5
    eps : float
        See the module docstring.

    Attributes
    ----------
    edges_ : ndarray (B + 1,)
        Bin edges, ``edges_[0] = 0`` and ``edges_[-1] = 1``; bins are ``[e_b, e_{b+1})``, the last closed.
    values_, counts_ : ndarray (B,)
        Mapped confidence and number of calibration questions of each bin.
    """

    method = "histogram"
    description = "histogram binning of the chat model's top-label confidence (labelled)"
    _hyper = ("n_bins", "strategy", "min_per_bin", "eps")

    def __init__(self, *, n_bins: int = 10, strategy: str = "quantile", min_per_bin: int = 5, eps: float = 1e-3):
        super().__init__(eps=eps)
        self.n_bins, self.strategy, self.min_per_bin = n_bins, strategy, min_per_bin

    def _check_params(self) -> None:
        super()._check_params()
        for name in ("n_bins", "min_per_bin"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
                raise InputError(f"{name} must be an integer >= 1, got {v!r}")
        if self.strategy not in ("quantile", "uniform"):
            raise InputError(f"strategy must be 'quantile' or 'uniform', got {self.strategy!r}")

    def _fit_map(self, conf: np.ndarray, z: np.ndarray, correct: np.ndarray) -> None:
        if self.strategy == "uniform":
            edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        else:
            b = max(1, min(self.n_bins, conf.size // self.min_per_bin))
            groups = np.array_split(np.sort(conf, kind="stable"), b)
            inner = [(lo[-1] + hi[0]) / 2 for lo, hi in zip(groups[:-1], groups[1:], strict=True)]
            edges = np.concatenate([[0.0], inner, [1.0]])
        idx = self._index(edges, conf)
        nb = edges.size - 1
        counts = np.bincount(idx, minlength=nb)
        hits = np.bincount(idx, weights=correct, minlength=nb)
        mid = (edges[:-1] + edges[1:]) / 2
        with np.errstate(invalid="ignore", divide="ignore"):
            self.values_ = np.where(counts > 0, hits / counts, mid)
        self.edges_, self.counts_ = edges, counts.astype(np.int64)

    @staticmethod
    def _index(edges: np.ndarray, conf: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, edges.size - 2)

    def _map(self, conf: np.ndarray, z: np.ndarray) -> np.ndarray:
        return self.values_[self._index(self.edges_, conf)]

    def _params(self) -> dict[str, Any]:
        return {"edges": [float(v) for v in self.edges_], "values": [float(v) for v in self.values_],
                "counts": [int(v) for v in self.counts_]}

    def _load_params(self, r: _pairfile.Reader, params: dict) -> None:
        self.edges_ = _probabilities(r, params["edges"], "edges", increasing=True)
        self.values_ = _probabilities(r, params["values"], "values", increasing=False)
        counts = params["counts"]
        if not (isinstance(counts, list) and all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                                 for c in counts)):
            raise r.bad("parameters.counts must be a list of non-negative integers")
        if not (self.edges_.size == self.values_.size + 1 == len(counts) + 1 and self.edges_[0] == 0
                and self.edges_[-1] == 1):
            raise r.bad("parameters.edges must run from 0 to 1 with one more entry than values and counts")
        if sum(counts) != self.n_:
            raise r.bad(f"parameters.counts add up to {sum(counts)}, not n = {self.n_}")
        self.counts_ = np.asarray(counts, dtype=np.int64)
