"""Tables of docs/RESULTS.md's same-family section, from `refcal run` folders (chat = SFT and chat = DPO).

    python scripts/same_family_summary.py RUN_DIR [RUN_DIR ...]

Prints, in Markdown, per data set and scoring:

1. the three stages side by side (the base model read from the first run; each run's chat model):
   accuracy, mean confidence, over-confidence (mean confidence - accuracy) and ECE, mean ± sample
   standard deviation over the run's units (random calibration / test splits), and the paired change of
   over-confidence from one stage to the next;
2. every method's ECE with chat = each stage, and each label-free method's paired difference to naive
   alignment and to DACA.

A difference is a *win* (or a loss) only when its paired 95 % interval excludes zero: the per-unit
differences' mean ± t(0.975, n-1) * sd / sqrt(n). The units' test sets overlap (random splits of the same
questions), so this interval is narrower than one from independent samples would be: a "tie" is
trustworthy, a narrow win less so. Nothing is recomputed from scores; everything is read from metrics.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats

LABELLED = {"ts", "vs", "ms"}
REFERENCE = {"chat", "base"}


def _values(m: dict, method: str, metric: str) -> np.ndarray:
    return np.asarray(m["methods"][method][metric]["values"], dtype=float)


def _ms(v: np.ndarray, scale: float = 100.0) -> str:
    return f"{scale * v.mean():.2f} ± {scale * v.std(ddof=1):.2f}"


def paired(d: np.ndarray) -> tuple[float, float, float]:
    """Mean of paired differences and its 95 % t-interval ``(mean, low, high)``."""
    n = len(d)
    half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n) if n > 1 else np.inf
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def verdict(d: np.ndarray) -> str:
    """``win`` / ``loss`` (lower is better) when the paired interval excludes zero, else ``tie``."""
    _, lo, hi = paired(d)
    return "win" if hi < 0 else "loss" if lo > 0 else "tie"


def _fmt_paired(d: np.ndarray) -> str:
    mean, lo, hi = paired(100 * d)
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}] {verdict(d)}"


def stage_table(runs: list[tuple[str, dict]]) -> list[str]:
    base = runs[0][1]
    rows = [("base (gemma-3-270m)", base, "base")] + [(name, m, "chat") for name, m in runs]
    out = ["| model | accuracy % | mean confidence % | over-confidence (conf - acc) % | ECE % |",
           "|---|---:|---:|---:|---:|"]
    over = {}
    for label, m, role in rows:
        acc, conf, ece = (_values(m, role, k) for k in ("accuracy", "mean_confidence", "ece"))
        over[label] = conf - acc
        out.append(f"| {label} | {_ms(acc)} | {_ms(conf)} | {_ms(conf - acc)} | {_ms(ece)} |")
    labels = list(over)
    out.append("")
    steps = list(zip(labels, labels[1:], strict=False)) + ([(labels[0], labels[-1])] if len(labels) > 2 else [])
    for a, b in steps:
        mean, lo, hi = paired(100 * (over[b] - over[a]))
        out.append(f"- over-confidence {b} - {a}: {mean:+.2f} points, paired 95 % interval [{lo:+.2f}, {hi:+.2f}]")
    return out


def method_table(runs: list[tuple[str, dict]]) -> list[str]:
    methods = [k for k in runs[0][1]["methods"] if all(k in m["methods"] for _, m in runs)]
    head = "| method | " + " | ".join(f"ECE % (chat = {n}) | vs naive | vs DACA" for n, _ in runs) + " |"
    out = [head, "|---|" + "---:|---:|---:|" * len(runs)]
    counts = {n: {"naive": [0, 0, 0], "daca": [0, 0, 0]} for n, _ in runs}
    for k in methods:
        cells = []
        for n, m in runs:
            v = _values(m, k, "ece")
            cells.append(_ms(v))
            for ref in ("naive", "daca"):
                if k in REFERENCE or k in LABELLED or k == ref or ref not in m["methods"]:
                    cells.append("")
                    continue
                d = v - _values(m, ref, "ece")
                cells.append(_fmt_paired(d))
                counts[n][ref][("win", "tie", "loss").index(verdict(d))] += 1
        label = runs[0][1]["method_labels"].get(k, k)
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("")
    for n, c in counts.items():
        out.append(f"- chat = {n}: label-free methods vs naive alignment {c['naive'][0]} wins / {c['naive'][1]} "
                   f"ties / {c['naive'][2]} losses; vs DACA {c['daca'][0]} / {c['daca'][1]} / {c['daca'][2]}")
    return out


def premise_lines(runs: list[tuple[str, dict]]) -> list[str]:
    out = []
    for n, m in runs:
        p = m.get("premise") or {}
        if not p:
            continue
        d = m["diagnostics"]
        out.append(f"- chat = {n}: agreement {100 * d['agreement_rate']:.1f} % ({p['n_agree']} of {d['n']}); "
                   f"{p['verdict']['base']}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    args = ap.parse_args()
    groups: dict[tuple, list[tuple[str, dict]]] = {}
    for folder in args.runs:
        m = json.loads((folder / "metrics.json").read_text())
        c = m["config"]
        groups.setdefault((c["dataset"], c["scoring"], c["limit"]), []).append((c["chat"], m))
    for (ds, scoring, limit), runs in groups.items():
        print(f"### {ds}, {scoring} scoring, --limit {limit} ({runs[0][1]['protocol']}; "
              f"wall {', '.join(str(round(m['timing']['wall_seconds'])) + ' s' for _, m in runs)})\n")
        print("\n".join(stage_table(runs)) + "\n")
        print("\n".join(premise_lines(runs)) + "\n")
        print("\n".join(method_table(runs)) + "\n")


if __name__ == "__main__":
    main()
