"""`refcal run` on free-form questions (issue 11): generation, judging, P(True), ReEval, verbal, DACA on the
two-option verdicts; resume; labels hidden; the calibrator's task."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refcal.backends.fake import FakeBackend
from refcal.calibrate import DACA, load_calibrator
from refcal.cli import main
from refcal.errors import CalibratorFileError, InputError
from refcal.report import write_report
from refcal.run import RunConfig, load_result
from refcal.run.freeform import FREEFORM_METHODS, is_freeform, parse_freeform_methods, run_freeform
from refcal.scores import ScoreSet, load_scores
from refcal.tasks.freeform import FREEFORM_TASK, AnswerLikelihoodTask, GenerateTask, PTrueTask, pair
from refcal.tasks.prompts_freeform import P_TRUE_LETTERS, generation_prompt

N = 24
TRICKY = "<b>What</b> | is *this* [x](javascript:alert(1))?"


class Counting(FakeBackend):
    """A fake that counts generations and can stop (KeyboardInterrupt) after ``stop_after`` of them."""

    def __init__(self, *a, stop_after: int | None = None, **kw):
        super().__init__(*a, **kw)
        self.n_generated, self.stop_after = 0, stop_after

    def generate(self, requests):
        if self.stop_after is not None and self.n_generated + len(requests) > self.stop_after:
            raise KeyboardInterrupt
        self.n_generated += len(requests)
        return super().generate(requests)


def _fake_answer(q: str) -> str:
    return FakeBackend("chat").generate(GenerateTask(chat=True).requests(pair("x", q)))[0].strip()


def _data(tmp_path: Path, *, labelled: bool = True) -> Path:
    """N questions; the fake chat model's own answer is the reference of every other one (so half are right)."""
    rows = []
    for i in range(N):
        q = TRICKY if i == 0 else f"Which thing is number {i}?"
        row = {"question": q}
        if labelled:
            row["answers"] = [_fake_answer(q)] if i % 2 == 0 else ["zebra"]
        rows.append(row)
    p = tmp_path / ("ff.jsonl" if labelled else "ff_unlabelled.jsonl")
    p.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    return p


def _cfg(path: Path, cache: Path, **kw) -> RunConfig:
    return RunConfig(base="fake:base", chat="fake:chat", dataset=str(path), limit=None, cache_dir=str(cache),
                     progress=False, batch_size=4, **kw)


def _backends(**chat_kw):
    return {"chat": Counting("chat", scale=2.0, **chat_kw), "base": FakeBackend("base")}


@pytest.fixture(scope="module")
def labelled_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ff")
    data = _data(tmp)
    out = run_freeform(_cfg(data, tmp / "cache"), tmp / "run", backends=_backends(), finish=write_report)
    return tmp, data, out


def test_end_to_end_writes_every_method(labelled_run):
    _, _, out = labelled_run
    res = load_result(out)
    assert res.has_labels and res.freeform["accuracy"] == pytest.approx(0.5)
    assert set(res.methods) == set(FREEFORM_METHODS) and not res.unavailable
    for key, m in res.methods.items():
        for metric in ("ece", "mce", "aece", "brier", "nll", "auroc", "aurc"):
            assert metric in m, (key, metric)
        assert math.isfinite(m["ece"].mean) and math.isfinite(m["brier"].mean)
    assert len(res.fits["daca"]) == 5 and all(r.n_agree is not None for r in res.fits["daca"])
    assert res.diagnostics is not None and res.diagnostics.n == N
    t = res.timing  # the same timing keys as a multiple-choice run
    assert set(t) == {"wall_seconds", "scoring_seconds", "evaluation_seconds"}
    assert t["wall_seconds"] >= t["scoring_seconds"] + t["evaluation_seconds"] - 0.02 and t["evaluation_seconds"] >= 0
    # the verbal replies of the fake never parse: every one counted, none dropped
    pf = res.freeform["methods"]["verbal"]["parse_failures"]
    assert pf["n"] == N and pf["n_failed"] == N
    # the deployable calibrator and the score files record the task
    cal = json.loads((out / "calibrator.json").read_text())
    assert cal["task"] == FREEFORM_TASK and cal["n_options"] == 2
    chat = load_scores(out / "scores" / "chat.parquet")
    assert chat.meta["task"] == FREEFORM_TASK and chat.logits.shape == (N, 2)
    assert chat.labels.tolist() == [1 if i % 2 == 0 else 0 for i in range(N)]
    assert chat.columns["answer"][2] == _fake_answer("Which thing is number 2?")
    # config.json records the prompts and the judge
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "free-form" and config["freeform"]["judge"]["kind"] == "exact_match"
    assert config["freeform"]["prompts"]["p_true_letters"] == list(P_TRUE_LETTERS)


