"""Fit every selected method of the registry on each unit, evaluate it, aggregate: a :class:`RunResult`.

Metrics come from :mod:`refcal.metrics` on ``exp`` of each method's log-probabilities, except the NLL,
taken from the log-probabilities themselves (``exp`` underflows below -745 and would make it infinite).
A top-label method (an answer and a confidence, :class:`refcal.metrics.TopLabel`) gets the metrics of
confidence and correctness; its NLL and multiclass Brier score are undefined (NaN, "n/a" in tables).
Each method reads the inputs its registry entry names for the run's kind (:func:`part_input`); free-form
runs (``plan.claim``) evaluate every method's ``log [1 - c, c]`` as the claim that the answer is correct.
Both kinds of run go through :func:`evaluate`; nothing here names a method.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__, metrics
from .._math import softmax
from ..calibrate import DACA, agreement_diagnostics
from ..calibrate.methods import METHODS, Method, MethodContext
from ..errors import FitError
from ..metrics import TopLabel
from .config import RunConfig
from .protocol import Part, Plan
from .provenance import provenance
from .result import (
    Bootstrap,
    DeployedCalibrator,
    Diagnostics,
    FitRecord,
    MetricSummary,
    RunResult,
)

log = logging.getLogger(__name__)

N_BOOT = 1000
ALPHA = 0.05  # 95 % intervals
#: miscoverage of the conformal sets in the table (90 % sets; metrics.conformal_metrics)
CONFORMAL_ALPHA = 0.1
#: the fit record of a unit whose fit was impossible: evaluated with the chat model unchanged
UNFITTED = {"temperature": 1.0}


@dataclass
class Evaluation:
    """The result, plus what the run folder stores beside ``metrics.json``.

    ``predictions``: ``{method: (ids, log-probabilities (n, k) or TopLabel, labels)}`` on the plotted
    questions; ``calibrator``: the deployable DACA (``None`` when it could not be fitted) and the inputs
    it records.
    """

    result: RunResult
    predictions: dict[str, tuple[list, Any, list[int | None]]] = field(default_factory=dict)
    calibrator: Any = None
    calibrator_inputs: dict[str, Any] = field(default_factory=dict)


def part_input(part: Part, role: str, name: str | None) -> Any:
    """The input ``name`` of ``role`` (``"chat"`` / ``"base"``) for a part's questions: ``scores`` are the
    part's own logits, anything else one of its ``extra`` inputs (the base model's under ``base_<name>``)."""
    if name is None:
        return None
    if name == "scores":
        return part.chat if role == "chat" else part.base
    return part.extra[name if role == "chat" else f"base_{name}"]


def evaluate(cfg: RunConfig, plan: Plan, *, n_questions: int) -> Evaluation:
    """Fit, evaluate and aggregate every method of ``cfg.methods`` on the units of ``plan`` (either kind)."""
    ctx = MethodContext(has_labels=plan.has_labels, has_base=plan.pool is not None, scaling=cfg.scaling,
                        scoring=cfg.scoring, kind=plan.kind, missing=plan.missing, no_labels=plan.no_labels)
    selected = [METHODS[k] for k in cfg.methods]
    unavailable = {m.key: why for m in selected if (why := m.why_not(ctx))}
    usable = [m for m in selected if m.key not in unavailable]
    for key, why in unavailable.items():
        log.warning("%s is not evaluated: %s", METHODS[key].kind_label(plan.kind), why)

    per_unit: list[dict[str, dict[str, float]]] = []
    fits: dict[str, list[FitRecord]] = {}
    plotted: dict[str, list[Any]] = {}
    plotted_ids: list = []
    plotted_labels: dict[str, list[int]] = {}
    for unit in plan.units:
        preds: dict[str, Any] = {}
        labels: dict[str, np.ndarray] = {}
        for m in usable:
            fitted, record = _fit(m, unit.calib, plan, cfg.scaling)
            if record is not None:
                fits.setdefault(m.key, []).append(FitRecord(group=unit.group, template=unit.template, **record))
            inputs = m.inputs[plan.kind]
            preds[m.key] = m.predict(fitted, part_input(unit.test, "chat", inputs.chat),
                                     part_input(unit.test, "base", inputs.base), unit.test.chat, plan.kind)
            labels[m.key] = unit.test.labels_by.get(inputs.labels, unit.test.labels)
        per_unit.append(_unit_metrics(preds, labels if plan.has_labels else None, cfg.n_bins, claim=plan.claim))
        if unit.plotted:
            for key, lp in preds.items():
                plotted.setdefault(key, []).append(claim_of(lp) if plan.claim else lp)
                plotted_labels.setdefault(key, []).extend(labels[key].tolist())
            plotted_ids.extend(unit.test.ids)

    deployed, calibrator, diag, premise = _pool_fits(cfg, plan)
    result = RunResult(
        refcal_version=__version__, config=cfg.to_dict(), has_labels=plan.has_labels, n_questions=n_questions,
        n_eval=len(plotted_ids), n_units=len(per_unit), protocol=plan.description,
        units=[{"template": u.template, "group": u.group} for u in plan.units],
        methods=aggregate(per_unit), method_labels={k: METHODS[k].kind_label(plan.kind) for k in cfg.methods},
        unavailable=unavailable, diagnostics=diag, fits=fits, calibrator=calibrator,
        fallbacks={m: sum(r.error is not None for r in recs) for m, recs in fits.items()}, premise=premise,
        provenance=provenance(),
    )
    preds = {m: concat_top_label(parts) if isinstance(parts[0], TopLabel) else pad_concat(parts)
             for m, parts in plotted.items()}
    if plan.has_labels and preds:
        for m, lp in preds.items():  # each method against its own labels (free-form verbal: its guess's)
            y = np.asarray(plotted_labels[m])
            judged = y >= 0  # free-form: a question without references is not judged (-1)
            if not judged.any():
                continue
            if not judged.all():
                lp, y = lp[judged], y[judged]
            result.selective.update(selective({m: lp}, y))
            b = bootstrap({m: lp}, y, n_bins=cfg.n_bins, seed=cfg.seed)
            if result.bootstrap is None:
                result.bootstrap = b
            else:
                result.bootstrap.methods.update(b.methods)
    predictions = {m: (list(plotted_ids), lp, [int(v) if v >= 0 else None for v in plotted_labels[m]])
                   for m, lp in preds.items()}
    inputs = {"base": cfg.base, "chat": cfg.chat, "dataset": cfg.dataset, "split": plan.pool_split,
              **plan.calibrator_inputs}
    return Evaluation(result, predictions, deployed, inputs)


def _fit(m: Method, calib: Part, plan: Plan, scaling: str) -> tuple[Any, dict[str, Any] | None]:
    """``(fitted calibrator or None, fit record or None)`` of ``m`` on a unit's calibration part; a failed fit
    gives ``None`` and a record saying the unit is evaluated with the chat model unchanged."""
    if m.calibrator is None:
        return None, None
    inputs = m.inputs[plan.kind]
    labels = calib.labels_by.get(inputs.labels, calib.labels) if plan.has_labels else None
    try:
        cal = fit_judged(m, part_input(calib, "chat", inputs.chat), part_input(calib, "base", inputs.base), labels,
                         scaling)
    except FitError as e:
        log.warning("%s: %s; this unit is evaluated uncalibrated", m.kind_label(plan.kind), e)
        return None, {"n_iter": 0, "converged": False, "params": dict(UNFITTED), "error": str(e),
                      "fallback": "uncalibrated (temperature 1)"}
    return cal, {"n_iter": int(cal.n_iter_), "converged": bool(cal.converged_), "params": cal.fitted_params()}


def fit_judged(m: Method, chat: Any, base: Any, labels: np.ndarray | None, scaling: str) -> Any:
    """``m.fit``; a labelled method sees the judged questions only (free-form: those with references, label
    >= 0), a label-free one every question and never a label."""
    if m.needs_labels and labels is not None and bool((labels < 0).any()):
        keep = labels >= 0
        chat, labels = chat[keep], labels[keep]
        base = None if base is None else base[keep]
    return m.fit(chat, base, labels, scaling=scaling)


def _pool_fits(cfg: RunConfig, plan: Plan) -> tuple[Any, DeployedCalibrator, Diagnostics | None, dict[str, Any]]:
    """The deployable DACA on the calibration pool (its task recorded), the agreement diagnostics and, with
    labels where the kind asks for it, the premise check."""
    pool = plan.pool
    if pool is None:
        return None, DeployedCalibrator(error=plan.no_pool), None, {}
    try:
        deployed = DACA(scaling=cfg.scaling).fit(pool.base, pool.chat)
    except FitError as e:
        # the evaluation is still worth writing (its diagnostics show why); there is just nothing to deploy
        log.warning("no deployable calibrator: %s", e)
        deployed, calibrator = None, DeployedCalibrator(error=str(e))
    else:
        deployed.task_ = plan.kind
        calibrator = DeployedCalibrator(temperature=float(getattr(deployed, "temperature_", float("nan"))),
                                        n_agree=int(deployed.n_agree_), agreement_rate=float(deployed.agreement_rate_))
    pool_labels = pool.labels if bool((pool.labels >= 0).all()) else None
    diag = Diagnostics(**agreement_diagnostics(pool.base, pool.chat, pool_labels))
    premise = premise_diagnostics(pool.base, pool.chat, pool_labels, seed=cfg.seed) \
        if pool_labels is not None and plan.premise else {}
    return deployed, calibrator, diag, premise


def claim_of(lp: np.ndarray) -> TopLabel:
    """Free-form: ``log [1 - c, c]`` -> the claim "this answer is correct" (option 1) held with confidence ``c``.

    Evaluated against the verdicts (label 1 = correct), every top-label metric is then the usual one of
    free-form calibration: ECE / MCE / AECE bin ``c`` against the share of correct answers, Brier is
    ``(c - correct)^2``, AUROC ranks correct above wrong answers by ``c``, and accuracy is the answers' own.
    """
    c = np.exp(np.asarray(lp, dtype=np.float64)[:, 1])
    return TopLabel(np.ones(len(c), dtype=np.int64), np.clip(c, 0.0, 1.0))


def _unit_metrics(preds: dict[str, Any], labels: dict[str, np.ndarray] | np.ndarray | None, n_bins: int, *,
                  claim: bool = False) -> dict[str, dict[str, float]]:
    """Every metric of every method on one unit's evaluation questions (``labels``: per method, or one array).

    ``claim`` (free-form): each method's ``log [1 - c, c]`` is evaluated as :func:`claim_of`, its NLL the
    binary log loss of ``c`` against the verdict."""
    res: dict[str, dict[str, float]] = {}
    for name, lp in preds.items():
        y = labels[name] if isinstance(labels, dict) else labels  # per method, or the same for every one
        if y is not None and not bool((y >= 0).all()):  # free-form: metrics on the judged answers only
            judged = y >= 0
            lp, y = (lp[judged], y[judged]) if judged.any() else (lp, None)
        shown = claim_of(lp) if claim else lp
        if isinstance(shown, TopLabel):  # an answer and its confidence: no distribution, no NLL
            row = {"mean_confidence": float(np.mean(shown.confidence))}
            if y is not None:
                row.update(metrics.evaluate(shown, y, n_bins=n_bins, warn=False))  # aggregate() says it once
                if claim:
                    row["nll"] = metrics.nll_from_log_proba(lp, y)
            res[name] = row
            continue
        p = np.exp(lp)
        row = {"mean_confidence": float(p.max(axis=1).mean())}
        if y is not None:
            row.update(metrics.evaluate(p, y, n_bins=n_bins, warn=False))  # aggregate() says it once
            row["nll"] = metrics.nll_from_log_proba(lp, y)
            row.update(metrics.conformal_metrics(p, y, alpha=CONFORMAL_ALPHA, seed=0))
        res[name] = row
    return res


def aggregate(per_unit: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, MetricSummary]]:
    """Mean ± std of each metric over units. NaN marks an undefined value (e.g. AUROC when every answer of
    a unit is right): left out and counted; an infinite value is real and makes the mean infinite. An
    undefined AUROC is logged once per method, with the units it concerns."""
    values: dict[str, dict[str, list[float]]] = {}
    for unit in per_unit:
        for method, row in unit.items():
            for key, v in row.items():
                values.setdefault(method, {}).setdefault(key, []).append(float(v))
    out: dict[str, dict[str, MetricSummary]] = {}
    for method, rows in values.items():
        for key, vals_list in rows.items():
            vals = np.asarray(vals_list, dtype=float)
            kept = vals[~np.isnan(vals)]
            spread = kept.size > 1 and bool(np.isfinite(kept).all())
            out.setdefault(method, {})[key] = MetricSummary(
                mean=float(kept.mean()) if kept.size else float("nan"),
                std=float(kept.std(ddof=1)) if spread else float("nan"),
                values=vals_list, n_undefined=int(vals.size - kept.size))
    for method, rows in values.items():
        _warn_undefined_auroc(method, rows)
    return out


def _warn_undefined_auroc(method: str, rows: dict[str, list[float]]) -> None:
    """One line for a method whose AUROC was undefined (a unit whose answers were all right or all wrong)."""
    auroc, acc = rows.get("auroc", []), rows.get("accuracy", [])
    bad = [i for i, v in enumerate(auroc) if np.isnan(v)]
    if not bad:
        return
    right = sum(i < len(acc) and acc[i] == 1.0 for i in bad)
    wrong = sum(i < len(acc) and acc[i] == 0.0 for i in bad)
    why = (f"every answer right on {right}, every answer wrong on {wrong}" if right + wrong == len(bad)
           else "every answer right or every answer wrong there")
    log.warning("%s: AUROC is undefined on %d of %d units (%s); %s", METHODS[method].label if method in METHODS else method, len(bad), len(auroc),
                why, "left out of its mean" if len(bad) < len(auroc) else "shown as n/a")


def selective(preds: dict[str, np.ndarray], labels: np.ndarray) -> dict[str, Any]:
    """Selective-accuracy curves of every method on the plotted questions."""
    return {m: metrics.selective_accuracy(_probs(lp), labels) for m, lp in preds.items()}


def _probs(lp: Any) -> Any:
    """Probabilities of log-probabilities; a TopLabel as it is."""
    return lp if isinstance(lp, TopLabel) else np.exp(lp)


def bootstrap(preds: dict[str, np.ndarray], labels: np.ndarray, *, n_bins: int, seed: int) -> Bootstrap:
    """95 % percentile-bootstrap intervals of the metrics of :data:`refcal.metrics.BOOTSTRAPPED` and the NLL
    (1000 resamples of the plotted questions; the same resamples for every metric and method). The NLL comes
    from the log-probabilities, as in the table, so its interval is finite whenever the NLL is."""
    out = Bootstrap(n_boot=N_BOOT, level=0.95, n=int(len(labels)))
    for m, lp in preds.items():
        p = _probs(lp)
        out.methods[m] = metrics.bootstrap_all(p, labels, n_bins=n_bins, n_boot=N_BOOT, alpha=ALPHA, seed=seed)
        if not isinstance(lp, TopLabel):  # a TopLabel has no NLL
            out.methods[m]["nll"] = metrics.bootstrap_nll_ci(lp, labels, n_boot=N_BOOT, alpha=ALPHA, seed=seed)
    return out


def concat_top_label(parts: list[TopLabel]) -> TopLabel:
    """One TopLabel of the parts' questions, in order."""
    return TopLabel(np.concatenate([p.prediction for p in parts]), np.concatenate([p.confidence for p in parts]))


