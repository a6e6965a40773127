"""Unit tests of the API backend's pieces that need no server: letter mapping, floor, retry helpers."""

from __future__ import annotations

import math
import random
import threading

import numpy as np
import pytest

from refcal.backends import load_backend
from refcal.backends.api_http import RetryPolicy, Secret, parse_retry_after, post_json, public_url, scrub
from refcal.backends.api_logprobs import R_RESOLUTION, letter_logprobs
from refcal.backends.base import ClozeRequest, LetterRequest
from refcal.backends.openai import OpenAIBackend
from refcal.errors import BackendError, InputError

LN2 = math.log(2.0)


def test_letters_present_are_exact_and_variants_combine():
    top = [("A", math.log(0.5)), (" A", math.log(0.1)), ("B", math.log(0.3)), ("C", math.log(0.05)),
           (" D", math.log(0.04)), ("x", math.log(0.01))]
    s = letter_logprobs(top, ("A", "B", "C", "D"))
    # A = 0.5 + 0.1 (disjoint first tokens add up)
    np.testing.assert_allclose(s.logprobs, np.log([0.6, 0.3, 0.05, 0.04]), rtol=0, atol=1e-15)
    assert s.floored == (False,) * 4 and math.isnan(s.floor) and s.n_floored == 0


def test_floor_residual_bound():
    # returned mass 0.9 -> R = 0.1; p_min = 0.2; bound = min(0.2, 0.1) = 0.1; floor = log(0.1) - log 2
    top = [("A", math.log(0.7)), ("B", math.log(0.2))]
    s = letter_logprobs(top, ("A", "B", "C", "D"))
    np.testing.assert_allclose(s.logprobs, [math.log(0.7), math.log(0.2), math.log(0.05), math.log(0.05)],
                               rtol=0, atol=1e-15)
    assert s.floored == (False, False, True, True) and s.n_floored == 2


def test_floor_pmin_bound_and_below_every_returned_value():
    # R = 1 - (0.5 + 0.01) = 0.49 > p_min = 0.01 -> floor = log(0.01) - log 2
    s = letter_logprobs([("B", math.log(0.5)), ("zz", math.log(0.01))], ("A", "B"))
    assert s.logprobs[0] == pytest.approx(math.log(0.005), abs=1e-15)
    assert s.logprobs[0] < math.log(0.01)


def test_floor_resolution_when_topk_covers_all_mass():
    # the returned probabilities sum to 1 (up to rounding): R is clipped to the 1e-6 resolution
    top = [("A", math.log(0.75)), ("B", math.log(0.25) + 1e-9)]
    s = letter_logprobs(top, ("A", "B", "C"), floor_margin=1.0)
    assert s.logprobs[2] == pytest.approx(math.log(R_RESOLUTION) - 1.0, abs=1e-12)


def test_no_letter_returned_gives_uniform_floor_and_case_sensitivity():
    s = letter_logprobs([("true", math.log(0.6)), ("yes", math.log(0.3))], ("True", "False"))
    assert s.floored == (True, True)
    assert s.logprobs[0] == s.logprobs[1] == pytest.approx(math.log(0.1) - LN2, abs=1e-15)


def test_invalid_logprobs_raise():
    with pytest.raises(BackendError, match="invalid log-probabilities"):
        letter_logprobs([("A", 0.5)], ("A", "B"))
    with pytest.raises(BackendError, match="no top log-probabilities"):
        letter_logprobs([], ("A", "B"))


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    # HTTP date 10 s after "now"
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0


def test_secret_never_shown_and_scrubbed():
    key = "sk-test-abcdefghijklmnop1234"
    s = Secret(key)
    assert key not in repr(s) and key not in str(s) and s.get() == key
    assert "sk-" not in scrub(f"Incorrect API key provided: {key[:6]}****1234 and {key}", s)
    assert public_url("https://user:pw@example.com:8443/v1?api_key=x#f") == "https://example.com:8443/v1"
    # non-secret parameters stay (they select what the server does); credential-like ones go
    assert public_url("http://h/v1?api-version=2&token=t&sig=s") == "http://h/v1?api-version=2"


