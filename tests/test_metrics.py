"""Metrics: hand-computed goldens, cross-checks (scikit-learn, netcal), invariants and errors."""

from __future__ import annotations

import itertools
import logging
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refcal import metrics as M
from refcal.errors import InputError

# Confidences 0.92, 0.83, 0.65, 0.5 (tie -> option 0), 1.0; correct = 1, 0, 1, 0, 1.
# 0.5 and 1.0 sit exactly on bin edges (both exact in binary); the others are off the edges.
P = np.array([[0.92, 0.08], [0.83, 0.17], [0.35, 0.65], [0.5, 0.5], [1.0, 0.0]])
Y = np.array([0, 1, 1, 1, 0])


def _random(n: int, k: int, seed: int, sharp: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * sharp
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    # labels drawn from the probabilities themselves, so the data are roughly calibrated
    y = np.array([rng.choice(k, p=row) for row in p])
    return p, y


# ---------------------------------------------------------------------------------------------- goldens
def test_golden_binned_metrics():
    bins = M.reliability_bins(P, Y, n_bins=10)
    np.testing.assert_array_equal(bins.counts, [0, 0, 0, 0, 0, 1, 1, 0, 1, 2])
    np.testing.assert_allclose(bins.accuracy[[5, 6, 8, 9]], [0.0, 1.0, 0.0, 1.0], rtol=0, atol=0)
    np.testing.assert_allclose(bins.confidence[[5, 6, 8, 9]], [0.5, 0.65, 0.83, 0.96], rtol=1e-15)
    assert np.isnan(bins.accuracy[0]) and np.isnan(bins.confidence[0])
    # (2 * 0.04 + 0.83 + 0.35 + 0.5) / 5
    assert M.ece(P, Y) == pytest.approx(0.352, rel=1e-13)
    assert M.mce(P, Y) == pytest.approx(0.83, rel=1e-13)
    # equal mass, 2 bins: {0.5, 0.65, 0.83} acc 1/3 conf 0.66; {0.92, 1.0} acc 1 conf 0.96
    assert M.aece(P, Y, n_bins=2) == pytest.approx(3 / 5 * (0.66 - 1 / 3) + 2 / 5 * 0.04, rel=1e-13)


def test_golden_scores():
    assert M.accuracy(P, Y) == 0.6
    assert M.brier(P, Y) == pytest.approx((0.08**2 + 0.83**2 + 0.35**2 + 0.5**2) / 5, rel=1e-14)
    assert M.brier_multiclass(P, Y) == pytest.approx((0.0128 + 1.3778 + 0.245 + 0.5) / 5, rel=1e-13)
    expected_nll = -(math.log(0.92) + math.log(0.17) + math.log(0.65) + math.log(0.5)) / 5
    assert M.nll(P, Y) == pytest.approx(expected_nll, rel=1e-14)
    assert M.auroc(P, Y) == pytest.approx(5 / 6, rel=1e-14)
    # descending confidence: c c w c w -> risks 0, 0, 1/3, 1/4, 2/5
    assert M.aurc(P, Y) == pytest.approx(59 / 300, rel=1e-14)


def test_golden_selective():
    curve = M.selective_accuracy(P, Y)
    np.testing.assert_allclose(curve.thresholds, np.arange(10) * 0.05 + 0.5, atol=1e-15)
    np.testing.assert_array_equal(curve.n_selected, [5, 4, 4, 4, 3, 3, 3, 2, 2, 1])
    np.testing.assert_allclose(curve.coverage, curve.n_selected / 5, rtol=0)
    np.testing.assert_allclose(curve.accuracy, [0.6, 0.75, 0.75, 0.75, 2 / 3, 2 / 3, 2 / 3, 1, 1, 1], rtol=1e-15)
    empty = M.selective_accuracy(P[:1], Y[:1], thresholds=[0.99])
    assert empty.n_selected[0] == 0 and empty.coverage[0] == 0 and np.isnan(empty.accuracy[0])


def test_confidence_one_goes_in_last_bin_and_edges_are_left_closed():
    p = np.array([[1.0, 0.0], [0.7, 0.3], [0.5, 0.5]])
    bins = M.reliability_bins(p, np.array([0, 0, 0]), n_bins=5)  # edges 0, .2, .4, .6, .8, 1
    np.testing.assert_array_equal(bins.counts, [0, 0, 1, 1, 1])
    # 0.5 is the left edge of bin [0.5, 1.0] with 2 bins
    np.testing.assert_array_equal(M.reliability_bins(p, np.zeros(3, int), n_bins=2).counts, [0, 3])


def test_nll_is_inf_when_true_label_has_zero_probability():
    assert M.nll(np.array([[1.0, 0.0]]), np.array([1])) == math.inf


def test_auroc_undefined_returns_nan_and_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="refcal.metrics"):
        assert math.isnan(M.auroc(P[[0, 2, 4]], Y[[0, 2, 4]]))
    assert "all 3 answers are correct" in caplog.text


