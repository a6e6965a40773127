"""Exact option letters at serving time, as the ``openai:`` backend's ``letters`` option does.

``letters="exact"``: the upstream scores a fixed token set (vLLM's ``logprob_token_ids``): the proxy asks
its ``POST /tokenize`` (at the server root) once per model and letter set for the single-token spellings
of each letter (:data:`refcal.backends.openai_options.LETTER_FORMS`), adds ``logprob_token_ids`` and
``return_tokens_as_token_ids`` to the request, and reads every letter's exact log-probability
(:func:`~refcal.backends.api_logprobs.exact_letter_scores`); nothing is floored. ``"topk"``: the top-k
with the floor. ``"auto"`` (default): exact where the upstream can, decided per model at its first
calibrated request (a server without ``/tokenize``, one that refuses the field or ignores it is scored
with the top-k from then on, and a warning says why).

Exact letters are used for non-streamed requests whose client did not ask for log-probabilities itself
(``return_tokens_as_token_ids`` renames the tokens of the log-probabilities it would see); the others use
the top-k. The ``letter_source`` of each answer says which was used.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..backends.api_logprobs import (
    LetterScores,
    NoExact,
    exact_letter_scores,
    letter_id_groups,
    token_id_logprobs,
)
from ..backends.openai_options import LETTER_FORMS, MAX_TOKEN_IDS

log = logging.getLogger(__name__)

LETTER_MODES = ("auto", "exact", "topk")



class ExactLetters:
    """Per-proxy state: which models score exact letters, and each letter set's token ids."""

    def __init__(self, mode: str, base_url: str):
        self.mode = mode
        parts = urlsplit(base_url)
        path = parts.path.rstrip("/")
        self.tokenize_url = urlunsplit(parts._replace(path=f"{path[:-3] if path.endswith('/v1') else path}/tokenize"))
        self.exact: dict[str, bool] = {}  # model -> True (exact works) / False (top-k from now on)
        self.notes: dict[str, str] = {}
        self._groups: dict[tuple[str, tuple[str, ...]], list[list[int]]] = {}
        self._lock = asyncio.Lock()

    def wanted(self, model: str, client_k: int | None, stream: bool) -> bool:
        return self.mode != "topk" and client_k is None and not stream and self.exact.get(model) is not False

    def give_up(self, model: str, reason: str) -> None:
        """``auto``: score this model with the top-k from now on (once, with a warning)."""
        if self.exact.get(model) is None:
            log.warning("the upstream cannot score a fixed token set for model %r (%s): letters come from the "
                        "top-k log-probabilities with the floor", model, reason)
        self.exact[model] = False
        self.notes[model] = reason

    async def groups(self, client: Any, headers: dict, model: str, letters: tuple[str, ...]) -> list[list[int]]:
        """Token ids of each letter's spellings (asked of the upstream's ``/tokenize`` once); :class:`NoExact`."""
        key = (model, letters)
        if key in self._groups:
            return self._groups[key]
        async with self._lock:
            if key in self._groups:
                return self._groups[key]
            cache: dict[str, list[int]] = {}
            for letter in letters:
                for form in LETTER_FORMS:
                    text = form.format(letter)
                    cache[text] = await self._tokenize(client, headers, model, text)
            groups = letter_id_groups(letters, cache.__getitem__, LETTER_FORMS)
            if sum(len(g) for g in groups) > MAX_TOKEN_IDS:
                raise NoExact(f"more token ids than vLLM takes ({MAX_TOKEN_IDS})")
            self._groups[key] = groups
            return groups

    async def _tokenize(self, client: Any, headers: dict, model: str, text: str) -> list[int]:
        from .upstream import TransportError

        try:
            status, _, content = await client.fetch("POST", self.tokenize_url, headers=headers,
                                                    json={"model": model, "prompt": text, "add_special_tokens": False})
        except TransportError as exc:
            raise NoExact(f"its /tokenize did not answer ({exc.name})") from None
        if status != 200:
            raise NoExact(f"it has no vLLM /tokenize endpoint (HTTP {status})")
        try:
            toks = json.loads(content).get("tokens")
        except (ValueError, AttributeError):
            toks = None
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise NoExact("its /tokenize answer has no list of token ids")
        if text and not toks:
            raise NoExact("its /tokenize is not vLLM's (no tokens for a non-empty prompt)")
        return toks

    def request_fields(self, groups: list[list[int]]) -> dict[str, Any]:
        return {"logprob_token_ids": sorted({i for g in groups for i in g}), "return_tokens_as_token_ids": True}

    def scores(self, answer: dict, groups: list[list[int]]) -> LetterScores:
        return exact_letter_scores(token_id_logprobs(answer), groups)
