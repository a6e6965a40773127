"""BaseCal-Proj (``proj``): map the chat model's answer-position hidden state to the base model's, read the
base model's output head over the option tokens there (Tan et al., arXiv 2601.03042).

Label-free. For question ``x``, ``u(x)`` (``H_c``) is the chat model's final hidden state at the answer
position (the position whose next-token logits give the letter scores) and ``v(x)`` (``H_b``) the base
model's at the same prompt's answer position (:func:`refcal.scoring.hidden_states`). On the calibration
questions a linear map with an intercept is fitted by least squares::

    (W, c) = argmin  sum_x || W^T u(x) + c - v(x) ||^2   (+ alpha ||W||_F^2)

(``alpha = 0``: the minimum-norm solution when the system is underdetermined, ``n <= H_c``). A question's
projected option logits are the base head's option rows at the mapped state,
``z = softcap(E (W^T u + c) + e)``; the prediction is the chat model's answer ``b = argmax g`` and its
confidence ``softmax(z)_b``, as the paper scores the post-trained model's response. Derivation,
assumptions and what is reconstructed: ``docs/METHODS.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._math import log_softmax
from ..errors import FitError, InputError, MismatchError, NotFittedError
from ._base import _is_real
from ._validate import check_logits

__all__ = ["BaseCalProj", "ProjInputs", "fit_linear_map"]


def _hidden(x: object, name: str) -> np.ndarray:
    """``x`` as a finite float64 (n, H) array, or :class:`InputError`."""
    arr = np.asarray(x)
    if arr.dtype.kind not in "iuf" or arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(f"{name} must be a non-empty 2-D array of hidden states (n_questions, width), "
                         f"got shape {arr.shape} and dtype {arr.dtype}")
    arr = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{name} holds non-finite values (first row {int(np.argmax(~np.isfinite(arr).all(1)))}); "
                         "extract the hidden states again (a float16 overflow?)")
    return arr


def fit_linear_map(x: np.ndarray, y: np.ndarray, alpha: float = 0.0) -> tuple[np.ndarray, np.ndarray, int]:
    """Least squares with an intercept: ``(W (p, q), c (q,), rank)`` minimising
    ``||x W + c - y||_F^2 + alpha ||W||_F^2`` for ``x`` (n, p), ``y`` (n, q).

    The intercept is not penalised: the columns are centred, ``W`` solves the centred problem
    (``numpy.linalg.lstsq``, an SVD; with ``alpha > 0`` on the rows ``[x_c; sqrt(alpha) I]``, ``[y_c; 0]``),
    and ``c = mean(y) - mean(x) W``. For ``alpha = 0`` and a rank-deficient ``x_c`` (``n <= p``) it is the
    minimum-norm solution, which is also the limit of the ridge solution as ``alpha -> 0``.
    """
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc, yc = x - mx, y - my
    if alpha > 0:
        xc = np.vstack([xc, np.sqrt(alpha) * np.eye(x.shape[1])])
        yc = np.vstack([yc, np.zeros((x.shape[1], y.shape[1]))])
    w, _, rank, _ = np.linalg.lstsq(xc, yc, rcond=None)
    return w, my - mx @ w, int(rank)


@dataclass
class ProjInputs:
    """What ``proj`` reads for some questions (a run passes it as the method's ``chat`` input).

    Attributes
    ----------
    chat_hidden : ndarray (n, H_c)
        The chat model's answer-position hidden states.
    base_hidden : ndarray (n, H_b)
        The base model's, same prompts (needed to fit; not read when applying).
    chat_logits : ndarray (n, k)
        The chat model's option logits (its answer; -inf marks a missing option).
    head : OptionHead
        The base model's output head over the option tokens (:meth:`TransformersBackend.option_head <refcal.backends.transformers.TransformersBackend.option_head>`).
    """

    chat_hidden: np.ndarray
    base_hidden: np.ndarray
    chat_logits: np.ndarray
    head: Any

    def __post_init__(self) -> None:
        n = {len(self.chat_hidden), len(self.base_hidden), len(self.chat_logits)}
        if len(n) != 1:
            raise MismatchError(f"proj inputs cover different numbers of questions: {sorted(n)}")

    def head_error(self, base_logits: np.ndarray) -> float:
        """Largest difference between the base head read at the base model's own hidden states and the
        base model's letter scores (differences within a row, so any constant offset cancels): near 0
        when the hidden states are taken at the answer position."""
        z = self.head.logits(self.base_hidden)[:, : base_logits.shape[1]]
        present = np.isfinite(base_logits)
        d = np.where(present, z - base_logits, 0.0)
        d = d - (d.sum(axis=1, keepdims=True) / present.sum(axis=1, keepdims=True))
        return float(np.abs(np.where(present, d, 0.0)).max())


class BaseCalProj:
    """BaseCal-Proj: a linear map from chat to base answer-position hidden states (see the module docstring).

    Parameters
    ----------
    alpha : float, default 0.0
        Ridge penalty on ``W`` (the intercept is never penalised). ``0``: plain least squares, the
        paper's MSE objective, minimum-norm when the calibration questions are fewer than the chat
        model's width (see ``docs/METHODS.md`` for why this is the default).

    Attributes
    ----------
    coef_ : ndarray (H_c, H_b)
    intercept_ : ndarray (H_b,)
    rank_ : int
        Rank of the centred chat hidden states (the map is determined on a subspace of this dimension).
    r2_ : float
        Share of the base states' variance (about their mean) the map explains on the calibration
        questions (1.0 when the system is underdetermined: the map interpolates them).
    n_ : int
        Calibration questions.
    n_iter_, converged_ : int, bool
        For the run's fit record (a closed-form solve: 1, True).
    """

    method = "proj"

    def __init__(self, *, alpha: float = 0.0):
        self.alpha = alpha

    def __repr__(self) -> str:
        return f"BaseCalProj(alpha={self.alpha!r})"

    def _check_params(self) -> None:
        if not (_is_real(self.alpha) and np.isfinite(self.alpha) and self.alpha >= 0):
            raise InputError(f"alpha must be a finite number >= 0, got {self.alpha!r}")

    def fit(self, chat_hidden: object, base_hidden: object) -> BaseCalProj:
        """Fit the map on the calibration questions' hidden states (no labels, no logits).

        Raises
        ------
        InputError, MismatchError
            Malformed or inconsistent arrays.
        FitError
            Fewer than two questions, or a non-finite solution.
        """
        self._check_params()
        u, v = _hidden(chat_hidden, "chat_hidden"), _hidden(base_hidden, "base_hidden")
        if u.shape[0] != v.shape[0]:
            raise MismatchError(f"chat_hidden has {u.shape[0]} questions but base_hidden has {v.shape[0]}")
        if u.shape[0] < 2:
            raise FitError("proj needs at least 2 calibration questions to fit a map with an intercept")
        w, c, rank = fit_linear_map(u, v, float(self.alpha))
        if not (np.isfinite(w).all() and np.isfinite(c).all()):
            raise FitError("the least-squares map is not finite; set alpha > 0 to regularise it")
        self.coef_, self.intercept_, self.rank_ = w, c, rank
        resid = u @ w + c - v
        total = float(((v - v.mean(axis=0)) ** 2).sum())
        self.r2_ = 1.0 - float((resid ** 2).sum()) / total if total > 0 else 1.0
        self.n_ = int(u.shape[0])
        self.n_iter_, self.converged_ = 1, True
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "coef_"):
            raise NotFittedError("this BaseCalProj is not fitted yet; call fit(chat_hidden, base_hidden) first")

    def transform(self, chat_hidden: object) -> np.ndarray:
        """Mapped states ``u W + c`` (n, H_b) in the base model's space."""
        self._check_fitted()
        u = _hidden(chat_hidden, "chat_hidden")
        if u.shape[1] != self.coef_.shape[0]:
            raise InputError(f"chat_hidden has width {u.shape[1]} but the map was fitted on width "
                             f"{self.coef_.shape[0]}; use hidden states of the same chat model")
        return u @ self.coef_ + self.intercept_

    def predict_log_proba(self, chat_hidden: object, head: Any, chat_logits: object) -> np.ndarray:
        """Projected option log-probabilities (n, k): the base head's option rows at the mapped states,
        log-softmax over the options each question has (those finite in ``chat_logits``)."""
        g = check_logits(chat_logits, "chat_logits")
        z = head.logits(self.transform(chat_hidden))
        if z.shape[1] < g.shape[1] or z.shape[0] != g.shape[0]:
            raise MismatchError(f"the head scores {z.shape[1]} options for {z.shape[0]} questions but the chat "
                                f"logits have {g.shape[1]} options for {g.shape[0]}")
        z = np.where(np.isfinite(g), z[:, : g.shape[1]], -np.inf)
        return log_softmax(z)

    def predict_top_label(self, chat_hidden: object, head: Any, chat_logits: object) -> tuple[np.ndarray, np.ndarray]:
        """``(b, confidence)``: the chat model's answer ``argmax g`` (n,) and its projected probability (n,)."""
        g = check_logits(chat_logits, "chat_logits")
        b = np.argmax(g, axis=1)
        lp = self.predict_log_proba(chat_hidden, head, g)
        return b.astype(np.int64), np.exp(lp[np.arange(b.size), b])
