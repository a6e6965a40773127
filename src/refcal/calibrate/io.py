"""Read a calibrator saved by ``save`` (plain JSON; calibrators are never pickled), through the one table
:data:`CALIBRATORS` of :mod:`refcal.calibrate.base` (every calibrator class enters it when defined).

Every public module of ``refcal.calibrate`` is imported here, so a calibrator defined in a new file of the
package is in the table without any other edit (the recipe "a fitted method": its file and one registry
entry).
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from typing import Any

from ..errors import CalibratorFileError
from .base import CALIBRATORS, Calibrator, check_task

for _module in pkgutil.iter_modules([os.path.dirname(__file__)]):
    if not _module.name.startswith("_") and _module.name != "io":
        importlib.import_module(f"{__package__}.{_module.name}")  # defines (registers) its calibrators

__all__ = ["CALIBRATORS", "load_calibrator", "from_dict", "check_task"]


def load_calibrator(path: str | os.PathLike) -> Calibrator:
    """Rebuild a fitted calibrator from the JSON written by its ``save``.

    Reads the files of this build (``format_version`` 2) and of the previous one (1).

    Raises
    ------
    CalibratorFileError
        The file is missing, unreadable, not JSON, of an unknown method, lacks a required key, or holds a
        value outside its type and bounds (one sentence naming it).
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


def from_dict(data: Any, *, source: str = "calibrator") -> Calibrator:
    """Inverse of ``to_dict`` for any method (see :meth:`refcal.calibrate.base.Calibrator.from_dict`)."""
    return Calibrator.from_dict(data, source)


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

