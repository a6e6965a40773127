"""Questions -> ScoreSet for any scoring task: batch plan, on-disk cache with resume, progress.

What is asked of the model for each question, and how its answers become a row of option scores, is
the task's business (:mod:`refcal.tasks`: ``letter``, ``cloze`` / ``cloze-norm`` / ``cloze-token``,
``cape``); this module knows no task by name.

Cache and resume
----------------
Results are appended to ``<cache_dir>/<key>.jsonl`` as they are computed, one JSON line per
question ``{"h": <request hash>, "id": ..., "r": <raw row from Task.reduce>}``, flushed after each
question and fsynced after each batch. ``<key>`` hashes (fingerprint, dataset, split, the task's
:meth:`~refcal.tasks.Task.cache_key`, few-shot examples). On restart, lines whose request hash matches
and whose raw row passes the task's check (:meth:`~refcal.tasks.Task.valid`) are reused; anything else
(``null``, a dict for a list, a list of the wrong length, a non-finite number, a torn last line left by
``kill -9``, which is cut off before appending) is scored again.

Batches are planned over *all* questions (sorted by length, then chunked) before looking at the
cache, and a batch with any question missing is scored again as a whole (its cached rows are kept
as they are), so every question is scored in the same batch as in an uninterrupted run with the same
questions and the final scores are bit-identical. Backends whose results do not depend on the batch
(``batch_invariant``, an HTTP API) only re-send what is missing. A cache warmed with another set of
questions (another ``--limit``) is another batch plan: its rows are reused, and they can differ from
a fresh run's in the last digits (measured on the packaged models: at most ~1e-5 nats; the answer
picked does not change).

Progress
--------
A tqdm bar on a terminal; off a terminal, a log line (logger ``refcal.progress``, INFO, shown by
default) every 10% of the questions and at least every 30 s, so a stalled server is visible.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._paths import cache_root
from ..backends.base import call_iter
from ..data.base import Question
from ..errors import InputError, ModelError
from ..scores import QUESTION_HASH, ScoreSet, question_hash
from ..tasks import KIND_CALLS, Task, make_task, request_text_length
from .cache import ScoreStore, cache_key, request_hash
from .progress import Progress

log = logging.getLogger(__name__)


def score_questions(
    backend: Any,
    questions: Sequence[Question],
    *,
    scoring: str = "letter",
    template: int = 1,
    chat: bool = False,
    fewshot: Sequence[Question] | Mapping[str | None, Sequence[Question]] = (),
    batch_size: int = 8,
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
    progress: bool = True,
    meta: Mapping[str, Any] | None = None,
    task: Task | None = None,
) -> ScoreSet:
    """Score every question with ``backend`` and return the option scores.

    Parameters
    ----------
    backend : Backend
        See :class:`refcal.backends.base.Backend`: ``fingerprint`` and the call the task needs
        (``score_letters`` / ``score_cloze``, preferably with its ``*_iter`` variant so finished items
        are saved even if a later one fails); optional ``request_length(request)`` (a token count
        used to sort batches; the text length otherwise), ``batch_invariant`` and ``meta``.
    questions : sequence of Question, length n
    scoring : {"letter", "cloze", "cloze-norm", "cloze-token", "cape"}
        The scoring mode (:data:`refcal.options.SCORINGS`); ignored when ``task`` is given.
    template : int
        Instruction 1..5 for letter scoring (cloze prompts have no instruction; meta records None).
    chat : bool
        Apply the model's chat template (letter scoring only).
    fewshot : sequence of Question, or mapping subject -> sequence of Question
        Solved examples shared as a prefix; a mapping gives each subject its own examples (MMLU's
        dev split), questions whose subject is not a key get none.
    batch_size : int
        Requests per backend call (and per cache flush); a question's requests are never split.
    cache_dir : path, optional
        Where the resumable result files live; default ``<cache root>/scores``
        (:func:`refcal._paths.cache_root`).
    cache : bool
        ``False`` scores everything in memory without reading or writing a cache.
    progress : bool
        A tqdm bar on a terminal, progress log lines otherwise.
    meta : mapping, optional
        Extra provenance stored in the ScoreSet's meta; ``dataset`` and ``split`` also key the cache.
    task : Task, optional
        A task object (:mod:`refcal.tasks`) to use instead of the one ``scoring`` names.

    Returns
    -------
    ScoreSet
        ``logits`` (n, k) float64 with k the largest option count (-inf pads shorter rows),
        ``labels`` from the questions, ``columns["subject"]`` when any question has a subject (and the
        task's own columns, e.g. ``n_floored``), ``meta`` with model fingerprint, scoring, template,
        chat, few-shot count and ``meta``.
    """
    if task is None:
        task = make_task(scoring, template=template, chat=chat)
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    if not questions:
        raise InputError("no questions to score; check the data set, split, subjects and --limit")
    shots = _shots_for(questions, fewshot)
    requests = [task.requests(q, ex) for q, ex in zip(questions, shots, strict=True)]
    meta = dict(meta or {})
    fingerprint = str(backend.fingerprint)
    key = cache_key(fingerprint, task, meta, shots)
    hashes = [request_hash(rs) for rs in requests]
    store = ScoreStore(Path(cache_dir) if cache_dir is not None else cache_root() / "scores", key) if cache else None
    rows = _cached_rows(store, questions, hashes, task)
    plan = _plan(backend, requests, int(batch_size))
    invariant = bool(getattr(backend, "batch_invariant", False))
    call = KIND_CALLS[task.kind]
    bar = Progress(len(questions), len(rows), progress)
    # the whole planned batch, so that its new rows equal an uninterrupted run's
    todo = [[i for i in batch if i not in rows] if invariant else batch
            for batch in plan if not all(i in rows for i in batch)]
    owners = [[(i, p) for i in run for p in range(len(requests[i]))] for run in todo]
    sent = [[requests[i][p] for i, p in owner] for owner in owners]
    # a backend that scores batches elsewhere (refcal.backends.ray) yields them as they finish
    dispatch = getattr(backend, "dispatch_batches", None)
    results = dispatch(call, sent) if dispatch else ((b, call_iter(backend, call, reqs)) for b, reqs in enumerate(sent))
    try:
        for b, pairs in results:
            run, owner = todo[b], owners[b]
            got: dict[int, dict[int, Any]] = {i: {} for i in run}
            for j, res in pairs:
                i, p = owner[j]
                got[i][p] = res
                if len(got[i]) < len(requests[i]) or i in rows:
                    continue  # incomplete, or a cached row of a re-scored batch (kept as it was)
                rows[i] = task.reduce(questions[i], [got[i][p] for p in range(len(requests[i]))])
                if store:
                    store.append(hashes[i], questions[i].id, rows[i])
                bar.update(1)
            if store:
                store.sync()
            short = [questions[i].id for i in run if i not in rows]
            if short:
                raise ModelError(f"the backend returned no result for {len(short)} question(s), first {short[0]!r}")
    finally:
        if store:
            store.close()
        bar.close()
    return _score_set(backend, task, questions, [rows[i] for i in range(len(questions))], shots, meta)


def _cached_rows(store: ScoreStore | None, questions: Sequence[Question], hashes: Sequence[str],
                 task: Task) -> dict[int, Any]:
    """The cached raw rows that still pass the task's check, by question index."""
    cached = store.load() if store else {}
    rows: dict[int, Any] = {}
    n_bad = 0
    for i, (q, h) in enumerate(zip(questions, hashes, strict=True)):
        if h in cached:
            if task.valid(q, cached[h]):
                rows[i] = cached[h]
            else:
                n_bad += 1
    if n_bad:
        log.warning("%d malformed line(s) in the score cache %s are scored again", n_bad, store.path if store else "")
    if rows:
        log.info("resuming: %d of %d questions already scored in %s", len(rows), len(questions),
                 store.path if store else "")
    return rows


def _score_set(backend: Any, task: Task, questions: Sequence[Question], raws: list[Any],
               shots: list[tuple[Question, ...]], meta: dict[str, Any]) -> ScoreSet:
    """The task's rows as a ScoreSet, with the question fingerprints, subjects and provenance."""
    fingerprint = str(backend.fingerprint)
    # a fingerprint of each question's text: join_scores refuses to pair different questions under one id
    columns: dict[str, list[Any]] = {QUESTION_HASH: [question_hash(q.question) for q in questions]}
    if any(q.subject is not None for q in questions):
        columns["subject"] = [q.subject for q in questions]
    columns.update(task.columns(raws))
    out_meta = {
        **meta, "model": meta.get("model", fingerprint), "fingerprint": fingerprint, **task.meta(),
        "fewshot": max(len(ex) for ex in shots),
    }
    backend_meta = getattr(backend, "meta", None)
    if isinstance(backend_meta, Mapping):
        out_meta["backend"] = dict(backend_meta)
    labels = [q.label if q.label >= 0 else None for q in questions]
    return ScoreSet.from_rows([q.id for q in questions], [task.finish(r) for r in raws], labels, meta=out_meta,
                              columns=columns, source="scored questions")


# ---------------------------------------------------------------------------------------------- planning
def _shots_for(questions: Sequence[Question], fewshot: Any) -> list[tuple[Question, ...]]:
    if isinstance(fewshot, Mapping):
        return [tuple(fewshot.get(q.subject, ())) for q in questions]
    shared = tuple(fewshot)
    return [shared] * len(questions)


def _plan(backend: Any, requests: Sequence[Sequence[Any]], batch_size: int) -> list[list[int]]:
    """Chunks of question indices, longest first (ties by index), each with at most ``batch_size``
    requests (or one question's): independent of what is cached."""
    bulk = getattr(backend, "request_lengths", None)  # one call for all (a remote backend)
    length = getattr(backend, "request_length", None)
    measure = (lambda r: int(length(r))) if length else request_text_length
    if bulk:
        flat = iter(bulk([r for rs in requests for r in rs]))
        lens = [max(int(next(flat)) for _ in rs) for rs in requests]
    else:
        lens = [max(measure(r) for r in rs) for rs in requests]
    order = sorted(range(len(requests)), key=lambda i: (-lens[i], i))
    plan: list[list[int]] = []
    cur: list[int] = []
    n = 0
    for i in order:
        if cur and n + len(requests[i]) > batch_size:
            plan.append(cur)
            cur, n = [], 0
        cur.append(i)
        n += len(requests[i])
    if cur:
        plan.append(cur)
    return plan
