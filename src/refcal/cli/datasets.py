"""``refcal datasets``: what data is available, with sizes; one-time BIG-bench set-up."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[j]) for r in [header, *rows]) for j in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    lines = [fmt.format(*header).rstrip(), fmt.format(*("-" * w for w in widths))]
    return "\n".join([*lines, *(fmt.format(*r).rstrip() for r in rows)])


@click.command("datasets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--subjects", "show_subjects", is_flag=True, help="List the 57 MMLU subjects instead.")
@click.option("--setup-bigbench", is_flag=True,
              help="Set up the optional BIG-bench data sets (truthfulqa-mc, mathqa, truthfulqa-gen) from --sdist; "
                   "without --sdist, try pip's package index (which no longer offers the file).")
@click.option("--sdist", type=click.Path(exists=True, path_type=Path),
              help="With --setup-bigbench: bigbench-1.0.0.tar.gz, its extracted folder, or a folder of the task "
                   "files.")
def datasets(as_json: bool, show_subjects: bool, setup_bigbench: bool, sdist: Path | None) -> None:
    """List the built-in data sets with their splits and sizes.

    The BIG-bench sets (truthfulqa-mc, mathqa, truthfulqa-gen) are optional: their status names the set-up
    command until their task files are in place.

    User files (JSONL / JSON / CSV / TSV / Parquet / save_to_disk folders) work wherever a data set name
    is accepted, with --question-col, --choices-col or --option-cols, --answer-col.
    """
    from ..data import list_datasets, mmlu_subjects

    if sdist is not None and not setup_bigbench:
        raise click.UsageError("--sdist goes with --setup-bigbench")
    if setup_bigbench:
        from ..data import bigbench

        where = bigbench.fetch(sdist=sdist)
        click.echo(f"BIG-bench task files ready in {where}")
        return
    if show_subjects:
        subjects = list(mmlu_subjects())
        click.echo(json.dumps(subjects, indent=2) if as_json else "\n".join(subjects))
        return
    infos = list_datasets()
    if as_json:
        click.echo(json.dumps([asdict(i) for i in infos], indent=2))
        return
    rows = []
    for i in infos:
        splits = ", ".join(f"{s} {n}" for s, n in i.splits.items())
        status = "ok" if i.available else f"optional, needs set-up: `{i.setup}`"
        package = i.source.split(" (")[0]
        rows.append([i.name, splits, i.n_options, i.default_split, package, i.licence, status])
    click.echo(_table(rows, ["name", "splits (questions)", "options", "default", "package", "licence", "status"]))
