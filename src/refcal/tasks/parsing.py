"""Tolerant parsers for verbalised confidence, the failure policy, and ``avg_conf`` aggregation.

Two formats (prompts in :mod:`refcal.tasks.prompts_freeform`, definitions in METHODS.md §1.2, §1.3):

* Tian et al. 2023: ``"Guess: <answer>\\nProbability: <p>"`` (:func:`parse_guess_probability`);
* Xiong et al. 2024: ``"Answer and Confidence (0-100): <answer>, <c>%"`` (:func:`parse_answer_confidence`).

Every parser returns a :class:`ParseResult`; a failure has ``ok=False`` and a ``reason`` and is never
dropped: the caller counts failures (:func:`count_failures`) and applies :func:`apply_failure_policy`
(METHODS.md default: a wrong answer with confidence 1/k for k options, 0.5 for free-form answers).

Numbers (our reading, documented in docs/FREEFORM.md):

* Tian (a probability in [0, 1]): ``0.8``, ``.8``, ``0,8``, ``80%`` and ``80 %`` give 0.8; a number above 1
  without a percent sign is read as a percentage (``80`` -> 0.8), models often write one;
* Xiong (a 0-100 scale): ``80``, ``80%`` -> 0.8; a decimal number at most 1 without a percent sign
  (``0.8``) is read as a fraction, since "0.8 %" confidence is not what such an answer means;
* the result is clipped to [0, 1] (``120%`` -> 1.0); ``clipped=True`` says so.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..errors import InputError

FREEFORM_FAILURE_CONFIDENCE = 0.5


@dataclass(frozen=True)
class ParseResult:
    """The outcome of parsing one model reply.

    Attributes
    ----------
    answer : str or None
        The stated answer, stripped of quotes and markdown emphasis; None when none was found.
    confidence : float or None
        In [0, 1]; None when none was found (before :func:`apply_failure_policy`).
    ok : bool
        True when both an answer and a confidence were found.
    reason : str or None
        Why parsing failed (``"no answer"``, ``"no confidence"``, ``"empty reply"``, ...); None when ok.
    clipped : bool
        True when the stated number lay outside [0, 1] (after reading percentages) and was clipped.
    """

    answer: str | None
    confidence: float | None
    ok: bool
    reason: str | None = None
    clipped: bool = False


_NUM = r"([-+]?(?:\d+(?:\.\d*)?|\.\d+))\s*(%|percent\b)?"
_GUESS = re.compile(r"guess\s*[:：]\s*(.*?)\s*(?=(?:\n|\r|probability\s*[:：]|$))", re.IGNORECASE | re.DOTALL)
# a decimal comma ("0,8") is accepted here: the Tian format has no other use for a comma after the number
_PROB = re.compile(r"probability\s*[:：]\s*\**\s*([-+]?(?:\d+(?:[.,]\d+|\.)?|\.\d+))\s*(%|percent\b)?", re.IGNORECASE)
_XIONG_HEAD = re.compile(r"answer\s*(?:and|&)\s*confidence\s*(?:\(\s*0\s*-\s*100\s*\))?\s*[:：]", re.IGNORECASE)
_XIONG_TAIL = re.compile(r"[,;]\s*\**\s*" + _NUM + r"\s*\**\s*(?:`{3})?\s*\.?\s*$", re.IGNORECASE)
_WRAP = " \t\"'`*_[]<>"


def _clean_answer(text: str) -> str:
    text = text.strip().strip(_WRAP).strip()
    return text.rstrip(".").strip() if text.count(".") == 1 and text.endswith(".") else text


def _to_unit(number: str, percent: str | None, *, scale_100: bool) -> tuple[float, bool]:
    """The probability a stated number means (see the module docstring) and whether it was clipped."""
    x = float(number)
    if percent:
        x /= 100.0
    elif scale_100:
        if not ("." in number and x <= 1.0):
            x /= 100.0
    elif x > 1.0:
        x /= 100.0
    clipped = not 0.0 <= x <= 1.0
    return min(1.0, max(0.0, x)), clipped


def parse_guess_probability(text: str) -> ParseResult:
    """Parse Tian et al.'s ``Guess: ... Probability: ...`` reply.

    The guess runs from ``Guess:`` to the end of its line (or to ``Probability:`` on the same line);
    the probability is the first number after ``Probability:``. Case, markdown emphasis (``**Guess:**``)
    and full-width colons are tolerated.
    """
    if not text or not text.strip():
        return ParseResult(None, None, False, "empty reply")
    text = text.replace("**", "")
    g = _GUESS.search(text)
    p = _PROB.search(text)
    answer = _clean_answer(g.group(1)) if g else None
    conf, clipped = _to_unit(p.group(1).replace(",", "."), p.group(2), scale_100=False) if p else (None, False)
    if not answer:
        return ParseResult(None, conf, False, "no guess", clipped)
    if conf is None:
        return ParseResult(answer, None, False, "no probability")
    return ParseResult(answer, conf, True, None, clipped)


def parse_answer_confidence(text: str) -> ParseResult:
    """Parse Xiong et al.'s ``Answer and Confidence (0-100): <answer>, <confidence>%`` reply.

    The part after the header (or the whole first non-empty line when the header is missing) is
    split at its last comma or semicolon: the answer before, the 0-100 confidence after. Code fences
    and markdown emphasis are tolerated.
    """
    if not text or not text.strip():
        return ParseResult(None, None, False, "empty reply")
    text = text.replace("**", "").replace("```", "\n")
    head = _XIONG_HEAD.search(text)
    if head:
        body = text[head.end():].strip()
    else:
        body = next((line for line in text.splitlines() if line.strip()), "")
    body = body.splitlines()[0].strip() if body.strip() else ""
    tail = _XIONG_TAIL.search(body)
    if tail is None:
        answer = _clean_answer(body) or None
        return ParseResult(answer, None, False, "no confidence")
    answer = _clean_answer(body[: tail.start()])
    conf, clipped = _to_unit(tail.group(1), tail.group(2), scale_100=True)
    if not answer:
        return ParseResult(None, conf, False, "no answer", clipped)
    return ParseResult(answer, conf, True, None, clipped)


def option_index(answer: str | None, k: int) -> int:
    """The 0-based option a stated multiple-choice answer names, or -1.

    Accepts ``"B"``, ``"b"``, ``"(B)"``, ``"B)"``, ``"B."``, ``"B: Paris"``, ``"Option B"`` (for k <= 26
    options labelled A..); anything else (``"Paris"``, a letter beyond the k-th) gives -1, which the
    caller counts as a parse failure of the answer.
    """
    if answer is None or k < 1:
        return -1
    m = re.fullmatch(r"\s*(?:option|answer)?\s*[\(\[]?\s*([A-Za-z])\s*(?:[\)\]:.,]\s*.*)?", answer,
                     re.DOTALL | re.IGNORECASE)
    if m is None:
        return -1
    i = ord(m.group(1).upper()) - ord("A")
    return i if i < min(k, 26) else -1


def failure_confidence(n_options: int | None = None) -> float:
    """METHODS.md default confidence for a failed parse: 1/k with k options, 0.5 for free-form answers."""
    if n_options is None:
        return FREEFORM_FAILURE_CONFIDENCE
    if not isinstance(n_options, int) or n_options < 2:
        raise InputError(f"n_options must be an integer >= 2 (or None for free-form), got {n_options!r}")
    return 1.0 / n_options


def apply_failure_policy(result: ParseResult, *, n_options: int | None = None) -> ParseResult:
    """The result itself when ok; else the METHODS.md default: no answer (a wrong answer) and
    :func:`failure_confidence` as the confidence. ``ok`` and ``reason`` stay, so failures remain countable."""
    if result.ok:
        return result
    return replace(result, answer=None, confidence=failure_confidence(n_options))


def count_failures(results: Sequence[ParseResult]) -> dict[str, int]:
    """``{"n": total, "n_failed": failures, "n_clipped": clipped, "<reason>": count, ...}`` for metrics.json."""
    out = {"n": len(results), "n_failed": sum(not r.ok for r in results), "n_clipped": sum(r.clipped for r in results)}
    for r in results:
        if not r.ok:
            key = str(r.reason)
            out[key] = out.get(key, 0) + 1
    return out


def _default_key(answer: str) -> str:
    return " ".join(answer.split()).casefold()


def avg_conf(
    answers: Sequence[str | None],
    confidences: Sequence[float | None],
    *,
    key: Callable[[str], str] | None = None,
    n_options: int | None = None,
) -> tuple[str | None, float]:
    """Xiong et al.'s ``avg_conf`` aggregation of an elicitation ensemble (METHODS.md §1.3).

    With members m = 0..M-1 answering a_m with confidence c_m (member 0 without a hint)::

        prediction = a_0,   confidence = sum_{m: a_m = a_0} c_m / sum_m c_m

    Members whose answer is None (a failed parse) take part in neither sum. Answers are compared
    through ``key`` (default: white space collapsed, case folded; pass e.g. :func:`option_index`-based
    keys for letters). When every counted confidence is 0 the score is the fraction of counted members
    that agree with member 0. When member 0 has no answer the prediction is None (a wrong answer) with
    the failure-policy confidence :func:`failure_confidence` (``n_options``: k, or None for free-form).

    Returns
    -------
    (str or None, float)
        Member 0's answer and its aggregated confidence in [0, 1].
    """
    if len(answers) != len(confidences) or not answers:
        raise InputError(f"avg_conf needs one confidence per member and at least one member, "
                         f"got {len(answers)} answers and {len(confidences)} confidences")
    key = key or _default_key
    members = [(key(a), float(c)) for a, c in zip(answers, confidences, strict=True) if a is not None and c is not None]
    if any(not 0.0 <= c <= 1.0 for _, c in members):
        raise InputError("avg_conf confidences must lie in [0, 1]; parse them with parse_* (which clips) first")
    if answers[0] is None or confidences[0] is None:
        return None, failure_confidence(n_options)
    target = key(answers[0])
    total = sum(c for _, c in members)
    if total == 0.0:
        return answers[0], sum(k == target for k, _ in members) / len(members)
    return answers[0], sum(c for k, c in members if k == target) / total
