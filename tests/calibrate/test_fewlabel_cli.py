"""`refcal fit --method platt|isotonic|histogram|daca_k`, then `refcal evaluate` and `refcal apply` with the
written calibrator (the few-label calibrators apply like the others)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refcal import load_calibrator
from refcal.cli import main
from refcal.scores import ScoreSet, load_scores
from refcal.synthetic import make_synthetic


@pytest.fixture()
def files(tmp_path):
    d = make_synthetic(400, 4, chat_temperature=3.0, n_mc=32, seed=4)
    ids = [f"q{i}" for i in range(400)]
    few = np.full(400, -1)
    few[:30] = d.labels[:30]  # 30 labelled questions, the rest unlabelled
    base = ScoreSet.from_rows(ids, d.base.tolist(), few.tolist(), meta={"model": "base"})
    chat = ScoreSet.from_rows(ids, d.chat.tolist(), few.tolist(), meta={"model": "chat"})
    full = ScoreSet.from_rows(ids, d.chat.tolist(), d.labels.tolist(), meta={"model": "chat"})
    return (base.save(tmp_path / "base.parquet"), chat.save(tmp_path / "chat.jsonl"),
            full.save(tmp_path / "full.parquet"), d)


@pytest.mark.parametrize("method", ["platt", "isotonic", "histogram", "daca_k"])
def test_fit_evaluate_apply(method, files, tmp_path, capsys):
    base, chat, full, d = files
    cal_path = tmp_path / f"{method}.json"
    args = ["fit", "--chat", str(chat), "--method", method, "-o", str(cal_path)]
    if method == "daca_k":
        args += ["--base", str(base)]
    assert main(args) == 0
    cal = load_calibrator(cal_path)
    assert cal.method == method and cal.n_ == (400 if method == "daca_k" else 30)
    capsys.readouterr()
    out_json = tmp_path / "m.json"
    assert main(["evaluate", "--scores", str(full), "--calibrator", str(cal_path), "--json", str(out_json)]) == 0
    res = json.loads(out_json.read_text())["metrics"]
    assert res["calibrated"]["ece"] < res["vanilla"]["ece"]
    assert "smECE %" in capsys.readouterr().out
    applied = tmp_path / "applied.parquet"
    assert main(["apply", "--scores", str(full), "--calibrator", str(cal_path), "-o", str(applied)]) == 0
    np.testing.assert_allclose(load_scores(applied).logits, cal.predict_log_proba(d.chat), atol=1e-12)


def test_fit_refuses_base_for_a_chat_only_method(files, tmp_path):
    base, chat, _, _ = files
    assert main(["fit", "--base", str(base), "--chat", str(chat), "--method", "platt", "-o", str(tmp_path / "x.json")]) == 2