def test_report_escapes_the_example_answers(labelled_run):
    _, _, out = labelled_run
    html_text = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    assert "Free-form answers" in html_text and "&lt;b&gt;What&lt;/b&gt;" in html_text
    assert "<b>What" not in html_text
    assert r"\<b\>What\</b\> \| is \*this\* \[x\](javascript:alert(1))?" in md


def test_resume_after_an_interruption_does_not_generate_again(tmp_path, labelled_run):
    _, data, first = labelled_run
    cache = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        run_freeform(_cfg(data, cache), tmp_path / "run", backends=_backends(stop_after=8))
    again = _backends()
    out = run_freeform(_cfg(data, cache), tmp_path / "run", backends=again)
    assert again["chat"].n_generated == N - 8 + N  # the missing answers, then the N verbal replies
    # the same numbers as the uninterrupted run
    a, b = load_result(first), load_result(out)
    for key in a.methods:
        assert a.methods[key]["ece"].values == b.methods[key]["ece"].values
    # and a third run generates nothing
    third = _backends()
    run_freeform(_cfg(data, cache), tmp_path / "run3", backends=third)
    assert third["chat"].n_generated == 0


def test_hidden_labels_leave_every_label_free_fit_unchanged(tmp_path, labelled_run):
    tmp, _, first = labelled_run
    data = _data(tmp_path, labelled=False)
    out = run_freeform(_cfg(data, tmp / "cache"), tmp_path / "run", backends=_backends())
    a, b = load_result(first), load_result(out)
    assert not b.has_labels and b.freeform["judge"] is None
    assert "ts" in b.unavailable and "ts" not in b.methods
    for key in ("daca", "naive"):
        assert [r.temperature for r in a.fits[key]] == [r.temperature for r in b.fits[key]]
    ca, cb = load_scores(first / "scores" / "chat.parquet"), load_scores(out / "scores" / "chat.parquet")
    np.testing.assert_array_equal(ca.logits, cb.logits)
    for key in ("chat", "p_true", "base", "naive", "daca", "reeval", "verbal"):
        np.testing.assert_array_equal(ca.columns[f"confidence_{key}"], cb.columns[f"confidence_{key}"], err_msg=key)
    assert (cb.labels == -1).all()


def test_calibrator_task_is_refused_on_the_other_kind_of_scores(tmp_path, labelled_run, capsys):
    _, _, out = labelled_run
    rng = np.random.default_rng(0)
    base, chat = rng.normal(size=(40, 2)), 3 * rng.normal(size=(40, 2))
    mc_cal = tmp_path / "mc.json"
    DACA().fit(base, chat).save(mc_cal)
    mc_scores = tmp_path / "mc.parquet"
    ScoreSet.from_rows([str(i) for i in range(40)], chat.tolist(), [0] * 40).save(mc_scores)
    ff_cal, ff_scores = out / "calibrator.json", out / "scores" / "chat.parquet"
    assert load_calibrator(ff_cal).task_ == FREEFORM_TASK and load_calibrator(mc_cal).task_ == "multiple-choice"
    for scores, cal, got, fitted in ((ff_scores, mc_cal, FREEFORM_TASK, "multiple-choice"),
                                     (mc_scores, ff_cal, "multiple-choice", FREEFORM_TASK)):
        capsys.readouterr()
        assert main(["apply", "--scores", str(scores), "--calibrator", str(cal), "-o", str(tmp_path / "x.parquet")]) == 2
        err = capsys.readouterr().err
        assert f"fitted on {fitted} scores but" in err and f"holds {got} scores" in err
        assert len(err.strip().splitlines()) == 1
        assert main(["evaluate", "--scores", str(scores), "--calibrator", str(cal)]) == 2
        assert "fit a calibrator on" in capsys.readouterr().err
    assert main(["apply", "--scores", str(ff_scores), "--calibrator", str(ff_cal), "-o", str(tmp_path / "ok.parquet")]) == 0
    # a hand-edited task is refused; a file without one (older builds) is multiple-choice
    doc = json.loads(ff_cal.read_text())
    (tmp_path / "bad.json").write_text(json.dumps({**doc, "task": "regression"}))
    with pytest.raises(CalibratorFileError, match="task must be one of"):
        load_calibrator(tmp_path / "bad.json")
    del doc["task"]
    (tmp_path / "old.json").write_text(json.dumps(doc))
    assert load_calibrator(tmp_path / "old.json").task_ == "multiple-choice"


