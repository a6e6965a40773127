"""The ``refcal monitor`` report: ``monitor.html`` (time-series plots as embedded PNG, the window table) and
``monitor.json`` (summary + windows), both written atomically."""

from __future__ import annotations

import base64
import html
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_json, atomic_write_text, ensure_parent
from .drift import PSI_MAJOR, PSI_MODERATE, MonitorResult

MAX_TABLE_ROWS = 500


def plot_monitor(result: MonitorResult) -> str:
    """The four time series (agreement, temperature, PSI, estimated accuracy) as one base64 PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s, summ = result.series, result.summary
    x = np.arange(len(s["t_start"]))
    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    panels = [
        ("agreement", "agreement rate", summ["baseline_agreement"], "calibration set"),
        ("temperature", "DACA temperature (refitted)", summ["deployed_temperature"], "deployed"),
        ("psi", "confidence PSI", None, None),
        ("accuracy", "estimated accuracy", summ["baseline_confidence"], "calibration set"),
    ]
    for ax, (key, label, ref, ref_label) in zip(axes, panels, strict=True):
        y = s[key]
        ax.plot(x, y, marker="o", ms=3, lw=1.2, color="C0", label="window")
        if f"{key}_lo" in s:
            ax.fill_between(x, s[f"{key}_lo"], s[f"{key}_hi"], color="C0", alpha=0.2, lw=0, label="interval")
        if ref is not None:
            ax.axhline(ref, color="C3", ls="--", lw=1, label=ref_label)
        if key == "psi":
            ax.axhline(PSI_MODERATE, color="C1", ls=":", lw=1, label="moderate (0.1)")
            ax.axhline(PSI_MAJOR, color="C3", ls=":", lw=1, label="major (0.25)")
        if key == "temperature":
            flagged = np.array(summ["flagged_windows"], dtype=int)
            if len(flagged):
                ax.plot(flagged, y[flagged], "x", color="C3", ms=8, mew=2, label="flagged")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7)
    from matplotlib.ticker import MaxNLocator

    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("window")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def render_html(result: MonitorResult) -> str:
    s = result.summary
    verdict = (f"<p class='bad'><b>Drift:</b> the deployed temperature lies outside the interval of "
               f"{s['n_flagged']} of {s['n_windows']} windows ({', '.join(map(str, s['flagged_windows'][:20]))}"
               f"{'…' if s['n_flagged'] > 20 else ''}).</p>" if s["n_flagged"] else
               "<p class='ok'>No window's temperature interval excludes the deployed temperature.</p>")
    rows = []
    for i, w in enumerate(result.windows[:MAX_TABLE_ROWS]):
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(w["t_start"]))
        cls = " class='bad'" if w["flag_temperature"] else ""
        rows.append(
            f"<tr{cls}><td>{i}</td><td>{when}</td><td>{w['n']}</td><td>{w['n_reference']}</td>"
            f"<td>{_fmt(w['agreement'])} [{_fmt(w['agreement_lo'])}, {_fmt(w['agreement_hi'])}]</td>"
            f"<td>{_fmt(w['temperature'])} [{_fmt(w['temperature_lo'])}, {_fmt(w['temperature_hi'])}]</td>"
            f"<td>{_fmt(w['psi'])}</td>"
            f"<td>{_fmt(w['accuracy'])} [{_fmt(w['accuracy_lo'])}, {_fmt(w['accuracy_hi'])}]</td></tr>")
    more = (f"<p>… {len(result.windows) - MAX_TABLE_ROWS} more windows in monitor.json</p>"
            if len(result.windows) > MAX_TABLE_ROWS else "")
    cal = s["calibrator"]
    facts = [
        ("records", s["n_records"]), ("windows", f"{s['n_windows']} ({html.escape(s['window'])})"),
        ("reference samples", s["n_reference"]), ("calibrator", f"{cal['method']} {cal['params']} "
                                                               f"sha256 {cal['sha256'][:12]}…"),
        ("deployed temperature", _fmt(s["deployed_temperature"])),
        ("calibration-set agreement", f"{_fmt(s['baseline_agreement'])} ({s['baseline_agreement_source'] or 'unknown'})"),
        ("PSI against", s["psi_reference"]), ("interval level", f"{s['interval_level']:.4f} (Bonferroni over windows, "
                                                                 f"{s['n_boot']} bootstrap resamples)"),
        ("torn lines skipped", s["n_torn_lines"]),
    ]
    facts_html = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    png = plot_monitor(result)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>refcal monitor</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left}}
.bad{{color:#a00}}.ok{{color:#070}}tr.bad td{{background:#fee}}</style></head><body>
<h1>refcal monitor</h1>{verdict}
<table>{facts_html}</table>
<h2>Time series</h2><img alt="agreement, temperature, PSI and estimated accuracy per window"
 src="data:image/png;base64,{png}" style="max-width:100%">
<h2>Windows</h2><table><tr><th>#</th><th>start (UTC)</th><th>n</th><th>ref</th><th>agreement</th>
<th>temperature</th><th>PSI</th><th>est. accuracy</th></tr>{''.join(rows)}</table>{more}
<p>Label-free: no labels are read. Intervals: estimate ± z · bootstrap standard error (temperature on the log
scale), z for the Bonferroni level above.</p></body></html>
"""


def write_monitor_report(result: MonitorResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``monitor.html`` and ``monitor.json`` into ``out_dir``; their paths."""
    out = Path(out_dir)
    ensure_parent(out / "monitor.json", what="the monitor report")
    paths = {"json": out / "monitor.json", "html": out / "monitor.html"}
    atomic_write_json(paths["json"], result.to_dict())
    atomic_write_text(paths["html"], render_html(result))
    return paths
