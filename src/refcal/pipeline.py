"""``refcal run``: score both models, fit the calibrators, evaluate on held-out questions, write a run folder.

Protocol (the paper's):

* MMLU: one calibrator per subject, fitted on the subject's validation split (DACA and naive use no
  labels; the labelled oracle uses the validation labels), evaluated on the subject's test split;
  metrics are averaged over subjects (the "values" are per subject).
* Other data sets: ``n_splits`` random splits into ``calib_frac`` unlabelled calibration questions and
  the rest as test questions; metrics are mean ± std over splits.
* With several templates, the values of every (template, split or subject) pair are pooled.

The deployable ``calibrator.json`` is DACA fitted on every scored calibration question (no labels).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from ._io import atomic_write_json
from ._math import log_softmax
from .errors import FitError, InputError
from .scores import ScoreSet, join_scores

log = logging.getLogger(__name__)

#: The embedded default: the packaged cross-family pair on a data set where both are above chance.
DEFAULT_BASE = "gemma-3-270m"
DEFAULT_CHAT = "smollm2-135m-instruct"
DEFAULT_DATASET = "sciq"
DEFAULT_SCORING = "cloze"
DEFAULT_LIMIT = 400

METHODS = ("chat", "base", "naive", "daca", "ts")
METHOD_LABELS = {
    "chat": "chat model (vanilla)", "base": "base model", "naive": "naive alignment",
    "daca": "DACA", "ts": "temperature scaling (labelled oracle)",
}


@dataclass
class RunConfig:
    """Everything that defines a run; written to ``config.json``."""

    base: str = DEFAULT_BASE
    chat: str = DEFAULT_CHAT
    dataset: str = DEFAULT_DATASET
    split: str | None = None
    calib_split: str | None = None
    subjects: list[str] | None = None
    templates: list[int] = field(default_factory=lambda: [1])
    scoring: str = DEFAULT_SCORING
    chat_template: bool = False
    fewshot: int = 0
    limit: int | None = DEFAULT_LIMIT
    n_splits: int = 5
    calib_frac: float = 0.3
    scaling: str = "temperature"
    n_bins: int = 10
    seed: int = 0
    batch_size: int = 8
    api_base: str | None = None
    device: str | None = None
    progress: bool = True
    columns: dict[str, Any] = field(default_factory=dict)  # column mapping for user data files

    def validate(self) -> None:
        if not 0.0 < self.calib_frac < 1.0:
            raise InputError(f"--calib-frac must be strictly between 0 and 1, got {self.calib_frac}")
        if self.n_splits < 1:
            raise InputError(f"--n-splits must be at least 1, got {self.n_splits}")
        bad = [t for t in self.templates if t not in (1, 2, 3, 4, 5)]
        if bad:
            raise InputError(f"--template must be 1..5 or 'all', got {bad[0]}")
        if self.scoring != "letter" and len(self.templates) > 1:
            raise InputError("prompt templates apply to letter scoring only (cloze prompts have no instruction); "
                             "use --scoring letter with --template all, or one template")
        api = [m for m in (self.base, self.chat) if m.startswith("openai:")]
        if api and self.scoring != "letter":
            raise InputError(f"{api[0]} is an API model: APIs return next-token log-probabilities only, so use "
                             "--scoring letter")
        if self.limit is not None and self.limit < 2:
            raise InputError(f"--limit must be at least 2, got {self.limit}")


# --------------------------------------------------------------------------- scoring
def _load_questions(cfg: RunConfig, split: str | None) -> list:
    from .data import load_dataset
    from .data._io import subsample

    if cfg.dataset != "mmlu" or not cfg.limit:
        return load_dataset(cfg.dataset, split=split, subjects=cfg.subjects, limit=cfg.limit, seed=cfg.seed,
                            **cfg.columns)
    # MMLU: --limit applies per subject, so every subject keeps enough questions to fit and evaluate
    questions = load_dataset(cfg.dataset, split=split, subjects=cfg.subjects, seed=cfg.seed)
    by_subject: dict[str, list] = {}
    for q in questions:
        by_subject.setdefault(q.subject or "", []).append(q)
    return [q for s in sorted(by_subject) for q in subsample(by_subject[s], cfg.limit, cfg.seed)]


def _default_split(dataset: str) -> str | None:
    from .data import default_split
    from .errors import DatasetError

    try:
        return default_split(dataset)
    except DatasetError:
        if Path(dataset).expanduser().exists():  # a user file: its only split
            return None
        raise


def _score(backend: Any, questions: list, cfg: RunConfig, template: int, split: str, role: str) -> ScoreSet:
    from .scoring import score_questions

    fewshot: Any = ()
    if cfg.fewshot:
        from .data import fewshot_examples

        subjects = sorted({q.subject for q in questions if q.subject})
        if subjects:  # one shared few-shot prefix per subject (MMLU: from its dev split)
            fewshot = {s: fewshot_examples(cfg.dataset, subject=s, k=cfg.fewshot) for s in subjects}
        else:
            fewshot = fewshot_examples(cfg.dataset, k=cfg.fewshot)
    meta = {"role": role, "dataset": cfg.dataset, "split": split}
    return score_questions(
        backend, questions, scoring=cfg.scoring, template=template, chat=cfg.chat_template,
        fewshot=fewshot, batch_size=cfg.batch_size, progress=cfg.progress, meta=meta,
    )


# --------------------------------------------------------------------------- fitting / evaluation
class _Unfitted:
    """Stand-in when a label-free fit is impossible on one unit (e.g. no agreeing question in a small
    subject): that unit is evaluated with the chat model unchanged (τ = 1), and ``fits`` says so."""

    temperature_ = 1.0
    n_iter_ = 0
    converged_ = False

    def __init__(self, error: str):
        self.error = error

    def predict_log_proba(self, chat: np.ndarray) -> np.ndarray:
        return log_softmax(chat)


def _fit_all(base: np.ndarray, chat: np.ndarray, labels: np.ndarray | None, scaling: str) -> dict[str, Any]:
    from .calibrate import DACA, MatrixScaling, NaiveAlignment, TemperatureScaling, VectorScaling

    fitted: dict[str, Any] = {}
    for name, make in (("daca", DACA), ("naive", NaiveAlignment)):
        try:
            fitted[name] = make(scaling=scaling).fit(base, chat)
        except FitError as e:
            log.warning("%s: %s; this unit is evaluated uncalibrated", METHOD_LABELS[name], e)
            fitted[name] = _Unfitted(str(e))
    if labels is not None:
        oracle = {"temperature": TemperatureScaling, "vector": VectorScaling, "matrix": MatrixScaling}[scaling]
        try:
            fitted["ts"] = oracle().fit(chat, labels)
        except FitError as e:
            log.warning("%s: %s; this unit is evaluated uncalibrated", METHOD_LABELS["ts"], e)
            fitted["ts"] = _Unfitted(str(e))
    return fitted


def _fit_record(group: str, cal: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {"group": group, "n_iter": int(getattr(cal, "n_iter_", 0)),
                           "converged": bool(getattr(cal, "converged_", True))}
    if isinstance(cal, _Unfitted):
        rec.update(error=cal.error, fallback="uncalibrated (temperature 1)")
    if hasattr(cal, "temperature_"):
        rec["temperature"] = float(cal.temperature_)
    for attr in ("n_agree_", "agreement_rate_", "n_"):
        if hasattr(cal, attr):
            rec[attr.rstrip("_")] = float(getattr(cal, attr))
    return rec


def _predict(fitted: dict[str, Any], base: np.ndarray, chat: np.ndarray) -> dict[str, np.ndarray]:
    """Log-probabilities of every method on the evaluation questions."""
    out = {"chat": log_softmax(chat), "base": log_softmax(base)}
    for name, cal in fitted.items():
        out[name] = cal.predict_log_proba(chat)
    return out


def _evaluate(logp: dict[str, np.ndarray], labels: np.ndarray | None, n_bins: int) -> dict[str, dict[str, float]]:
    from . import metrics

    res: dict[str, dict[str, float]] = {}
    for name, lp in logp.items():
        p = np.exp(lp)
        row = {"mean_confidence": float(p.max(axis=1).mean())}
        if labels is not None:
            row.update(metrics.evaluate(p, labels, n_bins=n_bins))
            # from the log-probabilities: exp() underflows to 0 below -745 and would make the NLL infinite
            row["nll"] = float(-lp[np.arange(len(labels)), labels].mean())
        res[name] = row
    return res


def _selective(logp: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    from . import metrics

    out = {}
    for name, lp in logp.items():
        sel = metrics.selective_accuracy(np.exp(lp), labels)
        out[name] = {k: np.asarray(v).tolist() for k, v in (sel.items() if isinstance(sel, dict) else asdict(sel).items())}
    return out


def _aggregate(per_unit: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, dict[str, Any]]]:
    agg: dict[str, dict[str, dict[str, Any]]] = {}
    for unit in per_unit:
        for method, row in unit.items():
            for key, v in row.items():
                agg.setdefault(method, {}).setdefault(key, {"values": []})["values"].append(float(v))
    for method in agg.values():
        for entry in method.values():
            vals = np.asarray(entry["values"], dtype=float)
            # NaN marks an undefined value (e.g. AUROC when every answer of a unit is right): left out and
            # counted; an infinite value is real and makes the mean infinite
            kept = vals[~np.isnan(vals)]
            entry["n_undefined"] = int(vals.size - kept.size)
            entry["mean"] = float(kept.mean()) if kept.size else float("nan")
            spread = kept.size > 1 and bool(np.isfinite(kept).all())
            entry["std"] = float(kept.std(ddof=1)) if spread else float("nan")
    return agg


# --------------------------------------------------------------------------- the job
def run(cfg: RunConfig, out_dir: str | os.PathLike, *, overwrite: bool = False, report: bool = True) -> Path:
    """Run the whole job and write the run folder ``out_dir`` (atomically: built aside, then renamed)."""
    from .backends import load_backend

    cfg.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise InputError(f"{out_dir} already exists; choose another -o/--output or pass --overwrite")
    is_mmlu = cfg.dataset == "mmlu"
    test_split = cfg.split or _default_split(cfg.dataset)
    calib_split = cfg.calib_split or ("validation" if is_mmlu else None)
    if calib_split and calib_split == test_split:
        raise InputError(
            f"the calibration split and the evaluation split are both {test_split!r}: the calibrators would be "
            "scored on the questions they were fitted on; choose another --split or --calib-split"
            + (" (MMLU calibrates on 'validation' by default)" if is_mmlu else "")
        )
    splits = [test_split] + ([calib_split] if calib_split else [])
    questions = {s: _load_questions(cfg, s) for s in splits}
    t0 = time.perf_counter()

    # Score one model at a time so only one is in memory.
    scores: dict[tuple[str, int, str], ScoreSet] = {}
    api_stats: dict[str, Any] = {}
    for role, spec in (("base", cfg.base), ("chat", cfg.chat)):
        log.info("loading %s model %s", role, spec)
        kwargs: dict[str, Any] = {}
        if not spec.startswith("openai:"):
            kwargs["batch_size"] = cfg.batch_size
            if cfg.device:
                kwargs["device"] = cfg.device
        backend = load_backend(spec, api_base=cfg.api_base, **kwargs)
        for t in cfg.templates:
            for s in splits:
                scores[(role, t, s)] = _score(backend, questions[s], cfg, t, s, role)
        stats = getattr(backend, "stats", None)
        if stats is not None:
            api_stats[role] = dict(stats) if isinstance(stats, dict) else asdict(stats)
            api_stats[role].update(_floor_counts([sc for (r, _, _), sc in scores.items() if r == role]))
        del backend
    score_seconds = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent if out_dir.parent.exists() else None))
    try:
        metrics_doc = _evaluate_all(cfg, scores, test_split, calib_split, tmp)
        metrics_doc["timing"] = {"scoring_seconds": round(score_seconds, 2)}
        if api_stats:
            metrics_doc["api_stats"] = api_stats
        for (role, t, s), sc in scores.items():
            suffix = f"_t{t}" if len(cfg.templates) > 1 else ""
            ssuffix = f"_{s}" if len(splits) > 1 else ""
            sc.save(tmp / "scores" / f"{role}{suffix}{ssuffix}.parquet")
        atomic_write_json(tmp / "config.json", {"refcal_version": __version__, **asdict(cfg)})
        atomic_write_json(tmp / "metrics.json", metrics_doc)
        if report:
            from .report import write_report

            write_report(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _evaluate_all(cfg: RunConfig, scores: dict, test_split: str, calib_split: str | None, out: Path) -> dict:
    from .calibrate import DACA, agreement_diagnostics

    units: list[dict[str, dict[str, float]]] = []
    fits: dict[str, list[dict[str, Any]]] = {}
    first_preds: dict[str, list] = {}
    first_ids: list = []
    first_labels: list = []
    t_first = cfg.templates[0]
    has_labels = True
    protocol = ""
    deploy = None
    diag_joined = None
    for t in cfg.templates:
        test = join_scores(scores[("base", t, test_split)], scores[("chat", t, test_split)])
        has_labels = has_labels and bool((test.labels >= 0).all())
        if calib_split:
            calib = join_scores(scores[("base", t, calib_split)], scores[("chat", t, calib_split)])
            has_labels = has_labels and bool((calib.labels >= 0).all())
            groups = _subject_groups(test, calib)
            protocol = f"per-subject calibrator fitted on '{calib_split}', evaluated on '{test_split}', averaged over subjects"
            if t == t_first:
                deploy = (calib.base, calib.chat, calib)
        else:
            groups = _random_splits(test, cfg)
            protocol = (f"{round(100 * cfg.calib_frac)}% calibration / {round(100 * (1 - cfg.calib_frac))}% test, "
                        f"{cfg.n_splits} random splits (seed {cfg.seed})")
            if t == t_first:
                deploy = (test.base, test.chat, test)
        if t == t_first:
            diag_joined = test if not calib_split else join_scores(
                scores[("base", t, calib_split)], scores[("chat", t, calib_split)])
        for gi, (name, (cb, cc, cy), (eb, ec, ey, eids)) in enumerate(groups):
            labels_c = cy if has_labels else None
            fitted = _fit_all(cb, cc, labels_c, cfg.scaling)
            for m, cal in fitted.items():
                fits.setdefault(m, []).append({"template": t, **_fit_record(name, cal)})
            logp = _predict(fitted, eb, ec)
            units.append(_evaluate(logp, ey if has_labels else None, cfg.n_bins))
            # plots use the first template's first split (all subjects for MMLU)
            if t == t_first and (calib_split or gi == 0):
                for m, lp in logp.items():
                    first_preds.setdefault(m, []).append(lp)
                first_ids.extend(eids)
                first_labels.extend(ey.tolist())

    if deploy is None or diag_joined is None:  # pragma: no cover - the first template always sets them
        raise FitError("internal error: no calibration data was assembled")
    db, dc, dj = deploy
    try:
        cal = DACA(scaling=cfg.scaling).fit(db, dc)
    except FitError as e:
        # the evaluation is still worth writing (its diagnostics show why); there is just nothing to deploy
        log.warning("no deployable calibrator: %s", e)
        calibrator: dict[str, Any] = {"error": str(e)}
    else:
        cal.save(out / "calibrator.json", inputs={
            "base": cfg.base, "chat": cfg.chat, "dataset": cfg.dataset, "split": calib_split or test_split,
            "template": t_first, "scoring": cfg.scoring, "n_questions": int(len(dj.ids)),
        })
        calibrator = {"temperature": float(getattr(cal, "temperature_", float("nan"))),
                      "n_agree": int(cal.n_agree_), "agreement_rate": float(cal.agreement_rate_)}
    for m, parts in first_preds.items():
        lp = _pad_concat(parts)
        labels = [int(v) if v >= 0 else None for v in first_labels]
        rows = [[None if np.isneginf(v) else float(v) for v in r] for r in lp]
        ScoreSet.from_rows(list(first_ids), rows, labels, meta={"method": m, "log_probabilities": True},
                           source=f"predictions/{m}").save(out / "predictions" / f"{m}.parquet")

    diag_labels = diag_joined.labels if bool((diag_joined.labels >= 0).all()) else None
    diagnostics = agreement_diagnostics(diag_joined.base, diag_joined.chat, diag_labels)
    doc: dict[str, Any] = {
        "refcal_version": __version__,
        "config": asdict(cfg),
        "has_labels": has_labels,
        "n_questions": int(sum(len(scores[("chat", t_first, s)]) for s in {test_split, calib_split} if s)),
        "n_eval": len(first_ids),
        "n_units": len(units),
        "protocol": protocol,
        "methods": _aggregate(units),
        "method_labels": {m: METHOD_LABELS[m] for m in METHODS},
        "diagnostics": diagnostics,
        "fits": fits,
        "calibrator": calibrator,
        "fallbacks": {m: sum("error" in f for f in recs) for m, recs in fits.items()},
    }
    if has_labels:
        preds = {m: _pad_concat(p) for m, p in first_preds.items()}
        doc["selective"] = _selective(preds, np.asarray(first_labels))
        doc["bootstrap"] = _bootstrap(preds, np.asarray(first_labels), cfg)
    return doc


def _bootstrap(preds: dict[str, np.ndarray], labels: np.ndarray, cfg: RunConfig) -> dict[str, Any]:
    """95 % percentile-bootstrap intervals (1000 resamples of questions) on the plotted questions."""
    from . import metrics

    out: dict[str, Any] = {"n_boot": 1000, "level": 0.95, "n": int(len(labels)), "methods": {}}
    for m, lp in preds.items():
        p = np.exp(lp)
        out["methods"][m] = {}
        fns = {"ece": functools.partial(metrics.ece, n_bins=cfg.n_bins), "brier": metrics.brier,
               "nll": metrics.nll}
        for name, fn in fns.items():
            ci = metrics.bootstrap_ci(fn, p, labels, n_boot=1000, alpha=0.05, seed=cfg.seed)
            out["methods"][m][name] = {"estimate": ci.estimate, "low": ci.low, "high": ci.high}
    return out


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


def _pad_concat(parts: list[np.ndarray]) -> np.ndarray:
    k = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, k - p.shape[1])), constant_values=-np.inf) for p in parts])


def _subject_groups(test, calib):
    """MMLU: (name, calibration arrays, evaluation arrays) per subject."""
    t_sub = np.asarray(test.chat_scores.columns.get("subject", np.array(["all"] * len(test.ids), dtype=object)))
    c_sub = np.asarray(calib.chat_scores.columns.get("subject", np.array(["all"] * len(calib.ids), dtype=object)))
    out = []
    for s in sorted(set(t_sub.tolist())):
        ci, ti = np.flatnonzero(c_sub == s), np.flatnonzero(t_sub == s)
        if ci.size == 0:
            log.warning("subject %s has no calibration questions; skipped", s)
            continue
        out.append((str(s), (calib.base[ci], calib.chat[ci], calib.labels[ci]),
                    (test.base[ti], test.chat[ti], test.labels[ti], test.ids[ti].tolist())))
    if not out:
        raise InputError("no subject has both calibration and test questions; check --subjects and --limit")
    return out


def _random_splits(test, cfg: RunConfig):
    n = len(test.ids)
    n_cal = int(round(cfg.calib_frac * n))
    if n_cal < 2 or n - n_cal < 2:
        raise InputError(f"{n} questions are too few to split {cfg.calib_frac:.0%} / {1 - cfg.calib_frac:.0%}; "
                         "raise --limit")
    rng = np.random.default_rng(cfg.seed)
    out = []
    for i in range(cfg.n_splits):
        perm = rng.permutation(n)
        ci, ti = np.sort(perm[:n_cal]), np.sort(perm[n_cal:])
        out.append((f"split{i}", (test.base[ci], test.chat[ci], test.labels[ci]),
                    (test.base[ti], test.chat[ti], test.labels[ti], test.ids[ti].tolist())))
    return out


def summary_table(metrics_doc: dict) -> str:
    """The comparison table printed at the end of ``refcal run``."""
    methods = metrics_doc["methods"]
    if metrics_doc.get("has_labels"):
        cols = [("ece", "ECE %", 100), ("mce", "MCE %", 100), ("aece", "AECE %", 100), ("brier", "Brier", 1),
                ("nll", "NLL", 1), ("accuracy", "Acc", 1)]
    else:
        cols = [("mean_confidence", "mean conf", 1)]
    lines = [f"{'method':<40}" + "".join(f"{c[1]:>18}" for c in cols)]
    for m in METHODS:
        if m not in methods:
            continue
        cells = []
        for key, _, scale in cols:
            e = methods[m].get(key)
            if e is None:
                cells.append(f"{'n/a':>18}")
            elif e["std"] != e["std"]:  # one unit: no spread to report
                cells.append(f"{e['mean'] * scale:.3f}".rjust(18))
            else:
                cells.append(f"{e['mean'] * scale:.3f} ± {e['std'] * scale:.3f}".rjust(18))
        lines.append(f"{METHOD_LABELS[m]:<40}" + "".join(cells))
    return "\n".join(lines)


def load_metrics(run_dir: str | os.PathLike) -> dict:
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        raise InputError(f"{run_dir}: no metrics.json; is this a folder written by `refcal run`?")
    return json.loads(path.read_text())


__all__ = ["RunConfig", "run", "summary_table", "load_metrics"]
