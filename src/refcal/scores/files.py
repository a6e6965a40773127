"""Reading and naming score files: Parquet and JSON Lines (native) and lm-eval samples files (by content).

The one reader of refcal's own files: :func:`load_scores` reads a whole file; :mod:`refcal.scores.blocks`
reads it in blocks with the same row checks (:func:`parse_score_line`, :func:`parquet_columns`,
:func:`file_meta`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError, ScoreFileError
from .lmeval import is_lmeval_log, read_lmeval
from .scoreset import _META_KEY, _RESERVED, ScoreSet

#: suffixes :meth:`ScoreSet.save` knows (any other suffix is written as Parquet)
SCORE_SUFFIXES = (".parquet", ".jsonl", ".json", ".ndjson")


def check_output_path(path: str | os.PathLike) -> Path:
    """Check, before any work is done, that ``path`` can name a score file to write.

    Raises
    ------
    ScoreFileError
        ``path`` is an existing directory or does not end in one of :data:`SCORE_SUFFIXES`.
    """
    path = Path(path)
    if path.is_dir():
        raise ScoreFileError(f"{path}: is a directory; pass a file name ending in .parquet or .jsonl")
    if path.suffix.lower() not in SCORE_SUFFIXES:
        raise ScoreFileError(
            f"{path}: unknown score file type {path.suffix or '(no suffix)'!r}; end the name in .parquet or .jsonl"
        )
    return path


def score_file_magic(path: Path) -> bytes:
    """The first 4 bytes of a score file (``b"PAR1"`` for Parquet), after checking it can be read.

    Raises
    ------
    ScoreFileError
        The file is missing, a directory, empty or unreadable.
    """
    src = str(path)
    if not path.exists():
        raise ScoreFileError(f"{src}: no such file; pass a .parquet or .jsonl score file (see `refcal score`)")
    if path.is_dir():
        raise ScoreFileError(f"{src}: is a directory; pass a .parquet or .jsonl score file")
    if path.stat().st_size == 0:
        raise ScoreFileError(f"{src}: the file is empty; re-create it with `refcal score`")
    try:
        with open(path, "rb") as fh:
            return fh.read(4)
    except OSError as e:
        raise ScoreFileError(f"{src}: cannot read it ({e.strerror}); check its permissions") from None


def load_scores(path: str | os.PathLike, *, lmeval_metric: str | None = None) -> ScoreSet:
    """Read a score file (Parquet or JSON Lines) and validate it.

    lm-evaluation-harness ``--log_samples`` files of multiple-choice tasks are recognised by their content
    and read too (see :mod:`refcal.scores.lmeval`); ``lmeval_metric`` (``"acc"``, the default,
    ``"acc_norm"`` or ``"acc_bytes"``) picks which of lm-eval's rankings their logits reproduce.

    Raises
    ------
    ScoreFileError
        The file is missing, empty, malformed, or breaks an invariant (see :class:`ScoreSet`).
    InputError
        ``lmeval_metric`` is given for a file that is not an lm-eval samples file, or is unknown.
    """
    path = Path(path)
    src = str(path)
    magic = score_file_magic(path)
    if magic != b"PAR1" and is_lmeval_log(path):
        return read_lmeval(path, metric=lmeval_metric or "acc")
    if lmeval_metric is not None:
        raise InputError(f"{src}: lmeval_metric applies only to lm-evaluation-harness samples files; leave it out")
    if magic == b"PAR1":
        return _read_parquet(path)
    return _read_jsonl(path)


def _read_jsonl(path: Path) -> ScoreSet:
    src = str(path)
    ids, logits, labels = [], [], []
    extra: dict[str, list[Any]] = {}
    meta: dict[str, Any] = {"source": src}
    # utf-8-sig: files saved by Windows editors start with a byte-order mark that is not part of the JSON
    with open(path, encoding="utf-8-sig", errors="strict") as fh:
        try:
            lines = fh.read().splitlines()
        except UnicodeDecodeError:
            raise ScoreFileError(f"{src}: not UTF-8 text nor Parquet; pass a .parquet or .jsonl score file") from None
    for ln, line in enumerate(lines, 1):
        if not line.strip():
            continue
        obj = parse_score_line(line, src, ln)
        ids.append(obj["id"])
        logits.append(obj["logits"])
        labels.append(obj.get("label"))
        for key, v in obj.items():
            if key in _RESERVED:
                continue
            extra.setdefault(key, [None] * (len(ids) - 1)).append(v)
        for col in extra.values():
            if len(col) < len(ids):
                col.append(None)
    return ScoreSet.from_rows(ids, logits, labels, meta=meta, columns=extra, source=src)


def parse_score_line(line: str, src: str, ln: int) -> dict[str, Any]:
    """One JSON Lines row of a score file, checked: an object with ``id``, a list of numbers (or null) as
    ``logits`` and an integer or null ``label``. Raises :class:`ScoreFileError` naming ``src:ln``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ScoreFileError(f"{src}:{ln}: not valid JSON ({e.msg}); each line must be one JSON object") from None
    except RecursionError:
        raise ScoreFileError(f"{src}:{ln}: JSON nested too deeply; each line must be one flat JSON object "
                             "like {\"id\": ..., \"logits\": [...]}") from None
    if not isinstance(obj, dict):
        raise ScoreFileError(f"{src}:{ln}: expected a JSON object like {{\"id\": ..., \"logits\": [...]}}")
    missing = [k for k in ("id", "logits") if k not in obj]
    if missing:
        raise ScoreFileError(
            f"{src}:{ln}: missing key {missing[0]!r}; each line needs \"id\" and \"logits\" (found keys: {sorted(obj)})"
        )
    if not isinstance(obj["logits"], list):
        raise ScoreFileError(f"{src}:{ln}: 'logits' must be a list of numbers")
    for j, v in enumerate(obj["logits"]):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ScoreFileError(f"{src}:{ln}: logit {j} is {v!r}, not a number")
    lab = obj.get("label")
    if lab is not None and (isinstance(lab, bool) or not isinstance(lab, (int, float))):
        raise ScoreFileError(f"{src}:{ln}: question {obj['id']!r}: label {lab!r} must be an integer option index "
                             "or null")
    return obj


