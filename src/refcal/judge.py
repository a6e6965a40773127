"""Correctness of free-form answers (evaluation only: no label-free method ever sees a verdict).

Three judges behind one protocol, :class:`Judge` (``judge(question, answer) -> bool``):

* :class:`ExactMatchJudge` (TriviaQA, NQ-open): SQuAD / lm-evaluation-harness normalisation
  (:func:`normalize_answer`: lower case, punctuation dropped, articles a/an/the dropped, white space
  collapsed); correct when the normalised answer equals a normalised alias, or with
  ``containment=True`` when a normalised alias occurs in it as whole words;
* :class:`RougeJudge` (TruthfulQA): correct when the best ROUGE-L F-measure against the true
  references exceeds the best against the false ones (lm-evaluation-harness ``truthfulqa_gen``'s
  ``rougeL_acc``);
* :class:`OpenAIJudge`: an OpenAI-compatible judge model answering yes / no to a prompt template;
  the template and model are in :attr:`~OpenAIJudge.config` so a run can record them.

:func:`default_judge` picks the first or second from the questions; :func:`judge_answers` judges a
list and marks unlabelled questions -1.
"""

from __future__ import annotations

import logging
import os
import random
import re
import string
import threading
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ._urls import public_url, request_auth
from .backends.api_http import RetryPolicy, Secret, post_json
from .data.freeform import FreeformQuestion
from .errors import BackendError, InputError, MissingDependencyError

log = logging.getLogger(__name__)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)
_ROUGE_NON_ALNUM = re.compile(r"[^a-z0-9]+")


