"""Tables and figure of docs/RESULTS.md's "How many labels is DACA worth?", from `refcal run --labels-budget`
folders.

    python scripts/label_efficiency_summary.py RUN_DIR [RUN_DIR ...] [--figure docs/figures/label-efficiency.png]

Prints, in Markdown, an overview (one row per setting: chat / DACA / TS-with-every-label ECE, the premise
diagnostic and DACA's worth in labels), then per run folder (one setting):

1. ECE % of every labelled method at each label budget k, **mean ± sample sd over the fits** (every random
   split x every label draw: 5 x 20 = 100 fits per k; 5 at ``all`` and at k = 0, the chat model unchanged, or
   DACA for DACA + k);
   DACA's label-free ECE (mean ± sample sd over the splits) with its 95 % bootstrap interval;
2. DACA against labelled TS at each k, paired per fit (the same split's test questions): the mean difference
   and wins / ties / losses for DACA, a tie being a difference under 0.5 ECE points; the same for ``daca_k``
   against labelled TS (the same drawn labels);
3. the "worth N labels" sentence with its paired-bootstrap interval and, per k, the share of bootstrap
   replicates in which TS is at least as calibrated as DACA.

Nothing is recomputed from scores: everything is read from metrics.json (``label_budget``, see
``refcal.run.budget``). With ``--figure``, draws every setting's curve (ECE against k, DACA's line and band).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TIE = 0.005  # |difference| under 0.5 ECE points is a tie
NAMES = {"ts": "labelled TS", "platt": "Platt", "isotonic": "isotonic", "histogram": "histogram binning",
         "daca_k": "DACA + k labels"}


def _ms(v, scale: float = 100.0) -> str:
    v = np.asarray(v, dtype=float).ravel()
    return f"{scale * v.mean():.2f} ± {scale * v.std(ddof=1):.2f}" if v.size > 1 else f"{scale * v.mean():.2f}"


def _wtl(diff: np.ndarray) -> str:
    """Wins / ties / losses of the first method (lower ECE is better)."""
    return f"{int((diff < -TIE).sum())}/{int((np.abs(diff) <= TIE).sum())}/{int((diff > TIE).sum())}"


def _fits(cells: list) -> np.ndarray:
    """(draws, units) ECE of one k; a label-free column (k = 0: the same fit in every draw) as one row, so its
    sd is over the splits only."""
    c = np.asarray(cells, dtype=float)
    return c[:1] if np.all(c == c[:1]) else c


def setting_name(metrics: dict) -> str:
    c = metrics["config"]
    return f"{c['dataset']} {c['scoring']} (limit {c['limit']}): chat {c['chat']}, base {c['base']}"


def tables(run: Path) -> list[str]:
    m = json.loads((run / "metrics.json").read_text())
    lb = m["label_budget"]
    ks = [str(k) for k in lb["ks"]]
    n_all = round(float(np.mean(lb["n_calib"])))
    ks_head = [f"all ({n_all})" if k == "all" else k for k in ks]
    daca = lb["daca"]["ece"]
    cells = {k: [_fits(c) for c in r["metrics"]["ece"]["cells"]] for k, r in lb["methods"].items()}
    d_units = np.asarray(daca["units"], dtype=float)
    t = m.get("timing", {})
    out = [f"**{setting_name(m)}** — {lb['n_units']} splits, {lb['n_draws']} label draws per k, calibration part "
           f"{n_all} questions; wall time: run {t.get('wall_seconds', float('nan')):.0f} s "
           f"(loading + scoring {t.get('scoring_seconds', float('nan')):.0f} s), curve "
           f"{t.get('label_budget_seconds', float('nan')):.0f} s", "",
           "| method | " + " | ".join(f"k = {k}" for k in ks_head) + " |", "|---|" + "---:|" * len(ks)]
    for key, cs in cells.items():
        out.append(f"| {NAMES.get(key, key)} | " + " | ".join(_ms(c) for c in cs) + " |")
    out.append(f"| DACA (no labels) | {_ms(d_units)} [{100 * daca['low']:.2f}, {100 * daca['high']:.2f}] |"
               + " |" * (len(ks) - 1))
    rows = []
    for label, key, ref in (("DACA − TS", "ts", None), ("DACA + k − TS", "ts", "daca_k")):
        diffs = [(cells[ref][i] if ref else d_units[None, :]) - cells[key][i] for i in range(len(ks))]
        rows.append(f"| {label}: mean, W/T/L | " + " | ".join(
            f"{100 * d.mean():+.2f}, {_wtl(d)}" for d in diffs) + " |")
    out += rows
    w = lb["worth_labels"]
    p = w.get("p_ts_at_most_daca")
    out += ["", f"- **{w['sentence']}.**"]
    if p:
        out.append("- share of paired-bootstrap replicates with TS at least as calibrated as DACA: "
                   + ", ".join(f"k = {k}: {100 * v:.0f} %" for k, v in zip(ks_head, p, strict=True)))
    out.append(f"- label draws alone: the crossing ranges {w['draws_low']}–{w['draws_high']} over 95 % of draws")
    return out


def _k(k, n_calib) -> str:
    return "—" if k is None else f"all ({round(float(np.mean(n_calib)))})" if k == "all" else str(k)


def overview(runs: list[Path]) -> list[str]:
    """One row per setting: the chat model's, DACA's and labelled TS's (every label) ECE, the premise
    diagnostic (the base model's over-confidence where the two models agree) and DACA's worth in labels."""
    out = ["| setting | chat ECE % | DACA ECE % | TS ECE %, every label | base over-confidence where the models "
           "agree, points [95 %] | DACA is worth (labels) | 95 % interval |", "|---|---:|---:|---:|---:|---:|---|"]
    for run in runs:
        m = json.loads((run / "metrics.json").read_text())
        lb, c = m["label_budget"], m["config"]
        w, g = lb["worth_labels"], m.get("premise", {}).get("base", {})
        ts = lb["methods"]["ts"]["metrics"]["ece"]["mean"]
        n = {"zero": "0", "at_most": f"≤ {_k(w['n'], lb['n_calib'])}",
             "not_reached": f"> {_k(lb['ks'][-1], lb['n_calib'])}"}.get(w["status"], _k(w["n"], lb["n_calib"]))
        hi = f"> {_k(lb['ks'][-1], lb['n_calib'])}" if w["high"] is None else _k(w["high"], lb["n_calib"])
        gap = (f"{100 * g['gap']:+.1f} [{100 * g['gap_low']:+.1f}, {100 * g['gap_high']:+.1f}]" if g else "—")
        out.append(f"| {c['dataset']} {c['scoring']} {c['limit']}, chat {c['chat']} | {100 * ts[0]:.2f} | "
                   f"{100 * lb['daca']['ece']['mean']:.2f} | {100 * ts[-1]:.2f} | {gap} | **{n}** | "
                   f"{_k(w['low'], lb['n_calib'])}–{hi} |")
    return out


def figure(runs: list[Path], path: Path) -> None:
    from refcal.report import plots

    n = len(runs)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig = plots.new_figure(6.2 * cols, 4.6 * rows)
    for i, run in enumerate(runs):
        m = json.loads((run / "metrics.json").read_text())
        ax = fig.add_subplot(rows, cols, i + 1)
        c = m["config"]
        title = f"{c['dataset']} {c['scoring']}: {c['chat']}"
        plots.plot_label_budget(plots.label_curves(m["label_budget"]), ax=ax, title=title, labels=NAMES)
    plots.save_figure(fig, path.with_suffix(""), formats=("png",))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--figure", type=Path, help="write every setting's curve to this .png")
    args = ap.parse_args()
    print("\n".join(overview(args.runs)) + "\n")
    for run in args.runs:
        print("\n".join(tables(run)) + "\n")
    if args.figure:
        figure(args.runs, args.figure)


if __name__ == "__main__":
    main()
