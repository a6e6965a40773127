"""refcal: label-free confidence calibration of chat LLMs against a reference (base) model.

>>> import refcal
>>> cal = refcal.DACA(scaling="temperature").fit(base_logits, chat_logits)   # doctest: +SKIP
>>> probs = cal.predict_proba(chat_logits)                                   # doctest: +SKIP

The public names are resolved lazily so that ``import refcal`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "DACA": "calibrate", "NaiveAlignment": "calibrate", "TemperatureScaling": "calibrate",
    "VectorScaling": "calibrate", "MatrixScaling": "calibrate", "agreement_diagnostics": "calibrate",
    "load_calibrator": "calibrate", "AgreementDACA": "calibrate", "MutualCalibration": "calibrate",
    "BaseCalProj": "calibrate",
    "ScoreSet": "scores", "load_scores": "scores", "join_scores": "scores",
    "RefcalError": "errors",
    "load_dataset": "data", "list_datasets": "data",
    "make_synthetic": "synthetic",
}
_SUBMODULES = ("metrics", "report", "run", "scoring", "scores", "backends", "data", "calibrate", "tasks",
               "options", "streaming")

__all__ = sorted([*_LAZY, "metrics", "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'refcal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, *_SUBMODULES])
