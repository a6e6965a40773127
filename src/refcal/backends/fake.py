"""A deterministic backend for tests and examples: no model, no network.

Scores come from a hash of each request's text, so they are reproducible, differ between prompts and
depend on the option order (a question with rotated options is another text). Knobs let a test build
the pattern it needs:

* ``scale`` sharpens or flattens every row (a confident "chat" model vs a flat "base" one);
* ``bias`` is added to the options by position (a model that always prefers option A);
* ``hint_boost``: a question text ending in ``#<n>`` (e.g. ``"What is 2+2? #1"``) adds this much
  (before ``scale``) to option ``n``, so tests can make models better than chance;
* ``batch_term`` adds ``batch_term x`` (characters in the whole backend call) to every score, which
  makes any change in batch composition visible (resume tests); such a backend is not
  ``batch_invariant``;
* ``sleep`` (seconds per call), ``interrupt_after`` (calls) and ``max_requests`` (requests) simulate
  slow and interrupted runs (:class:`KeyboardInterrupt`).

Counters: ``calls`` (requests scored), ``batches`` (requests per backend call), ``scored`` (the text of
every request scored: letter prompt, cloze context or generation prompt), ``prefixes`` (letter prefixes).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..tasks.requests import (
    ClozeRequest,
    ClozeResult,
    GenerateRequest,
    LetterRequest,
    cut_at_stop,
    request_text_length,
)

_HINT = re.compile(r"#(\d+)")
_WORDS = ("yes", "no", "maybe", "A", "B", "C", "D", "the", "answer", "is")


class FakeBackend:
    """See the module docstring."""

    stats = None

    def __init__(self, name: str = "fake", *, scale: float = 1.0, bias: Sequence[float] = (),
                 hint_boost: float = 1.0, batch_term: float = 0.0, sleep: float = 0.0,
                 interrupt_after: int | None = None, max_requests: int | None = None):
        self.name = name
        self.fingerprint = f"fake-{name}"
        self.scale = float(scale)
        self.bias = tuple(float(b) for b in bias)
        self.hint_boost = float(hint_boost)
        self.batch_term = float(batch_term)
        self.batch_invariant = self.batch_term == 0.0
        self.sleep = float(sleep)
        self.interrupt_after = interrupt_after
        self.max_requests = max_requests
        self.calls = 0
        self.batches: list[int] = []
        self.scored: list[str] = []
        self.prefixes: list[str] = []

    @property
    def meta(self) -> dict[str, Any]:
        return {"kind": "fake", "name": self.name, "scale": self.scale}

    def request_length(self, request: Any) -> int:
        return request_text_length(request)

    # ------------------------------------------------------------------------------------- scores
    def vector(self, text: str, k: int, hint_text: str | None = None) -> np.ndarray:
        """The k scores of ``text`` before the batch term (public so tests can predict them)."""
        seed = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], 16)
        v = np.random.default_rng(seed).normal(size=k)
        hints = _HINT.findall(text if hint_text is None else hint_text)
        if hints and int(hints[-1]) < k:
            v[int(hints[-1])] += self.hint_boost
        v = self.scale * v
        for j, b in enumerate(self.bias[:k]):
            v[j] += b
        return v

    def _start(self, texts: list[str]) -> float:
        if self.interrupt_after is not None and len(self.batches) >= self.interrupt_after:
            raise KeyboardInterrupt
        if self.max_requests is not None and self.calls + len(texts) > self.max_requests:
            raise KeyboardInterrupt
        if self.sleep:
            time.sleep(self.sleep)
        self.batches.append(len(texts))
        self.calls += len(texts)
        self.scored += texts
        return self.batch_term * sum(len(t) for t in texts)

    def score_letters(self, requests: Sequence[LetterRequest]) -> list[np.ndarray]:
        term = self._start([r.prompt for r in requests])
        self.prefixes += [r.prefix for r in requests]
        return [self.vector(("<chat>" if r.chat else "") + r.prefix + r.prompt, len(r.letters), r.prompt) + term
                for r in requests]

    def score_cloze(self, requests: Sequence[ClozeRequest]) -> list[ClozeResult]:
        term = self._start([r.context for r in requests])
        out = []
        for r in requests:
            text = ("<chat>" if r.chat else "") + r.context + "\x00" + "\x00".join(r.continuations)
            v = self.vector(text, len(r.continuations), r.context)
            out.append(ClozeResult(tuple(float(x) + term for x in v),
                                   tuple(max(1, (len(c) + 1) // 2) for c in r.continuations),
                                   tuple(len(c) for c in r.continuations)))
        return out

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        self._start([r.prompt for r in requests])
        out = []
        for r in requests:
            seed = int(hashlib.sha256(r.prompt.encode("utf-8")).hexdigest()[:16], 16)
            picks = np.random.default_rng(seed).integers(len(_WORDS), size=r.max_new_tokens)
            out.append(cut_at_stop("".join(" " + _WORDS[int(i)] for i in picks), r.stop))
        return out

    def score_letters_iter(self, requests: Sequence[LetterRequest]) -> Iterator[tuple[int, np.ndarray]]:
        yield from enumerate(self.score_letters(requests))

    def score_cloze_iter(self, requests: Sequence[ClozeRequest]) -> Iterator[tuple[int, ClozeResult]]:
        yield from enumerate(self.score_cloze(requests))

    def generate_iter(self, requests: Sequence[GenerateRequest]) -> Iterator[tuple[int, str]]:
        yield from enumerate(self.generate(requests))
