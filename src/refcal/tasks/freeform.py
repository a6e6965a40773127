"""The free-form tasks (METHODS.md §3): generate an answer, score its likelihood, judge it with P(True).

They run through the same scorer as the multiple-choice tasks (:func:`refcal.scoring.score_questions`:
batch plan, append-only cache, resume after ``kill -9``), on :class:`~refcal.data.base.Question` records
built by :func:`pair`: the question text, and as the one "option" the answer being judged (empty for
generation). The request hash keys the cache, so an answer that changes is scored again.

* :class:`GenerateTask` (``kind="generate"``): greedy text after a prompt; the raw row is the text
  (stripped), returned in the score set's ``columns[column]``; its two logits are 0 and mean nothing.
* :class:`AnswerLikelihoodTask` (``kind="cloze"``): the summed log-probability and token count of the
  answer teacher-forced after ``Question: {question}\\nAnswer:`` (chat: under the chat template, the
  answer as the assistant's reply; raw: the continuation ``" " + answer``, re-tokenised by the model's
  own tokenizer); :meth:`~AnswerLikelihoodTask.finish` gives ``[log(1 - c), log c]`` with ``c`` the
  geometric-mean token probability (the two-option form every free-form confidence is evaluated in).
* :class:`PTrueTask` (``kind="letter"``): the two-option judging prompt, letters
  :data:`~refcal.tasks.prompts_freeform.P_TRUE_LETTERS` in logit order (0 = False, 1 = True).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Any

from ..data.base import Question
from ..errors import ModelError
from . import prompts_freeform as pf
from .base import is_score
from .multiple_choice import LetterTask
from .requests import ClozeRequest, ClozeResult, GenerateRequest, LetterRequest

#: what score sets of free-form P(True) record as ``meta["task"]`` (and calibrators as ``task``)
FREEFORM_TASK = "free-form P(True)"
_EPS = 2.0 ** -52


def pair(qid: str, question: str, answer: str = "", label: int = -1) -> Question:
    """A (question, answer) pair as the scorer's record: ``choices = (answer,)``; ``label`` 1 correct,
    0 wrong, -1 unknown (it becomes the label of the P(True) score set: option 1 = True)."""
    return Question(str(qid), question, (answer,), label)


class GenerateTask:
    """Greedy generation after ``prompt(question)``; the stripped text is the raw row."""

    kind = "generate"

    def __init__(self, name: str = "generate", *, prompt: Callable[[str], str] = pf.generation_prompt,
                 max_new_tokens: int = pf.GENERATION_MAX_NEW_TOKENS, stop: tuple[str, ...] = pf.GENERATION_STOP,
                 chat: bool = True, column: str = "answer"):
        self.name, self.prompt, self.column = name, prompt, column
        self.max_new_tokens, self.stop, self.chat = int(max_new_tokens), tuple(stop), bool(chat)

    def requests(self, question: Question, fewshot: Sequence[Question] = ()) -> list[Any]:
        return [GenerateRequest(self.prompt(question.question), self.max_new_tokens, self.stop, self.chat)]

    def reduce(self, question: Question, results: Sequence[Any]) -> Any:
        if not isinstance(results[0], str):
            raise ModelError(f"the backend returned {type(results[0]).__name__} for a generation, not text")
        return results[0].strip()

    def valid(self, question: Question, raw: Any) -> bool:
        return isinstance(raw, str)

    def finish(self, raw: Any) -> list[float | None]:
        return [0.0, 0.0]  # a score set needs two options; the text is in columns()

    def cache_key(self) -> dict[str, Any]:
        # the prompt text is in every request hash; the settings below key the file
        return {"template": None, "kind": self.name, "chat": self.chat, "max_new_tokens": self.max_new_tokens,
                "stop": list(self.stop)}

    def columns(self, raws: Sequence[Any]) -> dict[str, list[Any]]:
        return {self.column: list(raws)}

    def meta(self) -> dict[str, Any]:
        return {"scoring": self.name, "template": None, "chat": self.chat, "task": "free-form generation",
                "max_new_tokens": self.max_new_tokens, "stop": list(self.stop)}


class AnswerLikelihoodTask:
    """Mean token log-probability of a pair's answer teacher-forced after the generation prompt."""

    kind = "cloze"

    def __init__(self, *, chat: bool = False):
        self.chat = bool(chat)
        self.name = "answer-likelihood"

    def requests(self, question: Question, fewshot: Sequence[Question] = ()) -> list[Any]:
        answer = question.choices[0]
        if not answer:
            raise ModelError(f"question {question.id!r}: an empty answer has no likelihood; leave it out")
        context = pf.generation_prompt(question.question)
        # raw: "Answer:" + " " + answer, as a continuation of the prompt; chat: the reply starts a fresh turn
        return [ClozeRequest(context, (answer,) if self.chat else (" " + answer,), chat=self.chat)]

    def reduce(self, question: Question, results: Sequence[Any]) -> Any:
        res = results[0]
        if not isinstance(res, ClozeResult) or len(res.logprob) != 1 or len(res.n_tokens) != 1:
            raise ModelError("the backend returned a malformed cloze result for an answer")
        return {"lp": float(res.logprob[0]), "nt": int(res.n_tokens[0])}

    def valid(self, question: Question, raw: Any) -> bool:
        return (isinstance(raw, dict) and set(raw) == {"lp", "nt"} and is_score(raw["lp"])
                and isinstance(raw["nt"], int) and not isinstance(raw["nt"], bool) and raw["nt"] >= 1)

    def finish(self, raw: Any) -> list[float | None]:
        """``[log(1 - c), log c]`` with ``c`` the geometric-mean token probability ``exp(lp / nt)``."""
        # c is capped at 1 - 2**-52 so that "wrong" keeps a finite score (log 2**-52 = -36.04)
        m = min(raw["lp"] / raw["nt"], -_EPS)
        return [math.log(-math.expm1(m)), m]

    def cache_key(self) -> dict[str, Any]:
        return {"template": None, "kind": self.name, "chat": self.chat}

    def columns(self, raws: Sequence[Any]) -> dict[str, list[Any]]:
        return {"n_tokens": [r["nt"] for r in raws]}

    def meta(self) -> dict[str, Any]:
        return {"scoring": self.name, "template": None, "chat": self.chat, "task": "free-form answer likelihood"}


