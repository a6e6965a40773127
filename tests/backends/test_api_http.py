"""The retrying POST of the OpenAI-compatible backends against misbehaving local servers (127.0.0.1)."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from api_server import FakeVLLM, FaultProxy
from refcal.backends.api_http import RetryPolicy, Secret, post_json
from refcal.backends.openai import OpenAIBackend
from refcal.errors import BackendError
from refcal.tasks.requests import LetterRequest


def _post(url: str, timeout: float, retries: int = 0) -> dict:
    with httpx.Client(timeout=httpx.Timeout(timeout)) as client:
        return post_json(client, url + "/completions", {"prompt": "x"}, headers={},
                         policy=RetryPolicy(max_retries=retries, backoff_base=0.01), secret=Secret(None),
                         rng=random.Random(0), stop=threading.Event())


def test_slow_drip_answer_hits_the_whole_attempt_deadline():
    """Headers, then one byte every 0.2 s: each read is quick, the attempt never ends; the 1 s deadline
    must end it (before the fix it waited for the 100 kB body, 5.5 hours at this rate)."""
    with FakeVLLM() as fake, FaultProxy(fake.url.rsplit("/v1", 1)[0]) as proxy:
        proxy.script(("drip", 0.2), ("drip", 0.2))
        start = time.monotonic()
        with pytest.raises(BackendError, match=r"failed after 2 attempts .*no complete answer within 1 s"):
            _post(proxy.url, timeout=1.0, retries=1)
        # generous bound (2 attempts of 1 s plus back-off): only "it returned at all" is the point
        assert time.monotonic() - start < 30


def _auth_sent(api_base: str, key: str | None, monkeypatch) -> tuple[list[str | None], OpenAIBackend]:
    if key is None:
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    else:
        monkeypatch.setenv("OPENAI_API_KEY", key)
    with FakeVLLM() as fake:
        url = fake.url.replace("http://", f"http://{api_base}")
        b = OpenAIBackend("fake-vllm", api_base=url, letters="topk", concurrency=1)
        b.score_letters([LetterRequest("", "Q?", ("A", "B"))])
    return fake.auth, b


@pytest.mark.parametrize("userinfo,key,sent", [
    ("", "sk-key1", "Bearer sk-key1"),
    ("alice:pw@", None, "Basic YWxpY2U6cHc="),   # base64("alice:pw")
    ("alice:pw@", "sk-key1", "Bearer sk-key1"),  # both: the key wins, the user info is not sent
    ("", None, None),
])
def test_credentials_sent_key_wins_over_userinfo(userinfo, key, sent, monkeypatch):
    auth, b = _auth_sent(userinfo, key, monkeypatch)
    assert auth and set(auth) == {sent}
    assert "alice" not in repr(b) and "pw" not in b.api_base and "alice" not in b.fingerprint
