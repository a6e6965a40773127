"""The one base of every calibrator: parameters, repr, fitted record, JSON export and import, save.

A calibrator is fitted on calibration questions and maps the chat model's scores to calibrated
log-probabilities. Every calibrator, whatever it reads, has the same shape:

* ``__init__`` takes its hyper-parameters as keyword arguments (read back by :meth:`Calibrator.get_params`,
  shown by ``repr``, written to the file as ``hyperparameters``); ``_check_params`` validates them;
* ``fit(...)`` returns ``self``; fitted values end in ``_`` (``n_``, ``n_options_``, ``n_iter_``,
  ``converged_``, ``objective_`` always);
* ``predict_log_proba(chat, base=None)`` -> (n, k) log-probabilities of the options (``predict_proba``:
  their exponential). ``chat`` is what the calibrator transforms: the chat model's option logits (n, k)
  for every calibrator but ``proj``, whose ``chat`` is a :class:`refcal.calibrate.proj.ProjInputs` (the
  chat model's hidden states and option logits). ``base`` is the base model's option logits of the same
  questions; it is read only when :attr:`Calibrator.needs_base_at_apply` (``daca_agree``: the two models'
  agreement picks the temperature) and refused otherwise by the command line;
* ``fitted_params()``: a flat dict of plain numbers / strings summarising the fit (temperatures, agreement
  counts, bounds hit): what a run records per fit in ``metrics.json["fits"]``;
* ``to_dict`` / ``save`` / :func:`refcal.calibrate.load_calibrator`: plain JSON, never pickle. The file
  layout is common (``format``, ``format_version``, ``method``, ``description``, ``scaling``, ``task``,
  the calibrator's own fitted records, ``hyperparameters``, ``solver``, ``inputs``); a subclass writes
  its fitted records in ``_state`` and reads them back, every value checked, in ``_read_state``.

A subclass that sets ``method`` is entered in :data:`CALIBRATORS` (method name in the file -> class)
when it is defined; :func:`refcal.calibrate.load_calibrator` reads any file through that one table.
"""

from __future__ import annotations

import errno
import importlib.metadata
import inspect
import json
import math
import os
import sys
from typing import Any, ClassVar

import numpy as np

from .._io import atomic_write_json, ensure_parent
from ..errors import CalibratorFileError, InputError, NotFittedError

FORMAT = "refcal-calibrator"
#: 2: every method records ``task``, ``proj`` is saved, ``daca_agree`` records which bound each temperature hit.
#: Files of version 1 (the previous code) are read as they are (no ``task``: multiple-choice; the few-label
#: calibrators' had no ``solver`` record either, see :func:`read_legacy_solver`).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
#: What a calibrator's scores are: option logits of multiple-choice questions, or the two P(True) letters
#: of free-form answers; recorded as ``task`` and checked before applying it (``check_task``).
TASKS = ("multiple-choice", "free-form")
#: ``task`` values written by the previous code, read as today's; also the ``meta["task"]`` of free-form P(True)
#: score files (:data:`refcal.tasks.freeform.FREEFORM_TASK`; calibrate/ imports no task module)
_OLD_TASKS = {"free-form P(True)": "free-form"}

#: method name in the file -> calibrator class (filled as the classes are defined)
CALIBRATORS: dict[str, type[Calibrator]] = {}


class CalibrationWarning(UserWarning):
    """A fit finished but needs the user's attention (temperature at a bound, solver not converged)."""


