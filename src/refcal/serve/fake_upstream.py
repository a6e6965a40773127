"""A fake OpenAI-compatible chat server (no model) for trying ``refcal serve``, its tests and its benchmark.

Answers ``/v1/chat/completions``, ``/v1/completions`` and ``/v1/models``. The first token's top-k
log-probabilities are a deterministic function of the prompt (so a reply can be matched to its request),
or, when the prompt contains ``LOGITS=[x, y, ...]``, ``log_softmax`` of those numbers over the letters
``A, B, C, ...`` (exact, for tests that must know the scores). The model name picks a fault:
``fake-500`` (HTTP 500 with a JSON body), ``fake-429``, ``fake-slow`` (sleeps ``slow_s`` before answering),
``fake-drip`` (sends its answer, streamed or not, 16 bytes every ``drip_s``), ``fake-malformed`` (HTTP 200, broken JSON),
``fake-drop`` (closes the connection in the middle of the body), ``fake-nologprobs``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import re
import socket
import string
import threading
import time
from typing import Any

import numpy as np

from .._math import log_softmax

LOGITS_RE = re.compile(r"LOGITS=\[([^\]]*)\]")
EXTRA_TOKENS = ("The", " The", "I", "Answer", " answer", "\n", " is", "1", "2", "Yes", "No", " A", " B", " C", " D",
                "E", "F", "G", "H", "(")


def first_token_logprobs(prompt: str) -> list[tuple[str, float]]:
    """The (token, logprob) alternatives of the first answer token, most likely first (all of them)."""
    m = LOGITS_RE.search(prompt)
    if m:
        z = np.array([float(v) for v in m.group(1).split(",")], dtype=np.float64)
        tokens = list(string.ascii_uppercase[: len(z)])
    else:
        seed = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "little")
        tokens = list(dict.fromkeys([*"ABCD", *EXTRA_TOKENS]))
        z = np.random.default_rng(seed).normal(0.0, 2.0, len(tokens))
        z[4:] -= 3.0  # letters usually lead, other tokens trail (some letters still fall out of a small top-k)
    lp = log_softmax(z)
    order = np.argsort(-lp, kind="stable")
    return [(tokens[i], float(lp[i])) for i in order]


def _prompt(body: dict) -> str:
    if isinstance(body.get("prompt"), str):
        return body["prompt"]
    parts = [m.get("content", "") for m in body.get("messages") or [] if isinstance(m, dict)]
    return "\n".join(p if isinstance(p, str) else json.dumps(p) for p in parts)


def _answer(body: dict, chat: bool) -> dict:
    prompt = _prompt(body)
    alts = first_token_logprobs(prompt)
    k = body.get("top_logprobs") if chat else body.get("logprobs")
    k = int(k) if isinstance(k, int) and not isinstance(k, bool) else 0
    token, lp = alts[0]
    want = bool(body.get("logprobs")) if chat else k > 0
    rid = "fake-" + hashlib.sha256(prompt.encode()).hexdigest()[:16]
    base = {"id": rid, "created": 0, "model": body.get("model", "fake"),
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 1, "total_tokens": 0}}
    if chat:
        logprobs = ({"content": [{"token": token, "logprob": lp, "top_logprobs": [
            {"token": t, "logprob": v} for t, v in alts[:k]]}]} if want else None)
        choice = {"index": 0, "message": {"role": "assistant", "content": token}, "finish_reason": "length",
                  "logprobs": logprobs}
        return {**base, "object": "chat.completion", "choices": [choice]}
    logprobs = ({"tokens": [token], "token_logprobs": [lp], "top_logprobs": [dict(alts[:k])], "text_offset": [0]}
                if want else None)
    return {**base, "object": "text_completion",
            "choices": [{"index": 0, "text": token, "finish_reason": "length", "logprobs": logprobs}]}


class FakeUpstream:
    """The ASGI app (see the module docstring)."""

    def __init__(self, *, slow_s: float = 5.0, drip_s: float = 0.05):
        self.slow_s, self.drip_s = slow_s, drip_s
        self.n_requests = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        self.n_requests += 1
        path, method = scope["path"], scope["method"]
        raw = b""
        more = True
        while more:
            msg = await receive()
            raw += msg.get("body", b"")
            more = msg.get("more_body", False)
        if method == "GET" and path == "/v1/models":
            return await _send(send, 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})
        if method != "POST" or path not in ("/v1/chat/completions", "/v1/completions"):
            return await _send(send, 404, {"error": {"message": f"no route {path}"}})
        try:
            body = json.loads(raw)
        except ValueError:
            return await _send(send, 400, {"error": {"message": "invalid JSON"}})
        model = str(body.get("model", ""))
        chat = path.endswith("chat/completions")
        if model == "fake-500":
            return await _send(send, 500, {"error": {"message": "upstream exploded", "type": "server_error"}})
        if model == "fake-429":
            return await _send(send, 429, {"error": {"message": "slow down"}}, extra=[(b"retry-after", b"1")])
        if model == "fake-slow":
            await asyncio.sleep(self.slow_s)
        if model == "fake-malformed":
            return await _send(send, 200, None, raw_body=b'{"id": "x", "choices": [')
        answer = _answer(body, chat)
        if model == "fake-nologprobs":
            for c in answer["choices"]:
                c["logprobs"] = None
        if model == "fake-drop":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"1000")]})
            await send({"type": "http.response.body", "body": b'{"id": "x", ', "more_body": True})
            raise ConnectionResetError("fake-drop: the upstream dies mid-answer")
        if body.get("stream"):
            return await self._stream(send, answer, chat, drip=model == "fake-drip")
        await _send(send, 200, answer, drip_s=self.drip_s if model == "fake-drip" else None)

    async def _stream(self, send: Any, answer: dict, chat: bool, *, drip: bool) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        choice = answer["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        pieces = [text, " because", " reasons."]
        for i, piece in enumerate(pieces):
            c: dict[str, Any] = {"index": 0, "finish_reason": None if i < len(pieces) - 1 else "length"}
            if chat:
                c["delta"] = {"content": piece} if i else {"role": "assistant", "content": piece}
            else:
                c["text"] = piece
            lp = choice.get("logprobs")
            if lp is not None and chat:
                c["logprobs"] = lp if i == 0 else {"content": [{"token": piece, "logprob": -0.1, "top_logprobs": []}]}
            elif lp is not None:
                c["logprobs"] = lp if i == 0 else {"tokens": [piece], "token_logprobs": [-0.1], "top_logprobs": [{}]}
            chunk = {"id": answer["id"], "object": "chat.completion.chunk" if chat else "text_completion",
                     "created": 0, "model": answer["model"], "choices": [c]}
            data = f"data: {json.dumps(chunk)}\n\n".encode()
            if drip:
                for j in range(0, len(data), 16):
                    await send({"type": "http.response.body", "body": data[j:j + 16], "more_body": True})
                    await asyncio.sleep(self.drip_s)
            else:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


async def _send(send: Any, status: int, obj: Any, *, raw_body: bytes | None = None,
                extra: list[tuple[bytes, bytes]] | None = None, drip_s: float | None = None) -> None:
    """A JSON answer; with ``drip_s``, its body 16 bytes at a time, ``drip_s`` seconds apart."""
    data = raw_body if raw_body is not None else json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if drip_s is None:
        await send({"type": "http.response.body", "body": data})
        return
    for j in range(0, len(data), 16):
        await send({"type": "http.response.body", "body": data[j:j + 16], "more_body": j + 16 < len(data)})
        await asyncio.sleep(drip_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """Run an ASGI app with uvicorn on 127.0.0.1 in a daemon thread (tests, benchmarks, demos)."""

    def __init__(self, app: Any, *, port: int | None = None, log_level: str = "critical", **kwargs: Any):
        import uvicorn

        self.port = port or free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level=log_level, access_log=False,
                                lifespan="on", **kwargs)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name=f"uvicorn-{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def logits_prompt(question: str, logits: Any) -> str:
    """A prompt the fake upstream answers with exactly ``log_softmax(logits)`` over the letters."""
    vals = ", ".join(repr(float(v)) if math.isfinite(v) else "-1e9" for v in np.asarray(logits, dtype=float))
    return f"{question}\nLOGITS=[{vals}]\nAnswer:"
