"""The streaming fit and metrics equal the in-memory path (refcal.streaming)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from refcal import metrics
from refcal._math import softmax
from refcal.calibrate import DACA, NaiveAlignment, TemperatureScaling, load_calibrator
from refcal.cli import main
from refcal.errors import InputError, ScoreFileError
from refcal.scores import ScoreSet, join_scores, load_scores
from refcal.streaming import OrderMismatch, evaluate_streaming, fit_temperature_streaming


def _pair(n: int, k: int = 4, seed: int = 0, ragged: bool = False, ties: bool = False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    shared = rng.normal(size=(n, k)) * 2
    shared[np.arange(n), y] += 1.5
    base = shared + rng.normal(size=(n, k))
    chat = 3.0 * shared + rng.normal(size=(n, k))
    if ties:  # repeated confidences exercise the tie handling of AECE / AUROC / AURC
        chat = np.round(chat)
    if ragged:
        short = rng.random(n) < 0.3
        base[short, -1] = -np.inf
        chat[short, -1] = -np.inf
        y = np.where(short & (y == k - 1), 0, y)
    ids = [f"q{i}" for i in range(n)]
    b = ScoreSet(np.array(ids, dtype=object), base, y.copy(), np.full(n, k), {"model": "base"}, {})
    c = ScoreSet(np.array(ids, dtype=object), chat, y.copy(), np.full(n, k), {"model": "chat"}, {})
    return b, c


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
@pytest.mark.parametrize("method", ["daca", "naive", "ts"])
def test_fit_equals_in_memory(tmp_path, suffix, method):
    b, c = _pair(5000, ragged=True)
    bp, cp = b.save(tmp_path / f"b{suffix}"), c.save(tmp_path / f"c{suffix}")
    joined = join_scores(load_scores(bp), load_scores(cp))
    if method == "ts":
        ref = TemperatureScaling().fit(joined.chat, joined.labels)
        got = fit_temperature_streaming(cp, method="ts", block_rows=777).calibrator
    else:
        ref = (DACA if method == "daca" else NaiveAlignment)().fit(joined.base, joined.chat)
        got = fit_temperature_streaming(cp, bp, method=method, block_rows=777).calibrator
        assert got.n_agree_ == ref.n_agree_
    assert math.isclose(got.temperature_, ref.temperature_, rel_tol=1e-12)
    assert math.isclose(got.objective_, ref.objective_, rel_tol=1e-10)
    assert got.n_options_ == ref.n_options_ and got.n_ == ref.n_


def test_hidden_labels_give_the_same_daca_fit(tmp_path):
    b, c = _pair(3000, seed=1)
    labelled = fit_temperature_streaming(c.save(tmp_path / "c.parquet"), b.save(tmp_path / "b.parquet"))
    hidden_b = ScoreSet(b.ids, b.logits, np.full(len(b), -1), b.n_options, {}, {})
    hidden_c = ScoreSet(c.ids, c.logits, np.full(len(c), -1), c.n_options, {}, {})
    hidden = fit_temperature_streaming(hidden_c.save(tmp_path / "hc.jsonl"), hidden_b.save(tmp_path / "hb.jsonl"),
                                       block_rows=500)
    assert hidden.n_labelled == 0 and labelled.n_labelled == 3000
    assert math.isclose(hidden.calibrator.temperature_, labelled.calibrator.temperature_, rel_tol=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_metrics_equal_in_memory(tmp_path, ties):
    _, c = _pair(4001, ragged=True, ties=ties)
    path = c.save(tmp_path / "c.parquet")
    cal = TemperatureScaling().fit(c.logits, c.labels)
    res = evaluate_streaming(path, calibrator=cal, n_bins=7, block_rows=1000)
    got = res.metrics
    assert res.n == 4001 and res.n_options == 4
    ref = {"vanilla": metrics.evaluate(softmax(c.logits), c.labels, n_bins=7),
           "calibrated": metrics.evaluate(cal.predict_proba(c.logits), c.labels, n_bins=7)}
    for name in ref:
        assert got[name].keys() == ref[name].keys()
        for key, v in ref[name].items():
            assert math.isclose(got[name][key], v, rel_tol=1e-11, abs_tol=1e-15), (name, key)


def test_order_mismatch_and_duplicates(tmp_path):
    b, c = _pair(300)
    shuffled = c.subset(np.random.default_rng(0).permutation(300))
    with pytest.raises(OrderMismatch):
        fit_temperature_streaming(shuffled.save(tmp_path / "s.parquet"), b.save(tmp_path / "b.parquet"), block_rows=64)
    lines = (tmp_path / "b.jsonl")
    b.save(lines)
    text = lines.read_text().splitlines()
    text[200] = text[3]  # id q3 twice, in different blocks
    lines.write_text("\n".join(text) + "\n")
    with pytest.raises(ScoreFileError, match="'q3' appears 2 times"):
        evaluate_streaming(lines, block_rows=64)
    unl = tmp_path / "u.jsonl"
    unl.write_text("\n".join(json.dumps({"id": f"u{i}", "logits": [0.0, 1.0], "label": None if i % 2 else 1})
                             for i in range(10)) + "\n")
    with pytest.raises(InputError, match="5 of 10 questions have no label"):
        evaluate_streaming(unl, block_rows=3)


def test_cli_fit_and_evaluate_stream(tmp_path):
    b, c = _pair(2000, seed=3)
    bp, cp = b.save(tmp_path / "b.parquet"), c.save(tmp_path / "c.jsonl")
    out = tmp_path / "cal.json"
    assert main(["fit", "--base", str(bp), "--chat", str(cp), "-o", str(out)]) == 0
    joined = join_scores(load_scores(bp), load_scores(cp))
    ref = DACA().fit(joined.base, joined.chat)
    assert math.isclose(load_calibrator(out).temperature_, ref.temperature_, rel_tol=1e-12)
    assert main(["evaluate", "--scores", str(cp), "--calibrator", str(out), "--json", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())["metrics"]
    want = metrics.evaluate(ref.predict_proba(c.logits), c.labels)
    assert math.isclose(got["calibrated"]["ece"], want["ece"], rel_tol=1e-11)
