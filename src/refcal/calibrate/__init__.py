"""Calibrators: fit a logit map on option logits, then map logits to calibrated probabilities.

* :class:`DACA` — label-free: match the base model's distribution on questions where both models agree.
* :class:`NaiveAlignment` — label-free baseline: match it on every question.
* :class:`TemperatureScaling`, :class:`VectorScaling`, :class:`MatrixScaling` — labelled oracles (NLL).
* :class:`AgreementDACA` — label-free: separate temperatures for agreeing and disagreeing questions.
* :class:`MutualCalibration` — label-free: projection onto mutual calibration with the reference model.
* :class:`BaseCalProj` — label-free: a least-squares map of chat hidden states into the base model's head.
* :class:`PlattScaling`, :class:`IsotonicCalibration`, :class:`HistogramBinning` — few-label top-label maps.
* :class:`DACAWithLabels` — DACA + k labels: DACA's temperature as the prior of a labelled temperature fit.

All follow the scikit-learn estimator style (``fit`` returns ``self``, fitted values end in ``_``),
save to plain JSON (:meth:`save`, :func:`load_calibrator`) and take float64 (n, k) logits with -inf
marking a missing option.
"""

from ._base import CalibrationWarning
from .agreement import AgreementDACA
from .alignment import DACA, NaiveAlignment, agreement_mask
from .daca_prior import DACAWithLabels
from .diagnostics import agreement_diagnostics
from .fewlabel import HistogramBinning, IsotonicCalibration, PlattScaling
from .io import METHODS, from_dict, load_calibrator
from .labelled import MatrixScaling, TemperatureScaling, VectorScaling
from .mutual import MutualCalibration
from .proj import BaseCalProj

__all__ = [
    "DACA",
    "AgreementDACA",
    "BaseCalProj",
    "DACAWithLabels",
    "HistogramBinning",
    "IsotonicCalibration",
    "PlattScaling",
    "MutualCalibration",
    "METHODS",
    "CalibrationWarning",
    "MatrixScaling",
    "NaiveAlignment",
    "TemperatureScaling",
    "VectorScaling",
    "agreement_diagnostics",
    "agreement_mask",
    "from_dict",
    "load_calibrator",
]
