"""``refcal run`` on free-form questions (TriviaQA, NQ-open, TruthfulQA generation, user files with
``question`` and ``answers``): METHODS.md §3.

1. **Generate**: the chat model answers each question greedily (chat template on, at most 32 new tokens,
   stop at the first newline), through the scorer's cache, so an interrupted run resumes without
   generating finished answers again.
2. **Judge** each answer (evaluation only; :mod:`refcal.tasks.judges`): the labels of the metrics.
3. **Score** each (question, chat answer) pair; every method gives a confidence ``c`` in [0, 1] that the
   answer is correct (:data:`FREEFORM_METHODS`), evaluated as that claim held with confidence ``c``
   (:class:`refcal.metrics.TopLabel`, label 1 = correct): ECE bins ``c`` against the share of correct
   answers, AUROC ranks correct above wrong answers by ``c``, NLL is the binary log loss.
4. **Evaluate** as for multiple choice (random calibration / test splits) and write the run folder:
   ``scores/base.parquet`` and ``scores/chat.parquet`` are the two models' P(True) logits (meta ``task`` =
   ``"free-form P(True)"``), ``calibrator.json`` the deployable DACA on them (``task`` recorded, so it is
   never applied to multiple-choice scores), ``answers.parquet``-free: each answer, its verdict and every
   method's confidence are columns of ``scores/chat.parquet``; ``metrics.json["freeform"]`` holds the
   judge, prompts, parse failures, and the example-answer table the report shows.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__, metrics
from .._math import log_softmax
from ..backends.base import NotSupportedError
from ..errors import FitError, InputError
from ..metrics import TopLabel
from ..scores import ScoreSet
from ..tasks import prompts_freeform as pf
from ..tasks.freeform import FREEFORM_TASK, AnswerLikelihoodTask, GenerateTask, PTrueTask, pair
from .config import RunConfig, check_api_letters
from .evaluate import Evaluation, Unfitted, _fit_record, _unit_metrics, aggregate, bootstrap, selective
from .result import DeployedCalibrator, Diagnostics, RunResult

log = logging.getLogger(__name__)

#: Tian et al.'s reply ("Guess: ...\nProbability: ...") spans lines: stop at a blank line instead
VERBAL_MAX_NEW_TOKENS = 48
VERBAL_STOP = ("\n\n",)
#: rows of the example-answer table in the report
N_EXAMPLES = 20


# ---------------------------------------------------------------------------------------------- methods
@dataclass(frozen=True)
class FreeformMethod:
    """One free-form method: where its confidence comes from and what it needs.

    ``source``: ``"fit"`` (a registry method fitted on the two models' P(True) 2-vectors: ``daca``,
    ``naive``, ``ts``), ``"p_true_chat"`` / ``"p_true_base"`` (softmax of a model's P(True) letters), or a
    fixed confidence computed per question (``"chat_likelihood"``, ``"reeval"``, ``"verbal"``).
    """

    key: str
    label: str
    source: str
    needs_labels: bool = False
    needs_base: bool = False
    needs: str = ""  # what it asks of the models, recorded in metrics.json


FREEFORM_METHODS: dict[str, FreeformMethod] = {m.key: m for m in (
    FreeformMethod("chat", "chat: answer likelihood", "chat_likelihood",
                   needs="chat model: teacher-forced answer log-probabilities (cloze)"),
    FreeformMethod("p_true", "chat P(True)", "p_true_chat", needs="chat model: P(True) letters"),
    FreeformMethod("base", "base P(True)", "p_true_base", needs_base=True, needs="base model: P(True) letters"),
    FreeformMethod("naive", "naive alignment", "fit", needs_base=True,
                   needs="both models' P(True) letters, no labels"),
    FreeformMethod("daca", "DACA", "fit", needs_base=True,
                   needs="both models' P(True) letters, no labels"),
    FreeformMethod("reeval", "ReEval (base likelihood)", "reeval", needs_base=True,
                   needs="base model: teacher-forced answer log-probabilities (cloze), no labels"),
    FreeformMethod("verbal", "verbal (Tian et al.)", "verbal",
                   needs="chat model: a second generation (Tian prompt), parsed"),
    FreeformMethod("ts", "TS of P(True) (oracle)", "fit", needs_labels=True,
                   needs="chat model's P(True) letters and the labels of the calibration questions"),
)}
DEFAULT_FREEFORM_METHODS: tuple[str, ...] = tuple(FREEFORM_METHODS)


def parse_freeform_methods(value: str | Sequence[str] | None) -> list[str]:
    """``--methods`` for free-form runs: None, ``default`` or ``all`` -> every one of :data:`FREEFORM_METHODS`;
    ``no-generation`` -> all but ``verbal`` (a second generation); or a comma-separated list of keys."""
    if value is None:
        return list(DEFAULT_FREEFORM_METHODS)
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else [str(v).strip() for v in value]
    items = [v for v in items if v]
    # the multiple-choice keywords: every free-form method answers first, so "no-generation" leaves out only
    # the second generation (verbal)
    keywords = {"all": list(FREEFORM_METHODS), "default": list(DEFAULT_FREEFORM_METHODS),
                "no-generation": [k for k in FREEFORM_METHODS if k != "verbal"]}
    items = [k for v in items for k in keywords.get(v, [v])]
    bad = [v for v in items if v not in FREEFORM_METHODS]
    if bad or not items:
        raise InputError(f"method {bad[0] if bad else ''!r} does not apply to free-form answers; choose from "
                         f"{', '.join(FREEFORM_METHODS)} (or all)")
    return [k for k in FREEFORM_METHODS if k in items]


# ---------------------------------------------------------------------------------------------- data
def is_freeform(dataset: str, columns: Mapping[str, Any] | None = None) -> bool:
    """Whether ``dataset`` is a free-form set: a built-in with ``task == "free-form"``, or a user file with
    an ``answers`` column (or the column ``--answer-col`` names holding lists) and no option columns."""
    from ..data.registry import _canonical, _spec

    if _canonical(dataset) is not None:
        return _spec(dataset).info.task == "free-form"
    path = Path(dataset).expanduser()
    if not path.exists():
        return False
    cols = dict(columns or {})
    if cols.get("choices_col") or cols.get("option_cols"):
        return False
    from ..data.files import read_rows

    try:
        rows = read_rows(path, None)
    except Exception:  # noqa: BLE001 - the multiple-choice loader reports what is wrong with the file
        return False
    names = {k for r in rows[:100] for k in r}
    if "choices" in names:
        return False
    return "answers" in names or (cols.get("answer_col") in names and "choices" not in names
                                  and any(isinstance(r.get(cols["answer_col"]), (list, tuple)) for r in rows[:100]))


def load_freeform_questions(cfg: RunConfig, split: str | None) -> list:
    from ..data import load_freeform

    cols = dict(cfg.columns)
    unknown = sorted(set(cols) - {"question_col", "answer_col", "id_col"})
    if unknown:
        raise InputError(f"--{unknown[0].replace('_', '-')} does not apply to free-form data; use --question-col, "
                         "--answer-col (the answers list) and --id-col")
    return load_freeform(cfg.dataset, split=split, limit=cfg.limit, seed=cfg.seed,
                         question_col=cols.get("question_col"), answers_col=cols.get("answer_col"),
                         id_col=cols.get("id_col"))


def make_judge(spec: str | None, questions: Sequence[Any], *, api_base: str | None = None) -> Any:
    """``None`` / ``"exact"``: the default judge (ROUGE-L for TruthfulQA, else exact match); ``"contains"``:
    exact match with containment; ``"openai:MODEL"``: an OpenAI-compatible judge model at ``api_base``."""
    from ..backends import load_backend
    from ..tasks.judges import ExactMatchJudge, ModelJudge, default_judge

    if spec in (None, "", "exact", "default"):
        return default_judge(questions)
    if spec == "contains":
        return ExactMatchJudge(containment=True)
    if spec.startswith("openai:"):
        if api_base is not None and not str(api_base).startswith(("http://", "https://")):
            from .._urls import public_url

            raise InputError("--judge-api-base must be an http(s) URL such as http://127.0.0.1:8080/v1, got "
                             f"{public_url(str(api_base))!r}")
        # the judge is a generation on the OpenAI backend: its client, retries and key handling
        return ModelJudge(load_backend(spec, api_base=api_base), name=spec[len("openai:"):])
    raise InputError(f"--judge {spec!r} is not known; use exact, contains or openai:MODEL")


# ---------------------------------------------------------------------------------------------- scoring
@dataclass
class _Scored:
    answers: list[str]
    p_true: dict[str, ScoreSet]  # role -> P(True) scores
    loglik: dict[str, np.ndarray]  # "chat" / "base" -> log [1 - c, c] of the answer likelihood
    replies: list[str] | None
    unsupported: dict[str, str]


def _load(spec: str, cfg: RunConfig) -> Any:
    from dataclasses import fields

    from ..backends import load_backend, options_class
    from ..options import is_api_model

    kwargs: dict[str, Any] = {}
    if not is_api_model(spec):
        known = {f.name for f in fields(options_class(spec))}
        for key, value in (("batch_size", cfg.batch_size), ("device", cfg.device), ("dtype", cfg.dtype),
                           ("letter_style", "bare")):  # P(True): the bare letter after " (" / as the reply
            if key in known and value is not None:
                kwargs[key] = value
    elif cfg.api_letters is not None:  # --api-letters (P(True) asks for letters)
        kwargs["letters"] = cfg.api_letters
    return load_backend(spec, api_base=cfg.api_base, **kwargs)


def _score(backend: Any, items: list, task: Any, cfg: RunConfig, role: str, split: str | None) -> ScoreSet:
    from ..scoring import score_questions

    return score_questions(backend, items, task=task, batch_size=cfg.batch_size, cache_dir=cfg.cache_dir,
                           progress=cfg.progress, meta={"role": role, "dataset": cfg.dataset, "split": split})


def _loglik(backend: Any, qs: list, answers: list[str], labels: np.ndarray, *, chat: bool, cfg: RunConfig,
            role: str, split: str | None) -> np.ndarray:
    """``log [1 - c, c]`` per answer, ``c`` its geometric-mean token probability; an empty answer has no
    tokens and gets ``c = 0``."""
    out = np.tile([0.0, -np.inf], (len(qs), 1))
    keep = [i for i, a in enumerate(answers) if a]
    if keep:
        items = [pair(qs[i].id, qs[i].question, answers[i], int(labels[i])) for i in keep]
        out[keep] = _score(backend, items, AnswerLikelihoodTask(chat=chat), cfg, role, split).logits
    return out


def score_freeform(cfg: RunConfig, qs: list, methods: Sequence[str], labels_of: Callable[[list[str]], np.ndarray],
                   split: str | None, backends: Mapping[str, Any] | None = None) -> tuple[_Scored, np.ndarray]:
    """Generate with the chat model, judge, then score every pair with both models (one model in memory at
    a time). Returns the scores and the labels of the answers."""
    chosen = {FREEFORM_METHODS[m].source for m in methods}
    unsupported: dict[str, str] = {}
    chat = backends["chat"] if backends else _load(cfg.chat, cfg)
    items = [pair(q.id, q.question) for q in qs]
    gen = _score(chat, items, GenerateTask(chat=True), cfg, "chat", split)
    answers = [str(a) for a in gen.columns["answer"]]
    labels = labels_of(answers)
    pairs = [pair(q.id, q.question, a, int(y)) for q, a, y in zip(qs, answers, labels, strict=True)]
    p_true = {"chat": _score(chat, pairs, PTrueTask(chat=True), cfg, "chat", split)}
    loglik: dict[str, np.ndarray] = {}
    if "chat_likelihood" in chosen:
        try:
            loglik["chat"] = _loglik(chat, qs, answers, labels, chat=True, cfg=cfg, role="chat", split=split)
        except NotSupportedError as e:
            unsupported["chat"] = f"the chat model's backend gives no answer log-probabilities ({e})"
    replies = None
    if "verbal" in chosen:
        task = GenerateTask("verbal", prompt=pf.tian_freeform_prompt, max_new_tokens=VERBAL_MAX_NEW_TOKENS,
                            stop=VERBAL_STOP, chat=True, column="reply")
        replies = [str(r) for r in _score(chat, items, task, cfg, "chat", split).columns["reply"]]
    if not backends:
        del chat
    if any(FREEFORM_METHODS[m].needs_base for m in methods):
        base = backends["base"] if backends else _load(cfg.base, cfg)
        p_true["base"] = _score(base, pairs, PTrueTask(chat=False), cfg, "base", split)
        if "reeval" in chosen:
            try:
                loglik["base"] = _loglik(base, qs, answers, labels, chat=False, cfg=cfg, role="base", split=split)
            except NotSupportedError as e:
                unsupported["reeval"] = f"the base model's backend gives no answer log-probabilities ({e})"
    return _Scored(answers, p_true, loglik, replies, unsupported), labels


# ---------------------------------------------------------------------------------------------- confidences
def _two(c: np.ndarray) -> np.ndarray:
    """Confidences c -> log [1 - c, c] (exact at 0 and 1: log 0 = -inf)."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore"):
        return np.stack([np.log1p(-c), np.log(c)], axis=1)


