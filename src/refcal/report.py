"""The run report: ``report.html`` (one self-contained file), ``report.md`` and ``plots/*.png|svg``.

:func:`write_report` reads a run folder (see ``docs/ARCHITECTURE.md``): ``metrics.json`` (required; every
number in the tables comes from it), ``config.json``, ``calibrator.json`` and ``predictions/<method>.parquet``
(calibrated log-probabilities on the evaluation questions of the first split/template; the plots are drawn
from them). The page is built once as a list of blocks that two renderers turn into HTML and Markdown, so
both files show the same numbers. Every string read from a file is escaped.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write_text
from .calibrate.methods import METHODS, ordered_keys
from .errors import ScoreFileError
from .metrics import TopLabel, columns
from .run.evaluate import CONFORMAL_ALPHA
from .run.result import Bootstrap, Diagnostics, FitRecord, MetricSummary, RunResult

__all__ = ["write_report"]

log = logging.getLogger(__name__)

#: (key, header, scale, decimals, lower is better): the ``report`` view of :data:`refcal.metrics.COLUMNS`
_COLUMNS = [(c.key, c.header, c.scale, c.decimals, c.lower_is_better) for c in columns("report")]
#: the second table: smooth / classwise / debiased ECE, the Brier decomposition, conformal sets
_MORE_COLUMNS = [(c.key, c.header, c.scale, c.decimals, c.lower_is_better) for c in columns("report_more")]
_LABEL_METRICS = ("ECE, MCE, AECE, Brier score, NLL, accuracy, AUROC, AURC, smooth / classwise / debiased ECE, "
                  "the Brier decomposition, conformal sets, reliability diagrams and selective accuracy / "
                  "risk–coverage curves")


# ---------------------------------------------------------------------------------------------- blocks
@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    collapsed: str | None = None  # summary text: rendered folded in HTML


@dataclass
class _Image:
    stem: str  # plots/<stem>.png
    caption: str


def _fmt(v: Any, scale: float = 1, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v) * scale:.{nd}f}"
    return str(v)


def _comparison(result: RunResult, names: Mapping[str, str], table: list | None = None) -> _Table:
    """Methods × metrics, mean ± std over templates/splits; best mean per column in bold (base excluded).
    A method that could not apply to the run is listed with its reason."""
    methods, has_labels = result.methods, result.has_labels
    order = ordered_keys(methods)
    if has_labels:
        cols = [c for c in (table or _COLUMNS) if any(c[0] in methods[m] for m in order)]
    else:
        keys = sorted({k for m in order for k in methods[m]})
        cols = [(k, k.replace("_", " "), 1, 4, True) for k in keys]
    rows, bold, means = [], set(), {}
    for r, m in enumerate(order):
        row = [names.get(m, m)]
        for c, (key, _, scale, nd, _) in enumerate(cols, 1):
            e: MetricSummary | None = methods[m].get(key)
            mean = None if e is None or np.isnan(e.mean) else e.mean
            cell = _fmt(mean, scale, nd)
            if e is not None and mean is not None and len(e.values) > 1 and np.isfinite(mean):
                cell += f" ± {_fmt(e.std, scale, nd)}"
            row.append(cell)
            if mean is not None and np.isfinite(mean):
                means[(r, c)] = round(mean * scale, nd)  # compare what is shown: ties in print tie here
        rows.append(row)
    if has_labels:
        for c, (_, _, _, _, lower) in enumerate(cols, 1):
            cand = {r: v for (r, cc), v in means.items() if cc == c and order[r] != "base"}
            if cand and lower is not None:  # None: a property of the data, not a score (no best)
                best = min(cand.values()) if lower else max(cand.values())
                bold |= {(r, c) for r, v in cand.items() if v == best}
    for m in ordered_keys(set(result.unavailable) - set(methods)):
        rows.append([names.get(m, m)] + [f"not applicable: {result.unavailable[m]}"] + [""] * (len(cols) - 1))
    return _Table(["method"] + [c[1] for c in cols], rows, bold)


def _kv_table(d: Mapping[str, Any], collapsed: str | None = None) -> _Table:
    rows = []
    flat: dict[str, Any] = {}
    for k, v in d.items():  # one level of nesting becomes "outer.inner" keys
        if isinstance(v, Mapping) and v and all(not isinstance(x, (dict, list)) for x in v.values()):
            flat.update({f"{k}.{kk}": vv for kk, vv in v.items()})
        else:
            flat[str(k)] = v
    for k, v in flat.items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v, default=str)
            v = v if len(v) <= 160 else v[:157] + "..."
        rows.append([str(k), _fmt(v, 1, 6)])
    return _Table(["key", "value"], rows, collapsed=collapsed)


# ---------------------------------------------------------------------------------------------- inputs
def _predictions(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{method: (probs (n, k), labels (n,))}`` from ``predictions/*.parquet`` (log-probabilities)."""
    from ._math import softmax
    from .scores import load_scores

    folder = run_dir / "predictions"
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    found = {f.stem: f for f in files}
    out = {}
    for m in ordered_keys(found):
        try:
            s = load_scores(found[m])
        except ScoreFileError as e:
            log.warning("skipping predictions of %s: %s", m, e)
            continue
        if s.meta.get("top_label"):  # rows [answered option (-1: none), stated confidence]
            out[m] = (TopLabel(s.logits[:, 0].astype(np.int64), np.clip(s.logits[:, 1], 0.0, 1.0)), s.labels)
            continue
        # softmax of log-probabilities re-normalises rows that were rounded when written
        out[m] = (softmax(s.logits), s.labels)
    return out


