"""``refcal run`` end to end: load the questions, score both models (cached, resumable), evaluate every
selected method, write the run folder."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import options_class
from ..options import is_api_model
from ..scores import ScoreSet
from ..tasks.elicit import per_template, source_task
from . import protocol
from .config import RunConfig
from .evaluate import evaluate
from .folder import check_run_dir, write_run_folder

log = logging.getLogger(__name__)


def run(cfg: RunConfig, out_dir: str | os.PathLike, *, overwrite: bool = False,
        finish: Callable[[Path], Any] | None = None) -> Path:
    """Run the whole job and write the run folder ``out_dir`` (atomically: built aside, then renamed).

    Returns the run folder; its ``metrics.json`` is read back with :func:`refcal.run.load_result`.
    """
    from ..backends.ray import open_backend

    cfg.validate()
    t_start = time.perf_counter()
    out_dir = check_run_dir(out_dir, overwrite=overwrite)  # before any slow work
    test_split, calib_split = protocol.splits(cfg)
    splits = [test_split] + ([calib_split] if calib_split else [])
    questions = {s: protocol.load_questions(cfg, s) for s in splits}
    if calib_split is None:  # random splits: refuse too few questions before scoring them
        protocol.check_splittable(len(questions[test_split]), cfg)
    t0 = time.perf_counter()

    # one model at a time, so only one is in memory
    scores: dict[tuple[str, int, str | None], ScoreSet] = {}
    api_stats: dict[str, Any] = {}
    hidden: dict[Any, Any] | None = {} if _wants_hidden(cfg) else None  # proj: answer-position hidden states
    for role, spec in (("base", cfg.base), ("chat", cfg.chat)):
        log.info("loading %s model %s", role, spec)
        # only the options this backend has (an API or the fake backend has no device, dtype or batch size)
        fields = options_class(spec).__dataclass_fields__
        local = {"batch_size": cfg.batch_size, "device": cfg.device, "dtype": cfg.dtype}
        kwargs: dict[str, Any] = {k: v for k, v in local.items() if k in fields and v is not None}
        if cfg.api_letters is not None and is_api_model(spec):  # --api-letters: openai: models only
            kwargs["letters"] = cfg.api_letters
        # a Ray backend (cfg.ray) shuts its private instance down when deleted below
        backend = open_backend(spec, cfg.ray, api_base=cfg.api_base, **kwargs).__enter__()
        for t in cfg.templates:
            for s in splits:
                scores[(role, t, s)] = _score(backend, questions[s], cfg, t, s, role)
        if hidden is not None:
            _extract_hidden(backend, questions, cfg, splits, role, hidden)
        if role == "chat":
            for src in _sources(cfg):
                for t in cfg.templates if per_template(src) else cfg.templates[:1]:
                    task = source_task(src, template=t, chat_template=cfg.chat_template, seed=cfg.seed,
                                       cape_orders=cfg.cape_orders, cape_templates=cfg.cape_templates)
                    for s in splits:
                        log.info("scoring the chat model's %s (template %s, split %s)", src, t, s)
                        scores[(f"chat_{src}", t, s)] = _score(backend, questions[s], cfg, t, s, role, task=task)
        stats = getattr(backend, "stats", None)
        if stats is not None:
            api_stats[role] = dict(stats) if isinstance(stats, dict) else asdict(stats)
            api_stats[role].update(_floor_counts([sc for (r, _, _), sc in scores.items() if r == role]))
            # why letters=auto took the top-k (in the stats, so also from Ray actors); kept only when it did
            note = api_stats[role].pop("letters_note", "")
            if note:
                api_stats[role]["letters_note"] = note
        del backend
    score_seconds = time.perf_counter() - t0

    plan = protocol.plan(cfg, scores, test_split, calib_split)
    if hidden:
        _attach_hidden(plan, hidden, test_split, calib_split)
    n_questions = int(sum(len(scores[("chat", cfg.templates[0], s)]) for s in {test_split, calib_split} if s))
    t_eval = time.perf_counter()
    evaluation = evaluate(cfg, plan, n_questions=n_questions)
    if cfg.labels_budget:
        evaluation.result.label_budget = _label_budget(cfg, plan)
    t_end = time.perf_counter()
    # wall_seconds: loading the questions, both models and every score set, fitting and evaluating (the
    # run folder and report written after it are not counted); scoring_seconds: loading models + scoring
    evaluation.result.timing = {"wall_seconds": round(t_end - t_start, 2), "scoring_seconds": round(score_seconds, 2),
                                "evaluation_seconds": round(t_end - t_eval, 2)}
    if "cape" in evaluation.result.method_labels:
        evaluation.result.method_labels["cape"] = cape_label(cfg.cape_orders, cfg.cape_templates)
    evaluation.result.api_stats = api_stats
    evaluation.result.parse_failures = _parse_failures(cfg, scores, evaluation.result.methods)
    return write_run_folder(out_dir, cfg, evaluation, scores, overwrite=overwrite, finish=finish)


def _label_budget(cfg: RunConfig, plan: protocol.Plan) -> dict[str, Any]:
    """The label-efficiency curve (``--labels-budget``, :mod:`refcal.run.budget`), or why there is none."""
    from .budget import label_budget

    if not plan.has_labels:
        log.warning("--labels-budget needs labels on every question; no label-efficiency curve")
        return {"error": "some questions have no label"}
    return label_budget(plan.units, cfg.labels_budget, n_draws=cfg.labels_draws, seed=cfg.seed,
                        n_bins=cfg.n_bins, scaling=cfg.scaling)


def cape_label(orders: str, templates: str) -> str:
    """The ``cape`` method's label for its members (the registry's label for the default, cyclic shifts of
    one template)."""
    from ..calibrate.methods import METHODS

    if (orders, templates) == ("cyclic", "one"):
        return METHODS["cape"].label
    what = "cyclic shifts" if orders == "cyclic" else "all k! orders"
    return f"CAPE ({what}{' × 5 templates' if templates == 'all' else ''})"


def _parse_failures(cfg: RunConfig, scores: dict[tuple[str, int, str | None], ScoreSet],
                    evaluated: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Replies of each evaluated generation method that did not parse, over every scored question."""
    from ..calibrate.methods import METHODS
    from ..tasks.elicit import parse_failures

    out: dict[str, dict[str, int]] = {}
    for k in cfg.methods:
        m = METHODS[k]
        if not m.needs_generation or k not in evaluated:
            continue
        total: dict[str, int] = {}
        for (r, _, _), sc in scores.items():
            if r == f"chat_{m.source}":
                for key, v in parse_failures(sc).items():
                    total[key] = total.get(key, 0) + v
        out[k] = total
    return out


