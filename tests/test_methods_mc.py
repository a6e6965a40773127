"""Multiple-choice methods beyond DACA: CAPE, BaseCal-ReEval, verbal elicitation (+ ensemble), the
``--methods`` keywords, top-label metrics, the premise check and the paper's table (issue 10)."""

import json

import numpy as np
import pytest
from scipy.special import softmax as sp_softmax

from refcal import metrics as M
from refcal.backends.fake import FakeBackend
from refcal.calibrate.methods import (
    DEFAULT_METHODS,
    METHODS,
    NO_GENERATION_METHODS,
    MethodContext,
    parse_methods,
)
from refcal.data.base import Question
from refcal.errors import InputError
from refcal.report import write_report
from refcal.run import RunConfig, load_result, protocol, run
from refcal.run.evaluate import premise_diagnostics
from refcal.scoring import score_questions
from refcal.tasks.elicit import NOT_AN_OPTION, ElicitationEnsembleTask, ElicitationTask
from test_pipeline import _questions


@pytest.fixture()
def fake_models(monkeypatch, tmp_path):
    monkeypatch.setenv("REFCAL_CACHE_DIR", str(tmp_path / "cache"))
    backends = {"fake-base": FakeBackend("base", scale=1.0), "fake-chat": FakeBackend("chat", scale=3.0)}
    monkeypatch.setattr("refcal.backends.load_backend", lambda spec, **kw: backends[spec])
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    return backends