def test_auroc_warn_false_is_silent_and_evaluate_passes_it_on(caplog):
    with caplog.at_level(logging.WARNING, logger="refcal.metrics"):
        assert math.isnan(M.auroc(P[[1, 3]], Y[[1, 3]], warn=False))
        assert math.isnan(M.evaluate(P[[0, 2, 4]], Y[[0, 2, 4]], warn=False)["auroc"])
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="refcal.metrics"):
        assert math.isnan(M.evaluate(P[[1, 3]], Y[[1, 3]])["auroc"])  # default: warns, as auroc does
    assert [r.getMessage() for r in caplog.records] == ["AUROC is undefined: all 2 answers are wrong; returning NaN"]


def test_bootstrap_of_auroc_counts_undefined_resamples_in_one_line(caplog):
    # 6 questions, one of them wrong: a resample misses it with probability (5/6)^6 = 0.33, so about a third
    # of the resamples have only correct answers and an undefined AUROC
    p = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4], [0.95, 0.05], [0.55, 0.45]])
    y = np.array([0, 0, 0, 0, 0, 1])
    with caplog.at_level(logging.WARNING, logger="refcal.metrics"):
        ci = M.bootstrap_ci("auroc", p, y, n_boot=200, seed=0)
    assert ci.estimate == 1.0 and ci.low <= ci.high == 1.0
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("bootstrap: ") and "of 200 resamples gave NaN" in lines[0]
    n_nan = int(lines[0].split()[1])
    assert 40 < n_nan < 100  # the count of resamples without a wrong answer (expected 67)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="refcal.metrics"):  # outside a bootstrap, auroc warns again
        M.auroc(p[:5], y[:5])
    assert len(caplog.records) == 1 and "all 5 answers are correct" in caplog.records[0].getMessage()


def test_run_evaluation_says_once_per_method_where_auroc_is_undefined(caplog):
    """A run's units are evaluated without per-call warnings; aggregate() logs one line per method."""
    from refcal.run import evaluate as E

    right = np.log(np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]))  # every answer right for y = (0, 0, 1)
    wrong = right[:, ::-1]  # every answer wrong
    mixed = np.log(np.array([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4]]))  # two right, one wrong: AUROC defined
    y = np.array([0, 0, 1])
    units = [{"chat": mixed, "daca": right}, {"chat": mixed, "daca": wrong}, {"chat": mixed, "daca": wrong},
             {"chat": mixed, "daca": mixed}]
    with caplog.at_level(logging.WARNING):
        per_unit = [E._unit_metrics(u, y, 10) for u in units]
        agg = E.aggregate(per_unit)
    assert agg["daca"]["auroc"].n_undefined == 3 and agg["daca"]["auroc"].mean == 1.0
    assert agg["chat"]["auroc"].n_undefined == 0
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["DACA: AUROC is undefined on 3 of 4 units (every answer right on 1, every answer wrong on 2); "
                     "left out of its mean"]
    caplog.clear()
    with caplog.at_level(logging.WARNING):  # undefined everywhere; rows without accuracy give no split
        E.aggregate([{"x": {"auroc": float("nan")}}, {"x": {"auroc": float("nan")}}])
    assert [r.getMessage() for r in caplog.records] == [
        "x: AUROC is undefined on 2 of 2 units (every answer right or every answer wrong there); shown as n/a"]


def test_aurc_ties_equal_mean_over_tie_orders():
    # two tied questions, one right one wrong: orders give mean risks 0.25 and 0.75
    p = np.array([[0.8, 0.2], [0.8, 0.2]])
    assert M.aurc(p, np.array([0, 1])) == pytest.approx(0.5, rel=1e-15)


# ---------------------------------------------------------------------------------------------- cross-checks
def test_agrees_with_sklearn():
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    p, y = _random(2000, 4, seed=1)
    conf, correct = p.max(1), p.argmax(1) == y
    assert M.brier(p, y) == pytest.approx(brier_score_loss(correct, conf), rel=1e-12)
    assert M.brier_multiclass(p, y) == pytest.approx(brier_score_loss(y, p, labels=range(4)), rel=1e-12)
    assert M.nll(p, y) == pytest.approx(log_loss(y, p, labels=range(4)), rel=1e-12)
    assert M.auroc(p, y) == pytest.approx(roc_auc_score(correct, conf), rel=1e-12)
    # tied confidences (rounded to 0.1) exercise the half-credit rule
    pr = np.round(p, 1)
    pr[:, -1] = 1 - pr[:, :-1].sum(1)
    keep = (pr >= 0).all(1)
    pr, yr = pr[keep], y[keep]
    assert M.auroc(pr, yr) == pytest.approx(roc_auc_score(pr.argmax(1) == yr, pr.max(1)), rel=1e-12)


