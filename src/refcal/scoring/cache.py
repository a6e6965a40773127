"""The one on-disk cache of scoring: one key expression and one hash for option scores and hidden states.

A cache entry is named by :func:`cache_key` (backend fingerprint, data set, split, the task's
:meth:`~refcal.tasks.Task.cache_key`, the few-shot examples, and for anything but option scores ``what``
it holds), hashed by :func:`digest`; a row inside it by :func:`request_hash` of the question's requests.

* option scores (:func:`refcal.scoring.score_questions`): :class:`ScoreStore`, an append-only JSON Lines
  file ``<cache_dir>/<name>.jsonl``, one ``{"h", "id", "r"}`` line per question (a torn last line left by
  ``kill -9`` is cut off before appending);
* answer hidden states (:func:`refcal.scoring.hidden_states`): :class:`HiddenStore`, a folder
  ``<cache_dir>/hidden/<name>/`` of ``part-*.npz`` files (request hashes ``h`` and float32 rows ``x``),
  each written atomically (temporary file, then ``os.replace``).

Both write the key itself beside the entry (``*.key.json``) so a cache folder can be inspected.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..tasks import Task, request_json

log = logging.getLogger(__name__)

#: bump when a cached row would no longer mean what it meant
CACHE_VERSION = 1


def digest(text: str) -> str:
    """sha256 of ``text`` (UTF-8), 32 hex digits."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def shots_digest(shots: Sequence[Sequence[Any]]) -> str:
    """One hash of the distinct few-shot example lists (id, question, choices, label of each example)."""
    return digest(json.dumps(sorted({json.dumps([[e.id, e.question, list(e.choices), e.label] for e in ex])
                                     for ex in shots})))


def cache_key(fingerprint: Any, task: Task, meta: Mapping[str, Any], shots: Sequence[Sequence[Any]], *,
              what: str | None = None) -> dict[str, Any]:
    """The key of one cache entry: the same expression for option scores (``what=None``) and for anything
    else computed from the same prompts (``what="answer-hidden-states"``)."""
    key = {
        "v": CACHE_VERSION, "fingerprint": str(fingerprint), "dataset": meta.get("dataset"),
        "split": meta.get("split"), **task.cache_key(), "fewshot": shots_digest(shots),
    }
    if what is not None:
        key["what"] = what
    return key


def request_hash(reqs: Sequence[Any]) -> str:
    """The hash of one question's requests (a single request is hashed on its own JSON)."""
    obj = request_json(reqs[0]) if len(reqs) == 1 else [request_json(r) for r in reqs]
    return digest(json.dumps(obj, ensure_ascii=False))


class _Keyed:
    """A cache entry named by the hash of its key."""

    def __init__(self, key: Mapping[str, Any]):
        self._key = json.dumps(key, sort_keys=True)
        self.name = digest(self._key)[:24]

    def _write_key(self, key_file: Path) -> None:
        if not key_file.exists():
            key_file.write_text(self._key)


class ScoreStore(_Keyed):
    """Append-only JSONL result file ``<root>/<name>.jsonl`` (key in ``<name>.key.json``) for one cache key."""

    def __init__(self, root: Path, key: Mapping[str, Any]):
        super().__init__(key)
        self.path = root / f"{self.name}.jsonl"
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
                self._write_key(self.path.with_suffix(".key.json"))
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


class HiddenStore(_Keyed):
    """One folder ``<root>/<name>/`` of ``part-*.npz`` files (request hashes + float32 rows) per cache key."""

    def __init__(self, root: Path, key: Mapping[str, Any]):
        super().__init__(key)
        self.path = root / self.name

    def load(self, width: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if not self.path.is_dir():
            return out
        for part in sorted(self.path.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as z:
                    h, x = z["h"], z["x"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                log.warning("unreadable hidden-state cache file %s is ignored (its rows are computed again)", part)
                continue
            if x.ndim != 2 or x.shape != (h.shape[0], width) or not np.isfinite(x).all():
                log.warning("malformed hidden-state cache file %s is ignored (its rows are computed again)", part)
                continue
            out.update(zip(h.tolist(), x, strict=True))
        return out

    def append(self, hashes: Sequence[str], x: np.ndarray) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_key(self.path / "key.json")
            fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".npz", dir=self.path)
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, h=np.asarray(hashes, dtype=str), x=np.asarray(x, dtype=np.float32))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path / f"part-{hashes[0][:16]}.npz")
        except OSError as e:
            raise InputError(f"cannot write the hidden-state cache {self.path} ({e}); pass a writable --cache-dir") \
                from None
