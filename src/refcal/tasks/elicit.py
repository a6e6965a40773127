"""Extra score sets of the chat model read by methods with a ``source`` (:mod:`refcal.calibrate.methods`).

* ``cape``: letter scores over the k cyclic shifts of the options
  (:class:`refcal.tasks.PermutedLetterTask`), one set per prompt template;
* ``elicitation``: Tian et al.'s verbalised top-1 (METHODS.md §1.2), one greedy reply per question;
* ``elicitation_ensemble``: Xiong et al.'s five hinted members aggregated with ``avg_conf`` (§1.3).

The two elicitation tasks are ordinary generation tasks of the scorer (:func:`refcal.scoring.score_questions`:
cached per question by request hash, resumable, batched), with the chat template on and greedy decoding.
Their score-set rows are ``[answered option (-1: none), confidence, 0, ...]`` (k wide; not logits: the
methods read the first two columns as a :class:`refcal.metrics.TopLabel`); the replies and the parse outcome are columns. A reply that does
not parse, or whose answer names no option, follows the METHODS.md default policy: a wrong answer with
confidence 1/k. Failures are counted (:func:`parse_failures`), written to ``metrics.json`` and shown in
the report, never dropped. Elicitation prompts are zero-shot (``--fewshot`` does not apply to them) and do
not depend on ``--template``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.base import Question
from ..errors import InputError, ModelError
from . import prompts_freeform as pf
from .base import Task, keys_are
from .multiple_choice import PermutedLetterTask
from .parsing import ParseResult, avg_conf, option_index, parse_answer_confidence, parse_guess_probability
from .requests import GenerateRequest

#: new tokens per reply: "Guess: B\nProbability: 0.85" is ~12 tokens; room for a short preamble
MAX_NEW_TOKENS = 32
#: the failure of an answer that parsed but names no option (e.g. "Paris", or a letter beyond the k-th)
NOT_AN_OPTION = "answer is not an option letter"
SOURCES: tuple[str, ...] = ("cape", "elicitation", "elicitation_ensemble")


def _reply(results: Sequence[Any]) -> list[str]:
    out = []
    for r in results:
        if not isinstance(r, str):
            raise ModelError(f"the backend returned {type(r).__name__} for a generation, not text")
        out.append(r.strip())
    return out


def _valid(raw: Any, question: Question, n: int) -> bool:
    return (keys_are(raw, {"texts", "k"}) and raw["k"] == len(question.choices) and isinstance(raw["texts"], list)
            and len(raw["texts"]) == n and all(isinstance(t, str) for t in raw["texts"]))


def _as_option(res: ParseResult, k: int) -> tuple[int, ParseResult]:
    """The option a parsed reply names, and the result marked failed when it names none."""
    if not res.ok:
        return -1, res
    idx = option_index(res.answer, k)
    if idx < 0:
        return -1, ParseResult(res.answer, res.confidence, False, NOT_AN_OPTION, res.clipped)
    return idx, res


class ElicitationTask:
    """Tian et al.'s multiple-choice verbalised confidence: ``Guess: <letter>`` / ``Probability: <p>``."""

    kind = "generate"
    name = "elicitation"
    n_members = 1

    def __init__(self, *, max_new_tokens: int = MAX_NEW_TOKENS):
        self.max_new_tokens = int(max_new_tokens)

    def prompts(self, question: Question) -> list[str]:
        return [pf.tian_mc_prompt(question.question, question.choices, question.subject)]

    def parse(self, text: str) -> ParseResult:
        return parse_guess_probability(text)

    def requests(self, question: Question, fewshot: Sequence[Question] = ()) -> list[Any]:
        return [GenerateRequest(p, self.max_new_tokens, (), True) for p in self.prompts(question)]

    def reduce(self, question: Question, results: Sequence[Any]) -> Any:
        return {"texts": _reply(results), "k": len(question.choices)}

    def valid(self, question: Question, raw: Any) -> bool:
        return _valid(raw, question, self.n_members)

    def outcome(self, raw: Any) -> tuple[int, float, list[ParseResult]]:
        """``(answered option or -1, confidence, parse result of each member)`` after the failure policy."""
        k = raw["k"]
        idx, res = _as_option(self.parse(raw["texts"][0]), k)
        return (idx, float(res.confidence), [res]) if res.ok else (-1, 1.0 / k, [res])

    def finish(self, raw: Any) -> list[float | None]:
        idx, conf, _ = self.outcome(raw)
        return [float(idx), conf] + [0.0] * (raw["k"] - 2)  # k wide, so the labels stay valid option indices

    def cache_key(self) -> dict[str, Any]:
        return {"template": None, "kind": self.name, "chat": True, "max_new_tokens": self.max_new_tokens}

    def columns(self, raws: Sequence[Any]) -> dict[str, list[Any]]:
        outcomes = [self.outcome(r) for r in raws]
        cols: dict[str, list[Any]] = {
            "reply": [r["texts"][0] for r in raws],
            # the answer used (member 0's): its parse failure, or None when it parsed and names an option
            "parse_failure": [None if idx >= 0 else res[0].reason or NOT_AN_OPTION for idx, _, res in outcomes]}
        if self.n_members > 1:
            cols["n_member_failures"] = [sum(not m.ok for m in res) for _, _, res in outcomes]
        return cols

    def meta(self) -> dict[str, Any]:
        return {"scoring": self.name, "template": None, "chat": True, "max_new_tokens": self.max_new_tokens,
                "rows": "[answered option (-1: none), confidence, 0 padding to k]", "prompt": pf.TIAN_MC_PROMPT}