# ---------------------------------------------------------------------------------------------- plots
def _plots(preds, labels_ok: bool, result: RunResult, names: Mapping[str, str], n_bins: int,
           plot_dir: Path) -> tuple[list[_Image], dict[str, Path]]:
    from . import metrics
    from . import plots as P

    images, files = [], {}

    def save(fig, stem: str, caption: str) -> None:
        for p in P.save_figure(fig, plot_dir / stem):
            files[f"plots/{p.name}"] = p
        images.append(_Image(stem, caption))

    if preds:
        k = max((p.shape[1] for p, _ in preds.values() if not isinstance(p, TopLabel)), default=2)
        conf = {m: P.confidences(p) for m, (p, _) in preds.items()}
        # a stated (top-label) confidence may lie below 1/k: the axis then starts at the lowest one
        low = min([1 / k] + [float(c.min()) for m, c in conf.items() if isinstance(preds[m][0], TopLabel)])
        data = P.confidence_histogram_data(conf, low=low)
        ax = P.plot_confidence_histogram(data, labels=names, title="Confidence before and after calibration")
        save(ax.figure, "confidence_histogram",
             ("Confidence that the answer is correct" if preds and all(isinstance(p, TopLabel) for p, _ in preds.values())
              else "Confidence (max probability)") + " of each method on the evaluation questions; dotted lines: means.")
    if preds and labels_ok:
        bins = {m: metrics.reliability_bins(p, y, n_bins=n_bins) for m, (p, y) in preds.items()}
        fig = P.plot_reliability_grid(bins, titles=names)
        save(fig, "reliability", f"Reliability diagrams ({n_bins} equal-width bins): bars are accuracy, the "
             "hatched band is the gap to the bin's mean confidence, numbers are questions per bin.")
        fig = P.new_figure(11.0, 4.0)
        a1, a2 = fig.subplots(1, 2)
        # the curves run computed (metrics.json), recomputed only for a method it did not store
        curves = {m: result.selective.get(m) or metrics.selective_accuracy(p, y) for m, (p, y) in preds.items()}
        P.plot_selective_accuracy(curves, ax=a1, labels=names, title="Selective accuracy")
        P.plot_risk_coverage({m: metrics.risk_coverage(p, y) for m, (p, y) in preds.items()}, ax=a2,
                             labels=names, title="Risk–coverage")
        save(fig, "selective", "Left: accuracy on the questions whose confidence reaches the threshold "
             "(solid) and the fraction kept (dotted). Right: error rate against coverage (lower is better).")
    if labels_ok and result.bootstrap is not None and result.bootstrap.methods:
        ci = {m: result.bootstrap.methods[m]["ece"] for m in ordered_keys(result.bootstrap.methods)
              if "ece" in result.bootstrap.methods[m]}
        if ci:
            ax = P.plot_metric_intervals(ci, labels=names, title="ECE of each method")
            save(ax.figure, "ece_intervals", f"ECE of each method on the {result.bootstrap.n} plotted questions "
                 f"(dot) with its {100 * result.bootstrap.level:.0f} % bootstrap interval ({result.bootstrap.n_boot} "
                 "resamples, the same for every method); lower is better.")
    if labels_ok and result.label_budget.get("methods"):
        lb = result.label_budget
        ax = P.plot_label_budget(P.label_curves(lb), labels=names, title="ECE against the number of labels")
        save(ax.figure, "label_budget", f"ECE of each labelled method fitted on k labelled calibration questions "
             f"(mean over {lb['n_units']} units and {lb['n_draws']} label draws; band: 95 % of draws), and DACA "
             "without labels (dashed; band: 95 % bootstrap interval). "
             + lb.get("worth_labels", {}).get("sentence", "") + ".")
    groups = {m: P.group_values([asdict(r) for r in recs]) for m, recs in result.fits.items()}
    main = groups.get("daca")
    if main is not None and len(main.groups) > 1:
        others = {m: g for m, g in groups.items() if m != "daca" and g.groups}
        ax = P.plot_group_values(main, markers=others, labels=names, label=names.get("daca", "DACA"),
                                 title="Fitted temperature per group")
        save(ax.figure, "temperatures", "Temperature fitted per group (subject or split; averaged over templates), "
             "sorted by the DACA value (bars; n = agreeing questions its fit used); markers: the other "
             "methods' temperatures for the same group; dashed line: τ = 1.")
    return images, files


