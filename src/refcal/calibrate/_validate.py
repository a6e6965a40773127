"""Input checks run once at the public boundary of the calibrators.

Every check raises a typed :mod:`refcal.errors` exception with one actionable sentence; the
solvers behind the boundary assume what is checked here (finite or -inf values, k >= 2, no row
without options, identical missing-option patterns).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError, MismatchError
from ..scores import LOGIT_RULE, bad_logits, describe_logit


def check_logits(x: object, name: str = "logits") -> np.ndarray:
    """Return ``x`` as a float64 (n, k) array, or raise :class:`InputError`.

    -inf marks a missing option; NaN and +inf are rejected, as are rows without any option.
    """
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise InputError(
            f"{name} must be a 2-D numeric array (n_questions, n_options); pad ragged rows with -inf ({exc})"
        ) from None
    if arr.dtype.kind not in "iuf":
        raise InputError(f"{name} must hold real numbers, got dtype {arr.dtype}; pad missing options with -inf")
    if arr.ndim != 2:
        raise InputError(
            f"{name} must be 2-D with shape (n_questions, n_options), got shape {arr.shape}; "
            "reshape a single question with x[None, :]"
        )
    n, k = arr.shape
    if n == 0:
        raise InputError(f"{name} has no rows; pass at least one question")
    if k < 2:
        raise InputError(f"{name} has {k} option(s) per question; calibration needs at least 2")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    # the same rule as score files (refcal.scores.bad_logits): |x| > 1e100 would overflow differences of
    # logits to inf and then NaN inside the solvers
    bad = bad_logits(arr)
    if bad.any():
        row, col = (int(v) for v in np.argwhere(bad)[0])
        raise InputError(
            f"{name} holds {int(bad.sum())} value(s) that are not allowed (first in row {row}, option {col}: "
            f"{describe_logit(float(arr[row, col]))}); {LOGIT_RULE}"
        )
    empty = np.all(arr == -np.inf, axis=1)
    if empty.any():
        row = int(np.argmax(empty))
        raise InputError(
            f"{name} has {int(empty.sum())} row(s) whose options are all missing (-inf), first row {row}; "
            "drop those questions"
        )
    single = np.isfinite(arr).sum(axis=1) < 2
    if single.any():
        row = int(np.argmax(single))
        raise InputError(
            f"{name} has {int(single.sum())} row(s) with fewer than 2 options present (first row {row}); "
            "a question needs at least 2 options: drop those questions"
        )
    return arr


def check_pair(base: object, chat: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate base and chat logits of the same questions, in the same order and option layout."""
    f = check_logits(base, "base_logits")
    g = check_logits(chat, "chat_logits")
    if f.shape != g.shape:
        raise MismatchError(
            f"base_logits has shape {f.shape} but chat_logits has shape {g.shape}; "
            "score both models on the same questions and options (see refcal.scores.join_scores)"
        )
    diff = (f == -np.inf) != (g == -np.inf)
    if diff.any():
        row = int(np.argmax(diff.any(axis=1)))
        raise MismatchError(
            f"base and chat logits disagree on which options are missing (-inf) in {int(diff.any(axis=1).sum())}"
            f" row(s), first row {row}; both models must score the same options"
        )
    return f, g


def check_labels(labels: object, logits: np.ndarray) -> np.ndarray:
    """Labels for a labelled (oracle) fit: int (n,), every one known and pointing at a present option."""
    y = _as_int_vector(labels, logits.shape[0], "labels")
    unknown = y == -1
    if unknown.any():
        raise InputError(
            f"{int(unknown.sum())} of {y.size} labels are unknown (-1); labelled calibrators need every label: "
            "drop those questions or use DACA, which needs none"
        )
    k = logits.shape[1]
    out = (y < 0) | (y >= k)
    if out.any():
        raise InputError(
            f"labels must lie in [0, {k - 1}] (-1 = unknown), got {int(y[out][0])} in row {int(np.argmax(out))}"
        )
    missing = logits[np.arange(y.size), y] == -np.inf
    if missing.any():
        row = int(np.argmax(missing))
        raise InputError(f"label {int(y[row])} of row {row} points at a missing (-inf) option; fix the labels")
    return y


def check_optional_labels(labels: object, n: int, k: int) -> np.ndarray:
    """Labels that may be unknown (-1); values must lie in [-1, k-1]."""
    y = _as_int_vector(labels, n, "labels")
    bad = (y < -1) | (y >= k)
    if bad.any():
        raise InputError(
            f"labels must lie in [0, {k - 1}] or be -1 (unknown), got {int(y[bad][0])} in row {int(np.argmax(bad))}"
        )
    return y


def check_sample_weight(sample_weight: object, n: int) -> np.ndarray:
    """Non-negative finite weights (n,) with a positive sum; ``None`` means all ones."""
    if sample_weight is None:
        return np.ones(n)
    try:
        w = np.asarray(sample_weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("sample_weight must be a 1-D array of non-negative numbers") from None
    if w.shape != (n,):
        raise InputError(f"sample_weight must have shape ({n},) (one weight per question), got {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InputError("sample_weight must hold finite, non-negative numbers")
    if not w.sum() > 0:
        raise InputError("sample_weight sums to 0; give at least one question a positive weight")
    return w


def _as_int_vector(values: object, n: int, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise InputError(f"{name} must have shape ({n},) (one per question), got {arr.shape}")
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise InputError(f"{name} must be integers (option index, -1 = unknown), got dtype {arr.dtype}")
