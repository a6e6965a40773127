"""Fit every selected method of the registry on each unit, evaluate it, aggregate: a :class:`RunResult`.

Metrics come from :mod:`refcal.metrics` on ``exp`` of each method's log-probabilities, except the NLL,
taken from the log-probabilities themselves (``exp`` underflows below -745 and would make it infinite).
A ``top_label`` method (an answer and a confidence, :class:`refcal.metrics.TopLabel`) gets the metrics of
confidence and correctness; its NLL and multiclass Brier score are undefined (NaN, "n/a" in tables).
A method with a ``source`` reads that score set of the chat model (``Part.extra``) as its ``chat`` input.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import __version__
from .._math import log_softmax
from ..calibrate.methods import HIDDEN_SOURCE, METHODS, MethodContext
from ..errors import FitError
from ..metrics import TopLabel
from .config import RunConfig
from .protocol import Plan
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


class Unfitted:
    """Stand-in when a fit is impossible on one unit (e.g. no agreeing question in a small subject): that
    unit is evaluated with the chat model unchanged (τ = 1), and its fit record says so."""

    temperature_ = 1.0
    n_iter_ = 0
    converged_ = False

    def __init__(self, error: str):
        self.error = error

    def predict_log_proba(self, chat: np.ndarray) -> np.ndarray:
        return log_softmax(chat)


@dataclass
class Evaluation:
    """The result, plus what the run folder stores beside ``metrics.json``.

    ``predictions``: ``{method: (ids, log-probabilities (n, k), labels)}`` on the plotted questions;
    ``calibrator``: the deployable DACA (``None`` when it could not be fitted) and the inputs it records.
    """

    result: RunResult
    predictions: dict[str, tuple[list, np.ndarray, list[int | None]]] = field(default_factory=dict)
    calibrator: Any = None
    calibrator_inputs: dict[str, Any] = field(default_factory=dict)


def evaluate(cfg: RunConfig, plan: Plan, *, n_questions: int) -> Evaluation:
    """Fit, evaluate and aggregate every method of ``cfg.methods`` on the units of ``plan``."""

    from ..calibrate import DACA, agreement_diagnostics

    ctx = MethodContext(has_labels=plan.has_labels, scaling=cfg.scaling, scoring=cfg.scoring,
                        hidden_states=bool(plan.units) and all(HIDDEN_SOURCE in u.calib.extra for u in plan.units))
    selected = [METHODS[k] for k in cfg.methods]
    unavailable = {m.key: why for m in selected if (why := m.why_not(ctx))}
    usable = [m for m in selected if m.key not in unavailable]
    for key, why in unavailable.items():
        log.warning("%s is not evaluated: %s", METHODS[key].label, why)

    per_unit: list[dict[str, dict[str, float]]] = []
    fits: dict[str, list[FitRecord]] = {}
    plotted: dict[str, list[Any]] = {}
    plotted_ids: list = []
    plotted_labels: list[int] = []
    for unit in plan.units:
        labels = unit.calib.labels if plan.has_labels else None
        logp: dict[str, np.ndarray] = {}
        for m in usable:
            fitted = None
            calib_chat = unit.calib.extra[m.source] if m.source else unit.calib.chat
            test_chat = unit.test.extra[m.source] if m.source else unit.test.chat
            if m.fit is not None:
                try:
                    fitted = m.fit(unit.calib.base, calib_chat, labels, scaling=cfg.scaling)
                except FitError as e:
                    log.warning("%s: %s; this unit is evaluated uncalibrated", m.label, e)
                    fitted = Unfitted(str(e))
                fits.setdefault(m.key, []).append(_fit_record(unit.template, unit.group, fitted))
            logp[m.key] = m.apply(fitted, unit.test.base, test_chat)
        per_unit.append(_unit_metrics(logp, unit.test.labels if plan.has_labels else None, cfg.n_bins))
        if unit.plotted:
            for key, lp in logp.items():
                plotted.setdefault(key, []).append(lp)
            plotted_ids.extend(unit.test.ids)
            plotted_labels.extend(unit.test.labels.tolist())

    pool = plan.pool
    inputs = {"base": cfg.base, "chat": cfg.chat, "dataset": cfg.dataset, "split": plan.pool_split,
              "template": cfg.templates[0], "scoring": cfg.scoring, "n_questions": int(len(pool.ids))}
    try:
        deployed = DACA(scaling=cfg.scaling).fit(pool.base, pool.chat)
    except FitError as e:
        # the evaluation is still worth writing (its diagnostics show why); there is just nothing to deploy
        log.warning("no deployable calibrator: %s", e)
        deployed, calibrator = None, DeployedCalibrator(error=str(e))
    else:
        calibrator = DeployedCalibrator(temperature=float(getattr(deployed, "temperature_", float("nan"))),
                                        n_agree=int(deployed.n_agree_),
                                        agreement_rate=float(deployed.agreement_rate_))
    pool_labels = pool.labels if bool((pool.labels >= 0).all()) else None
    diag = agreement_diagnostics(pool.base, pool.chat, pool_labels)
    premise = premise_diagnostics(pool.base, pool.chat, pool_labels, seed=cfg.seed) if pool_labels is not None else {}

    result = RunResult(
        refcal_version=__version__,
        config=cfg.to_dict(),
        has_labels=plan.has_labels,
        n_questions=n_questions,
        n_eval=len(plotted_ids),
        n_units=len(per_unit),
        protocol=plan.description,
        units=[{"template": u.template, "group": u.group} for u in plan.units],
        methods=aggregate(per_unit),
        method_labels={k: METHODS[k].label for k in cfg.methods},
        unavailable=unavailable,
        diagnostics=Diagnostics(**diag),
        fits=fits,
        calibrator=calibrator,
        fallbacks={m: sum(r.error is not None for r in recs) for m, recs in fits.items()},
        premise=premise,
    )
    preds = {m: concat_top_label(parts) if isinstance(parts[0], TopLabel) else pad_concat(parts)
             for m, parts in plotted.items()}
    if plan.has_labels and preds:
        y = np.asarray(plotted_labels)
        result.selective = selective(preds, y)
        result.bootstrap = bootstrap(preds, y, n_bins=cfg.n_bins, seed=cfg.seed)
    labels_out = [int(v) if v >= 0 else None for v in plotted_labels]
    predictions = {m: (list(plotted_ids), lp, labels_out) for m, lp in preds.items()}
    return Evaluation(result, predictions, deployed, inputs)


def _fit_record(template: int, group: str, cal: Any) -> FitRecord:
    rec = FitRecord(group=group, template=template, n_iter=int(getattr(cal, "n_iter_", 0)),
                    converged=bool(getattr(cal, "converged_", True)))
    if isinstance(cal, Unfitted):
        rec.error, rec.fallback = cal.error, "uncalibrated (temperature 1)"
    if hasattr(cal, "temperature_"):
        rec.temperature = float(cal.temperature_)
    for attr in ("temperature_agree_", "temperature_disagree_", "n_agree_", "agreement_rate_", "n_"):
        if hasattr(cal, attr):
            setattr(rec, attr.rstrip("_"), float(getattr(cal, attr)))
    return rec


def _unit_metrics(logp: dict[str, np.ndarray], labels: np.ndarray | None, n_bins: int) -> dict[str, dict[str, float]]:
    """Every metric of every method on one unit's evaluation questions."""
    from .. import metrics

    res: dict[str, dict[str, float]] = {}
    for name, lp in logp.items():
        if isinstance(lp, TopLabel):  # an answer and its confidence: no distribution, no NLL
            row = {"mean_confidence": float(np.mean(lp.confidence))}
            if labels is not None:
                row.update(metrics.evaluate(lp, labels, n_bins=n_bins, warn=False))  # aggregate() says it once
            res[name] = row
            continue
        p = np.exp(lp)
        row = {"mean_confidence": float(p.max(axis=1).mean())}
        if labels is not None:
            row.update(metrics.evaluate(p, labels, n_bins=n_bins, warn=False))  # aggregate() says it once
            row["nll"] = metrics.nll_from_log_proba(lp, labels)
            row.update(metrics.conformal_metrics(p, labels, alpha=CONFORMAL_ALPHA, seed=0))
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
    from .. import metrics

    return {m: metrics.selective_accuracy(_probs(lp), labels) for m, lp in preds.items()}


def _probs(lp: Any) -> Any:
    """Probabilities of log-probabilities; a TopLabel as it is."""
    return lp if isinstance(lp, TopLabel) else np.exp(lp)


def bootstrap(preds: dict[str, np.ndarray], labels: np.ndarray, *, n_bins: int, seed: int) -> Bootstrap:
    """95 % percentile-bootstrap intervals of the metrics of :data:`refcal.metrics.BOOTSTRAPPED` and the NLL
    (1000 resamples of the plotted questions; the same resamples for every metric and method). The NLL comes
    from the log-probabilities, as in the table, so its interval is finite whenever the NLL is."""
    from .. import metrics

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
    from .._math import softmax

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


__all__ = ["Evaluation", "Unfitted", "evaluate", "aggregate", "selective", "bootstrap", "pad_concat",
           "concat_top_label", "premise_diagnostics"]
