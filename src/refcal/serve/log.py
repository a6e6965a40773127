"""The monitoring log: an append-only, crash-safe store of calibrated requests (JSONL segments).

Layout: a folder of segments ``segment-<UTC start time, ns>-<pid>-<n>.jsonl``. Each writer (one per proxy
process) opens a **new** segment when it starts and when the current one reaches ``max_records``, and
never reopens an old one, so a torn line can only be the last line of a segment.

Crash safety
    Each record is one line, written with a single ``os.write`` on a file opened with ``O_APPEND``
    (no user-space buffer: a record that returned from :meth:`LogWriter.write` survives ``kill -9`` of
    the process). ``fsync`` makes it survive a power cut too: ``fsync="always"`` after every record,
    ``"interval"`` (default) once per ``fsync_interval`` seconds from a background thread, ``"never"`` leaves it to the
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
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
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
        self._dirty = False
        self.n_written = 0
        self._open_segment()
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if self.fsync == "interval":  # fsync off the writer's thread (an event loop must not wait on the disk)
            self._syncer = threading.Thread(target=self._sync_loop, daemon=True, name="refcal-log-fsync")
            self._syncer.start()

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
            self._dirty = True
            if self.fsync == "always":
                self._sync()

    def _sync(self) -> None:
        if self._fd is not None and self.fsync != "never":
            os.fsync(self._fd)
            self._dirty = False

    def _sync_loop(self) -> None:
        """``fsync="interval"``: every ``fsync_interval`` s, fsync a duplicate of the segment's descriptor if
        records were written (the lock is held only to duplicate it, never during the fsync)."""
        while not self._stop.wait(self.fsync_interval):
            with self._lock:
                if self._fd is None or not self._dirty:
                    continue
                fd, self._dirty = os.dup(self._fd), False
            try:
                os.fsync(fd)
            except OSError as exc:  # pragma: no cover - a disk error; the records are still in the file
                log.warning("monitoring log fsync failed: %s", exc.strerror)
            finally:
                os.close(fd)

    def close(self) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
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
    task : ndarray (n,) of str
    ref_index : ndarray (m,) of int
        Increasing indices of the records with a reference sample.
    ref_base : ndarray (m, k)
        The reference model's logits of those records (-inf padded); only the sampled rows are stored.
    n_torn : int
        Partial last lines skipped (a process killed while writing).
    files : list of str
    """

    t: np.ndarray
    chat: np.ndarray
    confidence: np.ndarray
    task: np.ndarray
    ref_index: np.ndarray
    ref_base: np.ndarray
    n_torn: int = 0
    files: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t)

    @property
    def has_base(self) -> np.ndarray:
        """Boolean (n,): which records have a reference sample."""
        out = np.zeros(len(self), dtype=bool)
        out[self.ref_index] = True
        return out

    @property
    def base(self) -> np.ndarray:
        """(n, k) reference logits, NaN rows where the record was not sampled (a full copy: for small logs)."""
        out = np.full(self.chat.shape, np.nan)
        out[self.ref_index] = self.ref_base
        return out

    def base_of(self, index: np.ndarray) -> np.ndarray:
        """Reference logits of the sampled records ``index`` (a subset of :attr:`ref_index`)."""
        return self.ref_base[np.searchsorted(self.ref_index, index)]

    def select(self, mask: np.ndarray) -> LogData:
        """The records where ``mask`` (bool, (n,)) holds, in the same order."""
        keep = mask[self.ref_index]
        new_pos = np.cumsum(mask) - 1
        return LogData(self.t[mask], self.chat[mask], self.confidence[mask], self.task[mask],
                       new_pos[self.ref_index[keep]], self.ref_base[keep], self.n_torn, self.files)

    @classmethod
    def from_arrays(cls, t: np.ndarray, chat: np.ndarray, confidence: np.ndarray, base: np.ndarray | None = None,
                    task: np.ndarray | str = "multiple_choice") -> LogData:
        """Build from arrays (``base`` with NaN rows where not sampled), e.g. for tests and simulations."""
        t, chat = np.asarray(t, dtype=np.float64), np.asarray(chat, dtype=np.float64)
        base = np.full(chat.shape, np.nan) if base is None else np.asarray(base, dtype=np.float64)
        sampled = ~np.isnan(base).all(axis=1)
        tasks = np.full(len(t), task, dtype=object) if isinstance(task, str) else np.asarray(task, dtype=object)
        return cls(t, chat, np.asarray(confidence, dtype=np.float64), tasks, np.flatnonzero(sampled), base[sampled])


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


#: the record fields the monitor reads (others, e.g. id, answer, prompt, are skipped by the fast reader)
_SCHEMA_FIELDS = (("t", "float64"), ("chat", "list"), ("confidence", "float64"), ("task", "string"),
                  ("base", "list"))


