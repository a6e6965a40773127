"""Plots: data preparation (pure, testable) separate from drawing (matplotlib, imported lazily).

Drawing functions take prepared data and an optional ``ax``; they return the ``Axes`` they drew on (a grid
returns its ``Figure``). Figures are built with ``matplotlib.figure.Figure`` and an Agg canvas, never through
``pyplot`` and never by changing ``rcParams`` or the global backend, so importing or calling this module
leaves the caller's matplotlib state untouched. Styling is passed explicitly to each artist.

Data for plots that need labels comes from :mod:`refcal.metrics` (:class:`~refcal.metrics.ReliabilityBins`,
:class:`~refcal.metrics.SelectiveCurve`, :class:`~refcal.metrics.RiskCoverage`), so the pictures show
exactly the numbers the metrics compute.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..calibrate.methods import method_color as registry_color
from ..errors import InputError, MissingDependencyError
from ..metrics import ConfidenceInterval, ReliabilityBins, RiskCoverage, SelectiveCurve, TopLabel

__all__ = [
    "HistogramData", "GroupValues", "confidences", "confidence_histogram_data", "group_values",
    "new_figure", "plot_reliability", "plot_reliability_grid", "plot_confidence_histogram",
    "plot_selective_accuracy", "plot_risk_coverage", "plot_group_values", "save_figure", "method_color",
    "plot_metric_intervals", "LabelCurves", "label_curves", "plot_label_budget",
]

_FS = 9  # base font size, set per artist


def method_color(name: str, index: int = 0) -> str:
    """The method's colour from the registry (:mod:`refcal.calibrate.methods`: chat red, base green, DACA
    blue, naive orange, TS purple, ...); a method it does not know gets a colour from a fixed cycle."""
    return registry_color(name, index)


# ---------------------------------------------------------------------------------------------- data
def confidences(probs: np.ndarray | TopLabel) -> np.ndarray:
    """Confidence ``max_j p_j`` of each row of ``probs`` (n, k) -> (n,) (a TopLabel's stated confidence);
    no labels needed."""
    if isinstance(probs, TopLabel):
        return np.asarray(probs.confidence, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or not np.isfinite(p).all():
        raise InputError(f"probs must be a finite non-empty (n, k) array; got shape {p.shape}")
    return p.max(axis=1)


@dataclass(frozen=True)
class HistogramData:
    """Confidence histograms of several methods on shared bins.

    Attributes
    ----------
    edges : ndarray, shape (B + 1,)
        Equal-width bins on ``[low, 1]``, ``[e_b, e_{b+1})`` with the last bin closed (numpy's convention).
    counts : dict of str -> ndarray of int64, shape (B,)
    mean : dict of str -> float
        Mean confidence of each method.
    """

    edges: np.ndarray
    counts: dict[str, np.ndarray]
    mean: dict[str, float]


def confidence_histogram_data(
    conf: Mapping[str, np.ndarray], *, n_bins: int = 20, low: float = 0.0,
) -> HistogramData:
    """Histogram the confidences ``{method: (n,)}`` on ``n_bins`` shared bins over ``[low, 1]``.

    ``low`` is typically ``1 / k``, the smallest possible confidence with ``k`` options.
    """
    if not conf:
        raise InputError("no confidences to histogram; pass at least one method")
    if not 0.0 <= low < 1.0:
        raise InputError(f"low must lie in [0, 1); got {low!r}")
    edges = np.linspace(low, 1.0, int(n_bins) + 1)
    counts, mean = {}, {}
    for name, c in conf.items():
        c = np.asarray(c, dtype=np.float64)
        if c.ndim != 1 or c.size == 0 or not np.isfinite(c).all() or (c < low).any() or (c > 1).any():
            raise InputError(f"confidences of {name!r} must be a non-empty 1-D array within [{low:g}, 1]")
        counts[name] = np.histogram(c, bins=edges)[0].astype(np.int64)
        mean[name] = float(c.mean())
    return HistogramData(edges, counts, mean)


@dataclass(frozen=True)
class GroupValues:
    """One value per group (e.g. the fitted temperature per MMLU subject), sorted by value.

    Attributes
    ----------
    groups : list of str, length G
    values : ndarray, shape (G,)
    counts : ndarray of int64, shape (G,) or None
        Questions used by each group's fit (e.g. agreeing questions for DACA).
    """

    groups: list[str]
    values: np.ndarray
    counts: np.ndarray | None


def group_values(records: Sequence[Mapping[str, Any]], *, key: str = "temperature",
                 count_key: str = "n_agree") -> GroupValues:
    """Collect ``record[key]`` per ``record["group"]`` (as in ``metrics.json["fits"][method]``).

    Several records of one group (e.g. one per prompt template) are averaged. Records without ``key``
    (vector/matrix scaling) are skipped; the result may be empty.
    """
    vals: dict[str, list[float]] = {}
    cnts: dict[str, list[float]] = {}
    for r in records:
        v = r.get(key)
        if v is None or not np.isfinite(float(v)):
            continue
        g = str(r.get("group", "all"))
        vals.setdefault(g, []).append(float(v))
        if r.get(count_key) is not None:
            cnts.setdefault(g, []).append(float(r[count_key]))
    groups = sorted(vals, key=lambda g: (np.mean(vals[g]), g))
    values = np.array([np.mean(vals[g]) for g in groups], dtype=np.float64)
    counts = None
    if groups and all(g in cnts for g in groups):
        counts = np.array([round(np.mean(cnts[g])) for g in groups], dtype=np.int64)
    return GroupValues(groups, values, counts)


# ---------------------------------------------------------------------------------------------- drawing
def new_figure(width: float = 6.0, height: float = 4.0, *, dpi: int = 100):
    """A ``Figure`` on its own Agg canvas (no pyplot, no global state)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional `plots` extra, imported on use
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("matplotlib", "plots") from None
    fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _ax(ax, width: float = 5.0, height: float = 4.0):
    return new_figure(width, height).add_subplot() if ax is None else ax


def _style(ax, xlabel: str, ylabel: str, title: str | None) -> None:
    ax.set_xlabel(xlabel, fontsize=_FS)
    ax.set_ylabel(ylabel, fontsize=_FS)
    if title:
        ax.set_title(title, fontsize=_FS + 1)
    ax.tick_params(labelsize=_FS - 1)
    ax.grid(True, color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _legend_below(ax) -> None:
    """Legend under the axes (curves of several methods leave no empty corner inside)."""
    ax.legend(fontsize=_FS - 2, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)


def plot_reliability(bins: ReliabilityBins, *, ax=None, title: str | None = None, color: str = "#1f77b4",
                     show_counts: bool = True):
    """Reliability diagram: accuracy per confidence bin, the gap to the diagonal shaded, counts on top.

    The bars span each bin; the hatched band runs from the bin's accuracy to its mean confidence (the
    bin's contribution to ECE is ``count / N`` times that band's height). Empty bins are left blank.
    """
    ax = _ax(ax)
    e = bins.edges
    left, width = e[:-1], np.diff(e)
    nz = bins.counts > 0
    ax.plot([0, 1], [0, 1], linestyle="--", color="#555555", linewidth=1, label="perfect calibration")
    ax.bar(left[nz], bins.accuracy[nz], width=width[nz], align="edge", color=color, alpha=0.85,
           edgecolor="white", linewidth=0.8, label="accuracy")
    lo = np.minimum(bins.accuracy, bins.confidence)[nz]
    ax.bar(left[nz], np.abs(bins.accuracy - bins.confidence)[nz], bottom=lo, width=width[nz], align="edge",
           color="#d62728", alpha=0.25, hatch="//", edgecolor="#d62728", linewidth=0.5, label="gap to confidence")
    # equal-mass bins hold (nearly) equal counts and can be very narrow: their counts go in the box instead
    per_bar = show_counts and bins.strategy == "uniform"
    if per_bar:
        top = np.maximum(bins.accuracy, bins.confidence)
        for x, w, t, c in zip(left[nz], width[nz], top[nz], bins.counts[nz], strict=True):
            ax.text(x + w / 2, min(t + 0.02, 1.02), str(int(c)), ha="center", va="bottom", fontsize=_FS - 2,
                    color="#333333")
    name = "AECE" if bins.strategy == "quantile" else "ECE"
    extra = "" if per_bar or not show_counts else f", {int(bins.counts.min())}–{int(bins.counts.max())} per bin"
    ax.text(0.03, 0.97, f"{name} = {100 * bins.weighted_gap():.3f} %\nN = {bins.n}{extra}",
            transform=ax.transAxes, va="top", fontsize=_FS - 1,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "#bbbbbb"})
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.08)
    ax.set_aspect("equal", adjustable="box")
    _style(ax, "confidence", "accuracy", title)
    # over-confident models leave the upper left empty; the legend goes there, under the ECE box
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, 0.86), fontsize=_FS - 2, frameon=False)
    return ax


