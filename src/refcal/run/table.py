"""The comparison table printed at the end of ``refcal run``."""

from __future__ import annotations

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


__all__ = ["summary_table", "LABELLED_COLUMNS", "UNLABELLED_COLUMNS"]