def read_log(path: str | os.PathLike) -> LogData:
    """Read a monitoring log (folder or one segment) into :class:`LogData`, sorted by time.

    Segments are parsed by pyarrow's streaming JSON reader (C++, a few seconds per million records, one
    block in memory at a time); a partial last line is skipped and counted as in :func:`iter_records`, which
    also names the line of any other malformed record.
    """
    files = segments(path)
    parts: dict[str, list[np.ndarray]] = {"t": [], "confidence": [], "task": [], "chat": [], "base": [],
                                          "ref": []}
    n_torn, n = 0, 0
    for file in files:
        batches, torn = _read_segment(file)
        n_torn += torn
        for batch in batches:
            for name in ("t", "chat", "confidence"):
                if batch.column(name).null_count:
                    raise InputError(f"{file}: {batch.column(name).null_count} record(s) lack {name!r}; not a refcal "
                                     "monitoring log")
            parts["t"].append(batch.column("t").to_numpy())
            parts["confidence"].append(batch.column("confidence").to_numpy())
            codes = batch.column("task").fill_null("multiple_choice").dictionary_encode()
            names = np.asarray(codes.dictionary.to_pylist(), dtype=object)
            parts["task"].append(names[codes.indices.to_numpy(zero_copy_only=False)])
            parts["chat"].append(_lists_to_2d(batch.column("chat")))
            base = _lists_to_2d(batch.column("base"))
            sampled = ~np.isnan(base).all(axis=1) if base.shape[1] else np.zeros(len(base), dtype=bool)
            parts["base"].append(base[sampled])  # only the sampled rows: most records have none
            parts["ref"].append(np.flatnonzero(sampled) + n)
            n += batch.num_rows
    if not n:
        raise InputError(f"{path}: the log holds no records yet; send calibrated requests through `refcal serve`")
    k = max(x.shape[1] for x in parts["chat"] + parts["base"])
    chat = np.concatenate([_widen(x, k) for x in parts.pop("chat")])
    chat[np.isnan(chat)] = -np.inf  # missing options (and -inf written as null) of the chat rows
    ref_base = np.concatenate([_widen(x, k) for x in parts.pop("base")])
    ref_base[np.isnan(ref_base)] = -np.inf
    ref_index = np.concatenate(parts["ref"])
    t = np.concatenate(parts["t"])
    confidence, task = np.concatenate(parts["confidence"]), np.concatenate(parts["task"])
    order = np.argsort(t, kind="stable")
    if np.any(order[1:] < order[:-1]):  # not in time order (several writers): sort, and the sample with it
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        new_ref = rank[ref_index]
        by = np.argsort(new_ref, kind="stable")
        t, chat, confidence, task = t[order], chat[order], confidence[order], task[order]
        ref_index, ref_base = new_ref[by], ref_base[by]
    return LogData(t=t, chat=chat, confidence=confidence, task=task, ref_index=ref_index, ref_base=ref_base,
                   n_torn=n_torn, files=[str(f) for f in files])


def _read_segment(file: Path) -> tuple[Any, int]:
    """(record batches of the monitor's fields, torn lines skipped) of one segment."""
    import pyarrow as pa
    import pyarrow.json as pj

    types = {"float64": pa.float64(), "string": pa.string(), "list": pa.list_(pa.float64())}
    schema = pa.schema([(name, types[kind]) for name, kind in _SCHEMA_FIELDS])
    opts = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    with open(file, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 1))
        last = fh.read(1)
    if size == 0:
        return [], 0
    if last == b"\n":  # the usual case: streamed block by block, never all of it at once
        return _parse(file, file, opts), 0
    data = file.read_bytes()
    torn = 0
    cut = data.rfind(b"\n") + 1  # the writer was killed inside its last write
    try:
        complete = isinstance(json.loads(data[cut:]), dict)
    except ValueError:
        complete = False
    if complete:
        data += b"\n"
    else:
        data, torn = data[:cut], 1
    if not data.strip():
        return [], torn
    return _parse(pa.BufferReader(data), file, opts), torn


def _parse(source: Any, file: Path, opts: Any) -> Any:
    """Yield the record batches of ``source``; a parse error names the malformed line (:func:`iter_records`)."""
    import pyarrow as pa
    import pyarrow.json as pj

    try:
        yield from pj.open_json(source, parse_options=opts, read_options=pj.ReadOptions(block_size=1 << 20))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        for _ in iter_records(file):
            pass
        raise InputError(f"{file}: not a refcal monitoring log ({str(exc).splitlines()[0]})") from None


def _lists_to_2d(col: Any) -> np.ndarray:
    """A pyarrow list<double> column as an (n, k) float array: NaN for null lists, missing and null values."""
    import pyarrow.compute as pc

    arr = col.combine_chunks() if hasattr(col, "combine_chunks") else col
    n = len(arr)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    k = int(lengths.max()) if n else 0
    out = np.full((n, k), np.nan)
    if k:
        values = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.float64)
        rows = np.repeat(np.arange(n), lengths)
        starts = np.cumsum(lengths) - lengths
        cols = np.arange(len(values)) - np.repeat(starts, lengths)
        out[rows, cols] = values
    return out


def _widen(x: np.ndarray, k: int) -> np.ndarray:
    return x if x.shape[1] == k else np.concatenate([x, np.full((len(x), k - x.shape[1]), np.nan)], axis=1)


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
