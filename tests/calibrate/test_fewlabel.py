"""Few-label calibrators: cross-checks against scikit-learn (Platt, isotonic), hand-computed histogram bins,
DACA + k labels (k = 0 is DACA, label use, recovery of the true temperature), JSON round trips."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from refcal import load_calibrator, metrics
from refcal.calibrate import (
    DACA,
    DACAWithLabels,
    HistogramBinning,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
)
from refcal.calibrate.fewlabel import top_label_inputs
from refcal.errors import CalibratorFileError, InputError, NotFittedError
from refcal.synthetic import make_synthetic

MAPS = (PlattScaling, IsotonicCalibration, HistogramBinning)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(1500, 4, chat_temperature=2.5, n_mc=64, seed=3)


# ---------------------------------------------------------------------------------------------- cross-checks
def test_platt_matches_scikit_learns_sigmoid_calibration(data):
    """scikit-learn's ``_sigmoid_calibration`` (used by CalibratedClassifierCV(method="sigmoid")) fits
    P = 1 / (1 + exp(A f + B)) with the same Platt targets: a = -A, b = -B. Its L-BFGS stops at a gradient
    tolerance, ours at Newton's 1e-12, hence 1e-5."""
    from sklearn.calibration import _sigmoid_calibration

    g, y = data.chat[:200], data.labels[:200]
    cal = PlattScaling().fit(g, y)
    _, a, _, z = top_label_inputs(g)
    big_a, big_b = _sigmoid_calibration(z, (a == y).astype(int))
    assert cal.a_ == pytest.approx(-big_a, abs=1e-5) and cal.b_ == pytest.approx(-big_b, abs=1e-5)


def test_isotonic_matches_scikit_learn(data):
    from sklearn.isotonic import IsotonicRegression

    g, y = data.chat[:300], data.labels[:300]
    _, a, conf, _ = top_label_inputs(g)
    conf_tied = np.round(conf, 2)  # ties, pooled by both
    ref = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(conf_tied, (a == y).astype(float))
    cal = IsotonicCalibration()
    cal._check_params()
    cal._fit_map(conf_tied, None, (a == y).astype(float))
    cal.n_ = 300
    grid = np.linspace(0, 1, 1001)
    np.testing.assert_allclose(cal.confidence_map(grid), ref.predict(grid), rtol=0, atol=1e-12)
    full = IsotonicCalibration().fit(g, y)
    ref2 = IsotonicRegression(out_of_bounds="clip").fit(conf, (a == y).astype(float))
    np.testing.assert_allclose(full.confidence_map(grid), ref2.predict(grid), rtol=0, atol=1e-12)


def test_histogram_binning_equals_hand_computed_bin_accuracies(data):
    g, y = data.chat[:103], data.labels[:103]
    _, a, conf, _ = top_label_inputs(g)
    correct = (a == y).astype(float)
    cal = HistogramBinning(n_bins=10, min_per_bin=5).fit(g, y)
    order = np.argsort(conf, kind="stable")
    groups = np.array_split(order, 10)
    assert cal.counts_.tolist() == [len(gr) for gr in groups]
    np.testing.assert_allclose(cal.values_, [correct[gr].mean() for gr in groups], rtol=0, atol=1e-15)
    np.testing.assert_allclose(cal.confidence_map(conf[groups[3]]), correct[groups[3]].mean(), atol=1e-15)
    # few labels: at most n // min_per_bin bins
    assert HistogramBinning(n_bins=10, min_per_bin=5).fit(g[:12], y[:12]).counts_.size == 2
    # equal width: the same bins as the reliability diagram's
    uni = HistogramBinning(n_bins=10, strategy="uniform").fit(g, y)
    bins = metrics.reliability_bins(np.exp(top_label_inputs(g)[0]), y, n_bins=10)
    ok = bins.counts > 0
    np.testing.assert_allclose(uni.values_[ok], bins.accuracy[ok], atol=1e-15)