def _logits(n=200, k=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(k, size=n)
    base = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    chat = 3.0 * (base + rng.normal(scale=0.7, size=(n, k)))
    return base, chat, y


# ---------------------------------------------------------------------------------------------- registry
def test_methods_keywords():
    assert parse_methods(None) == list(DEFAULT_METHODS) == ["chat", "base", "naive", "daca", "ts", "daca_agree"]
    assert parse_methods("default") == list(DEFAULT_METHODS)
    assert parse_methods("all") == list(METHODS)
    gen = {k for k, m in METHODS.items() if m.needs_generation}
    assert gen == {"elicitation", "elicitation_ensemble"}
    assert set(parse_methods("no-generation")) == set(METHODS) - gen == set(NO_GENERATION_METHODS)
    assert parse_methods("default,cape") == ["chat", "base", "naive", "daca", "ts", "cape", "daca_agree"]
    with pytest.raises(InputError, match="no-generation"):
        parse_methods("capes")


def test_cape_not_applicable_under_cloze_says_why():
    why = METHODS["cape"].why_not(MethodContext(has_labels=True, scoring="cloze"))
    assert why and "letter" in why and "order" in why
    assert METHODS["cape"].why_not(MethodContext(has_labels=True, scoring="letter")) is None
    assert METHODS["reeval"].why_not(MethodContext(has_labels=True, scoring="cloze")) is None


def test_cape_under_scoring_cape_says_the_chat_scores_are_cape_already():
    why = METHODS["cape"].why_not(MethodContext(has_labels=True, scoring="cape"))
    assert why.startswith("under --scoring cape the chat model's scores are CAPE already")
    assert "no order or letters" not in why and why.endswith("use --scoring letter to compare CAPE with plain "
                                                              "letter scores")


@pytest.mark.parametrize("key", [k for k, m in METHODS.items()
                                 if not m.needs_labels and m.fit is not None and m.source is None])
def test_label_free_fit_ignores_labels(key):
    """Every label-free method fits the same parameters with the labels given, hidden (-1) or absent."""
    base, chat, y = _logits()
    m = METHODS[key]
    ref = m.apply(m.fit(base, chat, None), base, chat)
    for labels in (y, np.full_like(y, -1)):
        out = m.apply(m.fit(base, chat, labels), base, chat)
        np.testing.assert_array_equal(out, ref)


def test_reeval_is_base_probability_of_chat_answer():
    base, chat, _ = _logits(50)
    chat[:, 0] += 4.0  # the chat model favours option A: it disagrees with the base model on many questions
    out = METHODS["reeval"].apply(None, base, chat)
    assert isinstance(out, M.TopLabel)
    a = chat.argmax(axis=1)
    np.testing.assert_array_equal(out.prediction, a)
    np.testing.assert_allclose(out.confidence, sp_softmax(base, axis=1)[np.arange(50), a], rtol=1e-12)
    assert (base.argmax(axis=1) != a).any()  # the prediction is the chat model's even where the base disagrees


# ---------------------------------------------------------------------------------------------- top label
def test_top_label_metrics_match_hand_computation():
    pred = np.array([0, 1, -1, 2, 3, 0])
    conf = np.array([0.9, 0.15, 0.25, 0.65, 0.95, 0.55])
    y = np.array([0, 0, 1, 2, 3, 1])
    corr = np.array([1, 0, 0, 1, 1, 0], dtype=float)
    t = M.TopLabel(pred, conf)
    # 10 equal-width bins: [0.1,0.2):{0.15}, [0.2,0.3):{0.25}, [0.5,0.6):{0.55}, [0.6,0.7):{0.65}, [0.9,1]:{0.9,0.95}
    ece = (abs(0.15 - 0) + abs(0.25 - 0) + abs(0.55 - 0) + abs(0.65 - 1) + 2 * abs(0.925 - 1)) / 6
    assert M.ece(t, y) == pytest.approx(ece, abs=1e-12)
    assert M.brier(t, y) == pytest.approx(np.mean((conf - corr) ** 2), abs=1e-12)
    assert M.accuracy(t, y) == pytest.approx(0.5)
    from sklearn.metrics import roc_auc_score

    assert M.auroc(t, y) == pytest.approx(roc_auc_score(corr, conf))
    ev = M.evaluate(t, y)
    assert np.isnan(ev["nll"]) and np.isnan(ev["brier_multiclass"])
    with pytest.raises(InputError, match="every option"):
        M.nll(t, y)
    ci = M.bootstrap_ci("ece", t, y, n_boot=50)
    assert ci.low <= ci.estimate <= ci.high


# ---------------------------------------------------------------------------------------------- elicitation
class _Replies:
    """A backend whose generations are given replies (by prompt order of arrival)."""

    fingerprint = "replies"

    def __init__(self, replies):
        self.replies = replies

    def generate(self, requests):
        return [self.replies(r.prompt) for r in requests]


def _q(i, k=4, label=1):
    return Question(f"q{i}", f"What is {i}?", tuple(f"opt{j}" for j in range(k)), label)


def test_elicitation_parses_and_counts_failures(tmp_path):
    replies = {"q0": "Guess: B\nProbability: 0.8", "q1": "Guess: Z\nProbability: 0.9", "q2": "I am not sure.",
               "q3": "**Guess:** (b)\n**Probability:** 65%"}
    qs = [_q(i) for i in range(4)]
    backend = _Replies(lambda prompt: next(v for k, v in replies.items() if f"What is {k[1:]}?" in prompt))
    sc = score_questions(backend, qs, task=ElicitationTask(), cache_dir=tmp_path, progress=False,
                         meta={"dataset": "t", "split": "s"})
    t = METHODS["elicitation"].apply(None, None, sc.logits)
    np.testing.assert_array_equal(t.prediction, [1, -1, -1, 1])
    np.testing.assert_allclose(t.confidence, [0.8, 0.25, 0.25, 0.65])  # failures: wrong, confidence 1/k
    assert list(sc.columns["parse_failure"]) == [None, NOT_AN_OPTION, "no guess", None]
    assert M.accuracy(t, sc.labels) == 0.5
    # cached: a second pass asks the backend nothing
    backend.replies = None
    again = score_questions(backend, qs, task=ElicitationTask(), cache_dir=tmp_path, progress=False,
                            meta={"dataset": "t", "split": "s"})
    np.testing.assert_array_equal(again.logits, sc.logits)


def test_elicitation_ensemble_avg_conf():
    task = ElicitationEnsembleTask(seed=3)
    q = _q(0, k=3)
    prompts = task.prompts(q)
    assert len(prompts) == 5 and "Hint" not in prompts[0] and all("Hint: " in p for p in prompts[1:])
    assert prompts == ElicitationEnsembleTask(seed=3).prompts(q)  # seeded: the same hints every time
    raw = {"k": 3, "texts": ["Answer and Confidence (0-100): A, 80%", "Answer and Confidence (0-100): B, 60%",
                             "Answer and Confidence (0-100): A, 40%", "nonsense", "Answer and Confidence (0-100): C, 20%"]}
    idx, conf, members = task.outcome(raw)
    assert idx == 0 and conf == pytest.approx((0.8 + 0.4) / (0.8 + 0.6 + 0.4 + 0.2))
    assert sum(not m.ok for m in members) == 1
    raw["texts"][0] = "nonsense"  # member 0 failed: a wrong answer with confidence 1/k
    assert task.outcome(raw)[:2] == (-1, pytest.approx(1 / 3))


# ---------------------------------------------------------------------------------------------- premise
def test_premise_verdict_over_confident_base():
    rng = np.random.default_rng(1)
    n, k = 400, 4
    y = rng.integers(k, size=n)
    correct = rng.random(n) < 0.5  # both models right half of the time, and they always agree
    pick = np.where(correct, y, (y + 1) % k)
    base = np.full((n, k), 0.0)
    base[np.arange(n), pick] = 4.0  # base confidence e^4 / (e^4 + 3) = 0.948 on 50 % accuracy
    d = premise_diagnostics(base, base.copy(), y, seed=0)
    assert d["n_agree"] == n
    assert d["base"]["gap"] == pytest.approx(np.exp(4) / (np.exp(4) + 3) - d["base"]["accuracy"])
    assert d["base"]["gap_low"] > 0.3
    assert "over-confident" in d["verdict"]["base"] and "under-correct" in d["verdict"]["base"]


# ---------------------------------------------------------------------------------------------- whole run
def _every_method_shown(out, n_questions):
    """Every method of the registry is in metrics.json with a finite ECE or listed with a stated reason, and
    report.md, report.html and table.md / table.json show each one (numbers or its reason)."""
    import html as html_mod

    doc = json.loads((out / "metrics.json").read_text())
    md = (out / "report.md").read_text().replace("\\", "")  # Markdown escapes removed
    page = (out / "report.html").read_text()
    table_md = (out / "table.md").read_text().replace("\\", "")
    table = json.loads((out / "table.json").read_text())
    assert [r["method"] for r in table["rows"]] == list(METHODS)
    for key in METHODS:
        label = doc["method_labels"][key]
        if key in doc["methods"]:
            assert key not in doc["unavailable"]
            assert np.isfinite(doc["methods"][key]["ece"]["mean"]), key
            assert f"| {label} | " in md and f"| {label} | " in table_md, key
        else:
            reason = doc["unavailable"][key]
            assert reason.strip(), key
            assert f"not applicable: {reason}" in md and f"not applicable: {reason}" in table_md, key
            assert html_mod.escape(reason) in page, key
        assert html_mod.escape(label) in page, key
    for key in ("elicitation", "elicitation_ensemble"):
        pf = doc["parse_failures"][key]
        assert pf["n"] == n_questions
        text = f"{doc['method_labels'][key]}: {pf['n_failed']} of {pf['n']} replies could not be used"
        assert text in md and html_mod.escape(text) in page
    return doc


def test_run_all_methods_writes_every_key(tmp_path, monkeypatch, fake_models):
    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(60))
    cfg = RunConfig(base="fake-base", chat="fake-chat", dataset="toy", scoring="letter", methods=["all"],
                    n_splits=2, progress=False)
    out = run(cfg, tmp_path / "run", finish=write_report)
    doc = _every_method_shown(out, 60)
    for key in ("reeval", "elicitation", "elicitation_ensemble"):
        assert doc["methods"][key]["nll"]["mean"] is None  # top-label: no distribution, no NLL
    # the fake backend's generations are random words: every reply fails, is counted, and is wrong
    pf = doc["parse_failures"]
    assert pf["elicitation"]["n"] == pf["elicitation"]["n_failed"] == 60
    assert pf["elicitation_ensemble"]["n_member_failures"] == 300
    assert doc["methods"]["elicitation"]["accuracy"]["mean"] == 0.0
    assert doc["methods"]["elicitation"]["mean_confidence"]["mean"] == pytest.approx(0.25)
    assert (out / "scores" / "chat_cape.parquet").exists() and (out / "scores" / "chat_elicitation.parquet").exists()
    md = (out / "report.md").read_text()
    assert "60 of 60 replies could not be used" in md and "Premise check" in md
    assert (out / "plots" / "ece_intervals.png").exists()
    assert "| CAPE (option permutations) |" in (out / "table.md").read_text()
    assert load_result(out).parse_failures == doc["parse_failures"]
    table = json.loads((out / "table.json").read_text())
    assert table["spread_over"] == "splits" and "mean ± std over 2 splits" in (out / "table.md").read_text()
    daca = next(r for r in table["rows"] if r["method"] == "daca")["ece"]
    assert daca["mean"] == doc["methods"]["daca"]["ece"]["mean"] and daca["values"] == daca["unit_values"]
    t = doc["timing"]
    assert t["wall_seconds"] >= t["scoring_seconds"] >= 0 and t["wall_seconds"] >= t["evaluation_seconds"] >= 0


