"""The label-efficiency curve on refcal's synthetic worlds (docs/few-labels.md).

For each world: 3,000 four-option questions, 5 random splits of 900 calibration / 2,100 test questions,
label budgets 0, 10, 25, 50, 100, 250 and all, 10 label draws (refcal.run.budget.label_budget). Writes
``<out>/<world>.json`` (the metrics.json ``label_budget`` record) and ``<out>/<world>.png`` (the report's
figure), and prints the ECE table.

Run: ``PYTHONPATH=src python scripts/few_labels_synthetic.py [--out docs/results/few-labels-synthetic]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from refcal.report import plots
from refcal.run.budget import label_budget
from refcal.run.protocol import Part, Unit
from refcal.synthetic import make_world

WORLDS = ("calibrated-base", "overconfident-base")


def units(world: str, n: int = 3000, n_splits: int = 5, seed: int = 0) -> list[Unit]:
    d = make_world(world, n, 4, chat_temperature=3.0, seed=seed)
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_splits):
        perm = rng.permutation(n)
        c, t = perm[: int(0.3 * n)], perm[int(0.3 * n):]
        part = lambda i: Part(d.base[i], d.chat[i], d.labels[i], [str(v) for v in i])  # noqa: E731
        out.append(Unit(1, f"split{s}", part(c), part(t), s == 0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results/few-labels-synthetic"))
    ap.add_argument("--draws", type=int, default=10)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    warnings.simplefilter("ignore")  # bound hits of TS on a handful of labels are part of the curve
    for world in WORLDS:
        t0 = time.perf_counter()
        lb = label_budget(units(world), [0, 10, 25, 50, 100, 250, None], n_draws=args.draws, seed=0)
        (args.out / f"{world}.json").write_text(json.dumps(lb, indent=1) + "\n")
        ax = plots.plot_label_budget(plots.label_curves(lb), title=f"{world} world: ECE against labels")
        plots.save_figure(ax.figure, args.out / world, formats=("png",))
        d = lb["daca"]["ece"]
        print(f"{world} ({time.perf_counter() - t0:.0f} s): {lb['worth_labels']['sentence']}; "
              f"DACA ECE {100 * d['mean']:.2f} [{100 * d['low']:.2f}, {100 * d['high']:.2f}]")
        print("k:        " + " ".join(f"{k!s:>6}" for k in lb["ks"]))
        for m, r in lb["methods"].items():
            print(f"{m:10s}" + " ".join(f"{100 * v:6.2f}" for v in r["metrics"]["ece"]["mean"]))


if __name__ == "__main__":
    main()
