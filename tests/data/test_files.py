"""User files: every format x every answer convention, column mapping, and the error messages."""

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from refcal.data import default_split, fewshot_examples, load_dataset
from refcal.errors import DatasetError

ROWS = [
    {"qid": "a1", "question": "2+2?", "choices": ["3", "4", "5"], "topic": "math", "letter": "B", "index": 1,
     "text": "4"},
    {"qid": "a2", "question": "Capital of France?", "choices": ["Paris", "Rome", "Oslo", "Bern"], "topic": "geo",
     "letter": "A", "index": 0, "text": "Paris"},
    {"qid": "a3", "question": "Largest planet?", "choices": ["Mars", "Venus", "Jupiter", "Earth"], "topic": "astro",
     "letter": "c", "index": 2, "text": " Jupiter "},
]
EXPECTED_LABELS = [1, 0, 2]


def _write(tmp_path, fmt, rows, *, list_col=True):
    """Write ``rows`` in ``fmt``; with list_col False the options go to columns o0..o3 instead."""
    if not list_col:
        rows = [{**{k: v for k, v in r.items() if k != "choices"},
                 **{f"o{j}": (r["choices"][j] if j < len(r["choices"]) else None) for j in range(4)}} for r in rows]
    if fmt == "jsonl":
        p = tmp_path / "d.jsonl"
        p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    elif fmt == "json":
        p = tmp_path / "d.json"
        p.write_text(json.dumps(rows))
    elif fmt == "csv":
        p = tmp_path / "d.csv"
        with open(p, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            for r in rows:
                w.writerow({k: json.dumps(v) if isinstance(v, list) else ("" if v is None else v) for k, v in r.items()})
    elif fmt == "parquet":
        p = tmp_path / "d.parquet"
        pq.write_table(pa.Table.from_pylist(rows), p)
    elif fmt == "hf":
        # the layout of Dataset.save_to_disk: one Arrow IPC stream per shard plus JSON side files
        p = tmp_path / "hf"
        p.mkdir()
        table = pa.Table.from_pylist(rows)
        with pa.ipc.new_stream(p / "data-00000-of-00001.arrow", table.schema) as w:
            w.write_table(table)
        (p / "state.json").write_text("{}")
        (p / "dataset_info.json").write_text("{}")
    return p


FORMATS = ["jsonl", "json", "csv", "parquet", "hf"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("convention", ["letter", "index", "text"])
def test_formats_and_answer_conventions(tmp_path, fmt, convention):
    p = _write(tmp_path, fmt, ROWS)
    qs = load_dataset(str(p), answer_col=convention, id_col="qid", subject_col="topic")
    assert [q.label for q in qs] == EXPECTED_LABELS
    assert [q.id for q in qs] == ["a1", "a2", "a3"]
    assert [q.subject for q in qs] == ["math", "geo", "astro"]
    assert qs[0].choices == ("3", "4", "5") and len(qs[1].choices) == 4  # ragged option counts survive


@pytest.mark.parametrize("fmt", FORMATS)
def test_option_columns_with_ragged_rows(tmp_path, fmt):
    p = _write(tmp_path, fmt, ROWS, list_col=False)
    qs = load_dataset(p, option_cols=["o0", "o1", "o2", "o3"], answer_col="letter")
    assert [len(q.choices) for q in qs] == [3, 4, 4]
    assert [q.label for q in qs] == EXPECTED_LABELS
    assert [q.id for q in qs] == ["0", "1", "2"]  # default id: the row number
    same = load_dataset(p, option_cols="o0,o1,o2,o3", answer_col="letter")
    assert same == qs


def test_defaults_without_answer_column_give_unknown_labels(tmp_path):
    p = tmp_path / "u.jsonl"
    p.write_text('{"question": "q?", "choices": ["x", "y"]}\n{"question": "r?", "choices": ["x", "y", "z"]}\n')
    qs = load_dataset(p)
    assert [q.label for q in qs] == [-1, -1] and qs[0].subject is None


def test_missing_answers_and_minus_one_are_unknown(tmp_path):
    rows = [{"question": "q", "choices": ["a", "b"], "answer": v} for v in (1, None, -1, 0)]
    p = _write(tmp_path, "jsonl", rows)
    assert [q.label for q in load_dataset(p)] == [1, -1, -1, 0]


def test_default_split_of_user_files(tmp_path):
    p = _write(tmp_path, "jsonl", ROWS)
    assert default_split(str(p)) == "all"
    assert fewshot_examples(p, k=0) == []
    with pytest.raises(DatasetError, match="is a user file: few-shot examples come from built-in sets only"):
        fewshot_examples(str(p), k=2)
    assert load_dataset(p, split=default_split(p), answer_col="index") == load_dataset(p, answer_col="index")


def test_arc_style_struct_choices_and_hf_dataset_dict(tmp_path):
    rows = [{"question": "q", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}, "answer": "C"}]
    root = tmp_path / "dd"
    root.mkdir()
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        _write(tmp_path / split, "hf", rows).rename(root / split)
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert default_split(root) == "test"
    qs = load_dataset(root, split="test")
    assert qs[0].choices == ("a", "b", "c") and qs[0].label == 2
    with pytest.raises(DatasetError, match="holds splits train, test; choose one"):
        load_dataset(root)


def test_subject_filter_on_user_file(tmp_path):
    p = _write(tmp_path, "jsonl", ROWS)
    qs = load_dataset(p, answer_col="index", subject_col="topic", subjects=["geo", "math"])
    assert [q.id for q in qs] == ["0", "1"]
    with pytest.raises(DatasetError, match="subject 'astr' not in column 'topic'; close matches: astro"):
        load_dataset(p, answer_col="index", subject_col="topic", subjects=["astr"])


def test_ambiguous_answers_are_refused(tmp_path):
    # options that are numbers: "1" is both the index 1 and the text "1"
    rows = [{"question": "n?", "choices": ["0", "1", "2"], "answer": "1"},
            {"question": "m?", "choices": ["2", "1", "0"], "answer": "0"}]
    p = _write(tmp_path, "csv", rows)
    with pytest.raises(DatasetError, match=r"read as index or as text \(row 0: '1'.*--answer-format"):
        load_dataset(p)
    assert [q.label for q in load_dataset(p, answer_format="index")] == [1, 0]
    assert [q.label for q in load_dataset(p, answer_format="text")] == [1, 2]
    # letters that are also option texts
    rows = [{"question": "l?", "choices": ["B", "A"], "answer": "A"}]
    with pytest.raises(DatasetError, match="read as letter or as text"):
        load_dataset(_write(tmp_path, "jsonl", rows))


def test_numeric_options_resolved_by_the_whole_column(tmp_path):
    # row 1's "7" cannot be an index of 3 options, so the column is text: no ambiguity
    rows = [{"question": "a", "choices": ["1", "2", "3"], "answer": "2"},
            {"question": "b", "choices": ["5", "6", "7"], "answer": "7"}]
    assert [q.label for q in load_dataset(_write(tmp_path, "jsonl", rows))] == [1, 2]


def test_answers_that_fit_no_convention(tmp_path):
    rows = [{"question": "a", "choices": ["x", "y"], "answer": "z"}]
    with pytest.raises(DatasetError, match=r"fit no convention: not letter \(row 0: 'z', 2 options\)"):
        load_dataset(_write(tmp_path, "jsonl", rows))
    rows = [{"question": "a", "choices": ["x", "y"], "answer": 2}]  # 1-based index of a 2-option row
    with pytest.raises(DatasetError, match="not index"):
        load_dataset(_write(tmp_path, "jsonl", rows))
    with pytest.raises(DatasetError, match="row 0: answer 2 in column 'answer' is not a valid letter"):
        load_dataset(_write(tmp_path, "jsonl", rows), answer_format="letter")
    with pytest.raises(DatasetError, match="--answer-format must be one of letter, index, text"):
        load_dataset(_write(tmp_path, "jsonl", rows), answer_format="number")


def test_wrong_columns_name_the_column_and_list_the_found_ones(tmp_path):
    p = _write(tmp_path, "csv", ROWS)
    with pytest.raises(DatasetError, match=r"question column 'prompt' not found in d.csv; columns found: qid, question, "
                                           r"choices, topic, letter, index, text"):
        load_dataset(p, question_col="prompt")
    with pytest.raises(DatasetError, match="answer column 'gold' not found"):
        load_dataset(p, answer_col="gold")
    with pytest.raises(DatasetError, match="option column 'o9' not found"):
        load_dataset(p, option_cols=["question", "o9"])
    p2 = _write(tmp_path, "parquet", ROWS, list_col=False)
    with pytest.raises(DatasetError, match="no options column in d.parquet: pass --choices-col"):
        load_dataset(p2)
    with pytest.raises(DatasetError, match="not both"):
        load_dataset(p2, choices_col="o0", option_cols=["o1"])


def test_bad_rows(tmp_path):
    def one(row, **kw):
        return load_dataset(_write(tmp_path, "jsonl", [row]), **kw)

    with pytest.raises(DatasetError, match="row 0: 1 option"):
        one({"question": "q", "choices": ["only"]})
    with pytest.raises(DatasetError, match="empty between non-empty"):
        one({"question": "q", "a": "x", "b": "", "c": "z"}, option_cols=["a", "b", "c"])
    with pytest.raises(DatasetError, match="holds str 'x, y', not a list"):
        one({"question": "q", "choices": "x, y"})
    with pytest.raises(DatasetError, match="question column 'question' is empty"):
        one({"question": " ", "choices": ["x", "y"]})
    rows = [{"id": "same", "question": "q", "choices": ["x", "y"]}] * 2
    with pytest.raises(DatasetError, match="rows 0 and 1 share the id 'same'"):
        load_dataset(_write(tmp_path, "jsonl", rows), id_col="id")


def test_unreadable_files(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "q"}\nnot json\n')
    with pytest.raises(DatasetError, match="line 2 is not valid JSON"):
        load_dataset(p)
    p = tmp_path / "list.jsonl"
    p.write_text("[1, 2]\n")
    with pytest.raises(DatasetError, match="record 0 is a list, not an object"):
        load_dataset(p)
    p = tmp_path / "x.xlsx"
    p.write_text("")
    with pytest.raises(DatasetError, match="cannot tell the format of x.xlsx"):
        load_dataset(p)
    p = tmp_path / "empty.csv"
    p.write_text("question,choices\n")
    with pytest.raises(DatasetError, match="holds no rows"):
        load_dataset(p)
    with pytest.raises(DatasetError, match=r"d.jsonl is a single split \('all'\); drop --split test"):
        load_dataset(_write(tmp_path, "jsonl", ROWS), split="test")


def test_limit_on_user_file(tmp_path):
    rows = [{"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2} for i in range(30)]
    qs = load_dataset(_write(tmp_path, "jsonl", rows), limit=7, seed=3)
    assert len(qs) == 7 and [int(q.id) for q in qs] == sorted(int(q.id) for q in qs)
