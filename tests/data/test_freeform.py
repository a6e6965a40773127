"""Free-form data sets: packaged sizes (the issue's numbers), TruthfulQA formatting, user files, subsampling."""

import json

import numpy as np
import pytest

from refcal.data import list_datasets, load_dataset, load_freeform
from refcal.data.freeform import (
    FreeformQuestion,
    format_truthfulqa_refs,
    load_freeform_file,
)
from refcal.errors import DatasetError


def test_packaged_sizes_and_content():
    tqa = load_freeform("triviaqa")
    assert len(tqa) == 7993 and len({q.id for q in tqa}) == 7993
    first = tqa[0]  # first row of the source, checked by hand
    assert first.id == "tc_33" and first.question.startswith("Which Lloyd Webber musical premiered in the US")
    assert first.answers[0] == "Sunset Boulevard"  # the canonical value leads the aliases
    assert set(first.answers) == {"Sunset Boulevard", "Sunset Blvd", "West Sunset Boulevard", "Sunset Bulevard",
                                  "Sunset Blvd."}
    assert "sunset boulevard" in first.meta["normalized_aliases"]
    assert all(q.answers and q.labelled and not q.false_answers for q in tqa)
    nq = load_freeform("nq-open")
    assert len(nq) == 3610 and [q.id for q in nq[:2]] == ["0", "1"]
    assert nq[0].question == "when was the last time anyone was on the moon"
    assert nq[0].answers == ("14 December 1972 UTC", "December 1972")
    assert nq[1].answers == ("Bobby Scott", "Bob Russell")
    info = {i.name: i for i in list_datasets()}
    assert info["triviaqa"].splits == {"validation": 7993} and info["triviaqa"].task == "free-form"
    assert info["nq-open"].splits == {"validation": 3610} and info["sciq"].task == "multiple-choice"


def test_truthfulqa_formatting_matches_lm_eval():
    # lm-evaluation-harness truthfulqa utils.preprocess_function, applied by hand
    assert format_truthfulqa_refs([" Yes ", "", "No.", "I have no comment"], add_no_comment=True) == (
        "Yes.", "No.", "I have no comment.")
    assert format_truthfulqa_refs(["A", "I have no comment."], add_no_comment=True) == ("A.", "I have no comment.")
    assert format_truthfulqa_refs(["A"], add_no_comment=False) == ("A.",)


def test_limit_and_seed_draw_like_multiple_choice():
    full = load_freeform("nq-open")
    a = load_freeform("nq-open", limit=20, seed=3)
    assert a == load_freeform("nq-open", limit=20, seed=3) == load_dataset("nq_open", limit=20, seed=3)
    assert len(a) == 20 and a != load_freeform("nq-open", limit=20, seed=4)
    pos = [int(q.id) for q in a]
    assert pos == sorted(pos) and all(full[i] == q for i, q in zip(pos, a, strict=True))  # original order kept
    assert load_freeform("nq-open", limit=10**6) == full
    with pytest.raises(DatasetError, match="limit must be a positive number"):
        load_freeform("nq-open", limit=0)


def test_wrong_kind_and_options_rejected():
    with pytest.raises(DatasetError, match="sciq is a multiple-choice data set"):
        load_freeform("sciq")
    with pytest.raises(DatasetError, match="answers_col apply to user files only"):
        load_freeform("triviaqa", answers_col="x")
    with pytest.raises(DatasetError, match="unknown data set 'trivia'.*did you mean"):
        load_freeform("trivia")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_user_files(tmp_path, fmt):
    rows = [{"question": " Capital of France? ", "answers": ["Paris", " Paris ", "Paris, France"], "qid": "a"},
            {"question": "Unlabelled?", "answers": [], "qid": "b"},
            {"question": "Author of Hamlet?", "answers": ["Shakespeare"], "qid": "c"}]
    path = tmp_path / f"qs.{fmt}"
    if fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows))
    elif fmt == "csv":
        lines = ["question,answers,qid"] + [
            f'"{r["question"]}","{json.dumps(r["answers"]).replace(chr(34), chr(34) * 2)}",{r["qid"]}' for r in rows]
        lines[2] = "Unlabelled?,,b"  # an empty cell is an unlabelled question
        path.write_text("\n".join(lines) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    qs = load_freeform(str(path), id_col="qid")
    assert [q.id for q in qs] == ["a", "b", "c"]
    assert qs[0] == FreeformQuestion("a", "Capital of France?", ("Paris", "Paris, France"))  # stripped, de-duplicated
    assert qs[1].answers == () and not qs[1].labelled and qs[2].answers == ("Shakespeare",)
    assert qs[0].meta == {"source": str(path), "row": 0}
    assert [q.id for q in load_freeform(str(path), id_col="qid", limit=2, seed=0)] == [
        qs[i].id for i in sorted(np.random.default_rng(0).choice(3, size=2, replace=False))]


def test_user_file_columns_and_errors(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"q": "Q1", "gold": "one alias", "bad": ["x"]}\n{"q": "Q2", "gold": ["x", "y"], "bad": ["y"]}\n')
    qs = load_freeform_file(path, question_col="q", answers_col="gold", false_answers_col="bad")
    assert [(q.id, q.answers, q.false_answers) for q in qs] == [("0", ("one alias",), ("x",)),
                                                                 ("1", ("x", "y"), ("y",))]
    with pytest.raises(DatasetError, match="question column 'question' not found in q.jsonl; columns found: q, gold"):
        load_freeform_file(path)
    path.write_text('{"question": "Q", "answers": 3}\n')
    with pytest.raises(DatasetError, match="row 0: column 'answers' holds int 3, not a list of answers"):
        load_freeform_file(path)
    path.write_text('{"question": "Q", "answers": "[\\"a\\", "}\n')
    with pytest.raises(DatasetError, match="row 0: column 'answers' is not a valid JSON list"):
        load_freeform_file(path)
    path.write_text('{"question": "Q", "id": 1}\n{"question": "R", "id": 1}\n')
    with pytest.raises(DatasetError, match="rows 0 and 1 share the id '1'"):
        load_freeform_file(path, id_col="id")
    path.write_text('{"question": "", "answers": ["a"]}\n')
    with pytest.raises(DatasetError, match="row 0: question column 'question' is empty"):
        load_freeform_file(path)