def test_cli_dispatches_free_form_files(tmp_path, labelled_run, capsys):
    _, data, _ = labelled_run
    out = tmp_path / "cli"
    rc = main(["run", "--dataset", str(data), "--base", "fake:base", "--chat", "fake:chat", "--methods",
               "p_true,daca,verbal", "--judge", "contains", "--no-progress", "--cache-dir", str(tmp_path / "c"),
               "-o", str(out), "--no-report"])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "answers generated" in printed.out and "DACA" in printed.out
    res = load_result(out)
    assert set(res.methods) == {"p_true", "daca", "verbal"} and res.freeform["judge"]["containment"] is True
    assert main(["run", "--dataset", "sciq", "--judge", "contains", "-o", str(tmp_path / "y")]) == 2
    assert "free-form data sets only" in capsys.readouterr().err


def test_free_form_detection_and_methods(tmp_path, labelled_run):
    _, data, _ = labelled_run
    assert is_freeform("triviaqa") and is_freeform("nq-open") and is_freeform(str(data))
    assert not is_freeform("sciq") and not is_freeform(str(tmp_path / "missing.jsonl"))
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"question": "q", "choices": ["a", "b"], "answer": 0}))
    assert not is_freeform(str(mc))
    assert parse_freeform_methods(None) == list(FREEFORM_METHODS)
    assert parse_freeform_methods("ts,chat") == ["chat", "ts"]
    assert parse_freeform_methods("default") == parse_freeform_methods("all") == list(FREEFORM_METHODS)
    assert "verbal" not in parse_freeform_methods("no-generation")
    with pytest.raises(InputError, match="does not apply to free-form"):
        parse_freeform_methods("cape")


def test_free_form_tasks():
    q = pair("7", "Capital of France?", "Paris", 1)
    raw = PTrueTask(chat=False).requests(q)[0]
    assert raw.letters == ("B", "A") and raw.prompt.endswith("The proposed answer is: (") and not raw.chat
    assert "Proposed Answer: Paris\n" in raw.prompt
    chat = PTrueTask(chat=True).requests(q)[0]
    assert chat.chat and chat.prompt.endswith("The proposed answer is:")
    base_req = AnswerLikelihoodTask(chat=False).requests(q)[0]
    assert base_req.context == generation_prompt("Capital of France?") and base_req.continuations == (" Paris",)
    assert AnswerLikelihoodTask(chat=True).requests(q)[0].continuations == ("Paris",)
    t = AnswerLikelihoodTask()
    wrong, right = t.finish({"lp": -2.0, "nt": 4})
    assert right == -0.5 and wrong == pytest.approx(math.log(1 - math.exp(-0.5)), rel=1e-15)
    assert t.finish({"lp": 0.0, "nt": 3})[0] == pytest.approx(math.log(2.0 ** -52))  # c capped below 1
    assert not t.valid(q, {"lp": -1.0, "nt": 0}) and t.valid(q, {"lp": -1.0, "nt": 2})
    g = GenerateTask(chat=True)
    assert g.requests(q)[0].stop == ("\n",) and g.requests(q)[0].max_new_tokens == 32
    assert g.reduce(q, ["  Paris \n"]) == "Paris" and g.columns(["a", "b"]) == {"answer": ["a", "b"]}


# ---------------------------------------------------------------------------------------------- real models
@pytest.mark.slow
def test_triviaqa_on_the_packaged_pair(tmp_path):
    """`refcal run --dataset triviaqa` on the packaged models (12 questions to keep CI time down)."""
    out = tmp_path / "run"
    env = {**os.environ, "REFCAL_CACHE_DIR": os.environ.get("REFCAL_CACHE_DIR", str(Path.home() / ".cache/refcal"))}
    proc = subprocess.run([sys.executable, "-m", "refcal", "run", "--dataset", "triviaqa", "--limit", "12",
                           "--no-progress", "--cache-dir", str(tmp_path / "cache"), "-o", str(out)],
                          capture_output=True, text=True, env=env, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "metrics.json").read_text())
    assert (out / "report.html").exists() and (out / "report.md").exists()
    assert doc["freeform"]["n_questions"] == 12 and len(doc["freeform"]["examples"]) == 12
    for key in FREEFORM_METHODS:
        if key in doc["unavailable"]:
            assert doc["unavailable"][key]  # a stated reason
            continue
        for metric in ("ece", "brier", "auroc"):
            entry = doc["methods"][key][metric]
            assert entry["mean"] is not None or entry["n_undefined"] > 0, (key, metric)
    assert json.loads((out / "calibrator.json").read_text())["task"] == FREEFORM_TASK


