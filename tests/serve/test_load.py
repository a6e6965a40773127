"""A bounded load test: 20 concurrent clients x 200 requests through the proxy (the benchmark runs 100 clients).

Every answer is matched to its own request (no cross-talk), the only errors are those the upstream made, and
the monitoring log holds exactly one record per calibrated answer.
"""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
from serve_helpers import mc

from refcal import load_calibrator
from refcal._math import log_softmax
from refcal.serve import read_log
from refcal.serve.fake_upstream import logits_prompt

N_CLIENTS, N_PER_CLIENT = 20, 200


def test_concurrent_clients_no_cross_talk_and_one_record_per_calibrated_answer(make_proxy, cal_path, tmp_path):
    p = make_proxy(log_dir=str(tmp_path / "log"), timeout=30.0)
    cal = load_calibrator(cal_path)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (N_CLIENTS * N_PER_CLIENT, 4))
    expect = cal.predict_proba(log_softmax(logits))

    async def client(c: int, http: httpx.AsyncClient) -> list[tuple[int, int, dict]]:
        out = []
        for j in range(N_PER_CLIENT):
            i = c * N_PER_CLIENT + j
            kind = i % 20  # 1 in 20 fails upstream (500), 1 in 20 passes through without refcal
            model = "fake-500" if kind == 0 else "m"
            body = mc(logits_prompt(f"question {i}", logits[i]), model=model)
            if kind == 1:
                body.pop("refcal")
            r = await http.post("/v1/chat/completions", json=body)
            out.append((i, r.status_code, r.json()))
        return out

    async def run():
        limits = httpx.Limits(max_connections=N_CLIENTS)
        async with httpx.AsyncClient(base_url=p.url, timeout=60, limits=limits) as http:
            return await asyncio.gather(*(client(c, http) for c in range(N_CLIENTS)))

    results = [r for rs in asyncio.run(run()) for r in rs]
    assert len(results) == N_CLIENTS * N_PER_CLIENT
    n_calibrated = 0
    for i, status, body in results:
        kind = i % 20
        if kind == 0:
            assert status == 500 and body["error"]["message"] == "upstream exploded"
            continue
        assert status == 200
        if kind == 1:
            assert "refcal" not in body
            continue
        got = [body["refcal"]["probabilities"][c] for c in "ABCD"]
        np.testing.assert_allclose(got, expect[i], atol=1e-9)  # its own question's answer, not another's
        n_calibrated += 1
    data = read_log(p.state.config.log_dir)
    assert len(data) == n_calibrated == N_CLIENTS * N_PER_CLIENT * 18 // 20
    assert data.n_torn == 0
    served = {round(float(c), 12) for c in data.confidence}
    assert served == {round(float(expect[i].max()), 12) for i, _, b in results if i % 20 > 1}
