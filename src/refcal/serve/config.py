"""Settings of ``refcal serve`` and the reference model sampler."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Settings of the proxy (``refcal serve`` options).

    upstream : base URL of the chat model's server, up to and including ``/v1``.
    calibrator : calibrator JSON (``refcal fit``).
    reference : model spec of the reference (base) model scored on a ``reference_rate`` sample of calibrated
        requests (a built-in alias, a folder, a .gguf, or ``openai:NAME`` with ``reference_api_base``).
    log_dir : monitoring log folder (None: no log).
    api_key_env : environment variable holding the key clients must send (``Authorization: Bearer``).
    upstream_key_env : environment variable holding the upstream's key (sent instead of the client's).
    log_text : also store prompt and answer text in the monitoring log.
    timeout : seconds to connect and between two reads of an upstream answer; an answer that is not
        streamed must also be complete within it (:class:`.upstream.UpstreamClient`).
    top_logprobs : k of the top-k asked of the upstream for calibrated requests (1..20).
    fsync : monitoring log fsync policy ("always", "interval", "never").
    letters : "auto", "exact" or "topk": how option letters are scored (:mod:`refcal.serve.letters`).
    """

    upstream: str
    calibrator: str
    reference: str | None = None
    reference_api_base: str | None = None
    reference_rate: float = 0.1
    log_dir: str | None = None
    api_key_env: str | None = None
    upstream_key_env: str = "REFCAL_UPSTREAM_API_KEY"
    log_text: bool = False
    allow_other_k: bool = False
    timeout: float = 60.0
    top_logprobs: int = 20
    floor_margin: float = math.log(2.0)
    fsync: str = "interval"
    letters: str = "auto"
    max_connections: int = 512
    seed: int = 0

    def __post_init__(self) -> None:
        parts = urlsplit(self.upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InputError(f"--upstream must be an http(s) URL such as http://127.0.0.1:8080/v1, got {self.upstream!r}")
        if not 0.0 <= self.reference_rate <= 1.0:
            raise InputError(f"--reference-rate must be in [0, 1], got {self.reference_rate}")
        if not (isinstance(self.top_logprobs, int) and 1 <= self.top_logprobs <= 20):
            raise InputError(f"--top-logprobs must be an integer in 1..20, got {self.top_logprobs!r}")
        if self.letters not in ("auto", "exact", "topk"):
            raise InputError(f"--letters must be auto, exact or topk, got {self.letters!r}")
        if not self.timeout > 0:
            raise InputError(f"--timeout must be positive, got {self.timeout}")
        if self.api_key_env is not None and not os.environ.get(self.api_key_env):
            raise InputError(f"--api-key-env {self.api_key_env}: that environment variable is empty or unset; set it "
                             "to the key clients must send")

    @property
    def client_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    @property
    def upstream_key(self) -> str | None:
        return os.environ.get(self.upstream_key_env) or None


class ReferenceSampler:
    """Scores a sample of calibrated requests with the reference model, off the event loop (one worker
    thread: local models are not thread-safe and the sample is small)."""

    def __init__(self, spec: str, *, api_base: str | None, rate: float, seed: int):
        from ..backends import load_backend

        self.backend = load_backend(spec, api_base=api_base)
        self.spec = spec
        self.rate = rate
        self._rng = random.Random(seed)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="refcal-reference")

    def sampled(self) -> bool:
        return self.rate >= 1.0 or (self.rate > 0 and self._rng.random() < self.rate)

    async def score(self, prompt: str, letters: tuple[str, ...]) -> np.ndarray:
        """Reference log-probabilities of ``letters`` after the raw ``prompt``, shape (k,)."""
        from ..backends.base import LetterRequest

        req = LetterRequest("", prompt, letters, False)
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(self._pool, self.backend.score_letters, [req])
        return np.asarray(rows[0], dtype=np.float64)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def finite_list(x: Any) -> list[float | None]:
    """JSON-safe list of floats (-inf, which JSON cannot hold, becomes null)."""
    return [float(v) if math.isfinite(v) else None for v in np.asarray(x, dtype=np.float64)]


#: request headers not forwarded (hop-by-hop, recomputed, or the client's key for this proxy)
DROP_REQUEST_HEADERS = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
                        "accept-encoding", "authorization", "proxy-authorization"}
#: response headers passed back (no content-encoding: the proxy asks for identity bodies, and its client decodes
#: any encoding an upstream sends anyway)
KEEP_RESPONSE_HEADERS = ("content-type", "retry-after", "x-request-id")
#: idle seconds before the proxy drops a connection to the upstream (below the usual 5 s server keep-alive)
UPSTREAM_KEEPALIVE_S = 4.0
#: idle seconds the proxy keeps a client's connection open (above the usual 60 s of load balancers, so the
#: proxy never closes a connection a balancer is about to reuse)
CLIENT_KEEPALIVE_S = 75


def error_body(message: str, kind: str) -> dict[str, Any]:
    """OpenAI-style error object with a one-line message."""
    return {"error": {"message": " ".join(message.split()), "type": kind, "code": None}}
