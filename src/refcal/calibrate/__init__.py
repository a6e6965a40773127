"""Calibrators: fit a logit map on option logits, then map logits to calibrated probabilities.

* :class:`DACA` — label-free: match the base model's distribution on questions where both models agree.
* :class:`NaiveAlignment` — label-free baseline: match it on every question.
* :class:`TemperatureScaling`, :class:`VectorScaling`, :class:`MatrixScaling` — labelled oracles (NLL).
* :class:`AgreementDACA` — label-free: separate temperatures for agreeing and disagreeing questions.
* :class:`MutualCalibration` — label-free: projection onto mutual calibration with the reference model.
* :class:`BaseCalProj` — label-free: a least-squares map of chat hidden states into the base model's head.

All share one base, :class:`Calibrator` (:mod:`.base`): scikit-learn estimator style (``fit`` returns
``self``, fitted values end in ``_``), ``predict_log_proba(chat, base=None)``, ``fitted_params()``, and
plain-JSON files (:meth:`Calibrator.save`, :func:`load_calibrator` through the one table
:data:`CALIBRATORS`). Logits are float64 (n, k) with -inf marking a missing option.
The methods a run compares (calibrators and fit-free methods) are the registry :mod:`.methods`.
"""

from .agreement import AgreementDACA
from .alignment import DACA, NaiveAlignment, agreement_mask
from .base import CALIBRATORS, CalibrationWarning, Calibrator
from .daca_prior import DACAWithLabels
from .diagnostics import agreement_diagnostics
from .fewlabel import HistogramBinning, IsotonicCalibration, PlattScaling
from .io import from_dict, load_calibrator
from .labelled import MatrixScaling, TemperatureScaling, VectorScaling
from .mutual import MutualCalibration
from .proj import BaseCalProj

__all__ = [
    "DACA",
    "AgreementDACA",
    "BaseCalProj",
    "MutualCalibration",
    "CALIBRATORS",
    "Calibrator",
    "DACAWithLabels",
    "HistogramBinning",
    "IsotonicCalibration",
    "PlattScaling",
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
