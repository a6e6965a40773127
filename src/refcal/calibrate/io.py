"""Read a calibrator saved by ``save`` (plain JSON; calibrators are never pickled)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from ..errors import CalibratorFileError, InputError
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
    if os.path.isfile(src) and os.path.getsize(src) == 0:
        raise CalibratorFileError(f"{src}: the file is empty; re-create it with `refcal fit`")
    try:
        with open(src, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise CalibratorFileError(f"{src}: no such file; pass a calibrator saved by `refcal fit`") from None
    except IsADirectoryError:
        raise CalibratorFileError(f"{src}: is a directory; pass a calibrator JSON file") from None
    except OSError as exc:
        raise CalibratorFileError(f"{src}: cannot read it ({exc.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibratorFileError(f"{src}: {_not_json_hint(src, exc)}") from None
    return from_dict(data, source=src)


def _not_json_hint(src: str, exc: Exception) -> str:
    """Why a calibrator file did not parse, recognising the usual mix-up with a score file."""
    try:
        with open(src, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        head = b""
    if head.startswith(b"PAR1") or (b'"logits"' in head and b'"id"' in head):
        return "this is a score file, not a calibrator; pass the JSON written by `refcal fit -o`"
    return f"not valid JSON ({exc}); re-create it with `refcal fit`"


def from_dict(data: Any, *, source: str = "calibrator") -> _Calibrator:
    """Inverse of ``to_dict``; see :func:`load_calibrator`."""
    if isinstance(data, dict) and "logits" in data and "format" not in data:
        raise CalibratorFileError(
            f"{source}: this is a score file, not a calibrator; pass the JSON written by `refcal fit -o`"
        )
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibratorFileError(
            f"{source}: not a refcal calibrator file (no \"format\": \"{FORMAT}\"); pass the JSON written by "
            "`refcal fit -o`"
        )
    method = data.get("method")
    if not isinstance(method, str) or method not in METHODS:
        raise CalibratorFileError(
            f"{source}: unknown calibration method {method!r} (expected one of {', '.join(METHODS)}); "
            "re-create it with `refcal fit`"
        )
    for key, kind in (("hyperparameters", dict), ("parameters", dict), ("solver", dict), ("agreement", dict)):
        if key in data and not isinstance(data[key], kind):
            raise CalibratorFileError(
                f"{source}: {key!r} must be a JSON object, got {type(data[key]).__name__}; "
                "re-create it with `refcal fit`"
            )
    allowed = set(METHODS[method]()._hyperparameters())
    unknown = sorted(set(data.get("hyperparameters") or {}) - allowed)
    if unknown:
        raise CalibratorFileError(
            f"{source}: malformed value (unknown hyperparameter {unknown[0]!r} for method {method!r}; known: "
            f"{', '.join(sorted(allowed))}); re-create it with `refcal fit`"
        )
    try:
        hp = dict(data["hyperparameters"])
        if "temperature_bounds" in hp:
            hp["temperature_bounds"] = tuple(hp["temperature_bounds"])
        obj = METHODS[method](**hp)
        try:
            obj._check_params()
        except InputError as exc:
            raise CalibratorFileError(f"{source}: {exc}; re-create it with `refcal fit`") from None
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
    except CalibratorFileError:
        raise  # already worded (it is a ValueError too, so it must not reach the clause below)
    except KeyError as exc:
        raise CalibratorFileError(f"{source}: missing key {exc.args[0]!r}; re-create it with `refcal fit`") from None
    except (TypeError, ValueError) as exc:
        raise CalibratorFileError(f"{source}: malformed value ({exc}); re-create it with `refcal fit`") from None
    if not ok:
        raise CalibratorFileError(f"{source}: the fitted parameters are malformed; re-create it with `refcal fit`")
    return obj