# ---------------------------------------------------------------------------------------------- behaviour
@pytest.mark.parametrize("cls", MAPS)
def test_top_label_maps_keep_the_answer_and_normalise(cls, data):
    cal = cls().fit(data.chat[:100], data.labels[:100])
    lp = cal.predict_log_proba(data.chat)
    np.testing.assert_allclose(np.exp(lp).sum(1), 1, atol=1e-12)
    assert (lp.argmax(1) == data.chat.argmax(1)).all()
    conf = np.exp(lp.max(1))
    assert (conf >= 1e-3).all() and (conf <= 1 - 1e-3 + 1e-15).all()
    # the other options keep their ratios
    p, q = np.exp(top_label_inputs(data.chat)[0]), np.exp(lp)
    i = 7
    others = [j for j in range(4) if j != p[i].argmax()]
    np.testing.assert_allclose(q[i, others] / q[i, others].sum(), p[i, others] / p[i, others].sum(), rtol=1e-9)


@pytest.mark.parametrize("cls", MAPS)
def test_few_label_maps_improve_ece_on_overconfident_data(cls, data):
    cal = cls().fit(data.chat[:250], data.labels[:250])
    test, yt = data.chat[250:], data.labels[250:]
    before = metrics.ece(np.exp(top_label_inputs(test)[0]), yt)
    after = metrics.ece(cal.predict_proba(test), yt)
    assert after < before / 2


@pytest.mark.parametrize("cls", [*MAPS, DACAWithLabels])
def test_json_round_trip_and_loader(cls, data, tmp_path):
    y = data.labels[:80]
    cal = cls().fit(data.base[:80], data.chat[:80], y) if cls is DACAWithLabels else cls().fit(data.chat[:80], y)
    path = tmp_path / "cal.json"
    cal.save(path, inputs={"k": 80})
    back = load_calibrator(path)
    assert type(back) is cls
    np.testing.assert_array_equal(back.predict_log_proba(data.chat), cal.predict_log_proba(data.chat))
    assert back.to_dict(inputs={"k": 80}) == json.loads(path.read_text())
    doc = json.loads(path.read_text())
    key = next(iter(doc["parameters"]))
    doc["parameters"][key] = "x"
    path.write_text(json.dumps(doc))
    with pytest.raises(CalibratorFileError, match="malformed"):
        load_calibrator(path)


@pytest.mark.parametrize("cls", MAPS)
def test_errors(cls, data):
    with pytest.raises(NotFittedError):
        cls().predict_log_proba(data.chat)
    with pytest.raises(InputError, match="unknown"):
        cls().fit(data.chat[:5], np.array([0, 1, -1, 2, 0]))
    with pytest.raises(InputError, match="eps"):
        cls(eps=0.7).fit(data.chat[:5], data.labels[:5])


# ---------------------------------------------------------------------------------------------- DACA + k
def test_daca_k_with_no_label_is_daca(data):
    none = np.full(len(data.labels), -1)
    cal = DACAWithLabels().fit(data.base, data.chat, none)
    assert cal.temperature_ == DACA().fit(data.base, data.chat).temperature_
    assert cal.prior_sd_ is None and cal.n_labels_ == 0


def test_daca_k_reads_the_labels_it_is_given(data):
    """Its own labels count (changing three of them moves the fit); which labels it may read is decided by
    the caller (``refcal.run.budget`` masks the undrawn ones: its label-use test is in tests/run)."""
    rng = np.random.default_rng(0)
    labelled = rng.choice(len(data.labels), 25, replace=False)
    y = np.full(len(data.labels), -1)
    y[labelled] = data.labels[labelled]
    ref = DACAWithLabels().fit(data.base, data.chat, y)
    y3 = y.copy()
    y3[labelled[:3]] = (y3[labelled[:3]] + 1) % 4
    assert DACAWithLabels().fit(data.base, data.chat, y3).temperature_ != ref.temperature_
    assert ref.n_labels_ == 25 and ref.prior_sd_ > 0 and np.isfinite(ref.log_evidence_)