def premise_diagnostics(base: np.ndarray, chat: np.ndarray, labels: np.ndarray, *, seed: int = 0,
                        n_boot: int = N_BOOT) -> dict[str, Any]:
    """Does the premise of DACA and ReEval hold here: is the base model calibrated where the models agree?

    For each model: mean confidence and accuracy on the agreeing questions, their gap (confidence minus
    accuracy; positive = over-confident) with a 95 % percentile-bootstrap interval, and a one-line verdict.
    """
    agree = np.argmax(base, axis=1) == np.argmax(chat, axis=1)
    idx = np.flatnonzero(agree)
    out: dict[str, Any] = {"n_agree": int(idx.size)}
    if idx.size < 2:
        out["verdict"] = {"base": f"only {idx.size} agreeing question(s): the premise cannot be checked"}
        return out
    rng = np.random.default_rng(seed)
    boots = [rng.choice(idx, idx.size) for _ in range(n_boot)]
    verdict = {}
    for role, logits in (("base", base), ("chat", chat)):
        p = softmax(logits)
        conf = p.max(axis=1)
        corr = (np.argmax(p, axis=1) == labels).astype(float)
        gap = float(conf[idx].mean() - corr[idx].mean())
        gaps = np.array([conf[b].mean() - corr[b].mean() for b in boots])
        lo, hi = (float(v) for v in np.quantile(gaps, [ALPHA / 2, 1 - ALPHA / 2]))
        out[role] = {"confidence": float(conf[idx].mean()), "accuracy": float(corr[idx].mean()), "gap": gap,
                     "gap_low": lo, "gap_high": hi}
        verdict[role] = _verdict(role, gap, lo, hi)
    out["verdict"] = verdict
    return out


