"""The monitoring log: an append-only, crash-safe store of calibrated requests (JSONL segments).

Layout: a folder of segments ``segment-<UTC start time, ns>-<pid>-<n>.jsonl``. Each writer (one per proxy
process) opens a **new** segment when it starts and when the current one reaches ``max_records``, and
never reopens an old one, so a torn line can only be the last line of a segment.

Crash safety
    Each record is one line, written with a single ``os.write`` on a file opened with ``O_APPEND``
    (no user-space buffer: a record that returned from :meth:`LogWriter.write` survives ``kill -9`` of
    the process). ``fsync`` makes it survive a power cut too: ``fsync="always"`` after every record,
    ``"interval"`` (default) at most once per ``fsync_interval`` seconds, ``"never"`` leaves it to the
    OS. A process killed inside ``os.write`` can leave a partial last line; :func:`read_log` skips it
    (and counts it), and refuses a malformed line anywhere else (the file was edited or damaged).

Record (one JSON object per line)
    ``t`` (unix seconds), ``id`` (request id), ``task`` (``"multiple_choice"`` / ``"free_form"``),
    ``chat`` (the chat model's option log-probabilities; free-form: ``[log P(False), log P(True)]``),
    ``confidence`` (calibrated), ``answer`` (index of the chosen option), ``floored`` (letters that got
    the top-k floor), optionally ``base`` (the reference model's logits for the same question, for a
    ``--reference-rate`` sample) and ``prompt`` / ``text`` (only with ``--log-text``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)

FSYNC_POLICIES = ("always", "interval", "never")
SEGMENT_GLOB = "segment-*.jsonl"


class LogWriter:
    """Append records to a new segment of ``folder`` (thread-safe; see the module docstring)."""

    def __init__(self, folder: str | os.PathLike, *, fsync: str = "interval", fsync_interval: float = 1.0,
                 max_records: int = 1_000_000):
        if fsync not in FSYNC_POLICIES:
            raise InputError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create the log folder {self.folder}: {exc.strerror}; "
                             "choose a folder you can write to") from None
        self.fsync, self.fsync_interval, self.max_records = fsync, float(fsync_interval), int(max_records)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._n_segment = 0
        self._in_segment = 0
        self._last_sync = time.monotonic()
        self.n_written = 0
        self._open_segment()

    def _open_segment(self) -> None:
        if self._fd is not None:
            self._sync()
            os.close(self._fd)
        self._n_segment += 1
        ns = time.time_ns()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ns / 1e9)) + f"{ns % 1_000_000_000:09d}"
        name = f"segment-{stamp}-{os.getpid()}-{self._n_segment:04d}.jsonl"
        self.path = self.folder / name
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o666)
        self._in_segment = 0
        if self.fsync != "never":  # the new name itself must survive a power cut
            _fsync_dir(self.folder)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (one line, one ``os.write``)."""
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        with self._lock:
            if self._fd is None:
                raise InputError("the monitoring log is closed")
            if self._in_segment >= self.max_records:
                self._open_segment()
            view = memoryview(line)
            while view:  # os.write may write less than asked (signals, full pipes); finish the line
                n = os.write(self._fd, view)
                view = view[n:]
            self._in_segment += 1
            self.n_written += 1
            now = time.monotonic()
            if self.fsync == "always" or (self.fsync == "interval" and now - self._last_sync >= self.fsync_interval):
                self._sync()

    def _sync(self) -> None:
        if self._fd is not None and self.fsync != "never":
            os.fsync(self._fd)
            self._last_sync = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                self._sync()
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class LogData:
    """The records of a monitoring log as arrays, in time order.

    Attributes
    ----------
    t : ndarray (n,)
        Unix time of each record.
    chat : ndarray (n, k)
        The chat model's option log-probabilities, -inf padded to the largest k.
    confidence : ndarray (n,)
        Calibrated confidence served.
    base : ndarray (n, k)
        The reference model's logits, NaN rows where the record was not sampled.
    task : ndarray (n,) of str
    n_torn : int
        Partial last lines skipped (a process killed while writing).
    files : list of str
    """

    t: np.ndarray
    chat: np.ndarray
    confidence: np.ndarray
    base: np.ndarray
    task: np.ndarray
    n_torn: int
    files: list[str]

    def __len__(self) -> int:
        return len(self.t)

    @property
    def has_base(self) -> np.ndarray:
        return ~np.isnan(self.base[:, 0]) if len(self) else np.zeros(0, dtype=bool)


