"""``refcal monitor``: label-free drift of a served calibrator, per time window of the monitoring log.

Per window (``window=N`` consecutive records, or a duration such as ``"1h"``):

* **agreement rate** of the chat model's and the reference model's answers (records with a reference
  sample), against the calibration set's (``baseline`` chat + base scores, else the rate the calibrator
  file records);
* **DACA temperature refitted** on the window's reference samples (:class:`refcal.DACA`), against the
  deployed one;
* **PSI** of the served confidence histogram (``bins`` equal-width bins on [0, 1]) against the calibration
  set's calibrated confidences (``baseline``), else against the first window:
  ``PSI = sum_b (w_b - c_b) ln(w_b / c_b)`` with bin fractions floored at 1e-4; 0.1 / 0.25 are the usual
  "moderate" / "major" shift thresholds;
* **estimated accuracy**: the mean calibrated confidence (the accuracy a calibrated model expects).

Intervals are ``estimate +- z * bootstrap standard error``: for the temperature from ``n_boot`` resamples
of the window's reference samples (on the log scale), for the means (agreement, accuracy) in closed form
(``std / sqrt(n)``, the bootstrap's limit), with ``z`` for level ``1 - alpha / m``
over the ``m`` windows (Bonferroni), so that the chance that *any* window flags while nothing changed is
at most about ``alpha``. A window **flags** when the deployed temperature lies outside its temperature
interval; the CLI then exits with code 3. With the calibration set's two score files (``baseline``,
``baseline_base``) the deployed temperature's own bootstrap error is added to the window's
(``se = sqrt(se_window^2 + se_deployed^2)``), so a small calibration set does not raise false alarms;
without them the deployed temperature is taken as exact.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import norm

from .._math import log_softmax
from ..errors import FitError, InputError
from .log import LogData, read_log

PSI_MODERATE, PSI_MAJOR = 0.1, 0.25
PSI_EPS = 1e-4
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_window(window: str | int) -> tuple[str, float]:
    """``("count", N)`` for ``1000``, ``("time", seconds)`` for ``"90s"``, ``"30m"``, ``"1h"``, ``"1d"``."""
    if isinstance(window, int) and not isinstance(window, bool):
        text = str(window)
    else:
        text = str(window).strip()
    if text.isdigit():
        n = int(text)
        if n < 10:
            raise InputError(f"--window {text}: a window needs at least 10 records")
        return "count", float(n)
    m = _DURATION.match(text)
    if not m or float(m.group(1)) <= 0:
        raise InputError(f"--window {text!r}: give a record count (1000) or a duration (90s, 30m, 1h, 1d)")
    return "time", float(m.group(1)) * _UNIT[m.group(2)]


def psi(window: np.ndarray, reference: np.ndarray, *, bins: int = 10) -> float:
    """Population stability index of ``window`` against ``reference`` (values in [0, 1])."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    w = np.histogram(np.clip(window, 0, 1), edges)[0] / max(len(window), 1)
    r = np.histogram(np.clip(reference, 0, 1), edges)[0] / max(len(reference), 1)
    w, r = np.maximum(w, PSI_EPS), np.maximum(r, PSI_EPS)
    return float(np.sum((w - r) * np.log(w / r)))


