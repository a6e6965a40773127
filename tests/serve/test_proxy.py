"""refcal serve against a fake upstream: pass-through, the refcal field, streaming, faults, auth, metrics."""

from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest
from serve_helpers import PromptReference, mc, wait_records

from refcal import load_calibrator
from refcal.backends import load_backend
from refcal.backends.api_logprobs import letter_logprobs
from refcal.backends.base import LetterRequest
from refcal.serve import read_log
from refcal.serve.fake_upstream import FakeUpstream, ServerThread, first_token_logprobs, logits_prompt


def _direct(upstream, path, body):
    return httpx.post(f"{upstream.url}/v1/{path}", json=body, timeout=30)


@pytest.mark.parametrize("path,body", [
    ("chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hello"}], "logprobs": True,
                          "top_logprobs": 3}),
    ("completions", {"model": "m", "prompt": "hello", "logprobs": 2}),
    ("chat/completions", {"model": "fake-500", "messages": [{"role": "user", "content": "x"}]}),
    ("chat/completions", {"model": "fake-429", "messages": []}),
    ("chat/completions", {"model": "fake-malformed", "messages": []}),
])
def test_without_refcal_field_body_and_status_pass_through_unchanged(make_proxy, upstream, path, body):
    p = make_proxy()
    via, direct = p.client.post(f"/v1/{path}", json=body), _direct(upstream, path, body)
    assert (via.status_code, via.content) == (direct.status_code, direct.content)
    assert "refcal" not in via.text
    assert read_log_count(p) == 0


def test_stream_without_refcal_passes_through_byte_for_byte(make_proxy, upstream):
    p = make_proxy()
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "s"}]}
    with p.client.stream("POST", "/v1/chat/completions", json=body) as r:
        via = r.read()
    assert via == _direct(upstream, "chat/completions", body).content


def test_models_forwarded_and_health(make_proxy, upstream):
    p = make_proxy()
    assert p.client.get("/v1/models").json() == httpx.get(f"{upstream.url}/v1/models").json()
    h = p.client.get("/health").json()
    assert h["status"] == "ok" and h["calibrator"]["method"] == "daca" and h["calibrator"]["n_options"] == 4


def read_log_count(p) -> int:
    try:
        return len(read_log(p.state.config.log_dir))
    except Exception:  # noqa: BLE001 - no records yet
        return 0


def test_calibrated_distribution_equals_apply_on_the_same_scores(make_proxy, upstream, cal_path):
    """The refcal field = the calibrator applied to what the openai: backend scores for the same prompt."""
    p = make_proxy(top_logprobs=5)  # a small top-k: some letters get the floor
    cal = load_calibrator(cal_path)
    backend = load_backend("openai:m", api_base=upstream.url + "/v1", letters="topk", concurrency=1, top_logprobs=5)
    prompts = [logits_prompt(f"q{i}", np.random.default_rng(i).normal(0, 3, 4)) for i in range(5)]
    prompts += [f"free text {i}" for i in range(5)]  # hash-made top-k: some letters floored
    reqs = [LetterRequest("", t, ("A", "B", "C", "D"), True) for t in prompts]
    scores = np.array(backend.score_letters(reqs))
    expect = cal.predict_proba(scores)
    n_floored = 0
    for i, text in enumerate(prompts):
        out = p.client.post("/v1/chat/completions", json=mc(text)).json()
        got = np.array([out["refcal"]["probabilities"][c] for c in "ABCD"])
        np.testing.assert_allclose(got, expect[i], rtol=0, atol=1e-9)
        assert out["refcal"]["confidence"] == pytest.approx(expect[i].max(), abs=1e-12)
        assert out["refcal"]["answer"] == "ABCD"[int(np.argmax(expect[i]))]
        assert "logprobs" not in out["choices"][0]  # the client did not ask for them
        n_floored += bool(out["refcal"]["floored"])
        direct = letter_logprobs(first_token_logprobs(text)[:5], "ABCD")
        np.testing.assert_allclose(direct.logprobs, scores[i], atol=1e-12)
    assert n_floored > 0  # the floor path was exercised
    field = out["refcal"]
    assert field["calibrator"]["method"] == "daca"
    assert field["calibrator"]["params"]["temperature"] == pytest.approx(cal.temperature_)
    assert len(field["calibrator"]["sha256"]) == 64 and field["letter_source"] == "topk"
    assert read_log_count(p) == len(prompts)


