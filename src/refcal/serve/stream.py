"""Calibrated streams: the upstream's chunks pass through, then one ``refcal`` chunk, then ``[DONE]``."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import Response

from .calibrated import RefcalSpec
from .forward import (
    UpstreamFailure,
    _fail,
    _finish,
    _letters,
    _restore_logprobs,
    _transport_failure,
    _upstream_body,
    public,
)
from .upstream import TransportError


def calibrated_stream(proxy: Any, endpoint: str, headers: Any, body: dict, spec: RefcalSpec, request_id: str) -> Any:
    """A streamed calibrated request: the upstream's chunks pass through (log-probabilities restored to what
    the client asked), then one chunk ``{"choices": [], "refcal": {...}}``, then ``data: [DONE]``. An upstream
    that fails before streaming gives its status and body; one that breaks mid-stream ends the stream with
    ``data: {"error": ...}`` and no ``[DONE]`` (no confidence)."""
    from starlette.responses import StreamingResponse

    up_body, client_k = _upstream_body(proxy, endpoint, body, spec)
    hdrs = proxy.upstream_headers(headers)
    url = f"{proxy.base_url}/{endpoint}"
    return _StreamResponse(proxy, endpoint, hdrs, body, up_body, client_k, spec, request_id, url, StreamingResponse)


class _StreamResponse(Response):
    """Sends the upstream's status and body if it fails before streaming, else streams (an ASGI response
    whose status is known only once the upstream answers)."""

    def __init__(self, proxy, endpoint, hdrs, body, up_body, client_k, spec, request_id, url, response_cls):
        self.background = None
        self.status_code = 200
        self.s = self  # the fields below, read as s.<name> in the methods
        self.proxy, self.endpoint, self.hdrs, self.body, self.up_body = proxy, endpoint, hdrs, body, up_body
        self.client_k, self.spec, self.request_id, self.url, self.response_cls = client_k, spec, request_id, url, response_cls

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        s = self.s
        t_up = time.perf_counter()
        try:
            resp = await s.proxy.client.open("POST", s.url, json=s.up_body, headers=s.hdrs)
            if resp.status != 200:
                content = await resp.read()
        except TransportError as exc:
            failure = _transport_failure(exc, s.url, s.proxy.config.timeout)
            s.proxy.metrics.errors.labels(failure.kind).inc()
            await failure.response(scope, receive, send)
            return
        if resp.status != 200:
            s.proxy.metrics.errors.labels("upstream_status").inc()
            ctype = resp.headers.get("content-type")
            await Response(content, status_code=resp.status, media_type=ctype)(scope, receive, send)
            return
        stream = s.response_cls(self._events(resp, t_up), media_type="text/event-stream")
        await stream(scope, receive, send)

    async def _events(self, resp: Any, t_up: float) -> AsyncIterator[bytes]:
        s = self.s
        first: dict | None = None
        saw_token = False
        text: list[str] = []
        done = False
        upstream_time = 0.0
        try:
            async for line in resp.lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                try:
                    chunk = json.loads(data)
                except ValueError:
                    raise _fail(502, "malformed JSON in the upstream's stream", "upstream_malformed") from None
                for choice in chunk.get("choices") or [] if isinstance(chunk, dict) else []:
                    if not isinstance(choice, dict):
                        continue
                    lp = choice.get("logprobs")
                    if first is None and isinstance(lp, dict) and (lp.get("content") or lp.get("top_logprobs")):
                        first = {"choices": [{"logprobs": lp}]}
                    delta = choice.get("delta") or {}
                    piece = delta.get("content") if isinstance(delta, dict) else None
                    piece = piece if isinstance(piece, str) else choice.get("text")
                    if isinstance(piece, str) and piece:
                        saw_token = True
                        text.append(piece)
                    _restore_logprobs(choice, s.client_k)
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
            upstream_time = time.perf_counter() - t_up
            s.proxy.metrics.upstream_latency.observe(upstream_time)
            if not done:
                raise _fail(502, "the upstream's stream ended without [DONE]", "upstream_unreachable")
            if first is None and saw_token:
                raise _fail(502, f"the upstream {public(s.url)} streamed without token log-probabilities",
                            "upstream_no_logprobs")
            answer = first or {"choices": [{"logprobs": {"content": []}}]}
            scores = _letters(s.proxy, answer, s.spec, s.url) if s.spec.task == "multiple_choice" else None
            field = await _finish(s.proxy, s.endpoint, s.hdrs, s.body, s.spec, s.request_id, scores,  # type: ignore[arg-type]
                                  "".join(text))
        except UpstreamFailure as failure:
            s.proxy.metrics.errors.labels(failure.kind).inc()
            msg = json.loads(failure.response.body)
            yield f"data: {json.dumps(msg)}\n\n".encode()
            return
        except TransportError:  # mid-stream: the upstream dropped the connection or stalled
            s.proxy.metrics.errors.labels("upstream_unreachable").inc()
            from .config import error_body

            yield f"data: {json.dumps(error_body('the upstream dropped the stream', 'upstream_unreachable'))}\n\n".encode()
            return
        finally:
            resp.release()
        final = {"id": s.request_id, "object": "chat.completion.chunk" if s.endpoint != "completions"
                 else "text_completion", "created": int(time.time()), "model": s.body.get("model"), "choices": [],
                 "refcal": field}
        yield f"data: {json.dumps(final, separators=(',', ':'))}\n\n".encode()
        yield b"data: [DONE]\n\n"
