"""Summarise `refcal run` folders into the cross-setting tables of docs/RESULTS.md.

    python scripts/results_summary.py RUN_DIR [RUN_DIR ...] [--metric ece]

Prints, in Markdown: one row per run (data set, scoring, questions, wall time, agreement, the premise
verdict's base-model gap), then a methods x runs table of the metric (mean ± sample sd over the units, in %
for ECE-like metrics), each run's best label-free method in bold, and the paired per-unit difference of
every label-free method to DACA (mean ± sample sd, ddof 1) with the number of units it wins. Everything is read from each folder's
metrics.json; nothing is recomputed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LABELLED = {"ts", "vs", "ms"}
REFERENCE = {"chat", "base"}
PERCENT = {"ece", "mce", "aece", "accuracy"}


def _load(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _name(m: dict) -> str:
    c = m["config"]
    return f"{c.get('dataset')} {c.get('scoring') or 'free-form'}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--metric", default="ece")
    args = ap.parse_args()
    runs = [(f, _load(f)) for f in args.runs]
    scale = 100.0 if args.metric in PERCENT else 1.0

    print("| setting | questions | units | wall s (scoring s) | agreement | base gap where agreeing (95 % CI) |")
    print("|---|---:|---:|---:|---:|---|")
    for f, m in runs:
        t = m.get("timing") or {}
        d = m.get("diagnostics") or {}
        p = (m.get("premise") or {}).get("base") or {}
        gap = (f"{100 * p['gap']:+.1f} [{100 * p['gap_low']:+.1f}, {100 * p['gap_high']:+.1f}]"
               if p.get("gap") is not None else "n/a")
        agree = f"{d['n_agree']}/{d['n']}" if d.get("n") else "n/a"
        print(f"| {_name(m)} (`{f.name}`) | {m['n_questions']} | {m['n_units']} | "
              f"{t.get('wall_seconds', 'n/a')} ({t.get('scoring_seconds', 'n/a')}) | {agree} | {gap} |")
    print()

    keys: list[str] = []
    labels: dict[str, str] = {}
    for _, m in runs:
        for k in list(m["methods"]) + list(m.get("unavailable") or {}):
            if k not in keys:
                keys.append(k)
        labels.update(m.get("method_labels") or {})
    head = " | ".join(_name(m) for _, m in runs)
    print(f"| method | {head} |")
    print("|---|" + "---:|" * len(runs))
    best = {}
    for i, (_, m) in enumerate(runs):
        free = {k: v[args.metric]["mean"] for k, v in m["methods"].items()
                if k not in LABELLED | REFERENCE and v.get(args.metric, {}).get("mean") is not None}
        best[i] = min(free, key=free.get) if free else None
    for k in keys:
        cells = []
        for i, (_, m) in enumerate(runs):
            v = m["methods"].get(k, {}).get(args.metric)
            if v is None or v.get("mean") is None:
                cells.append("n/a" if k not in m["methods"] else "undefined")
                continue
            s = f"{scale * v['mean']:.1f} ± {scale * (v.get('std') or 0):.1f}"
            cells.append(f"**{s}**" if best[i] == k else s)
        print(f"| {labels.get(k, k)} | " + " | ".join(cells) + " |")
    print()

    print(f"Paired per-unit difference of {args.metric} to DACA (negative = better than DACA; units won):")
    print()
    print(f"| method | {head} |")
    print("|---|" + "---:|" * len(runs))
    for k in keys:
        if k in REFERENCE | LABELLED | {"daca"}:
            continue
        cells = []
        for _, m in runs:
            a = m["methods"].get(k, {}).get(args.metric, {}).get("values")
            b = m["methods"].get("daca", {}).get(args.metric, {}).get("values")
            if not a or not b or len(a) != len(b):
                cells.append("n/a")
                continue
            d = scale * (np.asarray(a, float) - np.asarray(b, float))
            ok = np.isfinite(d)
            sd = d[ok].std(ddof=1) if ok.sum() > 1 else float("nan")  # sample sd, as metrics.json stores
            cells.append(f"{d[ok].mean():+.1f} ± {sd:.1f} ({int((d[ok] < 0).sum())}/{int(ok.sum())})"
                         if ok.any() else "n/a")
        print(f"| {labels.get(k, k)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
