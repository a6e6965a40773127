"""Forwarding to the upstream: pass-through, calibrated answers, calibrated streams (see :mod:`.app`)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from starlette.responses import Response

from ..backends.api_http import public_url
from ..backends.api_logprobs import LetterScores, first_token_alternatives, topk_letter_scores
from ..errors import BackendError
from .calibrated import RefcalSpec, prompt_text, result
from .config import finite_list
from .upstream import TransportError

log = logging.getLogger(__name__)


class UpstreamFailure(Exception):
    """The upstream did not give a usable answer: ``response`` goes to the client as it is."""

    def __init__(self, response: Any, kind: str):
        super().__init__(kind)
        self.response = response
        self.kind = kind


def public(url: str) -> str:
    return public_url(url)


def _fail(status: int, message: str, kind: str) -> UpstreamFailure:
    from starlette.responses import JSONResponse

    from .config import error_body

    return UpstreamFailure(JSONResponse(error_body(message, kind), status_code=status), kind)


def _transport_failure(exc: TransportError, url: str, timeout: float) -> UpstreamFailure:
    if exc.timeout:
        return _fail(504, f"the upstream {public(url)} did not answer within {timeout:g} s", "upstream_timeout")
    return _fail(502, f"the upstream {public(url)} could not be reached or dropped the connection "
                 f"({exc.name})", "upstream_unreachable")


async def passthrough(proxy: Any, method: str, endpoint: str, headers: Any, raw: bytes | None, t0: float, *,
                      streamed: bool = True) -> Any:
    """Forward a request unchanged and give the upstream's answer back unchanged (status, body).

    ``streamed``: the answer is passed on as it arrives (a connection dropped mid-body ends the client's response
    early; its length or chunking then shows it). Otherwise (a request that did not ask for a stream) it is read
    whole within ``--timeout`` first, so a slow drip or a drop gets a clean 504 / 502 instead."""
    from starlette.background import BackgroundTask
    from starlette.responses import StreamingResponse

    url = f"{proxy.base_url}/{endpoint}"
    t_up = time.perf_counter()
    try:
        resp = await proxy.client.open(method, url, data=raw, headers=proxy.upstream_headers(headers),
                                       total=not streamed)
        content = None if streamed else await resp.read()
    except TransportError as exc:
        failure = _transport_failure(exc, url, proxy.config.timeout)
        proxy.metrics.errors.labels(failure.kind).inc()
        return failure.response
    if resp.status >= 400:
        proxy.metrics.errors.labels("upstream_status").inc()
    proxy.metrics.overhead.observe(max(0.0, (t_up - t0)))
    if content is not None:
        proxy.metrics.upstream_latency.observe(time.perf_counter() - t_up)
        return Response(content, status_code=resp.status, headers=kept_headers(resp.headers))

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.chunks():
                yield chunk
        except TransportError:
            proxy.metrics.errors.labels("upstream_unreachable").inc()
            raise
        proxy.metrics.upstream_latency.observe(time.perf_counter() - t_up)

    return StreamingResponse(body(), status_code=resp.status, headers=kept_headers(resp.headers),
                             background=BackgroundTask(resp.release))


def kept_headers(headers: Any) -> dict[str, str]:
    """The upstream's response headers a client gets (:data:`.config.KEEP_RESPONSE_HEADERS`)."""
    from .config import KEEP_RESPONSE_HEADERS

    return {k: v for k, v in headers.items() if k.lower() in KEEP_RESPONSE_HEADERS}


def _upstream_body(proxy: Any, endpoint: str, body: dict, spec: RefcalSpec) -> tuple[dict, int | None]:
    """The request sent upstream: ``body`` (``refcal`` removed) asking for the first token's top-k; and the
    client's own top-k (None: the client did not ask for log-probabilities)."""
    out = dict(body)
    k = proxy.config.top_logprobs
    if endpoint == "completions":
        asked = out.get("logprobs")
        client_k = asked if isinstance(asked, int) and not isinstance(asked, bool) and asked > 0 else None
        out["logprobs"] = max(k, client_k or 0)
    else:
        client_k = None
        if out.get("logprobs"):
            tl = out.get("top_logprobs")
            client_k = tl if isinstance(tl, int) and not isinstance(tl, bool) else 0
        out["logprobs"] = True
        out["top_logprobs"] = max(k, client_k or 0)
    return out, client_k


def _restore_logprobs(choice: dict, client_k: int | None) -> None:
    """Give the client the log-probabilities it asked for (none, or its own top-k), not the proxy's."""
    if client_k is None:
        choice.pop("logprobs", None)
        return
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return
    for tok in lp.get("content") or []:
        if isinstance(tok, dict) and isinstance(tok.get("top_logprobs"), list):
            tok["top_logprobs"] = tok["top_logprobs"][:client_k]
    if isinstance(lp.get("top_logprobs"), list):
        lp["top_logprobs"] = [dict(list(d.items())[:client_k]) if isinstance(d, dict) else d for d in lp["top_logprobs"]]


