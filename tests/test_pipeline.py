"""`refcal run` end to end with deterministic fake backends (the real-model run is in test_real_models)."""

import json

import numpy as np
import pytest

from refcal.backends.fake import FakeBackend
from refcal.cli import main
from refcal.data.base import Question
from refcal.errors import InputError
from refcal.report import write_report
from refcal.run import SCHEMA_VERSION, RunConfig, load_result, protocol, run
from refcal.run import evaluate as E


def _questions(n: int, k: int = 4, subject: str | None = None, labelled: bool = True):
    rng = np.random.default_rng(0 if subject is None else len(subject))
    qs = []
    for i in range(n):
        y = int(rng.integers(k))
        # the answer index rides in the question text so the fake backends can be better than chance
        qs.append(Question(id=f"{subject or 'q'}-{i}", question=f"question {i} #{y}",
                           choices=tuple(f"option {j}" for j in range(k)), label=y if labelled else -1,
                           subject=subject))
    return qs


@pytest.fixture()
def fake_models(monkeypatch, tmp_path):
    monkeypatch.setenv("REFCAL_CACHE_DIR", str(tmp_path / "cache"))
    backends = {"fake-base": FakeBackend("base", scale=1.0), "fake-chat": FakeBackend("chat", scale=3.0)}
    monkeypatch.setattr("refcal.backends.load_backend", lambda spec, **kw: backends[spec])
    return backends


@pytest.mark.parametrize("scoring", ["letter", "cloze"])
def test_run_random_splits(tmp_path, monkeypatch, fake_models, scoring):
    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(200))
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    cfg = RunConfig(base="fake-base", chat="fake-chat", dataset="toy", scoring=scoring,
                             templates=[1, 2] if scoring == "letter" else [1], progress=False)
    if scoring != "letter":  # templates change only letter prompts; several with cloze is refused
        with pytest.raises(InputError, match="letter scoring only"):
            RunConfig(dataset="toy", scoring=scoring, templates=[1, 2]).validate()
    out = run(cfg, tmp_path / "run")
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["has_labels"]
    assert set(doc["methods"]) == {"chat", "base", "daca", "naive", "ts", "daca_agree"}
    n_units = 5 * len(cfg.templates)
    assert len(doc["methods"]["daca"]["ece"]["values"]) == n_units
    # chat = 3 x base on every question: DACA must find temperature 3 on every split
    temps = [f["temperature"] for f in doc["fits"]["daca"]]
    np.testing.assert_allclose(temps, 3.0, rtol=1e-8)
    assert doc["diagnostics"]["agreement_rate"] == 1.0
    boot = doc["bootstrap"]["methods"]["daca"]["ece"]
    assert 0 <= boot["low"] <= boot["high"] <= 1 and doc["bootstrap"]["n"] == doc["n_eval"]
    for f in ("config.json", "calibrator.json", "predictions/daca.parquet", "scores/chat_t1.parquet"
              if len(cfg.templates) > 1 else "scores/chat.parquet"):
        assert (out / f).exists(), f
    assert json.loads((out / "calibrator.json").read_text())["temperature"] == pytest.approx(3.0, rel=1e-8)
    # a second run is served from the cache: no backend call at all
    calls = {k: b.calls for k, b in fake_models.items()}
    run(cfg, tmp_path / "run2")
    assert {k: b.calls for k, b in fake_models.items()} == calls


def test_run_per_subject(tmp_path, monkeypatch, fake_models):
    def load(cfg, split):
        n = 12 if split == "validation" else 30
        return [q for s in ("algebra", "virology") for q in _questions(n, subject=s)]

    monkeypatch.setattr(protocol, "load_questions", load)
    cfg = RunConfig(base="fake-base", chat="fake-chat", dataset="mmlu", split="test", progress=False)
    out = run(cfg, tmp_path / "run")
    doc = json.loads((out / "metrics.json").read_text())
    assert [f["group"] for f in doc["fits"]["daca"]] == ["algebra", "virology"]
    assert "per-subject" in doc["protocol"]
    assert doc["n_eval"] == 60


