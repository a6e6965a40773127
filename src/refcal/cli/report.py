"""``refcal report RUN_DIR``: (re)build the report of an existing run folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def report(run_dir: Path) -> None:
    """Write report.html, report.md and plots/ into RUN_DIR (a folder written by `refcal run`)."""
    from ..report import write_report

    files = write_report(run_dir)
    n_plots = sum(1 for name in files if name.startswith("plots/"))
    click.echo(f"wrote {files['report.html']}, {files['report.md']} and {n_plots} plot files")