def _sources(cfg: RunConfig) -> list[str]:
    """The extra score sets of the chat model that the selected, applicable methods read."""
    from ..calibrate.methods import HIDDEN_SOURCE, METHODS

    return sorted({m.source for k in cfg.methods if (m := METHODS[k]).source and m.source != HIDDEN_SOURCE
                   and (m.scorings is None or cfg.scoring in m.scorings)})


def _score(backend: Any, questions: list, cfg: RunConfig, template: int, split: str | None, role: str,
           task: Any = None) -> ScoreSet:
    from ..scoring import score_questions
    from ..tasks import make_task

    fewshot = _fewshot(cfg, questions)
    meta = {"role": role, "dataset": cfg.dataset, "split": split}
    if task is None:
        cape = {"cape_orders": cfg.cape_orders, "cape_templates": cfg.cape_templates} if cfg.scoring == "cape" else {}
        task = make_task(cfg.scoring, template=template, chat=cfg.chat_template, **cape)
    return score_questions(
        backend, questions, fewshot=fewshot, batch_size=cfg.batch_size, cache_dir=cfg.cache_dir,
        progress=cfg.progress, meta=meta, task=task,
    )


def _fewshot(cfg: RunConfig, questions: list) -> Any:
    """The few-shot examples of ``questions``: one shared tuple, or one per subject (MMLU: its dev split)."""
    if not cfg.fewshot:
        return ()
    from ..data import fewshot_examples

    subjects = sorted({q.subject for q in questions if q.subject})
    if subjects:
        return {s: fewshot_examples(cfg.dataset, subject=s, k=cfg.fewshot) for s in subjects}
    return fewshot_examples(cfg.dataset, k=cfg.fewshot)


