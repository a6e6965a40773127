"""The task kinds ``refcal run`` drives through one pipeline (:func:`refcal.run.job.run`).

A kind loads its questions (``prepare``), computes the inputs its selected methods name, each once
(``score``), cuts them into evaluation units (``plan``, a :class:`refcal.run.protocol.Plan`) and adds its own
results to the run folder (``finish``). Fitting and evaluating every method is common
(:func:`refcal.run.evaluate.evaluate`). A new kind is a data loader, a tasks file and a module here with
an entry in :data:`KINDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...calibrate.methods import FREEFORM, MC
from .freeform import Freeform, is_freeform
from .multiple_choice import MultipleChoice

#: task kind -> its driver class
KINDS: dict[str, type] = {MC: MultipleChoice, FREEFORM: Freeform}


def detect_kind(dataset: str, columns: Mapping[str, Any] | None = None) -> str:
    """The kind of ``dataset``: a free-form set (:func:`~.freeform.is_freeform`) or multiple choice."""
    return FREEFORM if is_freeform(dataset, columns) else MC


def make_kind(name: str) -> Any:
    """A fresh driver of the kind ``name``."""
    return KINDS[name]()


__all__ = ["KINDS", "detect_kind", "make_kind", "is_freeform"]
