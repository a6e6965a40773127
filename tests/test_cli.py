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
    import conftest
    from refcal._paths import cache_root, data_home

    assert cache_root() == refcal_dirs.cache != conftest.REAL_CACHE
    assert data_home() == refcal_dirs.data != conftest.REAL_DATA
    assert os.environ["XDG_CACHE_HOME"] == str(refcal_dirs.xdg)
    assert not (refcal_dirs.cache / "models").exists()


@pytest.mark.real_models
def test_real_models_marker_links_only_the_converted_models(refcal_dirs):
    import conftest

    for sub in ("models", "sha"):
        assert (refcal_dirs.cache / sub).resolve() == (conftest.REAL_CACHE / sub).resolve()
    assert not (refcal_dirs.cache / "scores").exists()  # score caches stay private


@pytest.mark.real_data
def test_real_data_marker_uses_the_real_data_home(refcal_dirs):
    import conftest
    from refcal._paths import data_home

    assert data_home() == conftest.REAL_DATA == refcal_dirs.data