def segments(path: str | os.PathLike) -> list[Path]:
    """The segment files of a log folder (sorted by name: start time, pid, number), or one file."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise InputError(f"{p}: no such monitoring log; pass the folder given to `refcal serve --log`")
    files = sorted(p.glob(SEGMENT_GLOB))
    if not files:
        raise InputError(f"{p}: no log segments ({SEGMENT_GLOB}) in this folder; pass the folder given to "
                         "`refcal serve --log`")
    return files


def iter_records(path: str | os.PathLike, counter: list[int] | None = None) -> Iterator[dict[str, Any]]:
    """Yield the records of every segment; a partial last line of a segment is skipped (counted in
    ``counter[0]``); any other malformed line raises :class:`InputError` naming file and line."""
    for file in segments(path):
        with open(file, "rb") as fh:
            lines = fh.read().split(b"\n")
        last = len(lines) - 1  # after the final "\n" comes b"" (complete) or a torn tail
        for i, raw in enumerate(lines):
            if not raw:
                continue
            try:
                rec = json.loads(raw)
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except ValueError:
                if i == last:  # no newline after it: the writer was killed mid-line
                    if counter is not None:
                        counter[0] += 1
                    continue
                raise InputError(f"{file}:{i + 1}: not a monitoring record (malformed JSON); the log was edited "
                                 "or damaged: move that segment away") from None
            yield rec


def read_log(path: str | os.PathLike, *, chunk: int = 65536) -> LogData:
    """Read a monitoring log (folder or one segment) into :class:`LogData`, sorted by time."""
    counter = [0]
    ts: list[float] = []
    confs: list[float] = []
    tasks: list[str] = []
    chat_rows: list[list[float]] = []
    base_rows: list[list[float] | None] = []
    chat_blocks: list[np.ndarray] = []
    base_blocks: list[np.ndarray] = []
    kmax = 0

    def flush() -> None:  # lists of floats cost ~10x an array: convert every `chunk` records
        nonlocal chat_rows, base_rows
        if chat_rows:
            chat_blocks.append(_pad(chat_rows, kmax))
            base_blocks.append(_pad(base_rows, kmax))
            chat_rows, base_rows = [], []

    for n, rec in enumerate(iter_records(path, counter)):
        try:
            chat = rec["chat"]
            ts.append(float(rec["t"]))
            confs.append(float(rec["confidence"]))
            tasks.append(str(rec.get("task", "multiple_choice")))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{path}: record {n + 1} lacks t / chat / confidence; not a refcal monitoring "
                             "log") from None
        base = rec.get("base")
        kmax = max(kmax, len(chat), len(base) if base else 0)
        chat_rows.append(chat)
        base_rows.append(base)
        if len(chat_rows) >= chunk:
            flush()
    flush()
    if not ts:
        raise InputError(f"{path}: the log holds no records yet; send calibrated requests through `refcal serve`")
    chat_all = _stack(chat_blocks, kmax, -np.inf)
    base_all = _stack(base_blocks, kmax, np.nan)
    t = np.asarray(ts)
    order = np.argsort(t, kind="stable")
    return LogData(t=t[order], chat=chat_all[order], confidence=np.asarray(confs)[order], base=base_all[order],
                   task=np.asarray(tasks)[order], n_torn=counter[0], files=[str(f) for f in segments(path)])


def _pad(rows: list, k: int) -> np.ndarray:
    out = np.full((len(rows), k), np.nan)
    for i, row in enumerate(rows):
        if row is not None:
            out[i, : len(row)] = [(-math.inf if v is None else v) for v in row]
    return out


def _stack(blocks: list[np.ndarray], k: int, fill: float) -> np.ndarray:
    out = []
    for b in blocks:
        if b.shape[1] < k:
            b = np.concatenate([b, np.full((len(b), k - b.shape[1]), np.nan)], axis=1)
        out.append(b)
    arr = np.concatenate(out) if out else np.zeros((0, k))
    if fill == -np.inf:  # chat rows: missing options are -inf (the convention for logits)
        arr = np.where(np.isnan(arr), -np.inf, arr)
    else:  # base rows: keep NaN for unsampled rows, -inf for missing options of sampled ones
        sampled = ~np.isnan(arr[:, 0]) if len(arr) else np.zeros(0, dtype=bool)
        arr[sampled] = np.where(np.isnan(arr[sampled]), -np.inf, arr[sampled])
    return arr


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
