"""The evaluation protocol: which questions are scored, and how they are cut into evaluation units.

* MMLU: one unit per subject, calibrated on the subject's validation split and evaluated on its test
  split; ``--limit`` applies per subject.
* Other data sets: ``n_splits`` random splits of the evaluation split into ``calib_frac`` calibration
  questions and the rest as test questions (seeded by ``seed``).
* With several templates, every (template, split or subject) pair is a unit.

The plotted questions are the evaluation questions of the first template's first split (every subject
for MMLU); the deployable calibrator and the agreement diagnostics use the first template's calibration
pool (the calibration split, else every scored question).

Extra score sets of the chat model (``scores[("chat_<source>", template, split)]``, e.g. CAPE or
elicitation, see :mod:`refcal.tasks.elicit`) are cut the same way: each part's ``extra[source]`` holds their
rows for the part's questions (a source scored once per run serves every template).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..scores import JoinedScores, ScoreSet, join_scores
from .config import RunConfig

log = logging.getLogger(__name__)


@dataclass
class Part:
    """Base and chat logits (n, k), labels (n,; -1 unknown) and question ids of some questions;
    ``extra[source]``: the rows of the chat model's extra score sets for the same questions."""

    base: np.ndarray
    chat: np.ndarray
    labels: np.ndarray
    ids: list
    extra: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Unit:
    """One evaluation unit: the methods are fitted on ``calib`` and evaluated on ``test``."""

    template: int
    group: str  # subject or "split<i>"
    calib: Part
    test: Part
    plotted: bool  # its test questions are the plotted ones


@dataclass
class Plan:
    """The units of a run, the description of the protocol, and the first template's calibration pool."""

    units: list[Unit]
    description: str
    pool: JoinedScores
    pool_split: str | None
    has_labels: bool


# ---------------------------------------------------------------------------------------------- questions
def load_questions(cfg: RunConfig, split: str | None) -> list:
    """The questions of ``split`` (``--limit`` per subject on MMLU, so every subject keeps enough)."""
    from ..data import load_dataset
    from ..data._io import subsample

    if cfg.dataset != "mmlu" or not cfg.limit:
        return load_dataset(cfg.dataset, split=split, subjects=cfg.subjects, limit=cfg.limit, seed=cfg.seed,
                            **cfg.columns)
    questions = load_dataset(cfg.dataset, split=split, subjects=cfg.subjects, seed=cfg.seed)
    by_subject: dict[str, list] = {}
    for q in questions:
        by_subject.setdefault(q.subject or "", []).append(q)
    return [q for s in sorted(by_subject) for q in subsample(by_subject[s], cfg.limit, cfg.seed)]


def default_split(dataset: str) -> str | None:
    """The data set's evaluation split; ``None`` for a user file (its only split)."""
    from ..data import default_split as data_default_split
    from ..errors import DatasetError

    try:
        return data_default_split(dataset)
    except DatasetError:
        if Path(dataset).expanduser().exists():
            return None
        raise


def splits(cfg: RunConfig) -> tuple[str | None, str | None]:
    """``(evaluation split, calibration split or None)``; refuses calibrating on the evaluation split."""
    is_mmlu = cfg.dataset == "mmlu"
    test_split = cfg.split or default_split(cfg.dataset)
    calib_split = cfg.calib_split or ("validation" if is_mmlu else None)
    if calib_split and calib_split == test_split:
        raise InputError(
            f"the calibration split and the evaluation split are both {test_split!r}: the calibrators would be "
            "scored on the questions they were fitted on; choose another --split or --calib-split"
            + (" (MMLU calibrates on 'validation' by default)" if is_mmlu else "")
        )
    return test_split, calib_split


