"""Table-driven bad input through the real entry point, one table per category of the hostile probe
(issue 22): lm-eval import, free-form files, options, misbehaving servers, extreme scores. Permissions are
tabled in test_exit_codes.py, concurrency in tests/run/test_folder.py, tampered calibrators by the
calibrate tests.

Every refusal: exit 2, ONE line on stderr naming the problem, no traceback. Rows that must now be
accepted (a long lm-eval line, a free-form file with an id column or one unreferenced question) say so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from api_server import ScriptedServer, chat_answer
from refcal.cli import main
from refcal.run import load_result
from refcal.scores import load_scores

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "lmeval" / "base"


def refused(capsys, argv, words, rc=2) -> str:
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert code == rc, (code, cap.err)
    assert "Traceback" not in cap.err and "\n" not in err and err.startswith("refcal"), cap.err
    assert words in err, (words, err)
    return err


# --------------------------------------------------------------------------------------------- lm-eval import
def _lmeval(tmp_path: Path, edit_first=None, results=None) -> Path:
    samples = next(FIX.glob("samples_*.jsonl"))
    res = next(FIX.glob("results_*.json"))
    lines = samples.read_text(encoding="utf-8").splitlines()
    if edit_first is not None:
        first = json.loads(lines[0])
        edit_first(first)
        lines[0] = json.dumps(first)
    out = tmp_path / samples.name
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    if results is None:
        shutil.copy(res, tmp_path / res.name)
    else:
        (tmp_path / res.name).write_text(results, encoding="utf-8")
    return out


def _set(key, value):
    def edit(d):
        d[key] = value
    return edit


def _odd_argument_key(d):
    d["arguments"]["gen_args_x"] = d["arguments"].pop("gen_args_0")


LMEVAL = [
    ("doc_id list", _set("doc_id", [1]), None, "doc_id [1], not an integer or a string"),
    ("doc_id null", _set("doc_id", None), None, "doc_id None, not an integer or a string"),
    ("filtered_resps null", _set("filtered_resps", None), None, "'filtered_resps' is None"),
    ("filtered_resps number", _set("filtered_resps", 5), None, "'filtered_resps' is 5"),
    ("odd arguments key", _odd_argument_key, None, "'arguments' has the key 'gen_args_x'"),
    ("arguments a string", _set("arguments", "abc"), None, "'arguments' is 'abc'"),
    ("malformed results companion", None, "{not json", "not a valid JSON results file"),
    ("results configs a list", None, '{"configs": []}', "'configs' is not an object"),
    ("results an array", None, "[1, 2]", "not a JSON object"),
]


@pytest.mark.parametrize("edit,results,words", [c[1:] for c in LMEVAL], ids=[c[0] for c in LMEVAL])
def test_lmeval_import_refusals(edit, results, words, tmp_path, capsys):
    refused(capsys, ["evaluate", "--scores", _lmeval(tmp_path, edit, results)], words)


def test_lmeval_first_line_over_64_kib_is_recognised(tmp_path, capsys):
    """A long few-shot prompt makes the first sample's line longer than the 64 KiB read to detect the
    format (it was then read as a refcal score file: "missing key 'id'")."""
    path = _lmeval(tmp_path, _set("doc", {"question": "word " * 30000}))
    assert len(path.read_text().splitlines()[0]) > 1 << 17
    assert main(["evaluate", "--scores", str(path)]) == 0, capsys.readouterr().err
    assert len(load_scores(path)) == 8


# --------------------------------------------------------------------------------------------- free-form files
N_FF = 24


def _ff_rows(**over):
    rows = [{"id": f"item-{i}", "question": f"Which thing is number {i}?", "answers": ["zebra", str(i)]}
            for i in range(N_FF)]
    for i, row in over.items():
        rows[int(i.lstrip("r"))].update(row)
    return rows


def _ff_run(tmp_path, rows, *extra):
    data = tmp_path / "ff.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return ["run", "--dataset", data, "--base", "fake:base", "--chat", "fake:chat", "--methods", "p_true,daca",
            "--judge", "contains", "--no-progress", "--no-report", "--cache-dir", tmp_path / "cache",
            "-o", tmp_path / "run", *extra]


FREEFORM = [
    ("answers not a list", {"r3": {"answers": 5}}, "not a list of answers"),
    ("empty question", {"r2": {"question": "  "}}, "question"),
    ("duplicate ids", {"r5": {"id": "item-4"}}, "share the id 'item-4'"),
    ("empty id", {"r1": {"id": ""}}, "id column 'id' is empty"),
]


@pytest.mark.parametrize("over,words", [c[1:] for c in FREEFORM], ids=[c[0] for c in FREEFORM])
def test_freeform_file_refusals(over, words, tmp_path, capsys):
    refused(capsys, _ff_run(tmp_path, _ff_rows(**over)), words)


def test_freeform_file_id_column_and_one_unreferenced_question(tmp_path, capsys):
    """The ``id`` column names the questions (it was ignored for row numbers), and one question without
    references is the only one left unjudged (it used to switch judging off for the whole run)."""
    rows = _ff_rows(r7={"answers": []})
    assert main([str(a) for a in _ff_run(tmp_path, rows)]) == 0, capsys.readouterr().err
    res = load_result(tmp_path / "run")
    assert res.has_labels and res.freeform["accuracy"] is not None and res.freeform["n_unjudged"] == 1
    examples = res.freeform["examples"]
    assert [e["id"] for e in examples] == [f"item-{i}" for i in range(len(examples))]
    assert {e["correct"] for e in examples if e["id"] != "item-7"} <= {0, 1}
    assert "ece" in res.methods["p_true"]
    ids = set(load_scores(tmp_path / "run" / "scores" / "chat.parquet").ids)
    assert "item-7" in ids and "7" not in ids


# --------------------------------------------------------------------------------------------- options
def _mc(tmp_path, n=40):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Q {i}?", "choices": ["a", "b", "c", "d"],
                                        "label": i % 4}) + "\n" for i in range(n)))
    return data


def _run_mc(tmp_path, *extra, n=40):
    return ["run", "--base", "fake:b", "--chat", "fake:c", "-d", _mc(tmp_path, n), "--scoring", "letter",
            "--limit", "0", "--no-progress", "--no-report", "--cache-dir", tmp_path / "cache",
            "-o", tmp_path / "run", *extra]


OPTIONS = [
    ("evaluate --bins 1e9", lambda t: ["evaluate", "--scores", _scores(t), "--bins", "1000000000"], "from 1 to 1000"),
    ("evaluate --bins 1001", lambda t: ["evaluate", "--scores", _scores(t), "--bins", "1001"], "from 1 to 1000"),
    ("run --bins 1e9", lambda t: _run_mc(t, "--bins", "1000000000"), "--bins"),
    ("run too few to split", lambda t: _run_mc(t, n=4), "too few to split"),
    ("free-form too few to split", lambda t: _ff_run(t, _ff_rows()[:3]), "too few to split"),
]


def _scores(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "logits": [0.0, float(i % 3)], "label": i % 2}) + "\n"
                            for i in range(20)))
    return path


@pytest.mark.parametrize("argv,words", [c[1:] for c in OPTIONS], ids=[c[0] for c in OPTIONS])
def test_option_refusals_before_any_work(argv, words, tmp_path, capsys):
    refused(capsys, argv(tmp_path), words)
    cache = tmp_path / "cache"
    assert not cache.exists() or not [p for p in cache.rglob("*") if p.is_file()]  # nothing scored first


# --------------------------------------------------------------------------------------------- misbehaving servers
def _top(pairs, token="A", logprob=-0.1):
    return lambda path, req: (200, chat_answer(pairs, token, logprob))


SERVERS = [
    ("logprob a string", _top([("A", "-0.1"), ("B", -2.0)]), "log-probability '-0.1' for the token 'A', not a number"),
    ("logprob null", _top([("A", None), ("B", -2.0)]), "log-probability None"),
    ("ignores top_logprobs", _top([]), "ignores top_logprobs=20"),
    ("positive logprob", _top([("A", 0.5), ("B", -2.0)]), "invalid log-probabilities"),
    ("no logprobs at all", lambda path, req: (200, {"choices": [{"message": {"content": "A"}, "logprobs": None}]}),
     "without token log-probabilities"),
    ("unknown model", lambda path, req: (404, {"error": {"message": "model not found"}}), "refused with HTTP 404"),
]


@pytest.mark.parametrize("answer,words", [c[1:] for c in SERVERS], ids=[c[0] for c in SERVERS])
def test_misbehaving_server_refusals(answer, words, tmp_path, capsys):
    with ScriptedServer(answer) as srv:
        refused(capsys, ["score", "-m", "openai:m", "--api-base", srv.url, "-d", _mc(tmp_path, 8), "--scoring",
                         "letter", "--api-letters", "topk", "--no-progress", "--cache-dir", tmp_path / "cache",
                         "-o", tmp_path / "s.parquet"], words)
    assert not (tmp_path / "s.parquet").exists()


# --------------------------------------------------------------------------------------------- extreme scores
def _labelled(tmp_path, label):
    path = tmp_path / "x.jsonl"
    path.write_text(f'{{"id": "a", "logits": [0, 1], "label": {label}}}\n'
                    + "".join(f'{{"id": "q{i}", "logits": [{i % 3}, 1], "label": {i % 2}}}\n' for i in range(30)))
    return path


EXTREME = [
    ("label 1e300", "1e300", "label 1e+300 is out of range"),
    ("label 10**30", str(10**30), "label 1e+30 is out of range"),
    ("label -1e300", "-1e300", "label -1e+300 is out of range"),
    ("logit 1e101", None, "1e+101"),
]


@pytest.mark.parametrize("label,words", [c[1:] for c in EXTREME], ids=[c[0] for c in EXTREME])
@pytest.mark.parametrize("command", ["evaluate", "fit"])
def test_extreme_score_refusals(command, label, words, tmp_path, capsys):
    if label is None:
        path = tmp_path / "x.jsonl"
        path.write_text('{"id": "a", "logits": [0, 1e101], "label": 0}\n'
                        + "".join(f'{{"id": "q{i}", "logits": [{i % 3}, 1], "label": {i % 2}}}\n' for i in range(30)))
    else:
        path = _labelled(tmp_path, label)
    argv = ["evaluate", "--scores", path] if command == "evaluate" else \
        ["fit", "--method", "ts", "--chat", path, "-o", tmp_path / "c.json"]
    refused(capsys, argv, words)