# ---------------------------------------------------------------------------------------------- document
def _document(res: RunResult, config: Mapping[str, Any], cal: Mapping[str, Any] | None,
              preds: Mapping[str, Any], images: list[_Image], names: Mapping[str, str]) -> list[Any]:
    has_labels = res.has_labels
    img = {i.stem: i for i in images}
    out: list[Any] = [("h1", "refcal calibration report")]
    ds, chat, base = config.get("dataset"), config.get("chat"), config.get("base")
    summary = [f"chat model: {chat}" if chat else None, f"base model: {base}" if base else None,
               f"data set: {ds}" if ds else None, f"questions: {_fmt(res.n_questions)}",
               f"evaluated: {_fmt(res.n_eval)}", f"protocol: {res.protocol or 'n/a'}",
               _wall(res.timing), f"refcal {res.refcal_version}"]
    out.append(("p", " · ".join(s for s in summary if s)))
    if not has_labels:
        out.append(("note", "This run has no labels. The metrics that need labels — " + _LABEL_METRICS + " — "
                    "cannot be computed and are not shown. What is shown needs no labels: the fitted "
                    "calibrator, the agreement diagnostics and the confidence distributions."))

    out.append(("h2", "Comparison of methods"))
    if res.methods or res.unavailable:
        out.append(_comparison(res, names))
        out.append(("p", ("Mean ± standard deviation over prompt templates / splits / subjects "
                          f"({_fmt(res.n_units)} units). ECE, MCE and AECE in percent; bold marks the best "
                          "value among the chat-model calibrations (the base model is another model and is not "
                          "ranked). The oracle uses labels; DACA and naive alignment do not.")
                   if has_labels else "Label-free quantities only (mean over units)."))
        if has_labels and res.methods:
            out.append(("p", "table.md and table.json give the DACA paper's Table 1 layout (ECE, MCE, AECE, "
                        f"Brier): {_paper_spread_text(res)}."))
        more = _comparison(res, names, _MORE_COLUMNS) if has_labels and res.methods else None
        if more is not None and len(more.header) > 1:
            out.append(("h2", "More calibration metrics"))
            out.append(more)
            out.append(("p", "smECE: smooth ECE (Błasiok & Nakkiran; kernel-smoothed, no bins); cwECE: classwise "
                        "ECE (every option's probability, Kull et al.); dECE: debiased l2 ECE on equal-mass bins "
                        "(Kumar et al.); Brier REL − RES + UNC: the Brier score's reliability, resolution and "
                        "uncertainty over the ECE's bins (plus two within-bin terms: docs/METHODS.md); LAC / APS: "
                        f"split-conformal {100 * (1 - CONFORMAL_ALPHA):.0f} % prediction sets on half of each "
                        "unit's test questions, calibrated on the other half: coverage (should be about "
                        f"{100 * (1 - CONFORMAL_ALPHA):.0f} %) and mean set size (smaller is better)."))
    else:
        out.append(("p", "metrics.json holds no per-method results."))

    if res.freeform:
        out += _freeform_section(res.freeform, names)

    if res.parse_failures:
        out += _parse_failure_notes(res.parse_failures, names)
    top = [names.get(m, m) for m in ordered_keys(res.methods) if m in METHODS and METHODS[m].top_label]
    if top:
        out.append(("p", f"{', '.join(top)}: an answer with one confidence and no distribution over the options, "
                    "so their NLL and multiclass Brier score are undefined (n/a); every other column is exact."))
    if has_labels and res.bootstrap is not None:
        out += _bootstrap_section(res.bootstrap, names)
        if "ece_intervals" in img:
            out.append(img["ece_intervals"])
    if res.label_budget.get("methods"):
        out += _label_budget_section(res.label_budget, names)
        if "label_budget" in img:
            out.append(img["label_budget"])

    out.append(("h2", "Confidence distributions"))
    out.append(img["confidence_histogram"] if "confidence_histogram" in img
               else ("p", "No predictions/ folder: confidence plots are not available."))
    if has_labels:
        out.append(("h2", "Reliability diagrams"))
        out.append(img["reliability"] if "reliability" in img else ("p", "No predictions to draw from."))
        out.append(("h2", "Selective classification"))
        if "selective" in img:
            out.append(img["selective"])
    if preds:
        out.append(("p", "Plots use the evaluation questions of the first split and template "
                    f"({len(next(iter(preds.values()))[0])} questions); the table averages over all units."))
    out.append(("h2", "Agreement diagnostics: can the label-free fit be trusted?"))
    out += _premise_lines(res.premise)
    out += _diagnostics(res.diagnostics, res.fits, has_labels)
    if "temperatures" in img:
        out.append(img["temperatures"])

    if res.api_stats:
        out += _api_section(res.api_stats)

    out.append(("h2", "Fitted calibrator (calibrator.json)"))
    if cal:
        # the temperature is shown at top level already; vector/matrix parameters are shown as lists
        drop = ("hyperparameters", "inputs") + (("parameters",) if "temperature" in cal else ())
        out.append(_kv_table({k: v for k, v in cal.items() if k not in drop}))
        if cal.get("inputs"):
            out.append(_kv_table(cal["inputs"], collapsed="inputs the calibrator was fitted on"))
    else:
        why = res.calibrator.error if res.calibrator is not None else None
        out.append(("note", f"No deployable calibrator: {why}") if why
                   else ("p", "No calibrator.json in this run folder."))
    fallbacks = {m: n for m, n in res.fallbacks.items() if n}
    if fallbacks:
        out.append(("note", "Some units could not be fitted and were evaluated uncalibrated (temperature 1): "
                    + ", ".join(f"{names.get(m, m)}: {n}" for m, n in fallbacks.items())
                    + ". The reason of each is in metrics.json under fits."))

    out.append(("h2", "Configuration"))
    out.append(_kv_table(config or {}, collapsed="resolved configuration (config.json)"))
    return out