def test_key_not_in_fingerprint_repr_or_meta(monkeypatch):
    key = "sk-secret-value-0123456789"
    monkeypatch.setenv("REFCAL_TEST_KEY", key)
    b = load_backend("openai:gpt-x", api_base="http://u:p@127.0.0.1:9/v1", api_key_env="REFCAL_TEST_KEY")
    assert isinstance(b, OpenAIBackend)
    for text in (b.fingerprint, repr(b), str(b.meta), str(vars(b))):
        assert key not in text and "u:p" not in text
    assert b.fingerprint.startswith("openai:gpt-x@127.0.0.1:9/v1;mode=chat;top_logprobs=20;seed=0")


def test_bad_settings_raise_input_errors(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(InputError, match="top_logprobs"):
        OpenAIBackend("m", api_base="http://127.0.0.1:9/v1", top_logprobs=21)
    with pytest.raises(InputError, match="mode"):
        OpenAIBackend("m", api_base="http://127.0.0.1:9/v1", mode="raw")
    with pytest.raises(InputError, match="http"):
        OpenAIBackend("m", api_base="127.0.0.1:9/v1")
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        OpenAIBackend("gpt-4o", api_base="https://api.openai.com/v1")
    with pytest.raises(BackendError, match="cloze"):  # the server cannot apply a chat template to a raw prompt
        OpenAIBackend("m", api_base="http://127.0.0.1:9/v1").score_cloze([ClozeRequest("Q?", (" a",), chat=True)])


def test_connection_refused_is_one_clear_line(monkeypatch):
    """Nothing listens on the port: bounded retries, then one line naming the URL and what to do."""
    monkeypatch.setenv("REFCAL_TEST_KEY", "sk-never-shown-123456")
    port = _closed_port()
    b = OpenAIBackend("m", api_base=f"http://127.0.0.1:{port}/v1", api_key_env="REFCAL_TEST_KEY",
                      max_retries=2, backoff_base=0.01, timeout=2)
    req = LetterRequest("", "Question: 1+1?\nA: 2\nB: 3\nAnswer:", ("A", "B"), chat=True)
    with pytest.raises(BackendError) as info:
        b.score_letters([req])
    msg = str(info.value)
    assert "\n" not in msg and "sk-never" not in msg
    assert f"POST http://127.0.0.1:{port}/v1/chat/completions failed after 3 attempts" in msg
    assert "connection failed" in msg and b.stats.n_retries == 2 and b.stats.n_requests == 0


def test_retry_after_longer_than_max_wait_fails_at_once():
    class Resp:  # what httpx.Client.stream yields: a context manager with iter_bytes
        status_code = 429
        headers = {"retry-after": "3600"}

        def iter_bytes(self):
            yield b"slow down"

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class Client:
        calls = 0

        def stream(self, *a, **k):
            Client.calls += 1
            return Resp()

    with pytest.raises(BackendError, match="asks to wait 3600 s"):
        post_json(Client(), "http://127.0.0.1:1/v1/x", {}, headers={}, policy=RetryPolicy(max_wait=60),
                  secret=Secret(None), rng=random.Random(0), stop=threading.Event())
    assert Client.calls == 1


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_generate_sends_greedy_requests_and_cuts_at_the_stop_string():
    import http.server
    import json

    from refcal.backends.base import GenerateRequest

    seen = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            seen.append((self.path, body))
            text = "Paris.\nQuestion: next" if "messages" in body else " B) because"
            choice = {"message": {"role": "assistant", "content": text}} if "messages" in body else {"text": text}
            out = json.dumps({"choices": [choice]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        b = OpenAIBackend("m", api_base=f"http://127.0.0.1:{srv.server_address[1]}/v1", mode="completions")
        out = b.generate([GenerateRequest("Capital of France?", max_new_tokens=8, stop=("\n",), chat=True),
                          GenerateRequest("Answer:", max_new_tokens=3, stop=(")",))])
    finally:
        srv.shutdown()
    assert out == ["Paris.", " B"]
    by_path = {p: body for p, body in seen}
    chat, raw = by_path["/v1/chat/completions"], by_path["/v1/completions"]
    assert chat["max_tokens"] == 8 and chat["stop"] == ["\n"] and chat["temperature"] == 0
    assert chat["messages"] == [{"role": "user", "content": "Capital of France?"}] and "logprobs" not in chat
    assert raw["prompt"] == "Answer:" and raw["max_tokens"] == 3 and b.stats.n_requests == 2
    with pytest.raises(InputError, match="max_new_tokens"):
        b.generate([GenerateRequest("x", max_new_tokens=0)])


# -- exact letters: vLLM's logprob_token_ids, against a protocol-faithful fake of its server --------------

def _letter_requests(n: int, chat: bool) -> list[LetterRequest]:
    return [LetterRequest("", f"Question {i}: which?\nA. x\nB. y\nC. z\nD. w\nAnswer:", ("A", "B", "C", "D"),
                          chat=chat) for i in range(n)]


def _expected_exact(fake, req: LetterRequest) -> np.ndarray:
    """logsumexp over the fake's vocabulary of the single-token spellings of each letter (independent of
    refcal: the fake's own distribution and tokenizer)."""
    lp = np.array(fake.logprobs(req.prefix + req.prompt))
    out = []
    for letter in req.letters:
        ids = {fake.tokenize(f.format(letter))[0] for f in ("{}", " {}", "\n{}", "{}\n")
               if len(fake.tokenize(f.format(letter))) == 1}
        out.append(np.logaddexp.reduce(lp[sorted(ids)]))
    return np.array(out)


@pytest.mark.parametrize("mode,chat", [("completions", False), ("chat", True)])
def test_exact_letters_through_vllm_logprob_token_ids(mode, chat):
    from api_server import FakeVLLM

    with FakeVLLM("vllm", scale=4.0) as fake:
        b = OpenAIBackend("fake-vllm", api_base=fake.url, mode=mode, concurrency=3)
        reqs = _letter_requests(6, chat)
        got = b.score_letters_detailed(reqs)
        topk = OpenAIBackend("fake-vllm", api_base=fake.url, mode=mode, letters="topk", top_logprobs=2)
        floored = topk.score_letters_detailed(reqs)
    for r, s in zip(reqs, got, strict=True):
        np.testing.assert_allclose(s.logprobs, _expected_exact(fake, r), rtol=0, atol=1e-12)
        assert s.n_floored == 0
    assert b.stats.letter_source == "exact" and b.meta["letter_source"] == "exact"
    assert b.stats.n_floored_letters == 0 and b.stats.n_requests == 6 and b.stats.n_letters == 24
    # the same server through the top-k: letters outside the top-2 are floored, i.e. not exact
    assert topk.stats.letter_source == "topk" and topk.stats.n_floored_letters > 0
    assert any(not np.allclose(a.logprobs, e.logprobs) for a, e in zip(floored, got, strict=True))
    scored = [p for path, p in fake.requests if path.endswith("completions") and "logprob_token_ids" in p]
    assert len(scored) == 6  # every request of the exact backend, none of the top-k one
    ids = scored[0]["logprob_token_ids"]
    assert ids == sorted(fake.VOCAB.index(t) for t in ("A", " A", "B", " B", "C", " C", "D", " D"))
    assert all(p["return_tokens_as_token_ids"] is True and p["max_tokens"] == 1 for p in scored)
    # chat: logprobs=true; completions: logprobs set to an int (vLLM requires it; the ids replace its top-k)
    assert all(type(p["logprobs"]) is (bool if chat else int) and p["logprobs"] == 1 for p in scored)
    # each spelling was tokenized once (4 letters x 4 spellings), at the server root, without special tokens
    tok = [p for path, p in fake.requests if path == "/tokenize"]
    assert len(tok) == 16 and all(p["add_special_tokens"] is False for p in tok)


@pytest.mark.parametrize("kind", ["old", "strict", "no_tokenize"])
def test_auto_falls_back_to_topk_once_when_the_server_cannot(kind):
    from api_server import FakeVLLM

    with FakeVLLM(kind, scale=4.0) as fake:
        reqs = _letter_requests(5, chat=False)
        auto = OpenAIBackend("fake-vllm", api_base=fake.url, mode="completions", concurrency=4, top_logprobs=3)
        got = auto.score_letters(reqs)
        n_asked = sum(1 for _, p in fake.requests if "logprob_token_ids" in p)
        n_tok = sum(1 for path, _ in fake.requests if path == "/tokenize")
        ref = OpenAIBackend("fake-vllm", api_base=fake.url, mode="completions", letters="topk",
                            top_logprobs=3).score_letters(reqs)
        with pytest.raises(BackendError, match="letters='exact' but the server .* cannot score a fixed token set"):
            OpenAIBackend("fake-vllm", api_base=fake.url, mode="completions", letters="exact").score_letters(reqs)
    np.testing.assert_array_equal(np.array(got), np.array(ref))  # the top-k path, floor included
    assert auto.stats.letter_source == "topk" and auto.meta["letter_source"] == "topk"
    assert auto.stats.n_requests == 5 and auto.stats.n_floored_letters > 0
    note = auto.meta["letters_note"]
    if kind == "no_tokenize":
        assert n_asked == 0 and n_tok == 1 and "no vLLM /tokenize endpoint (HTTP 404)" in note
    else:
        assert n_asked == 1 and n_tok == 16  # asked once, not once per request
        assert ("ignored logprob_token_ids" if kind == "old" else "refused logprob_token_ids with HTTP 400") in note


def test_exact_forced_and_unknown_letters_option():
    from api_server import FakeVLLM

    with pytest.raises(InputError, match=r"letters must be one of \('auto', 'exact', 'topk'\), got 'all'"):
        load_backend("openai:m", api_base="http://127.0.0.1:9/v1", letters="all")
    b = load_backend("openai:m", api_base="http://127.0.0.1:9/v1", letters="topk")
    assert b.stats.letter_source == "topk" and b.fingerprint.endswith(";letters=topk")
    assert OpenAIBackend("m", api_base="http://127.0.0.1:9/v1").stats.letter_source == "unresolved"
    with FakeVLLM("vllm") as fake:
        b = OpenAIBackend("fake-vllm", api_base=fake.url, letters="exact")
        s = b.score_letters_detailed([LetterRequest("", "Is it? Answer:", ("True", "False"), chat=True)])[0]
        lp = np.array(fake.logprobs("Is it? Answer:"))
        want = [np.logaddexp(lp[fake.VOCAB.index("True")], lp[fake.VOCAB.index(" True")]),
                np.logaddexp(lp[fake.VOCAB.index("False")], lp[fake.VOCAB.index(" False")])]
        np.testing.assert_allclose(s.logprobs, want, rtol=0, atol=1e-12)
        # a label with no single-token spelling cannot be exact: one clear error, no floored row
        with pytest.raises(BackendError, match="option label 'E' has no single-token spelling"):
            b.score_letters([LetterRequest("", "Q? Answer:", ("A", "E"), chat=True)])
    assert b.stats.letter_source == "exact"


@pytest.mark.api
def test_llama_cpp_python_server_takes_the_topk_path():
    """The real llama-cpp-python server has no vLLM /tokenize: auto asks once and scores with the top-k."""
    from api_server import MODEL_ALIAS, FaultProxy, LlamaServer

    server = LlamaServer().start()
    try:
        with FaultProxy(f"http://127.0.0.1:{server.port}") as proxy:
            b = OpenAIBackend(MODEL_ALIAS, api_base=proxy.url, concurrency=2)
            got = b.score_letters(_letter_requests(3, chat=True))
            ref = OpenAIBackend(MODEL_ALIAS, api_base=server.url, letters="topk").score_letters(
                _letter_requests(3, chat=True))
            with pytest.raises(BackendError, match="letters='exact' but the server .* no vLLM /tokenize"):
                OpenAIBackend(MODEL_ALIAS, api_base=server.url, letters="exact").score_letters(
                    _letter_requests(1, chat=True))
    finally:
        server.stop()
    np.testing.assert_array_equal(np.array(got), np.array(ref))
    assert b.stats.letter_source == "topk" and b.meta["letter_source"] == "topk" and proxy.n_forwarded == 3
    assert "no vLLM /tokenize endpoint (HTTP 404)" in b.meta["letters_note"]


def test_a_tokenize_that_is_not_vllms_means_topk():
    """llama.cpp's llama-server has a /tokenize that reads "content": for refcal's "prompt" it answers no
    tokens, which must not read as "no single-token spelling"."""
    from api_server import FakeVLLM

    class LlamaServerTokenize(FakeVLLM):
        def _answer(self, path, req):
            return (200, {"tokens": []}) if path == "/tokenize" else super()._answer(path, req)

    with LlamaServerTokenize("vllm") as fake:
        b = OpenAIBackend("fake-vllm", api_base=fake.url, mode="completions")
        b.score_letters(_letter_requests(2, chat=False))
    assert b.stats.letter_source == "topk" and "not vLLM's" in b.meta["letters_note"]
