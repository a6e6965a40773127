"""The scoring contract between prompts and models.

A backend turns requests into numbers and nothing else; batching order, caching and resume live
in :mod:`refcal.scoring`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class LetterRequest:
    """Next-token scores of option letters after a prompt.

    The full prompt is ``prefix + prompt``; ``prefix`` is shared by many requests (few-shot
    examples, instruction) so a backend may compute its key-value cache once. With
    ``chat=True`` the text ``prefix + prompt`` is the user message and the model's chat template
    is applied (generation prompt added) before scoring.
    ``letters`` are the option labels, e.g. ``("A", "B", "C", "D")`` or ``("True", "False")``.
    """

    prefix: str
    prompt: str
    letters: tuple[str, ...]
    chat: bool = False


@dataclass(frozen=True)
class ClozeRequest:
    """Log-likelihood of each continuation after a shared context (lm-evaluation-harness style)."""

    context: str
    continuations: tuple[str, ...]


@dataclass(frozen=True)
class ClozeResult:
    """Per continuation: summed log-probability, its token count and its character count."""

    logprob: tuple[float, ...]
    n_tokens: tuple[int, ...]
    n_chars: tuple[int, ...]


@runtime_checkable
class Backend(Protocol):
    """What every model backend provides."""

    #: Stable string identifying model weights + scoring-relevant settings; keys caches.
    fingerprint: str

    def score_letters(self, requests: Sequence[LetterRequest]) -> list[np.ndarray]:
        """One float64 array of shape (k,) per request: the letters' next-token logits
        (or log-probabilities; only differences within a row matter)."""
        ...

    def score_cloze(self, requests: Sequence[ClozeRequest]) -> list[ClozeResult]:
        """One :class:`ClozeResult` per request."""
        ...
