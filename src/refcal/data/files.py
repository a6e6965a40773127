"""User data files -> questions, through a column mapping.

Formats (by suffix): ``.jsonl`` / ``.ndjson`` (one object per line), ``.json`` (a list of objects, or
JSON Lines), ``.csv`` / ``.tsv``, ``.parquet``, ``.arrow``, and a Hugging Face ``save_to_disk`` folder
(a ``Dataset``, or a ``DatasetDict`` whose split is chosen with ``split``).

Columns (defaults in brackets):

* question [``question``];
* options: ``choices_col`` [``choices``], one list per row (in CSV a JSON list such as
  ``["a", "b"]``; an ARC-style ``{"text": [...], "label": [...]}`` struct also works), **or**
  ``option_cols``, one column per option in order. Missing options (null / empty) are allowed at the
  end only, so rows may have different numbers of options;
* answer [``answer`` if present, else every label is -1]. Three conventions, chosen for the whole column:
  ``letter`` (``A``, ``B``, ... case-insensitive), ``index`` (0-based integers, also as strings; -1 means
  unknown) and ``text`` (equal to exactly one option, after stripping spaces). Empty / null answers give
  label -1. The convention is detected: the one consistent with every labelled row. If none fits, or more
  than one does (options that are themselves letters or numbers), a :class:`DatasetError` asks for
  ``answer_format``. Indices are 0-based: a 1-based column is only caught when some value equals the
  number of options;
* id [``id`` if present, else the row number, 0-based; duplicates are refused]; subject [``subject`` if
  present].

A plain file (or a single-``Dataset`` folder) is one split, named ``"all"``; :func:`file_default_split`
gives the split a caller should use when none is asked for.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from ..options import COLUMN_FLAGS
from ._io import read_arrow_folder
from .base import Question

FORMATS = ("letter", "index", "text")
#: the name of the only split of a plain file or a single-``Dataset`` folder
SINGLE_SPLIT = "all"
_INT = re.compile(r"[+-]?\d+")


# ---------------------------------------------------------------------------------------------- reading
def _read_json(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path} is not valid JSON ({e}); expected a list of objects") from e
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DatasetError(f"{path} line {n} is not valid JSON ({e.msg}); expected one object per line") from e
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DatasetError(f"{path}: record {bad} is a {type(rows[bad]).__name__}, not an object with named fields")
    return rows


def _read_folder(path: Path, split: str | None) -> list[dict[str, Any]]:
    dd = path / "dataset_dict.json"
    if dd.is_file():
        splits = json.loads(dd.read_text())["splits"]
        if split is None and len(splits) == 1:
            split = splits[0]
        if split not in splits:
            raise DatasetError(f"{path} holds splits {', '.join(splits)}; choose one with --split")
        return read_arrow_folder(path / split)
    if split not in (None, SINGLE_SPLIT):
        raise DatasetError(f"{path} holds a single split; drop --split {split}")
    return read_arrow_folder(path)


def file_default_split(path: Path) -> str:
    """``"test"`` (or the only split) of a ``DatasetDict`` folder, else :data:`SINGLE_SPLIT`."""
    dd = path / "dataset_dict.json"
    if path.is_dir() and dd.is_file():
        splits = json.loads(dd.read_text())["splits"]
        return "test" if "test" in splits or len(splits) != 1 else splits[0]
    return SINGLE_SPLIT


def read_rows(path: Path, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a user file as dicts (see the module docstring for the formats)."""
    if path.is_dir():
        return _read_folder(path, split)
    if split not in (None, SINGLE_SPLIT):
        raise DatasetError(f"{path.name} is a single split ({SINGLE_SPLIT!r}); drop --split {split}")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json", ".csv", ".tsv"):
        try:
            if suffix in (".csv", ".tsv"):
                with open(path, encoding="utf-8-sig", newline="") as f:
                    return list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
            return _read_json(path)
        except UnicodeDecodeError as e:
            raise DatasetError(_not_utf8(path, e)) from None
        except RecursionError:
            raise DatasetError(f"{path}: JSON nested too deeply; expected flat objects, one per question") from None
    if suffix == ".parquet":
        import pyarrow.parquet as pq  # pyarrow is a core dependency

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several unrelated types for a corrupt file
            raise DatasetError(f"cannot read {path} as Parquet ({e})") from e
    if suffix == ".arrow":
        return _read_arrow_file(path)
    raise DatasetError(f"cannot tell the format of {path.name}; use .jsonl, .json, .csv, .tsv, .parquet, .arrow "
                       "or a save_to_disk folder")


