"""MkDocs hooks (``hooks:`` in mkdocs.yml): pages generated from the code and the kept runs at build time.

* ``<!-- refcal:methods-table -->`` in a page becomes a table of the method registry
  (``refcal.calibrate.methods.METHODS``), so the documented methods are always the registered ones.
* ``results/figures/ece-cloze.svg`` and ``ece-letter.svg`` are drawn from the ``metrics.json`` files kept in
  ``docs/results/`` (real runs of the packaged pair): ECE per default method and setting, mean ± std over
  the splits. They exist only in the built site; pages link them as ordinary files.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # document this checkout, whatever refcal is installed

METHODS_MARKER = "<!-- refcal:methods-table -->"
#: (run folder under docs/results, label) per figure, in the order of docs/RESULTS.md §1
SETTINGS = {
    "cloze": [("sciq-cloze-l400", "SciQ"), ("arc-easy-cloze-l200", "ARC-Easy"),
              ("arc-challenge-cloze-l200", "ARC-Challenge"), ("obqa-cloze-l200", "OpenBookQA"),
              ("csqa-cloze-l200", "CommonsenseQA")],
    "letter": [("sciq-letter-l200", "SciQ"), ("arc-easy-letter-l200", "ARC-Easy"),
               ("arc-challenge-letter-l200", "ARC-Challenge"), ("obqa-letter-l200", "OpenBookQA"),
               ("csqa-letter-l200", "CommonsenseQA")],
}


#: the kept run whose report figures illustrate guides/reports.md (the embedded default's setting)
REPORT_RUN = "sciq-cloze-l400"


def on_files(files, config):
    for kind, settings in SETTINGS.items():
        svg = ece_figure([(ROOT / "docs" / "results" / run, label) for run, label in settings], kind)
        files.append(File.generated(config, f"results/figures/ece-{kind}.svg", content=svg))
    for name, svg in report_figures(ROOT / "docs" / "results" / REPORT_RUN).items():
        files.append(File.generated(config, f"results/figures/{REPORT_RUN}-{name}.svg", content=svg))
    return files


def on_page_markdown(markdown, page, config, files):
    if METHODS_MARKER in markdown:
        markdown = markdown.replace(METHODS_MARKER, methods_table())
    return markdown


def methods_table() -> str:
    from refcal.calibrate.methods import FREEFORM, MC, METHODS, method_keywords

    rows = ["| key | label | labels | reference model | default | generates text | scoring | free-form |",
            "|---|---|---|---|---|---|---|---|"]
    for key, m in METHODS.items():
        if MC not in m.inputs:
            continue
        scorings = ", ".join(m.scorings) if m.scorings else "any"
        rows.append(f"| `{key}` | {m.kind_label(MC)} | {'needs' if m.needs_labels else 'none'} | "
                    f"{'uses' if m.needs_base(MC) else '-'} | {'yes' if MC in m.default else ''} | "
                    f"{'yes' if m.needs_generation else ''} | {scorings} | {'yes' if FREEFORM in m.inputs else ''} |")
    keywords = "; ".join(f"`{k}`: {len(v)} methods" for k, v in method_keywords(MC).items())
    return "\n".join(rows) + f"\n\nKeywords of `--methods` (multiple choice): {keywords}.\n"


def report_figures(run: Path) -> dict[str, bytes]:
    """Two of the report's own figures, drawn by its plot functions from a kept run's metrics.json (the
    selective-accuracy curves and the bootstrap intervals of ECE, default methods only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from refcal.calibrate.methods import DEFAULT_METHODS
    from refcal.report import plots
    from refcal.run import load_result

    res = load_result(run)
    keys = [k for k in DEFAULT_METHODS if k in res.selective]
    labels = {k: res.label(k) for k in keys}
    out = {}
    ax = plots.plot_selective_accuracy({k: res.selective[k] for k in keys}, labels=labels,
                                       title="Selective accuracy (SciQ, cloze; first split)")
    out["selective"] = _svg(ax.figure, plt)
    ax = plots.plot_metric_intervals({k: res.bootstrap.methods[k]["ece"] for k in keys}, labels=labels,
                                     title="ECE of each method (SciQ, cloze; first split)")
    out["ece-intervals"] = _svg(ax.figure, plt)
    return out


def _svg(fig, plt) -> bytes:
    if fig.get_layout_engine() is None:  # the report's figures come with their own (constrained) layout
        fig.tight_layout()
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)  # a no-op for figures made without pyplot
    return buf.getvalue().encode()


def ece_figure(runs: list[tuple[Path, str]], kind: str) -> bytes:
    """Grouped bars: ECE % (mean ± std over the splits) of every default method, one group per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from refcal.calibrate.methods import DEFAULT_METHODS, METHODS

    docs = [json.loads((run / "metrics.json").read_text()) for run, _ in runs]
    keys = [k for k in DEFAULT_METHODS if all(k in d["methods"] for d in docs)]
    x = np.arange(len(runs))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, key in enumerate(keys):
        means = [100 * d["methods"][key]["ece"]["mean"] for d in docs]
        stds = [100 * d["methods"][key]["ece"]["std"] for d in docs]
        ax.bar(x + (i - (len(keys) - 1) / 2) * width, means, width, yerr=stds, capsize=2,
               label=METHODS[key].label, color=METHODS[key].color)
    ax.set_xticks(x, [label for _, label in runs])
    ax.set_ylabel("ECE % (lower is better)")
    ax.set_title(f"{kind} scoring: SmolLM2-135M-Instruct calibrated with Gemma-3-270M")
    ax.legend(fontsize=7, ncols=3, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, plt)
