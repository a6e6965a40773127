"""Shared machinery of every calibrator: parameter checks, the fit core, prediction and JSON export."""

from __future__ import annotations

import errno
import importlib.metadata
import json
import logging
import math
import os
import sys
import warnings
from typing import Any

import numpy as np

from .._io import atomic_write_json, ensure_parent
from .._math import log_softmax
from ..errors import FitError, InputError, NotFittedError
from ._maps import SCALINGS, apply_affine, apply_temperature
from ._solvers import SolverResult, fit_affine, fit_temperature
from ._validate import check_logits

log = logging.getLogger("refcal.calibrate")

FORMAT = "refcal-calibrator"
FORMAT_VERSION = 1
#: what a calibrator's scores are: option logits of multiple-choice questions, or the two P(True) letters of
#: free-form answers (``refcal.run.freeform``); recorded as ``task`` and checked before applying it
TASKS = ("multiple-choice", "free-form P(True)")


class CalibrationWarning(UserWarning):
    """A fit finished but needs the user's attention (temperature at a bound, solver not converged)."""


class _Calibrator:
    """Base class: holds hyper-parameters, fits a logit map, predicts and serialises it.

    Subclasses define ``method`` (the name saved in JSON) and a public ``fit`` that validates its inputs
    and calls :meth:`_fit_core` with the target log-probabilities and the per-question weights.
    """

    method: str = ""
    description: str = ""
    #: one of :data:`TASKS`; set ``task_`` on a fitted calibrator of free-form P(True) scores
    task_: str = "multiple-choice"

    def __init__(
        self,
        scaling: str = "temperature",
        *,
        l2: float = 0.0,
        max_iter: int = 1000,
        tol: float = 1e-10,
        temperature_bounds: tuple[float, float] = (1e-3, 1e4),
        on_bound: str = "warn",
    ):
        self.scaling = scaling
        self.l2 = l2
        self.max_iter = max_iter
        self.tol = tol
        self.temperature_bounds = temperature_bounds
        self.on_bound = on_bound

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._hyperparameters().items())})"

    # ------------------------------------------------------------------ fitting
    def _hyperparameters(self) -> dict[str, Any]:
        return {
            "scaling": self.scaling,
            "l2": _plain_number(self.l2),
            "max_iter": _plain_number(self.max_iter),
            "tol": _plain_number(self.tol),
            "temperature_bounds": [_plain_number(b) for b in self.temperature_bounds],
            "on_bound": self.on_bound,
        }

    def _check_params(self) -> None:
        if self.scaling not in SCALINGS:
            raise InputError(f"scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        if not (_is_real(self.l2) and math.isfinite(self.l2) and self.l2 >= 0):
            raise InputError(f"l2 must be a finite number >= 0, got {self.l2!r}")
        if not (isinstance(self.max_iter, int | np.integer) and not isinstance(self.max_iter, bool | np.bool_)
                and self.max_iter >= 1):
            raise InputError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (_is_real(self.tol) and 0 < self.tol < 1):
            raise InputError(f"tol must be a number in (0, 1), got {self.tol!r}")
        bounds = self.temperature_bounds
        lo, hi = (tuple(bounds) + (None, None))[:2] if isinstance(bounds, list | tuple) else (None, None)
        if not (isinstance(bounds, list | tuple) and len(bounds) == 2 and _is_real(lo) and _is_real(hi)
                and 0 < lo < hi < math.inf):
            raise InputError(f"temperature_bounds must be (low, high) with 0 < low < high, got {self.temperature_bounds!r}")
        if self.on_bound not in ("warn", "raise"):
            raise InputError(f"on_bound must be 'warn' or 'raise', got {self.on_bound!r}")

    def _fit_core(self, logp: np.ndarray, g: np.ndarray, weight: np.ndarray, total: float) -> None:
        """Fit the map on rows with ``weight > 0``; the objective is normalised by ``total``."""
        keep = weight > 0
        logp, g, omega = logp[keep], g[keep], weight[keep] / total
        self.n_options_ = g.shape[1]
        if self.scaling == "temperature":
            lo, hi = self.temperature_bounds
            res = fit_temperature(logp, g, omega, bounds=(float(lo), float(hi)), max_iter=self.max_iter, tol=self.tol)
        else:
            res = fit_affine(logp, g, omega, scaling=self.scaling, l2=float(self.l2), max_iter=self.max_iter, tol=self.tol)
        self._store(res)

    def _store(self, res: SolverResult) -> None:
        if self.scaling == "temperature":
            if not (math.isfinite(res.params) and res.params > 0):  # pragma: no cover - defensive
                raise FitError(f"the temperature solver returned {res.params!r}; please report this bug")
            if not res.converged:
                raise FitError(f"the temperature solver did not converge: {res.message}; raise max_iter or tol")
            self.temperature_ = float(res.params)
        else:
            coef, intercept = res.params
            if not (np.all(np.isfinite(coef)) and np.all(np.isfinite(intercept)) and math.isfinite(res.objective)):
                raise FitError(f"{self.scaling} scaling diverged ({res.message}); set l2 > 0 to regularise the fit")
            self.coef_, self.intercept_ = coef, intercept
        # plain Python types only: every fitted attribute is written to JSON (a numpy bool is not JSON)
        self.n_iter_ = int(res.n_iter)
        self.converged_ = bool(res.converged)
        self.objective_ = float(res.objective)
        self.solver_message_ = str(res.message)
        self.at_bound_ = None if res.at_bound is None else str(res.at_bound)
        if res.at_bound is not None:
            msg = self._bound_message(res)
            if self.on_bound == "raise":
                raise FitError(msg)
            warnings.warn(msg, CalibrationWarning, stacklevel=4)
        elif not res.converged:
            warnings.warn(
                f"{self.scaling} scaling did not converge ({res.message}); raise max_iter or set l2 > 0",
                CalibrationWarning, stacklevel=4,
            )
        log.info("%s fit: %s, %d iterations, objective %.6g", self.method, self.solver_message_, self.n_iter_,
                 self.objective_)

    def _bound_message(self, res: SolverResult) -> str:
        if res.at_bound == "max_temperature":
            return (f"the fitted temperature hit the upper bound {res.params:g}: the targets are flatter than "
                    "any temperature makes the scores (e.g. a near-uniform base model), so calibrated "
                    "probabilities are near uniform; check the base model's scores or widen temperature_bounds")
        return (f"the fitted temperature hit the lower bound {res.params:g}: the targets are (near) one-hot, so "
                "sharpening never stops; check the base model's scores or narrow temperature_bounds")

    # ------------------------------------------------------------------ prediction
    def _check_fitted(self) -> None:
        if not hasattr(self, "objective_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(...) first")

    def transform(self, logits: object) -> np.ndarray:
        """Calibrated logits, shape (n, k): ``g / tau``, ``w * g + c`` or ``W g + c`` (-inf stays -inf).

        Temperature scaling accepts any number of options; vector and matrix scaling need the ``k`` seen in
        ``fit``.
        """
        self._check_fitted()
        g = check_logits(logits, "logits")
        if self.scaling == "temperature":
            t = self.temperature_
            if not (_is_real(t) and math.isfinite(t) and t > 0):
                raise InputError(f"temperature_ must be a finite number > 0, got {t!r}; fit the calibrator again")
            with np.errstate(over="ignore"):  # an overflow is reported just below, as an error
                z = apply_temperature(g, float(t))
            overflow = np.isinf(z) & np.isfinite(g)
            if overflow.any():
                raise InputError(
                    f"temperature {t:g} scales {int(overflow.sum())} logit(s) beyond the floating-point range "
                    f"(first in row {int(np.argmax(overflow.any(axis=1)))}); such a temperature cannot come from "
                    "`fit` (see temperature_bounds): fit the calibrator again"
                )
            return z
        if g.shape[1] != self.n_options_:
            raise InputError(
                f"logits have {g.shape[1]} options but this {self.scaling} scaling was fitted on {self.n_options_}; "
                f"apply it only to questions with {self.n_options_} options, or fit a calibrator on these scores"
            )
        return apply_affine(g, self.coef_, self.intercept_)

    def predict_log_proba(self, logits: object) -> np.ndarray:
        """Calibrated log-probabilities, shape (n, k): ``log_softmax(transform(logits))``."""
        return log_softmax(self.transform(logits))

    def predict_proba(self, logits: object) -> np.ndarray:
        """Calibrated probabilities, shape (n, k); rows sum to 1, missing options get exactly 0."""
        return np.exp(self.predict_log_proba(logits))

    # ------------------------------------------------------------------ export
    def _fitted_record(self) -> dict[str, Any]:
        """Method-specific fitted statistics (agreement counts, ...), overridden by subclasses."""
        return {"n": self.n_}

    def to_dict(self, *, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
        """Plain-JSON description of the fitted calibrator (see :func:`refcal.calibrate.load_calibrator`).

        Floats are stored as Python floats, whose JSON text round-trips exactly. ``inputs`` is free-form
        provenance given by the caller (score files, model names, ...); non-JSON values become strings.
        """
        self._check_fitted()
        if inputs is not None and not isinstance(inputs, dict):
            raise InputError(f"inputs must be a dict (e.g. score file paths and models), got {type(inputs).__name__}")
        out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "refcal_version": _version(),
            "method": self.method,
            "description": self.description,
            "scaling": self.scaling,
            "task": self.task_,
        }
        if self.scaling == "temperature":
            out["temperature"] = self.temperature_
            out["parameters"] = {"temperature": self.temperature_}
        else:
            out["parameters"] = {"coef": self.coef_.tolist(), "intercept": self.intercept_.tolist()}
        out["n_options"] = self.n_options_
        out.update(self._fitted_record())
        out["hyperparameters"] = self._hyperparameters()
        out["solver"] = {
            "name": "newton" if self.scaling == "temperature" else "l-bfgs-b",
            "n_iter": self.n_iter_,
            "converged": self.converged_,
            "objective": self.objective_,
            "message": self.solver_message_,
            "at_bound": self.at_bound_,
        }
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


def _is_real(x: object) -> bool:
    """A real number in a JSON-compatible sense: int or float (numpy too), never a bool or a string."""
    return isinstance(x, int | float | np.integer | np.floating) and not isinstance(x, bool | np.bool_)


def _plain_number(x: object) -> object:
    """numpy scalars -> the Python int / float JSON can write; anything else unchanged."""
    return x.item() if isinstance(x, np.generic) else x


def _version() -> str:
    pkg = sys.modules.get("refcal")
    if getattr(pkg, "__version__", None):
        return str(pkg.__version__)
    try:
        return importlib.metadata.version("refcal")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