def bootstrap_temperatures(base: np.ndarray, chat: np.ndarray, counts: np.ndarray, *, start: float = 1.0,
                           bounds: tuple[float, float] = (1e-3, 1e4), max_iter: int = 100) -> np.ndarray:
    """DACA temperatures of many resamples at once: ``counts`` (B, n) are each resample's row counts.

    Minimises, for every resample b, ``sum_i counts[b, i] m_i CE(softmax(base_i), softmax(chat_i / T))``
    (``m`` = agreement mask) by Newton's method on ``beta = 1 / T`` (convex: SPEC.md §2), all resamples
    vectorised, from ``1 / start``. Equals ``DACA().fit(base, chat, sample_weight=counts[b])`` for each b.

    Returns
    -------
    ndarray (B,)
        Temperatures; NaN where a resample has no agreeing row.
    """
    f, g = np.asarray(base, dtype=np.float64), np.asarray(chat, dtype=np.float64)
    agree = np.argmax(f, axis=1) == np.argmax(g, axis=1)
    f, g, counts = f[agree], g[agree], np.asarray(counts, dtype=np.float64)[:, agree]
    out = np.full(counts.shape[0], np.nan)
    if len(g) == 0:
        return out
    valid = np.isfinite(g)
    g0 = np.where(valid, g - np.max(np.where(valid, g, -np.inf), axis=1, keepdims=True), 0.0)
    p = np.exp(log_softmax(f))
    e_p = np.sum(np.where(valid, p * g0, 0.0), axis=1)  # (n,)
    lo, hi = 1.0 / bounds[1], 1.0 / bounds[0]
    g0 = np.where(valid, g0, -np.inf)  # g0 <= 0 with a 0 in every row: exp(beta g0) never overflows
    g0f, g0sq = np.where(valid, g0, 0.0), np.where(valid, g0, 0.0) ** 2
    chunk = max(1, 4_000_000 // max(g.size, 1))
    for s in range(0, counts.shape[0], chunk):
        w = counts[s:s + chunk]
        has = w.sum(axis=1) > 0
        beta = np.full(len(w), 1.0 / start)
        for _ in range(max_iter):
            q = np.exp(beta[:, None, None] * g0[None])  # (b, n, k), unnormalised
            norm = q.sum(axis=2)
            e_q = (q * g0f).sum(axis=2) / norm
            var_q = (q * g0sq).sum(axis=2) / norm - e_q ** 2
            grad = np.einsum("bn,bn->b", w, e_q - e_p[None])
            hess = np.einsum("bn,bn->b", w, np.maximum(var_q, 0.0))
            step = np.where(hess > 0, grad / np.where(hess > 0, hess, 1.0), 0.0)
            new = beta - step
            new = np.where(new <= 0, beta / 4.0, new)  # Newton left the domain: move towards 0 geometrically
            new = np.clip(new, lo, hi)
            done = np.abs(new - beta) <= 1e-12 * beta
            beta = new
            if np.all(done | ~has):
                break
        out[s:s + chunk] = np.where(has, 1.0 / beta, np.nan)
    return out


@dataclass
class MonitorResult:
    """What :func:`monitor` found: one dict per window and a summary (both plain JSON)."""

    windows: list[dict[str, Any]]
    summary: dict[str, Any]
    series: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def flagged(self) -> bool:
        return bool(self.summary["n_flagged"])

    @property
    def exit_code(self) -> int:
        return 3 if self.flagged else 0

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary, "windows": self.windows}


def _confidence(logp: np.ndarray, task: str) -> np.ndarray:
    """Served confidence: max calibrated probability (multiple choice), calibrated P(True) (free form)."""
    p = np.exp(logp)
    return p[:, 1] if task == "free_form" else p.max(axis=1)


def _baseline(cal: Any, task: str, chat_path: str | None, base_path: str | None) -> dict[str, Any]:
    """Calibration-set statistics: agreement rate, calibrated confidences."""
    out: dict[str, Any] = {"agreement": None, "confidence": None, "source": None, "base": None, "chat": None}
    rec = cal.cal.to_dict().get("agreement") if hasattr(cal.cal, "to_dict") else None
    if isinstance(rec, dict) and isinstance(rec.get("agreement_rate"), int | float):
        out["agreement"], out["source"] = float(rec["agreement_rate"]), "calibrator file"
    if chat_path is None:
        return out
    from ..scores import join_scores, load_scores

    chat = load_scores(chat_path)
    base = None
    g = chat.logits
    if base_path is not None:
        joined = join_scores(load_scores(base_path), chat)
        base, g = joined.base, joined.chat
        out["agreement"], out["source"] = float(np.mean(np.argmax(base, 1) == np.argmax(g, 1))), "baseline scores"
        out["base"], out["chat"] = base, g
    if cal.needs_base and base is None:
        raise InputError(f"{cal.path} ({cal.method}) needs the base model's scores of the baseline too; pass "
                         "--baseline-base")
    from .calibrated import _predict_log_proba

    out["confidence"] = _confidence(_predict_log_proba(cal.cal, g, base), task)
    return out


