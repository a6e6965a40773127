"""The three logit maps (temperature, vector, matrix) and what they mean on -inf-padded rows.

For a question with option logits ``g`` (k,), where ``g_j = -inf`` marks a missing option:

* temperature: ``z = g / tau``;
* vector: ``z_j = w_j * g_j + c_j``;
* matrix: ``z = W g~ + c`` where ``g~`` is ``g`` with missing entries replaced by 0.

In every case ``z_j`` is then set back to -inf wherever ``g_j`` is -inf, so a missing option stays
missing (probability exactly 0) and never leaks into the present ones except through ``W g~``,
where it contributes nothing.
"""

from __future__ import annotations

import numpy as np

SCALINGS = ("temperature", "vector", "matrix")


def apply_temperature(g: np.ndarray, temperature: float) -> np.ndarray:
    """``g / tau`` for (n, k) logits; -inf stays -inf because ``tau > 0``."""
    return g / temperature


def apply_affine(g: np.ndarray, coef: np.ndarray, intercept: np.ndarray) -> np.ndarray:
    """Vector (``coef`` shape (k,)) or matrix (``coef`` shape (k, k)) scaling of (n, k) logits."""
    missing = g == -np.inf
    gs = np.where(missing, 0.0, g)
    z = gs * coef if coef.ndim == 1 else np.einsum("ik,jk->ij", gs, coef)  # no BLAS: see _solvers._wsum
    z = z + intercept
    z[missing] = -np.inf
    return z


def identity_params(scaling: str, k: int) -> np.ndarray:
    """Flat parameter vector of the identity map: ``[w, c]`` or ``[W.ravel(), c]``."""
    w = np.ones(k) if scaling == "vector" else np.eye(k).ravel()
    return np.concatenate([w, np.zeros(k)])


def unpack(scaling: str, theta: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a flat parameter vector into ``(coef, intercept)``."""
    if scaling == "vector":
        return theta[:k], theta[k:]
    return theta[: k * k].reshape(k, k), theta[k * k :]
