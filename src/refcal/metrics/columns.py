"""The one table of metric columns: which metric each table shows, under what header, scale and precision.

Every table reads it: the summary ``refcal run`` prints (view ``console``), the run folder's ``table.md``
(``table_md``: the DACA paper's Table 1 layout), the HTML / Markdown report's comparison (``report``) and
its second table of the newer metrics (``report_more``), and ``refcal evaluate`` (``cli``). A new metric is one row here plus its function in :data:`refcal.metrics.METRICS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

__all__ = ["Column", "COLUMNS", "VIEWS", "columns"]

VIEWS = ("console", "table_md", "report", "report_more", "cli")
_ALL = frozenset({"console", "table_md", "report", "cli"})  # the main tables (not report_more)


@dataclass(frozen=True)
class Column:
    """One metric column.

    ``key``: the metric's name in :func:`refcal.metrics.evaluate` and ``metrics.json``; ``scale``: 100 for the
    ECE family and accuracy (shown in percent), 1 otherwise; ``decimals``: digits in the report and the
    console; ``lower_is_better``: ``True`` / ``False`` (the report bolds the best), ``None`` for a property of
    the data rather than a score (no bold); ``views``: the tables that show it.
    """

    key: str
    header: str
    scale: float
    decimals: int
    lower_is_better: bool | None
    views: frozenset[str]


#: table order; every view shows its columns in this order
COLUMNS: tuple[Column, ...] = (
    Column("ece", "ECE %", 100, 3, True, _ALL),
    Column("mce", "MCE %", 100, 3, True, _ALL),
    Column("aece", "AECE %", 100, 3, True, _ALL),
    Column("brier", "Brier", 1, 4, True, _ALL),
    Column("nll", "NLL", 1, 4, True, frozenset({"console", "report", "cli"})),
    Column("accuracy", "Acc %", 100, 2, False, _ALL),
    Column("auroc", "AUROC", 1, 4, False, frozenset({"report", "cli"})),
    Column("aurc", "AURC", 1, 4, True, frozenset({"report"})),
    Column("smooth_ece", "smECE %", 100, 3, True, frozenset({"console", "report_more", "cli"})),
    Column("classwise_ece", "cwECE %", 100, 3, True, frozenset({"report_more", "cli"})),
    Column("debiased_ece", "dECE %", 100, 3, True, frozenset({"report_more", "cli"})),
    Column("brier_reliability", "Brier REL", 1, 4, True, frozenset({"report_more"})),
    Column("brier_resolution", "Brier RES", 1, 4, False, frozenset({"report_more"})),
    Column("brier_uncertainty", "Brier UNC", 1, 4, None, frozenset({"report_more"})),
    # split-conformal 90 % sets (refcal.metrics.conformal_metrics): coverage should be about 90 %, not "best"
    Column("lac_coverage", "LAC cov %", 100, 1, None, frozenset({"report_more"})),
    Column("lac_size", "LAC size", 1, 2, True, frozenset({"report_more"})),
    Column("aps_coverage", "APS cov %", 100, 1, None, frozenset({"report_more"})),
    Column("aps_size", "APS size", 1, 2, True, frozenset({"report_more"})),
)


def columns(view: str) -> list[Column]:
    """The columns of one table (one of :data:`VIEWS`), in table order."""
    if view not in VIEWS:
        raise InputError(f"unknown column view {view!r}; choose one of {', '.join(VIEWS)}")
    return [c for c in COLUMNS if view in c.views]
