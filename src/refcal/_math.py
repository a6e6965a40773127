"""Numerically safe log-softmax on (n, k) arrays where -inf marks a missing option."""

from __future__ import annotations

import numpy as np


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