@pytest.mark.parametrize("n_bins", [5, 10, 15])
def test_ece_agrees_with_netcal(n_bins):
    from netcal.metrics import ECE

    p, y = _random(3000, 5, seed=n_bins, sharp=3.0)
    conf = p.max(1)
    edges = np.linspace(0, 1, n_bins + 1)
    # netcal clips confidences to (1e-14, 1 - 1e-14) and uses histogramdd; the conventions agree off the edges
    assert np.abs(conf[:, None] - edges[None, :]).min() > 1e-9
    assert M.ece(p, y, n_bins=n_bins) == pytest.approx(ECE(n_bins).measure(p, y), rel=1e-12)


def test_uniform_bins_match_numpy_histogram():
    p, y = _random(1000, 3, seed=3)
    p = np.vstack([p, [[1.0, 0.0, 0.0]], [[0.5, 0.5, 0.0]]])
    y = np.r_[y, 0, 1]
    bins = M.reliability_bins(p, y, n_bins=10)
    counts, edges = np.histogram(p.max(1), bins=10, range=(0, 1))
    np.testing.assert_array_equal(bins.counts, counts)
    np.testing.assert_array_equal(bins.edges, edges)


def test_aurc_matches_geifman_definition_without_ties():
    p, y = _random(500, 4, seed=4)
    conf, err = p.max(1), (p.argmax(1) != y).astype(float)
    assert len(np.unique(conf)) == len(conf)
    e = err[np.argsort(-conf)]
    expected = np.mean(np.cumsum(e) / np.arange(1, len(e) + 1))
    assert M.aurc(p, y) == pytest.approx(expected, rel=1e-12)


def test_evaluate_matches_individual_functions():
    p, y = _random(300, 4, seed=5)
    out = M.evaluate(p, y, n_bins=15)
    assert set(out) == {"ece", "mce", "aece", "brier", "brier_multiclass", "nll", "accuracy", "auroc", "aurc",
                        "smooth_ece", "classwise_ece", "debiased_ece", "brier_reliability", "brier_resolution",
                        "brier_uncertainty"}
    assert list(out) == list(M.METRICS)
    assert out["ece"] == M.ece(p, y, n_bins=15)
    assert out["aece"] == M.aece(p, y, n_bins=15)
    assert out["nll"] == M.nll(p, y)
    assert all(isinstance(v, float) for v in out.values())


# ---------------------------------------------------------------------------------------------- properties
@st.composite
def prob_data(draw, ties: bool = False):
    n = draw(st.integers(1, 40))
    k = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if ties:  # few distinct rows -> many tied confidences
        base = rng.dirichlet(np.ones(k), size=3)
        p = base[rng.integers(0, 3, n)]
    else:
        p = rng.dirichlet(np.ones(k) * draw(st.sampled_from([0.2, 1.0, 5.0])), size=n)
    return p, rng.integers(0, k, n)


@settings(max_examples=60, deadline=None)
@given(prob_data())
def test_properties(data):
    p, y = data
    e, m, a = M.ece(p, y), M.mce(p, y), M.aece(p, y)
    assert 0 <= e <= m + 1e-15 <= 1 + 1e-15 and 0 <= a <= 1
    assert 0 <= M.brier(p, y) <= 1 and 0 <= M.brier_multiclass(p, y) <= 2
    assert M.reliability_bins(p, y, strategy="quantile").n == len(y)
    perm = np.random.default_rng(0).permutation(len(y))
    for fn in (M.ece, M.mce, M.brier, M.nll, M.aurc, M.accuracy):
        assert fn(p[perm], y[perm]) == pytest.approx(fn(p, y), rel=1e-12, abs=1e-15)
    # the paper's Brier is the mean squared gap; ECE with one bin is the gap of the means
    conf, corr = p.max(1), (p.argmax(1) == y)
    assert M.ece(p, y, n_bins=1) == pytest.approx(abs(conf.mean() - corr.mean()), rel=1e-12, abs=1e-15)


