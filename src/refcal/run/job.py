"""``refcal run`` end to end, for every task kind: load the questions, compute the inputs of the selected
methods (cached, resumable), evaluate every method, write the run folder."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .budget import label_budget
from .config import RunConfig
from .evaluate import evaluate
from .folder import check_run_dir, write_run_folder
from .kinds import make_kind

log = logging.getLogger(__name__)


def run(cfg: RunConfig, out_dir: str | os.PathLike, *, overwrite: bool = False,
        finish: Callable[[Path], Any] | None = None, backends: Mapping[str, Any] | None = None) -> Path:
    """Run the whole job and write the run folder ``out_dir`` (atomically: built aside, then renamed).

    ``cfg.task`` picks the kind (:mod:`refcal.run.kinds`); ``finish(folder)`` runs on the complete folder
    before it is renamed into place (``refcal run`` passes :func:`refcal.report.write_report`); ``backends``
    (``{"chat": ..., "base": ...}``) replaces loading ``cfg.chat`` / ``cfg.base`` (tests). Returns the run
    folder; its ``metrics.json`` is read back with :func:`refcal.run.load_result`.
    """
    cfg.validate()
    t_start = time.perf_counter()
    out_dir = check_run_dir(out_dir, overwrite=overwrite)  # before any slow work
    kind = make_kind(cfg.task)
    kind.prepare(cfg)
    t0 = time.perf_counter()
    scored = kind.score(cfg, backends)
    score_seconds = time.perf_counter() - t0
    plan = kind.plan(cfg, scored)
    t_eval = time.perf_counter()
    evaluation = evaluate(cfg, plan, n_questions=kind.n_questions(cfg, scored))
    t_end = time.perf_counter()
    # wall_seconds: loading the questions, both models and every score set, fitting and evaluating (the
    # run folder and report written after it are not counted); scoring_seconds: loading models + scoring
    evaluation.result.timing = {"wall_seconds": round(t_end - t_start, 2), "scoring_seconds": round(score_seconds, 2),
                                "evaluation_seconds": round(t_end - t_eval, 2)}
    if cfg.labels_budget:  # timed on its own: wall_seconds above stays comparable with runs without a curve
        t_budget = time.perf_counter()
        evaluation.result.label_budget = _label_budget(cfg, plan)
        evaluation.result.timing["label_budget_seconds"] = round(time.perf_counter() - t_budget, 2)
    scores, config = kind.finish(cfg, evaluation, scored)
    return write_run_folder(out_dir, cfg, evaluation, scores, overwrite=overwrite, finish=finish, config=config)


def _label_budget(cfg: RunConfig, plan: Any) -> dict[str, Any]:
    """The label-efficiency curve (``--labels-budget``, :mod:`refcal.run.budget`), or why there is none."""
    if not plan.has_labels:
        log.warning("--labels-budget needs labels on every question; no label-efficiency curve")
        return {"error": "some questions have no label"}
    return label_budget(plan.units, cfg.labels_budget, n_draws=cfg.labels_draws, seed=cfg.seed,
                        n_bins=cfg.n_bins, scaling=cfg.scaling)


__all__ = ["run"]
