"""Scoring tasks: the request types and one protocol (:class:`Task`) for turning questions into rows.

``letter`` (:class:`LetterTask`), ``cloze`` / ``cloze-norm`` / ``cloze-token`` (:class:`ClozeTask`) and
``cape`` (:class:`PermutedLetterTask`); :func:`make_task` builds one from a scoring mode.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from ..errors import InputError
from ..options import SCORINGS
from .base import KIND_CALLS, Task
from .multiple_choice import (
    CLOZE_MODES,
    ClozeTask,
    LetterTask,
    PermutedLetterTask,
    cape_orders,
    permute,
    rotate,
)
from .requests import (
    ClozeRequest,
    ClozeResult,
    GenerateRequest,
    LetterRequest,
    request_json,
    request_text_length,
)

__all__ = [
    "KIND_CALLS", "TASKS", "ClozeRequest", "ClozeResult", "ClozeTask", "GenerateRequest", "LetterRequest",
    "LetterTask", "PermutedLetterTask", "Task", "cape_orders", "make_task", "permute", "request_json",
    "request_text_length", "rotate",
]

#: scoring mode -> task class
TASKS: dict[str, Callable[..., Task]] = {
    "letter": LetterTask, **{m: partial(ClozeTask, m) for m in CLOZE_MODES}, "cape": PermutedLetterTask,
}


def make_task(scoring: str, *, template: int = 1, chat: bool = False, cape_orders: str | None = None,
              cape_templates: str | None = None) -> Task:
    """The task of scoring mode ``scoring`` (one of :data:`refcal.options.SCORINGS`).

    ``cape_orders`` (``cyclic`` | ``all``) and ``cape_templates`` (``one`` | ``all``) choose CAPE's members
    (:class:`PermutedLetterTask`); ``None`` is the default, and another scoring mode refuses any value."""
    if scoring not in SCORINGS or scoring not in TASKS:
        raise InputError(f"scoring {scoring!r} is not known; choose one of {', '.join(SCORINGS)}")
    cape = {k: v for k, v in (("orders", cape_orders), ("templates", cape_templates)) if v is not None}
    if scoring == "cape":
        return PermutedLetterTask(template=template, chat=chat, **cape)
    if cape:
        raise InputError(f"--cape-{next(iter(cape))} applies to CAPE only (--scoring cape or the cape method), "
                         f"not to --scoring {scoring}")
    return TASKS[scoring](template=template, chat=chat)