def parquet_columns(names: list[str], src: str) -> None:
    """Check that a Parquet file's columns include ``id`` and ``logits``; raise :class:`ScoreFileError` if not."""
    for key in ("id", "logits"):
        if key not in names:
            raise ScoreFileError(f"{src}: missing column {key!r}; a score file needs 'id' and 'logits' (found: {names})")


def _meta_of(schema_metadata: dict | None, src: str) -> dict[str, Any]:
    """File-level metadata stored under the Parquet key ``refcal`` (empty when absent or unreadable), plus
    ``source``."""
    meta: dict[str, Any] = {}
    raw = (schema_metadata or {}).get(_META_KEY)
    if raw:
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            meta = {}
    meta.setdefault("source", src)
    return meta


def file_meta(path: str | os.PathLike) -> dict[str, Any]:
    """File-level metadata without reading the rows (Parquet key ``refcal``; JSON Lines have none), plus
    ``source``."""
    path = Path(path)
    if score_file_magic(path) == b"PAR1":
        import pyarrow.parquet as pq  # pyarrow is a core dependency, imported on use to keep `import refcal` light

        return _meta_of(pq.read_schema(path).metadata, str(path))
    return {"source": str(path)}


def _read_parquet(path: Path) -> ScoreSet:
    import pyarrow as pa  # pyarrow is a core dependency, imported on use to keep `import refcal` light
    import pyarrow.parquet as pq

    src = str(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ScoreFileError(f"{src}: cannot read Parquet ({e}); re-create it with `refcal score`") from None
    names = table.column_names
    parquet_columns(names, src)
    meta = _meta_of(table.schema.metadata, src)
    d = table.to_pydict()
    labels = d.get("label")
    columns = {c: d[c] for c in names if c not in _RESERVED}
    return ScoreSet.from_rows(d["id"], d["logits"], labels, meta=meta, columns=columns, source=src)
