"""`refcal run` end to end through the CLI with `fake:` models (no model files, no network).

`run` passes its local-model settings (batch size, device, dtype) only to backends whose options have
them; the fake backend has none, and an API backend neither.
"""

from __future__ import annotations

import json

import numpy as np

from refcal.backends import load_backend
from refcal.cli import main
from refcal.data.base import Question
from refcal.scores import load_scores
from refcal.scoring import score_questions

QUESTIONS = [Question(f"q{i}", f"Question {i}? #{i % 4}", ("a", "b", "c", "d"), i % 4) for i in range(40)]


def test_run_with_fake_models_through_the_cli(tmp_path, monkeypatch):
    monkeypatch.setenv("REFCAL_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": q.id, "question": q.question, "choices": list(q.choices),
                                        "label": q.label}) + "\n" for q in QUESTIONS))
    out = tmp_path / "run"
    assert main(["run", "--base", "fake:b", "--chat", "fake:c", "-d", str(data), "--scoring", "letter",
                 "--limit", "0", "--batch-size", "4", "--device", "cpu", "--dtype", "float32", "--no-progress",
                 "-o", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["schema_version"] == 1 and "api_stats" not in metrics  # the fake backend keeps no counters
    assert (out / "report.md").is_file() and (out / "report.html").is_file()
    for role in ("base", "chat"):  # the scores are the fake backend's own, as scored directly
        got = load_scores(out / "scores" / f"{role}.parquet")
        ref = score_questions(load_backend(f"fake:{role[0]}"), QUESTIONS, cache=False, progress=False)
        by_id = dict(zip(ref.ids, ref.logits, strict=True))
        np.testing.assert_array_equal(got.logits, np.array([by_id[i] for i in got.ids]))
