"""Smooth ECE, classwise ECE, the Brier decomposition, debiased ECE and the block sums: cross-checks against
relplot (the smooth-ECE authors' package), netcal, Kumar et al.'s ``calibration`` package and
scikit-learn, exact identities, and equality of the block sums with ``evaluate``."""

from __future__ import annotations

import numpy as np
import pytest

from refcal import metrics as M
from refcal.errors import InputError
from refcal.metrics import TopLabel
from refcal.metrics.sums import MetricSums


def _random(n: int, k: int, seed: int, sharp: float = 2.0, shift: float = 0.0):
    """Probabilities (n, k) and labels drawn from softmax(logits - shift * onehot(argmax)): shift > 0 makes
    the probabilities over-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * sharp
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(z - shift * (z == z.max(1, keepdims=True)))
    q /= q.sum(1, keepdims=True)
    y = (q.cumsum(1) < rng.uniform(size=(n, 1))).sum(1)
    return p, np.minimum(y, k - 1)


# ---------------------------------------------------------------------------------------------- smooth ECE
@pytest.mark.parametrize(("n", "k", "seed", "shift"), [(20, 2, 0, 0.0), (150, 4, 1, 1.0), (1000, 4, 2, 0.0),
                                                       (3000, 5, 3, 2.0), (500, 10, 4, -1.0)])
def test_smooth_ece_matches_relplot(n, k, seed, shift):
    """Same inputs, same estimator: relplot 1.0.3's ``smECE`` (the issue asks for 1e-6; the two agree to
    rounding, so 1e-9 is asserted)."""
    relplot = pytest.importorskip("relplot")
    p, y = _random(n, k, seed, shift=shift)
    f, o = p.max(1), (p.argmax(1) == y).astype(float)
    ref, width = relplot.smECE(f, o, return_width=True)
    assert M.smooth_ece(p, y) == pytest.approx(ref, abs=1e-9)
    assert M.smooth_ece_bandwidth(p, y) == pytest.approx(width, abs=1e-12)
    for sigma in (0.01, 0.05, 0.3):
        assert M.smooth_ece_at(p, y, sigma=sigma) == pytest.approx(relplot.smECE_sigma(f, o, sigma), abs=1e-9)


def test_smooth_ece_of_a_top_label_equals_its_distribution_version():
    p, y = _random(400, 3, 5, shift=1.0)
    t = TopLabel(p.argmax(1), p.max(1))
    assert M.smooth_ece(t, y) == M.smooth_ece(p, y)


def test_smooth_ece_is_small_when_calibrated_and_tracks_a_constant_gap():
    rng = np.random.default_rng(0)
    n = 20000
    f = rng.uniform(0.2, 0.9, n)
    o = (rng.uniform(size=n) < f).astype(int)
    t = TopLabel(np.zeros(n, np.int64), f)
    assert M.smooth_ece(t, 1 - o) < 0.02  # label 1 - o: the answer 0 is right exactly when o = 1
    o_low = (rng.uniform(size=n) < f - 0.1).astype(int)  # over-confident by 10 points everywhere
    assert M.smooth_ece(t, 1 - o_low) == pytest.approx(0.1, abs=0.02)  # sampling + kernel blur at the ends


def test_smooth_ece_at_refuses_a_bad_width():
    p, y = _random(10, 2, 0)
    with pytest.raises(InputError, match="sigma"):
        M.smooth_ece_at(p, y, sigma=0)


# ---------------------------------------------------------------------------------------------- classwise
@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_classwise_ece_matches_netcal_and_relplot_per_class(n_bins):
    netcal = pytest.importorskip("netcal.metrics")
    binned = pytest.importorskip("relplot.metrics").binnedECE
    p, y = _random(700, 4, 6, shift=0.5)
    per_class_netcal = [netcal.ECE(n_bins).measure(p[:, j], (y == j).astype(int)) for j in range(4)]
    per_class_relplot = [binned(p[:, j], (y == j).astype(float), n_bins) for j in range(4)]
    assert M.classwise_ece(p, y, n_bins=n_bins) == pytest.approx(np.mean(per_class_netcal), abs=1e-12)
    assert M.classwise_ece(p, y, n_bins=n_bins) == pytest.approx(np.mean(per_class_relplot), abs=1e-12)


def test_classwise_ece_golden_and_top_label_refused():
    p = np.array([[0.7, 0.3], [0.2, 0.8]])
    y = np.array([0, 0])
    # option 0: bins 7 (0.7, o=1) and 2 (0.2, o=1): (0.3 + 0.8) / 2; option 1: (0.3 + 0.8) / 2 as well
    assert M.classwise_ece(p, y) == pytest.approx(0.55, abs=1e-15)
    with pytest.raises(InputError, match="probability for every option"):
        M.classwise_ece(TopLabel(np.array([0, 1]), np.array([0.7, 0.8])), y)
    assert np.isnan(M.evaluate(TopLabel(np.array([0, 1]), np.array([0.7, 0.8])), y)["classwise_ece"])


# ---------------------------------------------------------------------------------------------- Brier decomposition
@pytest.mark.parametrize("n_bins", [1, 10, 20])
def test_brier_decomposition_identity_is_exact_for_binned_forecasts(n_bins):
    """BS = REL - RES + UNC + WBV - 2 WBC (Stephenson et al. 2008), to rounding."""
    from sklearn.metrics import brier_score_loss

    p, y = _random(900, 4, 7, shift=1.0)
    d = M.brier_decomposition(p, y, n_bins=n_bins)
    correct = (p.argmax(1) == y).astype(int)
    assert d.brier == pytest.approx(brier_score_loss(correct, p.max(1)), abs=1e-14)
    assert d.brier == pytest.approx(d.reliability - d.resolution + d.uncertainty + d.within_variance
                                    - 2 * d.within_covariance, abs=1e-14)
    assert d.uncertainty == pytest.approx(correct.mean() * (1 - correct.mean()), abs=1e-15)
    assert d.within_variance > 0 and d.reliability >= 0 and d.resolution >= 0


def test_brier_decomposition_is_murphys_when_each_bin_holds_one_value():
    """Confidences on a few values, one per bin: the within-bin terms vanish and Murphy's identity holds."""
    rng = np.random.default_rng(8)
    f = rng.choice([0.55, 0.65, 0.75, 0.85, 0.95], size=2000)
    o = (rng.uniform(size=f.size) < f - 0.05).astype(int)
    d = M.brier_decomposition(TopLabel(np.zeros(f.size, np.int64), f), 1 - o, n_bins=10)
    assert d.within_variance == pytest.approx(0, abs=1e-15) and d.within_covariance == pytest.approx(0, abs=1e-15)
    assert d.brier == pytest.approx(d.reliability - d.resolution + d.uncertainty, abs=1e-14)
    # hand-computed reliability: sum over values of share * (value - hit rate)^2
    rel = sum(np.mean(f == v) * (v - o[f == v].mean()) ** 2 for v in np.unique(f))
    assert d.reliability == pytest.approx(rel, abs=1e-14)