@settings(max_examples=40, deadline=None)
@given(prob_data(ties=True))
def test_aurc_is_mean_over_all_tie_orders(data):
    p, y = data
    p, y = p[:7], y[:7]  # 7! orders at most
    conf, err = p.max(1), (p.argmax(1) != y).astype(float)
    n = len(y)
    vals = []
    for perm in itertools.permutations(range(n)):
        perm = np.array(perm)
        order = perm[np.argsort(-conf[perm], kind="stable")]
        vals.append(np.mean(np.cumsum(err[order]) / np.arange(1, n + 1)))
    assert M.aurc(p, y) == pytest.approx(np.mean(vals), rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_is_seeded_and_matches_binomial_width():
    p, y = _random(2000, 4, seed=6)
    a = M.bootstrap_ci(M.accuracy, p, y, n_boot=1000, seed=7)
    assert a == M.bootstrap_ci("accuracy", p, y, n_boot=1000, seed=7)
    assert a != M.bootstrap_ci("accuracy", p, y, n_boot=1000, seed=8)
    assert a.estimate == M.accuracy(p, y) and a.low < a.estimate < a.high
    half = 1.959964 * math.sqrt(a.estimate * (1 - a.estimate) / len(y))
    # Monte-Carlo noise of 1000 resamples moves each quantile by a few percent of the width: 15 % slack
    assert (a.high - a.low) / 2 == pytest.approx(half, rel=0.15)


def test_bootstrap_of_constant_metric_is_degenerate():
    p = np.tile([[0.7, 0.3]], (50, 1))
    ci = M.bootstrap_ci(M.ece, p, np.zeros(50, int), n_boot=50, seed=0)
    assert ci == (pytest.approx(0.3), pytest.approx(0.3), pytest.approx(0.3))


def test_bootstrap_nll_from_log_probabilities_uses_the_same_resamples():
    p, y = _random(300, 4, seed=3)
    lp = np.log(p)
    a, b = M.bootstrap_nll_ci(lp, y, n_boot=400, seed=5), M.bootstrap_ci(M.nll, p, y, n_boot=400, seed=5)
    assert a == (pytest.approx(b.estimate, rel=1e-12), pytest.approx(b.low, rel=1e-12), pytest.approx(b.high, rel=1e-12))
    assert M.nll_from_log_proba(lp, y) == pytest.approx(M.nll(p, y), rel=1e-12)


def test_bootstrap_nll_is_finite_when_probabilities_underflow():
    # log-probability -800 of the true option: exp() gives 0, so the NLL of probabilities is infinite
    lp = np.log(np.tile([[0.5, 0.5]], (20, 1)))
    lp[0] = [0.0, -800.0]
    y = np.zeros(20, int)
    y[0] = 1
    ci = M.bootstrap_nll_ci(lp, y, n_boot=200, seed=0)
    assert ci.estimate == pytest.approx((800 + 19 * np.log(2)) / 20) and np.isfinite([ci.low, ci.high]).all()
    assert ci.low <= ci.estimate <= ci.high
    with pytest.raises(InputError, match="log-probabilities"):
        M.bootstrap_nll_ci(np.array([[0.2, 0.8]]), np.array([0]))


def test_bootstrap_with_infinite_values_warns_nothing(recwarn):
    p = np.tile([[1.0, 0.0]], (30, 1))
    y = np.zeros(30, int)
    y[:3] = 1  # three questions with probability 0 on the true option: every resample's NLL is inf or finite
    with np.errstate(all="raise"):
        ci = M.bootstrap_ci(M.nll, p, y, n_boot=300, seed=1)
    assert ci.estimate == ci.high == np.inf and ci.low <= ci.high
    assert not [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]
    from refcal.metrics.bootstrap import _quantiles

    assert _quantiles(np.array([1.0, 2.0, np.inf, np.inf]), (0.0, 0.5, 0.9, 1.0)) == [1.0, np.inf, np.inf, np.inf]


# ---------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.array([0.5, 0.5]), np.array([0]), "shape"),
        (np.array([[0.5, 0.5]]), np.array([0, 1]), "labels must have shape"),
        (np.array([[0.5, 0.5]]), np.array([2]), "only 2 options"),
        (np.array([[0.5, 0.5]]), np.array([-1]), "need a label"),
        (np.array([[0.5, 0.5]]), np.array([0.5]), "integer"),
        (np.array([[np.nan, 0.5]]), np.array([0]), "NaN"),
        (np.array([[0.6, 0.6]]), np.array([0]), "sums to 1.2"),
        (np.array([[2.0, -1.0]]), np.array([0]), "outside"),
        (np.array([["a", "b"]]), np.array([0]), "real numbers"),
    ],
)
def test_input_errors(probs, labels, match):
    with pytest.raises(InputError, match=match):
        M.ece(probs, labels)


def test_option_errors():
    with pytest.raises(InputError, match="n_bins"):
        M.ece(P, Y, n_bins=0)
    with pytest.raises(InputError, match="strategy"):
        M.reliability_bins(P, Y, strategy="equal")
    with pytest.raises(InputError, match="thresholds"):
        M.selective_accuracy(P, Y, thresholds=[])
    with pytest.raises(InputError, match="unknown metric"):
        M.bootstrap_ci("eec", P, Y)
    with pytest.raises(InputError, match="alpha"):
        M.bootstrap_ci("ece", P, Y, alpha=1.5)