def test_daca_k_moves_from_daca_towards_labelled_ts_as_k_grows():
    """A base model over-confident by 2x (DACA inherits it) and a chat model whose true temperature is 3:
    with more labels the fit leaves DACA's temperature for the labelled one."""
    from refcal.synthetic import make_world

    d = make_world("overconfident-base", 3000, 4, chat_temperature=3.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_daca = DACA().fit(d.base, d.chat).temperature_
        t_ts = TemperatureScaling().fit(d.chat, d.labels).temperature_
    assert abs(t_ts - 3.0) < 0.3 and abs(t_daca - t_ts) > 0.5
    for width in ("average", "evidence"):
        gaps = []
        for k in (0, 10, 100, 3000):
            y = np.full(3000, -1)
            y[:k] = d.labels[:k]
            gaps.append(abs(DACAWithLabels(width=width).fit(d.base, d.chat, y).temperature_ - t_ts))
        assert gaps[0] > gaps[2] and gaps[-1] < 0.05 * t_ts, width


def test_daca_k_fixed_prior_width_is_the_map_of_its_posterior(data):
    """With a given width s, the temperature minimises NLL(beta) + (beta - beta_0)^2 / (2 s^2) (checked by a
    dense grid), and a tiny width keeps DACA's temperature."""
    from refcal.metrics import nll_from_log_proba

    y = np.full(len(data.labels), -1)
    y[:40] = data.labels[:40]
    cal = DACAWithLabels(prior_sd=0.05).fit(data.base, data.chat, y)
    beta0 = 1 / cal.prior_temperature_
    betas = np.linspace(beta0 - 0.3, beta0 + 0.3, 6001)
    from refcal._math import log_softmax

    obj = [40 * nll_from_log_proba(log_softmax(b * data.chat[:40]), data.labels[:40]) + (b - beta0) ** 2 / (2 * 0.05**2)
           for b in betas]
    assert 1 / cal.temperature_ == pytest.approx(betas[int(np.argmin(obj))], abs=2e-4)  # grid step 1e-4
    tight = DACAWithLabels(prior_sd=1e-9).fit(data.base, data.chat, y)
    assert tight.temperature_ == pytest.approx(tight.prior_temperature_, rel=1e-6)


def test_daca_k_refuses_bad_input(data):
    with pytest.raises(InputError, match="prior_sd"):
        DACAWithLabels(prior_sd=-1).fit(data.base, data.chat, data.labels)
    with pytest.raises(InputError, match="labels"):
        DACAWithLabels().fit(data.base, data.chat, np.full(len(data.labels), 9))
    with pytest.raises(InputError, match="width"):
        DACAWithLabels(width="max").fit(data.base, data.chat, data.labels)


@pytest.mark.parametrize("cls", MAPS)
def test_top_label_maps_keep_the_answer_on_any_logits(cls, data):
    """Property: on arbitrary logits (missing options, near-ties, huge gaps) the calibrated rows are
    distributions whose argmax is the chat model's answer."""
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from hypothesis.extra.numpy import arrays

    cal = cls().fit(data.chat[:60], data.labels[:60])
    finite = st.floats(-60, 60, allow_nan=False)

    @settings(max_examples=150, deadline=None)
    @given(arrays(np.float64, (5, 4), elements=st.one_of(finite, st.just(-np.inf))))
    def check(g):
        few = np.isfinite(g).sum(axis=1) < 2  # a question needs two options (check_logits)
        g[few, :2] = np.where(np.isfinite(g[few, :2]), g[few, :2], -1.0)
        lp = cal.predict_log_proba(g)
        assert np.allclose(np.exp(lp).sum(1), 1, atol=1e-9)
        assert (lp.argmax(1) == g.argmax(1)).all()
        assert (np.isneginf(lp) == np.isneginf(g)).all()  # a missing option stays missing

    check()
