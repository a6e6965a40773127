"""Questions -> ScoreSet: batching plan, on-disk cache with resume, progress.

Scoring modes
-------------
``letter``
    The paper's way: next-token logits of the option letters (:class:`LetterRequest`).
``cloze``
    Sum of the log-probabilities of the option text as a continuation (lm-evaluation-harness ``acc``).
``cloze-norm``
    That sum divided by the continuation's number of characters (``acc_norm`` style; the
    harness divides by bytes, which equals characters for ASCII options).
``cloze-token``
    That sum divided by the continuation's number of tokens (mean log-probability per token).

The three cloze modes share one backend computation and one cache file; only the final division differs.

Cache and resume
----------------
Results are appended to ``<cache_dir>/<key>.jsonl`` as they are computed, one JSON line per
question ``{"h": <request hash>, "id": ..., "r": <raw result>}``, flushed and fsynced after each
batch. ``<key>`` hashes (fingerprint, dataset, split, template, request kind, chat, few-shot).
On restart, lines whose request hash matches are reused and only missing questions are scored; a
torn last line left by ``kill -9`` is cut off before appending. Batches are planned over *all*
questions (sorted by length, then chunked) before looking at the cache, so every question is scored
in the same batch as in an uninterrupted run, and the final scores are bit-identical.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._paths import cache_root
from .backends.base import ClozeRequest, ClozeResult, LetterRequest
from .data.base import Question
from .errors import InputError, ModelError
from .options import SCORINGS
from .prompts import cloze_requests, letter_requests
from .scores import ScoreSet

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


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
) -> ScoreSet:
    """Score every question with ``backend`` and return the option scores.

    Parameters
    ----------
    backend : Backend
        Anything with ``fingerprint``, ``score_letters`` and ``score_cloze``; optional
        ``score_letters_iter`` / ``score_cloze_iter`` (yield ``(index, result)`` as each finishes, so
        finished items are saved even if a later one fails) and ``request_length(request)``
        (a token count used to sort batches; the text length is used otherwise).
    questions : sequence of Question, length n
    scoring : {"letter", "cloze", "cloze-norm", "cloze-token"}
    template : int
        Instruction 1..5 for letter scoring (cloze prompts have no instruction; meta records None).
    chat : bool
        Apply the model's chat template (letter scoring only).
    fewshot : sequence of Question, or mapping subject -> sequence of Question
        Solved examples shared as a prefix; a mapping gives each subject its own examples (MMLU's
        dev split), questions whose subject is not a key get none.
    batch_size : int
        Questions per backend call (and per cache flush).
    cache_dir : path, optional
        Where the resumable result files live; default ``<cache root>/scores``
        (:func:`refcal._paths.cache_root`).
    cache : bool
        ``False`` scores everything in memory without reading or writing a cache.
    progress : bool
        Show a tqdm bar (only when stderr is a terminal).
    meta : mapping, optional
        Extra provenance stored in the ScoreSet's meta; ``dataset`` and ``split`` also key the cache.

    Returns
    -------
    ScoreSet
        ``logits`` (n, k) float64 with k the largest option count (-inf pads shorter rows),
        ``labels`` from the questions, ``columns["subject"]`` when any question has a subject,
        ``meta`` with model fingerprint, scoring, template, chat, few-shot count and ``meta``.
    """
    if scoring not in SCORINGS:
        raise InputError(f"scoring {scoring!r} is not known; choose one of {', '.join(SCORINGS)}")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
    if not questions:
        raise InputError("no questions to score; check the data set, split, subjects and --limit")
    kind = "letter" if scoring == "letter" else "cloze"
    if chat and kind == "cloze":
        raise InputError("the chat template applies to letter scoring only; use --chat-template off with cloze")
    shots = _shots_for(questions, fewshot)
    requests: list[Any] = []
    for q, ex in zip(questions, shots, strict=True):
        if kind == "letter":
            requests += letter_requests([q], template=template, chat=chat, fewshot=ex)
        else:
            requests += cloze_requests([q], fewshot=ex)
    meta = dict(meta or {})
    fingerprint = str(backend.fingerprint)
    key = {
        "v": _CACHE_VERSION, "fingerprint": fingerprint, "dataset": meta.get("dataset"),
        "split": meta.get("split"), "template": template if kind == "letter" else None, "kind": kind,
        "chat": bool(chat),
        "fewshot": _hash(json.dumps(sorted({json.dumps([[e.id, e.question, list(e.choices), e.label] for e in ex])
                                            for ex in shots}))),
    }
    hashes = [_hash(_req_json(r)) for r in requests]
    store = _Store(Path(cache_dir) if cache_dir is not None else cache_root() / "scores", key) if cache else None
    results: dict[str, Any] = store.load() if store else {}
    plan = _plan(backend, requests, int(batch_size))
    todo = sum(h not in results for h in set(hashes))
    if store and todo < len(set(hashes)):
        log.info("resuming: %d of %d questions already scored in %s", len(set(hashes)) - todo, len(hashes), store.path)
    bar = _bar(len(requests), len(requests) - sum(h not in results for h in hashes), progress)
    try:
        for batch in plan:
            missing = [i for i in batch if hashes[i] not in results]
            if not missing:
                continue
            for i, res in _run(backend, kind, [requests[i] for i in missing]):
                raw = _raw(kind, res, requests[missing[i]])
                q = missing[i]
                results[hashes[q]] = raw
                if store:
                    store.append(hashes[q], questions[q].id, raw)
                if bar is not None:
                    bar.update(1)
            if store:
                store.sync()
    finally:
        if store:
            store.close()
        if bar is not None:
            bar.close()
    rows = [_finish(scoring, results[h]) for h in hashes]
    columns = {}
    if any(q.subject is not None for q in questions):
        columns["subject"] = [q.subject for q in questions]
    if kind == "letter" and any(isinstance(results[h], dict) for h in hashes):
        # letters an API's top-k left out, per question (cached answers included)
        columns["n_floored"] = [int(results[h]["f"]) if isinstance(results[h], dict) else 0 for h in hashes]
    out_meta = {
        **meta, "model": meta.get("model", fingerprint), "fingerprint": fingerprint, "scoring": scoring,
        "template": template if kind == "letter" else None, "chat": bool(chat), "fewshot": max(len(ex) for ex in shots),
    }
    backend_meta = getattr(backend, "meta", None)
    if isinstance(backend_meta, Mapping):
        out_meta["backend"] = dict(backend_meta)
    labels = [q.label if q.label >= 0 else None for q in questions]
    return ScoreSet.from_rows([q.id for q in questions], rows, labels, meta=out_meta, columns=columns,
                              source="scored questions")


# ---------------------------------------------------------------------------------------------- planning
def _shots_for(questions: Sequence[Question], fewshot: Any) -> list[tuple[Question, ...]]:
    if isinstance(fewshot, Mapping):
        return [tuple(fewshot.get(q.subject, ())) for q in questions]
    shared = tuple(fewshot)
    return [shared] * len(questions)


def _plan(backend: Any, requests: Sequence[Any], batch_size: int) -> list[list[int]]:
    """Chunks of request indices, longest first (ties by index): independent of what is cached."""
    length = getattr(backend, "request_length", None)
    lens = [int(length(r)) if length else _text_len(r) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: (-lens[i], i))
    return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]


def _text_len(r: Any) -> int:
    if isinstance(r, LetterRequest):
        return len(r.prefix) + len(r.prompt)
    return len(r.context) + max(len(c) for c in r.continuations)


def _run(backend: Any, kind: str, reqs: list[Any]) -> Iterable[tuple[int, Any]]:
    if kind == "letter" and hasattr(backend, "score_letters_iter_detailed"):
        yield from backend.score_letters_iter_detailed(reqs)
        return
    it = getattr(backend, f"score_{'letters' if kind == 'letter' else 'cloze'}_iter", None)
    if it is not None:
        yield from it(reqs)
        return
    out = backend.score_letters(reqs) if kind == "letter" else backend.score_cloze(reqs)
    if len(out) != len(reqs):
        raise ModelError(f"the backend returned {len(out)} results for {len(reqs)} requests")
    yield from enumerate(out)


def _raw(kind: str, res: Any, req: Any) -> Any:
    """JSON-ready raw result; -inf (an option absent from an API's top-k) is stored as None."""
    if kind == "letter":
        floored = getattr(res, "floored", None)  # API backends: letters absent from the top-k
        arr = np.asarray(res.logprobs if floored is not None else res, dtype=np.float64).reshape(-1)
        if arr.shape != (len(req.letters),):
            raise ModelError(f"the backend returned {arr.size} letter scores for {len(req.letters)} options")
        row = [None if np.isneginf(v) else float(v) for v in arr]
        return row if floored is None else {"l": row, "f": int(sum(bool(f) for f in floored))}
    if not isinstance(res, ClozeResult) or len(res.logprob) != len(req.continuations):
        raise ModelError("the backend returned a malformed cloze result")
    return {"lp": [float(v) for v in res.logprob], "nt": [int(v) for v in res.n_tokens],
            "nc": [int(v) for v in res.n_chars]}


def _finish(scoring: str, raw: Any) -> list[float | None]:
    if scoring == "letter":
        return list(raw["l"]) if isinstance(raw, dict) else list(raw)
    lp, nt, nc = raw["lp"], raw["nt"], raw["nc"]
    if scoring == "cloze":
        return list(lp)
    den = nc if scoring == "cloze-norm" else nt
    return [v / max(d, 1) for v, d in zip(lp, den, strict=True)]


def _req_json(r: Any) -> str:
    if isinstance(r, LetterRequest):
        obj: Any = ["L", r.prefix, r.prompt, list(r.letters), r.chat]
    elif isinstance(r, ClozeRequest):
        obj = ["C", r.context, list(r.continuations)]
    else:  # pragma: no cover - internal
        raise TypeError(type(r))
    return json.dumps(obj, ensure_ascii=False)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _bar(total: int, initial: int, progress: bool):
    if not progress or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="q", desc="scoring", leave=False)


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
