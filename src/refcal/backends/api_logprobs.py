"""Option-letter log-probabilities from an API's top-k log-probabilities of one generated token.

API models return only the ``k`` (at most 20) most likely first tokens of the answer. This module
turns such a list into one log-probability per option letter.

Letter matching
    A returned token counts for a letter when ``token.strip() == letter`` (so ``"A"``, ``" A"``,
    ``"A\\n"`` all count for ``A``; matching is case-sensitive, so ``"true"`` does not count for
    ``"True"``). Distinct first tokens are disjoint events, so when several variants of one letter
    are returned their probabilities are added: ``log P(letter) = logsumexp(variant log-probs)``.

Floor for absent letters
    A letter absent from the top-k has probability at most ``p_min`` (the smallest returned
    probability, since it was not ranked above it) and at most the residual mass
    ``R = 1 - sum(returned probabilities)``. Every absent letter gets

        ``floor = log(min(p_min, max(R, R_RESOLUTION))) - floor_margin``

    i.e. a fixed fraction (``exp(-floor_margin)``, default one half) of the largest probability the
    top-k allows it. ``R_RESOLUTION = 1e-6`` because servers compute log-probabilities in float32
    and round them, so a residual below about 1e-6 cannot be told apart from zero; without it a
    top-k that covers all the mass would give ``log(0)``. The floor is always strictly below the
    smallest returned log-probability, so an absent letter never outranks a returned one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BackendError
from .base import NotSupportedError

#: Residual probability below which the top-k is taken to cover all the mass (float32 rounding).
R_RESOLUTION = 1e-6


@dataclass(frozen=True)
class LetterScores:
    """Letter log-probabilities of one request.

    Attributes
    ----------
    logprobs : ndarray of shape (k,)
        float64 log-probability of each option letter (floored where absent).
    floored : tuple of bool, length k
        Which letters were absent from the top-k and got ``floor``.
    floor : float
        The floor value of this request (``nan`` if no letter needed it).
    """

    logprobs: np.ndarray
    floored: tuple[bool, ...]
    floor: float

    @property
    def n_floored(self) -> int:
        return sum(self.floored)


def letter_logprobs(
    top: Iterable[tuple[str, float]], letters: Sequence[str], *, floor_margin: float = math.log(2.0)
) -> LetterScores:
    """Map top-k ``(token, logprob)`` pairs of the first generated token to option letters.

    Parameters
    ----------
    top : iterable of (str, float)
        The returned alternatives; duplicates of one token string are kept as separate entries
        (servers that decode two token ids to one string return both).
    letters : sequence of str, length k
        Option labels, e.g. ``("A", "B", "C", "D")`` or ``("True", "False")``.
    floor_margin : float
        ``floor = log(min(p_min, max(R, 1e-6))) - floor_margin``; must be > 0.

    Returns
    -------
    LetterScores
    """
    pairs = []
    for t, lp in top:
        if isinstance(lp, bool) or not isinstance(lp, int | float):  # null, "-0.5", [..]: not a conforming server
            raise BackendError(f"the server returned the log-probability {lp!r} for the token {str(t)[:20]!r}, not "
                               "a number; it is not OpenAI-compatible here (check its version, or use another server)")
        pairs.append((str(t), float(lp)))
    if not pairs:
        raise BackendError("the server returned no top log-probabilities; it must support top_logprobs")
    lps = np.array([lp for _, lp in pairs], dtype=np.float64)
    if not np.all(np.isfinite(lps) | (lps == -np.inf)) or np.any(lps > 1e-6):
        raise BackendError(f"the server returned invalid log-probabilities {lps.tolist()!r}")
    finite = lps[np.isfinite(lps)]
    by_letter: dict[str, list[float]] = {letter: [] for letter in letters}
    for token, lp in pairs:
        key = token.strip()
        if key in by_letter and lp > -np.inf:
            by_letter[key].append(lp)
    out = np.empty(len(letters), dtype=np.float64)
    floored = tuple(not by_letter[letter] for letter in letters)
    floor = math.nan
    if any(floored):
        if finite.size == 0:
            raise BackendError("the server returned only -inf log-probabilities; it cannot be scored")
        p_min = float(np.exp(finite.min()))
        residual = 1.0 - float(np.exp(finite).sum())
        floor = math.log(min(p_min, max(residual, R_RESOLUTION))) - floor_margin
    for j, letter in enumerate(letters):
        vals = by_letter[letter]
        if len(vals) > 1:  # one string from several token ids: their probabilities add up
            out[j] = float(np.logaddexp.reduce(np.array(vals, dtype=np.float64)))
        else:
            out[j] = vals[0] if vals else floor
    return LetterScores(logprobs=out, floored=floored, floor=floor)


# ---------------------------------------------------------------------------------------------- response parsing
def is_num(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


class NoExact(Exception):
    """The server cannot score a fixed token set (the message says why)."""


def token_id_logprobs(body: Any) -> dict[int, float]:
    """``{token id: logprob}`` of the first generated position of an answer to a request with
    ``return_tokens_as_token_ids`` (vLLM names tokens ``"token_id:<id>"``): completions carry a dict
    ``logprobs.top_logprobs[0]``, chat a list ``logprobs.content[0].top_logprobs`` of ``{token, logprob}``."""
    try:
        lp = body["choices"][0]["logprobs"]
        if "content" in lp:
            content = lp["content"] or []
            pairs = [(t["token"], t["logprob"]) for t in (content[0].get("top_logprobs") or [])] if content else []
        else:
            tops = lp.get("top_logprobs") or []
            pairs = list((tops[0] or {}).items()) if tops else []
    except (KeyError, IndexError, TypeError, AttributeError):
        raise NoExact("its answer has no token log-probabilities") from None
    out: dict[int, float] = {}
    for tok, v in pairs:
        if isinstance(tok, str) and tok.startswith("token_id:") and tok[9:].isdigit() and is_num(v):
            out[int(tok[9:])] = float(v)
    return out


def logsumexp(values: Sequence[float]) -> float:
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


NO_ECHO = ("the server at {url} does not return the prompt's log-probabilities ({why}), which cloze scoring "
            "needs; use a server that supports echo with logprobs on /completions (vLLM, llama-cpp-python) "
            "or --scoring letter")


def prompt_logprob(body: Any, prompt: str, start: int, url: str) -> tuple[float, int]:
    """Sum of the ``token_logprobs`` of the echoed prompt tokens that end after character ``start``
    (and begin before the prompt's end: the generated token is dropped), and their count."""
    try:
        text = body["choices"][0].get("text") or ""
        lp = body["choices"][0]["logprobs"]
        tokens, offsets, values = lp["tokens"], lp["text_offset"], lp["token_logprobs"]
        if not (len(tokens) == len(offsets) == len(values)):
            raise ValueError("lists of different lengths")
    except (KeyError, IndexError, TypeError, ValueError):
        raise NotSupportedError(NO_ECHO.format(url=url, why="no logprobs with tokens, text_offset and "
                                                "token_logprobs in its answer")) from None
    if not offsets or min(offsets) >= start:  # echo ignored: only the generated token came back
        raise NotSupportedError(NO_ECHO.format(url=url, why="echo was ignored"))
    if len(text) > len(prompt) and max(offsets) < len(prompt):
        # llama-cpp-python (0.3.x) pairs prompt token i with the log-probabilities that predict token i+1
        # when the model adds no start-of-text token, and then drops the generated token: the sign
        raise NotSupportedError(NO_ECHO.format(url=url, why="its prompt log-probabilities are shifted by one "
                                                "token, as llama-cpp-python's for models without a BOS token"))
    total, n = 0.0, 0
    for tok, off, v in zip(tokens, offsets, values, strict=True):
        if off >= len(prompt) or off + len(tok) <= start:
            continue  # the generated token, or a token of the context
        if not is_num(v):
            raise NotSupportedError(NO_ECHO.format(url=url, why=f"no log-probability for prompt token {tok!r}"))
        total += float(v)
        n += 1
    if n == 0:
        raise BackendError(f"the server at {url} returned no token of the option {prompt[start:]!r}")
    return total, n


# ---------------------------------------------------------------------- shared by the openai: backend and refcal serve
def first_token_alternatives(body: dict) -> list[tuple[str, float]] | None:
    """The ``(token, logprob)`` alternatives of the first generated token of an OpenAI-style answer.

    Chat completions carry ``choices[0].logprobs.content[0].top_logprobs`` (a list of ``{token,
    logprob}``; when it is empty the sampled token itself is the one alternative), legacy completions
    ``choices[0].logprobs.top_logprobs[0]`` (a dict). Returns None when no token was generated (the
    model ended its answer at once). Raises ``KeyError`` / ``TypeError`` / ``IndexError`` /
    ``AttributeError`` when the answer has no log-probabilities at all (the caller names the server).
    """
    choice = body["choices"][0]
    lp = choice["logprobs"]
    if lp is None:
        raise KeyError("logprobs")
    if "content" in lp:  # chat completions
        content = lp["content"] or []
        if not content:
            return None
        first = content[0]
        pairs = [(t["token"], t["logprob"]) for t in first.get("top_logprobs") or []]
        return pairs or [(first["token"], first["logprob"])]
    tops = lp.get("top_logprobs") or []  # legacy completions: a dict per token
    if not tops:
        return None
    return list(tops[0].items())


def topk_letter_scores(top: Iterable[tuple[str, float]] | None, letters: Sequence[str], *,
                       floor_margin: float = math.log(2.0)) -> LetterScores:
    """:func:`letter_logprobs`, or, when no token was generated (``top`` is None), every letter at the
    resolution floor ``log(1e-6) - floor_margin``: every letter is absent and the resolution is the only
    bound, so the row is uniform and all letters are floored."""
    if top is None:
        floor = math.log(R_RESOLUTION) - floor_margin
        k = len(letters)
        return LetterScores(np.full(k, floor), (True,) * k, floor)
    return letter_logprobs(top, letters, floor_margin=floor_margin)


def letter_id_groups(letters: Sequence[str], tokenize: Callable[[str], Sequence[int]],
                     forms: Sequence[str]) -> list[list[int]]:
    """Token ids of each letter's single-token spellings (``forms``, e.g. ``openai_options.LETTER_FORMS``),
    ``tokenize(text)`` giving the model's ids of a text. :class:`NoExact` when a letter has no single-token
    spelling or two letters share a token."""
    groups: list[list[int]] = []
    for letter in letters:
        ids: list[int] = []
        for form in forms:
            toks = list(tokenize(form.format(letter)))
            if len(toks) == 1 and toks[0] not in ids:
                ids.append(toks[0])
        if not ids:
            raise NoExact(f"option label {letter!r} has no single-token spelling for this model")
        groups.append(ids)
    flat = [i for g in groups for i in g]
    if len(set(flat)) != len(flat):
        raise NoExact(f"option labels {tuple(letters)} share a token for this model")
    return groups


def exact_letter_scores(values: dict[int, float], groups: Sequence[Sequence[int]]) -> LetterScores:
    """Letter log-probabilities from exact token log-probabilities (:func:`token_id_logprobs`): ``logsumexp``
    over each letter's ids. :class:`NoExact` when a requested id is missing (the server ignored
    ``logprob_token_ids``)."""
    ids = sorted({i for g in groups for i in g})
    missing = [i for i in ids if i not in values]
    if missing:
        raise NoExact(f"its answer lacks {len(missing)} of the {len(ids)} requested token ids, "
                      "so it ignored logprob_token_ids")
    lps = np.array([logsumexp([values[i] for i in g]) for g in groups], dtype=np.float64)
    return LetterScores(lps, (False,) * len(groups), math.nan)