def _wall(timing: Mapping[str, Any]) -> str | None:
    """``wall time 12.3 s (scoring 10.1 s)`` when the run recorded it."""
    wall = timing.get("wall_seconds")
    if wall is None:
        return None
    scoring = timing.get("scoring_seconds")
    return f"wall time {_fmt(wall, 1, 1)} s" + (f" (scoring {_fmt(scoring, 1, 1)} s)" if scoring is not None else "")


def _paper_spread_text(res: RunResult) -> str:
    """What the Table 1 layout's mean ± std are taken over (:func:`refcal.run.table.paper_spread`)."""
    templates = {u["template"] for u in res.units}
    if len(templates) > 1:
        return (f"mean ± std over the {len(templates)} prompt templates of each template's average over its "
                "units (one calibrator per subject or split)")
    return "mean ± std over the units, as above"


def _short(text: Any, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _freeform_section(ff: Mapping[str, Any], names: Mapping[str, str]) -> list[Any]:
    """Free-form runs: what was judged and how, parse failures, and example answers with every method's
    confidence (texts come from the data set and the model: escaped by the renderers like every cell)."""
    out: list[Any] = [("h2", "Free-form answers")]
    acc, judge = ff.get("accuracy"), ff.get("judge") or {}
    out.append(("p", f"The chat model answered {_fmt(ff.get('n_questions'))} questions greedily "
                f"({_fmt(ff.get('n_empty_answers'))} empty answers); "
                + (f"{_fmt(acc, 100, 1)} % were judged correct by {judge.get('kind', 'the judge')}"
                   + (" with containment" if judge.get("containment") else "") + " (evaluation only). "
                   if acc is not None else "no references, so nothing was judged. ")
                + "Each method's confidence c that the answer is correct is evaluated against the verdicts: "
                "ECE and the reliability diagrams bin c against the share of correct answers, Brier is the "
                "mean of (c − correct)², NLL the binary log loss, AUROC ranks correct above wrong answers by "
                "c, and Acc is the answers' own accuracy (verbal: of its own guess). The agreement "
                "diagnostics compare the two models' P(True) verdicts on the same answer."))
    for key, info in (ff.get("methods") or {}).items():
        pf = info.get("parse_failures") if isinstance(info, Mapping) else None
        if isinstance(pf, Mapping) and pf.get("n"):
            reasons = ", ".join(f"{k}: {v}" for k, v in pf.items() if k not in ("n", "n_failed", "n_clipped"))
            out.append(("note", f"{names.get(key, key)}: {_fmt(pf.get('n_failed'))} of {_fmt(pf.get('n'))} replies "
                        f"could not be parsed{' (' + reasons + ')' if reasons else ''}; they count as wrong "
                        f"answers with confidence {_fmt(info.get('failure_confidence'), 1, 2)}."))
    examples = ff.get("examples") or []
    if examples:
        keys = list(dict.fromkeys(k for ex in examples for k in (ex.get("confidence") or {})))
        rows = [[_short(ex.get("question", ""), 80), _short(ex.get("answer", ""), 50) or "(empty)",
                 _short("; ".join(map(str, ex.get("references") or [])), 50),
                 {1: "yes", 0: "no"}.get(ex.get("correct"), "n/a")]
                + [_fmt((ex.get("confidence") or {}).get(k), 1, 3) for k in keys] for ex in examples]
        out.append(_Table(["question", "answer", "references", "correct"] + [names.get(k, k) for k in keys], rows,
                          collapsed=f"the first {len(rows)} questions: answer, verdict and each method's confidence"))
    return out


def _parse_failure_notes(failures: Mapping[str, Mapping[str, int]], names: Mapping[str, str]) -> list[Any]:
    """Generation methods: replies that did not parse, counted (never dropped) by reason."""
    out: list[Any] = []
    for m, f in failures.items():
        reasons = ", ".join(f"{k}: {v}" for k, v in f.items() if k not in ("n", "n_failed", "n_member_failures"))
        members = (f"; {f['n_member_failures']} ensemble member replies failed in all"
                   if "n_member_failures" in f else "")
        out.append(("note", f"{names.get(m, m)}: {f.get('n_failed', 0)} of {f.get('n', 0)} replies could not be "
                    f"used{' (' + reasons + ')' if reasons else ''}{members}. Each counts as a wrong answer with "
                    "confidence 1/k (k options)."))
    return out


def _premise_lines(premise: Mapping[str, Any]) -> list[Any]:
    """The premise of DACA and ReEval in one line per model (with labels only)."""
    verdict = premise.get("verdict") if isinstance(premise, Mapping) else None
    if not isinstance(verdict, Mapping) or not verdict:
        return []
    lines = "; ".join(f"{v}" for v in verdict.values())
    return [("note", f"Premise check on the {premise.get('n_agree', 'n/a')} agreeing calibration questions: "
             f"{lines}.")]


def _bootstrap_section(boot: Bootstrap, names: Mapping[str, str]) -> list[Any]:
    """Sampling uncertainty of the headline metrics on the plotted questions."""
    keys = {k for d in boot.methods.values() for k in d}
    cols = [c for c in columns("report") if c.key in keys]  # the metrics with an interval, in table order
    rows = []
    for m in ordered_keys(boot.methods):
        cells = [names.get(m, m)]
        for c in cols:
            ci = boot.methods[m].get(c.key)
            cells.append(f"{_fmt(ci.estimate, c.scale, 3)} [{_fmt(ci.low, c.scale, 3)}, {_fmt(ci.high, c.scale, 3)}]"
                         if ci is not None else "n/a")
        rows.append(cells)
    return [
        _Table(["method", *(f"{c.header} [95 % CI]" for c in cols)], rows,
               collapsed=f"{100 * boot.level:.0f} % bootstrap intervals ({boot.n_boot} resamples of "
                         f"the {boot.n} plotted questions)"),
    ]


def _label_budget_section(lb: Mapping[str, Any], names: Mapping[str, str]) -> list[Any]:
    """How many labels each labelled method needs (``--labels-budget``): mean ECE % per k."""
    ks = [str(k) for k in lb["ks"]]
    rows = [[names.get(m, m), *(_fmt(v, 100, 2) for v in r["metrics"]["ece"]["mean"])]
            for m, r in lb["methods"].items()]
    daca = lb.get("daca", {}).get("ece")
    if daca:
        rows.append([f"{names.get('daca', 'DACA')} (no labels)", *([_fmt(daca["mean"], 100, 2)] * len(ks))])
    sentence = lb.get("worth_labels", {}).get("sentence", "")
    return [("h2", "How many labels is DACA worth?"),
            ("p", f"{sentence}. Each labelled method fitted on k labelled calibration questions ({lb['n_draws']} "
                  f"random draws per k, {lb['n_units']} units), evaluated on the test questions: mean ECE %."),
            _Table(["method", *(f"k = {k}" for k in ks)], rows)]


def _api_section(stats: Mapping[str, Any]) -> list[Any]:
    """Where each API model's option-letter scores came from, and how many letters got the floor."""
    keys = [("n_requests", "requests"), ("n_letters", "option letters"),
            ("n_floored_letters", "letters floored"), ("n_requests_with_floor", "requests with a floor"),
            ("n_no_token", "no first token"), ("n_retries", "retries")]
    rows, lines, floored_any = [], [], False
    for role, st in stats.items():
        if not isinstance(st, Mapping):
            continue
        source, kind, text = _letter_source(str(role), st)
        floored_any |= bool(st.get("n_floored_letters"))
        lines.append((kind, text))
        n_letters = st.get("n_letters") or 0
        share = f" ({100 * st.get('n_floored_letters', 0) / n_letters:.1f}%)" if n_letters else ""
        rows.append([str(role), source] + [_fmt(st.get(k), 1, 0) + (share if k == "n_floored_letters" else "")
                                           for k, _ in keys])
    out: list[Any] = [("h2", "API scoring: where the letter scores came from"),
                      _Table(["model", "letter scores"] + [label for _, label in keys], rows), *lines]
    if floored_any:
        out.append(("p", "Top-k: the server returns only the top-k log-probabilities of the generated token. An "
                    "option letter absent from the top-k gets a floor below the smallest returned "
                    "log-probability: log(min(p_min, max(1 - Σp, 1e-6))) - log 2, i.e. at most half of the "
                    "probability mass the top-k leaves for it."))
    out.append(("p", "Letter and floor counts cover every scored question, answers served from the score cache "
                "included; requests and retries count what this run sent."))
    return out


def _letter_source(role: str, st: Mapping[str, Any]) -> tuple[str, str, str]:
    """``(table cell, block kind, sentence)``: how one API model's letters were scored (``letter_source``:
    ``exact``, ``topk``, ``unresolved`` when every answer came from the cache, ``exact+topk`` when Ray
    workers differed; absent in runs older than exact scoring, which had the top-k only)."""
    n_letters, n_floored = int(st.get("n_letters") or 0), int(st.get("n_floored_letters") or 0)
    floored = (f"{n_floored} of {n_letters} option letters ({100 * n_floored / max(n_letters, 1):.1f} %) got the "
               f"floor, on {_fmt(st.get('n_requests_with_floor'))} questions")
    sources = set(str(st.get("letter_source", "topk")).split("+")) - {"unresolved", ""}
    note = st.get("letters_note")
    fallback = (f" letters=auto asked the server for exact letter scores and fell back to the top-k: {note}."
                if note else "")
    if not n_letters:
        return "none", "p", f"{role}: no option letters were scored (cloze or generated answers only)."
    if sources == {"exact"}:
        text = (f"{role}: exact log-probabilities of the fixed letter tokens (vLLM's logprob_token_ids; the "
                "probabilities of each letter's single-token spellings added), so no letter needed a floor.")
        if n_floored:
            text += (f" Yet {floored}: those answers came from the score cache, scored with the top-k by an "
                     "earlier run with letters=auto.")
        return "exact", "note" if n_floored else "p", text
    if sources == {"topk"}:
        return ("top-k + floor", "note" if note else "p",
                f"{role}: the top-k log-probabilities of the first generated token, each option letter absent "
                f"from them floored (rule below): {floored}.{fallback}")
    if sources == {"exact", "topk"}:
        return ("exact + top-k", "note",
                f"{role}: some Ray workers got exact letter scores and others the top-k with the floor: "
                f"{floored}.{fallback}")
    if sources:  # a value this report does not know: shown as it is
        return str(st.get("letter_source")), "p", f"{role}: letter scores from {st.get('letter_source')}: {floored}."
    return ("from the cache", "p",
            f"{role}: every answer came from the score cache, so this run did not see how the server scores "
            "letters; " + (f"{floored}, so at least those were scored with the top-k and the floor."
                           if n_floored else f"none of its {n_letters} option letters got the floor."))


def _diagnostics(d: Diagnostics | None, fits: Mapping[str, list[FitRecord]], has_labels: bool) -> list[Any]:
    if d is None:
        return [("p", "metrics.json holds no agreement diagnostics.")]
    out: list[Any] = [("p", f"The two models pick the same answer on {_fmt(d.n_agree)} of "
                       f"{_fmt(d.n)} questions (agreement rate {_fmt(d.agreement_rate, 1, 3)}). DACA fits only on "
                       "these agreeing questions.")]
    n_agree = d.n_agree
    if isinstance(n_agree, (int, float)) and n_agree < 30:
        out.append(("note", f"Only {n_agree} agreeing questions: the fitted calibrator is noisy; score more "
                    "questions before trusting it."))
    keys = ["n"] + [f"{m}_{s}" for m in ("chat", "base") for s in (("accuracy", "confidence") if has_labels
                                                                    else ("confidence",))]
    rows = [[name] + [_fmt(sub.get(k), 1, 4) for k in keys] for name, sub in (("agree", d.agree),
                                                                               ("disagree", d.disagree))]
    out.append(_Table(["subset"] + [k.replace("_", " ") for k in keys], rows))
    if has_labels:
        out.append(("p", "A trustworthy fit shows the base model's confidence close to its accuracy on the "
                    "agreeing questions, and the chat model over-confident there."))
    for m, fit_recs in fits.items():
        if not fit_recs:
            continue
        recs = [{k: v for k, v in asdict(r).items() if v is not None} for r in fit_recs]
        cols = [c for c in ("template", "group", "temperature", "n_agree", "agreement_rate", "n", "n_iter",
                            "converged") if any(c in r for r in recs)]
        counts = ("n_agree", "n", "n_iter")  # may arrive as floats (199.0): shown as integers
        rows = [[_fmt(int(r[c]) if c in counts and isinstance(r.get(c), float) and float(r[c]).is_integer()
                      else r.get(c), 1, 4) for c in cols] for r in recs]
        used = [r.get("n_agree", r.get("n")) for r in recs]
        used = [u for u in used if isinstance(u, (int, float))]
        summary = f"fits of {m}: {len(recs)}" + (f", questions used {int(min(used))}–{int(max(used))}" if used else "")
        out.append(_Table([c.replace("_", " ") for c in cols], rows, collapsed=summary))
    return out


# ---------------------------------------------------------------------------------------------- renderers
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1250px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #1f77b4;padding-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}.wide{overflow-x:auto}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;white-space:nowrap}
td:first-child{white-space:normal;min-width:9em}th{background:#f0f4f8}
td:first-child,th:first-child{text-align:left}td strong{color:#0b5394}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}.note{background:#fff6db;border-left:4px solid #e0a800;padding:.6em 1em}
details{margin:.6em 0}summary{cursor:pointer;color:#1f4e79}
"""


def _html(blocks: list[Any], plot_dir: Path) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             "<title>refcal report</title>", f"<style>{_CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, _Table):
            t = ["<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in b.header) + "</tr></thead><tbody>"]
            for r, row in enumerate(b.rows):
                cells = [f"<strong>{e(c)}</strong>" if (r, i) in b.bold else e(c) for i, c in enumerate(row)]
                t.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            t.append("</tbody></table>")
            body = '<div class="wide">' + "".join(t) + "</div>"  # wide tables scroll instead of overflowing
            parts.append(f"<details><summary>{e(b.collapsed)}</summary>{body}</details>" if b.collapsed else body)
        elif isinstance(b, _Image):
            data = base64.b64encode((plot_dir / f"{b.stem}.png").read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.stem)}">'
                         f"<figcaption>{e(b.caption)}</figcaption></figure>")
        else:
            kind, text = b
            tag = {"h1": "h1", "h2": "h2", "p": "p", "note": 'p class="note"'}[kind]
            parts.append(f"<{tag}>{e(text)}</{tag.split()[0]}>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")
_MD_LINE_START = re.compile(r"^(\s*(?:\d+)?)([#>]|[-+=](?=\s|$)|(?<=\d)[.)](?=\s|$))")


def _md_cell(s: str) -> str:
    """Text as inert Markdown: every character Markdown could read as inline markup (links, images,
    emphasis, code, HTML, table pipes) is backslash-escaped, as is a block marker (heading, quote, list)
    at its start; ``&`` becomes an entity and newlines become spaces."""
    text = _MD_SPECIAL.sub(r"\\\1", str(s).replace("&", "&amp;")).replace("\n", " ").replace("\r", " ")
    return _MD_LINE_START.sub(lambda m: m.group(1) + "\\" + m.group(2), text)


def _markdown(blocks: list[Any]) -> str:
    lines: list[str] = []
    for b in blocks:
        if isinstance(b, _Table):
            if b.collapsed:
                lines.append(f"*{_md_cell(b.collapsed)}*")
                lines.append("")
            lines.append("| " + " | ".join(_md_cell(h) for h in b.header) + " |")
            lines.append("|" + "|".join(["---"] + ["---:"] * (len(b.header) - 1)) + "|")
            for r, row in enumerate(b.rows):
                cells = [f"**{_md_cell(c)}**" if (r, i) in b.bold else _md_cell(c) for i, c in enumerate(row)]
                lines.append("| " + " | ".join(cells) + " |")
        elif isinstance(b, _Image):
            lines.append(f"![{b.stem}](plots/{b.stem}.png)")
            lines.append("")
            lines.append(f"*{_md_cell(b.caption)}*")
        else:
            kind, text = b
            prefix = {"h1": "# ", "h2": "## ", "p": "", "note": "> **Note.** "}[kind]
            lines.append(prefix + _md_cell(text))
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- entry
def write_report(run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``plots/*.png|svg`` into the run folder ``run_dir``.

    Returns
    -------
    dict of str -> Path
        Relative name (``"report.html"``, ``"report.md"``, ``"plots/reliability.png"``, ...) -> path written.

    Raises
    ------
    InputError
        ``run_dir`` is not a folder or its ``metrics.json`` is missing or unreadable.
    MissingDependencyError
        matplotlib is not installed (``pip install 'refcal[plots]'``).
    """
    from .run.folder import load_config, load_result, read_json_object

    run_dir = Path(run_dir)
    res = load_result(run_dir)
    config = load_config(run_dir, res)
    cal = read_json_object(run_dir / "calibrator.json", required=False)
    preds = _predictions(run_dir)
    labels_ok = res.has_labels and bool(preds) and all((y >= 0).all() for _, y in preds.values())
    names = {**{k: m.label for k, m in METHODS.items()}, **res.method_labels}
    n_bins = int(config.get("n_bins") or 10)
    images, files = _plots(preds, labels_ok, res, names, n_bins, run_dir / "plots")
    blocks = _document(res, config, cal, preds, images, names)
    files["report.html"] = atomic_write_text(run_dir / "report.html", _html(blocks, run_dir / "plots"))
    files["report.md"] = atomic_write_text(run_dir / "report.md", _markdown(blocks))
    if res.has_labels and res.methods:
        from .run.table import paper_table

        md, doc = paper_table(res, names)
        files["table.md"] = atomic_write_text(run_dir / "table.md", md)
        files["table.json"] = atomic_write_text(run_dir / "table.json", json.dumps(doc, indent=1, allow_nan=False))
    log.info("wrote %s and %s", files["report.html"], files["report.md"])
    return files