# ---------------------------------------------------------------------------------------------- API
@pytest.mark.api
def test_api_chat_model_through_llama_cpp_server(tmp_path):
    """The chat model behind a real llama.cpp server (OpenAI-compatible): generation, P(True) letters and the
    verbal replies through the API; its answer likelihood needs prompt log-probabilities under the chat
    template, which the API cannot give, so `chat` is listed with that reason. The base model is the fake
    one (this test is about the API path, not about the numbers)."""
    from api_server import MODEL_ALIAS, LlamaServer

    srv = LlamaServer()
    try:
        srv.start()
    except Exception as exc:  # noqa: BLE001 - a server that cannot start fails the test, never skips it
        pytest.fail(f"could not start the llama.cpp server: {exc}")
    try:
        data = tmp_path / "q.jsonl"
        rows = [{"question": "What is the capital of France?", "answers": ["Paris"]},
                {"question": "How many legs does a spider have?", "answers": ["eight", "8"]},
                {"question": "What colour is the sky on a clear day?", "answers": ["blue"]},
                {"question": "Who wrote Romeo and Juliet?", "answers": ["William Shakespeare", "Shakespeare"]},
                {"question": "What is 2 + 2?", "answers": ["4", "four"]},
                {"question": "What is the largest planet of the solar system?", "answers": ["Jupiter"]},
                {"question": "Which gas do plants absorb from the air?", "answers": ["carbon dioxide", "CO2"]},
                {"question": "What is frozen water called?", "answers": ["ice"]}]
        data.write_text("\n".join(json.dumps(r) for r in rows))
        cfg = RunConfig(base="fake:base", chat=f"openai:{MODEL_ALIAS}", api_base=srv.url, dataset=str(data),
                        limit=None, cache_dir=str(tmp_path / "cache"), progress=False, n_splits=2)
        out = run_freeform(cfg, tmp_path / "run", judge="contains")
        res = load_result(out)
        assert "chat" in res.unavailable and "log-probabilities" in res.unavailable["chat"]
        for key in ("p_true", "daca", "verbal"):
            assert key in res.methods and math.isfinite(res.methods[key]["brier"].mean), key
        chat = load_scores(out / "scores" / "chat.parquet")
        assert all(isinstance(a, str) for a in chat.columns["answer"]) and any(chat.columns["answer"])
        assert np.isfinite(chat.logits).any(axis=1).all()  # P(True) letters from the API's top log-probabilities
        assert res.freeform["methods"]["verbal"]["parse_failures"]["n"] == len(rows)
    finally:
        srv.stop()


def test_freeform_metrics_are_those_of_confidence_against_correctness():
    """A confidence c is scored as the claim "correct" held with c: AUROC and Brier equal scikit-learn's on
    (correct, c), ECE bins c itself (not max(c, 1 - c)), NLL is the binary log loss."""
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    from refcal import metrics
    from refcal.run.evaluate import _unit_metrics
    from refcal.run.freeform import _correct_with, _two

    rng = np.random.default_rng(3)
    c = rng.uniform(0.02, 0.98, 300)
    y = (rng.uniform(size=300) < c ** 2).astype(np.int64)  # over-confident: accuracy c^2
    lp = _two(c)
    row = _unit_metrics({"m": _correct_with(lp)}, y, 10)["m"]
    assert row["auroc"] == pytest.approx(roc_auc_score(y, c), abs=1e-12)
    assert row["brier"] == pytest.approx(brier_score_loss(y, c), abs=1e-12)
    assert row["accuracy"] == pytest.approx(y.mean(), abs=1e-15)
    edges = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(c, edges[1:-1], right=True), 0, 9)
    ece = sum(abs(c[which == b].mean() - y[which == b].mean()) * (which == b).mean()
              for b in range(10) if (which == b).any())
    assert row["ece"] == pytest.approx(ece, abs=1e-12)
    assert metrics.nll_from_log_proba(lp, y) == pytest.approx(log_loss(y, c), abs=1e-12)