def test_run_without_labels(tmp_path, monkeypatch, fake_models):
    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(100, labelled=False))
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    cfg = RunConfig(base="fake-base", chat="fake-chat", dataset="toy", progress=False)
    out = run(cfg, tmp_path / "run")
    doc = json.loads((out / "metrics.json").read_text())
    assert not doc["has_labels"] and "ts" not in doc["methods"]
    assert "ece" not in doc["methods"]["daca"] and "mean_confidence" in doc["methods"]["daca"]
    # calibration lowers the over-confident chat model's confidence
    assert doc["methods"]["daca"]["mean_confidence"]["mean"] < doc["methods"]["chat"]["mean_confidence"]["mean"]


def test_existing_run_folder_is_kept(tmp_path, monkeypatch, fake_models, capsys):
    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(50))
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    rc = main(["run", "--base", "fake-base", "--chat", "fake-chat", "--dataset", "toy", "--no-report",
               "--no-progress", "-o", str(tmp_path / "run")])
    assert rc != 0 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "run" / "keep.txt").read_text() == "x"


def test_run_on_user_file_with_column_mapping(tmp_path, fake_models, capsys):
    rows = []
    for q in _questions(60):
        rows.append({"qid": q.id, "text": q.question, "a": q.choices[0], "b": q.choices[1], "c": q.choices[2],
                     "d": q.choices[3], "gold": "ABCD"[q.label]})
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    rc = main(["run", "--base", "fake-base", "--chat", "fake-chat", "--dataset", str(data), "--scoring", "letter",
               "--question-col", "text", "--option-cols", "a,b,c,d", "--answer-col", "gold", "--id-col", "qid",
               "--no-report", "--no-progress", "-o", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["n_questions"] == 60 and doc["has_labels"]
    assert "DACA" in captured.out
    bad = main(["run", "--base", "fake-base", "--chat", "fake-chat", "--dataset", str(data), "--question-col",
                "nope", "--no-report", "--no-progress", "-o", str(tmp_path / "r2")])
    err = capsys.readouterr().err
    assert bad != 0 and "nope" in err and err.count("\n") == 1 and not (tmp_path / "r2").exists()


def test_interrupted_run_resumes_without_rescoring(tmp_path, monkeypatch):
    monkeypatch.setenv("REFCAL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(120))
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    cfg = RunConfig(base="b", chat="c", dataset="toy", scoring="cloze", progress=False)
    # reference: an uninterrupted run in its own cache
    ref_backends = {"b": FakeBackend("base", scale=1.0), "c": FakeBackend("chat", scale=3.0)}
    monkeypatch.setattr("refcal.backends.load_backend", lambda spec, **kw: ref_backends[spec])
    monkeypatch.setenv("REFCAL_CACHE_DIR", str(tmp_path / "ref-cache"))
    ref = json.loads((run(cfg, tmp_path / "ref") / "metrics.json").read_text())

    monkeypatch.setenv("REFCAL_CACHE_DIR", str(tmp_path / "cache"))
    first = {"b": FakeBackend("base", scale=1.0), "c": FakeBackend("chat", scale=3.0, max_requests=50)}
    monkeypatch.setattr("refcal.backends.load_backend", lambda spec, **kw: first[spec])
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # no half-written run folder
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".run")] == []
    done_chat = first["c"].calls
    assert 0 < done_chat <= 50

    second = {"b": FakeBackend("base", scale=1.0), "c": FakeBackend("chat", scale=3.0)}
    monkeypatch.setattr("refcal.backends.load_backend", lambda spec, **kw: second[spec])
    out = run(cfg, tmp_path / "run")
    assert second["b"].calls == 0  # the base model finished before the interruption
    assert second["c"].calls == 120 - done_chat  # only what was missing
    doc = json.loads((out / "metrics.json").read_text())
    for key in ("methods", "fits", "diagnostics"):
        assert doc[key] == ref[key]


def BiasedBackend(name, favourite):  # noqa: N802 - a FakeBackend that always prefers one option
    """Always prefers option ``favourite`` (tiny models do this with letter scoring)."""
    return FakeBackend(name, scale=0.1, bias=(0.0,) * favourite + (2.0,))


def test_run_without_any_agreement_still_reports(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("REFCAL_CACHE_DIR", str(tmp_path / "cache"))
    backends = {"b": BiasedBackend("base", 0), "c": BiasedBackend("chat", 1)}
    monkeypatch.setattr("refcal.backends.load_backend", lambda spec, **kw: backends[spec])
    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(80))
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    rc = main(["run", "--base", "b", "--chat", "c", "--dataset", "toy", "--scoring", "letter", "--no-progress",
               "-o", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "NO deployable calibrator" in out and "same answer" in out
    assert "could not be fitted on some units" in out and "DACA 5/5" in out
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert doc["diagnostics"]["n_agree"] == 0 and doc["fallbacks"]["daca"] == 5
    assert all(f["fallback"].startswith("uncalibrated") for f in doc["fits"]["daca"])
    # uncalibrated fallback: DACA's numbers equal the chat model's
    assert doc["methods"]["daca"]["ece"]["values"] == doc["methods"]["chat"]["ece"]["values"]
    assert not (tmp_path / "run" / "calibrator.json").exists()
    assert (tmp_path / "run" / "report.html").exists()


def test_calibration_split_must_differ_from_evaluation_split(tmp_path, fake_models):
    cfg = RunConfig(base="fake-base", chat="fake-chat", dataset="mmlu", split="validation", progress=False)
    with pytest.raises(InputError, match="fitted on"):
        run(cfg, tmp_path / "run")


def test_nll_survives_exp_underflow_and_aggregation_keeps_inf():
    lp = {"chat": np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))}
    lp["sharp"] = np.array([[0.0, -800.0], [0.0, -900.0]])  # exp(-800) underflows to 0
    res = E._unit_metrics(lp, np.array([1, 0]), 10)
    assert res["sharp"]["nll"] == pytest.approx(400.0)
    agg = E.aggregate([{"m": {"nll": 1.0, "auroc": float("nan")}}, {"m": {"nll": float("inf"), "auroc": 0.5}}])
    assert agg["m"]["nll"].mean == float("inf")
    assert agg["m"]["auroc"].mean == 0.5 and agg["m"]["auroc"].n_undefined == 1


def test_run_fewshot_prefix_per_subject(tmp_path, monkeypatch, fake_models):
    def load(cfg, split):
        return [q for s in ("algebra", "virology") for q in _questions(20 if split == "test" else 10, subject=s)]

    asked = []

    def shots(name, subject=None, k=5):
        asked.append(subject)
        return [Question(id=f"dev-{subject}-{i}", question=f"example {i} #0", choices=("a", "b", "c", "d"),
                         label=0, subject=subject) for i in range(k)]

    monkeypatch.setattr(protocol, "load_questions", load)
    monkeypatch.setattr("refcal.data.fewshot_examples", shots)
    cfg = RunConfig(base="fake-base", chat="fake-chat", dataset="mmlu", split="test", fewshot=3,
                             scoring="letter", progress=False)
    out = run(cfg, tmp_path / "run")
    assert sorted(set(asked)) == ["algebra", "virology"]
    from refcal.scores import load_scores

    chat = load_scores(out / "scores" / "chat_test.parquet")
    assert chat.meta["fewshot"] == 3 and len(chat) == 40


# ---------------------------------------------------------------------------------------------- registry
def test_method_registry_entries():
    from refcal.calibrate.methods import DEFAULT_METHODS, METHODS, parse_methods

    # the paper's five, plus daca_agree (made a default by the measured rule of issue 13)
    assert DEFAULT_METHODS == ("chat", "base", "naive", "daca", "ts", "daca_agree")
    assert {"daca_vector", "daca_matrix", "vs", "ms"} <= set(METHODS)
    assert len({m.label for m in METHODS.values()}) == len({m.color for m in METHODS.values()}) == len(METHODS)
    assert parse_methods("all") == list(METHODS)
    assert parse_methods("ts, chat") == ["chat", "ts"]  # table order
    with pytest.raises(InputError, match="unknown method 'dacca'.*daca_vector"):
        parse_methods("chat,dacca")
    from refcal.calibrate.methods import MethodContext

    assert METHODS["vs"].why_not(MethodContext(has_labels=False)) == "needs labels, and some questions have none"
    assert METHODS["daca"].why_not(MethodContext(has_labels=False)) is None
    assert METHODS["daca"].why_not(MethodContext(has_labels=True, has_base=False)) is not None


def test_run_all_methods_with_labels(tmp_path, monkeypatch, fake_models):
    from refcal.calibrate import DACA, MatrixScaling, VectorScaling
    from refcal.calibrate.methods import METHODS
    from refcal.scores import load_scores

    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(120))
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    cfg = RunConfig(base="fake-base", chat="fake-chat", dataset="toy", scoring="letter", methods=["all"],
                    n_splits=2, progress=False)
    out = run(cfg, tmp_path / "run", finish=write_report)
    res = load_result(out)
    # proj reads hidden states, which fake models do not have: listed with its reason
    assert list(res.methods) == [k for k in METHODS if k != "proj"] and set(res.unavailable) == {"proj"}
    assert set(res.fits) == {k for k, m in METHODS.items() if m.fit is not None and k != "proj"}
    # the registry's DACA (vector) is DACA(scaling="vector") fitted on the calibration part of the split
    chat = load_scores(out / "scores" / "chat.parquet")
    base = load_scores(out / "scores" / "base.parquet")
    perm = np.random.default_rng(0).permutation(120)
    ci, ti = np.sort(perm[:36]), np.sort(perm[36:])
    for key, ref in (("daca_vector", DACA(scaling="vector").fit(base.logits[ci], chat.logits[ci])),
                     ("vs", VectorScaling().fit(chat.logits[ci], chat.labels[ci])),
                     ("ms", MatrixScaling().fit(chat.logits[ci], chat.labels[ci]))):
        lp = ref.predict_log_proba(chat.logits[ti])
        nll = float(-lp[np.arange(len(ti)), chat.labels[ti]].mean())
        assert res.methods[key]["nll"].values[0] == pytest.approx(nll, rel=1e-12), key
    md = (out / "report.md").read_text()
    for m in METHODS.values():
        assert m.label in md and (m.key == "proj" or (out / "predictions" / f"{m.key}.parquet").exists())


