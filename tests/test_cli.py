"""End-to-end tests of fit / evaluate / apply / demo through the real entry point."""

import json
import os

import numpy as np
import pytest

from refcal.cli import main
from refcal.scores import ScoreSet, load_scores
from refcal.synthetic import make_synthetic


@pytest.fixture()
def score_files(tmp_path):
    d = make_synthetic(600, 4, seed=3)
    ids = [f"q{i}" for i in range(len(d.labels))]
    base = ScoreSet.from_rows(ids, d.base.tolist(), d.labels.tolist(), meta={"model": "base"})
    chat = ScoreSet.from_rows(ids, d.chat.tolist(), d.labels.tolist(), meta={"model": "chat"})
    return base.save(tmp_path / "base.parquet"), chat.save(tmp_path / "chat.jsonl"), d


def test_fit_evaluate_apply(tmp_path, score_files, capsys):
    base, chat, d = score_files
    cal_path = tmp_path / "cal.json"
    assert main(["fit", "--base", str(base), "--chat", str(chat), "-o", str(cal_path)]) == 0
    out = capsys.readouterr().out
    assert "temperature =" in out and "agree" in out
    doc = json.loads(cal_path.read_text())
    assert doc["temperature"] > 1.5  # the synthetic chat model is over-confident by 3x
    assert doc["inputs"]["base"] == str(base)

    metrics_path = tmp_path / "m.json"
    assert main(["evaluate", "--scores", str(chat), "--calibrator", str(cal_path), "--json", str(metrics_path)]) == 0
    m = json.loads(metrics_path.read_text())["metrics"]
    assert m["calibrated"]["ece"] < m["vanilla"]["ece"]
    # temperature scaling never changes the argmax, so accuracy is identical
    assert m["calibrated"]["accuracy"] == m["vanilla"]["accuracy"]

    out_path = tmp_path / "calibrated.parquet"
    assert main(["apply", "--scores", str(chat), "--calibrator", str(cal_path), "-o", str(out_path)]) == 0
    cal = load_scores(out_path)
    np.testing.assert_allclose(np.exp(cal.logits).sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert cal.meta["calibrated"] is True


def test_naive_and_vector(tmp_path, score_files):
    base, chat, _ = score_files
    for method, scaling in [("naive", "temperature"), ("daca", "vector"), ("daca", "matrix")]:
        out = tmp_path / f"{method}-{scaling}.json"
        assert main(["fit", "--base", str(base), "--chat", str(chat), "--method", method,
                     "--scaling", scaling, "-o", str(out)]) == 0
        assert json.loads(out.read_text())["scaling"] == scaling


def test_errors_are_one_line(tmp_path, score_files, capsys):
    base, chat, _ = score_files
    other = ScoreSet.from_rows(["x", "y"], [[1, 2], [2, 1]])
    other_path = other.save(tmp_path / "other.parquet")
    out = tmp_path / "never.json"
    rc = main(["fit", "--base", str(other_path), "--chat", str(chat), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and not out.exists()
    assert err.count("\n") == 1 and "do not cover the same questions" in err and "Traceback" not in err

    bad = tmp_path / "bad.json"
    bad.write_text("{ nope")
    rc = main(["apply", "--scores", str(chat), "--calibrator", str(bad), "-o", str(tmp_path / "o.parquet")])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("refcal: error:") and err.count("\n") == 1
    assert not (tmp_path / "o.parquet").exists()

    nolabels = ScoreSet.from_rows(["a", "b"], [[1, 2], [2, 1]]).save(tmp_path / "nl.jsonl")
    rc = main(["evaluate", "--scores", str(nolabels)])
    assert rc != 0 and "needs labels" in capsys.readouterr().err


def test_no_agreement_is_an_error(tmp_path, capsys):
    base = ScoreSet.from_rows(["a", "b"], [[2, 1], [2, 1]]).save(tmp_path / "b.jsonl")
    chat = ScoreSet.from_rows(["a", "b"], [[1, 2], [1, 2]]).save(tmp_path / "c.jsonl")
    rc = main(["fit", "--base", str(base), "--chat", str(chat), "-o", str(tmp_path / "c.json")])
    err = capsys.readouterr().err
    assert rc != 0 and "same answer" in err and not (tmp_path / "c.json").exists()


def test_demo(capsys):
    assert main(["demo", "-n", "2000", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.strip()}
    # ECE % is the 3rd numeric column for calibrated rows; DACA must beat the vanilla chat model
    vanilla_ece = float(lines["chat"][-5])
    daca_ece = float(lines["DACA"][-5])
    assert daca_ece < vanilla_ece / 2


# ---------------------------------------------------------------------------------------- test isolation
def test_every_test_has_private_cache_and_data_folders(refcal_dirs):
    from refcal._paths import cache_root, data_home

    assert cache_root() == refcal_dirs.cache != refcal_dirs.real_cache
    assert data_home() == refcal_dirs.data != refcal_dirs.real_data
    assert os.environ["XDG_CACHE_HOME"] == str(refcal_dirs.xdg)
    assert not (refcal_dirs.cache / "models").exists()


@pytest.mark.real_models
def test_real_models_marker_links_only_the_converted_models(refcal_dirs):
    for sub in ("models", "sha"):
        assert (refcal_dirs.cache / sub).resolve() == (refcal_dirs.real_cache / sub).resolve()
    assert not (refcal_dirs.cache / "scores").exists()  # score caches stay private


@pytest.mark.real_data
def test_real_data_marker_uses_the_real_data_home(refcal_dirs):
    from refcal._paths import data_home

    assert data_home() == refcal_dirs.real_data == refcal_dirs.data


# ---------------------------------------------------------------------------------------------- --api-letters
def _mc_file(tmp_path, n: int = 12):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}? the", "choices": ["a", "b", "c", "d"],
                                        "label": i % 4}) + "\n" for i in range(n)))
    return path


