"""The label-efficiency curve: each labelled method fitted on k labelled calibration questions, for each k.

For every evaluation unit (random split or subject) and every ``k`` of the budget, ``n_draws`` sets of ``k``
questions are drawn from the unit's calibration part (without replacement; ``all`` is the whole part, one
draw). Each labelled method of :data:`BUDGET_METHODS` is fitted on the drawn labels only and evaluated on
the unit's test part, as the run evaluates every method:

* methods that read only labelled questions (``ts``, ``platt``, ``isotonic``, ``histogram``) are fitted on
  the ``k`` drawn questions; ``daca_k`` reads every calibration question's logits (its label-free DACA
  prior) and only the drawn labels (the others are passed as ``-1``);
* ``k = 0``: the label-only methods are the chat model unchanged, ``daca_k`` is DACA;
* a fit that fails (e.g. isotonic regression on one question) evaluates the chat model unchanged and is
  counted in ``fallbacks``.

Per ``k`` each draw's metric is the mean over units; the curve is the mean over draws with the 2.5 / 97.5 %
quantiles over draws. DACA's line is its mean over units (fitted without labels on each calibration part)
with a 95 % interval from 200 bootstrap resamples of every unit's test questions.

**"DACA is worth about N labels"** (:func:`worth_labels`): ``N`` is the smallest ``k`` of the budget from which
on labelled temperature scaling's mean ECE is at most DACA's at every larger ``k`` too (so the crossing lies
between the budget's previous ``k`` and ``N``). Its 95 % interval comes from a *paired bootstrap* (:data:`N_BOOT_WORTH` replicates): each
replicate resamples every unit's test questions (the same resample for DACA and for TS at every ``k``) and the
label draws, and finds the crossing again; the interval is the 2.5 / 97.5 % quantiles of those crossings on the
budget's grid. Both curves are measured on the same few hundred test questions, whose sampling noise in ECE
(1–2 points) is as large as the gaps between neighbouring ``k``: an interval over label draws alone (kept as
``draws_low`` / ``draws_high``: how much the crossing moves with *which* questions a user labels) would treat
DACA's ECE as exact. The outcomes at the ends of the grid are named, never extrapolated: ``n = 0`` (the chat
model unchanged is already as calibrated as DACA: DACA is worth nothing), ``n`` = the smallest positive ``k``
(DACA is worth *at most* that many labels), ``n = None`` (TS did not reach DACA within the budget: DACA is
worth *more than* its largest ``k``).

Per method, ``metrics.ece.cells[k][draw][unit]`` keeps every fit's ECE (ECE only: the curve's other metrics
keep their per-draw means) (the spread a user with one split
and one draw of ``k`` labels faces); ``daca.ece.units`` keeps DACA's per unit.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import metrics
from .._math import log_softmax
from ..calibrate import DACA
from ..calibrate.methods import METHODS
from ..errors import FitError, InputError

log = logging.getLogger(__name__)

__all__ = ["BUDGET_METHODS", "BUDGET_METRICS", "parse_labels_budget", "draw_labelled", "fit_on_budget",
           "label_budget", "worth_labels",
           "resampled_ece", "N_BOOT_WORTH"]

#: the labelled methods of the curve (registry keys)
BUDGET_METHODS: tuple[str, ...] = ("ts", "platt", "isotonic", "histogram", "daca_k")
#: metrics recorded per k
BUDGET_METRICS: tuple[str, ...] = ("ece", "smooth_ece", "brier", "nll")
DEFAULT_DRAWS = 10
_N_BOOT_DACA = 200
#: paired bootstrap replicates of the "worth N labels" interval
N_BOOT_WORTH = 1000


def parse_labels_budget(text: str | Sequence[Any]) -> list[int | None]:
    """``"0,10,25,all"`` -> ``[0, 10, 25, None]`` (``None`` = every calibration question), sorted, unique."""
    items = [v.strip() for v in text.split(",")] if isinstance(text, str) else [str(v).strip() for v in text]
    items = [v for v in items if v]
    if not items:
        raise InputError("--labels-budget is empty; pass label counts such as 0,10,25,50,100,all")
    out: set[int] = set()
    all_ = False
    for v in items:
        if v.lower() in ("all", "none"):
            all_ = True
        elif v.isdigit():
            out.add(int(v))
        else:
            raise InputError(f"--labels-budget: {v!r} is not a label count; pass integers >= 0 and 'all', "
                             "comma-separated (e.g. 0,10,25,50,100,all)")
    return [*sorted(out), *([None] if all_ else [])]


def draw_labelled(n: int, k: int | None, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``min(k, n)`` of ``n`` calibration questions drawn without replacement (all for ``None``)."""
    if k is None or k >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size=k, replace=False))