# ---------------------------------------------------------------------------------------------- units
def plan(cfg: RunConfig, scores: dict[tuple[str, int, str | None], ScoreSet], test_split: str | None,
         calib_split: str | None) -> Plan:
    """Cut the joined base/chat scores into evaluation units (see the module docstring)."""
    units: list[Unit] = []
    has_labels = True
    pool = None
    description = ""
    for t in cfg.templates:
        test = join_scores(scores[("base", t, test_split)], scores[("chat", t, test_split)])
        has_labels = has_labels and bool((test.labels >= 0).all())
        if calib_split:
            calib = join_scores(scores[("base", t, calib_split)], scores[("chat", t, calib_split)])
            has_labels = has_labels and bool((calib.labels >= 0).all())
            groups = _subject_groups(test, calib)
            description = (f"per-subject calibrator fitted on '{calib_split}', evaluated on '{test_split}', "
                           "averaged over subjects")
        else:
            calib = test
            groups = _random_splits(test, cfg)
            description = (f"{round(100 * cfg.calib_frac)}% calibration / {round(100 * (1 - cfg.calib_frac))}% "
                           f"test, {cfg.n_splits} random splits (seed {cfg.seed})")
        if pool is None:
            pool = calib
        first = t == cfg.templates[0]
        units += [Unit(t, name, c, e, plotted=first and (bool(calib_split) or gi == 0))
                  for gi, (name, c, e) in enumerate(groups)]
    if pool is None:  # pragma: no cover - validate() guarantees one template
        raise InputError("no prompt template selected; pass --template")
    _attach_extra(units, scores, cfg.templates[0], test_split, calib_split or test_split)
    return Plan(units, description, pool, calib_split or test_split, has_labels)


def _attach_extra(units: list[Unit], scores: dict[tuple[str, int, str | None], ScoreSet], first: int,
                  test_split: str | None, calib_split: str | None) -> None:
    """Give every part the rows of the chat model's extra score sets (``chat_<source>`` roles) for its
    questions, looked up by id within its split (a source scored for the first template only serves them all)."""
    sources = sorted({r[len("chat_"):] for (r, _, _) in scores if r.startswith("chat_")})
    for src in sources:
        rows = {(t, s): {str(i): sc.logits[j] for j, i in enumerate(sc.ids)}
                for (r, t, s), sc in scores.items() if r == f"chat_{src}"}
        for unit in units:
            t = unit.template if (unit.template, test_split) in rows else first
            for part, split in ((unit.calib, calib_split), (unit.test, test_split)):
                by_id = rows.get((t, split), {})
                missing = [i for i in part.ids if str(i) not in by_id]
                if missing:
                    raise InputError(f"question {missing[0]!r} has no {src} scores; re-run to score it")
                part.extra[src] = np.stack([by_id[str(i)] for i in part.ids])


def _part(j: JoinedScores, idx: np.ndarray) -> Part:
    return Part(j.base[idx], j.chat[idx], j.labels[idx], j.ids[idx].tolist())


def _subject_groups(test: JoinedScores, calib: JoinedScores) -> list[tuple[str, Part, Part]]:
    """MMLU: (subject, calibration part, evaluation part) per subject with calibration questions."""
    def subjects(j: JoinedScores) -> np.ndarray:
        return np.asarray(j.chat_scores.columns.get("subject", np.array(["all"] * len(j.ids), dtype=object)))

    t_sub, c_sub = subjects(test), subjects(calib)
    out = []
    for s in sorted(set(t_sub.tolist())):
        ci, ti = np.flatnonzero(c_sub == s), np.flatnonzero(t_sub == s)
        if ci.size == 0:
            log.warning("subject %s has no calibration questions; skipped", s)
            continue
        out.append((str(s), _part(calib, ci), _part(test, ti)))
    if not out:
        raise InputError("no subject has both calibration and test questions; check --subjects and --limit")
    return out


def _random_splits(test: JoinedScores, cfg: RunConfig) -> list[tuple[str, Part, Part]]:
    n = len(test.ids)
    return [(f"split{i}", _part(test, ci), _part(test, ti)) for i, (ci, ti) in enumerate(random_split_indices(n, cfg))]


def check_splittable(n: int, cfg: RunConfig) -> int:
    """The calibration part's size of a random split of ``n`` questions; :class:`InputError` when either part
    would have fewer than 2. Called as soon as the questions are loaded, before any scoring, and again by
    :func:`random_split_indices`."""
    n_cal = int(round(cfg.calib_frac * n))
    if n_cal < 2 or n - n_cal < 2:
        raise InputError(f"{n} questions are too few to split {cfg.calib_frac:.0%} / {1 - cfg.calib_frac:.0%}; "
                         "raise --limit (or use more questions)")
    return n_cal


def random_split_indices(n: int, cfg: RunConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """``cfg.n_splits`` random (calibration, test) index pairs of ``n`` questions, sorted, seeded by ``cfg.seed``."""
    n_cal = check_splittable(n, cfg)
    rng = np.random.default_rng(cfg.seed)
    out = []
    for _ in range(cfg.n_splits):
        perm = rng.permutation(n)
        out.append((np.sort(perm[:n_cal]), np.sort(perm[n_cal:])))
    return out


__all__ = ["Part", "Unit", "Plan", "load_questions", "default_split", "splits", "plan", "random_split_indices",
           "check_splittable"]
