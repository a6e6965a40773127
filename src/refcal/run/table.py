"""The comparison table printed at the end of ``refcal run``."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..calibrate.methods import ordered_keys
from ..metrics import columns
from .result import MetricSummary, RunResult

#: (metric key, header, scale) with labels (the ``console`` view of :data:`refcal.metrics.COLUMNS`); without
#: labels only the mean confidence
LABELLED_COLUMNS = [(c.key, c.header, c.scale) for c in columns("console")]
UNLABELLED_COLUMNS = [("mean_confidence", "mean conf", 1)]


def summary_table(result: RunResult) -> str:
    """Methods × metrics, mean ± std over units (3 decimals); a method that could not apply is listed with
    its reason instead of numbers."""
    cols = LABELLED_COLUMNS if result.has_labels else UNLABELLED_COLUMNS
    keys = ordered_keys([*result.methods, *result.unavailable])
    w = max([40] + [len(result.label(m)) + 2 for m in keys])  # 40 unless a label is longer
    lines = [f"{'method':<{w}}" + "".join(f"{c[1]:>18}" for c in cols)]
    for m in keys:
        if m not in result.methods:
            lines.append(f"{result.label(m):<{w}}  not applicable: {result.unavailable[m]}")
            continue
        cells = []
        for key, _, scale in cols:
            e = result.methods[m].get(key)
            if e is None or e.mean != e.mean:  # absent, or undefined (a top-label method's NLL)
                text = "n/a"
            elif e.std != e.std:  # one unit: no spread to report
                text = f"{e.mean * scale:.3f}"
            else:
                text = f"{e.mean * scale:.3f} ± {e.std * scale:.3f}"
            cells.append(text.rjust(18) if len(text) < 18 else " " + text)  # a wide value never touches the next
        lines.append(f"{result.label(m):<{w}}" + "".join(cells))
    return "\n".join(lines)


#: the DACA paper's Table 1 columns (metric key, header, scale, decimals): the ``table_md`` view of
#: :data:`refcal.metrics.COLUMNS` but accuracy, which ``paper_table`` puts last
PAPER_COLUMNS = [(c.key, c.header, c.scale, 2 if c.scale == 100 else 3) for c in columns("table_md")
                 if c.key != "accuracy"]


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if v == v]
    return float(np.mean(kept)) if kept else float("nan")


def paper_spread(result: RunResult, metric: MetricSummary) -> tuple[float, float, list[float], str]:
    """``(mean, std, values, over)``: one metric in the DACA paper's Table 1 layout.

    With several prompt templates each template's value is the mean over its groups (one calibrator per
    MMLU subject, or one per random split), and the mean ± std are over the templates (``over`` =
    ``"templates"``); with one template they are over its groups (``"subjects"`` / ``"splits"``). A run
    that did not record its units (``result.units`` empty) gives the mean ± std over all units
    (``"units"``). NaN values (undefined) are left out; std (ddof 1) is NaN below two values.
    """
    vals = [float(v) for v in metric.values]
    units = result.units if len(result.units) == len(vals) else []
    templates = list(dict.fromkeys(u["template"] for u in units))
    if len(templates) > 1:
        values = [_nanmean([v for u, v in zip(units, vals, strict=True) if u["template"] == t]) for t in templates]
        over = "templates"
    else:
        values = vals
        over = ("splits" if all(str(u["group"]).startswith("split") for u in units) else "subjects") if units \
            else "units"
    kept = [v for v in values if v == v]
    mean = float(np.mean(kept)) if kept else float("nan")
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 and all(np.isfinite(kept)) else float("nan")
    return mean, std, values, over


def paper_table(result: RunResult, labels: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """The DACA paper's Table 1 layout: methods × ECE / MCE / AECE / Brier (and accuracy), as Markdown and
    as a JSON-ready document.

    With ``--template all`` each cell is the mean ± std over the five templates of the template's average
    over its units (MMLU: one calibrator per subject, fitted on validation and evaluated on test; other data
    sets: the random calibration / test splits); with one template, the mean ± std over its subjects or
    splits (:func:`paper_spread`). ``values`` holds what the mean and std are taken over, ``unit_values``
    every unit's value (in ``units`` order). A method that could not apply is listed with its reason; NaN
    (undefined) is ``null`` in JSON and "n/a" in Markdown. The run's wall time is given when recorded.
    """
    def num(v: float) -> float | None:
        return float(v) if v == v and abs(v) != float("inf") else None

    cfg = result.config
    title = (f"{cfg.get('chat', '?')} calibrated with {cfg.get('base', '?')} on {cfg.get('dataset', '?')} "
             f"({cfg.get('scoring', '?')} scoring, templates {cfg.get('templates', '?')})")
    cols = [*PAPER_COLUMNS, ("accuracy", "Acc %", 100, 2)]
    rows, body = [], []
    overs = set()
    for m in ordered_keys([*result.methods, *result.unavailable]):
        name = (labels or {}).get(m) or result.label(m)
        if m not in result.methods:
            body.append(f"| {name} | not applicable: {result.unavailable[m]} |" + " |" * (len(cols) - 1))
            rows.append({"method": m, "label": name, "not_applicable": result.unavailable[m]})
            continue
        cells, row = [], {"method": m, "label": name}
        for key, _, scale, nd in cols:
            e = result.methods[m].get(key)
            if e is None:
                cells.append("n/a")
                row[key] = None
                continue
            mean, std, values, over = paper_spread(result, e)
            overs.add(over)
            if mean != mean:
                cells.append("n/a")
                row[key] = None
                continue
            cells.append(f"{mean * scale:.{nd}f}" + (f" ± {std * scale:.{nd}f}" if std == std else ""))
            row[key] = {"mean": num(mean), "std": num(std), "values": [num(v) for v in values],
                        "unit_values": [num(v) for v in e.values]}
        body.append(f"| {name} | " + " | ".join(cells) + " |")
        rows.append(row)
    over = overs.pop() if len(overs) == 1 else "units"
    n_templates = len({u["template"] for u in result.units}) if result.units else None
    groups = sorted({str(u["group"]) for u in result.units})
    if over == "templates":
        kind = "splits" if all(g.startswith("split") for g in groups) else "subjects"
        spread = (f"mean ± std over the {n_templates} prompt templates, each the average over {len(groups)} "
                  f"{kind}")
    else:
        spread = f"mean ± std over {result.n_units} {over}"
    wall = result.timing.get("wall_seconds")
    timing = (f"; wall time {wall:.1f} s (scoring {result.timing.get('scoring_seconds', float('nan')):.1f} s)"
              if wall is not None else "")
    lines = [f"**{title}** — {result.protocol}; {spread}{timing}", "",
             "| method | " + " | ".join(h for _, h, _, _ in cols) + " |",
             "|---|" + "---:|" * len(cols), *body]
    doc = {"title": title, "protocol": result.protocol, "n_units": result.n_units, "n_questions": result.n_questions,
           "spread_over": over, "n_templates": n_templates, "groups": groups, "units": result.units,
           "columns": [k for k, _, _, _ in cols], "scale": "fractions (Markdown: percent, Brier as is)",
           "timing": result.timing, "rows": rows}
    return "\n".join(lines) + "\n", doc


__all__ = ["summary_table", "paper_table", "paper_spread", "LABELLED_COLUMNS", "UNLABELLED_COLUMNS", "PAPER_COLUMNS"]
