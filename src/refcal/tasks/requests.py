"""What a task asks a backend for: the request and result types (the one definition of each).

:mod:`refcal.backends.base` re-exports them, so backends and tasks share one vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    """Log-likelihood of each continuation after a shared context (lm-evaluation-harness style).

    With ``chat=True`` the context is the user message: the model's chat template is applied
    (generation prompt added) and the continuations are scored as the start of the assistant's reply
    (free-form answers teacher-forced under the template they were generated with).
    """

    context: str
    continuations: tuple[str, ...]
    chat: bool = False


@dataclass(frozen=True)
class ClozeResult:
    """Per continuation: summed log-probability, its token count and its character count."""

    logprob: tuple[float, ...]
    n_tokens: tuple[int, ...]
    n_chars: tuple[int, ...]


@dataclass(frozen=True)
class GenerateRequest:
    """Greedy generation after ``prompt`` (the user message when ``chat=True``).

    Generation stops after ``max_new_tokens`` tokens or at the first ``stop`` string (which is not
    part of the returned text).
    """

    prompt: str
    max_new_tokens: int = 32
    stop: tuple[str, ...] = ()
    chat: bool = False


def request_json(r: LetterRequest | ClozeRequest | GenerateRequest) -> list:
    """A JSON-ready list naming everything a request asks (its hash keys the score cache)."""
    if isinstance(r, LetterRequest):
        return ["L", r.prefix, r.prompt, list(r.letters), r.chat]
    if isinstance(r, ClozeRequest):
        # chat only when set, so the cache keys of raw cloze requests are unchanged
        return ["C", r.context, list(r.continuations)] + ([True] if r.chat else [])
    if isinstance(r, GenerateRequest):
        return ["G", r.prompt, r.max_new_tokens, list(r.stop), r.chat]
    raise TypeError(f"not a request: {type(r).__name__}")  # pragma: no cover - internal


def request_text_length(r: LetterRequest | ClozeRequest | GenerateRequest) -> int:
    """Characters a request makes the model read (sorts batches when a backend counts no tokens)."""
    if isinstance(r, LetterRequest):
        return len(r.prefix) + len(r.prompt)
    if isinstance(r, ClozeRequest):
        return len(r.context) + max(len(c) for c in r.continuations)
    return len(r.prompt)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """``text`` up to (not including) the first occurrence of any non-empty stop string."""
    cut = [text.find(s) for s in stop if s and s in text]
    return text[: min(cut)] if cut else text
