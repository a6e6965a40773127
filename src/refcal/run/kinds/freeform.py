"""The free-form kind of ``refcal run`` (TriviaQA, NQ-open, TruthfulQA generation, user files with ``question``
and ``answers``): METHODS.md §3.

1. **Generate**: the chat model answers each question greedily (chat template on, at most 32 new tokens,
   stop at the first newline), through the scorer's cache, so an interrupted run resumes without
   generating finished answers again.
2. **Judge** each answer (evaluation only; :mod:`refcal.tasks.judges`): the labels of the metrics.
3. **Score** each (question, chat answer) pair with the inputs the selected methods name, each once. The
   roles are those of multiple choice: ``scores`` (what a method calls ``chat``) is the chat model's
   **P(True)** 2-vector, the quantity every calibrator transforms; ``base`` the base model's P(True);
   ``likelihood`` the answer's mean token probability under a model (the method ``likelihood``: the chat
   model's; ``reeval``: the base model's); ``verbal`` the chat model's stated confidence (Tian et al.).
   Before the reshape of issue 19 the method ``chat`` was the answer likelihood and ``p_true`` the chat
   model's P(True): they are now ``likelihood`` and ``chat``.
4. **Evaluate** through :func:`refcal.run.evaluate.evaluate` like multiple choice (random calibration / test
   splits), every method's confidence ``c`` as the claim that the answer is correct, and write the run
   folder: ``scores/base.parquet`` and ``scores/chat.parquet`` are the two models' P(True) logits (meta
   ``task`` = ``"free-form P(True)"``), ``calibrator.json`` the deployable DACA on them (``task``:
   ``free-form``, so it is never applied to multiple-choice scores); each answer, its verdict and every
   method's confidence are columns of ``scores/chat.parquet``; ``metrics.json["freeform"]`` holds the judge,
   prompts, parse failures, and the example-answer table the report shows.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._urls import public_url
from ...backends import load_backend
from ...backends.base import NotSupportedError
from ...calibrate.methods import FREEFORM, METHODS
from ...data import load_freeform
from ...data.files import read_rows
from ...data.registry import _canonical, _spec
from ...errors import FitError, InputError
from ...scores import ScoreSet
from ...scoring import score_questions
from ...tasks import prompts_freeform as pf
from ...tasks.freeform import FREEFORM_TASK, AnswerLikelihoodTask, GenerateTask, PTrueTask, pair
from ...tasks.judges import ExactMatchJudge, ModelJudge, default_judge, judge_answers
from ...tasks.parsing import apply_failure_policy, count_failures, parse_guess_probability
from ..backend_options import backend_options
from ..config import RunConfig
from ..evaluate import fit_judged, part_input
from ..protocol import Part, Plan, Unit, check_splittable, random_split_indices

log = logging.getLogger(__name__)

#: Tian et al.'s reply ("Guess: ...\nProbability: ...") spans lines: stop at a blank line instead
VERBAL_MAX_NEW_TOKENS = 48
VERBAL_STOP = ("\n\n",)
#: rows of the example-answer table in the report
N_EXAMPLES = 20


def is_freeform(dataset: str, columns: Mapping[str, Any] | None = None) -> bool:
    """Whether ``dataset`` is a free-form set: a built-in with ``task == "free-form"``, or a user file with
    an ``answers`` column (or the column ``--answer-col`` names holding lists) and no option columns."""
    if _canonical(dataset) is not None:
        return _spec(dataset).info.task == "free-form"
    path = Path(dataset).expanduser()
    if not path.exists():
        return False
    cols = dict(columns or {})
    if cols.get("choices_col") or cols.get("option_cols"):
        return False
    try:
        rows = read_rows(path, None)
    except Exception:  # noqa: BLE001 - the multiple-choice loader reports what is wrong with the file
        return False
    names = {k for r in rows[:100] for k in r}
    if "choices" in names:
        return False
    return "answers" in names or (cols.get("answer_col") in names and "choices" not in names
                                  and any(isinstance(r.get(cols["answer_col"]), (list, tuple)) for r in rows[:100]))


def make_judge(spec: str | None, questions: Sequence[Any], *, api_base: str | None = None) -> Any:
    """``None`` / ``"exact"``: the default judge (ROUGE-L for TruthfulQA, else exact match); ``"contains"``:
    exact match with containment; ``"openai:MODEL"``: an OpenAI-compatible judge model at ``api_base``."""
    if spec in (None, "", "exact", "default"):
        return default_judge(questions)
    if spec == "contains":
        return ExactMatchJudge(containment=True)
    if spec.startswith("openai:"):
        if api_base is not None and not str(api_base).startswith(("http://", "https://")):
            raise InputError("--judge-api-base must be an http(s) URL such as http://127.0.0.1:8080/v1, got "
                             f"{public_url(str(api_base))!r}")
        # the judge is a generation on the OpenAI backend: its client, retries and key handling
        return ModelJudge(load_backend(spec, api_base=api_base), name=spec[len("openai:"):])
    raise InputError(f"--judge {spec!r} is not known; use exact, contains or openai:MODEL")


@dataclass
class Scored:
    """Answers, labels, and every computed input by ``(role, name)`` over all questions."""

    answers: list[str]
    labels: np.ndarray
    p_true: dict[str, ScoreSet]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # "likelihood", "base_likelihood", "verbal"
    labels_by: dict[str, np.ndarray] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)


class Freeform:
    """See the module docstring."""

    name = FREEFORM

    def prepare(self, cfg: RunConfig) -> None:
        cols = dict(cfg.columns)
        unknown = sorted(set(cols) - {"question_col", "answer_col", "id_col"})
        if unknown:
            raise InputError(f"--{unknown[0].replace('_', '-')} does not apply to free-form data; use --question-col, "
                             "--answer-col (the answers list) and --id-col")
        self.split = cfg.split or (_spec(cfg.dataset).info.default_split if _canonical(cfg.dataset) else None)
        self.questions = load_freeform(cfg.dataset, split=self.split, limit=cfg.limit, seed=cfg.seed,
                                       question_col=cols.get("question_col"), answers_col=cols.get("answer_col"),
                                       id_col=cols.get("id_col"))
        if len(self.questions) < 2:
            raise InputError(f"{len(self.questions)} question(s) are too few; raise --limit")
        check_splittable(len(self.questions), cfg)  # before generating and scoring every answer
        # judged wherever there are references: a question without them gets -1 (judge_answers' contract) and
        # is left out of the metrics, not the whole run
        self.has_labels = any(q.labelled for q in self.questions)
        n_unreferenced = sum(not q.labelled for q in self.questions)
        if self.has_labels and n_unreferenced:
            log.warning("%d of %d questions have no reference answers: they are not judged and are left out of "
                        "the metrics (fits without labels still use them)", n_unreferenced, len(self.questions))
        self.judge = make_judge(cfg.judge, self.questions, api_base=cfg.judge_api_base) if self.has_labels else None

    def _labels_of(self, answers: list[str]) -> np.ndarray:
        if self.judge is None:
            return np.full(len(self.questions), -1, dtype=np.int64)
        return judge_answers(self.judge, self.questions, answers)

    # ------------------------------------------------------------------ scoring
    def score(self, cfg: RunConfig, backends: Mapping[str, Any] | None = None) -> Scored:
        """Generate with the chat model, judge, then score every pair with both models (one model in memory
        at a time), computing only the inputs the selected methods name."""
        methods = [METHODS[k].inputs[FREEFORM] for k in cfg.methods]
        chat_in = {m.chat for m in methods}
        base_in = {m.base for m in methods if m.base is not None}
        qs = self.questions
        chat = backends["chat"] if backends else self._load(cfg, "chat")
        items = [pair(q.id, q.question) for q in qs]
        gen = self._score(chat, items, GenerateTask(chat=True), cfg, "chat")
        answers = [str(a) for a in gen.columns["answer"]]
        labels = self._labels_of(answers)
        pairs = [pair(q.id, q.question, a, int(y)) for q, a, y in zip(qs, answers, labels, strict=True)]
        out = Scored(answers, labels, {"chat": self._score(chat, pairs, PTrueTask(chat=True), cfg, "chat")})
        if "likelihood" in chat_in:
            self._likelihood(out, chat, cfg, chat=True, role="chat", name="likelihood")
        if "verbal" in chat_in:
            self._verbal(out, chat, items, cfg)
        if not backends:
            del chat
        if base_in:
            base = backends["base"] if backends else self._load(cfg, "base")
            out.p_true["base"] = self._score(base, pairs, PTrueTask(chat=False), cfg, "base")
            if "likelihood" in base_in:
                self._likelihood(out, base, cfg, chat=False, role="base", name="base_likelihood")
        return out

    def _load(self, cfg: RunConfig, role: str) -> Any:
        spec = getattr(cfg, role)
        # P(True): the bare letter after " (" / as the reply
        opts = backend_options(spec, role, flags=cfg.flags(), model_options=cfg.model_options,
                               defaults={"letter_style": "bare"})
        return load_backend(spec, api_base=cfg.api_base, **opts)

    def _score(self, backend: Any, items: list, task: Any, cfg: RunConfig, role: str) -> ScoreSet:
        return score_questions(backend, items, task=task, batch_size=cfg.batch_size, cache_dir=cfg.cache_dir,
                               progress=cfg.progress, meta={"role": role, "dataset": cfg.dataset, "split": self.split})

    def _likelihood(self, out: Scored, backend: Any, cfg: RunConfig, *, chat: bool, role: str, name: str) -> None:
        """``log [1 - c, c]`` per answer, ``c`` its geometric-mean token probability; an empty answer has no
        tokens and gets ``c = 0``."""
        qs, answers = self.questions, out.answers
        ll = np.tile([0.0, -np.inf], (len(qs), 1))
        keep = [i for i, a in enumerate(answers) if a]
        try:
            if keep:
                items = [pair(qs[i].id, qs[i].question, answers[i], int(out.labels[i])) for i in keep]
                ll[keep] = self._score(backend, items, AnswerLikelihoodTask(chat=chat), cfg, role).logits
        except NotSupportedError as e:
            out.missing[name] = f"the {role} model's backend gives no answer log-probabilities ({e})"
            return
        out.inputs[name] = ll

    def _verbal(self, out: Scored, chat: Any, items: list, cfg: RunConfig) -> None:
        """Tian et al.'s stated confidence; its labels: the correctness of the stated guess."""
        task = GenerateTask("verbal", prompt=pf.tian_freeform_prompt, max_new_tokens=VERBAL_MAX_NEW_TOKENS,
                            stop=VERBAL_STOP, chat=True, column="reply")
        replies = [str(r) for r in self._score(chat, items, task, cfg, "chat").columns["reply"]]
        parsed = [parse_guess_probability(r) for r in replies]
        final = [apply_failure_policy(p) for p in parsed]
        out.inputs["verbal"] = _two(np.array([p.confidence for p in final], dtype=np.float64))
        # the verbal confidence is about its own guess: judged like the answers (a failed parse is wrong)
        labels = self._labels_of([p.answer or "" for p in final])
        if self.has_labels:  # unreferenced questions stay -1
            labels = np.where(np.array([p.answer is None for p in final]) & (labels >= 0), 0, labels)
        out.labels_by["verbal"] = labels
        out.notes["verbal"] = {"parse_failures": count_failures(parsed), "failure_confidence": 0.5,
                               "labels": "correctness of the stated guess (a failed parse counts as wrong)"}

    # ------------------------------------------------------------------ units
    def _part(self, scored: Scored, idx: np.ndarray) -> Part:
        chat2 = scored.p_true["chat"].logits
        base2 = scored.p_true["base"].logits if "base" in scored.p_true else chat2
        return Part(base2[idx], chat2[idx], scored.labels[idx], [self.questions[i].id for i in idx],
                    extra={k: v[idx] for k, v in scored.inputs.items()},
                    labels_by={k: v[idx] for k, v in scored.labels_by.items()})

    def plan(self, cfg: RunConfig, scored: Scored) -> Plan:
        n = len(self.questions)
        units = [Unit(1, f"split{i}", self._part(scored, ci), self._part(scored, ti), plotted=i == 0)
                 for i, (ci, ti) in enumerate(random_split_indices(n, cfg))]
        pool = self._part(scored, np.arange(n)) if "base" in scored.p_true else None
        description = (f"{round(100 * cfg.calib_frac)}% calibration / {round(100 * (1 - cfg.calib_frac))}% test, "
                       f"{cfg.n_splits} random splits (seed {cfg.seed})")
        return Plan(units, description, pool, self.split, self.has_labels, kind=FREEFORM, claim=True,
                    missing=dict(scored.missing), no_labels="needs labels, and no question has reference answers",
                    premise=False, calibrator_inputs={"task": FREEFORM_TASK, "n_questions": n},
                    no_pool="no base model scores (no method that needs the base model was chosen)")

    def n_questions(self, cfg: RunConfig, scored: Scored) -> int:
        return len(self.questions)

    # ------------------------------------------------------------------ run folder
    def finish(self, cfg: RunConfig, evaluation: Any, scored: Scored) -> tuple[dict, dict[str, Any]]:
        """``metrics.json["freeform"]``, the P(True) score files with the answers, and ``config.json``."""
        res = evaluation.result
        conf = self._confidences(cfg, scored, [k for k in cfg.methods if k not in res.unavailable])
        qs, labels = self.questions, scored.labels
        freeform = {
            "task": "free-form", "n_questions": len(qs), "n_empty_answers": int(sum(not a for a in scored.answers)),
            "accuracy": float((labels[labels >= 0] == 1).mean()) if self.has_labels else None,
            "n_unjudged": int((labels < 0).sum()),
            "judge": self.judge.config if self.judge is not None else None,
            "generation": {"prompt": pf.GENERATION_PROMPT, "max_new_tokens": pf.GENERATION_MAX_NEW_TOKENS,
                           "stop": list(pf.GENERATION_STOP), "chat_template": True, "decoding": "greedy"},
            "prompts": {"p_true": pf.P_TRUE_PROMPT, "p_true_letters": list(pf.P_TRUE_LETTERS),
                        "p_true_raw_suffix": pf.P_TRUE_SCORED_SUFFIX, "verbal": pf.TIAN_FREEFORM_PROMPT,
                        "reeval_context": pf.GENERATION_PROMPT},
            "methods": {k: {"needs": METHODS[k].inputs[FREEFORM].needs, "labels": METHODS[k].needs_labels,
                            "base_model": METHODS[k].needs_base(FREEFORM), "generation": True,
                            **scored.notes.get(k, {})} for k in cfg.methods},
            "confidence": "each method's confidence c that the answer is correct, evaluated as the claim 'the "
                          "answer is correct' held with confidence c (ECE bins c against the share of correct "
                          "answers, AUROC ranks correct above wrong answers by c, NLL is the binary log loss); chat: "
                          "the chat model's P(True); likelihood and reeval: exp(mean token log-probability) of the "
                          "answer under the chat / base model; an empty answer gets c = 0",
            "examples": [{"id": qs[i].id, "question": qs[i].question, "answer": scored.answers[i],
                          "references": list(qs[i].answers[:3]), "correct": int(labels[i]),
                          "confidence": {k: round(float(v[i]), 4) for k, v in conf.items()}}
                         for i in range(min(N_EXAMPLES, len(qs)))],
        }
        res.freeform = freeform
        config = cfg.to_dict()
        config.update(chat_template=True, freeform={k: freeform[k] for k in ("judge", "generation", "prompts")})
        res.config = config
        return self._score_files(cfg, scored, conf), config

    def _confidences(self, cfg: RunConfig, scored: Scored, usable: list[str]) -> dict[str, np.ndarray]:
        """Every usable method's confidence on every question (fitted ones: fitted on all questions)."""
        part = self._part(scored, np.arange(len(self.questions)))
        out: dict[str, np.ndarray] = {}
        for k in usable:
            m, inputs = METHODS[k], METHODS[k].inputs[FREEFORM]
            chat, base = part_input(part, "chat", inputs.chat), part_input(part, "base", inputs.base)
            try:
                fitted = fit_judged(m, chat, base, part.labels_by.get(inputs.labels, part.labels), cfg.scaling)
            except FitError:
                continue
            out[k] = np.exp(m.predict(fitted, chat, base, part.chat, FREEFORM)[:, 1])
        return out

    def _score_files(self, cfg: RunConfig, scored: Scored, conf: Mapping[str, np.ndarray]) -> dict:
        """The P(True) score sets as written to ``scores/``: labels = correctness; the chat model's also
        carries each answer and every method's confidence as columns."""
        out = {}
        for role, s in scored.p_true.items():
            cols = dict(s.columns)
            if role == "chat":
                cols["answer"] = list(scored.answers)
                cols["correct"] = [int(v) for v in scored.labels]
                cols.update({f"confidence_{k}": [float(x) for x in v] for k, v in conf.items()})
            ys = [int(v) if v >= 0 else None for v in scored.labels]
            rows = [[None if np.isneginf(v) else float(v) for v in r] for r in s.logits]
            out[(role, 1, self.split)] = ScoreSet.from_rows(
                list(s.ids), rows, ys, meta={**s.meta, "task": FREEFORM_TASK, "model": getattr(cfg, role)},
                columns=cols, source=f"{role} P(True)")
        return out


def _two(c: np.ndarray) -> np.ndarray:
    """Confidences c -> log [1 - c, c] (exact at 0 and 1: log 0 = -inf)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return np.stack([np.log1p(-c), np.log(c)], axis=1)
