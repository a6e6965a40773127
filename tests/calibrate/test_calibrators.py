"""Fits of the calibrators: known answers, independent implementations, invariances."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import brentq, minimize_scalar
from scipy.special import log_softmax as sp_log_softmax
from scipy.special import softmax as sp_softmax

from refcal.calibrate import (
    DACA,
    CalibrationWarning,
    MatrixScaling,
    NaiveAlignment,
    TemperatureScaling,
    VectorScaling,
    agreement_diagnostics,
)
from refcal.calibrate._solvers import affine_objective
from refcal.errors import FitError


def ragged(x: np.ndarray, rng: np.random.Generator, frac: float = 0.3) -> np.ndarray:
    """Drop the last option of a random ``frac`` of the rows (-inf padding)."""
    x = x.copy()
    x[rng.random(x.shape[0]) < frac, -1] = -np.inf
    return x


def kl_objective(f: np.ndarray, g: np.ndarray, tau: float, mask: np.ndarray) -> float:
    """Independent DACA objective: mean over all rows of m * KL(softmax f || softmax(g / tau)) (scipy)."""
    logp, logq = sp_log_softmax(f, axis=1), sp_log_softmax(g / tau, axis=1)
    p = np.exp(logp)
    terms = np.where(p > 0, p * (np.where(p > 0, logp, 0) - np.where(p > 0, logq, 0)), 0.0)
    return float(np.sum(mask * terms.sum(axis=1)) / f.shape[0])


@pytest.fixture
def pair() -> tuple[np.ndarray, np.ndarray]:
    """Base and over-confident chat logits with ~75 % agreement, 5 options, some rows with 4."""
    rng = np.random.default_rng(0)
    f = ragged(rng.normal(scale=1.5, size=(400, 5)), rng)
    g = 2.5 * (f + rng.normal(scale=0.7, size=f.shape))
    return f, g


# ---------------------------------------------------------------------------------------- temperature
@pytest.mark.parametrize("tau", [3.0, 0.4])
def test_daca_recovers_generating_temperature(tau: float) -> None:
    # base probabilities are exactly softmax(g / tau) -> the KL optimum is 0 at tau.
    rng = np.random.default_rng(1)
    g = ragged(rng.normal(scale=2.0, size=(500, 4)), rng)
    cal = DACA().fit(g / tau, g)
    assert cal.n_agree_ == 500
    assert cal.temperature_ == pytest.approx(tau, rel=1e-12)
    assert cal.converged_ and cal.at_bound_ is None
    assert cal.n_iter_ <= 12
    assert abs(cal.objective_) < 1e-14


def test_daca_ignores_disagreement_rows_naive_does_not() -> None:
    rng = np.random.default_rng(2)
    g = rng.normal(scale=2.0, size=(300, 4))
    f = g / 3.0
    # Disagreement rows: the base model prefers a different option than the chat model.
    g_dis = rng.normal(scale=2.0, size=(200, 4))
    f_dis = np.roll(g_dis, 1, axis=1) / 3.0
    f_dis[np.argmax(f_dis, 1) == np.argmax(g_dis, 1)] = 0.0  # flat rows; see the mask check below
    F, G = np.vstack([f, f_dis]), np.vstack([g, g_dis])
    mask = np.argmax(F, 1) == np.argmax(G, 1)
    assert mask[:300].all() and not mask[300:].any()

    daca = DACA().fit(F, G)
    assert daca.n_agree_ == 300 and daca.agreement_rate_ == pytest.approx(0.6)
    assert daca.temperature_ == pytest.approx(3.0, rel=1e-12)
    naive = NaiveAlignment().fit(F, G)
    assert naive.n_agree_ == 300  # reported, not used
    assert naive.temperature_ > 3.3  # disagreements flatten the naive fit (the paper's failure mode)


def test_temperature_matches_independent_optimisers(pair) -> None:
    f, g = pair
    cal = DACA().fit(f, g)
    mask = np.argmax(f, 1) == np.argmax(g, 1)

    # 1-D minimiser on log tau: resolves the minimiser only to ~sqrt(machine eps) of the objective's
    # curvature scale, hence rel=1e-6 here; the root of the derivative below is checked tightly.
    res = minimize_scalar(lambda u: kl_objective(f, g, np.exp(u), mask), bounds=(-5, 5), method="bounded",
                          options={"xatol": 1e-12})
    assert cal.temperature_ == pytest.approx(np.exp(res.x), rel=1e-6)
    assert cal.objective_ == pytest.approx(kl_objective(f, g, cal.temperature_, mask), rel=1e-12)
    assert cal.objective_ <= res.fun + 1e-15

    def dobj(beta: float) -> float:  # d/dbeta of the CE, written independently with scipy's softmax
        gm = np.where(np.isinf(g), 0.0, g)
        q, p = sp_softmax(beta * g, axis=1), sp_softmax(f, axis=1)
        return float(np.sum(mask * ((q - p) * gm).sum(axis=1)))

    beta = brentq(dobj, 0.01, 10, xtol=1e-15, rtol=4 * np.finfo(float).eps)
    assert cal.temperature_ == pytest.approx(1 / beta, rel=1e-12)


def test_temperature_scaling_matches_independent_nll(pair) -> None:
    _, g = pair
    rng = np.random.default_rng(3)
    probs = sp_softmax(np.where(np.isinf(g), -np.inf, g / 4.0), axis=1)
    y = np.array([rng.choice(g.shape[1], p=p) for p in probs])
    cal = TemperatureScaling().fit(g, y)

    def nll(tau: float) -> float:
        return float(-np.mean(sp_log_softmax(g / tau, axis=1)[np.arange(len(y)), y]))

    res = minimize_scalar(lambda u: nll(np.exp(u)), bounds=(-5, 5), method="bounded", options={"xatol": 1e-12})
    assert cal.temperature_ == pytest.approx(np.exp(res.x), rel=1e-6)  # 1-D minimiser precision, see above
    assert cal.objective_ == pytest.approx(nll(cal.temperature_), rel=1e-12)


def test_weights_duplicates_and_weight_two_agree(pair) -> None:
    f, g = pair
    plain = DACA().fit(f, g)
    dup = DACA().fit(np.vstack([f, f]), np.vstack([g, g]))
    w2 = DACA().fit(f, g, sample_weight=np.full(len(f), 2.0))
    assert dup.temperature_ == pytest.approx(plain.temperature_, rel=1e-13)
    assert w2.temperature_ == pytest.approx(plain.temperature_, rel=1e-13)
    # Weight 2 on the first half == that half duplicated.
    h = len(f) // 2
    w = np.r_[np.full(h, 2.0), np.ones(len(f) - h)]
    a = DACA("vector").fit(f, g, sample_weight=w)
    b = DACA("vector").fit(np.vstack([f, f[:h]]), np.vstack([g, g[:h]]))
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-6)  # L-BFGS stops at gtol, not at rounding
    zero = DACA().fit(f, g, sample_weight=np.r_[np.ones(h), np.zeros(len(f) - h)])
    assert zero.temperature_ == pytest.approx(DACA().fit(f[:h], g[:h]).temperature_, rel=1e-13)


def test_flat_base_hits_upper_bound_cleanly() -> None:
    g = np.random.default_rng(4).normal(size=(50, 4))
    with pytest.warns(CalibrationWarning, match="upper bound"):
        cal = DACA().fit(np.zeros_like(g), g)
    assert cal.at_bound_ == "max_temperature" and cal.temperature_ == 1e4
    with pytest.raises(FitError, match="upper bound"):
        DACA(on_bound="raise").fit(np.zeros_like(g), g)


def test_perfect_labels_hit_lower_bound() -> None:
    g = np.random.default_rng(5).normal(size=(50, 3))
    with pytest.warns(CalibrationWarning, match="lower bound"):
        cal = TemperatureScaling(temperature_bounds=(0.01, 100)).fit(g, np.argmax(g, 1))
    assert cal.at_bound_ == "min_temperature" and cal.temperature_ == 0.01


def test_no_agreement_is_a_fit_error() -> None:
    g = np.eye(3)[[0, 1, 2]]
    with pytest.raises(FitError, match="no question where base and chat pick the same answer"):
        DACA().fit(np.roll(g, 1, axis=1), g)
    f = 0.5 * g + 0.6 * np.roll(g, 1, axis=1)  # argmax moved, but still informative about g
    naive = NaiveAlignment().fit(f, g)  # the naive baseline does not need agreement
    assert naive.n_agree_ == 0 and naive.at_bound_ is None


def test_tied_chat_logits_leave_temperature_undetermined() -> None:
    f = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    g = np.array([[2.0, 2.0, 2.0], [0.0, 1.0, 0.0]])  # row 0 agrees (tie -> index 0) but is flat
    with pytest.raises(FitError, match="tied scores"):
        DACA().fit(f[:1], g[:1])
    assert DACA().fit(f, g).n_agree_ == 2  # one informative row is enough


# ---------------------------------------------------------------------------------------- vector / matrix
@pytest.mark.parametrize("scaling", ["vector", "matrix"])
@pytest.mark.parametrize("target", ["soft", "onehot"])
def test_affine_gradient_matches_finite_differences(pair, scaling: str, target: str) -> None:
    f, g = pair
    rng = np.random.default_rng(6)
    logp = sp_log_softmax(f, axis=1)
    if target == "onehot":
        logp = np.where(np.arange(5) == np.argmax(f, 1)[:, None], 0.0, -np.inf)
    omega = rng.random(len(f)) / len(f)
    fun = affine_objective(logp, g, omega, scaling=scaling, l2=0.3)
    k = g.shape[1]
    theta = rng.normal(scale=0.3, size=k + k if scaling == "vector" else k * k + k)
    theta[: k if scaling == "vector" else k * k] += 1.0 if scaling == "vector" else np.eye(k).ravel()
    _, grad = fun(theta)
    h, num = 1e-6, np.empty_like(theta)
    for i in range(theta.size):
        e = np.zeros_like(theta)
        e[i] = h
        num[i] = (fun(theta + e)[0] - fun(theta - e)[0]) / (2 * h)
    # central differences: truncation ~h^2 * f''' and rounding ~eps * |f| / h, both ~1e-10 here
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("scaling", ["vector", "matrix"])
def test_affine_keeps_missing_options_missing(pair, scaling: str) -> None:
    f, g = pair
    cal = DACA(scaling).fit(f, g)
    assert cal.converged_
    proba = cal.predict_proba(g)
    missing = np.isinf(g)
    assert np.all(proba[missing] == 0.0)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    assert np.all(cal.transform(g)[missing] == -np.inf)


def test_affine_fits_improve_on_temperature_and_identity_start(pair) -> None:
    f, g = pair
    t, v, m = (DACA(s).fit(f, g) for s in ("temperature", "vector", "matrix"))
    # Nested families: matrix >= vector >= temperature in fit quality (up to solver tolerance).
    assert m.objective_ <= v.objective_ + 1e-12 <= t.objective_ + 2e-12
    # Strong L2 pins vector scaling to the identity.
    strong = DACA("vector", l2=1e8).fit(f, g)
    np.testing.assert_allclose(strong.coef_, 1.0, atol=1e-7)
    np.testing.assert_allclose(strong.intercept_, 0.0, atol=1e-7)


def test_vector_scaling_is_permutation_equivariant() -> None:
    rng = np.random.default_rng(7)
    f = rng.normal(size=(300, 4)) * np.array([1.0, 2.0, 0.5, 1.5])
    g = 2.0 * f + rng.normal(scale=0.5, size=f.shape)
    perm = np.array([2, 0, 3, 1])
    a = DACA("vector").fit(f, g)
    b = DACA("vector").fit(f[:, perm], g[:, perm])
    np.testing.assert_allclose(b.coef_, a.coef_[perm], rtol=1e-6)  # L-BFGS gtol, not rounding
    np.testing.assert_allclose(b.intercept_, a.intercept_[perm], atol=1e-6)


def test_matrix_scaling_matches_multinomial_logistic_regression() -> None:
    # Unpenalised matrix scaling IS multinomial logistic regression on the logits: the predicted
    # probabilities must agree (the parameters are identifiable only up to a shift).
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(8)
    g = rng.normal(scale=2.0, size=(600, 3))
    y = np.array([rng.choice(3, p=p) for p in sp_softmax(g / 2.0 + [0.3, 0.0, -0.3], axis=1)])
    ours = MatrixScaling().fit(g, y)
    ref = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(g, y)
    np.testing.assert_allclose(ours.predict_proba(g), ref.predict_proba(g), atol=1e-6)  # sklearn's tol


def test_vector_scaling_labelled_is_stationary() -> None:
    rng = np.random.default_rng(9)
    g = rng.normal(scale=2.0, size=(4000, 4))
    y = (rng.random(4000)[:, None] > np.cumsum(sp_softmax(g * [0.3, 0.5, 0.7, 0.4], axis=1), axis=1)).sum(1)
    cal = VectorScaling().fit(g, y)
    onehot = np.where(np.arange(4) == y[:, None], 0.0, -np.inf)
    _, grad = affine_objective(onehot, g, np.full(4000, 1 / 4000), scaling="vector", l2=0.0)(
        np.r_[cal.coef_, cal.intercept_])
    assert np.max(np.abs(grad)) < 1e-8
    np.testing.assert_allclose(cal.coef_, [0.3, 0.5, 0.7, 0.4], atol=0.08)  # sampling noise of 4000 labels (~3 s.e.)


# ---------------------------------------------------------------------------------------- diagnostics
def test_agreement_diagnostics_hand_computed() -> None:
    f = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    g = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [5.0, 5.0]])
    y = np.array([0, 1, 0, 1])
    d = agreement_diagnostics(f, g, y)
    s = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731 - max softmax prob of two options with gap x
    assert (d["n"], d["n_agree"], d["agreement_rate"]) == (4, 2, 0.5)  # rows 0 and 3 (tie -> index 0)
    assert d["agree"] == pytest.approx({"n": 2, "chat_accuracy": 0.5, "chat_confidence": (s(1) + 0.5) / 2,
                                        "base_accuracy": 0.5, "base_confidence": (s(2) + 0.5) / 2})
    assert d["disagree"] == pytest.approx({"n": 2, "chat_accuracy": 0.0, "chat_confidence": (s(3) + s(2)) / 2,
                                           "base_accuracy": 1.0, "base_confidence": (s(1) + s(1)) / 2})
    partial = agreement_diagnostics(f, g, np.array([0, -1, 0, 1]))
    assert "chat_accuracy" not in partial["agree"] and "base_confidence" in partial["agree"]
    none = agreement_diagnostics(f[:1], g[:1])
    assert none["disagree"] == {"n": 0, "chat_confidence": None, "base_confidence": None}


def test_fit_emits_no_warning_on_clean_data(pair) -> None:
    f, g = pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for cal in (DACA(), DACA("vector"), DACA("matrix"), NaiveAlignment()):
            cal.fit(f, g).predict_proba(g)
