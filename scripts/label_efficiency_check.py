"""Independent re-computation of a `refcal run --labels-budget` folder's k = 0 and k = all columns.

    python scripts/label_efficiency_check.py RUN_DIR [RUN_DIR ...]

From the run's own score files (``scores/base.parquet``, ``scores/chat.parquet``) and its random splits
(``refcal.run.protocol.random_split_indices``, the only refcal code reused besides reading the files), every
split's calibration part (k = all: one deterministic fit) is refitted with other solvers and the test ECE is
computed by a separate 10-bin ECE written here:

* labelled TS: the NLL minimised over log(temperature) by ``scipy.optimize.minimize_scalar`` (bounded Brent on
  refcal's temperature bounds [1e-3, 1e4]: ARC-Challenge's chance-level answers push the temperature to them);
* Platt: scikit-learn's ``_sigmoid_calibration`` (Platt's targets) on the answer's log-odds;
* isotonic: scikit-learn's ``IsotonicRegression(out_of_bounds="clip")`` on the answer's confidence;
* k = 0: the chat model's softmax.

Top-label maps are checked on the answer's mapped confidence, clipped to [0.001, 0.999] and floored so that the
answer stays the argmax (``c' >= p2 / (1 - c + p2)``, p2 the runner-up's probability), as refcal's top-label maps
do. Prints the largest absolute difference (ECE points) against ``metrics.json["label_budget"]``'s cells and
exits 1 when one exceeds ``TOL`` (1e-4 points: the two TS solvers stop at different tolerances).
"""

from __future__ import annotations

import argparse
import json
import types
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from refcal.run.protocol import random_split_indices
from refcal.scores import join_scores, load_scores

TOL = 1e-6  # absolute ECE (1e-4 points)


def ece10(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    """Bins [e_b, e_b+1), 1.0 in the last; the edges are ``np.linspace(0, 1, 11)`` as in refcal: isotonic and
    histogram maps put confidences exactly on decimals such as 0.7, and ``linspace``'s 0.7000000000000001
    sends them one bin lower than ``floor(10 * c)`` would (0.4 ECE points on one SciQ run)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for i in range(n_bins):
        inside = (conf >= edges[i]) & ((conf < edges[i + 1]) | (i == n_bins - 1))
        total += abs(np.sum(correct[inside] - conf[inside]))
    return total / len(conf)


def ts_conf(cal_z, cal_y, test_z):
    def nll(log_t):
        return -np.mean(log_softmax(cal_z / np.exp(log_t), axis=1)[np.arange(len(cal_y)), cal_y])
    log_t = minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e4)), method="bounded",  # refcal's bounds
                            options={"xatol": 1e-10}).x
    return softmax(test_z / np.exp(log_t), axis=1).max(axis=1)


def top(z):
    p = softmax(z, axis=1)
    return p.argmax(axis=1), p.max(axis=1)


def keep_answer(z, new):
    """The mapped confidence, floored where the runner-up would overtake the answer (refcal's rule)."""
    p = np.sort(softmax(z, axis=1), axis=1)
    c, p2 = p[:, -1], p[:, -2]
    return np.maximum(new, p2 / (1 - c + p2) * (1 + 1e-9))


def platt_conf(cal_z, cal_y, test_z):
    from sklearn.calibration import _sigmoid_calibration

    a, c = top(cal_z)
    big_a, big_b = _sigmoid_calibration(np.log(c / (1 - c)), (a == cal_y).astype(int))
    _, ct = top(test_z)
    return keep_answer(test_z, np.clip(1 / (1 + np.exp(big_a * np.log(ct / (1 - ct)) + big_b)), 0.001, 0.999))


def isotonic_conf(cal_z, cal_y, test_z):
    from sklearn.isotonic import IsotonicRegression

    a, c = top(cal_z)
    iso = IsotonicRegression(out_of_bounds="clip").fit(c, (a == cal_y).astype(float))
    return keep_answer(test_z, np.clip(iso.predict(top(test_z)[1]), 0.001, 0.999))


def check(run: Path) -> tuple[list[str], float]:
    m = json.loads((run / "metrics.json").read_text())
    cfg = types.SimpleNamespace(**{k: m["config"][k] for k in ("calib_frac", "n_splits", "seed")})
    j = join_scores(load_scores(run / "scores" / "base.parquet"), load_scores(run / "scores" / "chat.parquet"))
    z, y = np.asarray(j.chat, dtype=float), np.asarray(j.labels)
    lb = m["label_budget"]
    cells = {k: r["metrics"]["ece"]["cells"] for k, r in lb["methods"].items()}
    fits = {"ts": ts_conf, "platt": platt_conf, "isotonic": isotonic_conf}
    worst = {k: 0.0 for k in [*fits, "chat (k = 0)"]}
    for u, (ci, ti) in enumerate(random_split_indices(len(y), cfg)):
        a_t, c0 = top(z[ti])
        correct = (a_t == y[ti]).astype(float)
        worst["chat (k = 0)"] = max(worst["chat (k = 0)"], abs(ece10(c0, correct) - cells["ts"][0][0][u]))
        for key, fn in fits.items():
            got = ece10(fn(z[ci], y[ci], z[ti]), correct)
            worst[key] = max(worst[key], abs(got - cells[key][-1][0][u]))
    return [f"{run.name}: largest |difference| over {cfg.n_splits} splits, ECE points: "
            + ", ".join(f"{k} {100 * v:.2g}" for k, v in worst.items())], max(worst.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    worst = 0.0
    for run in ap.parse_args().runs:
        lines, w = check(run)
        print("\n".join(lines))
        worst = max(worst, w)
    if worst > TOL:
        raise SystemExit(f"FAILED: a recomputed ECE differs by {100 * worst:.2g} points (tolerance {100 * TOL:g})")
    print(f"all within {100 * TOL:g} ECE points")


if __name__ == "__main__":
    main()
