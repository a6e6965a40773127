"""Benchmark: the newer metrics against their reference packages, same inputs, same process.

* smooth ECE: ``refcal.metrics.smooth_ece`` vs ``relplot.smECE`` (the authors' package; same estimator,
  one FFT pass here for residual and density where relplot convolves twice directly);
* debiased ECE: ``refcal.metrics.debiased_ece`` vs ``calibration.get_calibration_error(p=2, debias=True)``;
* the bootstrap intervals ``refcal run`` writes (``bootstrap_all``, 1000 resamples) for one method.

Prints best-of-N times, the ratio reference / refcal, and the largest difference of the values.

Run: ``PYTHONPATH=src python benchmarks/bench_metrics.py [--n 300 2000 14042] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from refcal import metrics


def _data(n: int, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = (p.cumsum(1) < rng.uniform(size=(n, 1))).sum(1).clip(max=k - 1)
    return np.exp(1.5 * np.log(p)) / np.exp(1.5 * np.log(p)).sum(1, keepdims=True), y  # over-confident


def _best(fn, repeats: int) -> tuple[float, float]:
    times, value = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - t)
    return min(times), float(value)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[300, 2000, 14042])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    import calibration
    import relplot

    for n in args.n:
        p, y = _data(n)
        f, o = p.max(1), (p.argmax(1) == y).astype(float)
        t_ours, v_ours = _best(lambda p=p, y=y: metrics.smooth_ece(p, y), args.repeats)
        t_ref, v_ref = _best(lambda f=f, o=o: relplot.smECE(f, o), args.repeats)
        print(f"n={n:6d} smooth ECE: refcal {1e3 * t_ours:7.2f} ms, relplot {1e3 * t_ref:7.2f} ms, "
              f"ratio {t_ref / t_ours:5.2f}x, |diff| {abs(v_ours - v_ref):.1e}")
        t_ours, v_ours = _best(lambda p=p, y=y: metrics.debiased_ece(p, y, n_bins=15), args.repeats)
        t_ref, v_ref = _best(lambda p=p, y=y: calibration.get_calibration_error(p, y, p=2, debias=True,
                                                                               mode="top-label"), args.repeats)
        print(f"n={n:6d} debiased ECE: refcal {1e3 * t_ours:7.2f} ms, calibration {1e3 * t_ref:7.2f} ms, "
              f"ratio {t_ref / t_ours:5.2f}x, |diff| {abs(v_ours - v_ref):.1e}")
    p, y = _data(300)
    t, _ = _best(lambda: len(metrics.bootstrap_all(p, y, n_boot=1000)), 1)
    print(f"bootstrap_all, n=300, 1000 resamples, {len(metrics.BOOTSTRAPPED)} metrics: {t:.2f} s")


if __name__ == "__main__":
    main()
