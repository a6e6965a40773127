"""Score files read in blocks of rows, in bounded memory (the streamed fit and metrics, :mod:`refcal.streaming`).

Rows are checked as :func:`refcal.scores.load_scores` checks them (the same line parser and column checks,
:mod:`refcal.scores.files`); every block is validated like a whole file, and ids unique across blocks are
checked in bounded memory (:class:`IdCheck`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, MismatchError, ScoreFileError
from .files import parquet_columns, parse_score_line, score_file_magic
from .join import join_scores
from .scoreset import QUESTION_HASH, ScoreSet

#: questions per block: large enough for numpy to be efficient, small enough for bounded memory
BLOCK_ROWS = 65536
#: the one extra column kept in blocks: :func:`refcal.scores.join_scores` checks it (same question texts)
_HASH_COL = QUESTION_HASH


class NotStreamable(InputError):
    """The file is not a native refcal score file (e.g. an lm-evaluation-harness log); load it in memory."""


class OrderMismatch(MismatchError):
    """Base and chat files list their questions in different orders; join them in memory instead."""


def is_streamable(path: str | Path) -> bool:
    """True for Parquet and for JSON Lines whose first object has ``id`` and ``logits`` keys."""
    if score_file_magic(Path(path)) == b"PAR1":
        return True
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for line in fh:
            if line.strip():
                if not line.lstrip().startswith("{"):
                    return False  # e.g. an lm-eval 0.4.0-0.4.2 JSON array: the in-memory readers know it
                try:
                    obj = json.loads(line)
                except (json.JSONDecodeError, RecursionError):
                    return True  # let the block reader report the error with its line number
                return isinstance(obj, dict) and "logits" in obj and "id" in obj
    return False


def iter_blocks(path: str | Path, block_rows: int = BLOCK_ROWS) -> Iterator[ScoreSet]:
    """Validated :class:`ScoreSet` blocks of exactly ``block_rows`` questions (the last may be shorter).

    Every block is checked like a whole file (:meth:`ScoreSet.validate`); ids unique across blocks are
    checked by the consumers here (:class:`IdCheck`). Extra columns are dropped.
    """
    path = Path(path)
    if not is_streamable(path):
        raise NotStreamable(f"{path}: not a refcal score file; it is read in memory")
    if score_file_magic(path) == b"PAR1":
        yield from _parquet_blocks(path, block_rows)
    else:
        yield from _jsonl_blocks(path, block_rows)


def _jsonl_blocks(path: Path, block_rows: int) -> Iterator[ScoreSet]:
    src = str(path)
    ids: list[Any] = []
    logits: list[Any] = []
    labels: list[Any] = []
    hashes: list[Any] = []
    with open(path, encoding="utf-8-sig", errors="strict") as fh:
        ln = 0
        while True:
            try:
                line = fh.readline()
            except UnicodeDecodeError:
                raise ScoreFileError(f"{src}: not UTF-8 text nor Parquet; pass a .parquet or .jsonl score file") from None
            ln += 1
            if line and line.strip():
                obj = parse_score_line(line, src, ln)
                ids.append(obj["id"])
                logits.append(obj["logits"])
                labels.append(obj.get("label"))
                hashes.append(obj.get(_HASH_COL))
            if len(ids) == block_rows or (not line and ids):
                cols = {_HASH_COL: hashes} if any(h is not None for h in hashes) else None
                yield ScoreSet.from_rows(ids, logits, labels, meta={"source": src}, columns=cols, source=src)
                ids, logits, labels, hashes = [], [], [], []
            if not line:
                break


def _parquet_blocks(path: Path, block_rows: int) -> Iterator[ScoreSet]:
    import pyarrow as pa  # a core dependency, imported on use to keep `import refcal` light
    import pyarrow.parquet as pq

    src = str(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ScoreFileError(f"{src}: cannot read Parquet ({e}); re-create it with `refcal score`") from None
    names = pf.schema_arrow.names
    parquet_columns(names, src)
    cols = [c for c in ("id", "logits", "label", _HASH_COL) if c in names]
    meta = {"source": src}
    buf: list[Any] = []
    n_buf = 0
    # One reader per row group: a single iter_batches over the whole file keeps (pyarrow 26) memory of every
    # batch it has produced until it finishes, about the file's decoded size.
    batches = (batch for g in range(pf.num_row_groups)
               for batch in pf.iter_batches(batch_size=block_rows, row_groups=[g], columns=cols, use_threads=False))
    for batch in batches:
        buf.append(batch)
        n_buf += batch.num_rows
        while n_buf >= block_rows:
            table = pa.Table.from_batches(buf)
            yield _arrow_block(table.slice(0, block_rows), meta, src)
            rest = table.slice(block_rows)
            buf, n_buf = rest.to_batches(), rest.num_rows
    if n_buf:
        yield _arrow_block(pa.Table.from_batches(buf), meta, src)


def _arrow_block(table: Any, meta: dict[str, Any], src: str) -> ScoreSet:
    """One block as a ScoreSet: fast numpy conversion for the usual column types, else via Python lists
    (:meth:`ScoreSet.from_rows`, the in-memory reader's checks and messages)."""
    import pyarrow as pa  # a core dependency, imported on use to keep `import refcal` light
    import pyarrow.compute as pc

    ids = table.column("id").to_pylist()
    lg = table.column("logits").combine_chunks()
    lab = table.column("label").combine_chunks() if "label" in table.column_names else None
    fast = (
        pa.types.is_list(lg.type) and pa.types.is_floating(lg.type.value_type) and lg.null_count == 0
        and (lab is None or pa.types.is_integer(lab.type))
        and all(isinstance(i, str) for i in ids)
    )
    if not fast:
        d = table.to_pydict()
        extra = {_HASH_COL: d[_HASH_COL]} if _HASH_COL in d else None
        return ScoreSet.from_rows(d["id"], d["logits"], d.get("label"), meta=meta, columns=extra, source=src)
    n = len(ids)
    lengths = pc.list_value_length(lg).to_numpy().astype(np.int64)
    values = pc.list_flatten(lg).cast(pa.float64()).fill_null(-np.inf).to_numpy()
    k = int(lengths.max()) if n else 0
    if n and (lengths == k).all():
        mat = values.reshape(n, k).copy()
    else:
        mat = np.full((n, k), -np.inf)
        rows = np.repeat(np.arange(n), lengths)
        starts = np.cumsum(lengths) - lengths
        mat[rows, np.arange(len(values)) - np.repeat(starts, lengths)] = values
    labels = np.full(n, -1, np.int64) if lab is None else lab.fill_null(-1).to_numpy().astype(np.int64)
    extra = {}
    if _HASH_COL in table.column_names:
        extra[_HASH_COL] = np.asarray(table.column(_HASH_COL).to_pylist(), dtype=object)
    out = ScoreSet(np.array(ids, dtype=object), mat, labels, lengths, dict(meta), extra)
    if n == 0:
        raise ScoreFileError(f"{src}: no questions found; a score file needs at least one row")
    out.validate(src)
    return out


class IdCheck:
    """Ids unique across blocks, in bounded memory: 64-bit hashes of the ids, sorted once at the end; a
    repeated hash is confirmed on the ids themselves by a second pass (hash collisions are not errors)."""

    def __init__(self) -> None:
        self._hashes: list[np.ndarray] = []

    def add(self, ids: np.ndarray) -> None:
        self._hashes.append(np.fromiter((hash(i) for i in ids), np.int64, len(ids)))

    def finish(self, path: Path, block_rows: int) -> None:
        h = np.sort(np.concatenate(self._hashes)) if self._hashes else np.empty(0, np.int64)
        self._hashes = []
        dup = h[1:][h[1:] == h[:-1]]
        if not dup.size:
            return
        suspects = set(dup.tolist())
        counts: dict[str, int] = {}
        for block in iter_blocks(path, block_rows):
            for i in block.ids:
                if hash(i) in suspects:
                    counts[i] = counts.get(i, 0) + 1
        for i, c in counts.items():
            if c > 1:
                raise ScoreFileError(f"{path}: question id {i!r} appears {c} times; ids must be unique")


def joined_blocks(base_path: Path, chat_path: Path, block_rows: int) -> Iterator[Any]:
    """Base and chat blocks joined on id (:func:`refcal.scores.join_scores` per block)."""
    chat_blocks = iter_blocks(chat_path, block_rows)
    ids = IdCheck()
    for b in iter_blocks(base_path, block_rows):
        c = next(chat_blocks, None)
        if c is None or len(c) != len(b) or not np.array_equal(c.ids, b.ids):
            raise OrderMismatch(f"{base_path} and {chat_path} do not list the same questions in the same order")
        ids.add(c.ids)
        yield join_scores(b, c)
    if next(chat_blocks, None) is not None:
        raise OrderMismatch(f"{chat_path} has more questions than {base_path}")
    ids.finish(chat_path, block_rows)


def labelled_blocks(path: Path, block_rows: int) -> Iterator[ScoreSet]:
    ids = IdCheck()
    for blk in iter_blocks(path, block_rows):
        if (blk.labels < 0).any():
            r = int(np.flatnonzero(blk.labels < 0)[0])
            raise InputError(
                f"{path}: question {blk.ids[r]!r} has no label; temperature scaling needs a label for every "
                "question (use DACA for label-free calibration)"
            )
        ids.add(blk.ids)
        yield blk
    ids.finish(path, block_rows)
