"""The multiple-choice kind of ``refcal run``: questions with options, scored by both models (letter / cloze /
CAPE), plus the chat model's other inputs the selected methods name (CAPE, elicitation, hidden states),
each computed once.

:func:`refcal.run.job.run` drives it: :meth:`MultipleChoice.prepare` (questions, before any slow work),
:meth:`~MultipleChoice.score` (one model in memory at a time), :meth:`~MultipleChoice.plan` (evaluation
units, :mod:`refcal.run.protocol`), :meth:`~MultipleChoice.finish` (what the run folder adds).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ...backends import backend_kind
from ...backends.ray import open_backend
from ...calibrate.methods import MC, METHODS
from ...calibrate.proj import ProjInputs
from ...data import fewshot_examples
from ...scores import ScoreSet
from ...scoring import hidden_states, score_questions
from ...tasks import make_task
from ...tasks.elicit import SOURCES, parse_failures, per_template, source_task
from ...tasks.prompts import option_letters
from .. import protocol
from ..backend_options import backend_options
from ..config import RunConfig

log = logging.getLogger(__name__)

HIDDEN = "hidden_states"
#: why ``hidden_states`` is missing when the run could not extract them
NO_HIDDEN = ("needs both models' hidden states: local transformers models only (not openai: or fake: models, "
             "not --ray)")


@dataclass
class Scored:
    """What scoring produced: score sets by ``(role, template, split)``, hidden states, API counters."""

    scores: dict[tuple[str, int, str | None], ScoreSet] = field(default_factory=dict)
    hidden: dict[Any, Any] | None = None
    api_stats: dict[str, Any] = field(default_factory=dict)


class MultipleChoice:
    """See the module docstring."""

    name = MC

    def prepare(self, cfg: RunConfig) -> None:
        self.test_split, self.calib_split = protocol.splits(cfg)
        self.splits = [self.test_split] + ([self.calib_split] if self.calib_split else [])
        self.questions = {s: protocol.load_questions(cfg, s) for s in self.splits}
        if self.calib_split is None:  # random splits: refuse too few questions before scoring them
            protocol.check_splittable(len(self.questions[self.test_split]), cfg)

    # ------------------------------------------------------------------ scoring
    def _inputs(self, cfg: RunConfig) -> set[str]:
        """The chat-model inputs the selected, applicable methods read (besides the scores)."""
        return {m.inputs[MC].chat for k in cfg.methods if (m := METHODS[k]).scorings is None
                or cfg.scoring in m.scorings}

    def score(self, cfg: RunConfig, backends: dict[str, Any] | None = None) -> Scored:
        wanted = self._inputs(cfg)
        sources = sorted(wanted & set(SOURCES))
        hidden = HIDDEN in wanted and cfg.scoring == "letter" and not cfg.ray and backends is None \
            and all(backend_kind(m) == "transformers" for m in (cfg.base, cfg.chat))
        out = Scored(hidden={} if hidden else None)
        for role, spec in (("base", cfg.base), ("chat", cfg.chat)):  # one model at a time in memory
            log.info("loading %s model %s", role, spec)
            if backends is not None:
                backend = backends[role]
            else:
                opts = backend_options(spec, role, flags=cfg.flags(), model_options=cfg.model_options)
                # a Ray backend (cfg.ray) shuts its private instance down when deleted below
                backend = open_backend(spec, cfg.ray, api_base=cfg.api_base, **opts).__enter__()
            for t in cfg.templates:
                for s in self.splits:
                    out.scores[(role, t, s)] = self._score(backend, self.questions[s], cfg, t, s, role)
            if out.hidden is not None:
                self._extract_hidden(backend, cfg, role, out.hidden)
            if role == "chat":
                for src in sources:
                    for t in cfg.templates if per_template(src) else cfg.templates[:1]:
                        task = source_task(src, template=t, chat_template=cfg.chat_template, seed=cfg.seed,
                                           cape_orders=cfg.cape_orders, cape_templates=cfg.cape_templates)
                        for s in self.splits:
                            log.info("scoring the chat model's %s (template %s, split %s)", src, t, s)
                            out.scores[(f"chat_{src}", t, s)] = self._score(backend, self.questions[s], cfg, t, s,
                                                                            role, task=task)
            self._stats(backend, role, out)
            del backend
        return out

    def _score(self, backend: Any, questions: list, cfg: RunConfig, template: int, split: str | None, role: str,
               task: Any = None) -> ScoreSet:
        meta = {"role": role, "dataset": cfg.dataset, "split": split}
        if task is None:
            cape = {"cape_orders": cfg.cape_orders, "cape_templates": cfg.cape_templates} if cfg.scoring == "cape" else {}
            task = make_task(cfg.scoring, template=template, chat=cfg.chat_template, **cape)
        return score_questions(backend, questions, fewshot=_fewshot(cfg, questions), batch_size=cfg.batch_size,
                               cache_dir=cfg.cache_dir, progress=cfg.progress, meta=meta, task=task)

    def _extract_hidden(self, backend: Any, cfg: RunConfig, role: str, hidden: dict) -> None:
        """Both models' answer-position hidden states for ``proj`` (cached like scores), and the base model's
        output head over the option letters."""
        if not hasattr(backend, "answer_hidden_states"):
            return
        for t in cfg.templates:
            for s in self.splits:
                log.info("extracting the %s model's answer-position hidden states (template %s, split %s)", role, t, s)
                hidden[(role, t, s)] = hidden_states(
                    backend, self.questions[s], template=t, chat=cfg.chat_template,
                    fewshot=_fewshot(cfg, self.questions[s]), cache_dir=cfg.cache_dir,
                    meta={"dataset": cfg.dataset, "split": s})
        if role == "base":
            k = max(len(q.choices) for qs in self.questions.values() for q in qs)
            hidden["head"] = backend.option_head(option_letters(k), cfg.chat_template)

    @staticmethod
    def _stats(backend: Any, role: str, out: Scored) -> None:
        stats = getattr(backend, "stats", None)
        if stats is None:
            return
        out.api_stats[role] = dict(stats) if isinstance(stats, dict) else asdict(stats)
        out.api_stats[role].update(_floor_counts([sc for (r, _, _), sc in out.scores.items() if r == role]))
        # why letters=auto took the top-k (in the stats, so also from Ray actors); kept only when it did
        note = out.api_stats[role].pop("letters_note", "")
        if note:
            out.api_stats[role]["letters_note"] = note

    # ------------------------------------------------------------------ units
    def plan(self, cfg: RunConfig, scored: Scored) -> protocol.Plan:
        plan = protocol.plan(cfg, scored.scores, self.test_split, self.calib_split)
        if scored.hidden:
            _attach_hidden(plan, scored.hidden, self.test_split, self.calib_split)
        if not plan.units or HIDDEN not in plan.units[0].calib.extra:
            plan.missing[HIDDEN] = NO_HIDDEN
        plan.calibrator_inputs = {"template": cfg.templates[0], "scoring": cfg.scoring,
                                  "n_questions": int(len(plan.pool.ids))}
        return plan

    def n_questions(self, cfg: RunConfig, scored: Scored) -> int:
        return int(sum(len(scored.scores[("chat", cfg.templates[0], s)]) for s in {self.test_split, self.calib_split}
                       if s))

    # ------------------------------------------------------------------ run folder
    def finish(self, cfg: RunConfig, evaluation: Any, scored: Scored) -> tuple[dict, dict[str, Any] | None]:
        """Kind-specific results (CAPE's label, API counters, parse failures); ``(score sets, config)``."""
        res = evaluation.result
        if "cape" in res.method_labels:
            res.method_labels["cape"] = cape_label(cfg.cape_orders, cfg.cape_templates)
        res.api_stats = scored.api_stats
        res.parse_failures = _parse_failures(cfg, scored.scores, res.methods)
        return scored.scores, None


def cape_label(orders: str, templates: str) -> str:
    """The ``cape`` method's label for its members (the registry's label for the default, cyclic shifts of
    one template)."""
    if (orders, templates) == ("cyclic", "one"):
        return METHODS["cape"].label
    what = "cyclic shifts" if orders == "cyclic" else "all k! orders"
    return f"CAPE ({what}{' × 5 templates' if templates == 'all' else ''})"


def _parse_failures(cfg: RunConfig, scores: dict[tuple[str, int, str | None], ScoreSet],
                    evaluated: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Replies of each evaluated generation method that did not parse, over every scored question."""
    out: dict[str, dict[str, int]] = {}
    for k in cfg.methods:
        m = METHODS[k]
        if not m.needs_generation or k not in evaluated:
            continue
        total: dict[str, int] = {}
        for (r, _, _), sc in scores.items():
            if r == f"chat_{m.inputs[MC].chat}":
                for key, v in parse_failures(sc).items():
                    total[key] = total.get(key, 0) + v
        out[k] = total
    return out


def _fewshot(cfg: RunConfig, questions: list) -> Any:
    """The few-shot examples of ``questions``: one shared tuple, or one per subject (MMLU: its dev split)."""
    if not cfg.fewshot:
        return ()
    subjects = sorted({q.subject for q in questions if q.subject})
    if subjects:
        return {s: fewshot_examples(cfg.dataset, subject=s, k=cfg.fewshot) for s in subjects}
    return fewshot_examples(cfg.dataset, k=cfg.fewshot)


def _attach_hidden(plan: protocol.Plan, hidden: dict, test_split: str | None, calib_split: str | None) -> None:
    """Give every part of ``plan`` its questions' :class:`~refcal.calibrate.proj.ProjInputs` (``proj``)."""
    if "head" not in hidden or {k[0] for k in hidden if k != "head"} != {"base", "chat"}:
        return  # a model without hidden states: proj is then unavailable
    for unit in plan.units:
        for part, split in ((unit.calib, calib_split or test_split), (unit.test, test_split)):
            rows = {r: hidden[(r, unit.template, split)] for r in ("chat", "base")}
            part.extra[HIDDEN] = ProjInputs(rows["chat"].take(part.ids), rows["base"].take(part.ids), part.chat,
                                            hidden["head"])
    first = plan.units[0].calib
    err = first.extra[HIDDEN].head_error(first.base)
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
