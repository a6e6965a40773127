"""Plots: the data behind every plot against the metrics module, then what is drawn, and no global state."""

from __future__ import annotations

import subprocess
import sys

import matplotlib
import numpy as np
import pytest

from refcal import metrics as M
from refcal.errors import InputError
from refcal.report import plots as P


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    logits = rng.normal(size=(400, 4)) * 2.5
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    y = rng.integers(0, 4, 400)
    q = np.exp(np.log(p) / 2.5)
    q /= q.sum(1, keepdims=True)
    return p, q, y


# ---------------------------------------------------------------------------------------------- data
def test_reliability_data_matches_metrics(data):
    p, _, y = data
    bins = M.reliability_bins(p, y, n_bins=10)
    conf, correct = p.max(1), p.argmax(1) == y
    np.testing.assert_array_equal(bins.edges, np.linspace(0, 1, 11))
    for b in range(10):
        lo, hi = bins.edges[b], bins.edges[b + 1]
        member = (conf >= lo) & ((conf < hi) if b < 9 else (conf <= hi))
        assert bins.counts[b] == member.sum()
        if member.any():
            assert bins.accuracy[b] == pytest.approx(correct[member].mean(), rel=1e-14)
            assert bins.confidence[b] == pytest.approx(conf[member].mean(), rel=1e-14)
    assert bins.weighted_gap() == M.ece(p, y)
    assert np.nanmax(bins.gap) == M.mce(p, y)
    assert M.reliability_bins(p, y, strategy="quantile").weighted_gap() == M.aece(p, y)


def test_quantile_bins_have_equal_mass(data):
    p, _, y = data
    bins = M.reliability_bins(p, y, n_bins=7, strategy="quantile")
    assert bins.counts.sum() == 400 and bins.counts.max() - bins.counts.min() <= 1
    assert np.all(np.diff(bins.edges) >= 0) and bins.edges[0] == 0 and bins.edges[-1] == 1
    conf = np.sort(p.max(1))
    cuts = np.cumsum(bins.counts)[:-1]
    # each inner edge lies between the last confidence of one group and the first of the next
    assert np.all(conf[cuts - 1] <= bins.edges[1:-1]) and np.all(bins.edges[1:-1] <= conf[cuts])


def test_histogram_data(data):
    p, q, _ = data
    h = P.confidence_histogram_data({"chat": P.confidences(p), "daca": P.confidences(q)}, n_bins=15, low=0.25)
    np.testing.assert_array_equal(h.edges, np.linspace(0.25, 1, 16))
    np.testing.assert_array_equal(h.counts["chat"], np.histogram(p.max(1), bins=15, range=(0.25, 1))[0])
    assert h.counts["daca"].sum() == 400 and h.mean["daca"] == pytest.approx(q.max(1).mean(), rel=1e-14)
    with pytest.raises(InputError, match="within"):
        P.confidence_histogram_data({"x": np.array([0.1])}, low=0.25)


def test_selective_and_risk_coverage_data(data):
    p, _, y = data
    rc = M.risk_coverage(p, y)
    assert np.mean(rc.risk) == M.aurc(p, y)
    np.testing.assert_allclose(rc.coverage, np.arange(1, 401) / 400, rtol=0)
    assert rc.risk[-1] == pytest.approx(1 - M.accuracy(p, y), rel=1e-14)  # full coverage
    curve = M.selective_accuracy(p, y, thresholds=[0.0, 0.9])
    assert curve.accuracy[0] == M.accuracy(p, y) and curve.coverage[0] == 1
    keep = p.max(1) >= 0.9
    assert curve.accuracy[1] == pytest.approx((p.argmax(1) == y)[keep].mean(), rel=1e-14)


def test_group_values_sorts_and_averages_templates():
    recs = [{"group": "b", "temperature": 2.0, "n_agree": 10}, {"group": "a", "temperature": 3.0, "n_agree": 20},
            {"group": "b", "temperature": 4.0, "n_agree": 30}, {"group": "c", "n_agree": 5}]
    g = P.group_values(recs)
    # b averages its two templates to 3.0 and ties with a: ties are ordered by name
    assert g.groups == ["a", "b"] and g.values.tolist() == [3.0, 3.0] and g.counts.tolist() == [20, 20]
    g = P.group_values(recs[:3] + [{"group": "d", "temperature": 0.5, "n_agree": 1}])
    assert g.groups == ["d", "a", "b"]
    assert P.group_values([{"group": "x"}]).groups == []


