"""Option groups shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..options import COLUMN_KEYS


def column_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--question-col`` ... for user data files (JSONL / CSV / Parquet / HF folders)."""
    opts = [
        click.option("--question-col", default=None, help="User files: column with the question text."),
        click.option("--choices-col", default=None, help="User files: column holding the list of options."),
        click.option("--option-cols", default=None,
                     help="User files: comma-separated option columns (instead of --choices-col)."),
        click.option("--answer-col", default=None, help="User files: column with the answer."),
        click.option("--answer-format", type=click.Choice(["letter", "index", "text"]), default=None,
                     help="User files: how --answer-col encodes the answer (default: detected)."),
        click.option("--id-col", default=None, help="User files: question id column (default: row number)."),
        click.option("--subject-col", default=None, help="User files: subject/group column."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def pop_columns(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the column options from ``kwargs``; return those that were given."""
    cols = {k: kwargs.pop(k, None) for k in COLUMN_KEYS}
    if cols.get("option_cols"):
        cols["option_cols"] = [c.strip() for c in cols["option_cols"].split(",") if c.strip()]
    return {k: v for k, v in cols.items() if v is not None}
