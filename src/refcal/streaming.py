"""Fit temperatures and compute metrics on score files too large to hold in memory.

:func:`fit_temperature_streaming` and :func:`evaluate_streaming` read Parquet (by record batches) and JSON
Lines (by lines) in blocks of ``block_rows`` questions and keep only what the solvers and metrics need:

* temperature fits (DACA, naive alignment, labelled temperature scaling) keep, for each question that
  counts, its centred chat logits (``k`` float64) — the Newton iteration on ``beta = 1/tau`` sums the
  objective's derivatives over these blocks (:func:`refcal.calibrate._solvers.temperature_moments`) and
  the per-question target terms are summed while reading;
* metrics are :class:`refcal.metrics.sums.MetricSums` (every key of :func:`refcal.metrics.evaluate`):
  each question's confidence (float64) and correctness (bool) for the rank-based ones (AECE, debiased and
  smooth ECE, AUROC, AURC) and sums for the others (ECE/MCE and classwise bins, Brier and its
  decomposition, NLL, accuracy).

The results equal the in-memory path (:func:`refcal.load_scores` + :class:`refcal.calibrate.DACA` /
:func:`refcal.metrics.evaluate`) up to the order of floating-point additions (relative ~1e-15).

Base and chat files are joined block by block, which needs both to list the questions in the same
order (as ``refcal score`` writes them for one data set). When they do not, :class:`OrderMismatch` is
raised and callers fall back to the in-memory join. Only native refcal score files stream; other formats
(lm-evaluation-harness logs) raise :class:`NotStreamable`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._math import log_softmax
from .errors import FitError, InputError, MismatchError, ScoreFileError
from .metrics.sums import MetricSums
from .scores import ScoreSet, join_scores, parse_score_line, score_file_magic

log = logging.getLogger(__name__)

#: questions per block: large enough for numpy to be efficient, small enough for bounded memory
BLOCK_ROWS = 65536
#: the one extra column kept in blocks: :func:`refcal.scores.join_scores` checks it (same question texts)
_HASH_COL = "question_hash"

__all__ = ["BLOCK_ROWS", "NotStreamable", "OrderMismatch", "StreamedFit", "StreamedMetrics", "evaluate_streaming",
           "fit_temperature_streaming", "iter_blocks", "is_streamable"]


class NotStreamable(InputError):
    """The file is not a native refcal score file (e.g. an lm-evaluation-harness log); load it in memory."""


class OrderMismatch(MismatchError):
    """Base and chat files list their questions in different orders; join them in memory instead."""


# ---------------------------------------------------------------------------------------------- reading
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
    checked by the consumers here (:class:`_IdCheck`). Extra columns are dropped.
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
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = str(path)
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise ScoreFileError(f"{src}: cannot read Parquet ({e}); re-create it with `refcal score`") from None
    names = pf.schema_arrow.names
    for key in ("id", "logits"):
        if key not in names:
            raise ScoreFileError(f"{src}: missing column {key!r}; a score file needs 'id' and 'logits' (found: {names})")
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
    import pyarrow as pa
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


class _IdCheck:
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


def _joined_blocks(base_path: Path, chat_path: Path, block_rows: int) -> Iterator[Any]:
    """Base and chat blocks joined on id (:func:`refcal.scores.join_scores` per block)."""
    chat_blocks = iter_blocks(chat_path, block_rows)
    ids = _IdCheck()
    for b in iter_blocks(base_path, block_rows):
        c = next(chat_blocks, None)
        if c is None or len(c) != len(b) or not np.array_equal(c.ids, b.ids):
            raise OrderMismatch(f"{base_path} and {chat_path} do not list the same questions in the same order")
        ids.add(c.ids)
        yield join_scores(b, c)
    if next(chat_blocks, None) is not None:
        raise OrderMismatch(f"{chat_path} has more questions than {base_path}")
    ids.finish(chat_path, block_rows)


# ---------------------------------------------------------------------------------------------- fitting
@dataclass
class StreamedFit:
    """A fitted calibrator plus the counts the CLI prints."""

    calibrator: Any
    n: int
    n_agree: int
    n_labelled: int
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)


def fit_temperature_streaming(
    chat_path: str | Path,
    base_path: str | Path | None = None,
    *,
    method: str = "daca",
    block_rows: int = BLOCK_ROWS,
    **hyper: Any,
) -> StreamedFit:
    """Fit a temperature-scaling calibrator from score files, block by block.

    Parameters
    ----------
    chat_path : path
        Chat-model score file (Parquet or JSON Lines).
    base_path : path, optional
        Base-model score file, same questions in the same order; required for ``daca`` and ``naive``.
    method : {"daca", "naive", "ts"}
        ``ts`` is labelled temperature scaling on the chat file's labels (every label must be known).
    **hyper
        ``max_iter``, ``tol``, ``temperature_bounds``, ``on_bound`` of the calibrator.

    Returns
    -------
    StreamedFit
        ``calibrator`` equals ``DACA().fit(...)`` (etc.) on the loaded files up to rounding.

    Raises
    ------
    OrderMismatch
        The two files list their questions in different orders (use the in-memory path).
    NotStreamable
        A file is not a native refcal score file.
    """
    from .calibrate import DACA, NaiveAlignment, TemperatureScaling
    from .calibrate._solvers import (
        centred_logits,
        check_not_all_tied,
        newton_temperature,
        target_sums,
        temperature_moments,
    )
    from .calibrate.alignment import agreement_mask

    if method not in ("daca", "naive", "ts"):
        raise InputError(f"method must be 'daca', 'naive' or 'ts', got {method!r}")
    if method != "ts" and base_path is None:
        raise InputError(f"method {method!r} needs a base-model score file")
    if method == "ts":
        cal = TemperatureScaling(**hyper)
    else:
        cal = (DACA if method == "daca" else NaiveAlignment)(scaling="temperature", **hyper)
    cal._check_params()
    chat_path = Path(chat_path)

    gcts: list[np.ndarray] = []  # centred chat logits (k_b, m_b) of the questions that count
    w_ep = const = 0.0
    any_nonzero = False
    n = n_agree = n_labelled = 0
    k_max = 0
    if method == "ts":
        blocks: Iterator[Any] = _labelled_blocks(chat_path, block_rows)
    else:
        blocks = _joined_blocks(Path(base_path), chat_path, block_rows)
    for blk in blocks:
        if method == "ts":
            g = blk.logits
            y = blk.labels
            logp = np.full(g.shape, -np.inf)
            logp[np.arange(len(y)), y] = 0.0
            keep = np.ones(len(y), bool)
        else:
            f, g = blk.base, blk.chat
            agree = agreement_mask(f, g)
            n_agree += int(agree.sum())
            keep = agree if method == "daca" else np.ones(len(agree), bool)
            logp = log_softmax(f[keep]) if keep.any() else None
        n += g.shape[0]
        k_max = max(k_max, g.shape[1])  # as in memory: k of the joined arrays, not of the kept rows
        n_labelled += int((blk.labels >= 0).sum())
        if not keep.any():
            continue
        g_keep = g[keep]
        if method == "ts":
            logp = logp[keep]
        gct, gst = centred_logits(g_keep)
        any_nonzero = any_nonzero or bool(np.any(gst))
        s_ep, s_const = target_sums(np.ascontiguousarray(logp.T), gst, 1.0)
        w_ep += s_ep
        const += s_const
        gcts.append(gct)
        del g_keep, gst, logp
    if n == 0:
        raise ScoreFileError(f"{chat_path}: no questions found; a score file needs at least one row")
    if method == "daca" and n_agree == 0:
        raise FitError(
            "no question where base and chat pick the same answer; DACA needs agreement examples: add "
            "questions, or check that both score files list the options in the same order"
        )
    check_not_all_tied(any_nonzero)
    inv_n = 1.0 / n
    w_ep *= inv_n
    const *= inv_n

    def evaluate(beta: float) -> tuple[float, float, float]:
        s_eq = s_var = s_log = 0.0
        for gct in gcts:
            gst = np.where(gct == -np.inf, 0.0, gct)
            a, b, c = temperature_moments(beta, gct, gst, gst * gst, 1.0)
            s_eq, s_var, s_log = s_eq + a, s_var + b, s_log + c
        return s_eq * inv_n - w_ep, s_var * inv_n, const + s_log * inv_n - beta * w_ep

    lo, hi = cal.temperature_bounds
    res = newton_temperature(evaluate, bounds=(float(lo), float(hi)), max_iter=cal.max_iter, tol=cal.tol)
    cal.n_ = n
    if method != "ts":
        cal.n_agree_ = n_agree
        cal.agreement_rate_ = n_agree / n
    cal.n_options_ = k_max
    cal._store(res)
    meta = {"chat": _file_meta(chat_path)}
    if base_path is not None:
        meta["base"] = _file_meta(Path(base_path))
    return StreamedFit(cal, n, n_agree, n_labelled, meta)


def _labelled_blocks(path: Path, block_rows: int) -> Iterator[ScoreSet]:
    ids = _IdCheck()
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


def _file_meta(path: Path) -> dict[str, Any]:
    """File-level metadata without reading the rows (Parquet key ``refcal``), plus ``source``."""
    meta: dict[str, Any] = {}
    if score_file_magic(path) == b"PAR1":
        import pyarrow.parquet as pq

        raw = (pq.read_schema(path).metadata or {}).get(b"refcal")
        if raw:
            try:
                meta = json.loads(raw)
            except json.JSONDecodeError:
                meta = {}
    meta.setdefault("source", str(path))
    return meta


# ---------------------------------------------------------------------------------------------- metrics
@dataclass
class StreamedMetrics:
    """What :func:`evaluate_streaming` found.

    Attributes
    ----------
    n : int
        Questions.
    n_options : numpy integer
        Largest number of options (``ScoreSet.n_options`` reduces to the same with ``.max()``).
    metrics : dict
        ``{"vanilla": {...}, "calibrated": {...}}`` with the keys of :func:`refcal.metrics.evaluate`.
    """

    n: int
    n_options: np.integer
    metrics: dict[str, dict[str, float]]


def evaluate_streaming(
    path: str | Path, *, calibrator: Any = None, n_bins: int = 10, block_rows: int = BLOCK_ROWS,
) -> StreamedMetrics:
    """Metrics of a labelled score file, before (``vanilla``) and after a calibrator (``calibrated``).

    Raises
    ------
    InputError
        Some question has no label (the message counts them).
    """
    from ._math import softmax

    path = Path(path)
    acc = {"vanilla": MetricSums(n_bins)}
    if calibrator is not None:
        acc["calibrated"] = MetricSums(n_bins)
    ids = _IdCheck()
    n = n_missing = k = 0
    for blk in iter_blocks(path, block_rows):
        ids.add(blk.ids)
        n += len(blk)
        k = max(k, int(blk.n_options.max()))
        missing = blk.labels < 0
        if missing.any() or n_missing:
            n_missing += int(missing.sum())
            continue
        acc["vanilla"].add(softmax(blk.logits), blk.labels)
        if calibrator is not None:
            acc["calibrated"].add(calibrator.predict_proba(blk.logits), blk.labels)
    ids.finish(path, block_rows)
    if n_missing:
        raise InputError(
            f"{path}: {n_missing} of {n} questions have no label; evaluation needs labels "
            "(use `refcal fit`/`apply` for label-free calibration)"
        )
    return StreamedMetrics(n, np.int64(k), {name: a.result() for name, a in acc.items()})
