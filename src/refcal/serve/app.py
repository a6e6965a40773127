"""``refcal serve``: an OpenAI-compatible proxy (Starlette + uvicorn) that adds calibrated confidence to the answers it forwards.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (forwarded), ``GET /v1/models``
(forwarded), ``GET /health``, ``GET /metrics`` (Prometheus text).

* A request without a ``refcal`` field is forwarded unchanged and its answer comes back unchanged (status,
  body, streamed or not).
* With ``"refcal": {...}`` (see :mod:`.calibrated`) the field is removed, the first token's top-k
  log-probabilities are asked of the upstream (and removed from the answer again unless the client asked
  for them), and the answer gains a ``refcal`` field: ``{task, probabilities, answer, confidence,
  letter_source, floored, calibrator: {method, params, sha256}, request_id}``. With ``stream: true`` the
  chunks pass through and the ``refcal`` field comes in one last chunk (``"choices": []``) just before
  ``data: [DONE]``. Free-form: after the answer the proxy asks the chat model P(True) of it (one more
  upstream request, ``max_tokens=1``) and applies the free-form calibrator.
* A ``refcal`` field that does not fit the calibrator: HTTP 422, one line in ``error.message``. An upstream
  error: the upstream's status and body, unchanged, and no confidence. A timeout: 504, an unreachable
  upstream or a broken answer (malformed JSON, no log-probabilities): 502, each with one line.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Any

from ..errors import MissingDependencyError

try:  # the serve extra; refcal.serve imports this module only when a proxy is built
    import aiohttp  # noqa: F401
    import prometheus_client  # noqa: F401
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ImportError as _exc:  # pragma: no cover - depends on the installation
    raise MissingDependencyError(_exc.name or "starlette", "serve") from None
from .calibrated import RequestMismatch, ServedCalibrator, parse_spec
from .config import (
    CLIENT_KEEPALIVE_S,
    DROP_REQUEST_HEADERS,
    UPSTREAM_KEEPALIVE_S,
    ReferenceSampler,
    ServeConfig,
    error_body,
)
from .metrics import ProxyMetrics

log = logging.getLogger(__name__)

class Proxy:
    """State shared by the routes: settings, calibrator, HTTP client, log, metrics, reference sampler."""

    def __init__(self, config: ServeConfig, *, calibrator: ServedCalibrator | None = None,
                 reference: ReferenceSampler | None = None, writer: Any = None):
        self.config = config
        self.cal = calibrator or ServedCalibrator(config.calibrator, allow_other_k=config.allow_other_k)
        if self.cal.needs_base and config.reference is None and reference is None:
            from ..errors import InputError

            raise InputError(f"{config.calibrator} is {self.cal.method}: it needs the reference model's logits of "
                             "every request; pass --reference MODEL")
        self.reference = reference
        if self.reference is None and config.reference is not None:
            rate = 1.0 if self.cal.needs_base else config.reference_rate
            self.reference = ReferenceSampler(config.reference, api_base=config.reference_api_base, rate=rate,
                                              seed=config.seed)
        self.writer = writer
        if self.writer is None and config.log_dir is not None:
            from .log import LogWriter

            self.writer = LogWriter(config.log_dir, fsync=config.fsync)
        self.metrics = ProxyMetrics()
        self.pending: set[Any] = set()  # reference samples being scored after their answer went out
        self.client: Any = None
        self.base_url = config.upstream.rstrip("/")
        from .letters import ExactLetters

        self.letters = ExactLetters(config.letters, self.base_url)

    async def start(self) -> None:
        from .upstream import UpstreamClient

        # idle upstream connections are closed before the upstream's own keep-alive timeout (uvicorn's
        # default, used by vLLM: 5 s) can close them under a request that is being sent
        self.client = UpstreamClient(timeout=self.config.timeout, max_connections=self.config.max_connections,
                                     keepalive_s=UPSTREAM_KEEPALIVE_S)
        await self.client.start()

    async def stop(self) -> None:
        if self.pending:  # their records are owed to the log
            import asyncio

            await asyncio.gather(*list(self.pending), return_exceptions=True)
        if self.client is not None:
            await self.client.close()
        if self.reference is not None:
            self.reference.close()
        if self.writer is not None:
            self.writer.close()

    def upstream_headers(self, headers: Any) -> dict[str, str]:
        out = {k: v for k, v in headers.items() if k.lower() not in DROP_REQUEST_HEADERS}
        key = self.config.upstream_key
        if key:
            out["authorization"] = f"Bearer {key}"
        elif self.config.api_key_env is None and "authorization" in headers:
            out["authorization"] = headers["authorization"]  # no proxy auth: the client's key is the upstream's
        return out

    def authorized(self, headers: Any) -> bool:
        key = self.config.client_key
        if not key:
            return True
        got = headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {key}".encode())

    def record(self, rec: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.write(rec)


def create_app(config: ServeConfig, **kwargs: Any) -> Any:
    """The ASGI app (Starlette) of :class:`ServeConfig` (``kwargs`` go to :class:`Proxy`: tests inject a calibrator,
    a reference sampler or a log writer). Raises a :class:`refcal.errors.RefcalError` (one line) when the
    calibrator cannot be served, before anything listens."""
    from . import forward

    proxy = Proxy(config, **kwargs)

    @asynccontextmanager
    async def lifespan(app: Any):
        await proxy.start()
        try:
            yield
        finally:
            await proxy.stop()

    async def health(request: Request) -> Any:
        cal = proxy.cal
        return JSONResponse({"status": "ok", "calibrator": {**cal.describe(), "task": cal.task, "n_options": cal.n_options},
                "upstream": forward.public(proxy.base_url), "log": proxy.config.log_dir is not None,
                "letters": proxy.config.letters,
                "letter_source": {m: "exact" if ok else "topk" for m, ok in proxy.letters.exact.items()},
                "reference": proxy.config.reference})

    async def metrics(request: Request) -> Any:
        data, ctype = proxy.metrics.render()
        return Response(content=data, media_type=ctype)

    async def models(request: Request) -> Any:
        if not proxy.authorized(request.headers):
            return JSONResponse(error_body("missing or wrong API key", "authentication_error"), status_code=401)
        proxy.metrics.requests.labels("models", "false").inc()
        return await forward.passthrough(proxy, "GET", "models", request.headers, None, time.perf_counter(),
                                         streamed=False)

    async def completion(request: Request, endpoint: str) -> Any:
        t0 = time.perf_counter()
        if not proxy.authorized(request.headers):
            proxy.metrics.errors.labels("auth").inc()
            return JSONResponse(error_body("missing or wrong API key", "authentication_error"), status_code=401)
        raw = await request.body()
        body = _json_object(raw)
        if body is None or "refcal" not in body:
            proxy.metrics.requests.labels(endpoint, "false").inc()
            # a body that is not a JSON object is the upstream's to judge: passed on as it arrives
            streamed = body is None or bool(body.get("stream"))
            return await forward.passthrough(proxy, "POST", endpoint, request.headers, raw, t0, streamed=streamed)
        proxy.metrics.requests.labels(endpoint, "true").inc()
        try:
            spec = parse_spec(body.pop("refcal"), body.get("messages"))
            proxy.cal.check(spec)
            if body.get("n", 1) != 1:
                raise RequestMismatch('"refcal" needs n=1 (one answer per request)')
        except RequestMismatch as exc:
            proxy.metrics.errors.labels("mismatch").inc()
            return JSONResponse(error_body(str(exc), "invalid_request_error"), status_code=422)
        request_id = f"rc-{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            from .stream import calibrated_stream

            return calibrated_stream(proxy, endpoint, request.headers, body, spec, request_id)
        return await forward.calibrated(proxy, endpoint, request.headers, body, spec, request_id, t0)

    async def chat_completions(request: Request) -> Any:
        return await completion(request, "chat/completions")

    async def completions(request: Request) -> Any:
        return await completion(request, "completions")

    # Starlette, not FastAPI: no route here takes a typed body, and FastAPI's layers cost ~60 us per request
    routes = [Route("/health", health, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/completions", completions, methods=["POST"])]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.proxy = proxy
    return app


def _json_object(raw: bytes) -> dict | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def serve(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, workers_log_level: str = "warning") -> None:
    """Build the app (refusing a bad calibrator with one line) and run it with uvicorn until interrupted."""
    app = create_app(config)
    import uvicorn

    from .forward import public

    log.warning("refcal serve: %s calibrator on http://%s:%d -> %s", app.state.proxy.cal.method, host, port,
                public(config.upstream))
    uvicorn.run(app, host=host, port=port, log_level=workers_log_level, access_log=False,
                timeout_keep_alive=CLIENT_KEEPALIVE_S)
