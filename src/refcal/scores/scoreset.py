"""The option-score set: per-question option logits with ids, labels and metadata (file formats: :mod:`refcal.scores`)."""

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

from .._io import atomic_output, ensure_parent
from ..errors import ScoreFileError

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
        import pyarrow as pa  # pyarrow is a core dependency, imported on use to keep `import refcal` light
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