def _letters(proxy: Any, answer: dict, spec: RefcalSpec, url: str) -> LetterScores:
    try:
        top = first_token_alternatives(answer)
        return topk_letter_scores(top, spec.letters, floor_margin=proxy.config.floor_margin)
    except (KeyError, IndexError, TypeError, AttributeError):
        raise _fail(502, f"the upstream {public(url)} answered without token log-probabilities; it must support "
                    "logprobs/top_logprobs for calibrated requests", "upstream_no_logprobs") from None
    except BackendError as exc:
        raise _fail(502, f"the upstream {public(url)}: {exc}", "upstream_no_logprobs") from None


def _answer_text(answer: dict) -> str:
    try:
        choice = answer["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice.get("text")
    except (KeyError, IndexError, TypeError):
        return ""
    return text if isinstance(text, str) else ""


async def _post_json(proxy: Any, url: str, payload: dict, headers: dict) -> dict:
    """POST and parse a JSON object; :class:`UpstreamFailure` carries what the client gets otherwise."""
    t = time.perf_counter()
    try:
        status, resp_headers, content = await proxy.client.fetch("POST", url, json=payload, headers=headers)
    except TransportError as exc:
        raise _transport_failure(exc, url, proxy.config.timeout) from None
    finally:
        proxy.metrics.upstream_latency.observe(time.perf_counter() - t)
    if status != 200:
        raise UpstreamFailure(Response(content, status_code=status, headers=kept_headers(resp_headers)), "upstream_status")
    try:
        out = json.loads(content)
    except ValueError:
        raise _fail(502, f"the upstream {public(url)} answered HTTP 200 with malformed JSON", "upstream_malformed") from None
    if not isinstance(out, dict):
        raise _fail(502, f"the upstream {public(url)} answered HTTP 200 with JSON that is not an object",
                    "upstream_malformed")
    return out


async def _p_true(proxy: Any, endpoint: str, headers: dict, model: Any, spec: RefcalSpec, answer: str) -> LetterScores:
    """The chat model's P(True) letters of its own answer (one more upstream request)."""
    from ..tasks.prompts_freeform import p_true_prompt

    chat = endpoint != "completions"
    text = p_true_prompt(spec.question or "", answer, chat=chat)
    k = proxy.config.top_logprobs
    payload: dict[str, Any] = {"model": model, "max_tokens": 1, "temperature": 0, "n": 1, "stream": False}
    if chat:
        payload |= {"messages": [{"role": "user", "content": text}], "logprobs": True, "top_logprobs": k}
    else:
        payload |= {"prompt": text, "logprobs": k}
    url = f"{proxy.base_url}/{endpoint}"
    judged = await _post_json(proxy, url, payload, headers)
    return _letters(proxy, judged, spec, url)


async def _finish(proxy: Any, endpoint: str, headers: dict, body: dict, spec: RefcalSpec, request_id: str,
                  scores: LetterScores, answer_text: str, source: str = "topk") -> dict:
    """Calibrate, sample the reference, write the monitoring record; the ``refcal`` field."""
    if spec.task == "free_form":
        scores = await _p_true(proxy, endpoint, headers, body.get("model"), spec, answer_text)
    ref = proxy.reference
    ref_prompt = None
    if ref is not None and ref.sampled():
        if spec.task == "free_form":
            from ..tasks.prompts_freeform import p_true_prompt

            ref_prompt = p_true_prompt(spec.question or "", answer_text, chat=False)
        else:
            ref_prompt = prompt_text(body)
    base = None
    if ref_prompt is not None and proxy.cal.needs_base:  # the calibrator reads the reference: wait for it
        base = await _reference(proxy, ref_prompt, spec, request_id)
        if base is None:
            raise _fail(502, f"the reference model could not score this request; {proxy.cal.method} needs it",
                        "reference_failed")
    out = result(spec, proxy.cal, scores.logprobs, scores.floored, source, request_id, base)
    proxy.metrics.calibrated.labels(spec.task).inc()
    proxy.metrics.observe_confidence(out["confidence"])
    rec: dict[str, Any] = {"t": time.time(), "id": request_id, "task": spec.task, "model": body.get("model"),
                           "chat": finite_list(scores.logprobs), "confidence": out["confidence"],
                           "answer": out["answer"], "floored": sum(scores.floored)}
    if proxy.config.log_text:
        rec["prompt"] = prompt_text(body)
        rec["text"] = answer_text
    if ref_prompt is not None and base is None:  # a monitoring sample: score it after answering
        if len(proxy.pending) >= MAX_PENDING_REFERENCE:
            proxy.metrics.reference.labels("skipped").inc()  # the reference cannot keep up: log without it
        else:
            task = asyncio.get_running_loop().create_task(_record_with_reference(proxy, rec, ref_prompt, spec, scores))
            proxy.pending.add(task)
            task.add_done_callback(proxy.pending.discard)
            return out
    _record(proxy, rec, base, scores)
    return out


#: reference samples scored in the background at once; beyond, a sampled request is logged without one
MAX_PENDING_REFERENCE = 256


async def _reference(proxy: Any, prompt: str, spec: RefcalSpec, request_id: str) -> np.ndarray | None:
    try:
        base = await proxy.reference.score(prompt, spec.letters)
    except Exception as exc:  # noqa: BLE001 - a failed reference sample must not fail the answer
        proxy.metrics.reference.labels("failed").inc()
        log.warning("the reference model failed on request %s: %s", request_id, type(exc).__name__)
        return None
    proxy.metrics.reference.labels("ok").inc()
    return base


async def _record_with_reference(proxy: Any, rec: dict, prompt: str, spec: RefcalSpec, scores: LetterScores) -> None:
    base = await _reference(proxy, prompt, spec, rec["id"])
    _record(proxy, rec, base, scores)


def _record(proxy: Any, rec: dict, base: np.ndarray | None, scores: LetterScores) -> None:
    if base is not None:
        proxy.metrics.observe_agreement(int(np.argmax(base)) == int(np.argmax(scores.logprobs)))
        rec["base"] = finite_list(base)
    proxy.record(rec)


async def calibrated(proxy: Any, endpoint: str, headers: Any, body: dict, spec: RefcalSpec, request_id: str,
                     t0: float) -> Any:
    """A non-streamed calibrated request: the upstream's answer plus the ``refcal`` field."""
    from starlette.responses import JSONResponse

    up_body, client_k = _upstream_body(proxy, endpoint, body, spec)
    hdrs = proxy.upstream_headers(headers)
    url = f"{proxy.base_url}/{endpoint}"
    t_up = time.perf_counter()
    upstream_time = 0.0
    mc = spec.task == "multiple_choice"
    model = str(body.get("model"))
    try:
        answer, scores, source = None, None, "topk"
        if mc and proxy.letters.wanted(model, client_k, False):
            answer, scores = await _exact(proxy, up_body, hdrs, spec, url, model)
            source = "exact" if answer is not None else "topk"
        if answer is None:
            answer = await _post_json(proxy, url, up_body, hdrs)
            scores = _letters(proxy, answer, spec, url) if mc else None
        upstream_time = time.perf_counter() - t_up
        text = _answer_text(answer)
        t_fin = time.perf_counter()
        field = await _finish(proxy, endpoint, hdrs, body, spec, request_id, scores, text, source)  # type: ignore[arg-type]
        if spec.task == "free_form":  # the P(True) request is upstream time too
            upstream_time += time.perf_counter() - t_fin
    except UpstreamFailure as failure:
        proxy.metrics.errors.labels(failure.kind).inc()
        return failure.response
    for choice in answer.get("choices") or []:
        if isinstance(choice, dict):
            _restore_logprobs(choice, client_k)
    answer["refcal"] = field
    response = JSONResponse(answer)
    proxy.metrics.overhead.observe(max(0.0, time.perf_counter() - t0 - upstream_time))
    return response


async def _exact(proxy: Any, up_body: dict, hdrs: dict, spec: RefcalSpec, url: str,
                 model: str) -> tuple[dict | None, LetterScores | None]:
    """Exact letters (:mod:`.letters`): ``(answer, scores)``, or ``(None, None)`` when ``auto`` gives up on
    this model (the caller asks again with the top-k). ``exact`` mode refuses with 502 instead."""
    from ..backends.api_logprobs import NoExact

    ex = proxy.letters

    def give_up(reason: str) -> tuple[None, None]:
        if ex.mode == "exact":
            raise _fail(502, f"--letters exact but the upstream cannot score a fixed token set ({reason}); use "
                        "--letters auto or topk", "upstream_no_exact_letters")
        ex.give_up(model, reason)
        return None, None

    try:
        groups = await ex.groups(proxy.client, hdrs, model, spec.letters)
    except NoExact as exc:
        return give_up(str(exc))
    try:
        answer = await _post_json(proxy, url, {**up_body, **ex.request_fields(groups)}, hdrs)
    except UpstreamFailure as failure:
        status = getattr(failure.response, "status_code", 0)
        if failure.kind == "upstream_status" and 400 <= status < 500 and ex.exact.get(model) is None:
            return give_up(f"it refused logprob_token_ids with HTTP {status}")
        raise
    try:
        scores = ex.scores(answer, groups)
    except NoExact as exc:
        if ex.exact.get(model):  # it did before: never mix floored rows in silently
            raise _fail(502, f"the upstream scored a fixed token set before but not for this request ({exc})",
                        "upstream_no_exact_letters") from None
        return give_up(str(exc))
    ex.exact[model] = True
    return answer, scores
