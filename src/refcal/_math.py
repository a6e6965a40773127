"""Numerically safe log-softmax on (n, k) arrays where -inf marks a missing option; an output head's logits."""

from __future__ import annotations

import numpy as np

from .errors import InputError


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """``x - logsumexp(x)`` along ``axis``; -inf entries stay -inf (probability 0).

    Rows must hold at least one finite value (validated at the public boundary).
    """
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=axis, keepdims=True)
    # x - m overflows to -inf only for logits ~1e308 apart: probability 0, which is the right answer
    with np.errstate(over="ignore", divide="ignore"):
        z = x - m
        lse = np.log(np.sum(np.exp(z), axis=axis, keepdims=True))
    return z - lse


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Row-wise softmax; -inf entries get probability exactly 0."""
    return np.exp(log_softmax(x, axis=axis))


def head_logits(hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, softcap: float | None) -> np.ndarray:
    """Logits ``softcap(h @ weight.T + bias)`` (n, K) of final hidden states ``hidden`` (n, H), in float64.

    ``softcap(z) = tanh(z / c) * c`` (Gemma's final-logit soft-capping) when ``softcap`` is set. The one
    implementation behind a live backend's option head and the head a fitted ``proj`` stores.
    """
    h = np.asarray(hidden, dtype=np.float64)
    if h.ndim != 2 or h.shape[1] != weight.shape[1]:
        raise InputError(f"hidden states of shape {h.shape} do not fit a head of width {weight.shape[1]}")
    z = h @ weight.T
    if bias is not None:
        z = z + bias
    if softcap:
        z = np.tanh(z / softcap) * softcap
    return z
