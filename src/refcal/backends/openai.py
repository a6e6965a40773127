"""Letter scoring through any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp's server, ...).

One request per question: ``max_tokens=1``, ``temperature=0``, ``seed``, and the log-probabilities of
the first generated token, mapped to option letters in one of two ways (``letters`` option):

``exact``
    The server scores a fixed token set: vLLM's ``logprob_token_ids`` (a list of token ids, on
    ``/v1/completions`` with ``logprobs`` set and on ``/v1/chat/completions`` with ``logprobs: true``;
    the answer holds the sampled token plus every requested id, whatever its rank). The ids are the
    single-token spellings of each letter (``"A"``, ``" A"``, ``"\nA"``, ``"A\n"``, found with vLLM's
    ``POST /tokenize`` at the server root) and ``return_tokens_as_token_ids`` makes the answer name
    them as ``"token_id:<id>"``, so every letter's log-probability is exact (variants combined by
    ``logsumexp``) and nothing is floored.
``topk``
    The top-k (k <= 20) alternatives, which :mod:`.api_logprobs` maps to option letters (variants
    such as ``" A"`` are combined; absent letters get a documented floor, counted in
    :attr:`OpenAIBackend.stats`).

``letters="auto"`` (default) asks once, with the first letter request: a server that has no
``/tokenize`` (or does not answer it at the first attempt), refuses the parameter, or ignores it (its
answer lacks a requested id) is scored with ``topk`` from then on, and :attr:`APIStats.letter_source` (also ``meta["letter_source"]``) says
which was used. ``"exact"`` refuses such a server with a :class:`BackendError`; ``"topk"`` never asks.
Requests run on a bounded pool of daemon threads (Ctrl-C is never held up by a request stuck on its
socket: the pool is not joined, and :func:`refcal.cli.main` exits at once); each one is retried with
exponential back-off and full jitter on 429 / 5xx / timeouts / connection errors, honouring
``Retry-After`` (:mod:`.api_http`). The first request that fails for good stops the others from
retrying; results that finished are still yielded by :meth:`OpenAIBackend.score_letters_iter`
(so :mod:`refcal.scoring` saves them) before the one-line :class:`BackendError` is raised.

The API key is read from the environment variable ``api_key_env`` and is never part of the
fingerprint, ``repr``, logs or error messages. Credentials in ``api_base`` (``user:pass@``, a
``?api_key=`` parameter) are used for requests but shown and stored only in the public form
(:func:`refcal._urls.public_url`). When both a key and ``user:pass@`` are given, the key wins: it is sent
as ``Authorization: Bearer`` and the user info is not sent; without a key the user info is sent as
HTTP Basic (:func:`refcal._urls.request_auth`).
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from .._urls import request_auth
from ..errors import BackendError, InputError, MissingDependencyError
from ..tasks.requests import cut_at_stop, request_text_length
from ._openai_exact import ExactLettersMixin
from ._pool import daemon_map
from .api_http import Aborted, RetryPolicy, Secret, post_json, public_url, scrub
from .api_logprobs import (
    NO_ECHO,
    R_RESOLUTION,
    LetterScores,
    first_token_alternatives,
    prompt_logprob,
    topk_letter_scores,
)
from .base import (
    ClozeRequest,
    ClozeResult,
    GenerateRequest,
    LetterRequest,
    NotSupportedError,
    collect,
)
from .openai_options import (
    DEFAULT_API_BASE,
    LETTER_FORMS,
    LETTER_MODES,
    MODES,
    APIStats,
    OpenAIOptions,
    is_int,
)

log = logging.getLogger(__name__)

__all__ = ["APIStats", "LETTER_FORMS", "LETTER_MODES", "MODES", "OpenAIBackend", "OpenAIOptions"]

#: top-k answers with the sampled token only (and no other kind) after which a server is refused as ignoring
#: ``top_logprobs`` (fewer when fewer requests are sent at once)
IGNORED_TOPK_AFTER = 5


class OpenAIBackend(ExactLettersMixin):
    """Score option letters with an OpenAI-compatible chat or completions endpoint.

    Parameters
    ----------
    model : str
        Model name sent in each request.
    options : OpenAIOptions or dict, optional
        The settings below, as one object; keyword arguments override them.
    api_base : str, optional
        Base URL up to and including ``/v1``; default ``$OPENAI_BASE_URL`` or the OpenAI API.
    api_key_env : str
        Environment variable holding the key (sent as ``Authorization: Bearer``); servers that need
        no key (a local llama.cpp server) work without it.
    mode : {"chat", "completions"}
        What the server offers. ``"chat"``: every request goes to ``/chat/completions`` with
        ``prefix + prompt`` as the user message (requests with ``chat=False`` too, since a chat-only
        API has no raw prompt; a warning says so). ``"completions"``: the server also has
        ``/completions``; requests with ``chat=False`` send the raw prompt there, ``chat=True`` ones
        still use ``/chat/completions`` (the server applies the model's chat template).
    top_logprobs : int
        k, 1..20 alternatives per generated token (more means fewer floored letters).
    concurrency : int
        Requests in flight at once.
    timeout : float
        Seconds per HTTP attempt (connect, read, write).
    max_retries : int
        Retries per request after the first attempt.
    floor_margin : float
        Absent letters get ``log(min(p_min, max(R, 1e-6))) - floor_margin`` (see :mod:`.api_logprobs`).
    seed : int or None
        Sent to servers that support it; None omits it.
    letters : {"auto", "exact", "topk"}
        How letter log-probabilities are obtained (see the module docstring): ``"exact"`` needs a
        server that scores a fixed token set (vLLM's ``logprob_token_ids``), ``"topk"`` uses the
        top-k with the floor, ``"auto"`` asks the server once and falls back to ``"topk"``.
    backoff_base, backoff_max, max_wait : float
        Back-off schedule (see :mod:`.api_http`).
    """

    #: each request is its own HTTP call: results do not depend on what else is in a batch
    batch_invariant = True

    def __init__(self, model: str, options: OpenAIOptions | Mapping[str, Any] | None = None, **kwargs: Any):
        if not model or not isinstance(model, str):
            raise InputError("the API model name is empty; pass it as openai:MODEL")
        opts = OpenAIOptions.build(options, **kwargs)  # not kept: api_base may hold credentials
        api_base, api_key_env, mode, top_logprobs = opts.api_base, opts.api_key_env, opts.mode, opts.top_logprobs
        seed, floor_margin = opts.seed, opts.floor_margin
        base = (api_base or os.environ.get("OPENAI_BASE_URL") or DEFAULT_API_BASE).rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise InputError(f"--api-base must be an http(s) URL such as http://127.0.0.1:8080/v1, got {public_url(base)!r}")
        self.model = model
        # Credentials may hide in the URL (user:password@, ?key=): requests use the URL without user info
        # (kept in a Secret) and the Authorization header of request_auth (the key wins over user:password);
        # everything shown (repr, fingerprint, meta, errors) uses the public form.
        self._key = Secret(os.environ.get(api_key_env))
        request_base, auth = request_auth(base, self._key.get())
        self._base, self._auth = Secret(request_base), Secret(auth)
        self.api_base = public_url(base)
        self.mode = mode
        self.top_logprobs = top_logprobs
        self.concurrency = opts.concurrency
        self.timeout = float(opts.timeout)
        self.floor_margin = float(floor_margin)
        self.seed = seed
        self.policy = RetryPolicy(opts.max_retries, opts.backoff_base, opts.backoff_max, opts.max_wait)
        if not self._key and base.startswith("https://api.openai.com"):
            raise BackendError(f"the OpenAI API needs a key; set the environment variable {api_key_env}")
        self.letters = opts.letters
        self.stats = APIStats(letter_source="topk" if self.letters == "topk" else "unresolved")
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()  # the first letter request asks the server once
        self._token_ids: dict[str, list[int]] = {}  # text -> token ids (the server's /tokenize)
        self._warned_raw = False
        self._topk_check_after = IGNORED_TOPK_AFTER
        self.fingerprint = (
            f"openai:{model}@{self.api_base.split('://', 1)[1]};mode={mode};top_logprobs={top_logprobs};"
            f"seed={seed};floor_margin={self.floor_margin:.6g};r_resolution={R_RESOLUTION:g};letters={self.letters}"
        )

    def __repr__(self) -> str:
        return (
            f"OpenAIBackend(model={self.model!r}, api_base={self.api_base!r}, mode={self.mode!r}, "
            f"top_logprobs={self.top_logprobs}, letters={self.letters!r}, concurrency={self.concurrency}, "
            f"key={'set' if self._key else 'unset'})"
        )

    @property
    def meta(self) -> dict[str, Any]:
        """Settings and :class:`APIStats` counters (requests sent by this process, not cache hits);
        :func:`refcal.scoring.score_questions` stores this in the ScoreSet's ``meta["backend"]``."""
        return {
            "kind": "openai", "model": self.model, "api_base": self.api_base, "mode": self.mode,
            "top_logprobs": self.top_logprobs, "seed": self.seed, "letters": self.letters,
            # letter_source (in the stats): "exact" (logprob_token_ids), "topk" (floor below) or "unresolved"
            "cloze_source": "echo",
            "floor_rule": f"log(min(p_min, max(1 - sum p, {R_RESOLUTION:g}))) - {self.floor_margin:.6g}",
            **self.stats.as_dict(),
        }

    # -- public API ---------------------------------------------------------------------------
    def request_length(self, request: Any) -> int:
        """Characters of the prompt (the server's tokenizer is not known here); sorts batches."""
        return request_text_length(request)

    def score_letters(self, requests: Sequence[LetterRequest]) -> list[np.ndarray]:
        """Letter log-probabilities, one float64 array of shape (k,) per request (floored where absent)."""
        return [s.logprobs for s in self.score_letters_detailed(requests)]

    def score_letters_detailed(self, requests: Sequence[LetterRequest]) -> list[LetterScores]:
        """Like :meth:`score_letters`, with which letters were floored and the floor of each request."""
        return collect(self.score_letters_iter_detailed(requests), len(requests))

    def score_letters_iter(self, requests: Sequence[LetterRequest]) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, logprobs of shape (k,))`` as requests finish, in completion order.

        If a request fails for good, the others stop retrying, those already answered are still
        yielded, and then the :class:`BackendError` is raised.
        """
        for i, scores in self.score_letters_iter_detailed(requests):
            yield i, scores.logprobs

    def score_letters_iter_detailed(self, requests: Sequence[LetterRequest]) -> Iterator[tuple[int, LetterScores]]:
        """Like :meth:`score_letters_iter`, with which letters were floored (kept in the score cache, so
        the floor counts of a resumed run cover every question)."""
        requests = list(requests)
        for r in requests:
            if not isinstance(r, LetterRequest) or len(set(r.letters)) < 2 or len(set(r.letters)) != len(r.letters):
                raise InputError("each request needs at least two distinct option letters")
        self._topk_check_after = min(IGNORED_TOPK_AFTER, len(requests))
        yield from self._iter(requests, self._score_one)

    def _check_topk_honoured(self) -> None:
        """Refuse a server that answers every top-k request with the sampled token only (it ignores
        ``top_logprobs``): k - 1 of k letters would get the floor on every question. Called under the lock."""
        st = self.stats
        n = st.n_requests - st.n_no_token
        if self.top_logprobs >= 2 and n >= self._topk_check_after and st.n_one_alternative == n > 0:
            raise BackendError(
                f"the server at {self.api_base} ignores top_logprobs={self.top_logprobs}: its first {n} answers "
                "held only the sampled token, so all but one option letter would be floored on every question; "
                "use a server that returns top_logprobs (vLLM, llama.cpp's server), --api-letters exact, or "
                "--scoring cloze")

    def score_cloze(self, requests: Sequence[ClozeRequest]) -> list[ClozeResult]:
        """Continuation log-likelihoods from the prompt's own log-probabilities (see :meth:`score_cloze_iter`)."""
        return collect(self.score_cloze_iter(requests), len(requests))

    def score_cloze_iter(self, requests: Sequence[ClozeRequest]) -> Iterator[tuple[int, ClozeResult]]:
        """Cloze scoring through ``/completions`` with ``echo=True, logprobs=1, max_tokens=1`` (as
        lm-evaluation-harness's ``local-completions``): one request per continuation, the prompt
        ``context + continuation`` (trailing spaces of the context moved to the continuation, as the
        local backend does); the continuation's tokens are those ending after the context (by the
        server's ``text_offset``; a token across the boundary counts for the option) and their
        ``token_logprobs`` are summed. Servers that do not return the prompt's log-probabilities
        (chat-only APIs, servers ignoring ``echo``) are refused at their first answer with a
        :class:`NotSupportedError`; so are chat-template cloze requests (the server would not apply it).
        """
        requests = list(requests)
        for r in requests:
            if not isinstance(r, ClozeRequest) or not r.continuations:
                raise InputError("each cloze request needs a context and at least one continuation")
            if r.chat:
                raise NotSupportedError("cloze scoring through an API sends raw prompts to /completions; "
                                        "the chat template cannot be applied there: score without it")
        yield from self._iter(requests, self._cloze_one)

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """Greedy (temperature 0) answer of each request, cut before its first stop string."""
        return collect(self.generate_iter(requests), len(requests))

    def generate_iter(self, requests: Sequence[GenerateRequest]) -> Iterator[tuple[int, str]]:
        """Like :meth:`score_letters_iter`, for generation."""
        requests = list(requests)
        for r in requests:
            if not isinstance(r, GenerateRequest) or not is_int(r.max_new_tokens) or r.max_new_tokens < 1:
                raise InputError("each generation request needs a positive max_new_tokens")
        yield from self._iter(requests, self._generate_one)

    # -- internals ----------------------------------------------------------------------------
    def _iter(self, requests: list[Any], worker: Callable[..., Any]) -> Iterator[tuple[int, Any]]:
        try:
            import httpx  # the optional `api` extra, imported on use
        except ImportError as exc:  # pragma: no cover - httpx is in the api extra
            raise MissingDependencyError("httpx", "api") from exc
        if not requests:
            return
        stop = threading.Event()
        client = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency),
        )
        try:
            # daemon workers, never joined: a request stuck on its socket cannot hold up Ctrl-C or exit
            yield from daemon_map(requests, lambda req, i: worker(client, req, i, stop), workers=self.concurrency,
                                  stop=stop, skip=(Aborted,))
        finally:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - a worker may still hold a connection; it is a daemon
                pass

    def _post(self, client: Any, text: str, chat: bool, index: int, abort: threading.Event,
              raw: bool | None = None, **extra: Any) -> tuple[dict, str]:
        """POST one prompt (raw to /completions, or as a user message to /chat/completions); (body, url).
        ``raw=True`` sends to /completions whatever the mode."""
        common: dict[str, Any] = {"model": self.model, "temperature": 0, "n": 1, "stream": False, **extra}
        if self.seed is not None:
            common["seed"] = self.seed
        raw = (self.mode == "completions" and not chat) if raw is None else raw
        if not raw and not chat and not self._warned_raw:
            self._warned_raw = True
            log.warning("mode='chat' has no raw prompts: chat=False requests are sent as chat messages")
        url = self._endpoint("completions" if raw else "chat/completions")
        payload = {**common, "prompt": text} if raw else {**common, "messages": [{"role": "user", "content": text}]}
        headers = {"Authorization": self._auth.get()} if self._auth else {}
        body = post_json(
            client, url, payload, headers=headers, policy=self.policy, secret=self._key,
            rng=random.Random((self.seed or 0) * 1_000_003 + index), stop=abort, on_retry=self._count_retry,
        )
        return body, url

    def _score_one(self, client: Any, req: LetterRequest, index: int, stop: threading.Event) -> LetterScores:
        scores = None if self.stats.letter_source == "topk" else self._exact_letters(client, req, index, stop)
        top: Any = ()
        if scores is None:
            scores, top = self._topk_letters(client, req, index, stop)
        with self._lock:
            self.stats.n_requests += 1
            self.stats.n_letters += len(req.letters)
            self.stats.n_floored_letters += scores.n_floored
            self.stats.n_requests_with_floor += scores.n_floored > 0
            self.stats.n_no_token += top is None
            self.stats.n_one_alternative += bool(top) and len(top) == 1
            if top:
                self._check_topk_honoured()
        return scores

    def _topk_letters(self, client: Any, req: LetterRequest, index: int,
                      stop: threading.Event) -> tuple[LetterScores, list[tuple[str, float]] | None]:
        raw = self.mode == "completions" and not req.chat
        logprobs: dict[str, Any] = {"logprobs": self.top_logprobs} if raw else {
            "logprobs": True, "top_logprobs": self.top_logprobs}
        body, url = self._post(client, req.prefix + req.prompt, req.chat, index, stop, max_tokens=1, **logprobs)
        top = self._top_pairs(body, url)
        scores = topk_letter_scores(top, req.letters, floor_margin=self.floor_margin)
        return scores, top

    def _cloze_one(self, client: Any, req: ClozeRequest, index: int, stop: threading.Event) -> ClozeResult:
        context = req.context.rstrip(" ")  # as the local backend: trailing spaces go with the option
        lps, nts = [], []
        for cont in req.continuations:
            prompt = req.context + cont
            try:
                body, url = self._post(client, prompt, False, index, stop, raw=True, max_tokens=1, logprobs=1,
                                       echo=True)
            except BackendError as exc:
                if "HTTP 404" in str(exc) or "HTTP 405" in str(exc):
                    raise NotSupportedError(NO_ECHO.format(url=self.api_base, why="it has no /completions "
                                                            "endpoint")) from None
                if "HTTP 4" in str(exc) and "echo" in str(exc).lower():  # llama.cpp's llama-server: 400
                    raise NotSupportedError(NO_ECHO.format(url=self.api_base, why="it refuses echo")) from None
                raise
            lp, nt = prompt_logprob(body, prompt, len(context), self.api_base)
            lps.append(lp)
            nts.append(nt)
        with self._lock:
            self.stats.n_requests += len(req.continuations)
        return ClozeResult(tuple(lps), tuple(nts), tuple(len(c) for c in req.continuations))

    def _generate_one(self, client: Any, req: GenerateRequest, index: int, stop: threading.Event) -> str:
        extra: dict[str, Any] = {"max_tokens": req.max_new_tokens}
        if req.stop:
            extra["stop"] = list(req.stop)
        body, url = self._post(client, req.prompt, req.chat, index, stop, **extra)
        try:
            choice = body["choices"][0]
            text = choice["message"]["content"] if "message" in choice else choice["text"]
        except (KeyError, IndexError, TypeError) as exc:
            raise BackendError(f"POST {public_url(url)} answered without generated text "
                               f"({scrub(repr(exc), self._key, 60)})") from None
        with self._lock:
            self.stats.n_requests += 1
        return cut_at_stop(str(text or ""), req.stop)  # servers may keep the stop string

    def _endpoint(self, name: str) -> str:
        parts = urlsplit(self._base.get())
        return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))

    def _root_endpoint(self, name: str) -> str:
        """``name`` at the server root (vLLM serves ``/tokenize`` beside ``/v1``, not under it)."""
        parts = urlsplit(self._base.get())
        path = parts.path.rstrip("/")
        path = path[:-3] if path.endswith("/v1") else path
        return urlunsplit(parts._replace(path=f"{path}/{name}"))

    def _count_retry(self) -> None:
        with self._lock:
            self.stats.n_retries += 1

    def _top_pairs(self, body: dict, url: str) -> list[tuple[str, float]] | None:
        """The (token, logprob) alternatives of the first generated token; None if none was generated."""
        try:
            return first_token_alternatives(body)
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise BackendError(
                f"POST {public_url(url)} answered without token log-probabilities ({scrub(repr(exc), self._key, 60)}); "
                "the server must support logprobs/top_logprobs for this model"
            ) from None