def test_cli_run_letter_all_methods_limit_40(tmp_path, capsys):
    """`refcal run --scoring letter --methods all --limit 40` (the issue's acceptance command) on fake models:
    every method of the registry is in metrics.json, the console table and both reports."""
    from refcal.cli import main

    out = tmp_path / "run"
    rc = main(["run", "--base", "fake:base", "--chat", "fake:chat", "--scoring", "letter", "--methods", "all",
               "--limit", "40", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "-o", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    doc = _every_method_shown(out, 40)
    assert doc["n_questions"] == 40 and doc["config"]["dataset"] == "sciq"
    for key in METHODS:
        assert doc["method_labels"][key] in printed
    assert "wall time" in printed and doc["timing"]["wall_seconds"] > 0


def test_cli_mmlu_table1_layout(tmp_path, capsys):
    """The issue's Table 1 path on fake models: MMLU, the five templates, one calibrator per subject; table.json
    holds each template's average over subjects and the mean ± std over the five templates."""
    from itertools import product

    from refcal.cli import main

    out = tmp_path / "run"
    subjects = ["astronomy", "virology"]
    rc = main(["run", "--base", "fake:base", "--chat", "fake:chat", "--dataset", "mmlu", "--subjects",
               ",".join(subjects), "--template", "all", "--scoring", "letter", "--methods", "default,cape,reeval",
               "--limit", "6", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "-o", str(out)])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    units = [(u["template"], u["group"]) for u in doc["units"]]
    assert sorted(units) == sorted(product(range(1, 6), subjects)) and doc["n_units"] == 10
    # one calibrator per (template, subject), fitted on validation
    assert sorted((r["template"], r["group"]) for r in doc["fits"]["daca"]) == sorted(units)
    assert "validation" in doc["protocol"]
    table = json.loads((out / "table.json").read_text())
    assert table["spread_over"] == "templates" and table["n_templates"] == 5 and table["groups"] == subjects
    assert table["columns"] == ["ece", "mce", "aece", "brier", "accuracy"]
    assert [r["method"] for r in table["rows"]] == ["chat", "base", "naive", "daca", "ts", "cape", "reeval", "daca_agree"]
    for row in table["rows"]:
        for col in table["columns"]:
            unit_vals = np.array(doc["methods"][row["method"]][col]["values"], dtype=float)
            per_t = [unit_vals[[i for i, u in enumerate(units) if u[0] == t]].mean() for t in range(1, 6)]
            cell = row[col]
            np.testing.assert_allclose(cell["values"], per_t, rtol=1e-12)
            assert cell["mean"] == pytest.approx(np.mean(per_t), rel=1e-12)
            assert cell["std"] == pytest.approx(np.std(per_t, ddof=1), rel=1e-12)
            # the spread over templates is not the spread over the 10 units
            assert cell["unit_values"] == pytest.approx(unit_vals.tolist())
    md = (out / "table.md").read_text()
    assert "| method | ECE % | MCE % | AECE % | Brier | Acc % |" in md
    assert "mean ± std over the 5 prompt templates, each the average over 2 subjects" in md and "wall time" in md
    daca = next(r for r in table["rows"] if r["method"] == "daca")
    assert f"| DACA | {100 * daca['ece']['mean']:.2f} ± {100 * daca['ece']['std']:.2f} |" in md
    report = (out / "report.md").read_text()
    assert "![ece_intervals](plots/ece_intervals.png)" in report and (out / "plots" / "ece_intervals.svg").exists()
    assert "Table 1 layout" in report
    t = doc["timing"]
    assert set(t) == {"wall_seconds", "scoring_seconds", "evaluation_seconds"}


def test_run_cape_options(tmp_path, monkeypatch, fake_models):
    """--cape-orders all / --cape-templates all: their own cache, scores and label; the five-template members
    are the same for every template's units; refused without CAPE."""
    from refcal.scores import load_scores

    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(20))
    base = {"base": "fake-base", "chat": "fake-chat", "dataset": "toy", "scoring": "letter", "n_splits": 2,
            "progress": False, "templates": [1, 2]}
    out1 = run(RunConfig(**base, methods=["chat", "cape"]), tmp_path / "cyclic")
    calls = fake_models["fake-chat"].calls
    out2 = run(RunConfig(**base, methods=["chat", "cape"], cape_orders="all", cape_templates="all"),
               tmp_path / "all")
    # 20 questions x 24 orders x 5 templates, scored once (template 2's units read template 1's cache file)
    assert fake_models["fake-chat"].calls - calls == 20 * 24 * 5
    cyc = load_scores(out1 / "scores" / "chat_cape_t1.parquet")
    full1, full2 = (load_scores(out2 / "scores" / f"chat_cape_t{t}.parquet") for t in (1, 2))
    np.testing.assert_array_equal(full1.logits, full2.logits)
    assert not np.allclose(full1.logits, cyc.logits)
    res = load_result(out2)
    assert res.method_labels["cape"] == "CAPE (all k! orders × 5 templates)"
    assert res.config["cape_orders"] == "all" and res.config["cape_templates"] == "all"
    assert load_result(out1).method_labels["cape"] == METHODS["cape"].label
    with pytest.raises(InputError, match="add cape to --methods"):
        run(RunConfig(**base, methods=["chat"], cape_orders="all"), tmp_path / "x")
    with pytest.raises(InputError, match="--cape-orders 'every'"):
        run(RunConfig(**base, methods=["cape"], cape_orders="every"), tmp_path / "x")
    with pytest.raises(InputError, match="at most 4 options"):
        monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(20, k=5))
        run(RunConfig(**base, methods=["cape"], cape_orders="all"), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_paper_spread_without_recorded_units():
    """A metrics.json written before units were recorded: mean ± std over all units, said so."""
    from refcal.run.result import MetricSummary, RunResult
    from refcal.run.table import paper_spread, paper_table

    vals = [0.1, 0.2, float("nan"), 0.6]
    res = RunResult(has_labels=True, n_units=4, methods={"chat": {"ece": MetricSummary(0.3, 0.26, vals, 1)}})
    mean, std, values, over = paper_spread(res, res.methods["chat"]["ece"])
    assert over == "units" and values == vals
    assert mean == pytest.approx(0.3) and std == pytest.approx(np.std([0.1, 0.2, 0.6], ddof=1))
    md, doc = paper_table(res)
    assert doc["spread_over"] == "units" and "mean ± std over 4 units" in md and "| 30.00 ± 26.46 |" in md


def test_run_cloze_lists_cape_with_reason(tmp_path, monkeypatch, fake_models):
    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(40))
    cfg = RunConfig(base="fake-base", chat="fake-chat", dataset="toy", scoring="cloze",
                    methods=["default", "cape", "reeval"], n_splits=2, progress=False)
    out = run(cfg, tmp_path / "run", finish=write_report)
    res = load_result(out)
    assert "cape" not in res.methods and "letter" in res.unavailable["cape"]
    assert "reeval" in res.methods
    assert "not applicable" in (out / "report.md").read_text()