def plot_reliability_grid(bins: Mapping[str, ReliabilityBins], *, titles: Mapping[str, str] | None = None,
                          ncols: int = 3):
    """One reliability diagram per method in a grid; returns the ``Figure``. Bin counts printed on bars."""
    if not bins:
        raise InputError("no reliability data to plot")
    n = len(bins)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = new_figure(3.6 * ncols, 3.7 * nrows)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for i, (name, b) in enumerate(bins.items()):
        plot_reliability(b, ax=axes[i], title=(titles or {}).get(name, name), color=method_color(name, i))
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def plot_confidence_histogram(data: HistogramData, *, ax=None, title: str | None = None,
                              labels: Mapping[str, str] | None = None):
    """Overlaid step histograms of confidence (fraction of questions per bin), one per method."""
    ax = _ax(ax, 6.0, 3.6)
    width = np.diff(data.edges)
    for i, (name, counts) in enumerate(data.counts.items()):
        frac = counts / max(int(counts.sum()), 1)
        col = method_color(name, i)
        lab = f"{(labels or {}).get(name, name)} (mean {data.mean[name]:.3f})"
        ax.stairs(frac, data.edges, color=col, linewidth=1.6, label=lab)
        ax.stairs(frac, data.edges, color=col, alpha=0.08, fill=True)
        ax.axvline(data.mean[name], color=col, linestyle=":", linewidth=1)
    ax.set_xlim(data.edges[0] - width[0] / 2, 1.0)
    _style(ax, "confidence (max probability)", "fraction of questions", title)
    _legend_below(ax)
    return ax