def _not_utf8(path: Path, e: UnicodeDecodeError) -> str:
    """One sentence for a text file in another encoding (typically Latin-1 / Windows-1252 from a spreadsheet)."""
    byte = e.object[e.start:e.start + 1].hex()
    fixed = f"{path.stem}-utf8{path.suffix}"
    return (f"{path} is not UTF-8 text (byte 0x{byte} at offset {e.start}; probably Latin-1 / Windows-1252, as "
            f"spreadsheets often save): convert it to UTF-8, e.g. `iconv -f latin1 -t utf-8 {path.name} > {fixed}`, "
            "and pass the converted file")


def _read_arrow_file(path: Path) -> list[dict[str, Any]]:
    import pyarrow as pa  # pyarrow is a core dependency, imported on use to keep `import refcal` light

    for opener in (pa.ipc.open_stream, pa.ipc.open_file):
        try:
            with opener(path) as reader:
                return reader.read_all().to_pylist()
        except pa.ArrowInvalid:
            continue
    raise DatasetError(f"{path} is not an Arrow IPC file")


# ---------------------------------------------------------------------------------------------- parsing
def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))


def _parse(fmt: str, v: Any, choices: tuple[str, ...]) -> int | None:
    """The option index ``v`` denotes under convention ``fmt``, or None when ``v`` does not fit it."""
    if fmt == "index":
        if isinstance(v, bool):
            return None
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, str) and _INT.fullmatch(v.strip()):
            v = int(v)
        return v if isinstance(v, int) and -1 <= v < len(choices) else None
    s = str(v).strip()
    if fmt == "letter":
        if len(s) == 1 and s.isascii() and s.isalpha():
            i = ord(s.upper()) - ord("A")
            return i if i < len(choices) else None
        return None
    hits = [i for i, c in enumerate(choices) if c == s]
    return hits[0] if len(hits) == 1 else None


def parse_answers(values: list[Any], choices: list[tuple[str, ...]], *, column: str,
                  answer_format: str | None = None) -> list[int]:
    """Labels from an answer column, detecting the convention (see the module docstring).

    Returns
    -------
    list of int, length n
        0-based option index per row, -1 where the answer is missing.
    """
    rows = [i for i, v in enumerate(values) if not _missing(v)]
    if answer_format is not None:
        if answer_format not in FORMATS:
            raise DatasetError(f"{COLUMN_FLAGS['answer_format']} must be one of {', '.join(FORMATS)}, got {answer_format!r}")
        fmts = [answer_format]
    else:
        fmts = [f for f in FORMATS if all(_parse(f, values[i], choices[i]) is not None for i in rows)]
        if len(fmts) > 1:
            i = rows[0]
            raise DatasetError(f"answers in column {column!r} read as {' or as '.join(fmts)} (row {i}: {values[i]!r} with "
                               f"options {list(choices[i])}); say which with {COLUMN_FLAGS['answer_format']}")
        if not fmts:
            why = []
            for f in FORMATS:
                i = next(i for i in rows if _parse(f, values[i], choices[i]) is None)
                why.append(f"{f} (row {i}: {values[i]!r}, {len(choices[i])} options)")
            raise DatasetError(f"answers in column {column!r} fit no convention: not {'; not '.join(why)}; use letters "
                               "A.., 0-based indices or the exact option text")
    fmt = fmts[0]
    labels = [-1] * len(values)
    for i in rows:
        got = _parse(fmt, values[i], choices[i])
        if got is None:
            raise DatasetError(f"row {i}: answer {values[i]!r} in column {column!r} is not a valid {fmt} for its "
                               f"options {list(choices[i])}")
        labels[i] = got
    return labels


def _options(v: Any, i: int, column: str) -> list[Any]:
    if isinstance(v, dict) and "text" in v:
        v = v["text"]
    if isinstance(v, str) and v.lstrip().startswith("["):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise DatasetError(f"row {i}: column {column!r} is not a valid JSON list ({e.msg})") from e
    if not isinstance(v, (list, tuple)):
        raise DatasetError(f"row {i}: column {column!r} holds {type(v).__name__} {v!r}, not a list of options; "
                           f"store a list (in CSV a JSON list) or give one column per option with {COLUMN_FLAGS['option_cols']}")
    return list(v)


def _clean(opts: list[Any], i: int, where: str) -> tuple[str, ...]:
    while opts and _missing(opts[-1]):
        opts = opts[:-1]
    if any(_missing(o) for o in opts):
        raise DatasetError(f"row {i}: an option in {where} is empty between non-empty ones; "
                           "only trailing options may be missing")
    if len(opts) < 2:
        raise DatasetError(f"row {i}: {len(opts)} option(s) in {where}; a question needs at least 2")
    return tuple(str(o).strip() for o in opts)


def _need(col: str, role: str, columns: list[str], path: Path) -> str:
    if col not in columns:
        flag = COLUMN_FLAGS["option_cols" if role == "option" else f"{role}_col"]
        raise DatasetError(f"{role} column {col!r} not found in {path.name}; columns found: {', '.join(columns)}; "
                           f"name the right one with {flag}")
    return col


