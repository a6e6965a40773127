"""``--no-progress`` silences every progress bar, transformers' own (weight loading) included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import refcal

SRC = os.environ.get("REFCAL_TEST_SRC") or str(Path(refcal.__file__).resolve().parents[1])


@pytest.mark.slow
def test_no_progress_hides_transformers_bars(tmp_path):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"Is {i} even?", "choices": ["yes", "no"], "label": i % 2}) + "\n"
                            for i in range(2)))
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.run([sys.executable, "-m", "refcal", "score", "-m", "smollm2-135m-instruct", "-d", str(data),
                           "--device", "cpu", "--no-progress", "-o", str(tmp_path / "s.parquet")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "%|" not in proc.stderr and "it/s]" not in proc.stderr, proc.stderr[-500:]