# ---------------------------------------------------------------------------------------------- debiased ECE
@pytest.mark.parametrize(("n", "n_bins", "seed"), [(1500, 15, 9), (3000, 10, 10), (600, 5, 11)])
def test_debiased_ece_matches_kumar_et_al(n, n_bins, seed):
    """Kumar et al.'s own package (``uncertainty-calibration``): top-label, p = 2, debias=True."""
    cal = pytest.importorskip("calibration")
    p, y = _random(n, 3, seed, shift=1.0)
    ref = cal.get_calibration_error(p, y, p=2, debias=True, mode="top-label")
    if n_bins == 15:  # the package's default number of bins
        assert M.debiased_ece(p, y, n_bins=15) == pytest.approx(ref, abs=1e-12)
    ref_b = cal.lower_bound_scaling_ce(p, y, p=2, debias=True, num_bins=n_bins, mode="top-label")
    assert M.debiased_ece(p, y, n_bins=n_bins) == pytest.approx(ref_b, abs=1e-12)


def test_debiased_ece_removes_the_plug_in_bias_on_calibrated_data():
    """On calibrated data the plug-in squared ECE is biased upwards by ~ sum_b acc(1 - acc)/n; the debiased
    estimate of ECE^2 averages to about 0 over many samples (tolerance: 3 standard errors of the mean)."""
    from refcal.metrics.extra import debiased_from_bins

    rng = np.random.default_rng(12)
    plug, deb = [], []
    for _ in range(200):
        f = rng.uniform(0.3, 1.0, 300)
        o = (rng.uniform(size=f.size) < f).astype(int)
        b = M.reliability_bins(TopLabel(np.zeros(f.size, np.int64), f), 1 - o, n_bins=10, strategy="quantile")
        plug.append(np.sum(b.counts / b.n * (b.accuracy - b.confidence) ** 2))
        ok = b.counts >= 2
        deb.append(np.sum(b.counts[ok] / b.n * ((b.accuracy[ok] - b.confidence[ok]) ** 2
                                               - b.accuracy[ok] * (1 - b.accuracy[ok]) / (b.counts[ok] - 1))))
        assert debiased_from_bins(b.counts, b.accuracy, b.confidence) == pytest.approx(np.sqrt(max(deb[-1], 0)))
    deb = np.asarray(deb)
    assert abs(deb.mean()) < 3 * deb.std(ddof=1) / np.sqrt(deb.size)
    assert np.mean(plug) > 5 * abs(deb.mean())