def _verdict(role: str, gap: float, lo: float, hi: float) -> str:
    where = f"where the models agree (gap {100 * gap:+.1f} points, 95 % interval [{100 * lo:+.1f}, {100 * hi:+.1f}])"
    if role == "chat":
        if lo > 0:
            return f"the chat model is over-confident by {100 * gap:.0f} points {where}: there is something to correct"
        if hi < 0:
            return f"the chat model is under-confident by {100 * -gap:.0f} points {where}"
        return f"the chat model is calibrated within the interval {where}"
    if lo > 0:
        return (f"the base model is over-confident by {100 * gap:.0f} points {where}: DACA and ReEval inherit it, "
                "so DACA will under-correct")
    if hi < 0:
        return (f"the base model is under-confident by {100 * -gap:.0f} points {where}: DACA will over-correct "
                "and ReEval will be under-confident")
    return f"the base model is calibrated within the interval {where}: the premise of DACA and ReEval holds"


def pad_concat(parts: list[np.ndarray]) -> np.ndarray:
    """Stack (n_i, k_i) log-probabilities, padding narrower ones with -inf (a missing option)."""
    k = max(p.shape[1] for p in parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, k - p.shape[1])), constant_values=-np.inf) for p in parts])


__all__ = ["Evaluation", "evaluate", "part_input", "claim_of", "aggregate", "selective", "bootstrap", "pad_concat",
           "concat_top_label", "premise_diagnostics"]
