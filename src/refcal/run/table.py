"""The comparison table printed at the end of ``refcal run``."""

from __future__ import annotations

from typing import Any

from ..calibrate.methods import ordered_keys
from .result import RunResult

#: (metric key, header, scale) with labels; without labels only the mean confidence
LABELLED_COLUMNS = [("ece", "ECE %", 100), ("mce", "MCE %", 100), ("aece", "AECE %", 100), ("brier", "Brier", 1),
                    ("nll", "NLL", 1), ("accuracy", "Acc", 1)]
UNLABELLED_COLUMNS = [("mean_confidence", "mean conf", 1)]


def summary_table(result: RunResult) -> str:
    """Methods × metrics, mean ± std over units (3 decimals); a method that could not apply is listed with
    its reason instead of numbers."""
    cols = LABELLED_COLUMNS if result.has_labels else UNLABELLED_COLUMNS
    lines = [f"{'method':<40}" + "".join(f"{c[1]:>18}" for c in cols)]
    for m in ordered_keys([*result.methods, *result.unavailable]):
        if m not in result.methods:
            lines.append(f"{result.label(m):<40}  not applicable: {result.unavailable[m]}")
            continue
        cells = []
        for key, _, scale in cols:
            e = result.methods[m].get(key)
            if e is None:
                text = "n/a"
            elif e.std != e.std:  # one unit: no spread to report
                text = f"{e.mean * scale:.3f}"
            else:
                text = f"{e.mean * scale:.3f} ± {e.std * scale:.3f}"
            cells.append(text.rjust(18) if len(text) < 18 else " " + text)  # a wide value never touches the next
        lines.append(f"{result.label(m):<40}" + "".join(cells))
    return "\n".join(lines)


#: the DACA paper's Table 1 columns (metric key, header, scale)
PAPER_COLUMNS = [("ece", "ECE %", 100), ("mce", "MCE %", 100), ("aece", "AECE %", 100), ("brier", "Brier", 1)]


def paper_table(result: RunResult, labels: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """The DACA paper's Table 1 layout: methods × ECE / MCE / AECE / Brier, mean ± std over the units
    (templates × subjects or splits), as Markdown and as a JSON-ready document.

    With MMLU and ``--template all`` each unit is one (template, subject) calibrator, so the mean is the
    average over subjects and templates and the std their spread (the paper reports the std over templates
    of subject-averaged values; ``values`` keeps every unit so either can be recomputed). A method that
    could not apply is listed with its reason; NaN (undefined) is ``null`` in JSON and "n/a" in Markdown.
    """
    def num(v: float) -> float | None:
        return float(v) if v == v and abs(v) != float("inf") else None

    cfg = result.config
    title = (f"{cfg.get('chat', '?')} calibrated with {cfg.get('base', '?')} on {cfg.get('dataset', '?')} "
             f"({cfg.get('scoring', '?')} scoring, templates {cfg.get('templates', '?')})")
    lines = [f"**{title}** — {result.protocol}; {result.n_units} units, mean ± std", "",
             "| method | " + " | ".join(h for _, h, _ in PAPER_COLUMNS) + " | Acc % |",
             "|---|" + "---:|" * (len(PAPER_COLUMNS) + 1)]
    rows = []
    for m in ordered_keys([*result.methods, *result.unavailable]):
        name = (labels or {}).get(m) or result.label(m)
        if m not in result.methods:
            lines.append(f"| {name} | not applicable: {result.unavailable[m]} |" + " |" * len(PAPER_COLUMNS))
            rows.append({"method": m, "label": name, "not_applicable": result.unavailable[m]})
            continue
        cells, row = [], {"method": m, "label": name}
        for key, _, scale in [*PAPER_COLUMNS, ("accuracy", "Acc %", 100)]:
            e = result.methods[m].get(key)
            if e is None or e.mean != e.mean:
                cells.append("n/a")
                row[key] = None
                continue
            cells.append(f"{e.mean * scale:.2f}" + (f" ± {e.std * scale:.2f}" if e.std == e.std else ""))
            row[key] = {"mean": num(e.mean), "std": num(e.std), "values": [num(v) for v in e.values]}
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        rows.append(row)
    doc = {"title": title, "protocol": result.protocol, "n_units": result.n_units, "n_questions": result.n_questions,
           "columns": [k for k, _, _ in PAPER_COLUMNS] + ["accuracy"], "scale": "fractions (Markdown: percent)",
           "rows": rows}
    return "\n".join(lines) + "\n", doc


__all__ = ["summary_table", "paper_table", "LABELLED_COLUMNS", "UNLABELLED_COLUMNS", "PAPER_COLUMNS"]
