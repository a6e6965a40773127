"""lm-evaluation-harness ``--log_samples`` files as score files (refcal.scores.lmeval).

The fixtures under ``tests/fixtures/lmeval/`` were written by a real ``lm_eval`` 0.4.13 run (``--model hf
--log_samples --device cpu``, float32) of the 8-question task in ``tests/fixtures/lmeval/task/`` on the
packaged models: ``chat/`` = smollm2-135m-instruct, ``base/`` = gemma-3-270m. The ``slow`` test runs
``lm_eval`` itself and compares refcal's own cloze scoring with it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from refcal.calibrate import DACA, load_calibrator
from refcal.cli import main
from refcal.errors import InputError, ScoreFileError
from refcal.scores import is_lmeval_log, join_scores, load_scores, read_lmeval

FIX = Path(__file__).parents[1] / "fixtures" / "lmeval"


def _samples(kind: str) -> Path:
    (path,) = sorted((FIX / kind).glob("samples_*.jsonl"))
    return path


def _raw(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _to_v042_array(path: Path, out: Path) -> Path:
    """Rewrite a >= 0.4.3 samples file in the shape lm-eval 0.4.0-0.4.2 wrote (``lm_eval/__main__.py``:
    ``json.dumps(samples, indent=2)`` of dicts with ``arguments`` as ``[context, continuation]`` pairs and
    ``resps`` / ``filtered_resps`` as ``[loglikelihood, is_greedy]`` numbers, not strings)."""
    old = []
    for s in _raw(path):
        args = [[a["arg_0"], a["arg_1"]] for _, a in sorted(s["arguments"].items(), key=lambda kv: int(kv[0].rsplit("_", 1)[1]))]
        filt = [[float(ll), greedy == "True"] for ll, greedy in s["filtered_resps"]]
        old.append({"doc_id": s["doc_id"], "doc": s["doc"], "target": s["target"], "arguments": args,
                    "resps": [[r] for r in filt], "filtered_resps": filt,
                    **{m: s[m] for m in ("acc", "acc_norm", "acc_bytes") if m in s}})
    out.write_text(json.dumps(old, indent=2, ensure_ascii=False), encoding="utf-8")
    return out


@pytest.mark.parametrize("kind", ["chat", "base"])
def test_logits_are_lmeval_logliks_and_reproduce_its_metrics(kind):
    path = _samples(kind)
    raw = _raw(path)
    assert is_lmeval_log(path)
    s = load_scores(path)
    assert s.meta["task"] == "refcal_sciq8" and "lm-eval" in s.meta["format"] and s.meta["model"]
    assert list(s.ids) == [str(r["doc_id"]) for r in raw]
    assert list(s.labels) == [int(r["target"]) for r in raw]
    for r, row in enumerate(raw):
        assert s.logits[r].tolist() == [float(ll) for ll, _ in row["filtered_resps"]]
    # lm-eval's own per-sample metrics are the argmax of refcal's logits for each variant
    for metric in ("acc", "acc_norm", "acc_bytes"):
        v = load_scores(path, lmeval_metric=metric)
        hit = (np.argmax(v.logits, axis=1) == v.labels).astype(float)
        assert hit.tolist() == [row[metric] for row in raw], metric
    # acc_norm divides by characters, acc_bytes by UTF-8 bytes ("seeds — café" differs)
    norm = load_scores(path, lmeval_metric="acc_norm")
    byt = load_scores(path, lmeval_metric="acc_bytes")
    choices = raw[7]["doc"]["choices"]
    assert norm.logits[7, 3] == pytest.approx(s.logits[7, 3] / len(choices[3]), rel=1e-15)
    assert byt.logits[7, 3] == pytest.approx(s.logits[7, 3] / len(choices[3].encode()), rel=1e-15)
    assert len(choices[3]) != len(choices[3].encode())


def test_old_array_format(tmp_path):
    new = load_scores(_samples("chat"), lmeval_metric="acc_norm")
    old_path = _to_v042_array(_samples("chat"), tmp_path / "pretrained__smollm2_refcal_sciq8.jsonl")
    assert is_lmeval_log(old_path)
    old = load_scores(old_path, lmeval_metric="acc_norm")
    assert "0.4.0-0.4.2" in old.meta["format"]
    np.testing.assert_array_equal(old.logits, new.logits)
    np.testing.assert_array_equal(old.labels, new.labels)
    np.testing.assert_array_equal(old.ids, new.ids)


def test_fit_from_two_lmeval_runs(tmp_path):
    base, chat = _samples("base"), _samples("chat")
    out = tmp_path / "cal.json"
    assert main(["fit", "--base", str(base), "--chat", str(chat), "-o", str(out)]) == 0
    j = join_scores(load_scores(base), load_scores(chat))
    want = DACA(on_bound="warn").fit(j.base, j.chat)
    got = load_calibrator(out)
    assert math.isclose(got.temperature_, want.temperature_, rel_tol=1e-12)
    saved = json.loads(out.read_text())["inputs"]
    assert saved["n_questions"] == 8
    assert main(["fit", "--base", str(base), "--chat", str(chat), "--lmeval-metric", "acc_norm",
                 "-o", str(tmp_path / "cal_norm.json")]) == 0
    assert main(["evaluate", "--scores", str(chat), "--calibrator", str(out)]) == 0
    assert main(["apply", "--scores", str(chat), "--calibrator", str(out), "-o", str(tmp_path / "c.parquet")]) == 0
    assert len(load_scores(tmp_path / "c.parquet")) == 8


def test_refusals(tmp_path):
    native = tmp_path / "n.jsonl"
    native.write_text(json.dumps({"id": "a", "logits": [0.0, 1.0]}) + "\n")
    assert not is_lmeval_log(native)
    with pytest.raises(InputError, match="only to lm-evaluation-harness"):
        load_scores(native, lmeval_metric="acc_norm")
    with pytest.raises(InputError, match="must be one of"):
        read_lmeval(_samples("chat"), metric="f1")
    gen = tmp_path / "samples_gen_2026-01-01T00-00-00.000000.jsonl"
    gen.write_text(json.dumps({"doc_id": 0, "target": "x", "arguments": {"gen_args_0": {"arg_0": "q", "arg_1": {}}},
                               "filtered_resps": ["a generated answer"]}) + "\n")
    with pytest.raises(ScoreFileError, match="only multiple_choice tasks"):
        load_scores(gen)


@pytest.mark.slow
def test_real_lmeval_run_matches_refcal_cloze(tmp_path):
    """Run lm_eval on the packaged chat model; refcal reads its logits exactly and its own cloze scoring
    of the same questions agrees within 5e-4 nats (float32 rounding: measured 8.7e-5 on this model)."""
    from refcal.backends import load_backend
    from refcal.backends.models import resolve
    from refcal.tasks.prompts import cloze_requests

    lm_eval = shutil.which("lm_eval", path=os.path.dirname(sys.executable))
    assert lm_eval, "lm-eval is a test dependency (pip install -e '.[dev]')"
    task = tmp_path / "task"
    task.mkdir()
    shutil.copy(FIX / "task" / "data.jsonl", task / "data.jsonl")
    yaml = (FIX / "task" / "refcal_sciq8.yaml").read_text().replace("DATA_FILE", str(task / "data.jsonl"))
    (task / "refcal_sciq8.yaml").write_text(yaml)
    folder = resolve("smollm2-135m-instruct").path
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    subprocess.run([lm_eval, "--model", "hf", "--model_args", f"pretrained={folder},dtype=float32",
                    "--tasks", "refcal_sciq8", "--include_path", str(task), "--log_samples",
                    "--output_path", str(tmp_path / "out"), "--device", "cpu", "--batch_size", "1"],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=1500)
    (path,) = sorted((tmp_path / "out").rglob("samples_refcal_sciq8_*.jsonl"))
    s = load_scores(path)
    raw = _raw(path)
    assert s.logits.tolist() == [[float(ll) for ll, _ in r["filtered_resps"]] for r in raw]
    questions = [_question(r["doc"]) for r in raw]
    backend = load_backend("smollm2-135m-instruct", device="cpu", dtype="float32", batch_size=1)
    ours = np.array([res.logprob for res in backend.score_cloze(cloze_requests(questions))])
    np.testing.assert_allclose(ours, s.logits, rtol=0, atol=5e-4)


def _question(doc: dict):
    from refcal.data.base import Question

    return Question(id="x", question=doc["question"], choices=tuple(doc["choices"]), label=doc["answer"])
