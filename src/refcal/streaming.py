"""Fit temperatures and compute metrics on score files too large to hold in memory.

:func:`fit_temperature_streaming` and :func:`evaluate_streaming` read Parquet (by record batches) and JSON
Lines (by lines) in blocks of ``block_rows`` questions and keep only what the solvers and metrics need:

* temperature fits (DACA, naive alignment, labelled temperature scaling) keep, for each question that
  counts, its centred chat logits (``k`` float64) — the Newton iteration on ``beta = 1/tau`` sums the
  objective's derivatives over these blocks (:func:`refcal.calibrate._solvers.temperature_moments`) and
  the per-question target terms are summed while reading;
* metrics are :class:`refcal.metrics.sums.MetricSums` (every key of :func:`refcal.metrics.evaluate`):
  each question's confidence (float64) and correctness (bool) for the rank-based ones (AECE, debiased and
  smooth ECE, AUROC, AURC) and sums for the others (ECE/MCE and classwise bins, Brier and its
  decomposition, NLL, accuracy).

The results equal the in-memory path (:func:`refcal.load_scores` + :class:`refcal.calibrate.DACA` /
:func:`refcal.metrics.evaluate`) up to the order of floating-point additions (relative ~1e-15).

Base and chat files are joined block by block, which needs both to list the questions in the same
order (as ``refcal score`` writes them for one data set). When they do not, :class:`OrderMismatch` is
raised and callers fall back to the in-memory join. Only native refcal score files stream; other formats
(lm-evaluation-harness logs) raise :class:`NotStreamable`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._math import log_softmax, softmax
from .calibrate import DACA, NaiveAlignment, TemperatureScaling
from .calibrate._solvers import (
    centred_logits,
    check_not_all_tied,
    newton_temperature,
    target_sums,
    temperature_moments,
)
from .calibrate.alignment import agreement_mask
from .errors import FitError, InputError, ScoreFileError
from .metrics.sums import MetricSums
from .scores import file_meta
from .scores.blocks import (
    BLOCK_ROWS,
    IdCheck,
    NotStreamable,
    OrderMismatch,
    is_streamable,
    iter_blocks,
    joined_blocks,
    labelled_blocks,
)

log = logging.getLogger(__name__)


__all__ = ["BLOCK_ROWS", "NotStreamable", "OrderMismatch", "StreamedFit", "StreamedMetrics", "evaluate_streaming",
           "fit_temperature_streaming", "iter_blocks", "is_streamable"]


# ---------------------------------------------------------------------------------------------- fitting
@dataclass
class StreamedFit:
    """A fitted calibrator plus the counts the CLI prints."""

    calibrator: Any
    n: int
    n_agree: int
    n_labelled: int
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)


def fit_temperature_streaming(
    chat_path: str | Path,
    base_path: str | Path | None = None,
    *,
    method: str = "daca",
    block_rows: int = BLOCK_ROWS,
    **hyper: Any,
) -> StreamedFit:
    """Fit a temperature-scaling calibrator from score files, block by block.

    Parameters
    ----------
    chat_path : path
        Chat-model score file (Parquet or JSON Lines).
    base_path : path, optional
        Base-model score file, same questions in the same order; required for ``daca`` and ``naive``.
    method : {"daca", "naive", "ts"}
        ``ts`` is labelled temperature scaling on the chat file's labels (every label must be known).
    **hyper
        ``max_iter``, ``tol``, ``temperature_bounds``, ``on_bound`` of the calibrator.

    Returns
    -------
    StreamedFit
        ``calibrator`` equals ``DACA().fit(...)`` (etc.) on the loaded files up to rounding.

    Raises
    ------
    OrderMismatch
        The two files list their questions in different orders (use the in-memory path).
    NotStreamable
        A file is not a native refcal score file.
    """
    if method not in ("daca", "naive", "ts"):
        raise InputError(f"method must be 'daca', 'naive' or 'ts', got {method!r}")
    if method != "ts" and base_path is None:
        raise InputError(f"method {method!r} needs a base-model score file")
    if method == "ts":
        cal = TemperatureScaling(**hyper)
    else:
        cal = (DACA if method == "daca" else NaiveAlignment)(scaling="temperature", **hyper)
    cal._check_params()
    chat_path = Path(chat_path)

    gcts: list[np.ndarray] = []  # centred chat logits (k_b, m_b) of the questions that count
    w_ep = const = 0.0
    any_nonzero = False
    n = n_agree = n_labelled = 0
    k_max = 0
    if method == "ts":
        blocks: Iterator[Any] = labelled_blocks(chat_path, block_rows)
    else:
        blocks = joined_blocks(Path(base_path), chat_path, block_rows)
    for blk in blocks:
        if method == "ts":
            g = blk.logits
            y = blk.labels
            logp = np.full(g.shape, -np.inf)
            logp[np.arange(len(y)), y] = 0.0
            keep = np.ones(len(y), bool)
        else:
            f, g = blk.base, blk.chat
            agree = agreement_mask(f, g)
            n_agree += int(agree.sum())
            keep = agree if method == "daca" else np.ones(len(agree), bool)
            logp = log_softmax(f[keep]) if keep.any() else None
        n += g.shape[0]
        k_max = max(k_max, g.shape[1])  # as in memory: k of the joined arrays, not of the kept rows
        n_labelled += int((blk.labels >= 0).sum())
        if not keep.any():
            continue
        g_keep = g[keep]
        if method == "ts":
            logp = logp[keep]
        gct, gst = centred_logits(g_keep)
        any_nonzero = any_nonzero or bool(np.any(gst))
        s_ep, s_const = target_sums(np.ascontiguousarray(logp.T), gst, 1.0)
        w_ep += s_ep
        const += s_const
        gcts.append(gct)
        del g_keep, gst, logp
    if n == 0:
        raise ScoreFileError(f"{chat_path}: no questions found; a score file needs at least one row")
    if method == "daca" and n_agree == 0:
        raise FitError(
            "no question where base and chat pick the same answer; DACA needs agreement examples: add "
            "questions, or check that both score files list the options in the same order"
        )
    check_not_all_tied(any_nonzero)
    inv_n = 1.0 / n
    w_ep *= inv_n
    const *= inv_n

    def evaluate(beta: float) -> tuple[float, float, float]:
        s_eq = s_var = s_log = 0.0
        for gct in gcts:
            gst = np.where(gct == -np.inf, 0.0, gct)
            a, b, c = temperature_moments(beta, gct, gst, gst * gst, 1.0)
            s_eq, s_var, s_log = s_eq + a, s_var + b, s_log + c
        return s_eq * inv_n - w_ep, s_var * inv_n, const + s_log * inv_n - beta * w_ep

    lo, hi = cal.temperature_bounds
    res = newton_temperature(evaluate, bounds=(float(lo), float(hi)), max_iter=cal.max_iter, tol=cal.tol)
    cal.n_ = n
    if method != "ts":
        cal.n_agree_ = n_agree
        cal.agreement_rate_ = n_agree / n
    cal.n_options_ = k_max
    cal._store(res)
    meta = {"chat": file_meta(chat_path)}
    if base_path is not None:
        meta["base"] = file_meta(Path(base_path))
    return StreamedFit(cal, n, n_agree, n_labelled, meta)


# ---------------------------------------------------------------------------------------------- metrics
@dataclass
class StreamedMetrics:
    """What :func:`evaluate_streaming` found.

    Attributes
    ----------
    n : int
        Questions.
    n_options : numpy integer
        Largest number of options (``ScoreSet.n_options`` reduces to the same with ``.max()``).
    metrics : dict
        ``{"vanilla": {...}, "calibrated": {...}}`` with the keys of :func:`refcal.metrics.evaluate`.
    """

    n: int
    n_options: np.integer
    metrics: dict[str, dict[str, float]]


def evaluate_streaming(
    path: str | Path, *, calibrator: Any = None, n_bins: int = 10, block_rows: int = BLOCK_ROWS,
) -> StreamedMetrics:
    """Metrics of a labelled score file, before (``vanilla``) and after a calibrator (``calibrated``).

    Raises
    ------
    InputError
        Some question has no label (the message counts them).
    """
    path = Path(path)
    acc = {"vanilla": MetricSums(n_bins)}
    if calibrator is not None:
        acc["calibrated"] = MetricSums(n_bins)
    ids = IdCheck()
    n = n_missing = k = 0
    for blk in iter_blocks(path, block_rows):
        ids.add(blk.ids)
        n += len(blk)
        k = max(k, int(blk.n_options.max()))
        missing = blk.labels < 0
        if missing.any() or n_missing:
            n_missing += int(missing.sum())
            continue
        acc["vanilla"].add(softmax(blk.logits), blk.labels)
        if calibrator is not None:
            acc["calibrated"].add(calibrator.predict_proba(blk.logits), blk.labels)
    ids.finish(path, block_rows)
    if n_missing:
        raise InputError(
            f"{path}: {n_missing} of {n} questions have no label; evaluation needs labels "
            "(use `refcal fit`/`apply` for label-free calibration)"
        )
    return StreamedMetrics(n, np.int64(k), {name: a.result() for name, a in acc.items()})
