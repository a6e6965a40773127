"""Read a calibrator saved by ``save`` (plain JSON; calibrators are never pickled)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from ..errors import CalibratorFileError
from ._base import FORMAT, _Calibrator
from .alignment import DACA, NaiveAlignment
from .labelled import MatrixScaling, TemperatureScaling, VectorScaling

#: method name saved in the file -> class
METHODS: dict[str, type[_Calibrator]] = {
    c.method: c for c in (DACA, NaiveAlignment, TemperatureScaling, VectorScaling, MatrixScaling)
}


def load_calibrator(path: str | os.PathLike) -> _Calibrator:
    """Rebuild a fitted calibrator from the JSON written by its ``save``.

    Raises
    ------
    CalibratorFileError
        The file is missing, unreadable, not JSON, of an unknown method, or lacks a required key.
    """
    src = os.fspath(path)
    try:
        with open(src, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise CalibratorFileError(f"{src}: no such file; pass a calibrator saved by `basecal fit`") from None
    except IsADirectoryError:
        raise CalibratorFileError(f"{src}: is a directory; pass a calibrator JSON file") from None
    except OSError as exc:
        raise CalibratorFileError(f"{src}: cannot read it ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibratorFileError(f"{src}: not valid JSON ({exc}); re-create it with `basecal fit`") from None
    return from_dict(data, source=src)


def from_dict(data: Any, *, source: str = "calibrator") -> _Calibrator:
    """Inverse of ``to_dict``; see :func:`load_calibrator`."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibratorFileError(f"{source}: not a basecal calibrator file (no \"format\": \"{FORMAT}\")")
    method = data.get("method")
    if method not in METHODS:
        raise CalibratorFileError(
            f"{source}: unknown calibration method {method!r}; expected one of {', '.join(METHODS)}"
        )
    try:
        hp = dict(data["hyperparameters"])
        if "temperature_bounds" in hp:
            hp["temperature_bounds"] = tuple(hp["temperature_bounds"])
        obj = METHODS[method](**hp)
        obj._check_params()
        params, solver = data["parameters"], data["solver"]
        obj.n_options_ = int(data["n_options"])
        obj.n_ = int(data["n"])
        if "agreement" in data:
            obj.n_agree_ = int(data["agreement"]["n_agree"])
            obj.agreement_rate_ = float(data["agreement"]["agreement_rate"])
        if obj.scaling == "temperature":
            obj.temperature_ = float(params["temperature"])
            ok = math.isfinite(obj.temperature_) and obj.temperature_ > 0
        else:
            k = obj.n_options_
            obj.coef_ = np.asarray(params["coef"], dtype=np.float64)
            obj.intercept_ = np.asarray(params["intercept"], dtype=np.float64)
            shape = (k,) if obj.scaling == "vector" else (k, k)
            ok = obj.coef_.shape == shape and obj.intercept_.shape == (k,)
            ok = ok and bool(np.all(np.isfinite(obj.coef_)) and np.all(np.isfinite(obj.intercept_)))
        obj.n_iter_ = int(solver["n_iter"])
        obj.converged_ = bool(solver["converged"])
        obj.objective_ = float(solver["objective"])
        obj.solver_message_ = str(solver["message"])
        obj.at_bound_ = solver.get("at_bound")
    except KeyError as exc:
        raise CalibratorFileError(f"{source}: missing key {exc.args[0]!r}; re-create it with `basecal fit`") from None
    except (TypeError, ValueError) as exc:
        raise CalibratorFileError(f"{source}: malformed value ({exc}); re-create it with `basecal fit`") from None
    if not ok:
        raise CalibratorFileError(f"{source}: the fitted parameters are malformed; re-create it with `basecal fit`")
    return obj