def _wants_hidden(cfg: RunConfig) -> bool:
    """``proj`` is selected and can apply: letter scoring, both models local (hidden states in this process)."""
    from ..backends import backend_kind

    return ("proj" in cfg.methods and cfg.scoring == "letter" and not cfg.ray
            and all(backend_kind(m) == "transformers" for m in (cfg.base, cfg.chat)))


def _extract_hidden(backend: Any, questions: dict, cfg: RunConfig, splits: list, role: str, hidden: dict) -> None:
    """Both models' answer-position hidden states for ``proj`` (cached like scores), and the base model's
    output head over the option letters."""
    from ..scoring import hidden_states
    from ..tasks.prompts import option_letters

    if not hasattr(backend, "answer_hidden_states"):
        return
    for t in cfg.templates:
        for s in splits:
            log.info("extracting the %s model's answer-position hidden states (template %s, split %s)", role, t, s)
            hidden[(role, t, s)] = hidden_states(
                backend, questions[s], template=t, chat=cfg.chat_template, fewshot=_fewshot(cfg, questions[s]),
                cache_dir=cfg.cache_dir, meta={"dataset": cfg.dataset, "split": s})
    if role == "base":
        k = max(len(q.choices) for qs in questions.values() for q in qs)
        hidden["head"] = backend.option_head(option_letters(k), cfg.chat_template)


def _attach_hidden(plan: protocol.Plan, hidden: dict, test_split: str | None, calib_split: str | None) -> None:
    """Give every part of ``plan`` its questions' :class:`~refcal.calibrate.proj.ProjInputs` (``proj``)."""
    from ..calibrate.methods import HIDDEN_SOURCE
    from ..calibrate.proj import ProjInputs

    if "head" not in hidden or {k[0] for k in hidden if k != "head"} != {"base", "chat"}:
        return  # a model without hidden states (checked again by evaluate: proj is then unavailable)
    for unit in plan.units:
        for part, split in ((unit.calib, calib_split or test_split), (unit.test, test_split)):
            rows = {r: hidden[(r, unit.template, split)] for r in ("chat", "base")}
            part.extra[HIDDEN_SOURCE] = ProjInputs(rows["chat"].take(part.ids), rows["base"].take(part.ids),
                                                   part.chat, hidden["head"])
    first = plan.units[0].calib
    err = first.extra[HIDDEN_SOURCE].head_error(first.base)
    (log.warning if err > 0.5 else log.info)(
        "base head at the base model's own answer-position hidden states vs its letter scores: max %.2g", err)


def _floor_counts(sets: list[ScoreSet]) -> dict[str, int]:
    """Floored letters over every scored question, cached ones included (the backend's own counters
    cover only the requests it sent in this process)."""
    n_letters = n_floored = n_rows = 0
    for sc in sets:
        if "n_floored" not in sc.columns:
            continue
        f = np.asarray(sc.columns["n_floored"], dtype=np.int64)
        n_letters += int(sc.n_options.sum())
        n_floored += int(f.sum())
        n_rows += int((f > 0).sum())
    return {"n_letters": n_letters, "n_floored_letters": n_floored, "n_requests_with_floor": n_rows,
            "n_scored_questions": int(sum(len(sc) for sc in sets))}


__all__ = ["run", "cape_label"]