def fit_on_budget(key: str, base: np.ndarray, chat: np.ndarray, labels: np.ndarray, idx: np.ndarray, *,
                  scaling: str = "temperature") -> Any:
    """Method ``key`` fitted on the labels of the questions ``idx`` only (see the module docstring);
    ``None`` for ``k = 0`` of a label-only method (the chat model unchanged)."""
    m = METHODS[key]
    if m.needs_base("multiple-choice"):  # reads every question's logits, and the drawn labels only
        masked = np.full(len(labels), -1, dtype=np.int64)
        masked[idx] = labels[idx]
        return m.fit(chat, base, masked, scaling=scaling)
    if idx.size == 0:
        return None
    return m.fit(chat[idx], base[idx], labels[idx], scaling=scaling)


def _unit_scores(fitted: Any, test_chat: np.ndarray, labels: np.ndarray,
                 n_bins: int) -> tuple[dict[str, float], np.ndarray]:
    lp = log_softmax(test_chat) if fitted is None else fitted.predict_log_proba(test_chat)
    p = np.exp(lp)
    return ({"ece": metrics.ece(p, labels, n_bins=n_bins), "smooth_ece": metrics.smooth_ece(p, labels),
             "brier": metrics.brier(p, labels), "nll": metrics.nll_from_log_proba(lp, labels)}, p)


def _daca_reference(units: list, n_bins: int, seed: int) -> tuple[dict[str, dict[str, Any]], list[np.ndarray]]:
    """DACA's mean over units of each metric, with a 95 % interval from bootstrap resamples of each unit's
    test questions (the same resample indices for every metric), and its test probabilities per unit."""
    probs = []
    for u in units:
        try:
            lp = DACA().fit(u.calib.base, u.calib.chat).predict_log_proba(u.test.chat)
        except FitError:
            lp = log_softmax(u.test.chat)
        probs.append((np.exp(lp), u.test.labels))
    fns = {"ece": lambda p, y: metrics.ece(p, y, n_bins=n_bins), "smooth_ece": metrics.smooth_ece,
           "brier": metrics.brier}
    rng = np.random.default_rng(seed)
    boots = [[rng.integers(0, len(y), len(y)) for p, y in probs] for _ in range(_N_BOOT_DACA)]
    out = {}
    for name, fn in fns.items():
        est = float(np.mean([fn(p, y) for p, y in probs]))
        vals = [np.mean([fn(p[i], y[i]) for (p, y), i in zip(probs, b, strict=True)]) for b in boots]
        lo, hi = np.quantile(vals, [0.025, 0.975])
        out[name] = {"mean": est, "low": float(lo), "high": float(hi),
                     "units": [float(fn(p, y)) for p, y in probs]}
    return out, [p for p, _ in probs]


