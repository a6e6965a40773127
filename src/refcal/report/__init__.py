"""The run report: ``report.html`` (one self-contained file), ``report.md`` and ``plots/*.png|svg``.

:func:`write_report` reads a run folder (see ``docs/ARCHITECTURE.md``): ``metrics.json`` (required; every
number in the tables comes from it), ``config.json``, ``calibrator.json`` and ``predictions/<method>.parquet``
(calibrated log-probabilities on the evaluation questions of the first split/template; the plots are drawn
from them). The page is built once as a list of blocks that two renderers turn into HTML and Markdown, so
both files show the same numbers. Every string read from a file is escaped.

Parts: :mod:`~refcal.report.blocks` (what a page is made of), :mod:`~refcal.report.document` (the blocks of
a run), :mod:`~refcal.report.figures` (the plotted data, from the stored predictions),
:mod:`~refcal.report.plots` (drawing, reusable on any prepared data) and :mod:`~refcal.report.render`
(HTML and Markdown).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .._io import atomic_write_text
from ..calibrate.methods import METHODS
from ..run.folder import load_config, load_result, read_json_object
from ..run.table import paper_table
from .document import document
from .figures import figures, predictions
from .render import to_html, to_markdown

__all__ = ["write_report"]

log = logging.getLogger(__name__)


def write_report(run_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``report.html``, ``report.md`` and ``plots/*.png|svg`` into the run folder ``run_dir``.

    Returns
    -------
    dict of str -> Path
        Relative name (``"report.html"``, ``"report.md"``, ``"plots/reliability.png"``, ...) -> path written.

    Raises
    ------
    InputError
        ``run_dir`` is not a folder or its ``metrics.json`` is missing or unreadable.
    MissingDependencyError
        matplotlib is not installed (``pip install 'refcal[plots]'``).
    """
    run_dir = Path(run_dir)
    res = load_result(run_dir)
    config = load_config(run_dir, res)
    cal = read_json_object(run_dir / "calibrator.json", required=False)
    preds = predictions(run_dir)
    labels_ok = res.has_labels and bool(preds) and all((y >= 0).all() for _, y in preds.values())
    names = {**{k: m.label for k, m in METHODS.items()}, **res.method_labels}
    n_bins = int(config.get("n_bins") or 10)
    images, files = figures(preds, labels_ok, res, names, n_bins, run_dir / "plots")
    blocks = document(res, config, cal, preds, images, names)
    files["report.html"] = atomic_write_text(run_dir / "report.html", to_html(blocks, run_dir / "plots"))
    files["report.md"] = atomic_write_text(run_dir / "report.md", to_markdown(blocks))
    if res.has_labels and res.methods:
        md, doc = paper_table(res, names)
        files["table.md"] = atomic_write_text(run_dir / "table.md", md)
        files["table.json"] = atomic_write_text(run_dir / "table.json", json.dumps(doc, indent=1, allow_nan=False))
    log.info("wrote %s and %s", files["report.html"], files["report.md"])
    return files