def id_column(id_col: str | None, columns: list[str], path: Any) -> str | None:
    """The id column of a user file, for every task kind: ``id_col`` (which must exist), else a column
    named ``id`` when there is one, else None (row numbers)."""
    return _need(id_col, "id", columns, path) if id_col else ("id" if "id" in columns else None)


def row_ids(rows: list[dict[str, Any]], icol: str | None) -> list[str]:
    """Question ids: the stripped values of column ``icol`` (unique, non-empty), or row numbers when None."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        qid = str(i) if icol is None else r.get(icol)
        if _missing(qid):
            raise DatasetError(f"row {i}: id column {icol!r} is empty; ids must be unique and non-empty")
        qid = str(qid).strip()
        if qid in seen:
            raise DatasetError(f"rows {seen[qid]} and {i} share the id {qid!r}; ids in column {icol!r} must be unique "
                               f"(name another id column with {COLUMN_FLAGS['id_col']})")
        seen[qid] = i
        out.append(qid)
    return out


def questions(rows: list[dict[str, Any]], qcol: str) -> list[str]:
    """The stripped question texts of column ``qcol``; an empty one raises :class:`DatasetError`."""
    bad = next((i for i, r in enumerate(rows) if _missing(r.get(qcol))), None)
    if bad is not None:
        raise DatasetError(f"row {bad}: question column {qcol!r} is empty")
    return [str(r[qcol]).strip() for r in rows]


def load_file(
    path: Path,
    *,
    split: str | None = None,
    subjects: Iterable[str] | None = None,
    question_col: str | None = None,
    choices_col: str | None = None,
    option_cols: Iterable[str] | str | None = None,
    answer_col: str | None = None,
    id_col: str | None = None,
    subject_col: str | None = None,
    answer_format: str | None = None,
) -> list[Question]:
    """Questions from a user file; see the module docstring for formats and conventions."""
    rows = read_rows(path, split)
    if not rows:
        raise DatasetError(f"{path} holds no rows")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    qcol = _need(question_col or "question", "question", columns, path)
    if isinstance(option_cols, str):
        option_cols = [c.strip() for c in option_cols.split(",") if c.strip()]
    if option_cols is not None and choices_col is not None:
        raise DatasetError(f"give either {COLUMN_FLAGS['choices_col']} (one list column) or {COLUMN_FLAGS['option_cols']} "
                           "(one column per option), not both")
    if option_cols is not None:
        ocols = [_need(c, "option", columns, path) for c in option_cols]
    else:
        if choices_col is None and "choices" not in columns:
            raise DatasetError(f"no options column in {path.name}: pass {COLUMN_FLAGS['choices_col']} (a list column) or "
                               f"{COLUMN_FLAGS['option_cols']} "
                               f"(one column per option); columns found: {', '.join(columns)}")
        ccol = _need(choices_col or "choices", "choices", columns, path)
    acol = _need(answer_col, "answer", columns, path) if answer_col else ("answer" if "answer" in columns else None)
    icol = id_column(id_col, columns, path)
    scol = _need(subject_col, "subject", columns, path) if subject_col else ("subject" if "subject" in columns else None)

    choices = []
    for i, r in enumerate(rows):
        if option_cols is not None:
            choices.append(_clean([r.get(c) for c in ocols], i, f"columns {', '.join(ocols)}"))
        else:
            choices.append(_clean(_options(r.get(ccol), i, ccol), i, f"column {ccol!r}"))
    labels = (parse_answers([r.get(acol) for r in rows], choices, column=acol, answer_format=answer_format)
              if acol else [-1] * len(rows))
    out = []
    for i, (r, qid, text) in enumerate(zip(rows, row_ids(rows, icol), questions(rows, qcol), strict=True)):
        subject = None if scol is None or _missing(r.get(scol)) else str(r.get(scol)).strip()
        out.append(Question(qid, text, choices[i], labels[i], subject, {"source": str(path), "row": i}))
    if subjects is not None:
        out = _filter_subjects(out, subjects, scol, path)
    return out


def _filter_subjects(qs: list[Question], subjects: Iterable[str], scol: str | None, path: Path) -> list[Question]:
    if scol is None:
        raise DatasetError(f"--subjects needs a subject column in {path.name}; name it with {COLUMN_FLAGS['subject_col']}")
    want = [s.strip() for s in subjects]
    have = sorted({q.subject for q in qs if q.subject is not None})
    unknown = [s for s in want if s not in have]
    if unknown:
        close = difflib.get_close_matches(unknown[0], have, n=4, cutoff=0.5)
        hint = f"close matches: {', '.join(close)}" if close else f"subjects found: {', '.join(have[:20])}"
        raise DatasetError(f"subject {unknown[0]!r} not in column {scol!r}; {hint}")
    return [q for q in qs if q.subject in set(want)]