def _windows(data: LogData, window: tuple[str, float]) -> list[np.ndarray]:
    kind, size = window
    n = len(data)
    if kind == "count":
        step = int(size)
        idx = [np.arange(s, min(s + step, n)) for s in range(0, n, step)]
        if len(idx) > 1 and len(idx[-1]) < step // 2:  # a short tail joins the window before it
            idx[-2] = np.concatenate([idx[-2], idx[-1]])
            idx.pop()
        return idx
    bucket = np.floor((data.t - data.t[0]) / size).astype(np.int64)
    cuts = np.flatnonzero(np.diff(bucket)) + 1
    return [a for a in np.split(np.arange(n), cuts) if len(a)]


def monitor(log: str | os.PathLike | LogData, calibrator: str | os.PathLike | Any, *, window: str | int = 1000,
            baseline: str | None = None, baseline_base: str | None = None, n_boot: int = 200, alpha: float = 0.05,
            bins: int = 10, min_reference: int = 30, seed: int = 0) -> MonitorResult:
    """Label-free drift statistics per window of a monitoring log (see the module docstring).

    Parameters
    ----------
    log : folder written by ``refcal serve --log`` (or :class:`LogData`)
    calibrator : the deployed calibrator's JSON (or a :class:`~refcal.serve.calibrated.ServedCalibrator`)
    baseline, baseline_base : chat and base score files of the calibration set (optional)
    min_reference : fewest reference samples a window needs for agreement and temperature (else NaN).
    """
    from .calibrated import TASK_KINDS, ServedCalibrator

    if not 0 < alpha < 1:
        raise InputError(f"--alpha must be in (0, 1), got {alpha}")
    if n_boot < 20:
        raise InputError(f"--n-boot must be at least 20, got {n_boot}")
    cal = calibrator if isinstance(calibrator, ServedCalibrator) else ServedCalibrator(calibrator, allow_other_k=True)
    task = next(t for t, name in TASK_KINDS.items() if name == cal.task)
    data = log if isinstance(log, LogData) else read_log(log)
    keep = data.task == task
    n_other = int((~keep).sum())
    if not keep.any():
        raise InputError(f"the log has no {task} records, the task of {cal.path}; pass the calibrator the proxy served")
    if n_other:
        data = data.select(keep)
    base_stats = _baseline(cal, task, baseline, baseline_base)
    groups = _windows(data, parse_window(window))
    z = float(norm.ppf(1 - alpha / (2 * len(groups))))
    rng = np.random.default_rng(seed)
    ref_conf = base_stats["confidence"] if base_stats["confidence"] is not None else data.confidence[groups[0]]
    se_cal = 0.0  # the deployed temperature's own bootstrap error, when the calibration set is given
    if base_stats["base"] is not None and cal.temperature is not None:
        f, g = base_stats["base"], base_stats["chat"]
        counts = rng.multinomial(len(f), np.full(len(f), 1.0 / len(f)), size=n_boot)
        se_cal = float(np.nanstd(np.log(bootstrap_temperatures(f, g, counts, start=cal.temperature)), ddof=1))
    has_base = data.has_base
    rows = [_one_window(data, idx, has_base, cal, ref_conf, z, n_boot, bins, min_reference, rng, base_stats["agreement"],
                        se_cal) for idx in groups]
    flagged = [i for i, r in enumerate(rows) if r["flag_temperature"]]
    summary = {
        "n_records": len(data), "n_windows": len(rows), "n_flagged": len(flagged), "flagged_windows": flagged,
        "n_reference": len(data.ref_index), "n_other_task": n_other, "n_torn_lines": data.n_torn,
        "task": task, "calibrator": {**cal.describe(), "path": cal.path}, "deployed_temperature": cal.temperature,
        "baseline_agreement": base_stats["agreement"], "baseline_agreement_source": base_stats["source"],
        "baseline_confidence": None if base_stats["confidence"] is None else float(np.mean(base_stats["confidence"])),
        "psi_reference": "baseline scores" if base_stats["confidence"] is not None else "first window",
        "window": str(window), "alpha": alpha, "interval_level": 1 - alpha / len(rows), "n_boot": n_boot,
        "max_psi": max((r["psi"] for r in rows), default=None), "deployed_log_temperature_se": se_cal,
    }
    series = {key: np.array([r[key] if r[key] is not None else np.nan for r in rows], dtype=float)
              for key in ("t_start", "agreement", "agreement_lo", "agreement_hi", "temperature", "temperature_lo",
                          "temperature_hi", "psi", "accuracy", "accuracy_lo", "accuracy_hi")}
    return MonitorResult(rows, summary, series)


