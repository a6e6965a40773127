"""Correctness of free-form answers (evaluation only: no label-free method ever sees a verdict).

Three judges behind one protocol, :class:`Judge` (``judge(question, answer) -> bool``):

* :class:`ExactMatchJudge` (TriviaQA, NQ-open): SQuAD / lm-evaluation-harness normalisation
  (:func:`normalize_answer`: lower case, punctuation dropped, articles a/an/the dropped, white space
  collapsed); correct when the normalised answer equals a normalised alias, or with
  ``containment=True`` when a normalised alias occurs in it as whole words;
* :class:`RougeJudge` (TruthfulQA): correct when the best ROUGE-L F-measure against the true
  references exceeds the best against the false ones (lm-evaluation-harness ``truthfulqa_gen``'s
  ``rougeL_acc``);
* :class:`ModelJudge`: a judge model answering yes / no to a prompt template, generated through any
  backend (no HTTP client of its own); the template and model are in :attr:`~ModelJudge.config` so a
  run can record them.

:func:`default_judge` picks the first or second from the questions; :func:`judge_answers` judges a
list and marks unlabelled questions -1.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..data.freeform import FreeformQuestion
from ..errors import BackendError, InputError
from .prompts_freeform import check_template
from .requests import GenerateRequest

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


class ModelJudge:
    """A model as the judge (evaluation only): one greedy generation per (question, answer) on any backend
    that generates (an OpenAI-compatible chat model through :class:`refcal.backends.openai.OpenAIBackend`,
    a local model, ...): the backend's own client, retries and settings serve the judge too.

    Parameters
    ----------
    backend
        Anything with ``generate(requests) -> list[str]`` and a ``fingerprint``
        (:func:`refcal.backends.load_backend` gives one).
    prompt_template : str
        User message with the fields ``{question}``, ``{answer}`` and ``{references}`` (the aliases
        joined with ``"; "``); it must ask for a yes / no reply (:func:`parse_verdict`).
    max_tokens : int
        Tokens generated for the verdict.
    name : str, optional
        The judge model's name for :attr:`config` (default: the backend's ``name`` or fingerprint).

    Verdicts are memoised per (question id, answer).
    """

    def __init__(self, backend: Any, *, prompt_template: str = DEFAULT_JUDGE_PROMPT, max_tokens: int = 4,
                 name: str | None = None):
        check_template(prompt_template, ("question", "answer", "references"), what="judge prompt")
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InputError(f"the judge needs max_tokens >= 1, got {max_tokens!r}")
        if not callable(getattr(backend, "generate", None)):
            raise InputError(f"the judge model {getattr(backend, 'name', backend)!r} cannot generate text; "
                             "use a chat model (openai:MODEL or a local model)")
        self.backend, self.prompt_template, self.max_tokens = backend, prompt_template, int(max_tokens)
        self.name = name or str(getattr(backend, "name", None) or getattr(backend, "fingerprint", "judge"))
        self._memo: dict[tuple[str, str], bool] = {}
        self.config = {"kind": "model", "model": self.name, "fingerprint": str(getattr(backend, "fingerprint", "")),
                       "prompt": prompt_template, "max_tokens": self.max_tokens, "temperature": 0}

    def __repr__(self) -> str:
        return f"ModelJudge(model={self.name!r})"

    def prompt(self, question: FreeformQuestion, answer: str) -> str:
        """The user message sent for one (question, answer) pair."""
        return self.prompt_template.format(question=question.question, answer=answer.strip(),
                                           references="; ".join(question.answers))

    def request(self, question: FreeformQuestion, answer: str) -> GenerateRequest:
        """The generation request asking for one verdict."""
        return GenerateRequest(self.prompt(question, answer), max_new_tokens=self.max_tokens, chat=True)

    def judge(self, question: FreeformQuestion, answer: str) -> bool:
        _need_refs(question)
        memo_key = (question.id, answer)
        if memo_key in self._memo:
            return self._memo[memo_key]
        (reply,) = self.backend.generate([self.request(question, answer)])
        verdict = parse_verdict(reply or "")
        if verdict is None:
            raise BackendError(f"the judge model answered {str(reply)[:60]!r}, not yes or no; change the judge prompt "
                               "so that it asks for a one-word yes/no reply")
        self._memo[memo_key] = verdict
        return verdict

    def close(self) -> None:
        """Close the backend's connections, if it keeps any."""
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()


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