class Calibrator:
    """Base class of every calibrator (see the module docstring for the contract).

    Class attributes a subclass sets: ``method`` (the name in the file and in :data:`CALIBRATORS`),
    ``description`` (one line), ``scaling`` (the map's family, written as ``scaling``; an instance
    attribute where it is a hyper-parameter) and ``needs_base_at_apply``.
    """

    method: ClassVar[str] = ""
    description: ClassVar[str] = ""
    scaling: str = ""
    #: ``predict_log_proba`` reads the base model's logits (``base=``) as well as the chat model's
    needs_base_at_apply: ClassVar[bool] = False
    #: name of the solver in the file's ``solver`` record
    solver_name: ClassVar[str] = ""
    #: its temperature fit can also run block by block on score files (:func:`refcal.streaming.fit_temperature_streaming`)
    streamable_fit: ClassVar[bool] = False
    #: one of :data:`TASKS`: the kind of scores it was fitted on (``refcal fit`` sets it from the score file)
    task_: str = TASKS[0]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("method"):
            CALIBRATORS[cls.method] = cls

    # ------------------------------------------------------------------ parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        """The hyper-parameters: the keyword arguments of ``__init__`` (scikit-learn's convention)."""
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]

    def get_params(self) -> dict[str, Any]:
        """``{name: value}`` of every hyper-parameter, as given to ``__init__``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def _hyperparameters(self) -> dict[str, Any]:
        """:meth:`get_params` in plain JSON types (numpy scalars -> numbers, tuples -> lists)."""
        return {k: ([plain_number(x) for x in v] if isinstance(v, tuple | list) else plain_number(v))
                for k, v in self.get_params().items()}

    def _check_params(self) -> None:
        """Raise :class:`~refcal.errors.InputError` naming the first invalid hyper-parameter."""

    # ------------------------------------------------------------------ fitting
    def fit_roles(self, chat: Any, base: Any = None, labels: Any = None) -> Calibrator:
        """Fit from the inputs of a run by role (what :mod:`refcal.calibrate.methods` calls): the chat model's
        input, the base model's, the calibration labels (``None`` when the run has none). The default is a
        label-free fit on both models' logits, ``fit(base, chat)``; a labelled or hidden-state calibrator
        overrides it."""
        if base is None:
            raise InputError(f"{type(self).__name__} is fitted on both models' scores: pass the base model's")
        return self.fit(base, chat)

    # ------------------------------------------------------------------ fitted state
    def _check_fitted(self) -> None:
        if not hasattr(self, "objective_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(...) first")

    def fitted_params(self) -> dict[str, Any]:
        """The fit in a few plain values (``metrics.json["fits"]``); subclasses add theirs to ``{"n": n_}``."""
        self._check_fitted()
        return {"n": self.n_}

    def predict_log_proba(self, chat: Any, base: Any = None) -> np.ndarray:
        """Calibrated log-probabilities (n, k) of the options; see the module docstring for ``chat``/``base``."""
        raise NotImplementedError

    def predict_proba(self, chat: Any, base: Any = None) -> np.ndarray:
        """Calibrated probabilities (n, k); rows sum to 1, missing options get exactly 0."""
        return np.exp(self.predict_log_proba(chat, base))

    def _base_at_apply(self, base: Any) -> Any:
        """``base`` when this calibrator reads it; a clear error when it needs it and got none."""
        if self.needs_base_at_apply and base is None:
            raise InputError(f"{type(self).__name__} reads both models' logits at apply time: pass base=")
        return base

    # ------------------------------------------------------------------ export
    def _state(self) -> dict[str, Any]:
        """The fitted records of the file (``parameters``, ``n_options``, ``n`` and any of the method's own)."""
        raise NotImplementedError

    def _solver_record(self) -> dict[str, Any]:
        return {"name": self.solver_name, "n_iter": self.n_iter_, "converged": self.converged_,
                "objective": self.objective_}

    def to_dict(self, *, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Plain-JSON description of the fitted calibrator (read back by :func:`load_calibrator`).

        Floats are stored as Python floats, whose JSON text round-trips exactly. ``inputs`` is free-form
        provenance given by the caller (score files, model names, ...); non-JSON values become strings.
        """
        self._check_fitted()
        if inputs is not None and not isinstance(inputs, dict):
            raise InputError(f"inputs must be a dict (e.g. score file paths and models), got {type(inputs).__name__}")
        out: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION, "refcal_version": _version(),
                               "method": self.method, "description": self.description, "scaling": self.scaling,
                               "task": self.task_}
        out.update(self._state())
        out["hyperparameters"] = self._hyperparameters()
        out["solver"] = self._solver_record()
        try:
            out["inputs"] = json.loads(json.dumps(inputs or {}, default=str))
        except RecursionError:
            raise InputError("inputs is nested too deeply to be saved; pass a flat dict of provenance") from None
        return out

    def save(self, path: str | os.PathLike, *, inputs: dict[str, Any] | None = None) -> None:
        """Write :meth:`to_dict` as JSON atomically (temporary file in the same folder + ``os.replace``).

        Missing folders above ``path`` are created (not directly under the file-system root). The file
        gets the usual ``0666 & ~umask`` permissions.

        Raises
        ------
        InputError
            The file or its folder cannot be written (one sentence naming the path and what to do).
        """
        doc = self.to_dict(inputs=inputs)
        ensure_parent(path, what="the calibrator")
        try:
            atomic_write_json(path, doc, strict=True)
        except OSError as exc:
            hint = "free some disk space" if exc.errno == errno.ENOSPC else "choose a folder you can write to"
            raise InputError(f"cannot write the calibrator to {os.fspath(path)}: {exc.strerror}; {hint}") from None

    # ------------------------------------------------------------------ import
    @classmethod
    def from_dict(cls, data: Any, source: str = "calibrator") -> Calibrator:
        """Inverse of :meth:`to_dict`. On :class:`Calibrator` itself: any method of :data:`CALIBRATORS`; on a
        subclass: that method only.

        Every field is checked against its type and bounds before use: a file that was edited by hand or
        written by another build is refused with one sentence (:class:`~refcal.errors.CalibratorFileError`),
        never applied with surprising values.
        """
        method = _check_header(data, source)
        target = CALIBRATORS[method]
        if cls is not Calibrator and target is not cls:
            raise CalibratorFileError(f"{source}: holds a {method} calibrator, not {cls.method}")
        r = Reader(data, source, method)
        try:
            cal = target._from_hyperparameters(r)
            task = data.get("task", TASKS[0])  # files written before the field existed are multiple-choice
            task = _OLD_TASKS.get(task, task) if isinstance(task, str) else task
            if task not in TASKS:
                raise r.bad(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}")
            cal.task_ = task
            if data["scaling"] != cal.scaling:
                raise r.bad(f"scaling {data['scaling']!r} does not match the hyperparameters' {cal.scaling!r}")
            cal._read_state(r)
            cal._read_solver(r)
        except KeyError as exc:
            raise CalibratorFileError(f"{source}: missing key {exc.args[0]!r}; re-create it with `refcal fit`") from None
        return cal

    @classmethod
    def _from_hyperparameters(cls, r: Reader) -> Calibrator:
        """An unfitted calibrator from the file's ``hyperparameters`` (only this class's names, checked)."""
        hp = dict(r.obj("hyperparameters"))
        known = cls._param_names()
        unknown = sorted(set(hp) - set(known))
        if unknown:
            raise r.bad(f"unknown hyperparameter {unknown[0]!r} for method {r.method!r}; known: {', '.join(sorted(known))}")
        hp = {k: tuple(v) if isinstance(v, list) else v for k, v in hp.items()}
        try:
            cal = cls(**hp)
            cal._check_params()
        except (InputError, TypeError) as exc:
            raise CalibratorFileError(f"{r.source}: {exc}; re-create it with `refcal fit`") from None
        return cal

    def _read_state(self, r: Reader) -> None:
        """Set the fitted attributes from the records :meth:`_state` wrote (each value checked)."""
        raise NotImplementedError

    def _read_solver(self, r: Reader) -> None:
        """``n_iter_``, ``converged_`` and ``objective_`` from the ``solver`` record."""
        solver = r.obj("solver")
        self.n_iter_ = r.integer(solver["n_iter"], "solver.n_iter", 0)
        if not isinstance(solver["converged"], bool):
            raise r.bad(f"solver.converged must be true or false, got {solver['converged']!r}")
        self.converged_ = solver["converged"]
        self.objective_ = r.real(solver["objective"], "solver.objective")


def legacy_solver_record(cal: Calibrator) -> dict[str, Any]:
    """The ``solver`` record of a calibrator that may have been read from a file without one (``objective``
    null then, see :func:`read_legacy_solver`)."""
    return {"name": cal.solver_name, "n_iter": cal.n_iter_, "converged": cal.converged_,
            "objective": None if math.isnan(cal.objective_) else cal.objective_}


def read_legacy_solver(cal: Calibrator, r: Reader) -> None:
    """``solver`` of the few-label calibrators, whose files of format_version 1 had no such record: read as
    0 iterations, converged, objective unknown (NaN; written back as null)."""
    if "solver" not in r.data and r.data.get("format_version") == 1:
        cal.n_iter_, cal.converged_, cal.objective_ = 0, True, math.nan
        return
    solver = r.obj("solver")
    cal.n_iter_ = r.integer(solver["n_iter"], "solver.n_iter", 0)
    if not isinstance(solver["converged"], bool):
        raise r.bad(f"solver.converged must be true or false, got {solver['converged']!r}")
    cal.converged_ = solver["converged"]
    objective = solver["objective"]
    cal.objective_ = math.nan if objective is None else r.real(objective, "solver.objective")


def _check_header(data: Any, source: str) -> str:
    """The method of a calibrator file, once its format, version and method are known good."""
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
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        got = "has no format_version" if "format_version" not in data else f"has format_version {version!r}"
        raise CalibratorFileError(
            f"{source}: {got}, but this build of refcal reads format_version "
            f"{' or '.join(map(str, READABLE_VERSIONS))}; re-create it with this version's `refcal fit`"
        )
    method = data.get("method")
    if not isinstance(method, str) or method not in CALIBRATORS:
        raise CalibratorFileError(
            f"{source}: unknown calibration method {method!r} (expected one of {', '.join(CALIBRATORS)}); "
            "re-create it with `refcal fit`"
        )
    return method


class Reader:
    """Checked access to the fields of a calibrator file ``data`` read from ``source``; a missing key raises
    ``KeyError`` (``from_dict`` names it), a malformed value :class:`CalibratorFileError`."""

    def __init__(self, data: dict, source: str, method: str):
        self.data, self.source, self.method = data, source, method

    def bad(self, what: str) -> CalibratorFileError:
        return CalibratorFileError(f"{self.source}: malformed value ({what}); re-create it with `refcal fit`")

    def obj(self, key: str, within: dict | None = None) -> dict:
        value = (self.data if within is None else within)[key]
        if not isinstance(value, dict):
            raise CalibratorFileError(f"{self.source}: {key!r} must be a JSON object, got {type(value).__name__}; "
                                      "re-create it with `refcal fit`")
        return value

    def integer(self, value: Any, name: str, low: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.bad(f"{name} must be an integer >= {low}, got {value!r}")
        return value

    def real(self, value: Any, name: str) -> float:
        if not (is_real(value) and math.isfinite(value)):
            raise self.bad(f"{name} must be a finite number, got {value!r}")
        return float(value)

    def temperature(self, value: Any, name: str, bounds: tuple[float, float]) -> float:
        """A temperature within the solver's bounds (the solver works on ``1 / tau``, so a temperature at a
        bound may differ from it by an ulp or so)."""
        lo, hi = bounds
        if not (is_real(value) and math.isfinite(value) and lo * (1 - 1e-12) <= value <= hi * (1 + 1e-12)):
            raise self.bad(f"{name} must be a number within the solver's bounds [{lo:g}, {hi:g}], got {value!r}")
        return float(value)

    def matrix(self, value: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
        """A nested list of finite numbers (no strings, no bools) of exactly ``shape``."""
        def walk(v: Any, depth: int) -> bool:
            if depth == len(shape):
                return is_real(v) and math.isfinite(v)
            return isinstance(v, list) and len(v) == shape[depth] and all(walk(x, depth + 1) for x in v)

        if not walk(value, 0):
            dims = " x ".join(map(str, shape))
            raise self.bad(f"{name} must be a {dims} array of finite numbers for n_options = {shape[-1]}")
        return np.asarray(value, dtype=np.float64)

    def agreement(self, cal: Any) -> None:
        """``n_agree_`` and ``agreement_rate_`` from the ``agreement`` record (``n_`` read before)."""
        agreement = self.obj("agreement")
        cal.n_agree_ = self.integer(agreement["n_agree"], "agreement.n_agree", 0)
        rate = agreement["agreement_rate"]
        if cal.n_agree_ > cal.n_ or not (is_real(rate) and math.isfinite(rate) and 0 <= rate <= 1):
            raise self.bad(f"agreement {cal.n_agree_} of {cal.n_} questions, rate {rate!r}")
        cal.agreement_rate_ = float(rate)


def is_real(x: object) -> bool:
    """A real number in a JSON-compatible sense: int or float (numpy too), never a bool or a string."""
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool | np.bool_)


def plain_number(x: object) -> object:
    """numpy scalars -> the Python int / float JSON can write; anything else unchanged."""
    return x.item() if isinstance(x, np.generic) else x


def task_of_scores(meta: Any) -> str:
    """The calibrator task of a score file's metadata: ``free-form`` for free-form P(True) scores, else
    ``multiple-choice`` (generation and likelihood score sets are not calibrated; anything else is options)."""
    got = meta.get("task") if isinstance(meta, dict) else None
    return TASKS[1] if got in (*_OLD_TASKS, TASKS[1]) else TASKS[0]


def check_task(cal: Calibrator, meta: Any, *, cal_source: str, scores_source: str) -> None:
    """Refuse to apply ``cal`` to scores of the other task: a free-form P(True) temperature means nothing on
    option logits, and the reverse."""
    got = task_of_scores(meta)
    if got != cal.task_:
        raise InputError(f"{cal_source} was fitted on {cal.task_} scores but {scores_source} holds {got} scores; "
                         f"fit a calibrator on {got} scores")


def _version() -> str:
    pkg = sys.modules.get("refcal")
    if getattr(pkg, "__version__", None):
        return str(pkg.__version__)
    try:
        return importlib.metadata.version("refcal")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