def _correct_with(lp: np.ndarray) -> TopLabel:
    """``log [1 - c, c]`` -> the claim "this answer is correct" (option 1) held with confidence ``c``.

    Evaluated against the verdicts (label 1 = correct), every top-label metric is then the usual one of
    free-form calibration: ECE / MCE / AECE bin ``c`` against the share of correct answers, Brier is
    ``(c - correct)^2``, AUROC ranks correct above wrong answers by ``c``, and accuracy is the answers' own.
    """
    c = np.exp(np.asarray(lp, dtype=np.float64)[:, 1])
    return TopLabel(np.ones(len(c), dtype=np.int64), np.clip(c, 0.0, 1.0))


# ---------------------------------------------------------------------------------------------- the run
def run_freeform(cfg: RunConfig, out_dir: str | os.PathLike, *, judge: str | None = None,
                 judge_api_base: str | None = None, methods: Sequence[str] | str | None = None,
                 overwrite: bool = False, finish: Callable[[Path], Any] | None = None,
                 backends: Mapping[str, Any] | None = None) -> Path:
    """The whole free-form job (see the module docstring); returns the run folder.

    ``methods``: keys of :data:`FREEFORM_METHODS` (default all); ``backends``: ``{"chat": ..., "base": ...}``
    backend objects to use instead of loading ``cfg.chat`` / ``cfg.base`` (tests).
    """
    from ..calibrate import DACA, agreement_diagnostics
    from ..tasks.parsing import apply_failure_policy, count_failures, parse_guess_probability
    from .folder import check_run_dir, write_run_folder

    keys = parse_freeform_methods(methods)
    if not 0.0 < cfg.calib_frac < 1.0:
        raise InputError(f"--calib-frac must be strictly between 0 and 1, got {cfg.calib_frac}")
    if cfg.n_splits < 1:
        raise InputError(f"--n-splits must be at least 1, got {cfg.n_splits}")
    if cfg.limit is not None and cfg.limit < 2:
        raise InputError(f"--limit must be at least 2 (or 0 for every question), got {cfg.limit}")
    if cfg.scaling != "temperature":
        raise InputError("free-form P(True) has two options: use --scaling temperature")
    check_api_letters(cfg)
    out_dir = check_run_dir(out_dir, overwrite=overwrite)  # before any slow work
    from ..data.registry import _canonical, _spec

    t_start = time.perf_counter()  # wall time: loading the questions through evaluation, as for multiple choice
    split = cfg.split or (_spec(cfg.dataset).info.default_split if _canonical(cfg.dataset) else None)
    qs = load_freeform_questions(cfg, split)
    if len(qs) < 2:
        raise InputError(f"{len(qs)} question(s) are too few; raise --limit")
    from .protocol import check_splittable

    check_splittable(len(qs), cfg)  # before generating and scoring every answer
    # judged wherever there are references: a question without them gets -1 (judge_answers' contract) and
    # is left out of the metrics, not the whole run
    has_labels = any(q.labelled for q in qs)
    n_unreferenced = sum(not q.labelled for q in qs)
    if has_labels and n_unreferenced:
        log.warning("%d of %d questions have no reference answers: they are not judged and are left out of the "
                    "metrics (fits without labels still use them)", n_unreferenced, len(qs))
    jd = make_judge(judge, qs, api_base=judge_api_base) if has_labels else None

    def labels_of(answers: list[str]) -> np.ndarray:
        from ..tasks.judges import judge_answers

        return judge_answers(jd, qs, answers) if jd is not None else np.full(len(qs), -1, dtype=np.int64)

    t0 = time.perf_counter()
    sc, labels = score_freeform(cfg, qs, keys, labels_of, split, backends)
    score_seconds = time.perf_counter() - t0
    n = len(qs)
    chat2 = sc.p_true["chat"].logits
    base2 = sc.p_true["base"].logits if "base" in sc.p_true else None

    # fixed confidences (log [1 - c, c]) and their labels
    fixed: dict[str, np.ndarray] = {}
    method_labels: dict[str, np.ndarray] = {}
    notes: dict[str, Any] = {}
    if "chat" in sc.loglik:
        fixed["chat_likelihood"] = sc.loglik["chat"]
    if "base" in sc.loglik:
        fixed["reeval"] = sc.loglik["base"]
    if sc.replies is not None:
        parsed = [parse_guess_probability(r) for r in sc.replies]
        final = [apply_failure_policy(p) for p in parsed]
        fixed["verbal"] = _two(np.array([p.confidence for p in final], dtype=np.float64))
        guesses = [p.answer or "" for p in final]
        # the verbal confidence is about its own guess: judged like the answers (a failed parse is wrong)
        method_labels["verbal"] = labels_of(guesses)
        if has_labels:  # unreferenced questions stay -1
            failed = np.array([p.answer is None for p in final]) & (method_labels["verbal"] >= 0)
            method_labels["verbal"] = np.where(failed, 0, method_labels["verbal"])
        notes["verbal"] = {"parse_failures": count_failures(parsed), "failure_confidence": 0.5,
                           "labels": "correctness of the stated guess (a failed parse counts as wrong)"}
    n_empty = sum(not a for a in sc.answers)

    unavailable: dict[str, str] = {}
    for k in keys:
        m = FREEFORM_METHODS[k]
        if m.needs_labels and not has_labels:
            unavailable[k] = "needs labels, and no question has reference answers"
        elif m.needs_base and base2 is None:
            unavailable[k] = "needs the base model's scores"
        elif m.source in ("chat_likelihood", "reeval") and m.source not in fixed:
            unavailable[k] = sc.unsupported.get("chat" if k == "chat" else "reeval", "not scored")
    usable = [k for k in keys if k not in unavailable]
    for k, why in unavailable.items():
        log.warning("%s is not evaluated: %s", FREEFORM_METHODS[k].label, why)

    # units: random calibration / test splits, as for multiple choice
    from .protocol import random_split_indices

    splits_idx = random_split_indices(n, cfg)
    per_unit: list[dict[str, dict[str, float]]] = []
    fits: dict[str, list] = {}
    plotted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    from ..calibrate.methods import METHODS

    for ui, (ci, ti) in enumerate(splits_idx):
        row: dict[str, dict[str, float]] = {}
        for k in usable:
            m = FREEFORM_METHODS[k]
            y = method_labels.get(k, labels)
            if m.source == "fit":
                reg = METHODS[k]
                # a labelled fit sees the judged questions only; label-free fits see every one, never a label
                fi = ci[labels[ci] >= 0] if m.needs_labels else ci
                b_c = base2[fi] if base2 is not None else chat2[fi]
                try:
                    fitted = reg.fit(b_c, chat2[fi], labels[fi] if m.needs_labels else None, scaling="temperature")
                except FitError as e:
                    log.warning("%s: %s; this unit is evaluated uncalibrated", m.label, e)
                    fitted = Unfitted(str(e))
                fits.setdefault(k, []).append(_fit_record(1, f"split{ui}", fitted))
                lp = fitted.predict_log_proba(chat2[ti])
            elif m.source == "p_true_chat":
                lp = log_softmax(chat2[ti])
            elif m.source == "p_true_base":
                lp = log_softmax(base2[ti])
            else:
                lp = fixed[m.source][ti]
            tl = _correct_with(lp)
            judged = y[ti] >= 0  # metrics on the judged answers (questions without references are -1)
            if has_labels and judged.any():
                row.update(_unit_metrics({k: tl[judged]}, y[ti][judged], cfg.n_bins))
                # the binary log loss of c against the verdict (a TopLabel carries no NLL)
                row[k]["nll"] = metrics.nll_from_log_proba(lp[judged], y[ti][judged])
            else:
                row.update(_unit_metrics({k: tl}, None, cfg.n_bins))
            if ui == 0:
                plotted[k] = (tl, y[ti])
        per_unit.append(row)

    # the deployable calibrator: DACA on every question's P(True) 2-vectors
    deployed = None
    if base2 is not None:
        try:
            deployed = DACA(scaling="temperature").fit(base2, chat2)
            deployed.task_ = FREEFORM_TASK
            calibrator = DeployedCalibrator(temperature=float(deployed.temperature_), n_agree=int(deployed.n_agree_),
                                            agreement_rate=float(deployed.agreement_rate_))
        except FitError as e:
            log.warning("no deployable calibrator: %s", e)
            deployed, calibrator = None, DeployedCalibrator(error=str(e))
        diag = Diagnostics(**agreement_diagnostics(base2, chat2, labels if has_labels else None))
    else:
        calibrator = DeployedCalibrator(error="no base model scores (no method that needs the base model was chosen)")
        diag = None

    first_test = splits_idx[0][1]
    result = RunResult(
        refcal_version=__version__, config=cfg.to_dict(), has_labels=has_labels, n_questions=n,
        n_eval=len(first_test), n_units=len(per_unit),
        protocol=(f"{round(100 * cfg.calib_frac)}% calibration / {round(100 * (1 - cfg.calib_frac))}% test, "
                  f"{cfg.n_splits} random splits (seed {cfg.seed})"),
        methods=aggregate(per_unit), method_labels={k: FREEFORM_METHODS[k].label for k in keys},
        unavailable=unavailable, diagnostics=diag, fits=fits, calibrator=calibrator,
        fallbacks={m: sum(r.error is not None for r in recs) for m, recs in fits.items()},
    )
    if has_labels and plotted:
        for k, (lp, y) in plotted.items():
            judged = y >= 0
            if not judged.any():
                continue
            result.selective.update(selective({k: lp[judged]}, y[judged]))
            b = bootstrap({k: lp[judged]}, y[judged], n_bins=cfg.n_bins, seed=cfg.seed)
            if result.bootstrap is None:
                result.bootstrap = b
            else:
                result.bootstrap.methods.update(b.methods)
    result.timing = {"wall_seconds": round(time.perf_counter() - t_start, 2), "scoring_seconds": round(score_seconds, 2),
                     "evaluation_seconds": round(time.perf_counter() - t0 - score_seconds, 2)}
    ids = [qs[i].id for i in first_test]
    predictions = {k: (ids, lp, [int(v) if v >= 0 else None for v in y]) for k, (lp, y) in plotted.items()}

    # confidences of every method on every question (fit-based ones: fitted on all questions)
    conf_all: dict[str, np.ndarray] = {}
    for k in usable:
        m = FREEFORM_METHODS[k]
        if m.source == "p_true_chat":
            conf_all[k] = np.exp(log_softmax(chat2))[:, 1]
        elif m.source == "p_true_base":
            conf_all[k] = np.exp(log_softmax(base2))[:, 1]
        elif m.source == "fit":
            if k == "daca" and deployed is not None:
                conf_all[k] = deployed.predict_proba(chat2)[:, 1]
            elif k == "ts" and has_labels:
                try:
                    judged = labels >= 0
                    conf_all[k] = METHODS["ts"].fit(None, chat2[judged], labels[judged]).predict_proba(chat2)[:, 1]
                except FitError:
                    pass
            elif k == "naive" and base2 is not None:
                try:
                    conf_all[k] = METHODS["naive"].fit(base2, chat2, None).predict_proba(chat2)[:, 1]
                except FitError:
                    pass
        else:
            conf_all[k] = np.exp(fixed[m.source][:, 1])

    freeform = {
        "task": "free-form",
        "n_questions": n, "n_empty_answers": int(n_empty),
        "accuracy": float((labels[labels >= 0] == 1).mean()) if has_labels else None,
        "n_unjudged": int((labels < 0).sum()),
        "judge": jd.config if jd is not None else None,
        "generation": {"prompt": pf.GENERATION_PROMPT, "max_new_tokens": pf.GENERATION_MAX_NEW_TOKENS,
                       "stop": list(pf.GENERATION_STOP), "chat_template": True, "decoding": "greedy"},
        "prompts": {"p_true": pf.P_TRUE_PROMPT, "p_true_letters": list(pf.P_TRUE_LETTERS),
                    "p_true_raw_suffix": pf.P_TRUE_SCORED_SUFFIX, "verbal": pf.TIAN_FREEFORM_PROMPT,
                    "reeval_context": pf.GENERATION_PROMPT},
        "methods": {k: {"needs": FREEFORM_METHODS[k].needs, "labels": FREEFORM_METHODS[k].needs_labels,
                        "base_model": FREEFORM_METHODS[k].needs_base, "generation": True,
                        **notes.get(k, {})} for k in keys},
        "confidence": "each method's confidence c that the answer is correct, evaluated as the claim 'the "
                      "answer is correct' held with confidence c (ECE bins c against the share of correct answers, "
                      "AUROC ranks correct above wrong answers by c, NLL is the binary log loss); chat and reeval: exp(mean token log-probability); an empty answer "
                      "gets c = 0",
        "examples": [{"id": qs[i].id, "question": qs[i].question, "answer": sc.answers[i],
                      "references": list(qs[i].answers[:3]), "correct": int(labels[i]),
                      "confidence": {k: round(float(v[i]), 4) for k, v in conf_all.items()}}
                     for i in range(min(N_EXAMPLES, n))],
    }
    result.freeform = freeform
    cfg_dict = cfg.to_dict()
    cfg_dict.update(task="free-form", methods=keys, chat_template=True, freeform={k: freeform[k] for k in ("judge", "generation", "prompts")})
    result.config = cfg_dict

    scores = _score_files(sc, labels, conf_all, cfg, split)
    evaluation = Evaluation(result, predictions, deployed,
                            {"base": cfg.base, "chat": cfg.chat, "dataset": cfg.dataset, "split": split,
                             "task": FREEFORM_TASK, "n_questions": n})
    return write_run_folder(out_dir, cfg, evaluation, scores, overwrite=overwrite, finish=finish,
                            config=cfg_dict)