def _mean_interval(values: np.ndarray, z: float) -> tuple[float, float, float]:
    """A mean and ``mean +- z se``; ``se = std(values) / sqrt(n)`` is the bootstrap standard error of a
    mean in closed form (the limit of infinitely many resamples), so no resampling is needed."""
    est = float(values.mean())
    se = float(values.std()) / math.sqrt(len(values))
    return est, est - z * se, est + z * se


def _one_window(data: LogData, idx: np.ndarray, has_base: np.ndarray, cal: Any, ref_conf: np.ndarray, z: float, n_boot: int, bins: int,
                min_reference: int, rng: np.random.Generator, base_agree: float | None, se_cal: float) -> dict[str, Any]:
    from .. import DACA

    conf = data.confidence[idx]
    acc, acc_lo, acc_hi = _mean_interval(conf, z)
    row: dict[str, Any] = {
        "t_start": float(data.t[idx[0]]), "t_end": float(data.t[idx[-1]]), "n": len(idx), "accuracy": acc,
        "accuracy_lo": max(0.0, acc_lo), "accuracy_hi": min(1.0, acc_hi), "psi": psi(conf, ref_conf, bins=bins),
        "agreement": None, "agreement_lo": None, "agreement_hi": None, "temperature": None, "temperature_lo": None,
        "temperature_hi": None, "flag_temperature": False, "flag_agreement": False,
    }
    ref = idx[has_base[idx]]
    row["n_reference"] = len(ref)
    if len(ref) < min_reference:
        return row
    f, g = data.base_of(ref), data.chat[ref]
    agree = (np.argmax(f, 1) == np.argmax(g, 1)).astype(float)
    a, a_lo, a_hi = _mean_interval(agree, z)
    row.update(agreement=a, agreement_lo=max(0.0, a_lo), agreement_hi=min(1.0, a_hi))
    row["flag_agreement"] = base_agree is not None and not a_lo <= base_agree <= a_hi
    if cal.temperature is None or not agree.any():
        return row
    try:
        with warnings.catch_warnings():  # a temperature at its bound is reported by the interval, not a warning
            warnings.simplefilter("ignore")
            t_hat = float(DACA().fit(f, g).temperature_)
    except FitError:
        return row
    counts = rng.multinomial(len(ref), np.full(len(ref), 1.0 / len(ref)), size=n_boot)
    boots = np.log(bootstrap_temperatures(f, g, counts, start=t_hat))
    se = math.hypot(float(np.nanstd(boots, ddof=1)), se_cal)
    lo, hi = math.exp(math.log(t_hat) - z * se), math.exp(math.log(t_hat) + z * se)
    row.update(temperature=t_hat, temperature_lo=lo, temperature_hi=hi,
               flag_temperature=not lo <= cal.temperature <= hi)
    return row
