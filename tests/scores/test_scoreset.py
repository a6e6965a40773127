import json

import numpy as np
import pytest

from refcal.errors import MismatchError, ScoreFileError
from refcal.scores import ScoreSet, join_scores, load_scores


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_roundtrip_parquet(tmp_path):
    src = _write_jsonl(tmp_path / "s.jsonl", [
        {"id": "q1", "logits": [1.2, -0.3, 0.5, 0.1], "label": 2, "subject": "math"},
        {"id": "q2", "logits": [0.0, 1.0, 2.0], "label": None, "subject": "bio"},
        {"id": "q3", "logits": [0.5, 0.25]},
    ])
    s = load_scores(src)
    assert s.logits.shape == (3, 4)
    assert s.n_options.tolist() == [4, 3, 2]
    assert np.isneginf(s.logits[1, 3]) and np.isneginf(s.logits[2, 2:]).all()
    assert s.labels.tolist() == [2, -1, -1]
    assert not s.has_labels
    s.meta["model"] = "m"
    out = s.save(tmp_path / "s.parquet")
    back = load_scores(out)
    np.testing.assert_array_equal(back.logits, s.logits)
    np.testing.assert_array_equal(back.labels, s.labels)
    assert back.ids.tolist() == ["q1", "q2", "q3"]
    assert back.meta["model"] == "m" and back.meta["format_version"] == 1
    assert back.columns["subject"].tolist() == ["math", "bio", None]
    again = load_scores(back.save(tmp_path / "t.jsonl"))
    np.testing.assert_array_equal(again.logits, s.logits)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"id": "a", "logits": [1, 2]}, {"id": "a", "logits": [1, 2]}], "appears 2 times"),
        ([{"id": "a", "logits": [1]}], "at least 2"),
        ([{"id": "a", "logits": [1, "x"]}], "not a number"),
        ([{"id": "a", "logits": [1, 2, None], "label": 5}], "label 5"),
        ([{"id": "a", "logits": [1, 2], "label": 1.5}], "not an option index"),
        ([{"id": "a", "logit": [1, 2]}], "missing key 'logits'"),
        ([{"id": "a", "logits": [None, None]}], "every option missing"),
        ([{"id": "a", "logits": [1, 2, None], "label": 2}], "missing option"),
    ],
)
def test_bad_jsonl(tmp_path, rows, message):
    with pytest.raises(ScoreFileError, match=message):
        load_scores(_write_jsonl(tmp_path / "bad.jsonl", rows))


def test_nan_and_empty_and_garbage(tmp_path):
    (tmp_path / "nan.jsonl").write_text('{"id": "a", "logits": [NaN, 1.0]}\n')
    with pytest.raises(ScoreFileError, match="only finite values"):
        load_scores(tmp_path / "nan.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ScoreFileError, match="empty"):
        load_scores(tmp_path / "empty.jsonl")
    (tmp_path / "junk.jsonl").write_text("{not json\n")
    with pytest.raises(ScoreFileError, match=r"junk.jsonl:1: not valid JSON"):
        load_scores(tmp_path / "junk.jsonl")
    with pytest.raises(ScoreFileError, match="no such file"):
        load_scores(tmp_path / "missing.parquet")


def test_save_is_atomic_on_failure(tmp_path, monkeypatch):
    s = ScoreSet.from_rows(["a", "b"], [[1, 2], [3, 4]], [0, 1])
    target = s.save(tmp_path / "x.parquet")
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ScoreSet, "_write_parquet", boom)
    with pytest.raises(OSError):
        ScoreSet.from_rows(["c", "d"], [[1, 2], [3, 4]]).save(target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_join_aligns_on_id_and_refuses_mismatches():
    base = ScoreSet.from_rows(["a", "b", "c"], [[1, 2], [3, 4, 5], [0, 1]], [1, None, 0])
    chat = ScoreSet.from_rows(["c", "a", "b"], [[9, 8], [7, 6], [5, 4, 3]], [None, 1, 2])
    j = join_scores(base, chat)
    assert j.ids.tolist() == ["c", "a", "b"]
    np.testing.assert_array_equal(j.base[0, :2], [0, 1])
    np.testing.assert_array_equal(j.base[2], [3, 4, 5])
    assert j.labels.tolist() == [0, 1, 2]
    with pytest.raises(MismatchError, match="only in"):
        join_scores(base, chat.subset(np.array([0, 1])))
    other = ScoreSet.from_rows(["c", "a", "b"], [[9, 8], [7, 6], [5, 4]])
    with pytest.raises(MismatchError, match="has 3 options"):
        join_scores(base, other)
    clash = ScoreSet.from_rows(["c", "a", "b"], [[9, 8], [7, 6], [5, 4, 3]], [1, None, None])
    with pytest.raises(MismatchError, match="label 0"):
        join_scores(base, clash)


def test_one_present_option_is_refused(tmp_path):
    with pytest.raises(ScoreFileError, match="only one option present"):
        load_scores(_write_jsonl(tmp_path / "one.jsonl", [{"id": "a", "logits": [1.0, None]}]))


def test_join_checks_question_hashes_when_both_files_have_them():
    from refcal.scores import QUESTION_HASH, question_hash

    logits = [[0.0, 1.0], [1.0, 0.0]]
    h = [question_hash("What?"), question_hash("Why?")]
    a = ScoreSet.from_rows(["a", "b"], logits, columns={QUESTION_HASH: h})
    assert len(join_scores(a, ScoreSet.from_rows(["b", "a"], logits[::-1], columns={QUESTION_HASH: h[::-1]})).ids) == 2
    assert len(join_scores(a, ScoreSet.from_rows(["a", "b"], logits)).ids) == 2  # older files: no column, no check
    assert len(join_scores(a, ScoreSet.from_rows(["a", "b"], logits, columns={QUESTION_HASH: [None, h[1]]})).ids) == 2
    with pytest.raises(MismatchError, match="question 'a' has different question texts"):
        join_scores(a, ScoreSet.from_rows(["a", "b"], logits, columns={QUESTION_HASH: h[::-1]}))
    with pytest.raises(ScoreFileError, match="question_hash must be a string or null"):
        ScoreSet.from_rows(["a", "b"], logits, columns={QUESTION_HASH: [1, 2]})
    assert question_hash("What?") == question_hash("What?") != question_hash("What? ")
