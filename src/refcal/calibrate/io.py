"""Read a calibrator saved by ``save`` (plain JSON; calibrators are never pickled)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from ..errors import CalibratorFileError, InputError
from ._base import FORMAT, FORMAT_VERSION, TASKS, _Calibrator, _is_real
from .agreement import METHOD as AGREEMENT_METHOD
from .agreement import AgreementDACA
from .alignment import DACA, NaiveAlignment, _AlignmentCalibrator
from .daca_prior import METHOD as DACA_K_METHOD
from .daca_prior import DACAWithLabels
from .fewlabel import HistogramBinning, IsotonicCalibration, PlattScaling
from .labelled import MatrixScaling, TemperatureScaling, VectorScaling
from .mutual import METHOD as MUTUAL_METHOD
from .mutual import MutualCalibration

#: method name saved in the file -> class
METHODS: dict[str, type[_Calibrator]] = {
    c.method: c for c in (DACA, NaiveAlignment, TemperatureScaling, VectorScaling, MatrixScaling)
}

#: calibrators fitted on (base, chat) logits that are not logit maps of the chat model alone: own JSON readers
PAIR_METHODS: dict[str, Any] = {AGREEMENT_METHOD: AgreementDACA, MUTUAL_METHOD: MutualCalibration,
                                DACA_K_METHOD: DACAWithLabels,
                                **{c.method: c for c in (PlattScaling, IsotonicCalibration, HistogramBinning)}}


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
    except RecursionError:
        raise CalibratorFileError(f"{src}: JSON nested too deeply to be a calibrator; re-create it with `refcal fit`") from None
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
    """Inverse of ``to_dict``; see :func:`load_calibrator`.

    Every field is checked against its type and bounds before use: a file that was edited by hand or
    written by another build is refused with one sentence, never applied with surprising values.
    """
    if isinstance(data, dict) and "logits" in data and "format" not in data:
        raise CalibratorFileError(
            f"{source}: this is a score file, not a calibrator; pass the JSON written by `refcal fit -o`"
        )
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CalibratorFileError(
            f"{source}: not a refcal calibrator file (no \"format\": \"{FORMAT}\"); pass the JSON written by "
            "`refcal fit -o`"
        )
    version = data.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        got = "has no format_version" if "format_version" not in data else f"has format_version {version!r}"
        raise CalibratorFileError(
            f"{source}: {got}, but this build of refcal reads format_version {FORMAT_VERSION} only; re-create it "
            "with this version's `refcal fit`"
        )
    method = data.get("method")
    own = PAIR_METHODS.get(method) if isinstance(method, str) else None
    if own is not None:  # daca_agree (two temperatures), mutual (a binned map): their own readers
        try:
            return own.from_dict(data, source)
        except KeyError as exc:
            raise CalibratorFileError(f"{source}: missing key {exc.args[0]!r}; re-create it with `refcal fit`") from None
    if not isinstance(method, str) or method not in METHODS:
        raise CalibratorFileError(
            f"{source}: unknown calibration method {method!r} (expected one of {', '.join([*METHODS, *PAIR_METHODS])}); "
            "re-create it with `refcal fit`"
        )
    try:
        return _build(data, METHODS[method], source)
    except KeyError as exc:
        raise CalibratorFileError(f"{source}: missing key {exc.args[0]!r}; re-create it with `refcal fit`") from None


def _bad(source: str, what: str) -> CalibratorFileError:
    return CalibratorFileError(f"{source}: malformed value ({what}); re-create it with `refcal fit`")


def _obj(data: dict, key: str, source: str) -> dict:
    value = data[key]
    if not isinstance(value, dict):
        raise CalibratorFileError(
            f"{source}: {key!r} must be a JSON object, got {type(value).__name__}; re-create it with `refcal fit`"
        )
    return value


def _int(value: Any, name: str, source: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(source, f"{name} must be an integer >= {low}, got {value!r}")
    return value


def _real(value: Any, name: str, source: str) -> float:
    if not _is_real(value) or not math.isfinite(value):
        raise _bad(source, f"{name} must be a finite number, got {value!r}")
    return float(value)


def _matrix(value: Any, shape: tuple[int, ...], name: str, source: str) -> np.ndarray:
    """A nested list of finite numbers (no strings, no bools) of exactly ``shape``."""
    def walk(v: Any, depth: int) -> bool:
        if depth == len(shape):
            return _is_real(v) and math.isfinite(v)
        return isinstance(v, list) and len(v) == shape[depth] and all(walk(x, depth + 1) for x in v)

    if not walk(value, 0):
        dims = " x ".join(map(str, shape))
        raise _bad(source, f"{name} must be a {dims} array of finite numbers for n_options = {shape[-1]}")
    return np.asarray(value, dtype=np.float64)


def _build(data: dict, cls: type[_Calibrator], source: str) -> _Calibrator:
    hp = dict(_obj(data, "hyperparameters", source))
    params, solver = _obj(data, "parameters", source), _obj(data, "solver", source)
    allowed = set(cls()._hyperparameters())
    unknown = sorted(set(hp) - allowed)
    if unknown:
        raise _bad(source, f"unknown hyperparameter {unknown[0]!r} for method {data['method']!r}; known: "
                           f"{', '.join(sorted(allowed))}")
    if isinstance(hp.get("temperature_bounds"), list):
        hp["temperature_bounds"] = tuple(hp["temperature_bounds"])
    try:
        obj = cls(**hp)
        obj._check_params()
    except InputError as exc:
        raise CalibratorFileError(f"{source}: {exc}; re-create it with `refcal fit`") from None
    task = data.get("task", TASKS[0])  # files written before the field existed are multiple-choice
    if task not in TASKS:
        raise _bad(source, f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}")
    obj.task_ = task
    if data["scaling"] != obj.scaling:
        raise _bad(source, f"scaling {data['scaling']!r} does not match the hyperparameters' {obj.scaling!r}")
    obj.n_options_ = k = _int(data["n_options"], "n_options", source, low=2)
    obj.n_ = _int(data["n"], "n", source, low=1)
    if isinstance(obj, _AlignmentCalibrator):
        agreement = _obj(data, "agreement", source)
        obj.n_agree_ = _int(agreement["n_agree"], "agreement.n_agree", source, low=0)
        obj.agreement_rate_ = _real(agreement["agreement_rate"], "agreement.agreement_rate", source)
        if obj.n_agree_ > obj.n_ or not 0 <= obj.agreement_rate_ <= 1:
            raise _bad(source, f"agreement {obj.n_agree_} of {obj.n_} questions, rate {obj.agreement_rate_}")
    if obj.scaling == "temperature":
        t = params["temperature"]
        lo, hi = obj.temperature_bounds
        # the solver works on beta = 1/tau, so a temperature at a bound may differ from it by an ulp or so
        if not (_is_real(t) and math.isfinite(t) and lo * (1 - 1e-12) <= t <= hi * (1 + 1e-12)):
            raise _bad(source, f"temperature must be a number within the solver's bounds [{lo:g}, {hi:g}], got {t!r}")
        if "temperature" in data and data["temperature"] != t:
            raise _bad(source, f"temperature {data['temperature']!r} differs from parameters.temperature {t!r}")
        obj.temperature_ = float(t)
    else:
        shape = (k,) if obj.scaling == "vector" else (k, k)
        obj.coef_ = _matrix(params["coef"], shape, "coef", source)
        obj.intercept_ = _matrix(params["intercept"], (k,), "intercept", source)
    obj.n_iter_ = _int(solver["n_iter"], "solver.n_iter", source, low=0)
    if not isinstance(solver["converged"], bool):
        raise _bad(source, f"solver.converged must be true or false, got {solver['converged']!r}")
    obj.converged_ = solver["converged"]
    obj.objective_ = _real(solver["objective"], "solver.objective", source)
    if not isinstance(solver["message"], str):
        raise _bad(source, f"solver.message must be a string, got {solver['message']!r}")
    obj.solver_message_ = solver["message"]
    at_bound = solver.get("at_bound")
    if at_bound not in (None, "max_temperature", "min_temperature"):
        raise _bad(source, f"solver.at_bound must be null, \"max_temperature\" or \"min_temperature\", got {at_bound!r}")
    obj.at_bound_ = at_bound
    return obj


def check_task(cal: _Calibrator, meta: Any, *, cal_source: str, scores_source: str) -> None:
    """Refuse to apply ``cal`` to scores of the other task (``meta["task"]``, multiple-choice when absent):
    a free-form P(True) temperature means nothing on option logits, and the reverse."""
    got = meta.get("task", TASKS[0]) if isinstance(meta, dict) else TASKS[0]
    if got != TASKS[1]:
        got = TASKS[0]  # generation / likelihood score sets are not calibrated; anything else is options
    if got != cal.task_:
        raise InputError(f"{cal_source} was fitted on {cal.task_} scores but {scores_source} holds {got} scores; "
                         f"fit a calibrator on {got} scores")
