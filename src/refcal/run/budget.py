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

**"DACA is worth about N labels"**: the smallest ``k`` of the budget at which labelled temperature scaling's
mean ECE is at most DACA's; its interval is the 2.5 / 97.5 % quantiles (on the budget's grid) of the same
crossing in each draw. ``None`` means labelled TS never reached DACA within the budget.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import metrics
from .._math import log_softmax
from ..calibrate import DACA
from ..calibrate.methods import METHODS
from ..errors import FitError, InputError

log = logging.getLogger(__name__)

__all__ = ["BUDGET_METHODS", "BUDGET_METRICS", "parse_labels_budget", "draw_labelled", "fit_on_budget",
           "label_budget", "worth_labels"]

#: the labelled methods of the curve (registry keys)
BUDGET_METHODS: tuple[str, ...] = ("ts", "platt", "isotonic", "histogram", "daca_k")
#: metrics recorded per k
BUDGET_METRICS: tuple[str, ...] = ("ece", "smooth_ece", "brier", "nll")
DEFAULT_DRAWS = 10
_N_BOOT_DACA = 200


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
    if m.needs_base:  # reads every question's logits, and the drawn labels only
        masked = np.full(len(labels), -1, dtype=np.int64)
        masked[idx] = labels[idx]
        return m.fit(base, chat, masked, scaling=scaling)
    if idx.size == 0:
        return None
    return m.fit(base[idx], chat[idx], labels[idx], scaling=scaling)


def _unit_scores(fitted: Any, test_chat: np.ndarray, labels: np.ndarray, n_bins: int) -> dict[str, float]:
    lp = log_softmax(test_chat) if fitted is None else fitted.predict_log_proba(test_chat)
    p = np.exp(lp)
    return {"ece": metrics.ece(p, labels, n_bins=n_bins), "smooth_ece": metrics.smooth_ece(p, labels),
            "brier": metrics.brier(p, labels), "nll": metrics.nll_from_log_proba(lp, labels)}


def _daca_reference(units: list, n_bins: int, seed: int) -> dict[str, dict[str, float]]:
    """DACA's mean over units of each metric, with a 95 % interval from bootstrap resamples of each unit's
    test questions (the same resample indices for every metric)."""
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
        out[name] = {"mean": est, "low": float(lo), "high": float(hi)}
    return out


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
    fallbacks = {m: 0 for m in methods}
    for ki, k in enumerate(ks):
        draws = 1 if k is None else n_draws
        for _ in range(draws):
            per_unit: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
            for u in units:
                idx = draw_labelled(len(u.calib.labels), k, rng)
                for m in methods:
                    try:
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # a bound hit on 10 labels is the point of the curve
                            fitted = fit_on_budget(m, u.calib.base, u.calib.chat, u.calib.labels, idx, scaling=scaling)
                    except FitError:
                        fitted, fallbacks[m] = None, fallbacks[m] + 1
                    per_unit[m].append(_unit_scores(fitted, u.test.chat, u.test.labels, n_bins))
            for m in methods:
                for s in BUDGET_METRICS:
                    values[m][s][ki].append(float(np.mean([r[s] for r in per_unit[m]])))
    ks_json = [("all" if k is None else int(k)) for k in ks]
    out: dict[str, Any] = {
        "ks": ks_json, "n_draws": n_draws, "n_units": len(units),
        "n_calib": [int(len(u.calib.labels)) for u in units],
        "methods": {m: {"metrics": {s: _curve(values[m][s]) for s in BUDGET_METRICS}, "fallbacks": fallbacks[m]}
                    for m in methods},
        "daca": _daca_reference(units, n_bins, seed),
    }
    if "ts" in methods:
        out["worth_labels"] = worth_labels(ks_json, values["ts"]["ece"], out["daca"]["ece"]["mean"])
    return out


def _curve(per_k: list[list[float]]) -> dict[str, list]:
    return {"mean": [float(np.mean(v)) for v in per_k],
            "low": [float(np.quantile(v, 0.025)) for v in per_k],
            "high": [float(np.quantile(v, 0.975)) for v in per_k],
            "draws": per_k}


def worth_labels(ks: list, ts_draws: list[list[float]], daca: float) -> dict[str, Any]:
    """The smallest ``k`` whose mean labelled-TS ECE is at most ``daca``, and the 2.5 / 97.5 % quantiles
    (on the grid of ``ks``) of the same crossing in each draw (``None``: not reached in the budget)."""
    mean = [float(np.mean(v)) for v in ts_draws]
    n = next((k for k, v in zip(ks, mean, strict=True) if v <= daca), None)
    n_draws = max(len(v) for v in ts_draws)
    # per draw: a k with a single draw ("all") serves every draw
    pos = []
    for d in range(n_draws):
        hit = next((i for i, v in enumerate(ts_draws) if v[d if len(v) > 1 else 0] <= daca), len(ks))
        pos.append(hit)
    lo_i, hi_i = (int(np.quantile(pos, q, method=meth)) for q, meth in ((0.025, "lower"), (0.975, "higher")))
    grid = [*ks, None]
    low, high = grid[lo_i], grid[hi_i]
    if n is None:
        text = ("labelled temperature scaling did not reach DACA's ECE within the budget"
                + (" (every calibration label)" if ks[-1] == "all" else f" ({ks[-1]} labels)"))
    else:
        rng_txt = f"{low}–{high if high is not None else f'>{ks[-1]}'}"
        text = f"DACA is worth about {n} labels (95 % of label draws: {rng_txt})"
    return {"method": "ts", "metric": "ece", "n": n, "low": low, "high": high,
            "per_draw": [grid[i] for i in pos], "sentence": text}
