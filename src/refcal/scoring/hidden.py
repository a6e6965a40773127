"""Final hidden states at the answer position of letter prompts (BaseCal-Proj), cached per question.

The states come from the backend (:meth:`TransformersBackend.answer_hidden_states
<refcal.backends.transformers.TransformersBackend.answer_hidden_states>`: the final hidden state ``h_T``
at the last prompt position, where letter scoring reads its logits; see :mod:`refcal.backends.heads`).
This module plans the batches, keeps the cache and resumes.

Batching
    Requests are sorted by token length and packed like the backend's own batches
    (:func:`refcal.backends.batching.pack`).
Cache and resume
    The scoring cache (:mod:`refcal.scoring.cache`): the key is the one of the letter scores of the same
    prompts with ``what="answer-hidden-states"``, stored under ``<cache_dir>/hidden``. Batches are planned
    over all questions before the cache is read and a batch with a missing question is computed whole
    (its cached rows kept), so an interrupted extraction resumes with the same values as an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._paths import cache_root
from ..backends.batching import pack
from ..errors import InputError
from ..tasks import make_task
from .cache import HiddenStore, cache_key, request_hash

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HiddenStates:
    """Answer-position hidden states of some questions: ``ids`` (n,) and float32 ``x`` (n, H)."""

    ids: tuple[str, ...]
    x: np.ndarray

    def take(self, ids: Sequence[Any]) -> np.ndarray:
        """The rows of ``ids`` (compared as strings, as score files compare them), in that order."""
        index = {q: i for i, q in enumerate(self.ids)}
        missing = [q for q in ids if str(q) not in index]
        if missing:
            raise InputError(f"question {missing[0]!r} has no hidden state; re-run to extract it")
        return self.x[[index[str(q)] for q in ids]]


def hidden_states(
    backend: Any,
    questions: Sequence[Any],
    *,
    template: int = 1,
    chat: bool = False,
    fewshot: Sequence[Any] | Mapping[str | None, Sequence[Any]] = (),
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> HiddenStates:
    """Answer-position hidden states (float32 ``(n, H)``) of the letter prompts of ``questions``, cached.

    ``backend`` answers ``answer_hidden_states(requests)``, ``hidden_size``, ``request_length(request)``,
    ``batch_size`` and ``fingerprint`` (:class:`~refcal.backends.transformers.TransformersBackend` does).

    The prompts are those of letter scoring with the same ``template``, ``chat`` and ``fewshot``
    (:class:`refcal.tasks.LetterTask`), so the states belong to the scores of the same run.
    ``cache_dir`` is the score cache folder of the run (``--cache-dir``; default ``<cache root>/scores``):
    the states go to its sibling layout ``<cache_dir>/hidden`` (default ``<cache root>/hidden``).
    ``meta["dataset"]`` and ``meta["split"]`` key the cache as they key the score cache.
    """
    if not questions:
        raise InputError("no questions to extract hidden states for; check the data set, split and --limit")
    task = make_task("letter", template=template, chat=chat)
    if isinstance(fewshot, Mapping):
        shots = [tuple(fewshot.get(q.subject, ())) for q in questions]
    else:
        shots = [tuple(fewshot)] * len(questions)
    requests = []
    for q, ex in zip(questions, shots, strict=True):
        (req,) = task.requests(q, ex)
        requests.append(req)
    key = cache_key(backend.fingerprint, task, dict(meta or {}), shots, what="answer-hidden-states")
    hashes = [request_hash([r]) for r in requests]
    root = Path(cache_dir) / "hidden" if cache_dir is not None else cache_root() / "hidden"
    store = HiddenStore(root, key) if cache else None
    width = backend.hidden_size
    rows: dict[int, np.ndarray] = {}
    if store:
        cached = store.load(width)
        rows = {i: cached[h] for i, h in enumerate(hashes) if h in cached}
        if rows:
            log.info("resuming: %d of %d hidden states already in %s", len(rows), len(questions), store.path)
    lens = [backend.request_length(r) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: (-lens[i], i))
    for batch in pack(order, [lens[i] for i in order], backend.batch_size):
        if all(i in rows for i in batch):
            continue
        x = backend.answer_hidden_states([requests[i] for i in batch])
        new = [b for b, i in enumerate(batch) if i not in rows]  # cached rows of a re-run batch stay as they were
        for b in new:
            rows[batch[b]] = x[b]
        if store:
            store.append([hashes[batch[b]] for b in new], x[new])
    x = np.stack([rows[i] for i in range(len(questions))]).astype(np.float32, copy=False)
    return HiddenStates(tuple(str(q.id) for q in questions), x)


__all__ = ["HiddenStates", "hidden_states"]
