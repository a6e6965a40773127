"""``scripts/serve_shift_demo.py`` end to end at a tiny size, with its non-default options.

The real thing: llama.cpp's server with the packaged Gemma-3-270M GGUF as the upstream (``--upstream
gemma-3-270m``: raw prompts to ``/v1/completions``), ``refcal serve`` in front of it with the packaged
SmolLM2-135M-Instruct as the reference, and ``refcal monitor`` on the log. Checked: the options reach the run
(window, sizes, endpoint, reference), one log record per served question and one reference sample each
(``--reference-rate 1``), the monitor's windows, and a saved calibrator that names its inputs without this
machine's temporary folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.api]


def test_gemma_upstream_with_its_options(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "serve_shift_demo.py"), "--upstream", "gemma-3-270m",
                           "--reference", "smollm2-135m-instruct", "--n", "20", "--n-calib", "24", "--window", "10",
                           "--seed", "3", "--out", str(out), "--work", str(work)],
                          capture_output=True, text=True, timeout=1500, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["upstream"] == "gemma-3-270m" and summary["endpoint"] == "completions"
    assert summary["reference"] == "smollm2-135m-instruct"
    assert (summary["n_per_dataset"], summary["n_calib"], summary["window"], summary["window_sciq_halves"],
            summary["seed"]) == (20, 24, 10, 10, 3)
    assert summary["exit_code_shift"] in (0, 3) and summary["exit_code_sciq_halves"] in (0, 3)

    rows = [json.loads(line) for line in (out / "served.jsonl").read_text().splitlines()]
    assert [r["dataset"] for r in rows] == ["sciq"] * 20 + ["mmlu"] * 20
    assert len({r["request_id"] for r in rows}) == 40
    request = json.loads((out / "request.json").read_text())
    assert "prompt" in request and "messages" not in request and request["model"] == "gemma-3-270m"
    assert json.loads((out / "response.json").read_text())["refcal"]["request_id"] == rows[0]["request_id"]

    records = [json.loads(line) for seg in sorted((work / "log").glob("segment-*.jsonl"))
               for line in seg.read_text().splitlines()]
    assert sorted(r["id"] for r in records) == sorted(r["request_id"] for r in rows)
    assert all("base" in r for r in records)  # --reference-rate 1: every request has its reference sample

    shift = json.loads((out / "shift" / "monitor.json").read_text())
    halves = json.loads((out / "sciq-halves" / "monitor.json").read_text())
    assert len(shift["windows"]) == 4 and len(halves["windows"]) == 2  # 40 records / 10, 20 SciQ records / 10

    cal = json.loads((out / "calibrator.json").read_text())
    assert (cal["inputs"]["base"], cal["inputs"]["chat"]) == ("base.jsonl", "chat.jsonl")
    assert str(tmp_path) not in (out / "calibrator.json").read_text()
