"""JSON plumbing shared by the calibrators fitted on both models' logits (``daca_agree``, ``mutual``): the file
header, the atomic write, and a strict reader of fields (every value checked before use)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from .._io import atomic_write_json, ensure_parent
from ..errors import CalibratorFileError, InputError
from .base import FORMAT, FORMAT_VERSION, _version
from .base import is_real as _is_real


def header(cal: Any, inputs: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(the file's leading fields, the provenance record)`` of a fitted ``cal``."""
    cal._check_fitted()
    if inputs is not None and not isinstance(inputs, dict):
        raise InputError(f"inputs must be a dict (e.g. score file paths and models), got {type(inputs).__name__}")
    head = {"format": FORMAT, "format_version": FORMAT_VERSION, "refcal_version": _version(), "method": cal.method,
            "description": cal.description, "scaling": cal.scaling}
    return head, json.loads(json.dumps(inputs or {}, default=str))


def save(cal: Any, path: str | os.PathLike, inputs: dict[str, Any] | None) -> None:
    """Write ``cal.to_dict(inputs=inputs)`` as strict JSON atomically (see :meth:`refcal.DACA.save`)."""
    doc = cal.to_dict(inputs=inputs)
    ensure_parent(path, what="the calibrator")
    try:
        atomic_write_json(path, doc, strict=True)
    except OSError as exc:
        raise InputError(f"cannot write the calibrator to {os.fspath(path)}: {exc.strerror}; "
                         "choose a folder you can write to") from None


class Reader:
    """Checked access to the fields of a calibrator file ``data`` read from ``source``; a missing key raises
    ``KeyError`` (``load_calibrator`` names it), a malformed value :class:`CalibratorFileError`."""

    def __init__(self, data: dict, source: str, method: str):
        self.data, self.source, self.method = data, source, method

    def bad(self, what: str) -> CalibratorFileError:
        return CalibratorFileError(f"{self.source}: malformed value ({what}); re-create it with `refcal fit`")

    def obj(self, key: str, within: dict | None = None) -> dict:
        value = (self.data if within is None else within)[key]
        if not isinstance(value, dict):
            raise self.bad(f"{key!r} must be a JSON object")
        return value

    def integer(self, value: Any, name: str, low: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise self.bad(f"{name} must be an integer >= {low}, got {value!r}")
        return value

    def real(self, value: Any, name: str) -> float:
        if not (_is_real(value) and math.isfinite(value)):
            raise self.bad(f"{name} must be a finite number, got {value!r}")
        return float(value)

    def build(self, cls: type, known: set[str], scaling: str) -> Any:
        """An unfitted ``cls`` from the file's hyperparameters (only ``known`` names), its scaling checked."""
        hp = dict(self.obj("hyperparameters"))
        unknown = sorted(set(hp) - known)
        if unknown:
            raise self.bad(f"unknown hyperparameter {unknown[0]!r} for method {self.method!r}")
        if isinstance(hp.get("temperature_bounds"), list):
            hp["temperature_bounds"] = tuple(hp["temperature_bounds"])
        try:
            cal = cls(**hp)
            cal._check_params()
        except (InputError, TypeError) as exc:
            raise CalibratorFileError(f"{self.source}: {exc}; re-create it with `refcal fit`") from None
        if self.data["scaling"] != scaling:
            raise self.bad(f"scaling must be {scaling!r} for {self.method}, got {self.data['scaling']!r}")
        return cal

    def solver(self, cal: Any) -> None:
        """``n_iter_``, ``converged_`` and ``objective_`` from the ``solver`` record."""
        solver = self.obj("solver")
        cal.n_iter_ = self.integer(solver["n_iter"], "solver.n_iter", 0)
        if not isinstance(solver["converged"], bool):
            raise self.bad(f"solver.converged must be true or false, got {solver['converged']!r}")
        cal.converged_ = solver["converged"]
        cal.objective_ = self.real(solver["objective"], "solver.objective")