def label_budget(units: list, ks: Sequence[int | None], *, n_draws: int = DEFAULT_DRAWS, seed: int = 0,
                 n_bins: int = 10, scaling: str = "temperature",
                 methods: Sequence[str] = BUDGET_METHODS) -> dict[str, Any]:
    """The label-efficiency curve of ``methods`` over the units of a run (``refcal.run.protocol.Unit``, all
    labelled), as the JSON-ready record ``metrics.json["label_budget"]`` holds (see the module docstring)."""
    if n_draws < 1:
        raise InputError(f"--labels-draws must be at least 1, got {n_draws}")
    if any((u.calib.labels < 0).any() or (u.test.labels < 0).any() for u in units):
        raise InputError("--labels-budget needs labels on every question (the curve is fitted on labels)")
    rng = np.random.default_rng([seed, 7919])  # its own stream: the run's other draws stay as they were
    # values[method][metric][k index][draw] = mean over units
    values = {m: {s: [[] for _ in ks] for s in BUDGET_METRICS} for m in methods}
    cells = {m: {s: [[] for _ in ks] for s in BUDGET_METRICS} for m in methods}  # [k][draw][unit]
    ts_probs: list[list[list[np.ndarray]]] = [[] for _ in ks]  # labelled TS's test probabilities [k][draw][unit]
    fallbacks = {m: 0 for m in methods}
    for ki, k in enumerate(ks):
        draws = 1 if k is None else n_draws
        for _ in range(draws):
            per_unit: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
            draw_probs = []
            for u in units:
                idx = draw_labelled(len(u.calib.labels), k, rng)
                for m in methods:
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # a bound hit on 10 labels is the point of the curve
                            fitted = fit_on_budget(m, u.calib.base, u.calib.chat, u.calib.labels, idx, scaling=scaling)
                    except FitError:
                        fitted, fallbacks[m] = None, fallbacks[m] + 1
                    scores, p = _unit_scores(fitted, u.test.chat, u.test.labels, n_bins)
                    per_unit[m].append(scores)
                    if m == "ts":
                        draw_probs.append(p)
            ts_probs[ki].append(draw_probs)
            for m in methods:
                for s in BUDGET_METRICS:
                    values[m][s][ki].append(float(np.mean([r[s] for r in per_unit[m]])))
                    cells[m][s][ki].append([float(r[s]) for r in per_unit[m]])
    ks_json = [("all" if k is None else int(k)) for k in ks]
    out: dict[str, Any] = {
        "ks": ks_json, "n_draws": n_draws, "n_units": len(units),
        "n_calib": [int(len(u.calib.labels)) for u in units],
        "methods": {m: {"metrics": {s: {**_curve(values[m][s]), **({"cells": cells[m][s]} if s == "ece" else {})}
                                    for s in BUDGET_METRICS},
                        "fallbacks": fallbacks[m]} for m in methods},
    }
    out["daca"], daca_probs = _daca_reference(units, n_bins, seed)
    if "ts" in methods:
        boot = _paired_bootstrap(units, ts_probs, daca_probs, n_bins, seed)
        out["worth_labels"] = worth_labels(ks_json, values["ts"]["ece"], out["daca"]["ece"]["mean"], boot=boot,
                                           n_calib=[int(len(u.calib.labels)) for u in units])
    return out


def _curve(per_k: list[list[float]]) -> dict[str, list]:
    return {"mean": [float(np.mean(v)) for v in per_k],
            "low": [float(np.quantile(v, 0.025)) for v in per_k],
            "high": [float(np.quantile(v, 0.975)) for v in per_k],
            "draws": per_k}


def _boot_weights(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) counts of each of ``n`` questions in ``n_boot`` resamples with replacement."""
    idx = rng.integers(0, n, (n_boot, n)) + (np.arange(n_boot) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)


def resampled_ece(probs: np.ndarray, labels: np.ndarray, weights: np.ndarray, *, n_bins: int = 10) -> np.ndarray:
    """ECE (equal-width bins, as :func:`refcal.metrics.ece`) of each resample of the questions whose counts are
    a row of ``weights`` (R, n): ``sum_b |sum_i w_i (correct_i - conf_i) [i in b]| / sum_i w_i``."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf, corr = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    b = np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)
    gap = np.zeros((len(labels), n_bins))
    gap[np.arange(len(labels)), b] = corr - conf
    weights = np.atleast_2d(np.asarray(weights, dtype=np.float64))
    return np.abs(weights @ gap).sum(axis=1) / weights.sum(axis=1)


def _paired_bootstrap(units: list, ts_probs: list, daca_probs: list[np.ndarray], n_bins: int, seed: int,
                      n_boot: int = N_BOOT_WORTH) -> tuple[np.ndarray, np.ndarray]:
    """Paired bootstrap of labelled TS's mean ECE per k, shape (n_boot, K), and DACA's, shape (n_boot,): each
    replicate resamples every unit's test questions once (shared by DACA and every TS fit) and the draws of
    each k (with replacement)."""
    rng = np.random.default_rng([seed, 104729])
    weights = [_boot_weights(len(u.test.labels), n_boot, rng) for u in units]
    daca = np.mean([resampled_ece(p, u.test.labels, w, n_bins=n_bins) for p, u, w in zip(daca_probs, units, weights,
                                                                                 strict=True)], axis=0)
    ts = np.empty((n_boot, len(ts_probs)))
    for ki, draws in enumerate(ts_probs):
        # per_draw[d, b]: draw d's mean over units in replicate b
        per_draw = np.array([np.mean([resampled_ece(p, u.test.labels, w, n_bins=n_bins)
                                      for p, u, w in zip(draw, units, weights, strict=True)], axis=0)
                             for draw in draws])
        pick = rng.integers(0, len(draws), (n_boot, len(draws)))
        ts[:, ki] = np.take_along_axis(per_draw.T, pick, axis=1).mean(axis=1)
    return ts, daca