def _exact_letter_logprobs(fake, content: str) -> list[float]:
    """What exact scoring must give, from the fake server's own distribution: each letter's single-token
    spellings in its toy vocabulary are "X" and " X" ("\\nX" and "X\\n" take two tokens), probabilities added."""
    lp = fake.logprobs(content)
    return [float(np.logaddexp(lp[fake.VOCAB.index(x)], lp[fake.VOCAB.index(" " + x)])) for x in "ABCD"]


def test_api_letters_reaches_the_openai_backend_of_score(tmp_path):
    from click.testing import CliRunner

    from api_server import FakeVLLM
    from refcal.cli import cli

    data, runner = _mc_file(tmp_path), CliRunner()
    with FakeVLLM("vllm", scale=4.0) as fake:
        files = {}
        for letters in ("exact", "topk"):
            files[letters] = tmp_path / f"{letters}.parquet"
            before = len(fake.requests)
            res = runner.invoke(cli, ["score", "-m", f"openai:{fake.model}", "--api-base", fake.url, "--api-letters",
                                      letters, "-d", str(data), "--no-progress", "-o", str(files[letters])])
            assert res.exit_code == 0, res.output
            sent = fake.requests[before:]
            letter_requests = [payload for path, payload in sent if path == "/v1/chat/completions"]
            assert len(letter_requests) == 12
            if letters == "exact":
                assert all(p.get("logprob_token_ids") for p in letter_requests)
                assert any(path == "/tokenize" for path, _ in sent)
            else:  # topk never asks for a fixed token set
                assert not any(p.get("logprob_token_ids") for p in letter_requests)
                assert not any(path == "/tokenize" for path, _ in sent)
            meta = load_scores(files[letters]).meta["backend"]
            assert meta["letters"] == letters and meta["letter_source"] == letters
        exact, topk = load_scores(files["exact"]), load_scores(files["topk"])
        contents = {p["messages"][-1]["content"] for path, p in fake.requests if path == "/v1/chat/completions"}
        for qid, row in zip(exact.ids, exact.logits, strict=True):
            content = next(c for c in contents if f"Question {qid[1:]}? the" in c)
            np.testing.assert_allclose(row, _exact_letter_logprobs(fake, content), rtol=0, atol=1e-12)
        assert not np.array_equal(exact.logits, topk.logits)  # the top-k floors the letters it misses
        assert int(np.sum(topk.columns["n_floored"])) > 0 and int(np.sum(exact.columns["n_floored"])) == 0


