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

import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._paths import cache_root
from .backends.base import call_iter
from .data.base import Question
from .errors import InputError, ModelError
from .scores import QUESTION_HASH, ScoreSet, question_hash
from .tasks import KIND_CALLS, Task, make_task, request_json, request_text_length

log = logging.getLogger(__name__)
progress_log = logging.getLogger("refcal.progress")
progress_log.setLevel(logging.INFO)  # progress lines are shown under the CLI's default WARNING level

_CACHE_VERSION = 1
#: a progress line off a terminal at least this often (seconds), and at every 10% of the questions
PROGRESS_EVERY_S = 30.0


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
    key = {
        "v": _CACHE_VERSION, "fingerprint": fingerprint, "dataset": meta.get("dataset"),
        "split": meta.get("split"), **task.cache_key(),
        "fewshot": _hash(json.dumps(sorted({json.dumps([[e.id, e.question, list(e.choices), e.label] for e in ex])
                                            for ex in shots}))),
    }
    hashes = [_request_hash(rs) for rs in requests]
    store = _Store(Path(cache_dir) if cache_dir is not None else cache_root() / "scores", key) if cache else None
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
    plan = _plan(backend, requests, int(batch_size))
    invariant = bool(getattr(backend, "batch_invariant", False))
    call = KIND_CALLS[task.kind]
    bar = _Progress(len(questions), len(rows), progress)
    # the whole planned batch, so that its new rows equal an uninterrupted run's
    todo = [[i for i in batch if i not in rows] if invariant else batch
            for batch in plan if not all(i in rows for i in batch)]
    owners = [[(i, p) for i in run for p in range(len(requests[i]))] for run in todo]
    sent = [[requests[i][p] for i, p in owner] for owner in owners]
    # a backend that scores batches elsewhere (refcal.scoring_ray) yields them as they finish
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
    raws = [rows[i] for i in range(len(questions))]
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


def _request_hash(reqs: Sequence[Any]) -> str:
    obj = request_json(reqs[0]) if len(reqs) == 1 else [request_json(r) for r in reqs]
    return _hash(json.dumps(obj, ensure_ascii=False))


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class _Progress:
    """A tqdm bar on a terminal; off a terminal, log lines every 10% and at least every 30 s."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.total, self.done = total, initial
        self._bar = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not enabled or initial >= total:
            return
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, initial=initial, unit="q", desc="scoring", leave=False)
            return
        self._t0 = time.monotonic()
        self._step = max(1, -(-total // 10))
        self._next = (initial // self._step + 1) * self._step
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._heartbeat, name="refcal-progress", daemon=True)
        self._thread.start()

    def _line(self) -> None:
        progress_log.info("scoring: %d/%d questions (%.0f%%), %.0f s", self.done, self.total,
                          100.0 * self.done / self.total, time.monotonic() - self._t0)

    def _heartbeat(self) -> None:
        while not self._stop.wait(PROGRESS_EVERY_S):
            with self._lock:
                self._line()

    def update(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._thread is not None and self.done >= self._next:
            with self._lock:
                self._next = (self.done // self._step + 1) * self._step
                self._line()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None


# ---------------------------------------------------------------------------------------------- cache
class _Store:
    """Append-only JSONL result file for one cache key."""

    def __init__(self, root: Path, key: Mapping[str, Any]):
        blob = json.dumps(key, sort_keys=True)
        self.path = root / f"{_hash(blob)[:24]}.jsonl"
        self._key = blob
        self._fh = None

    def load(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if not self.path.exists():
            return out
        with open(self.path, "rb") as fh:
            data = fh.read()
        for line in data.split(b"\n"):
            try:
                obj = json.loads(line)
                out[obj["h"]] = obj["r"]
            except (ValueError, KeyError, TypeError):
                continue  # a torn line from a killed run (or an empty one)
        return out

    def _open(self):
        if self._fh is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                key_file = self.path.with_suffix(".key.json")
                if not key_file.exists():
                    key_file.write_text(self._key)
                self._fh = open(self.path, "ab+")
            except OSError as e:
                raise InputError(f"cannot write the score cache {self.path} ({e}); pass a writable --cache-dir") from None
            self._fh.seek(0, os.SEEK_END)
            size = self._fh.tell()
            if size:
                # a kill -9 mid-write leaves a line without its newline: cut it so the next line parses
                self._fh.seek(size - 1)
                if self._fh.read(1) != b"\n":
                    self._fh.seek(0)
                    data = self._fh.read()
                    self._fh.truncate(data.rfind(b"\n") + 1)
                self._fh.seek(0, os.SEEK_END)
        return self._fh

    def append(self, h: str, qid: str, raw: Any) -> None:
        fh = self._open()
        fh.write((json.dumps({"h": h, "id": qid, "r": raw}, allow_nan=False) + "\n").encode("utf-8"))
        fh.flush()  # flushed lines survive kill -9 (the OS has them); fsync per batch guards power loss

    def sync(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self.sync()
            self._fh.close()
            self._fh = None
