"""The blocks a report is made of; both renderers (:mod:`refcal.report.render`) read the same list.

A block is a :class:`Table`, an :class:`Image` or a ``(kind, text)`` pair with kind ``"h1"``, ``"h2"``,
``"p"`` or ``"note"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)
    collapsed: str | None = None  # summary text: rendered folded in HTML


@dataclass
class Image:
    stem: str  # plots/<stem>.png
    caption: str
