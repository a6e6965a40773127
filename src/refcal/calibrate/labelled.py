"""Labelled (oracle) calibrators: temperature, vector and matrix scaling fitted on the mean NLL."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ._scaling import ScalingCalibrator
from ._validate import check_labels, check_logits, check_sample_weight


class _LabelledCalibrator(ScalingCalibrator):
    _scaling = "temperature"

    def fit(self, logits: object, labels: object, *, sample_weight: object = None) -> _LabelledCalibrator:
        """Minimise the weighted mean negative log-likelihood ``-sum_x s(x) log q_y(x) / sum_x s(x)``.

        This is the soft-target objective of :class:`DACA` with one-hot targets (their KL is the NLL).

        Parameters
        ----------
        logits : array-like of float, shape (n, k)
            Option logits; -inf marks a missing option.
        labels : array-like of int, shape (n,)
            Index of the correct option; every label must be known (no -1) and point at a present option.
        sample_weight : array-like of float, shape (n,), optional
            Non-negative per-question weights.

        Returns
        -------
        self
        """
        self._check_params()
        g = check_logits(logits, "logits")
        y = check_labels(labels, g)
        w = check_sample_weight(sample_weight, g.shape[0])
        self.n_ = int(g.shape[0])
        logp = np.full(g.shape, -np.inf)
        logp[np.arange(self.n_), y] = 0.0
        self._fit_core(logp, g, w, float(w.sum()))
        return self

    def fit_roles(self, chat: object, base: object = None, labels: object = None) -> _LabelledCalibrator:
        """A labelled oracle reads the chat model's logits and the labels (never the base model's)."""
        if labels is None:
            raise InputError("a labelled oracle needs the labels of the calibration questions")
        return self.fit(chat, labels)


class TemperatureScaling(_LabelledCalibrator):
    """Labelled temperature scaling: ``softmax(g / tau)`` with ``tau`` minimising the NLL.

    Same solver, bounds and attributes as ``DACA(scaling="temperature")``; a chat model that is right
    on every calibration question drives ``tau`` to the lower bound (``at_bound_``).
    """

    method = "ts"
    description = "labelled temperature scaling (oracle)"

    def __init__(self, *, max_iter: int = 1000, tol: float = 1e-10,
                 temperature_bounds: tuple[float, float] = (1e-3, 1e4), on_bound: str = "warn"):
        super().__init__("temperature", max_iter=max_iter, tol=tol, temperature_bounds=temperature_bounds,
                         on_bound=on_bound)


class _AffineLabelled(_LabelledCalibrator):
    def __init__(self, *, l2: float = 0.0, max_iter: int = 1000, tol: float = 1e-10):
        super().__init__(self._scaling, l2=l2, max_iter=max_iter, tol=tol)


class VectorScaling(_AffineLabelled):
    """Labelled vector scaling ``softmax(w * g + c)`` (L-BFGS-B from the identity; ``l2`` pulls towards it)."""

    method = "vs"
    description = "labelled vector scaling (oracle)"
    _scaling = "vector"


class MatrixScaling(_AffineLabelled):
    """Labelled matrix scaling ``softmax(W g + c)`` (L-BFGS-B from the identity; ``l2`` pulls towards it)."""

    method = "ms"
    description = "labelled matrix scaling (oracle)"
    _scaling = "matrix"
