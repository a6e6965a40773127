"""refcal monitor: the vectorised bootstrap equals DACA, PSI by hand, and a constructed shift through the proxy
is flagged without labels while two halves of one distribution are not."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_helpers import PromptReference, mc, wait_records

from refcal import DACA
from refcal.cli import main
from refcal.errors import InputError
from refcal.scores import ScoreSet
from refcal.serve import LogWriter, monitor
from refcal.serve.drift import bootstrap_temperatures, parse_window, psi
from refcal.serve.fake_upstream import logits_prompt
from refcal.synthetic import make_synthetic


def test_bootstrap_temperatures_equal_weighted_daca_fits():
    d = make_synthetic(300, 4, seed=5)
    counts = np.random.default_rng(1).multinomial(300, np.full(300, 1 / 300), size=6)
    got = bootstrap_temperatures(d.base, d.chat, counts, start=1.0)
    want = [DACA().fit(d.base, d.chat, sample_weight=c).temperature_ for c in counts]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_psi_by_hand():
    w = np.array([0.05, 0.15, 0.15, 0.95])  # bins (10 on [0, 1]): 0, 1, 1, 9
    r = np.array([0.05, 0.05, 0.15, 0.95])  # bins 0, 0, 1, 9
    want = (0.25 - 0.5) * np.log(0.25 / 0.5) + (0.5 - 0.25) * np.log(0.5 / 0.25)
    assert psi(w, r) == pytest.approx(want, abs=1e-12)
    assert psi(r, r) == 0.0


@pytest.mark.parametrize("text,want", [("1000", ("count", 1000.0)), ("90s", ("time", 90.0)),
                                       ("30m", ("time", 1800.0)), ("1h", ("time", 3600.0)), ("2d", ("time", 172800.0))])
def test_parse_window(text, want):
    assert parse_window(text) == want


@pytest.mark.parametrize("text", ["5", "1w", "h", "-1h", "0m"])
def test_parse_window_refuses(text):
    with pytest.raises(InputError, match="--window"):
        parse_window(text)


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """A calibration set (chat T=3), its DACA calibrator and its score files."""
    root = tmp_path_factory.mktemp("calset")
    d = make_synthetic(4000, 4, seed=10)
    DACA().fit(d.base, d.chat).save(root / "cal.json")
    ids = [f"q{i}" for i in range(len(d.chat))]
    ScoreSet.from_rows(ids, d.chat.tolist()).save(root / "chat.jsonl")
    ScoreSet.from_rows(ids, d.base.tolist()).save(root / "base.jsonl")
    return root




def _feed(proxy, data):
    for chat, base in zip(data.chat, data.base, strict=True):
        prompt = logits_prompt("q", chat) + " BASE=[" + ", ".join(map(repr, base.tolist())) + "]"
        assert proxy.client.post("/v1/chat/completions", json=mc(prompt)).status_code == 200


@pytest.mark.parametrize("second,flags", [(3.0, False), (6.0, True)])
def test_constructed_shift_is_flagged_without_labels(make_proxy, calibration, tmp_path, second, flags):
    """Serve one distribution, then another (the chat model twice as over-confident) or the same again: the
    monitor flags the change from the reference samples alone, and nothing on two halves of one."""
    p = make_proxy(calibrator=str(calibration / "cal.json"), log_dir=str(tmp_path / "log"), reference=PromptReference())
    _feed(p, make_synthetic(500, 4, seed=21))
    _feed(p, make_synthetic(500, 4, seed=22, chat_temperature=second))
    wait_records(tmp_path / "log", 1000)
    out = tmp_path / "report"
    rc = main(["monitor", str(tmp_path / "log"), "--calibrator", str(calibration / "cal.json"), "--window", "250",
               "--baseline", str(calibration / "chat.jsonl"), "--baseline-base", str(calibration / "base.jsonl"),
               "-o", str(out)])
    doc = json.loads((out / "monitor.json").read_text())
    s = doc["summary"]
    assert s["n_records"] == 1000 and s["n_windows"] == 4 and s["n_reference"] == 1000
    assert rc == (3 if flags else 0)
    assert s["flagged_windows"] == ([2, 3] if flags else [])
    assert (s["max_psi"] > 0.25) == flags
    assert s["baseline_agreement_source"] == "baseline scores"
    html = (out / "monitor.html").read_text()
    assert "data:image/png;base64," in html and ("Drift" in html) == flags


def test_monitor_without_baseline_uses_the_calibrator_record_and_first_window(calibration, tmp_path):
    rng = np.random.default_rng(0)
    d = make_synthetic(600, 4, seed=3)
    from refcal import load_calibrator

    cal = load_calibrator(calibration / "cal.json")
    with LogWriter(tmp_path / "log") as w:
        for i, (g, f) in enumerate(zip(d.chat, d.base, strict=True)):
            rec = {"t": 1e9 + 10 * i, "id": str(i), "task": "multiple_choice", "chat": g.tolist(),
                   "confidence": float(cal.predict_proba(g[None]).max())}
            if rng.random() < 0.5:
                rec["base"] = f.tolist()
            w.write(rec)
    r = monitor(tmp_path / "log", calibration / "cal.json", window="1h")
    assert r.summary["n_windows"] == 2 and r.summary["psi_reference"] == "first window"
    assert r.summary["baseline_agreement_source"] == "calibrator file"
    assert r.windows[0]["psi"] == 0.0 and 250 < r.summary["n_reference"] < 350


def test_monitor_refuses_a_log_of_another_task(calibration, tmp_path):
    with LogWriter(tmp_path) as w:
        w.write({"t": 1.0, "id": "a", "task": "free_form", "chat": [0.0, -1.0], "confidence": 0.3})
    with pytest.raises(InputError, match="no multiple_choice records"):
        monitor(tmp_path, calibration / "cal.json")
