"""Property tests (hypothesis) of the calibrators on random, ragged logits."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.special import log_softmax as sp_log_softmax

from refcal.calibrate import DACA, CalibrationWarning, MatrixScaling, NaiveAlignment, VectorScaling

finite = st.floats(-8, 8, allow_nan=False, width=64)


@st.composite
def logit_pairs(draw) -> tuple[np.ndarray, np.ndarray]:
    """Base and chat logits (n, k) sharing a random -inf pattern (every row keeps >= 2 options)."""
    n, k = draw(st.integers(2, 25)), draw(st.integers(2, 5))
    f = draw(hnp.arrays(np.float64, (n, k), elements=finite))
    noise = draw(hnp.arrays(np.float64, (n, k), elements=finite))
    scale = draw(st.floats(0.2, 5.0))
    g = scale * (f + draw(st.floats(0, 1)) * noise)
    drop = draw(hnp.arrays(np.bool_, (n, k)))
    # keep at least two options per row (a question with one option is refused)
    drop[np.arange(n), np.argmax(f, 1)] = False
    drop[(~drop).sum(axis=1) < 2] = False
    f[drop], g[drop] = -np.inf, -np.inf
    return f, g


def informative(g: np.ndarray) -> bool:
    """Some row has a resolvable spread of its present options (else the temperature is undetermined)."""
    present = np.where(np.isinf(g), g.max(axis=1, keepdims=True), g)
    return bool(np.any(np.ptp(present, axis=1) > 1e-3))


def quiet_fit(cal, *args):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CalibrationWarning)
        return cal.fit(*args)


def objective(f: np.ndarray, g: np.ndarray, tau: float) -> float:
    """Independent DACA objective (see tests/calibrate/test_calibrators.py)."""
    m = np.argmax(f, 1) == np.argmax(g, 1)
    logp, logq = sp_log_softmax(f, axis=1), sp_log_softmax(g / tau, axis=1)
    p = np.exp(logp)
    t = np.where(p > 0, p * (np.where(p > 0, logp, 0) - np.where(p > 0, logq, 0)), 0)
    return float(np.sum(m * t.sum(1)) / len(f))


SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(logit_pairs())
def test_daca_temperature_is_the_minimum(pair) -> None:
    f, g = pair
    agree = np.argmax(f, 1) == np.argmax(g, 1)
    assume(informative(g[agree]))
    cal = quiet_fit(DACA(), f, g)
    assert cal.converged_
    tau = cal.temperature_
    best = objective(f, g, tau)
    assert cal.objective_ == pytest.approx(best, rel=1e-9, abs=1e-13)
    for step in (1e-3, 1e-1):
        for t in (tau * (1 + step), tau / (1 + step)):
            if cal.temperature_bounds[0] <= t <= cal.temperature_bounds[1]:
                assert objective(f, g, t) >= best - 1e-13  # rounding of a sum of O(1) terms


@SETTINGS
@given(logit_pairs(), st.floats(-50, 50), st.floats(0.1, 10))
def test_temperature_invariances(pair, shift: float, scale: float) -> None:
    f, g = pair
    agree = np.argmax(f, 1) == np.argmax(g, 1)
    assume(informative(g[agree]))
    # Rounding of the shift may break an exact tie and change the agreement mask: a different problem.
    assume(np.array_equal(agree, np.argmax(f + shift, 1) == np.argmax(g - shift, 1)))
    cal = quiet_fit(DACA(), f, g)
    assume(cal.at_bound_ is None)
    # Shifting rows of either model changes no softmax: same temperature (up to the rounding of L' / L'').
    assert quiet_fit(DACA(), f + shift, g - shift).temperature_ == pytest.approx(cal.temperature_, rel=1e-8)
    # Scaling the chat logits scales the temperature.
    scaled = quiet_fit(DACA(), f, g * scale)
    if scaled.at_bound_ is None:
        assert scaled.temperature_ == pytest.approx(cal.temperature_ * scale, rel=1e-8)
    # Row order does not matter.
    perm = np.random.default_rng(0).permutation(len(f))
    # Summation order changes L' by rounding; the root moves by that / L'' (small for near-flat data).
    assert quiet_fit(DACA(), f[perm], g[perm]).temperature_ == pytest.approx(cal.temperature_, rel=1e-8)


@SETTINGS
@given(logit_pairs(), st.sampled_from(["temperature", "vector", "matrix"]))
def test_probabilities_are_distributions(pair, scaling: str) -> None:
    f, g = pair
    assume(scaling != "temperature" or informative(g))
    cal = quiet_fit(NaiveAlignment(scaling, l2=0.1), f, g)
    proba = cal.predict_proba(g)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    assert np.all(proba[np.isinf(g)] == 0.0) and np.all(proba >= 0)
    np.testing.assert_array_equal(np.exp(cal.predict_log_proba(g)), proba)
    if scaling == "temperature":
        # The chat model's answer stays a most probable option (temperature never changes an argmax).
        top = proba[np.arange(len(g)), np.argmax(g, 1)]
        assert np.all(top == proba.max(axis=1))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([VectorScaling, MatrixScaling]))
def test_labelled_affine_beats_identity(seed: int, cls) -> None:
    rng = np.random.default_rng(seed)
    g = rng.normal(scale=3, size=(40, 3))
    y = rng.integers(0, 3, 40)
    cal = quiet_fit(cls(l2=0.01), g, y)
    nll = -np.mean(cal.predict_log_proba(g)[np.arange(40), y])
    identity = -np.mean(sp_log_softmax(g, axis=1)[np.arange(40), y])
    assert nll <= identity + 1e-12  # the fit starts at the identity and can only go down
