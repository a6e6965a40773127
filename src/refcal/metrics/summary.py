"""Every scalar metric by name (:data:`METRICS`) and all of them at once (:func:`evaluate`)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .core import TopLabel, _check, accuracy, aece, aurc, auroc, brier, brier_multiclass, ece, mce, nll
from .extra import brier_decomposition, classwise_ece, debiased_ece
from .smooth import smooth_ece

__all__ = ["METRICS", "BINNED", "DISTRIBUTION_ONLY", "evaluate"]


def _brier_term(term: str) -> Callable[..., float]:
    def fn(probs: np.ndarray, labels: np.ndarray, *, n_bins: int = 10) -> float:
        return getattr(brier_decomposition(probs, labels, n_bins=n_bins), term)

    fn.__name__ = f"brier_{term}"
    fn.__doc__ = f"The {term} term of :func:`refcal.metrics.brier_decomposition` (top-label Brier score)."
    return fn


#: name -> ``metric(probs, labels[, n_bins=...]) -> float``; the keys of :func:`evaluate`, in its order
METRICS: dict[str, Callable[..., float]] = {
    "ece": ece, "mce": mce, "aece": aece, "brier": brier, "brier_multiclass": brier_multiclass,
    "nll": nll, "accuracy": accuracy, "auroc": auroc, "aurc": aurc,
    "smooth_ece": smooth_ece, "classwise_ece": classwise_ece, "debiased_ece": debiased_ece,
    "brier_reliability": _brier_term("reliability"), "brier_resolution": _brier_term("resolution"),
    "brier_uncertainty": _brier_term("uncertainty"),
}
#: the metrics that take ``n_bins``
BINNED = frozenset({"ece", "mce", "aece", "classwise_ece", "debiased_ece", "brier_reliability", "brier_resolution",
                    "brier_uncertainty"})
#: the metrics that need a probability for every option: NaN for a :class:`TopLabel`
DISTRIBUTION_ONLY = frozenset({"nll", "brier_multiclass", "classwise_ece"})


def evaluate(probs: np.ndarray | TopLabel, labels: np.ndarray, *, n_bins: int = 10,
             warn: bool = True) -> dict[str, float]:
    """All scalar metrics at once, keyed as :data:`METRICS`: ``ece, mce, aece, brier, brier_multiclass, nll,
    accuracy, auroc, aurc, smooth_ece, classwise_ece, debiased_ece, brier_reliability, brier_resolution,
    brier_uncertainty``.

    Values are fractions (not percent). ``auroc`` may be NaN (see :func:`auroc`; ``warn`` is passed to it);
    for a :class:`TopLabel` the metrics of :data:`DISTRIBUTION_ONLY` are NaN (they need a distribution).
    """
    p, y = _check(probs, labels)
    out: dict[str, float] = {}
    decomposition = brier_decomposition(p, y, n_bins=n_bins)  # once, for its three terms
    for name, fn in METRICS.items():
        if isinstance(p, TopLabel) and name in DISTRIBUTION_ONLY:
            out[name] = float("nan")
        elif name.startswith("brier_") and name != "brier_multiclass":
            out[name] = getattr(decomposition, name.removeprefix("brier_"))
        elif fn is auroc:
            out[name] = auroc(p, y, warn=warn)
        else:
            out[name] = fn(p, y, n_bins=n_bins) if name in BINNED else fn(p, y)
    return out