def plot_selective_accuracy(curves: Mapping[str, SelectiveCurve], *, ax=None, title: str | None = None,
                            labels: Mapping[str, str] | None = None):
    """Selective accuracy against confidence threshold (solid), coverage on a second axis (dotted)."""
    ax = _ax(ax, 6.0, 3.8)
    ax2 = ax.twinx()
    for i, (name, c) in enumerate(curves.items()):
        col = method_color(name, i)
        ax.plot(c.thresholds, c.accuracy, marker="o", markersize=3, color=col, linewidth=1.5,
                label=(labels or {}).get(name, name))
        ax2.plot(c.thresholds, c.coverage, linestyle=":", color=col, linewidth=1.2)
    _style(ax, "confidence threshold", "selective accuracy (solid)", title)
    ax2.set_ylabel("coverage (dotted)", fontsize=_FS)
    ax2.set_ylim(0, 1.02)
    ax2.tick_params(labelsize=_FS - 1)
    ax2.spines["top"].set_visible(False)
    _legend_below(ax)
    return ax


def plot_risk_coverage(curves: Mapping[str, RiskCoverage], *, ax=None, title: str | None = None,
                       labels: Mapping[str, str] | None = None):
    """Risk (error rate of the kept questions) against coverage; AURC in the legend."""
    ax = _ax(ax, 5.0, 3.8)
    for i, (name, c) in enumerate(curves.items()):
        lab = f"{(labels or {}).get(name, name)} (AURC {np.mean(c.risk):.3f})"
        ax.plot(c.coverage, c.risk, color=method_color(name, i), linewidth=1.5, label=lab)
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    _style(ax, "coverage", "risk (error rate)", title)
    _legend_below(ax)
    return ax