class PTrueTask(LetterTask):
    """P(True) of a pair (METHODS.md §3.2): letters ``("B", "A")`` = (False, True) after the judging prompt
    (raw prompts end in ``" ("``; chat prompts are the user turn, the letter the reply's first token)."""

    name = "p_true"

    def __init__(self, *, template: str = pf.P_TRUE_PROMPT, chat: bool = False):
        super().__init__(template=1, chat=chat)
        self.prompt_template = pf.check_template(template, ("question", "answer"), what="P(True)")

    def requests(self, question: Question, fewshot: Sequence[Question] = ()) -> list[Any]:
        text = pf.p_true_prompt(question.question, question.choices[0], template=self.prompt_template, chat=self.chat)
        return [LetterRequest("", text, pf.P_TRUE_LETTERS, self.chat)]

    def reduce(self, question: Question, results: Sequence[Any]) -> Any:
        return super().reduce(_TWO, results)

    def valid(self, question: Question, raw: Any) -> bool:
        return super().valid(_TWO, raw)

    def cache_key(self) -> dict[str, Any]:
        digest = hashlib.sha256(self.prompt_template.encode("utf-8")).hexdigest()[:16]
        return {"template": digest, "kind": "p_true", "chat": self.chat}

    def meta(self) -> dict[str, Any]:
        return {"scoring": self.name, "template": None, "chat": self.chat, "task": FREEFORM_TASK,
                "letters": list(pf.P_TRUE_LETTERS), "prompt": self.prompt_template}


#: a two-option stand-in: LetterTask's checks read only the option count
_TWO = Question("", "", ("False", "True"))