# ---------------------------------------------------------------------------------------------- drawing
def test_reliability_drawing_shows_the_bins(data):
    p, _, y = data
    bins = M.reliability_bins(p, y)
    ax = P.plot_reliability(bins)
    nz = bins.counts > 0
    # first container: accuracy bars; second: gap bands from min(acc, conf) to max(acc, conf)
    acc_bars, gap_bars = ax.containers[0], ax.containers[1]
    np.testing.assert_allclose([r.get_height() for r in acc_bars], bins.accuracy[nz], rtol=1e-12)
    np.testing.assert_allclose([r.get_x() for r in acc_bars], bins.edges[:-1][nz], rtol=1e-12)
    np.testing.assert_allclose([r.get_height() for r in gap_bars], bins.gap[nz], rtol=1e-12)
    np.testing.assert_allclose([r.get_y() for r in gap_bars],
                               np.minimum(bins.accuracy, bins.confidence)[nz], rtol=1e-12)
    texts = [t.get_text() for t in ax.texts]
    assert [t for t in texts if t.isdigit()] == [str(c) for c in bins.counts[nz]]
    assert f"ECE = {100 * M.ece(p, y):.3f} %" in texts[-1]


def test_drawing_functions_accept_an_ax_and_leave_global_state_alone(data, tmp_path):
    p, q, y = data
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    fig = P.new_figure(12, 8)
    axes = fig.subplots(2, 3).ravel()
    assert P.plot_reliability(M.reliability_bins(q, y), ax=axes[0]) is axes[0]
    h = P.confidence_histogram_data({"chat": p.max(1), "daca": q.max(1)})
    assert P.plot_confidence_histogram(h, ax=axes[1]) is axes[1]
    sel = {"chat": M.selective_accuracy(p, y), "daca": M.selective_accuracy(q, y)}
    assert P.plot_selective_accuracy(sel, ax=axes[2]) is axes[2]
    assert P.plot_risk_coverage({"chat": M.risk_coverage(p, y)}, ax=axes[3]) is axes[3]
    g = P.group_values([{"group": f"s{i}", "temperature": 1 + i / 10, "n_agree": i} for i in range(5)])
    ax = P.plot_group_values(g, ax=axes[4], markers={"ts": g}, label="DACA")
    assert ax is axes[4] and len(ax.patches) == 5
    grid = P.plot_reliability_grid({"chat": M.reliability_bins(p, y), "daca": M.reliability_bins(q, y)})
    paths = P.save_figure(fig, tmp_path / "all") + P.save_figure(grid, tmp_path / "grid")
    assert [x.suffix for x in paths] == [".png", ".svg", ".png", ".svg"]
    assert all(x.stat().st_size > 1000 for x in paths)
    assert dict(matplotlib.rcParams) == before and matplotlib.get_backend() == backend


def test_saved_files_are_reproducible(data, tmp_path):
    p, _, y = data
    for run in ("a", "b"):
        P.save_figure(P.plot_reliability(M.reliability_bins(p, y)).figure, tmp_path / run / "rel")
    for ext in ("png", "svg"):
        assert (tmp_path / "a" / f"rel.{ext}").read_bytes() == (tmp_path / "b" / f"rel.{ext}").read_bytes()


def test_plotting_never_imports_pyplot():
    code = ("import numpy as np, sys; from refcal import metrics as M; from refcal.report import plots as P;"
            "p = np.array([[0.7, 0.3], [0.4, 0.6]]); P.plot_reliability(M.reliability_bins(p, np.array([0, 0])));"
            "print('matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_empty_inputs_are_errors():
    with pytest.raises(InputError, match="no reliability"):
        P.plot_reliability_grid({})
    with pytest.raises(InputError, match="no group"):
        P.plot_group_values(P.group_values([]))
    with pytest.raises(InputError, match="at least one"):
        P.confidence_histogram_data({})
