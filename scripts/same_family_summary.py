"""Tables of docs/RESULTS.md's same-family section, from `refcal run` folders (chat = SFT and chat = DPO).

    python scripts/same_family_summary.py RUN_DIR [RUN_DIR ...] [--overview]

Prints, in Markdown, per data set and scoring:

1. the three stages side by side (the base model read from the first run; each run's chat model):
   accuracy, mean confidence, over-confidence (mean confidence - accuracy) and ECE, mean ± sample
   standard deviation over the run's units (random calibration / test splits), and the paired change of
   over-confidence from one stage to the next;
2. every method's ECE with chat = each stage, and each label-free method's paired difference to naive
   alignment and to DACA.

With ``--overview`` (give every run folder of the section): instead, the premise table (one row per run:
agreement, the base's and the chat model's gap where the models agree with their 95 % intervals) and the
counts across settings: DACA against naive alignment, agreement-aware DACA against naive alignment and
against DACA (wins / ties / losses per run), and how many of agreement-aware DACA's units put its second
temperature at the solver's upper bound.

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
#: the section's method list (cloze: `--methods no-generation` as it was when the section began; letter: the
#: same without CAPE); methods a later registry adds to no-generation (labelled top-label calibrators, DACA + k
#: labels) are stored in metrics.json but left out of the tables, so every setting shows the same rows
RECIPE = ("chat", "base", "naive", "daca", "ts", "daca_vector", "daca_matrix", "vs", "ms", "reeval", "daca_agree",
          "mutual", "cape", "proj")
#: the temperature bound of the calibrators' solver (refcal.calibrate): a fit here is "as flat as allowed"
TEMPERATURE_BOUND = 1e4
NAMES = {"sciq": "SciQ", "arc-easy": "ARC-Easy", "arc-challenge": "ARC-Challenge", "medmcqa": "MedMCQA",
         "mmlu": "MMLU"}


def dataset_name(m: dict) -> str:
    """Display name of a run's data set (a user file named ``mmlu-...`` is an MMLU subset)."""
    ds = str(m["config"]["dataset"])
    stem = Path(ds).name.split("-test")[0].split(".")[0] if ("/" in ds or "." in ds) else ds
    return NAMES.get(stem, stem)


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
    common = [k for k in runs[0][1]["methods"] if all(k in m["methods"] for _, m in runs)]
    methods = [k for k in common if k in RECIPE]
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
    left = [runs[0][1]["method_labels"].get(k, k) for k in common if k not in RECIPE]
    if left:
        out.append(f"- also in metrics.json, not shown (labelled, outside the section's method list): {', '.join(left)}")
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


def _setting(m: dict) -> str:
    return f"{dataset_name(m)} {m['config']['scoring']}"


def _gap(p: dict) -> str:
    return f"{100 * p['gap']:+.1f} [{100 * p['gap_low']:+.1f}, {100 * p['gap_high']:+.1f}]"


def premise_table(runs: list[tuple[str, dict]]) -> list[str]:
    """Table 0.2: one row per run with the premise check (the base's gap where the models agree)."""
    out = ["| data set | chat | agreement | base gap where they agree (conf − acc), 95 % interval | chat gap there "
           "| premise |", "|---|---|---:|---|---|---|"]
    for n, m in runs:
        p, d = m["premise"], m["diagnostics"]
        b = p["base"]
        verdict = ("holds (interval includes 0)" if b["gap_low"] <= 0 <= b["gap_high"] else
                   "fails (base over-confident)" if b["gap_low"] > 0 else "fails (base under-confident)")
        out.append(f"| {_setting(m)} | {n} | {100 * d['agreement_rate']:.1f} % ({p['n_agree']} of {d['n']}) | "
                   f"{_gap(b)} | {_gap(p['chat'])} | {verdict} |")
    return out


def overview(runs: list[tuple[str, dict]]) -> list[str]:
    """Counts across settings for the section's reading."""
    out, tally = [], {"daca-naive": [0, 0, 0], "agree-naive": [0, 0, 0], "agree-daca": [0, 0, 0]}
    hits, units = {"cloze": 0, "letter": 0}, {"cloze": 0, "letter": 0}
    for n, m in runs:
        ece = {k: _values(m, k, "ece") for k in ("naive", "daca", "daca_agree") if k in m["methods"]}
        cells = []
        for key, a, b in (("daca-naive", "daca", "naive"), ("agree-naive", "daca_agree", "naive"),
                          ("agree-daca", "daca_agree", "daca")):
            if a in ece and b in ece:
                d = ece[a] - ece[b]
                tally[key][("win", "tie", "loss").index(verdict(d))] += 1
                cells.append(f"{a} - {b} {_fmt_paired(d)}")
        tau = [f.get("temperature_disagree") for f in m["fits"].get("daca_agree", [])]
        at = sum(1 for t in tau if t is not None and t >= TEMPERATURE_BOUND * (1 - 1e-6))
        sc = m["config"]["scoring"]
        hits[sc] = hits.get(sc, 0) + at
        units[sc] = units.get(sc, 0) + len(tau)
        finite = [t for t in tau if t is not None and t < TEMPERATURE_BOUND * (1 - 1e-6)]
        span = f"{min(finite):.1f}-{max(finite):.1f}" if finite else "none"
        cells.append(f"daca_agree tau_d at the bound in {at} of {len(tau)} units (finite: {span})")
        out.append(f"- {_setting(m)}, chat = {n}: " + "; ".join(cells))
    out.append("")
    for key, (w, t, lo) in tally.items():
        out.append(f"- {key} over {w + t + lo} runs: {w} wins / {t} ties / {lo} losses")
    out.append("- daca_agree tau_d at the bound: " + ", ".join(f"{hits[k]} of {units[k]} {k} units" for k in units)
               + f"; {sum(hits.values())} of {sum(units.values())} in all")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--overview", action="store_true", help="the premise table and the counts across runs")
    args = ap.parse_args()
    groups: dict[tuple, list[tuple[str, dict]]] = {}
    for folder in args.runs:
        m = json.loads((folder / "metrics.json").read_text())
        c = m["config"]
        groups.setdefault((c["dataset"], c["scoring"], c["limit"]), []).append((c["chat"], m))
    if args.overview:
        every = [r for runs in groups.values() for r in runs]
        print("\n".join(premise_table(every)) + "\n")
        print("\n".join(overview(every)))
        return
    for (ds, scoring, limit), runs in groups.items():
        print(f"### {ds}, {scoring} scoring, --limit {limit} ({runs[0][1]['protocol']}; "
              f"wall {', '.join(str(round(m['timing']['wall_seconds'])) + ' s' for _, m in runs)})\n")
        print("\n".join(stage_table(runs)) + "\n")
        print("\n".join(premise_lines(runs)) + "\n")
        print("\n".join(method_table(runs)) + "\n")


if __name__ == "__main__":
    main()