def _score_files(sc: _Scored, labels: np.ndarray, conf: Mapping[str, np.ndarray], cfg: RunConfig,
                 split: str | None) -> dict[tuple[str, int, str | None], ScoreSet]:
    """The P(True) score sets as written to ``scores/``: labels = correctness; the chat model's also carries
    each answer and every method's confidence as columns."""
    out = {}
    for role, s in sc.p_true.items():
        cols = dict(s.columns)
        if role == "chat":
            cols["answer"] = list(sc.answers)
            cols["correct"] = [int(v) for v in labels]
            cols.update({f"confidence_{k}": [float(x) for x in v] for k, v in conf.items()})
        ys = [int(v) if v >= 0 else None for v in labels]
        rows = [[None if np.isneginf(v) else float(v) for v in r] for r in s.logits]
        out[(role, 1, split)] = ScoreSet.from_rows(
            list(s.ids), rows, ys, meta={**s.meta, "task": FREEFORM_TASK, "model": getattr(cfg, role)},
            columns=cols, source=f"{role} P(True)")
    return out


__all__ = ["FREEFORM_METHODS", "DEFAULT_FREEFORM_METHODS", "FreeformMethod", "is_freeform", "make_judge",
           "parse_freeform_methods", "run_freeform", "score_freeform"]