def test_unavailable_method_is_listed_with_its_reason(tmp_path, monkeypatch, fake_models, capsys):
    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(100, labelled=False))
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    rc = main(["run", "--base", "fake-base", "--chat", "fake-chat", "--dataset", "toy", "--methods", "daca,ts,vs",
               "--no-progress", "-o", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    assert rc == 0
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(doc["methods"]) == {"daca"}
    assert doc["unavailable"] == {"ts": "needs labels, and some questions have none",
                                  "vs": "needs labels, and some questions have none"}
    for text in (printed, (tmp_path / "run" / "report.md").read_text()):
        assert "temperature scaling (labelled oracle)" in text and "vector scaling (labelled oracle)" in text
        assert text.count("not applicable: needs labels") == 2


# ---------------------------------------------------------------------------------------------- run folder
def test_metrics_json_round_trips_through_the_typed_result(tmp_path, monkeypatch, fake_models):
    from refcal._io import atomic_write_json
    from refcal.run.folder import result_to_json

    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(80))
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    out = run(RunConfig(base="fake-base", chat="fake-chat", dataset="toy", progress=False), tmp_path / "run",
                  finish=write_report)
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["schema_version"] == SCHEMA_VERSION == 1
    res = load_result(out)
    assert res.selective["daca"].thresholds[0] == 0.5 and res.bootstrap.methods["daca"]["nll"].low > 0
    atomic_write_json(tmp_path / "again.json", result_to_json(res))
    assert json.loads((tmp_path / "again.json").read_text()) == doc


@pytest.mark.parametrize("version", [99, "1", True, None])
def test_metrics_json_of_another_schema_version_is_refused(tmp_path, version):
    (tmp_path / "metrics.json").write_text(json.dumps({"schema_version": version, "methods": {}}))
    with pytest.raises(InputError, match=r"schema_version .* this build of refcal reads \(1\)"):
        load_result(tmp_path)


def test_run_folder_respects_the_umask(tmp_path, monkeypatch, fake_models):
    import os
    import stat

    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(60))
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    old = os.umask(0o022)
    try:
        out = run(RunConfig(base="fake-base", chat="fake-chat", dataset="toy", progress=False), tmp_path / "run",
                  finish=write_report)
    finally:
        os.umask(old)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *out.rglob("*")]}
    assert modes["."] == 0o755 and modes["scores"] == 0o755
    for name in ("metrics.json", "config.json", "calibrator.json", "report.md", "report.html",
                 "predictions/daca.parquet", "scores/chat.parquet", "plots/reliability.png"):
        assert modes[name] == 0o644, (name, oct(modes[name]))