def plot_group_values(data: GroupValues, *, ax=None, title: str | None = None, xlabel: str = "temperature τ",
                      reference: float | None = 1.0, color: str = "#1f77b4", label: str | None = None,
                      markers: Mapping[str, GroupValues] | None = None, labels: Mapping[str, str] | None = None):
    """Horizontal bars, one per group (in ``data``'s order), with the fit's question count at each bar's end.

    ``markers`` ``{method: GroupValues}`` adds other series (e.g. naive alignment and the labelled oracle)
    as points in the method's colour, matched by group name; groups absent from ``data`` are not drawn.
    """
    if not data.groups:
        raise InputError("no group values to plot")
    g = len(data.groups)
    ax = _ax(ax, 6.5, max(2.2, 0.9 + 0.2 * g))
    y = np.arange(g)
    ax.barh(y, data.values, color=color, alpha=0.85, height=0.7, label=label)
    if reference is not None:
        ax.axvline(reference, color="#555555", linestyle="--", linewidth=1)
    if data.counts is not None:
        for yi, v, c in zip(y, data.values, data.counts, strict=True):
            ax.text(v, yi, f" n={int(c)}", va="center", fontsize=_FS - 3, color="#333333")
    pos = {name: i for i, name in enumerate(data.groups)}
    for i, (name, other) in enumerate((markers or {}).items()):
        pts = [(pos[gr], v) for gr, v in zip(other.groups, other.values, strict=True) if gr in pos]
        if pts:
            yy, vv = np.array(pts).T
            ax.plot(vv, yy, linestyle="none", marker="oD^s"[i % 4], markersize=5,
                    label=(labels or {}).get(name, name), color=method_color(name, i), markeredgecolor="black",
                    markeredgewidth=0.4)
    ax.set_yticks(y, data.groups, fontsize=_FS - 2 if g > 20 else _FS - 1)
    ax.set_ylim(-0.6, g - 0.4)
    ax.margins(x=0.12)
    _style(ax, xlabel, "", title)
    ax.grid(False, axis="y")
    if label or markers:  # above the bars, under the title: bars may fill the whole axes
        ax.legend(fontsize=_FS - 2, frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3)
        if title:
            ax.set_title(title, fontsize=_FS + 1, pad=20)
    return ax


def plot_metric_intervals(intervals: Mapping[str, ConfidenceInterval], *, ax=None, title: str | None = None,
                          labels: Mapping[str, str] | None = None, scale: float = 100.0,
                          xlabel: str = "ECE % (95 % bootstrap interval)"):
    """One row per method (in the mapping's order, top to bottom): the estimate as a dot in the method's
    colour and its interval as a horizontal bar; intervals that are NaN draw the dot only."""
    if not intervals:
        raise InputError("no intervals to plot")
    names = list(intervals)
    ax = _ax(ax, 6.5, max(2.2, 0.9 + 0.32 * len(names)))
    for i, name in enumerate(names):
        ci = intervals[name]
        y = len(names) - 1 - i
        col = method_color(name, i)
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            ax.plot([ci.low * scale, ci.high * scale], [y, y], color=col, linewidth=2.5, alpha=0.6,
                    solid_capstyle="butt")
        ax.plot([ci.estimate * scale], [y], marker="o", markersize=6, color=col, markeredgecolor="black",
                markeredgewidth=0.4, linestyle="none")
        ax.text(ci.estimate * scale, y + 0.22, f"{ci.estimate * scale:.1f}", ha="center", fontsize=_FS - 3)
    ax.set_yticks(range(len(names)), [(labels or {}).get(n, n) for n in reversed(names)], fontsize=_FS - 1)
    ax.set_ylim(-0.6, len(names) - 0.4)
    ax.set_xlim(left=0)
    _style(ax, xlabel, "", title)
    ax.grid(False, axis="y")
    return ax