def _crossing(curve: Sequence[float], daca: float) -> int:
    """Index of the first k from which on every ECE of the curve is at most ``daca`` (a lucky dip at a small k
    followed by a worse k does not count); ``len(curve)`` if the last is above."""
    i = len(curve)
    while i > 0 and curve[i - 1] <= daca:
        i -= 1
    return i


def worth_labels(ks: list, ts_draws: list[list[float]], daca: float, *,
                 boot: tuple[np.ndarray, np.ndarray] | None = None,
                 n_calib: Sequence[int] | None = None) -> dict[str, Any]:
    """The smallest ``k`` from which on the mean labelled-TS ECE is at most ``daca`` (``n``; ``None``: not reached
    in the budget) and its 95 % interval on the grid of ``ks``: from the paired bootstrap ``boot`` = (TS (B, K), DACA
    (B,)) when given, else from the crossing of each label draw (``draws_low`` / ``draws_high`` always)."""
    mean = [float(np.mean(v)) for v in ts_draws]
    grid = [*ks, None]
    i_n = _crossing(mean, daca)
    n = grid[i_n]
    n_draws = max(len(v) for v in ts_draws)
    # per draw: a k with a single draw ("all") serves every draw
    pos = [_crossing([v[d if len(v) > 1 else 0] for v in ts_draws], daca) for d in range(n_draws)]
    q = ((0.025, "lower"), (0.975, "higher"))
    d_lo, d_hi = (grid[int(np.quantile(pos, a, method=m))] for a, m in q)
    out: dict[str, Any] = {"method": "ts", "metric": "ece", "n": n, "draws_low": d_lo, "draws_high": d_hi,
                           "per_draw": [grid[i] for i in pos]}
    if boot is not None:
        ts_b, daca_b = boot
        bpos = [_crossing(row, d) for row, d in zip(ts_b, daca_b, strict=True)]
        low, high = (grid[int(np.quantile(bpos, a, method=m))] for a, m in q)
        out.update(interval="paired bootstrap", n_boot=len(daca_b),
                   p_ts_at_most_daca=[float(np.mean(ts_b[:, i] <= daca_b)) for i in range(len(ks))])
    else:
        low, high = d_lo, d_hi
        out["interval"] = "label draws"
    first = next((i for i, k in enumerate(ks) if k != 0), None)
    status = ("not_reached" if n is None else "zero" if n == 0 else "at_most" if i_n == first else "reached")
    out.update(low=low, high=high, status=status, between=[ks[i_n - 1] if 0 < i_n < len(ks) else None, n])
    out["sentence"] = _worth_sentence(out, ks, mean, daca, n_calib)
    return out


def _worth_sentence(w: Mapping[str, Any], ks: list, mean: list[float], daca: float,
                    n_calib: Sequence[int] | None) -> str:
    n_all = f" ({round(float(np.mean(n_calib)))})" if n_calib else ""

    def k_txt(k: Any) -> str:
        return f">{k_txt(ks[-1])}" if k is None else f"all{n_all}" if k == "all" else str(k)

    iv = f"95 % {'paired-bootstrap' if w['interval'] == 'paired bootstrap' else 'label-draw'} interval " \
         f"{k_txt(w['low'])}–{k_txt(w['high'])}"
    if w["status"] == "zero":
        return (f"DACA is worth 0 labels: the chat model unchanged is already as calibrated (ECE {100 * mean[0]:.2f} %"
                f" vs DACA's {100 * daca:.2f} %; {iv})")
    if w["status"] == "at_most":
        return f"DACA is worth at most {k_txt(w['n'])} labels: labelled TS already matches it with the fewest " \
               f"labels tried ({iv})"
    if w["status"] == "not_reached":
        return (f"DACA is worth more than {k_txt(ks[-1])} labels: labelled temperature scaling did not reach "
                f"DACA's ECE within the budget ({iv})")
    return f"DACA is worth about {k_txt(w['n'])} labels (TS crosses it between {k_txt(w['between'][0])} and " \
           f"{k_txt(w['n'])} labels; {iv})"