# ---------------------------------------------------------------------------------------------- real model
def _letter_histogram(logits: np.ndarray) -> np.ndarray:
    return np.bincount(np.argmax(logits, axis=1), minlength=logits.shape[1]) / len(logits)


@pytest.mark.slow
def test_cape_flattens_smollm2_letter_bias(tmp_path):
    """SmolLM2-135M-Instruct answers mostly one letter under letter scoring; averaging over the cyclic
    shifts of the options (CAPE) spreads its predicted letters: the most frequent letter's share drops
    (24 SciQ questions here; the run-folder measurements are in docs/RESULTS.md)."""
    from refcal.backends import load_backend
    from refcal.data import load_dataset

    model = load_backend("smollm2-135m-instruct", batch_size=8, device="cpu")
    qs = load_dataset("sciq", limit=24, seed=0)
    kw = {"cache_dir": tmp_path, "progress": False, "meta": {"dataset": "sciq", "split": "validation"}}
    vanilla = _letter_histogram(score_questions(model, qs, scoring="letter", **kw).logits)
    cape = _letter_histogram(score_questions(model, qs, scoring="cape", **kw).logits)
    assert cape.max() < vanilla.max()
    # flatter overall: closer to uniform in total variation
    assert np.abs(cape - 0.25).sum() < np.abs(vanilla - 0.25).sum()
