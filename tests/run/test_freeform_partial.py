"""Free-form runs where only some questions have reference answers (issue 22, item 8)."""

from __future__ import annotations

import json

from refcal.cli import main
from refcal.run import load_result

N = 30


def _run(tmp_path, name, referenced, methods="ts,daca,naive,p_true"):
    rows = [{"id": f"x{i}", "question": f"Which thing is number {i}?",
             "answers": ["zebra", str(i)] if referenced(i) else []} for i in range(N)]
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / name
    assert main(["run", "--dataset", str(data), "--base", "fake:base", "--chat", "fake:chat", "--methods",
                 methods, "--judge", "contains", "--no-progress", "--no-report", "--cache-dir",
                 str(tmp_path / "cache"), "-o", str(out)]) == 0
    return load_result(out)


def test_partial_references_judge_the_rest_and_leave_label_free_fits_unchanged(tmp_path):
    partial = _run(tmp_path, "partial", lambda i: i % 5 != 0)  # 6 of 30 without references
    hidden = _run(tmp_path, "hidden", lambda i: False, methods="daca,naive,p_true")  # ts needs labels
    assert partial.has_labels and partial.freeform["n_unjudged"] == 6 and "ts" in partial.methods
    assert not hidden.has_labels
    # ts is fitted on the judged questions only; the label-free fits see every calibration question and no
    # label, exactly as when no question is labelled
    for key in ("daca", "naive"):
        assert [r.temperature for r in partial.fits[key]] == [r.temperature for r in hidden.fits[key]], key
