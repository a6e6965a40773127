"""The question record every data source produces."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Question:
    """One multiple-choice question.

    Attributes
    ----------
    id : str
        Unique within a data set and split (stable across runs: it keys caches and joins).
    question : str
        The question text (for completion-style sets such as HellaSwag, the context to continue).
    choices : tuple of str
        Option texts in order; any number >= 2.
    label : int
        Index of the correct option, -1 when unknown.
    subject : str or None
        Group for per-group fits (MMLU subject), else None.
    meta : dict
        Anything else worth keeping (source, original index, ...).
    """

    id: str
    question: str
    choices: tuple[str, ...]
    label: int = -1
    subject: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
