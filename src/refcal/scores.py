"""The option-score set: per-question option logits with ids, labels and metadata.

File formats
------------
Parquet (the native format, written by ``refcal score``/``apply``), one row per question:

============  =====================  ==========================================================
column        type                   meaning
============  =====================  ==========================================================
``id``        string                 unique question id
``logits``    list<double>           one score per option, in option order; ``null`` or -inf
                                     marks a missing option; the list length is the number of
                                     options of that question (ragged is fine)
``label``     int64, nullable        index of the correct option, ``null`` when unknown
others        any scalar             kept as per-question columns (e.g. ``subject``)
============  =====================  ==========================================================

File-level metadata (model, dataset, split, template, scoring, ...) is stored as JSON under the
Parquet key ``refcal``.

JSON Lines is accepted as input (and can be written), one object per question::

    {"id": "q1", "logits": [1.2, -0.3, 0.5, 0.1], "label": 2}

``label`` may be ``null`` or absent; other scalar keys become per-question columns.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_output, ensure_parent
from .errors import InputError, MismatchError, ScoreFileError

FORMAT_VERSION = 1
_META_KEY = b"refcal"
_RESERVED = ("id", "logits", "label")

#: Largest magnitude of a finite logit: differences of larger values overflow to inf (then NaN) in the
#: softmax and the solvers. Every consumer (``fit``, ``apply``, ``evaluate``, the calibrators) uses it.
LOGIT_LIMIT = 1e100

#: Per-question column holding :func:`question_hash` of the question text; :func:`join_scores` refuses
#: to join two files whose rows with the same id hold different questions.
QUESTION_HASH = "question_hash"


def question_hash(text: str) -> str:
    """Short, stable fingerprint of a question's text (first 12 hex digits of SHA-256 of its UTF-8)."""
    return hashlib.sha256(str(text).encode("utf-8")).hexdigest()[:12]


def bad_logits(x: np.ndarray) -> np.ndarray:
    """Mask of values no consumer accepts: NaN, +inf, and finite values with ``|x| > LOGIT_LIMIT``.

    -inf is allowed: it marks a missing option.
    """
    return np.isnan(x) | (x > LOGIT_LIMIT) | ((x < -LOGIT_LIMIT) & (x != -np.inf))


def describe_logit(v: float) -> str:
    """Why one value flagged by :func:`bad_logits` is refused, in words."""
    if math.isnan(v):
        return "NaN"
    if v == math.inf:
        return "+inf"
    return f"{v:g}, beyond the allowed range |x| <= {LOGIT_LIMIT:g}"


LOGIT_RULE = (f"only finite values with |x| <= {LOGIT_LIMIT:g} (rescale larger scores) or -inf (missing option) "
              "are allowed")