# ---------------------------------------------------------------------------------------------- command line
def test_run_options_agree_with_score(tmp_path, monkeypatch, fake_models):
    import click

    from refcal.cli.run import run as run_command

    seen = {}

    def load(cfg, split):
        seen.update(limit=cfg.limit, templates=cfg.templates, dtype=cfg.dtype, cache_dir=cfg.cache_dir)
        return _questions(40)

    monkeypatch.setattr(protocol, "load_questions", load)
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    cache = tmp_path / "my-cache"
    rc = main(["run", "--base", "fake-base", "--chat", "fake-chat", "--dataset", "toy", "--limit", "0", "-t", "2",
               "--scoring", "letter", "--dtype", "float32", "--cache-dir", str(cache), "--no-report",
               "--no-progress", "-o", str(tmp_path / "run")])
    assert rc == 0
    assert seen == {"limit": None, "templates": [2], "dtype": "float32", "cache_dir": str(cache)}
    assert any(cache.rglob("*")), "scores were not cached under --cache-dir"
    undocumented = [p.name for p in run_command.params if isinstance(p, click.Option) and not p.help]
    assert undocumented == []


def test_run_help_documents_exit_codes(capsys):
    assert main(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "Exit codes: 0 success; 2 bad input" in text and "130 interrupted" in text
    assert "--methods" in text and "daca_vector" in text


def test_tiny_run_with_underflowing_probabilities_warns_nothing(tmp_path, monkeypatch):
    """10 questions and a chat model so sharp that exp() of its log-probabilities underflows to 0: the
    bootstrap NLL used to be inf (and numpy warned "invalid value encountered in subtract")."""
    import warnings

    monkeypatch.setenv("REFCAL_CACHE_DIR", str(tmp_path / "cache"))
    backends = {"b": FakeBackend("base", scale=1.0), "c": FakeBackend("chat", scale=400.0)}
    monkeypatch.setattr("refcal.backends.load_backend", lambda spec, **kw: backends[spec])
    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: _questions(10))
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        out = run(RunConfig(base="b", chat="c", dataset="toy", limit=10, progress=False), tmp_path / "run",
                  finish=write_report)
    res = load_result(out)
    chat_nll = res.bootstrap.methods["chat"]["nll"]
    assert res.methods["chat"]["nll"].mean > 745 / 7  # a log-probability below -745: exp() gives 0
    assert np.isfinite([chat_nll.estimate, chat_nll.low, chat_nll.high]).all()


def test_summary_table_keeps_wide_cells_apart():
    from refcal.run.result import MetricSummary, RunResult
    from refcal.run.table import summary_table

    res = RunResult(has_labels=True, methods={"ms": {"brier": MetricSummary(0.483, 0.151, [0.3, 0.6]),
                                                     "nll": MetricSummary(14890.401, 29575.0, [1.0, 2.0])}})
    row = summary_table(res).splitlines()[1]
    assert "0.483 ± 0.151 14890.401 ± 29575.000" in row and row.startswith("matrix scaling (labelled oracle)")