def test_client_logprobs_kept_at_its_own_k(make_proxy):
    p = make_proxy()
    out = p.client.post("/v1/chat/completions", json=mc("x", logprobs=True, top_logprobs=2)).json()
    assert len(out["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 2
    assert "refcal" in out


def test_completions_endpoint(make_proxy, cal_path):
    p = make_proxy()
    prompt = logits_prompt("q", [0.5, 1.5, -1.0])
    out = p.client.post("/v1/completions", json={"model": "m", "prompt": prompt,
                                                  "refcal": {"task": "multiple_choice", "n_options": 3}})
    assert out.status_code == 422  # calibrator fitted on 4 options
    p2 = make_proxy(allow_other_k=True)
    out = p2.client.post("/v1/completions", json={"model": "m", "prompt": prompt,
                                                   "refcal": {"task": "multiple_choice", "n_options": 3}}).json()
    expect = load_calibrator(cal_path).predict_proba(np.log(np.exp([0.5, 1.5, -1.0]) / np.exp([0.5, 1.5, -1.0]).sum())[None])
    np.testing.assert_allclose([out["refcal"]["probabilities"][c] for c in "ABC"], expect[0], atol=1e-9)


def test_stream_gets_refcal_chunk_before_done(make_proxy):
    p = make_proxy()
    prompt = logits_prompt("q", [2.0, 0.0, 0.0, -1.0])
    plain = p.client.post("/v1/chat/completions", json=mc(prompt)).json()["refcal"]
    with p.client.stream("POST", "/v1/chat/completions", json=mc(prompt, stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["refcal"]["probabilities"] == plain["probabilities"]
    chunks = [json.loads(e) for e in events[:-2]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == "A because reasons."
    assert all("logprobs" not in c["choices"][0] for c in chunks)
    assert not any("refcal" in c for c in chunks)


def test_slow_drip_stream_completes(make_proxy):
    p = make_proxy(timeout=5.0)
    with p.client.stream("POST", "/v1/chat/completions", json=mc("d", model="fake-drip", stream=True)) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "refcal" in json.loads(events[-2])


def test_slow_drip_answer_read_whole_times_out_in_total(make_proxy):
    """A non-streamed calibrated answer that keeps dripping (16 bytes every 0.02 s, never a stalled read) gets
    504 once the whole answer is not in after ``--timeout``, instead of holding the connection for its ~3 s."""
    with ServerThread(FakeUpstream(drip_s=0.02)) as slow:
        p = make_proxy(upstream=slow.url + "/v1", timeout=1.0)
        t0 = time.monotonic()
        r = p.client.post("/v1/chat/completions", json=mc("q", model="fake-drip"))
        elapsed = time.monotonic() - t0
        assert r.status_code == 504 and r.json()["error"]["type"] == "upstream_timeout"
        assert "refcal" not in r.json() and elapsed < 2.5
        p2 = make_proxy(upstream=slow.url + "/v1", timeout=30.0)  # the same answer, given the time it needs
        ok = p2.client.post("/v1/chat/completions", json=mc("q", model="fake-drip"))
        assert ok.status_code == 200 and "refcal" in ok.json()


def test_slow_drip_passthrough_read_whole_times_out_but_a_stream_goes_on(make_proxy):
    """Without ``refcal`` too: a non-streamed answer must be complete within ``--timeout`` (clean 504), while a
    streamed one may drip for as long as it keeps sending."""
    with ServerThread(FakeUpstream(drip_s=0.02)) as slow:
        p = make_proxy(upstream=slow.url + "/v1", timeout=1.0)
        body = {"model": "fake-drip", "messages": [{"role": "user", "content": "q"}], "logprobs": True,
                "top_logprobs": 20}
        r = p.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 504 and r.json()["error"]["type"] == "upstream_timeout"
        with p.client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
            events = [line[6:] for line in s.iter_lines() if line.startswith("data: ")]
        assert s.status_code == 200 and events[-1] == "[DONE]"


@pytest.mark.parametrize("field,needle", [
    ({"task": "multiple_choice", "n_options": 5}, "fitted on 4 options"),
    ({"task": "free_form"}, "is for multiple-choice"),
    ({"task": "ranking"}, "refcal.task"),
    ({"task": "multiple_choice", "n_options": "4"}, "n_options"),
    ({"task": "multiple_choice", "n_options": 4, "temperature": 2}, "unknown key"),
    ("yes", "must be an object"),
])
def test_request_that_does_not_fit_gets_422_with_one_line(make_proxy, field, needle):
    p = make_proxy()
    r = p.client.post("/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "q"}],
                                                     "refcal": field})
    assert r.status_code == 422
    msg = r.json()["error"]["message"]
    assert needle in msg and "\n" not in msg
    assert read_log_count(p) == 0


@pytest.mark.parametrize("model,status,kind", [
    ("fake-slow", 504, "upstream_timeout"), ("fake-malformed", 502, "upstream_malformed"),
    ("fake-drop", 502, "upstream_unreachable"), ("fake-nologprobs", 502, "upstream_no_logprobs"),
])
def test_upstream_faults_never_give_a_confidence(make_proxy, model, status, kind):
    p = make_proxy(timeout=1.0)
    r = p.client.post("/v1/chat/completions", json=mc("q", model=model))
    assert r.status_code == status
    assert r.json()["error"]["type"] == kind and "refcal" not in r.json()
    assert read_log_count(p) == 0
    assert f'refcal_errors_total{{kind="{kind}"}} 1.0' in p.client.get("/metrics").text


@pytest.mark.parametrize("model", ["fake-500", "fake-429"])
def test_upstream_error_status_and_body_returned_unchanged(make_proxy, upstream, model):
    p = make_proxy()
    r = p.client.post("/v1/chat/completions", json=mc("q", model=model))
    direct = _direct(upstream, "chat/completions", {"model": model, "messages": []})
    assert (r.status_code, r.content) == (direct.status_code, direct.content)
    with p.client.stream("POST", "/v1/chat/completions", json=mc("q", model=model, stream=True)) as s:
        assert (s.status_code, s.read()) == (direct.status_code, direct.content)


@pytest.mark.parametrize("model,kind", [("fake-drop", "upstream_unreachable"), ("fake-malformed", "upstream_unreachable")])
def test_stream_broken_by_upstream_ends_with_an_error_event_and_no_done(make_proxy, model, kind):
    """Headers (200) are sent before the upstream breaks: the stream ends with an error event, no [DONE] and
    no refcal chunk, so a client cannot mistake it for a complete answer."""
    p = make_proxy()
    with p.client.stream("POST", "/v1/chat/completions", json=mc("q", model=model, stream=True)) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events and "[DONE]" not in events and not any("refcal" in e for e in events)
    assert json.loads(events[-1])["error"]["type"] == kind
    assert read_log_count(p) == 0


def test_unreachable_upstream_is_502(make_proxy, cal_path):
    from refcal.serve.fake_upstream import free_port

    p = make_proxy(upstream=f"http://127.0.0.1:{free_port()}/v1")
    for body in (mc("q"), {"model": "m", "messages": []}):
        r = p.client.post("/v1/chat/completions", json=body)
        assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_unreachable"


def test_client_auth_and_upstream_key(make_proxy, monkeypatch):
    monkeypatch.setenv("PROXY_KEY", "sk-proxy-secret")
    p = make_proxy(api_key_env="PROXY_KEY")
    assert p.client.post("/v1/chat/completions", json=mc("q")).status_code == 401
    assert p.client.post("/v1/chat/completions", json=mc("q"),
                         headers={"Authorization": "Bearer wrong"}).status_code == 401
    r = p.client.post("/v1/chat/completions", json=mc("q"), headers={"Authorization": "Bearer sk-proxy-secret"})
    assert r.status_code == 200
    assert p.state.upstream_headers({"authorization": "Bearer sk-proxy-secret"}) == {}  # never forwarded
    monkeypatch.setenv("REFCAL_UPSTREAM_API_KEY", "sk-up")
    assert p.state.upstream_headers({"authorization": "x"}) == {"authorization": "Bearer sk-up"}


def test_log_has_no_prompt_text_unless_log_text(make_proxy, tmp_path):
    p = make_proxy(log_dir=str(tmp_path / "a"))
    p.client.post("/v1/chat/completions", json=mc("SECRET-QUESTION"))
    q = make_proxy(log_dir=str(tmp_path / "b"), log_text=True)
    q.client.post("/v1/chat/completions", json=mc("SECRET-QUESTION"))
    a = "".join(f.read_text() for f in (tmp_path / "a").glob("*.jsonl"))
    b = "".join(f.read_text() for f in (tmp_path / "b").glob("*.jsonl"))
    assert "SECRET" not in a and "SECRET-QUESTION" in b
    rec = json.loads(a)
    assert set(rec) >= {"t", "id", "task", "chat", "confidence", "answer"} and len(rec["chat"]) == 4


def test_metrics(make_proxy):
    p = make_proxy()
    for i in range(3):
        p.client.post("/v1/chat/completions", json=mc(f"q{i}"))
    p.client.post("/v1/chat/completions", json={"model": "m", "messages": []})
    text = p.client.get("/metrics").text
    assert 'refcal_requests_total{calibrated="true",endpoint="chat/completions"} 3.0' in text
    assert 'refcal_requests_total{calibrated="false",endpoint="chat/completions"} 1.0' in text
    for name in ("refcal_upstream_latency_seconds_count", "refcal_proxy_overhead_seconds_count",
                 "refcal_mean_confidence", "refcal_agreement_rate"):
        assert name in text




def test_reference_sample_logged_and_agreement_metric(make_proxy):
    p = make_proxy(reference=PromptReference())
    for chat, base in (([3, 0, 0, 0], [2, 1, 0, 0]), ([3, 0, 0, 0], [0, 2, 0, 0])):
        prompt = logits_prompt("q", chat) + f" BASE=[{', '.join(map(str, base))}]"
        assert p.client.post("/v1/chat/completions", json=mc(prompt)).status_code == 200
    data = wait_records(p.state.config.log_dir, 2)
    assert data.has_base.all()
    np.testing.assert_allclose(data.base[:, :2], [[2, 1], [0, 2]])
    assert "refcal_agreement_rate 0.5" in p.client.get("/metrics").text


def test_free_form_asks_p_true_and_applies_the_free_form_calibrator(upstream, tmp_path, make_proxy):
    from refcal.tasks.prompts_freeform import p_true_prompt

    d = np.random.default_rng(0)
    base, chat = d.normal(0, 2, (300, 2)), None
    chat = 3 * base + d.normal(0, 0.3, (300, 2))
    cal = __import__("refcal").DACA().fit(base, chat)
    cal.task_ = "free-form P(True)"
    path = tmp_path / "ff.json"
    cal.save(path)
    p = make_proxy(calibrator=str(path))
    body = {"model": "m", "messages": [{"role": "user", "content": "What is 2+2?"}], "refcal": {"task": "free_form"}}
    out = p.client.post("/v1/chat/completions", json=body).json()
    judged = p_true_prompt("What is 2+2?", out["choices"][0]["message"]["content"], chat=True)
    scores = letter_logprobs(first_token_logprobs(judged)[:20], ("B", "A"))
    expect = load_calibrator(path).predict_proba(scores.logprobs[None])[0]
    assert out["refcal"]["confidence"] == pytest.approx(expect[1], abs=1e-9)
    assert out["refcal"]["probabilities"]["False"] == pytest.approx(expect[0], abs=1e-9)
    assert p.client.post("/v1/chat/completions", json=mc("q")).status_code == 422  # an MC request: wrong task


def test_calibrator_that_reads_the_reference_waits_for_it(make_proxy, tmp_path):
    """daca_agree picks each question's temperature by whether the two models agree: the proxy scores the
    reference on every request before answering, and refuses to start without a reference model."""
    from refcal import AgreementDACA
    from refcal.errors import InputError
    from refcal.serve import ServeConfig, create_app
    from refcal.synthetic import make_synthetic

    d = make_synthetic(600, 4, seed=2)
    cal = AgreementDACA().fit(d.base, d.chat)
    path = tmp_path / "agree.json"
    cal.save(path)
    with pytest.raises(InputError, match="needs the reference model"):
        create_app(ServeConfig(upstream="http://127.0.0.1:9/v1", calibrator=str(path)))
    p = make_proxy(calibrator=str(path), reference=PromptReference())
    for chat, base in (([3.0, 0, 0, 0], [2.0, 1, 0, 0]), ([3.0, 0, 0, 0], [0, 2.0, 0, 0])):
        prompt = logits_prompt("q", chat) + f" BASE=[{', '.join(map(str, base))}]"
        out = p.client.post("/v1/chat/completions", json=mc(prompt)).json()
        g = np.log(np.exp(chat) / np.exp(chat).sum())
        want = load_calibrator(path)
        try:  # the unified calibrator API, or the pair form of older builds
            expect = want.predict_proba(g[None], base=np.array([base]))[0]
        except TypeError:
            expect = want.predict_proba(np.array([base]), g[None])[0]
        np.testing.assert_allclose([out["refcal"]["probabilities"][c] for c in "ABCD"], expect, atol=1e-9)
    assert wait_records(p.state.config.log_dir, 2).has_base.all()