# ---------------------------------------------------------------------------------------- normalising
def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation (also lm-evaluation-harness's): lower case, drop ASCII punctuation,
    drop the articles a / an / the, collapse white space."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, aliases: Sequence[str], *, containment: bool = False) -> bool:
    """True when ``normalize_answer(answer)`` equals a normalised alias (``containment``: contains one
    as whole words, e.g. ``"it was paris"`` contains ``"paris"`` but ``"parish"`` does not).

    An answer or alias that normalises to the empty string never matches (``"The"`` is no answer).
    """
    got = normalize_answer(answer)
    if not got:
        return False
    refs = [r for r in (normalize_answer(a) for a in aliases) if r]
    if containment:
        padded = f" {got} "
        return any(f" {r} " in padded for r in refs)
    return got in refs


# ---------------------------------------------------------------------------------------- ROUGE-L
def rouge_tokens(text: str) -> list[str]:
    """The ``rouge-score`` package's tokens (no stemming): lower case, runs of characters other than
    ASCII letters and digits are separators."""
    return [t for t in _ROUGE_NON_ALNUM.sub(" ", text.lower()).split() if t]


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, 1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure on :func:`rouge_tokens`: with L = LCS length, P = L / |prediction|,
    R = L / |reference|, F = 2PR / (P + R); 0 when either side has no tokens or L = 0.

    Equals ``rouge_score``'s ``rougeL`` and, for single-line texts, ``rougeLsum`` (what
    lm-evaluation-harness uses; it splits summaries into lines only at ``" . "``).
    """
    p, r = rouge_tokens(prediction), rouge_tokens(reference)
    if not p or not r:
        return 0.0
    lcs = _lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def truthfulqa_correct(answer: str, true_refs: Sequence[str], false_refs: Sequence[str]) -> bool:
    """lm-evaluation-harness ``truthfulqa_gen`` ``rougeL_acc``: max ROUGE-L to the true references >
    max ROUGE-L to the false ones (a tie is wrong)."""
    if not true_refs or not false_refs:
        raise InputError("the ROUGE-L judge needs true and false reference answers; use the exact-match judge "
                         "for questions without false answers")
    return max(rouge_l(answer, t) for t in true_refs) > max(rouge_l(answer, f) for f in false_refs)


# ---------------------------------------------------------------------------------------- judges
@runtime_checkable
class Judge(Protocol):
    """Decides whether an answer to a free-form question is correct."""

    #: JSON-ready description recorded with a run (kind, options, prompt of a judge model).
    config: dict[str, Any]

    def judge(self, question: FreeformQuestion, answer: str) -> bool:
        """True when ``answer`` is a correct answer to ``question`` (which must have references)."""
        ...


def _need_refs(question: FreeformQuestion) -> None:
    if not question.answers:
        raise InputError(f"question {question.id!r} has no reference answers, so it cannot be judged; "
                         "use judge_answers, which marks such questions -1")


class ExactMatchJudge:
    """Normalised exact match against any alias (:func:`exact_match`); ``containment`` as an option."""

    def __init__(self, *, containment: bool = False):
        self.containment = bool(containment)
        self.config = {"kind": "exact_match", "containment": self.containment,
                       "normalisation": "lower, drop punctuation, drop a/an/the, collapse white space"}

    def judge(self, question: FreeformQuestion, answer: str) -> bool:
        _need_refs(question)
        return exact_match(answer, question.answers, containment=self.containment)


class RougeJudge:
    """TruthfulQA: closer (ROUGE-L) to a true reference than to every false one (:func:`truthfulqa_correct`)."""

    def __init__(self):
        self.config = {"kind": "rouge_l", "rule": "max ROUGE-L F(true refs) > max ROUGE-L F(false refs)",
                       "tokens": "rouge-score: lower case, [^a-z0-9]+ separates, no stemming"}

    def judge(self, question: FreeformQuestion, answer: str) -> bool:
        _need_refs(question)
        return truthfulqa_correct(answer, question.answers, question.false_answers)


DEFAULT_JUDGE_PROMPT = (
    "You are grading an answer to a trivia question against the reference answers.\n"
    "Question: {question}\nReference answers: {references}\nProposed answer: {answer}\n"
    "Does the proposed answer mean the same as one of the reference answers? Reply with only yes or no."
)
_YES = frozenset({"yes", "correct", "true"})
_NO = frozenset({"no", "incorrect", "false", "wrong"})


def parse_verdict(reply: str) -> bool | None:
    """True / False from a judge model's reply whose first word is yes/correct/true or
    no/incorrect/false/wrong (case and punctuation ignored); None otherwise."""
    words = re.findall(r"[a-z]+", reply.lower())
    if not words:
        return None
    return True if words[0] in _YES else False if words[0] in _NO else None


class OpenAIJudge:
    """An OpenAI-compatible chat model as the judge (evaluation only).

    Parameters
    ----------
    model : str
        Model name sent in each request.
    api_base : str, optional
        Base URL up to and including ``/v1``; default ``$OPENAI_BASE_URL``.
    prompt_template : str
        User message with the fields ``{question}``, ``{answer}`` and ``{references}`` (the aliases
        joined with ``"; "``); it must ask for a yes / no reply (:func:`parse_verdict`).
    api_key_env : str
        Environment variable holding the key (``Authorization: Bearer``); optional for local servers.
    max_tokens, timeout, max_retries, seed
        Request settings; retries follow :mod:`refcal.backends.api_http`.

    Requests are sent one at a time and answered verdicts are memoised per (question id, answer).
    """

    def __init__(self, model: str, *, api_base: str | None = None, prompt_template: str = DEFAULT_JUDGE_PROMPT,
                 api_key_env: str = "OPENAI_API_KEY", max_tokens: int = 4, timeout: float = 30.0,
                 max_retries: int = 5, seed: int | None = 0):
        from .prompts_freeform import check_template

        if not model or not isinstance(model, str):
            raise InputError("the judge model name is empty; name the OpenAI-compatible judge model")
        check_template(prompt_template, ("question", "answer", "references"), what="judge prompt")
        base = (api_base or os.environ.get("OPENAI_BASE_URL") or "").rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise InputError(f"the judge's api_base must be an http(s) URL such as http://127.0.0.1:8080/v1, "
                             f"got {public_url(base) if base else 'nothing'!r}")
        self.model, self.prompt_template = model, prompt_template
        self._key = Secret(os.environ.get(api_key_env))
        request_base, auth = request_auth(base, self._key.get())  # the key wins over user:password@
        self._auth = Secret(auth)
        self._base, self.api_base = Secret(request_base), public_url(base)
        if not isinstance(max_retries, int) or max_retries < 0 or not timeout > 0 or max_tokens < 1:
            raise InputError("the judge needs max_retries >= 0, a positive timeout and max_tokens >= 1")
        self.max_tokens, self.timeout, self.seed = int(max_tokens), float(timeout), seed
        self.policy = RetryPolicy(max_retries=max_retries)
        self._client: Any = None
        self._memo: dict[tuple[str, str], bool] = {}
        self.n_requests = 0
        self.config = {"kind": "openai", "model": model, "api_base": self.api_base, "prompt": prompt_template,
                       "max_tokens": self.max_tokens, "seed": seed, "temperature": 0}

    def __repr__(self) -> str:
        return f"OpenAIJudge(model={self.model!r}, api_base={self.api_base!r}, key={'set' if self._key else 'unset'})"

    def prompt(self, question: FreeformQuestion, answer: str) -> str:
        """The user message sent for one (question, answer) pair."""
        return self.prompt_template.format(question=question.question, answer=answer.strip(),
                                           references="; ".join(question.answers))

    def judge(self, question: FreeformQuestion, answer: str) -> bool:
        _need_refs(question)
        memo_key = (question.id, answer)
        if memo_key in self._memo:
            return self._memo[memo_key]
        payload: dict[str, Any] = {"model": self.model, "temperature": 0, "max_tokens": self.max_tokens, "n": 1,
                                   "messages": [{"role": "user", "content": self.prompt(question, answer)}]}
        if self.seed is not None:
            payload["seed"] = self.seed
        headers = {"Authorization": self._auth.get()} if self._auth else {}
        body = post_json(self._http(), _join(self._base.get(), "chat/completions"), payload, headers=headers,
                         policy=self.policy, secret=self._key, rng=random.Random(self.n_requests),
                         stop=threading.Event())
        self.n_requests += 1
        try:
            reply = body["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise BackendError(f"the judge model at {self.api_base} answered without choices[0].message.content; "
                               "it must be an OpenAI-compatible chat completions endpoint") from None
        verdict = parse_verdict(reply)
        if verdict is None:
            raise BackendError(f"the judge model answered {reply[:60]!r}, not yes or no; change the judge prompt "
                               "so that it asks for a one-word yes/no reply")
        self._memo[memo_key] = verdict
        return verdict

    def _http(self) -> Any:
        if self._client is None:
            try:
                import httpx
            except ImportError as exc:  # pragma: no cover - httpx is in the api extra
                raise MissingDependencyError("httpx", "api") from exc
            self._client = httpx.Client(timeout=httpx.Timeout(self.timeout))
        return self._client

    def close(self) -> None:
        """Close the HTTP connection pool (a later :meth:`judge` opens a new one)."""
        if self._client is not None:
            self._client.close()
            self._client = None


def _join(base: str, name: str) -> str:
    """``name`` appended to the path of ``base`` (its query, if any, stays at the end)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(base)
    return urlunsplit(parts._replace(path=f"{parts.path.rstrip('/')}/{name}"))


def default_judge(questions: Sequence[FreeformQuestion], *, containment: bool = False) -> Judge:
    """:class:`RougeJudge` when the questions carry false references (TruthfulQA), else :class:`ExactMatchJudge`."""
    if any(q.false_answers for q in questions):
        return RougeJudge()
    return ExactMatchJudge(containment=containment)


def judge_answers(judge: Judge, questions: Sequence[FreeformQuestion], answers: Sequence[str]) -> np.ndarray:
    """Labels for a list of answers: int64 array of shape (n,), 1 correct, 0 wrong, -1 unlabelled
    (no reference answers). ``answers[i]`` answers ``questions[i]``."""
    if len(questions) != len(answers):
        raise InputError(f"{len(questions)} questions but {len(answers)} answers; give one answer per question")
    return np.array([int(judge.judge(q, a)) if q.answers else -1 for q, a in zip(questions, answers, strict=True)],
                    dtype=np.int64)
