"""Exact letters at serving time (vLLM's logprob_token_ids) against the protocol-faithful FakeVLLM of the
openai: backend's tests, and the auto fallback to the top-k for servers that cannot."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import mc

from api_server import FakeVLLM
from refcal import load_calibrator
from refcal.backends.base import LetterRequest
from refcal.backends.openai import OpenAIBackend

PROMPTS = [f"Question {i}: which?\nA. x\nB. y\nC. z\nD. w\nAnswer:" for i in range(5)]


@pytest.fixture
def fake(request):
    with FakeVLLM(getattr(request, "param", "vllm"), scale=4.0) as f:
        yield f


def _backend_scores(fake, letters):
    b = OpenAIBackend("fake-vllm", api_base=fake.url, mode="chat", letters=letters, top_logprobs=2)
    return np.array(b.score_letters([LetterRequest("", t, ("A", "B", "C", "D"), True) for t in PROMPTS]))


def test_exact_letters_equal_the_openai_backend_exact_scores(make_proxy, fake, cal_path):
    p = make_proxy(upstream=fake.url, top_logprobs=2)
    expect = load_calibrator(cal_path).predict_proba(_backend_scores(fake, "exact"))
    n_before = len(fake.requests)
    for i, text in enumerate(PROMPTS):
        out = p.client.post("/v1/chat/completions", json=mc(text, model="fake-vllm")).json()
        assert out["refcal"]["letter_source"] == "exact" and out["refcal"]["floored"] == []
        np.testing.assert_allclose([out["refcal"]["probabilities"][c] for c in "ABCD"], expect[i], atol=1e-9)
        assert "logprobs" not in out["choices"][0]
    tokenize = [q for path, q in fake.requests[n_before:] if path == "/tokenize"]
    assert len(tokenize) == 16  # 4 letters x 4 spellings, asked once
    assert p.client.get("/health").json()["letter_source"] == {"fake-vllm": "exact"}


def test_client_asking_logprobs_gets_topk_letters_and_its_own_tokens(make_proxy, fake):
    p = make_proxy(upstream=fake.url, top_logprobs=2)
    out = p.client.post("/v1/chat/completions", json=mc(PROMPTS[0], model="fake-vllm", logprobs=True,
                                                        top_logprobs=2)).json()
    assert out["refcal"]["letter_source"] == "topk"
    assert not out["choices"][0]["logprobs"]["content"][0]["token"].startswith("token_id:")


@pytest.mark.parametrize("fake", ["old", "strict", "no_tokenize"], indirect=True)
def test_auto_falls_back_to_topk_where_the_upstream_cannot(make_proxy, fake, cal_path):
    p = make_proxy(upstream=fake.url, top_logprobs=2)
    expect = load_calibrator(cal_path).predict_proba(_backend_scores(fake, "topk"))
    for i, text in enumerate(PROMPTS):
        r = p.client.post("/v1/chat/completions", json=mc(text, model="fake-vllm"))
        assert r.status_code == 200 and r.json()["refcal"]["letter_source"] == "topk"
        np.testing.assert_allclose([r.json()["refcal"]["probabilities"][c] for c in "ABCD"], expect[i], atol=1e-9)
    assert p.client.get("/health").json()["letter_source"] == {"fake-vllm": "topk"}


@pytest.mark.parametrize("fake", ["old"], indirect=True)
def test_letters_exact_refuses_an_upstream_that_cannot(make_proxy, fake):
    p = make_proxy(upstream=fake.url, letters="exact")
    r = p.client.post("/v1/chat/completions", json=mc(PROMPTS[0], model="fake-vllm"))
    assert r.status_code == 502 and "cannot score a fixed token set" in r.json()["error"]["message"]
    assert "refcal" not in r.json()
