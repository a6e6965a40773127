"""The report's figures: the predictions stored in a run folder, prepared and drawn (:mod:`refcal.report.plots`)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import metrics
from .._math import softmax
from ..calibrate.methods import ordered_keys
from ..errors import ScoreFileError
from ..metrics import TopLabel
from ..run.result import RunResult
from ..scores import load_scores
from . import plots as P
from .blocks import Image

log = logging.getLogger(__name__)


def predictions(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{method: (probs (n, k), labels (n,))}`` from ``predictions/*.parquet`` (log-probabilities)."""
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


def figures(preds, labels_ok: bool, result: RunResult, names: Mapping[str, str], n_bins: int,
           plot_dir: Path) -> tuple[list[Image], dict[str, Path]]:
    images, files = [], {}

    def save(fig, stem: str, caption: str) -> None:
        for p in P.save_figure(fig, plot_dir / stem):
            files[f"plots/{p.name}"] = p
        images.append(Image(stem, caption))

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
