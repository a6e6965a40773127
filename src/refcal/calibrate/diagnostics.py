"""Agreement diagnostics: how much of the data DACA uses, and how each model behaves on each part."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._math import softmax
from ._validate import check_optional_labels, check_pair
from .alignment import agreement_mask


def agreement_diagnostics(base_logits: object, chat_logits: object, labels: object = None) -> dict[str, Any]:
    """Agreement rate and per-subset accuracy / confidence of both models.

    Parameters
    ----------
    base_logits, chat_logits : array-like of float, shape (n, k)
        Option logits of the base and chat model (-inf marks a missing option, in both).
    labels : array-like of int, shape (n,), optional
        Correct option, -1 when unknown. Accuracies are reported only when every label is known.

    Returns
    -------
    dict
        ``{"n", "n_agree", "agreement_rate", "agree": {...}, "disagree": {...}}`` where each subset holds
        ``n``, ``chat_accuracy``, ``chat_confidence``, ``base_accuracy``, ``base_confidence`` (accuracy =
        mean of ``argmax == label``; confidence = mean max softmax probability). A statistic of an empty
        subset is ``None``; the accuracy keys are absent without (complete) labels. This is the
        ``diagnostics`` block of ``metrics.json``.
    """
    f, g = check_pair(base_logits, chat_logits)
    n, k = f.shape
    y = None if labels is None else check_optional_labels(labels, n, k)
    with_acc = y is not None and bool(np.all(y >= 0))
    agree = agreement_mask(f, g)
    models = {"chat": g, "base": f}
    pred = {m: np.argmax(x, axis=1) for m, x in models.items()}
    conf = {m: softmax(x).max(axis=1) for m, x in models.items()}

    def subset(sel: np.ndarray) -> dict[str, Any]:
        m = int(sel.sum())
        out: dict[str, Any] = {"n": m}
        for name in models:
            if with_acc:
                out[f"{name}_accuracy"] = float(np.mean(pred[name][sel] == y[sel])) if m else None
            out[f"{name}_confidence"] = float(np.mean(conf[name][sel])) if m else None
        return out

    n_agree = int(agree.sum())
    return {
        "n": n,
        "n_agree": n_agree,
        "agreement_rate": n_agree / n,
        "agree": subset(agree),
        "disagree": subset(~agree),
    }