@dataclass(frozen=True)
class LabelCurves:
    """A label-efficiency curve, ready to draw: ``k`` (K,) label counts (``all`` as the mean calibration-part
    size), ``mean`` / ``low`` / ``high`` (method -> (K,)) of the metric, and the label-free reference line
    ``reference`` = (mean, low, high) (DACA's), or ``None``."""

    k: np.ndarray
    mean: dict[str, np.ndarray]
    low: dict[str, np.ndarray]
    high: dict[str, np.ndarray]
    reference: tuple[float, float, float] | None
    metric: str
    k_labels: tuple[str, ...] = ()


def label_curves(record: Mapping[str, Any], *, metric: str = "ece") -> LabelCurves:
    """:class:`LabelCurves` of ``metrics.json["label_budget"]`` (:func:`refcal.run.budget.label_budget`)."""
    try:
        n_all = float(np.mean(record["n_calib"]))
        k = np.array([n_all if v == "all" else float(v) for v in record["ks"]])
        curves = {m: r["metrics"][metric] for m, r in record["methods"].items()}
        ref = record.get("daca", {}).get(metric)
    except (KeyError, TypeError) as exc:
        raise InputError(f"not a label-budget record (missing {exc}); pass metrics.json's label_budget") from None
    return LabelCurves(k, {m: np.asarray(c["mean"], float) for m, c in curves.items()},
                       {m: np.asarray(c["low"], float) for m, c in curves.items()},
                       {m: np.asarray(c["high"], float) for m, c in curves.items()},
                       None if ref is None else (ref["mean"], ref["low"], ref["high"]), metric,
                       tuple(str(v) for v in record["ks"]))


def plot_label_budget(data: LabelCurves, *, ax=None, title: str | None = None,
                      labels: Mapping[str, str] | None = None, scale: float = 100.0,
                      reference_label: str = "DACA (no labels)"):
    """The metric of each labelled method against the number of labels k (symmetric-log axis, so k = 0
    shows), with its band over label draws, and the label-free reference as a dashed line with its band."""
    if not data.mean:
        raise InputError("no label-budget curves to plot")
    ax = _ax(ax, 6.5, 4.2)
    for i, (m, mean) in enumerate(data.mean.items()):
        col = method_color(m, i)
        ax.plot(data.k, mean * scale, marker="o", markersize=3.5, color=col, linewidth=1.5,
                label=(labels or {}).get(m, m))
        ax.fill_between(data.k, data.low[m] * scale, data.high[m] * scale, color=col, alpha=0.15, linewidth=0)
    if data.reference is not None:
        mid, lo, hi = (v * scale for v in data.reference)
        col = method_color("daca")
        ax.axhline(mid, color=col, linestyle="--", linewidth=1.5, label=reference_label)
        ax.axhspan(lo, hi, color=col, alpha=0.12, linewidth=0)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(left=0)
    ax.set_xticks(data.k, list(data.k_labels) or [f"{v:g}" for v in data.k])
    ax.minorticks_off()
    unit = " %" if scale == 100 else ""
    name = {"ece": "ECE", "smooth_ece": "smooth ECE", "brier": "Brier", "nll": "NLL"}.get(data.metric, data.metric)
    _style(ax, "labelled calibration questions k", f"{name}{unit}", title)
    _legend_below(ax)
    return ax


def save_figure(fig, stem: str | Path, *, formats: Sequence[str] = ("png", "svg"), dpi: int = 110) -> list[Path]:
    """Write ``stem.<fmt>`` for each format (no timestamps in the files, so reruns give equal bytes)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib  # the optional `plots` extra, imported on use

    out = []
    # a fixed salt makes SVG element ids deterministic; rc_context restores the setting afterwards
    with matplotlib.rc_context({"svg.hashsalt": "refcal"}):
        for fmt in formats:
            path = stem.with_suffix(f".{fmt}")
            meta = {"Date": None} if fmt == "svg" else {"Software": None} if fmt == "png" else None
            fig.savefig(path, format=fmt, dpi=dpi, metadata=meta, facecolor="white")
            out.append(path)
    return out