def test_api_letters_in_run_and_the_report_says_where_letters_came_from(tmp_path):
    from click.testing import CliRunner

    from api_server import FakeVLLM
    from refcal.cli import cli

    data, runner = _mc_file(tmp_path), CliRunner()
    with FakeVLLM("vllm", scale=4.0) as fake:
        res = runner.invoke(cli, ["run", "--chat", f"openai:{fake.model}", "--base", "fake:b", "--api-base", fake.url,
                                  "--api-letters", "topk", "-d", str(data), "--limit", "0", "--n-splits", "2",
                                  "--no-progress", "-o", str(tmp_path / "topk")])
        assert res.exit_code == 0, res.output
        assert not any(path == "/tokenize" for path, _ in fake.requests)
    doc = json.loads((tmp_path / "topk" / "metrics.json").read_text())
    assert doc["config"]["api_letters"] == "topk" and list(doc["api_stats"]) == ["chat"]  # the fake base has none
    assert doc["api_stats"]["chat"]["letter_source"] == "topk" and "letters_note" not in doc["api_stats"]["chat"]
    assert "chat: the top-k log-probabilities of the first generated token" in (tmp_path / "topk" / "report.md").read_text()

    # default (auto) against a server without vLLM's /tokenize: the fallback's reason reaches metrics.json and report
    with FakeVLLM("no_tokenize", scale=4.0) as fake:
        res = runner.invoke(cli, ["run", "--chat", f"openai:{fake.model}", "--base", "fake:b", "--api-base", fake.url,
                                  "-d", str(data), "--limit", "0", "--n-splits", "2", "--no-progress",
                                  "-o", str(tmp_path / "auto")])
        assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "auto" / "metrics.json").read_text())
    assert doc["config"]["api_letters"] is None
    st = doc["api_stats"]["chat"]
    assert st["letter_source"] == "topk" and st["letters_note"] == "it has no vLLM /tokenize endpoint (HTTP 404)"
    assert ("letters=auto asked the server for exact letter scores and fell back to the top-k: it has no vLLM "
            "/tokenize endpoint (HTTP 404).") in (tmp_path / "auto" / "report.md").read_text()


def test_api_letters_refused_without_an_api_model(tmp_path, capsys):
    data = _mc_file(tmp_path)
    assert main(["run", "--chat", "fake:c", "--base", "fake:b", "--api-letters", "exact", "-d", str(data),
                 "-o", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["refcal: error: --api-letters applies to openai:MODEL models; neither --base fake:b nor "
                   "--chat fake:c is one"]
    assert not (tmp_path / "run").exists()
    free_form = tmp_path / "ff.jsonl"
    free_form.write_text(json.dumps({"id": "q0", "question": "Question?", "answers": ["A"]}) + "\n")
    assert main(["run", "--chat", "fake:c", "--base", "fake:b", "--api-letters", "topk", "-d", str(free_form),
                 "-o", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "refcal: error: --api-letters applies to openai:MODEL models; neither --base fake:b nor --chat fake:c is one"]
    assert main(["score", "-m", "fake:c", "--api-letters", "topk", "-d", str(data), "-o",
                 str(tmp_path / "s.parquet")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "refcal: error: --api-letters applies to openai:MODEL models, not fake:c"]
    assert main(["score", "-m", "openai:m", "--api-letters", "all", "-d", str(data), "-o",
                 str(tmp_path / "s.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'all' is not one of 'auto', 'exact', 'topk'" in err[0]


def test_api_letters_exact_refuses_a_server_without_a_fixed_token_set(tmp_path, capsys):
    from api_server import FakeVLLM

    data = _mc_file(tmp_path)
    with FakeVLLM("no_tokenize") as fake:
        assert main(["score", "-m", f"openai:{fake.model}", "--api-base", fake.url, "--api-letters", "exact",
                     "-d", str(data), "--no-progress", "-o", str(tmp_path / "s.parquet")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "letters='exact' but the server" in err[0] and "no vLLM /tokenize" in err[0]


def test_api_letters_reaches_the_p_true_requests_of_a_free_form_run(tmp_path):
    from click.testing import CliRunner

    from api_server import FakeVLLM
    from refcal.cli import cli

    data = tmp_path / "ff.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}?", "answers": ["A"]}) + "\n"
                            for i in range(12)))
    for letters in ("exact", "topk"):
        with FakeVLLM("vllm", scale=4.0) as fake:
            res = CliRunner().invoke(cli, ["run", "--chat", f"openai:{fake.model}", "--base", "fake:b", "--api-base",
                                           fake.url, "--api-letters", letters, "-d", str(data), "--limit", "0",
                                           "--n-splits", "2", "--no-progress", "--no-report", "-o",
                                           str(tmp_path / letters)])
            assert res.exit_code == 0, res.output
            with_ids = sum(bool(p.get("logprob_token_ids")) for _, p in fake.requests)
            assert with_ids == (12 if letters == "exact" else 0)  # one P(True) request per answer
        assert json.loads((tmp_path / letters / "config.json").read_text())["api_letters"] == letters
