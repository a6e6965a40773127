"""The metrics of :func:`refcal.metrics.evaluate` from block-wise sums (files too large for memory).

:class:`MetricSums` takes the questions a block at a time (``add``) and keeps per-bin sums, per-option bin
sums (classwise ECE), the within-bin sums of the Brier decomposition, the scoring sums, and one
confidence (float64) and correctness (bool) per question for the rank-based metrics (AECE, debiased ECE,
AUROC, AURC, smooth ECE). ``result()`` gives every key of :data:`refcal.metrics.METRICS`, equal to
:func:`refcal.metrics.evaluate` on all the questions at once up to the order of floating-point additions
(the tests check relative 1e-12). The formulas are the ones of :mod:`.core`, :mod:`.extra` and
:mod:`.smooth`; only the order of the sums differs.
"""

from __future__ import annotations

import numpy as np

from .core import ReliabilityBins, _check_bins, log
from .extra import debiased_from_bins
from .smooth import smooth_ece_from
from .summary import METRICS

__all__ = ["MetricSums"]

#: rows per slice of the chunked sums of the rank-based metrics
_SLICE = 1 << 20


class MetricSums:
    """Everything :func:`refcal.metrics.evaluate` needs, accumulated block by block.

    ``add(p, y)``: probabilities (m, k) (checked by the caller) and labels (m,) of one block.
    """

    def __init__(self, n_bins: int):
        self.n_bins = n_bins = _check_bins(n_bins)
        self.edges = np.linspace(0.0, 1.0, n_bins + 1)
        self.counts = np.zeros(n_bins, np.int64)
        self.bin_corr = np.zeros(n_bins)
        self.bin_conf = np.zeros(n_bins)
        self.cls_p = np.zeros((0, n_bins))  # per option and bin: sum of p_j (classwise ECE)
        self.cls_o = np.zeros((0, n_bins))  # ... and of 1[y = j]
        self.brier = self.brier_mc = self.nll = 0.0
        self.n = 0
        self.conf: list[np.ndarray] = []
        self.corr: list[np.ndarray] = []

    def _bin(self, x: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(self.edges, x, side="right") - 1, 0, self.n_bins - 1)

    def add(self, p: np.ndarray, y: np.ndarray) -> None:
        rows = np.arange(len(y))
        conf = p.max(axis=1)
        corr = (p.argmax(axis=1) == y).astype(np.float64)
        idx = self._bin(conf)
        b = self.n_bins
        self.counts += np.bincount(idx, minlength=b)
        self.bin_corr += np.bincount(idx, weights=corr, minlength=b)
        self.bin_conf += np.bincount(idx, weights=conf, minlength=b)
        self.brier += float(np.sum((conf - corr) ** 2))
        onehot = np.zeros_like(p)
        onehot[rows, y] = 1.0
        self.brier_mc += float(np.sum(np.sum((p - onehot) ** 2, axis=1)))
        k = p.shape[1]
        if k > self.cls_p.shape[0]:  # a block with more options than seen so far
            grow = k - self.cls_p.shape[0]
            self.cls_p = np.vstack([self.cls_p, np.zeros((grow, b))])
            self.cls_o = np.vstack([self.cls_o, np.zeros((grow, b))])
        flat = (self._bin(p) + b * np.arange(k)[None, :]).ravel()
        self.cls_p[:k] += np.bincount(flat, weights=p.ravel(), minlength=b * k).reshape(k, b)
        self.cls_o[:k] += np.bincount(flat, weights=onehot.ravel(), minlength=b * k).reshape(k, b)
        with np.errstate(divide="ignore"):
            self.nll -= float(np.sum(np.log(p[rows, y])))
        self.n += len(y)
        self.conf.append(conf)
        self.corr.append(corr.astype(bool))

    def _gather(self, chunks: list[np.ndarray], dtype: type) -> np.ndarray:
        """Concatenate and free the per-block arrays without holding both copies at once."""
        out = np.empty(self.n, dtype)
        pos = 0
        while chunks:
            a = chunks.pop(0)
            out[pos: pos + len(a)] = a
            pos += len(a)
        return out

    def _binned(self, out: dict[str, float]) -> None:
        """ECE, MCE, the scores, classwise ECE and the Brier decomposition from the bin sums."""
        n, cnt = self.n, self.counts
        nz = cnt > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            bins = ReliabilityBins(self.edges, cnt, self.bin_corr / cnt, self.bin_conf / cnt, "uniform")
        out["ece"] = bins.weighted_gap()
        out["mce"] = float(np.max(bins.gap[nz]))
        out["brier"] = self.brier / n
        out["brier_multiclass"] = self.brier_mc / n
        out["nll"] = self.nll / n
        out["classwise_ece"] = float(np.sum(np.abs(self.cls_o - self.cls_p))) / n / self.cls_p.shape[0]
        w = cnt[nz] / n
        c_b, o_b, o = bins.confidence[nz], bins.accuracy[nz], float(self.bin_corr.sum() / n)
        out["brier_reliability"] = float(np.sum(w * (c_b - o_b) ** 2))
        out["brier_resolution"] = float(np.sum(w * (o_b - o) ** 2))
        out["brier_uncertainty"] = o * (1 - o)

    def result(self) -> dict[str, float]:
        """The metrics, keyed as :data:`refcal.metrics.METRICS`; every temporary is at most a few arrays of
        n values (the rank-based metrics need the confidences sorted once)."""
        n = self.n
        out: dict[str, float] = {}
        self._binned(out)
        conf = self._gather(self.conf, np.float64)
        order = np.argsort(conf, kind="stable")  # ascending; stable as in metrics.reliability_bins
        c = conf[order]
        del conf
        e = self._gather(self.corr, np.bool_)[order]
        del order
        out["smooth_ece"] = smooth_ece_from(c, e.astype(np.float64))[0]
        # AECE and debiased ECE: equal-mass groups of the stable ascending order (numpy.array_split sizes)
        b = min(self.n_bins, n)
        q, r = divmod(n, b)
        bounds = np.r_[0, np.cumsum([q + 1] * r + [q] * (b - r))][:-1]
        cnt = np.diff(np.r_[bounds, n])
        g_acc = np.add.reduceat(e, bounds, dtype=np.float64) / cnt
        g_conf = np.add.reduceat(c, bounds) / cnt
        out["aece"] = float(np.sum(cnt / n * np.abs(g_acc - g_conf)))
        out["debiased_ece"] = debiased_from_bins(cnt, g_acc, g_conf)
        n_pos = int(np.count_nonzero(e))
        out["accuracy"] = n_pos / n
        # tie groups of equal confidence (ascending): start, size and number of correct answers
        starts = np.flatnonzero(np.r_[True, c[1:] != c[:-1]])
        del c
        sizes = np.diff(np.r_[starts, n])
        pos_in = np.add.reduceat(e, starts, dtype=np.int64)
        del e
        out["auroc"] = self._auroc(starts, sizes, pos_in, n_pos)
        out["aurc"] = self._aurc(starts, sizes, pos_in)
        return {k: out[k] for k in METRICS}

    def _auroc(self, starts: np.ndarray, sizes: np.ndarray, pos_in: np.ndarray, n_pos: int) -> float:
        n = self.n
        n_neg = n - n_pos
        if n_pos == 0 or n_neg == 0:
            log.warning("AUROC is undefined: all %d answers are %s; returning NaN", n,
                        "correct" if n_neg == 0 else "wrong")
            return float("nan")
        # sum of the (1-based, tie-averaged) ranks of the correct answers, in slices of groups
        rank_sum = 0.0
        for lo in range(0, len(starts), _SLICE):
            sl = slice(lo, lo + _SLICE)
            rank_sum += float(np.sum((starts[sl] + (sizes[sl] + 1) / 2.0) * pos_in[sl]))
        return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)

    def _aurc(self, starts: np.ndarray, sizes: np.ndarray, pos_in: np.ndarray) -> float:
        """Risk-coverage in descending confidence, errors spread evenly within tie groups."""
        n = self.n
        g_err = (sizes - pos_in)[::-1].astype(np.float64)
        sizes_d = sizes[::-1].copy()
        before = np.cumsum(g_err)
        before -= g_err  # errors in the groups before each group
        start_d = np.cumsum(sizes_d)
        start_d -= sizes_d
        total = 0.0
        for lo in range(0, n, _SLICE):
            m = np.arange(lo + 1, min(lo + _SLICE, n) + 1)
            gid = np.searchsorted(start_d, m - 1, side="right") - 1
            cum_err = before[gid] + (m - start_d[gid]) * g_err[gid] / sizes_d[gid]
            total += float(np.sum(cum_err / m))
        return total / n
