"""The task protocol: what a scoring mode asks a backend for and how its answers become one row.

The scorer (:mod:`refcal.scoring`) plans batches, keeps the cache and shows progress for any
:class:`Task`; it knows no task by name. A task says

* ``kind``: which backend call serves its requests (``"letter"`` -> ``score_letters``,
  ``"cloze"`` -> ``score_cloze``, ``"generate"`` -> ``generate``; see :data:`KIND_CALLS`);
* ``requests(question, fewshot)``: the requests of one question (one or more);
* ``reduce(question, results)``: the backend's results for those requests -> one JSON-ready raw row,
  which is what the cache stores;
* ``valid(question, raw)``: whether a raw row read back from the cache has the shape ``reduce``
  writes (anything else is re-scored);
* ``finish(raw)``: the raw row -> ``k`` option scores (``None`` for minus infinity);
* ``cache_key()``: what, besides model, data and few-shot examples, keys the cache file (tasks that
  share a raw row, such as the three cloze normalisations, return the same key);
* ``columns(raws)``: optional extra per-question columns of the score set (``{}`` when none);
* ``meta()``: what the score set's meta records about the task (``scoring``, ``template``, ``chat``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from ..data.base import Question

#: Backend method serving each request kind (``<call>_iter`` / ``<call>_iter_detailed`` when present).
KIND_CALLS: dict[str, str] = {"letter": "score_letters", "cloze": "score_cloze", "generate": "generate"}


@runtime_checkable
class Task(Protocol):
    """One way of turning a question into option scores (see the module docstring)."""

    kind: str
    name: str

    def requests(self, question: Question, fewshot: Sequence[Question] = ()) -> list[Any]: ...

    def reduce(self, question: Question, results: Sequence[Any]) -> Any: ...

    def valid(self, question: Question, raw: Any) -> bool: ...

    def finish(self, raw: Any) -> list[float | None]: ...

    def cache_key(self) -> dict[str, Any]: ...

    def columns(self, raws: Sequence[Any]) -> dict[str, list[Any]]: ...

    def meta(self) -> dict[str, Any]: ...


# ------------------------------------------------------------------------------------ raw-row checks
def is_score(v: Any) -> bool:
    """A finite JSON number (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def is_score_list(v: Any, n: int, *, none_ok: bool = False) -> bool:
    """A list of ``n`` finite numbers (``None``, minus infinity, allowed when ``none_ok``)."""
    return isinstance(v, list) and len(v) == n and all(is_score(x) or (none_ok and x is None) for x in v)


def is_count_list(v: Any, n: int) -> bool:
    """A list of ``n`` non-negative integers."""
    return isinstance(v, list) and len(v) == n and all(
        isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def keys_are(raw: Any, keys: set[str]) -> bool:
    return isinstance(raw, Mapping) and set(raw) == keys
