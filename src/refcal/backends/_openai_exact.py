"""Exact option-letter scores from a vLLM server (``letters="exact"`` / ``"auto"``) for
:class:`~refcal.backends.openai.OpenAIBackend` (a mixin: the same class, kept in its own file).

The log-probabilities of a fixed token set (every single-token spelling of each letter, :data:`LETTER_FORMS`)
are asked with vLLM's ``logprob_token_ids``; the spellings' token ids come from its ``/tokenize``. A server
that cannot do this raises :class:`~refcal.backends.api_logprobs.NoExact`, and ``auto`` falls back to the
top-k rule.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..errors import BackendError
from .api_http import RefusedError, post_json
from .api_logprobs import LetterScores, NoExact, exact_letter_scores, letter_id_groups, token_id_logprobs
from .base import LetterRequest
from .openai_options import LETTER_FORMS, MAX_TOKEN_IDS, is_int

log = logging.getLogger("refcal.backends.openai")  # the backend's own logger


class ExactLettersMixin:
    """``_exact_letters`` and the requests it needs."""

    def _exact_letters(self, client: Any, req: LetterRequest, index: int, stop: threading.Event) -> LetterScores | None:
        """Exact letter scores, or None where the server cannot give them (auto mode: asked once)."""
        if self.stats.letter_source == "unresolved":
            with self._probe_lock:  # other threads wait for the answer of the first request
                if self.stats.letter_source == "unresolved":
                    try:
                        scores = self._exact_one(client, req, index, stop)
                    except NoExact as exc:
                        if self.letters == "exact":
                            raise BackendError(
                                f"letters='exact' but the server at {self.api_base} cannot score a fixed token "
                                f"set ({exc}); use letters=auto or letters=topk (top-k with the floor)") from None
                        self.stats.letters_note = str(exc)
                        log.warning("the server at %s cannot score a fixed token set (%s): letters come from the "
                                    "top-%d log-probabilities with the floor", self.api_base, exc, self.top_logprobs)
                        self.stats.letter_source = "topk"
                        return None
                    self.stats.letter_source = "exact"
                    return scores
        if self.stats.letter_source == "topk":
            return None
        try:
            return self._exact_one(client, req, index, stop)
        except NoExact as exc:  # the server did it before: never mix in floored rows silently
            raise BackendError(f"the server at {self.api_base} scored a fixed token set before but not for this "
                               f"request ({exc}); re-run with letters=topk") from None

    def _exact_one(self, client: Any, req: LetterRequest, index: int, stop: threading.Event) -> LetterScores:
        """One request with ``logprob_token_ids``; :class:`NoExact` when the server refuses or ignores it."""
        groups = self._letter_ids(client, req.letters, index, stop)
        ids = sorted({i for g in groups for i in g})
        if len(ids) > MAX_TOKEN_IDS:
            raise NoExact(f"{len(ids)} token ids are more than vLLM takes ({MAX_TOKEN_IDS})")
        raw = self.mode == "completions" and not req.chat
        extra: dict[str, Any] = {"logprobs": 1} if raw else {"logprobs": True}
        try:
            body, _ = self._post(client, req.prefix + req.prompt, req.chat, index, stop, max_tokens=1,
                                 logprob_token_ids=ids, return_tokens_as_token_ids=True, **extra)
        except RefusedError as exc:
            raise NoExact(f"it refused logprob_token_ids with HTTP {exc.status}") from None
        return exact_letter_scores(token_id_logprobs(body), groups)

    def _letter_ids(self, client: Any, letters: Sequence[str], index: int, stop: threading.Event) -> list[list[int]]:
        """Token ids of each letter's single-token spellings (:data:`LETTER_FORMS`)."""
        return letter_id_groups(letters, lambda text: self._tokenize(client, text, index, stop), LETTER_FORMS)

    def _tokenize(self, client: Any, text: str, index: int, stop: threading.Event) -> list[int]:
        """Token ids of ``text`` (no special tokens) from vLLM's ``POST /tokenize``; cached."""
        with self._lock:
            if text in self._token_ids:
                return self._token_ids[text]
        headers = {"Authorization": self._auth.get()} if self._auth else {}  # the key wins over user info
        payload = {"model": self.model, "prompt": text, "add_special_tokens": False}
        # letters="auto" asks once, without retries: a failed probe means the top-k (the scoring request
        # that follows retries as usual and reports a dead server); letters="exact" retries as usual
        auto = self.letters == "auto"
        policy = replace(self.policy, max_retries=0) if auto else self.policy
        try:
            body = post_json(client, self._root_endpoint("tokenize"), payload, headers=headers, policy=policy,
                             secret=self._key, rng=random.Random(index), stop=stop, on_retry=self._count_retry)
        except RefusedError as exc:
            raise NoExact(f"it has no vLLM /tokenize endpoint (HTTP {exc.status})") from None
        except BackendError as exc:
            if not auto:
                raise
            raise NoExact(f"its /tokenize did not answer: {exc}") from None
        toks = body.get("tokens")
        if not isinstance(toks, list) or not all(is_int(t) and t >= 0 for t in toks):
            raise NoExact("its /tokenize answer has no list of token ids")
        if text and not toks:  # llama.cpp's llama-server reads "content", not "prompt": another /tokenize
            raise NoExact("its /tokenize is not vLLM's (no tokens for a non-empty prompt)")
        with self._lock:
            self._token_ids[text] = list(toks)
        return list(toks)