# ---------------------------------------------------------------------------------------------- evaluate / sums
def test_block_sums_equal_evaluate_on_every_key():
    p, y = _random(1234, 4, 13, shift=0.7)
    ref = M.evaluate(p, y, n_bins=12)
    sums = MetricSums(12)
    for lo in range(0, 1234, 300):
        sums.add(p[lo: lo + 300], y[lo: lo + 300])
    got = sums.result()
    assert list(got) == list(ref) == list(M.METRICS)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-15), k


def test_block_sums_with_fewer_options_in_some_blocks_equal_zero_padding():
    p4, y4 = _random(200, 4, 14)
    p3, y3 = _random(100, 3, 15)
    padded = np.vstack([np.pad(p3, ((0, 0), (0, 1))), p4])
    sums = MetricSums(10)
    sums.add(p3, y3)
    sums.add(p4, y4)
    got, ref = sums.result(), M.evaluate(padded, np.r_[y3, y4])
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-12, abs=1e-15), k


@pytest.mark.parametrize("name", ["smooth_ece", "classwise_ece", "debiased_ece", "brier_reliability",
                                  "brier_resolution", "brier_uncertainty"])
def test_bootstrap_interval_of_each_new_metric(name):
    p, y = _random(300, 4, 16, shift=1.0)
    ci = M.bootstrap_ci(name, p, y, n_boot=60, seed=3)
    assert ci.estimate == pytest.approx(M.METRICS[name](p, y))
    assert ci.low <= ci.high and np.isfinite([ci.low, ci.high]).all()


# ---------------------------------------------------------------------------------------------- columns
def test_column_table_names_known_metrics_and_every_view():
    from refcal.metrics.conformal import conformal_metrics

    known = set(M.METRICS) | set(conformal_metrics(*_random(10, 3, 0))) | {"mean_confidence"}
    assert {c.key for c in M.COLUMNS} <= known
    assert len({c.key for c in M.COLUMNS}) == len(M.COLUMNS)
    assert [c.key for c in M.columns("report_more")][0] == "smooth_ece"
    for view in ("console", "table_md", "report", "cli"):
        assert [c.key for c in M.columns(view)][:3] == ["ece", "mce", "aece"]
    with pytest.raises(InputError, match="view"):
        M.columns("html")
