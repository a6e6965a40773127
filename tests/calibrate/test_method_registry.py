"""Adding a fitted method is a calibrator class plus one registry entry, nothing else (issue 19): a toy method
registered by a fixture alone runs through `refcal run`, `fit`, `apply` and `evaluate` with fake models."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from refcal._math import log_softmax
from refcal.calibrate import CALIBRATORS, load_calibrator
from refcal.calibrate.base import Calibrator, Reader
from refcal.calibrate.methods import METHODS, Inputs, Method, parse_methods
from refcal.cli import main
from refcal.scores import load_scores

QUESTIONS = [{"id": f"q{i}", "question": f"Question {i}? #{i % 4}", "choices": ["a", "b", "c", "d"], "answer": i % 4}
             for i in range(40)]


@pytest.fixture()
def toy_method(monkeypatch):
    """A label-free toy calibrator: the chat logits divided by the ratio of the two models' spreads."""

    class ToySpread(Calibrator):
        method = "toy_spread"
        description = "toy: chat logits over the ratio of the chat and base spreads"
        scaling = "spread"
        solver_name = "closed form"

        def __init__(self, *, floor: float = 1e-3):
            self.floor = floor

        def fit(self, base: Any, chat: Any) -> ToySpread:
            b, c = np.asarray(base, dtype=np.float64), np.asarray(chat, dtype=np.float64)
            self.ratio_ = max(float(np.std(c[np.isfinite(c)]) / np.std(b[np.isfinite(b)])), self.floor)
            self.n_, self.n_options_ = int(c.shape[0]), int(c.shape[1])
            self.n_iter_, self.converged_, self.objective_ = 1, True, 0.0
            return self

        def predict_log_proba(self, chat: Any, base: Any = None) -> np.ndarray:
            self._check_fitted()
            return log_softmax(np.asarray(chat, dtype=np.float64) / self.ratio_)

        def fitted_params(self) -> dict[str, Any]:
            return {**super().fitted_params(), "ratio": self.ratio_}

        def _state(self) -> dict[str, Any]:
            return {"parameters": {"ratio": self.ratio_}, "n_options": self.n_options_, "n": self.n_}

        def _read_state(self, r: Reader) -> None:
            self.ratio_ = r.real(r.obj("parameters")["ratio"], "ratio")
            self.n_options_ = r.integer(r.data["n_options"], "n_options", 2)
            self.n_ = r.integer(r.data["n"], "n", 1)

    monkeypatch.setitem(METHODS, "toy_spread", Method(
        "toy_spread", "toy spread ratio", "#123456", {"multiple-choice": Inputs(base="scores")},
        calibrator="toy_spread"))
    yield ToySpread
    CALIBRATORS.pop("toy_spread", None)


def test_a_registered_toy_method_runs_through_run_fit_apply_evaluate(tmp_path, toy_method, capsys):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in QUESTIONS))
    run_dir = tmp_path / "run"
    assert main(["run", "--base", "fake:b", "--chat", "fake:c", "-d", str(data), "--scoring", "letter", "--limit", "0",
                 "--methods", "chat,daca,toy_spread", "--model-option", "chat.scale=3", "--no-progress",
                 "--cache-dir", str(tmp_path / "cache"), "-o", str(run_dir)]) == 0
    assert "toy spread ratio" in capsys.readouterr().out
    doc = json.loads((run_dir / "metrics.json").read_text())
    assert set(doc["methods"]) == {"chat", "daca", "toy_spread"} and not doc["unavailable"]
    assert [r["ratio"] > 1 for r in doc["fits"]["toy_spread"]] == [True] * 5  # its fitted params are recorded
    assert "toy spread ratio" in (run_dir / "report.md").read_text()

    base, chat = run_dir / "scores" / "base.parquet", run_dir / "scores" / "chat.parquet"
    cal_path, out = tmp_path / "toy.json", tmp_path / "calibrated.parquet"
    assert main(["fit", "--method", "toy_spread", "--base", str(base), "--chat", str(chat), "-o", str(cal_path)]) == 0
    assert "ratio = " in capsys.readouterr().out
    cal = load_calibrator(cal_path)
    assert isinstance(cal, toy_method) and cal.task_ == "multiple-choice" and repr(cal) == "ToySpread(floor=0.001)"
    assert main(["apply", "--scores", str(chat), "--calibrator", str(cal_path), "-o", str(out)]) == 0
    got = load_scores(out)
    np.testing.assert_allclose(got.logits, log_softmax(load_scores(chat).logits / cal.ratio_), rtol=0, atol=1e-12)
    assert main(["evaluate", "--scores", str(chat), "--calibrator", str(cal_path)]) == 0
    assert "calibrated" in capsys.readouterr().out
    assert "toy_spread" in parse_methods("all")