@dataclass
class ScoreSet:
    """Option logits of one model on a set of questions.

    Attributes
    ----------
    ids : ndarray of str, shape (n,)
    logits : ndarray of float64, shape (n, k)
        ``k`` is the largest number of options; shorter rows are padded with -inf.
    labels : ndarray of int64, shape (n,)
        Correct option index, -1 when unknown.
    n_options : ndarray of int64, shape (n,)
        Number of options of each question (padding excluded).
    meta : dict
        Free-form provenance (model, dataset, split, template, scoring, ...).
    columns : dict of str -> ndarray, shape (n,)
        Extra per-question fields (e.g. ``subject``).
    """

    ids: np.ndarray
    logits: np.ndarray
    labels: np.ndarray
    n_options: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, np.ndarray] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_rows(
        cls,
        ids: list[str],
        logits: list[list[float | None]],
        labels: list[int | None] | None = None,
        *,
        meta: Mapping[str, Any] | None = None,
        columns: Mapping[str, list[Any]] | None = None,
        source: str = "scores",
    ) -> ScoreSet:
        """Build and validate a score set from ragged Python lists."""
        n = len(ids)
        if n == 0:
            raise ScoreFileError(f"{source}: no questions found; a score file needs at least one row")
        if len(logits) != n:
            raise ScoreFileError(f"{source}: {n} ids but {len(logits)} logit rows")
        labels = [None] * n if labels is None else list(labels)
        if len(labels) != n:
            raise ScoreFileError(f"{source}: {n} ids but {len(labels)} labels")
        for r, i in enumerate(ids):
            # str(None) or str([1]) would silently become an id like 'None' that never matches the other model
            if isinstance(i, bool) or not isinstance(i, (str, int, np.integer, np.str_)):
                raise ScoreFileError(
                    f"{source}: row {r}: id {i!r} is not a string or integer; give every question a unique id"
                )
        ids_arr = np.array([str(i) for i in ids], dtype=object)
        n_opt = np.empty(n, dtype=np.int64)
        for r, row in enumerate(logits):
            if not isinstance(row, (list, tuple, np.ndarray)):
                raise ScoreFileError(
                    f"{source}: row {r} (id {ids_arr[r]!r}): 'logits' must be a list of numbers, got {type(row).__name__}"
                )
            n_opt[r] = len(row)
        k = int(n_opt.max())
        mat = np.full((n, k), -np.inf, dtype=np.float64)
        for r, row in enumerate(logits):
            for j, v in enumerate(row):
                if v is None:
                    continue
                try:
                    # strings such as "1.5" would parse; a score file stores numbers, so refuse them
                    if isinstance(v, (str, bytes, bool, np.bool_)):
                        raise TypeError
                    mat[r, j] = float(v)
                except (TypeError, ValueError):
                    raise ScoreFileError(
                        f"{source}: row {r} (id {ids_arr[r]!r}): logit {j} is {v!r}, not a number"
                    ) from None
        lab = np.full(n, -1, dtype=np.int64)
        for r, v in enumerate(labels):
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
                    or not float(v).is_integer():
                raise ScoreFileError(
                    f"{source}: row {r} (id {ids_arr[r]!r}): label {v!r} is not an option index; "
                    "labels are 0-based integers (null when unknown)"
                )
            if abs(float(v)) >= 2.0**53:  # before int64: 1e300 or 10**30 would overflow (validate names the rest)
                raise ScoreFileError(
                    f"{source}: row {r} (id {ids_arr[r]!r}): label {v:.3g} is out of range; labels are 0-based "
                    f"option indices below the {int(n_opt[r])} options (null when unknown)"
                )
            lab[r] = int(v)
        cols = {name: np.asarray(vals, dtype=object) for name, vals in (columns or {}).items()}
        out = cls(ids_arr, mat, lab, n_opt, dict(meta or {}), cols)
        out.validate(source)
        return out

    def validate(self, source: str = "scores") -> None:
        """Check the invariants; raise :class:`ScoreFileError` naming the first offending row."""
        n = len(self.ids)
        if self.logits.ndim != 2 or self.logits.shape[0] != n:
            raise ScoreFileError(f"{source}: logits must have shape (n, k); got {self.logits.shape}")
        if n == 0:
            raise ScoreFileError(f"{source}: no questions found; a score file needs at least one row")
        uniq, counts = np.unique(self.ids.astype(str), return_counts=True)
        if (counts > 1).any():
            raise ScoreFileError(
                f"{source}: question id {uniq[counts > 1][0]!r} appears {counts[counts > 1][0]} times; ids must be unique"
            )
        bad = np.flatnonzero(self.n_options < 2)
        if bad.size:
            r = bad[0]
            raise ScoreFileError(
                f"{source}: question {self.ids[r]!r} has {self.n_options[r]} option(s); every question needs at least 2"
            )
        x = self.logits
        bad = bad_logits(x)
        if bad.any():
            r, j = np.argwhere(bad)[0]
            more = f" ({int(bad.sum())} such values in all)" if bad.sum() > 1 else ""
            raise ScoreFileError(
                f"{source}: question {self.ids[r]!r} option {j} has logit {describe_logit(float(x[r, j]))}{more}; "
                f"{LOGIT_RULE} — re-score that question"
            )
        allmissing = ~np.isfinite(x).any(axis=1)
        if allmissing.any():
            r = np.flatnonzero(allmissing)[0]
            raise ScoreFileError(f"{source}: question {self.ids[r]!r} has every option missing (-inf)")
        present = np.isfinite(x).sum(axis=1)
        few = np.flatnonzero((present == 1) & (self.n_options >= 2))
        if few.size:
            r = few[0]
            raise ScoreFileError(
                f"{source}: question {self.ids[r]!r} has only one option present (the others are missing); "
                "every question needs at least 2 — drop it or re-score it"
            )
        lab = self.labels
        out_of_range = (lab < -1) | (lab >= self.n_options)
        if out_of_range.any():
            r = np.flatnonzero(out_of_range)[0]
            raise ScoreFileError(
                f"{source}: question {self.ids[r]!r} has label {lab[r]} but only {self.n_options[r]} options "
                f"(labels are 0-based option indices)"
            )
        known = lab >= 0
        if known.any() and np.isneginf(x[np.flatnonzero(known), lab[known]]).any():
            r = np.flatnonzero(known)[np.isneginf(x[np.flatnonzero(known), lab[known]])][0]
            raise ScoreFileError(f"{source}: question {self.ids[r]!r}: its label points at a missing option")
        for name, col in self.columns.items():
            if len(col) != n:
                raise ScoreFileError(f"{source}: column {name!r} has {len(col)} values for {n} questions")
        if QUESTION_HASH in self.columns:
            bad_hash = [r for r, h in enumerate(self.columns[QUESTION_HASH]) if h is not None and not isinstance(h, str)]
            if bad_hash:
                r = bad_hash[0]
                raise ScoreFileError(f"{source}: question {self.ids[r]!r}: {QUESTION_HASH} must be a string or null; "
                                     "re-create the file with `refcal score`")

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.ids)

    @property
    def has_labels(self) -> bool:
        """True when every question has a label."""
        return bool((self.labels >= 0).all())

    def subset(self, index: np.ndarray) -> ScoreSet:
        """Rows ``index`` (integer positions or a boolean mask), keeping meta."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        k = int(self.n_options[index].max()) if index.size else self.logits.shape[1]
        return ScoreSet(
            self.ids[index],
            self.logits[index][:, :k].copy(),
            self.labels[index].copy(),
            self.n_options[index].copy(),
            dict(self.meta),
            {c: v[index] for c, v in self.columns.items()},
        )

    def with_logits(self, logits: np.ndarray, **meta: Any) -> ScoreSet:
        """A copy with other logits (same shape), e.g. calibrated log-probabilities."""
        logits = np.asarray(logits, dtype=np.float64)
        if logits.shape != self.logits.shape:
            raise ValueError(f"logits shape {logits.shape} != {self.logits.shape}")
        return ScoreSet(
            self.ids.copy(), logits, self.labels.copy(), self.n_options.copy(),
            {**self.meta, **meta}, dict(self.columns),
        )

    def rows(self) -> list[list[float | None]]:
        """Ragged rows, with missing options as ``None``."""
        out = []
        for r in range(len(self)):
            row = self.logits[r, : self.n_options[r]]
            out.append([None if np.isneginf(v) else float(v) for v in row])
        return out

    # ------------------------------------------------------------------ io
    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically to ``path`` (``.parquet``, or ``.jsonl`` / ``.json``).

        A temporary file is written beside the target and renamed, so an interrupted save never
        leaves a half-written file.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if path.is_dir():
            raise ScoreFileError(f"{path}: is a directory; pass a file name ending in .parquet or .jsonl")
        ensure_parent(path, what="the scores")
        writing = False
        try:
            with atomic_output(path) as tmp:
                writing = True
                if suffix in (".jsonl", ".json", ".ndjson"):
                    self._write_jsonl(tmp)
                else:
                    self._write_parquet(tmp)
        except OSError as e:
            if writing:  # e.g. a full disk mid-write: the target is untouched, the error is the system's
                raise
            raise ScoreFileError(f"cannot write {path}: {e.strerror}; choose a folder you can write to") from None
        return path

    def _write_jsonl(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            for r, row in enumerate(self.rows()):
                obj: dict[str, Any] = {"id": str(self.ids[r]), "logits": row}
                obj["label"] = int(self.labels[r]) if self.labels[r] >= 0 else None
                for c, v in self.columns.items():
                    obj[c] = _json_scalar(v[r])
                fh.write(json.dumps(obj, allow_nan=False) + "\n")

    def _write_parquet(self, path: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        data: dict[str, Any] = {
            "id": pa.array([str(i) for i in self.ids], pa.string()),
            "logits": pa.array(self.rows(), pa.list_(pa.float64())),
            "label": pa.array([int(v) if v >= 0 else None for v in self.labels], pa.int64()),
        }
        for c, v in self.columns.items():
            data[c] = pa.array([_json_scalar(x) for x in v])
        table = pa.table(data)
        meta = {"format_version": FORMAT_VERSION, **self.meta}
        table = table.replace_schema_metadata({_META_KEY: json.dumps(meta, default=str).encode()})
        pq.write_table(table, path)


def _json_scalar(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


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
    and read too (see :mod:`refcal.formats.lmeval`); ``lmeval_metric`` (``"acc"``, the default,
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
    from .formats.lmeval import is_lmeval_log, read_lmeval

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


def _read_parquet(path: Path) -> ScoreSet:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = str(path)
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ScoreFileError(f"{src}: cannot read Parquet ({e}); re-create it with `refcal score`") from None
    names = table.column_names
    for key in ("id", "logits"):
        if key not in names:
            raise ScoreFileError(f"{src}: missing column {key!r}; a score file needs 'id' and 'logits' (found: {names})")
    meta: dict[str, Any] = {}
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw:
        try:
            meta = json.loads(raw)
        except json.JSONDecodeError:
            meta = {}
    meta.setdefault("source", src)
    d = table.to_pydict()
    labels = d.get("label")
    columns = {c: d[c] for c in names if c not in _RESERVED}
    return ScoreSet.from_rows(d["id"], d["logits"], labels, meta=meta, columns=columns, source=src)


@dataclass
class JoinedScores:
    """Base and chat scores aligned on question id (order of the chat file)."""

    ids: np.ndarray
    base: np.ndarray
    chat: np.ndarray
    labels: np.ndarray
    chat_scores: ScoreSet
    base_scores: ScoreSet


def join_scores(base: ScoreSet, chat: ScoreSet) -> JoinedScores:
    """Align two score sets on ``id``.

    Raises
    ------
    MismatchError
        The sets do not cover the same ids, an id has a different number of options, or the
        labels disagree.
    """
    b_src = base.meta.get("source", "base scores")
    c_src = chat.meta.get("source", "chat scores")
    b_ids = [str(i) for i in base.ids]
    c_ids = [str(i) for i in chat.ids]
    b_pos = {i: r for r, i in enumerate(b_ids)}
    only_chat = [i for i in c_ids if i not in b_pos]
    c_set = set(c_ids)
    only_base = [i for i in b_ids if i not in c_set]
    if only_chat or only_base:
        parts = []
        if only_chat:
            parts.append(f"{len(only_chat)} id(s) only in {c_src} (e.g. {only_chat[0]!r})")
        if only_base:
            parts.append(f"{len(only_base)} id(s) only in {b_src} (e.g. {only_base[0]!r})")
        raise MismatchError(
            "base and chat scores do not cover the same questions: " + "; ".join(parts)
            + "; score both models on the same data set and split"
        )
    order = np.array([b_pos[i] for i in c_ids], dtype=np.int64)
    _check_same_questions(base.columns.get(QUESTION_HASH), order, chat.columns.get(QUESTION_HASH), c_ids, b_src, c_src)
    b_nopt = base.n_options[order]
    diff = np.flatnonzero(b_nopt != chat.n_options)
    if diff.size:
        r = diff[0]
        raise MismatchError(
            f"question {c_ids[r]!r} has {b_nopt[r]} options in {b_src} but {chat.n_options[r]} in {c_src}; "
            "both models must be scored on the same options"
        )
    k = max(base.logits.shape[1], chat.logits.shape[1])
    b = _pad(base.logits[order], k)
    c = _pad(chat.logits, k)
    mb, mc = np.isneginf(b), np.isneginf(c)
    if (mb != mc).any():
        r = np.flatnonzero((mb != mc).any(axis=1))[0]
        raise MismatchError(
            f"question {c_ids[r]!r}: the two files mark different options as missing; re-score both models"
        )
    bl, cl = base.labels[order], chat.labels
    conflict = (bl >= 0) & (cl >= 0) & (bl != cl)
    if conflict.any():
        r = np.flatnonzero(conflict)[0]
        raise MismatchError(f"question {c_ids[r]!r} has label {bl[r]} in {b_src} but {cl[r]} in {c_src}")
    labels = np.where(cl >= 0, cl, bl)
    return JoinedScores(chat.ids.copy(), b, c, labels, chat, base.subset(order))


def _check_same_questions(b_hash: np.ndarray | None, order: np.ndarray, c_hash: np.ndarray | None,
                          c_ids: list[str], b_src: str, c_src: str) -> None:
    """Refuse a join where one id names different question texts in the two files (when both record them)."""
    if b_hash is None or c_hash is None:
        return
    for r, (hb, hc) in enumerate(zip(b_hash[order], c_hash, strict=True)):
        if hb is not None and hc is not None and hb != hc:
            raise MismatchError(
                f"question {c_ids[r]!r} has different question texts in {b_src} and {c_src} (their {QUESTION_HASH} "
                "values differ): the files were scored on different data, or ids were assigned differently "
                "(row numbers of differently ordered copies); score both models on the same file, keyed by an id column"
            )


def _pad(x: np.ndarray, k: int) -> np.ndarray:
    if x.shape[1] == k:
        return x
    out = np.full((x.shape[0], k), -np.inf)
    out[:, : x.shape[1]] = x
    return out
