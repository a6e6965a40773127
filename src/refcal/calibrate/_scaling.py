"""Logit maps fitted by a convex solver (temperature, vector, matrix scaling): DACA, naive alignment and the
labelled oracles share this core (parameter checks, the fit, the bound warnings, the map and its file records).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

import numpy as np

from .._math import log_softmax
from ..errors import FitError, InputError
from ._maps import SCALINGS, apply_affine
from ._solvers import SolverResult, fit_affine, fit_temperature
from ._validate import check_logits
from .base import CalibrationWarning, Calibrator, Reader, is_real

log = logging.getLogger("refcal.calibrate")

#: what ``apply`` may write: the readers of score files refuse |x| > 1e100 (refcal.scores.bad_logits)
LOGIT_LIMIT = 1e100


class ScalingCalibrator(Calibrator):
    """A logit map ``g / tau``, ``w * g + c`` or ``W g + c`` fitted by a convex solver.

    Subclasses define a public ``fit`` that validates its inputs and calls :meth:`_fit_core` with the target
    log-probabilities and the per-question weights.
    """

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

    @property
    def solver_name(self) -> str:  # type: ignore[override]
        return "newton" if self.scaling == "temperature" else "l-bfgs-b"

    # ------------------------------------------------------------------ fitting
    def _check_params(self) -> None:
        if self.scaling not in SCALINGS:
            raise InputError(f"scaling must be one of {', '.join(SCALINGS)}, got {self.scaling!r}")
        if not (is_real(self.l2) and math.isfinite(self.l2) and self.l2 >= 0):
            raise InputError(f"l2 must be a finite number >= 0, got {self.l2!r}")
        if not (isinstance(self.max_iter, int | np.integer) and not isinstance(self.max_iter, bool | np.bool_)
                and self.max_iter >= 1):
            raise InputError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (is_real(self.tol) and 0 < self.tol < 1):
            raise InputError(f"tol must be a number in (0, 1), got {self.tol!r}")
        check_bounds(self.temperature_bounds)
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
            warn_at_bound(bound_message(res.at_bound, res.params), self.on_bound, stacklevel=5)
        elif not res.converged:
            warnings.warn(
                f"{self.scaling} scaling did not converge ({res.message}); raise max_iter or set l2 > 0",
                CalibrationWarning, stacklevel=4,
            )
        log.info("%s fit: %s, %d iterations, objective %.6g", self.method, self.solver_message_, self.n_iter_,
                 self.objective_)

    # ------------------------------------------------------------------ prediction
    def transform(self, logits: object) -> np.ndarray:
        """Calibrated logits, shape (n, k): ``g / tau``, ``w * g + c`` or ``W g + c`` (-inf stays -inf).

        Temperature scaling accepts any number of options; vector and matrix scaling need the ``k`` seen in
        ``fit``.
        """
        self._check_fitted()
        g = check_logits(logits, "logits")
        if self.scaling == "temperature":
            return scale_by_temperature(g, self.temperature_, "temperature_")
        if g.shape[1] != self.n_options_:
            raise InputError(
                f"logits have {g.shape[1]} options but this {self.scaling} scaling was fitted on {self.n_options_}; "
                f"apply it only to questions with {self.n_options_} options, or fit a calibrator on these scores"
            )
        return apply_affine(g, self.coef_, self.intercept_)

    def predict_log_proba(self, chat: object, base: object = None) -> np.ndarray:
        """Calibrated log-probabilities, shape (n, k): ``log_softmax(transform(chat))``; ``base`` is not read."""
        return log_softmax(self.transform(chat))

    # ------------------------------------------------------------------ export
    def fitted_params(self) -> dict[str, Any]:
        out = super().fitted_params()
        if self.scaling == "temperature":
            out["temperature"] = self.temperature_
        return out

    def _state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.scaling == "temperature":
            out["temperature"] = self.temperature_
            out["parameters"] = {"temperature": self.temperature_}
        else:
            out["parameters"] = {"coef": self.coef_.tolist(), "intercept": self.intercept_.tolist()}
        out["n_options"] = self.n_options_
        out["n"] = self.n_
        return out

    def _solver_record(self) -> dict[str, Any]:
        return {**super()._solver_record(), "message": self.solver_message_, "at_bound": self.at_bound_}

    def _read_state(self, r: Reader) -> None:
        data, params = r.data, r.obj("parameters")
        self.n_options_ = k = r.integer(data["n_options"], "n_options", 2)
        self.n_ = r.integer(data["n"], "n", 1)
        if self.scaling == "temperature":
            t = r.temperature(params["temperature"], "temperature", self.temperature_bounds)
            if "temperature" in data and data["temperature"] != t:
                raise r.bad(f"temperature {data['temperature']!r} differs from parameters.temperature {t!r}")
            self.temperature_ = t
        else:
            shape = (k,) if self.scaling == "vector" else (k, k)
            self.coef_ = r.matrix(params["coef"], shape, "coef")
            self.intercept_ = r.matrix(params["intercept"], (k,), "intercept")

    def _read_solver(self, r: Reader) -> None:
        super()._read_solver(r)
        solver = r.obj("solver")
        if not isinstance(solver["message"], str):
            raise r.bad(f"solver.message must be a string, got {solver['message']!r}")
        self.solver_message_ = solver["message"]
        at_bound = solver.get("at_bound")
        if at_bound not in (None, "max_temperature", "min_temperature"):
            raise r.bad(f"solver.at_bound must be null, \"max_temperature\" or \"min_temperature\", got {at_bound!r}")
        self.at_bound_ = at_bound


def check_bounds(bounds: Any) -> None:
    """``temperature_bounds`` must be ``(low, high)`` with ``0 < low < high < inf``."""
    lo, hi = (tuple(bounds) + (None, None))[:2] if isinstance(bounds, list | tuple) else (None, None)
    if not (isinstance(bounds, list | tuple) and len(bounds) == 2 and is_real(lo) and is_real(hi)
            and 0 < lo < hi < math.inf):
        raise InputError(f"temperature_bounds must be (low, high) with 0 < low < high, got {bounds!r}")


def scale_by_temperature(g: np.ndarray, t: Any, name: str) -> np.ndarray:
    """``g / t`` for (n, k) logits (-inf stays -inf), refusing a temperature that is not a finite number > 0 or
    that scales a logit beyond the floating-point range (a hand-edited file: ``fit`` keeps it within bounds)."""
    if isinstance(t, np.ndarray):  # one temperature per row (daca_agree), each read from a checked scalar
        ok = t.dtype.kind == "f" and bool(np.all(np.isfinite(t) & (t > 0)))
    else:
        ok = is_real(t) and math.isfinite(t) and t > 0
    if not ok:
        raise InputError(f"{name} must be a finite number > 0, got {t!r}; fit the calibrator again")
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(over="ignore"):  # an overflow is reported just below, as an error
        z = g / (t[:, None] if t.ndim else t)
    overflow = np.isinf(z) & np.isfinite(g)
    if overflow.any():
        shown = float(t) if t.ndim == 0 else float(t[np.argmax(overflow.any(axis=1))])
        raise InputError(
            f"temperature {shown:g} scales {int(overflow.sum())} logit(s) beyond the floating-point range "
            f"(first in row {int(np.argmax(overflow.any(axis=1)))}); such a temperature cannot come from "
            "`fit` (see temperature_bounds): fit the calibrator again"
        )
    return z


def bound_message(at_bound: str, value: float, where: str = "") -> str:
    """The warning of a temperature fitted at a bound of its solver (``where``: which temperature)."""
    what = f"the fitted temperature{where}"
    if at_bound == "max_temperature":
        return (f"{what} hit the upper bound {value:g}: the targets are flatter than any temperature makes the "
                "scores (e.g. a near-uniform base model), so calibrated probabilities are near uniform; check the "
                "base model's scores or widen temperature_bounds")
    return (f"{what} hit the lower bound {value:g}: the targets are (near) one-hot, so sharpening never stops; "
            "check the base model's scores or narrow temperature_bounds")


def warn_at_bound(message: str, on_bound: str = "warn", *, stacklevel: int = 4) -> None:
    """A :class:`CalibrationWarning` (``on_bound="warn"``) or a :class:`~refcal.errors.FitError` (``"raise"``)."""
    if on_bound == "raise":
        raise FitError(message)
    warnings.warn(message, CalibrationWarning, stacklevel=stacklevel)
