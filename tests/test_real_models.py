"""`refcal run` on the real packaged models and data (Gemma-3-270M base, SmolLM2-135M-Instruct chat, SciQ)."""

import json
from pathlib import Path

import pytest

from refcal.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture()
def fresh_score_cache(refcal_dirs):
    """Scores are recomputed (empty score cache) but the one-time GGUF conversion is reused (the
    ``slow`` marker links the real converted models into the test's cache, see tests/conftest.py)."""
    return refcal_dirs.cache


def test_embedded_default_run_small(tmp_path, fresh_score_cache, capsys):
    out = tmp_path / "run"
    rc = main(["run", "--limit", "30", "--n-splits", "2", "--no-progress", "-o", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["config"]["base"] == "gemma-3-270m" and doc["config"]["chat"] == "smollm2-135m-instruct"
    assert doc["has_labels"] and set(doc["methods"]) == {"chat", "base", "naive", "daca", "ts", "daca_agree"}
    # both packaged models are above chance (0.25) on SciQ with normalised cloze scoring
    assert doc["methods"]["chat"]["accuracy"]["mean"] > 0.3
    assert doc["methods"]["base"]["accuracy"]["mean"] > 0.3
    d = doc["diagnostics"]
    assert 0 < d["n_agree"] <= d["n"] == 30
    cal = json.loads((out / "calibrator.json").read_text())
    assert cal["temperature"] > 0 and cal["method"] == "daca"
    for name in ("report.html", "report.md", "config.json", "scores/base.parquet", "scores/chat.parquet"):
        assert (out / name).stat().st_size > 0, name
    assert "DACA" in printed.out and "ECE %" in printed.out
    # the score cache now holds every question: a second run is served from it
    assert any(Path(fresh_score_cache, "scores").iterdir())