class ElicitationEnsembleTask(ElicitationTask):
    """Xiong et al.'s five members (no hint, four misleading hints naming a random option, drawn from
    ``seed`` and the question id), ``Answer and Confidence (0-100)`` replies, ``avg_conf`` aggregation."""

    name = "elicitation_ensemble"
    n_members = len(pf.XIONG_HINTS)

    def __init__(self, *, seed: int = 0, max_new_tokens: int = MAX_NEW_TOKENS):
        super().__init__(max_new_tokens=max_new_tokens)
        self.seed = int(seed)

    def prompts(self, question: Question) -> list[str]:
        rng = np.random.default_rng([self.seed, zlib.crc32(str(question.id).encode("utf-8"))])
        return pf.xiong_ensemble_prompts(question.question, question.choices, rng)[0]

    def parse(self, text: str) -> ParseResult:
        return parse_answer_confidence(text)

    def outcome(self, raw: Any) -> tuple[int, float, list[ParseResult]]:
        k = raw["k"]
        members = [_as_option(self.parse(t), k) for t in raw["texts"]]
        answers = [str(i) if r.ok else None for i, r in members]
        confs = [r.confidence if r.ok else None for _, r in members]
        answer, conf = avg_conf(answers, confs, n_options=k)
        results = [r for _, r in members]
        return (int(answer), float(conf), results) if answer is not None else (-1, 1.0 / k, results)

    def cache_key(self) -> dict[str, Any]:
        return {**super().cache_key(), "seed": self.seed}

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "prompt": pf.XIONG_PROMPT.format(answer_type="option letter"),
                "hints": list(pf.XIONG_HINTS), "seed": self.seed, "aggregation": "avg_conf"}


def source_task(source: str, *, template: int, chat_template: bool, seed: int, cape_orders: str = "cyclic",
                cape_templates: str = "one") -> Task:
    """The task that scores ``source`` for the chat model (``cape_*``: CAPE's members, see
    :class:`refcal.tasks.PermutedLetterTask`)."""
    if source == "cape":
        return PermutedLetterTask(template=template, chat=chat_template, orders=cape_orders, templates=cape_templates)
    if source == "elicitation":
        return ElicitationTask()
    if source == "elicitation_ensemble":
        return ElicitationEnsembleTask(seed=seed)
    raise InputError(f"unknown score source {source!r}; choose one of {', '.join(SOURCES)}")


def per_template(source: str) -> bool:
    """Whether ``source`` is scored once per prompt template (CAPE) or once per run (elicitation)."""
    return source == "cape"


def parse_failures(scores: Any) -> dict[str, int]:
    """``{"n": questions, "n_failed": ..., "<reason>": count, "n_member_failures": ...}`` of an elicitation
    score set (its ``parse_failure`` and ``n_member_failures`` columns)."""
    reasons = [r for r in np.asarray(scores.columns.get("parse_failure", []), dtype=object).tolist() if r]
    out = {"n": int(len(scores)), "n_failed": len(reasons)}
    for r in reasons:
        out[str(r)] = out.get(str(r), 0) + 1
    members = scores.columns.get("n_member_failures")
    if members is not None:
        out["n_member_failures"] = int(np.asarray(members, dtype=np.int64).sum())
    return out


__all__ = ["SOURCES", "MAX_NEW_TOKENS", "NOT_AN_OPTION", "ElicitationTask", "ElicitationEnsembleTask",
           "source_task", "per_template", "parse_failures"]
