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

Its inputs go through the common calibrator signature: ``fit(chat_hidden, base_hidden, head=...)`` and
``predict_log_proba(chat, base=None)`` where ``chat`` is a :class:`ProjInputs` (the chat model's hidden
states and option logits of the questions; ``base`` is not read). A calibrator fitted with the base
model's ``head`` keeps its option rows and saves them with the map, so a loaded one needs no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .._math import head_logits, log_softmax
from ..errors import FitError, InputError, MismatchError
from ._validate import check_logits
from .base import Calibrator, Reader, is_real

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
    base_hidden: np.ndarray | None
    chat_logits: np.ndarray
    head: Any = None

    def __post_init__(self) -> None:
        n = {len(self.chat_hidden), len(self.chat_logits)} | ({len(self.base_hidden)} if self.base_hidden is not None
                                                              else set())
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


@dataclass
class StoredHead:
    """The base model's output head over the option tokens, as saved with a fitted ``proj``: the same
    ``logits`` as :class:`refcal.backends.heads.OptionHead`, one :func:`refcal._math.head_logits` (``z = softcap(h @ weight.T + bias)``)."""

    weight: np.ndarray
    bias: np.ndarray | None
    softcap: float | None

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        return head_logits(hidden, self.weight, self.bias, self.softcap)


class BaseCalProj(Calibrator):
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
    head_ : StoredHead or None
        The base model's option rows, when ``fit`` was given ``head`` (needed to save, and to apply without one).
    n_, n_options_ : int
        Calibration questions; option rows of the head (0 without one).
    n_iter_, converged_, objective_ : int, bool, float
        A closed-form solve: 1, True, the mean squared residual.
    """

    method = "proj"
    description = ("BaseCal-Proj: the chat model's answer-position hidden state mapped linearly to the base "
                   "model's, read by the base model's output head over the options")
    scaling = "hidden-state map"
    solver_name = "lstsq"

    def __init__(self, *, alpha: float = 0.0):
        self.alpha = alpha

    def _check_params(self) -> None:
        if not (is_real(self.alpha) and np.isfinite(self.alpha) and self.alpha >= 0):
            raise InputError(f"alpha must be a finite number >= 0, got {self.alpha!r}")

    def fit(self, chat_hidden: object, base_hidden: object, *, head: Any = None) -> BaseCalProj:
        """Fit the map on the calibration questions' hidden states (no labels, no logits); ``head`` (the base
        model's option rows, any object with ``weight``, ``bias``, ``softcap``) is kept for saving.

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
        self.head_ = None if head is None else StoredHead(
            np.asarray(head.weight, dtype=np.float64), None if head.bias is None else np.asarray(head.bias, np.float64),
            None if not head.softcap else float(head.softcap))
        self.n_options_ = 0 if head is None else int(self.head_.weight.shape[0])
        self.n_iter_, self.converged_, self.objective_ = 1, True, float((resid ** 2).sum(axis=1).mean())
        return self

    def fit_roles(self, chat: Any, base: Any = None, labels: Any = None) -> BaseCalProj:
        """Fit on a run's :class:`ProjInputs` (both models' hidden states and the base head); label-free."""
        if not isinstance(chat, ProjInputs) or chat.base_hidden is None:
            raise InputError("proj is fitted on ProjInputs with both models' hidden states")
        return self.fit(chat.chat_hidden, chat.base_hidden, head=chat.head)

    def transform(self, chat_hidden: object) -> np.ndarray:
        """Mapped states ``u W + c`` (n, H_b) in the base model's space."""
        self._check_fitted()
        u = _hidden(chat_hidden, "chat_hidden")
        if u.shape[1] != self.coef_.shape[0]:
            raise InputError(f"chat_hidden has width {u.shape[1]} but the map was fitted on width "
                             f"{self.coef_.shape[0]}; use hidden states of the same chat model")
        return u @ self.coef_ + self.intercept_

    def predict_log_proba(self, chat: Any, base: Any = None) -> np.ndarray:
        """Projected option log-probabilities (n, k) of ``chat``, a :class:`ProjInputs`: the base head's option
        rows at the mapped states, log-softmax over the options each question has (those finite in
        ``chat.chat_logits``). The head is ``chat.head`` when given, else the one saved with the fit."""
        self._check_fitted()
        if not isinstance(chat, ProjInputs):
            raise InputError("proj reads hidden states: pass chat=ProjInputs(chat_hidden, None, chat_logits)")
        head = chat.head if chat.head is not None else self.head_
        if head is None:
            raise InputError("this proj calibrator was fitted without the base model's head: pass ProjInputs(head=...)")
        g = check_logits(chat.chat_logits, "chat_logits")
        z = head.logits(self.transform(chat.chat_hidden))
        if z.shape[1] < g.shape[1] or z.shape[0] != g.shape[0]:
            raise MismatchError(f"the head scores {z.shape[1]} options for {z.shape[0]} questions but the chat "
                                f"logits have {g.shape[1]} options for {g.shape[0]}")
        z = np.where(np.isfinite(g), z[:, : g.shape[1]], -np.inf)
        return log_softmax(z)

    def predict_top_label(self, chat: ProjInputs) -> tuple[np.ndarray, np.ndarray]:
        """``(b, confidence)``: the chat model's answer ``argmax g`` (n,) and its projected probability (n,)."""
        g = check_logits(chat.chat_logits, "chat_logits")
        b = np.argmax(g, axis=1)
        lp = self.predict_log_proba(chat)
        return b.astype(np.int64), np.exp(lp[np.arange(b.size), b])

    # ------------------------------------------------------------------ export
    def fitted_params(self) -> dict[str, Any]:
        return {**super().fitted_params(), "rank": self.rank_, "r2": self.r2_}

    def _state(self) -> dict[str, Any]:
        if self.head_ is None:
            raise InputError("this proj calibrator was fitted without the base model's head (fit(..., head=)); "
                             "it cannot be saved without it")
        h = self.head_
        return {"parameters": {"coef": self.coef_.tolist(), "intercept": self.intercept_.tolist(),
                               "head_weight": h.weight.tolist(),
                               "head_bias": None if h.bias is None else h.bias.tolist(),
                               "head_softcap": h.softcap},
                "n_options": self.n_options_, "n": self.n_, "rank": self.rank_, "r2": self.r2_}

    def _read_state(self, r: Reader) -> None:
        data, params = r.data, r.obj("parameters")
        coef = params["coef"]
        if not (isinstance(coef, list) and coef and isinstance(coef[0], list) and coef[0]):
            raise r.bad("parameters.coef must be a non-empty matrix (chat width x base width)")
        hc, hb = len(coef), len(coef[0])
        self.coef_ = r.matrix(coef, (hc, hb), "coef")
        self.intercept_ = r.matrix(params["intercept"], (hb,), "intercept")
        self.n_options_ = k = r.integer(data["n_options"], "n_options", 2)
        weight = r.matrix(params["head_weight"], (k, hb), "head_weight")
        bias = None if params["head_bias"] is None else r.matrix(params["head_bias"], (k,), "head_bias")
        cap = params["head_softcap"]
        self.head_ = StoredHead(weight, bias, None if cap is None else r.real(cap, "head_softcap"))
        self.n_ = r.integer(data["n"], "n", 2)
        self.rank_ = r.integer(data["rank"], "rank", 0)
        self.r2_ = r.real(data["r2"], "r2")
