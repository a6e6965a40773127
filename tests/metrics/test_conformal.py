"""Split-conformal LAC and APS sets: the same sets as MAPIE 1.6 on the same inputs, the coverage guarantee
over many random draws, hand-computed goldens and errors."""

from __future__ import annotations

import numpy as np
import pytest

from refcal import metrics as M
from refcal.errors import InputError
from refcal.synthetic import make_synthetic


def _probs(n: int, k: int, seed: int, temperature: float = 1.0):
    """Probabilities softmax(z * temperature) and labels drawn from softmax(z): calibrated at temperature 1,
    over-confident above it."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, k)) * 2
    q = np.exp(z - z.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    y = (q.cumsum(1) < rng.uniform(size=(n, 1))).sum(1).clip(max=k - 1)
    p = np.exp(temperature * (z - z.max(1, keepdims=True)))
    return p / p.sum(1, keepdims=True), y


@pytest.mark.parametrize("score", ["lac", "aps"])
@pytest.mark.parametrize(("alpha", "seed"), [(0.1, 0), (0.2, 1), (0.05, 2)])
def test_sets_equal_mapies(score, alpha, seed):
    """MAPIE's SplitConformalClassifier with a prefit classifier that returns these probabilities: the same
    threshold and the same sets (APS: MAPIE's randomized score, whose uniforms come from
    ``RandomState(random_state)``, passed to ours as ``u``; sets with include_last_label=True)."""
    pytest.importorskip("mapie")
    from mapie.classification import SplitConformalClassifier
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Passthrough(ClassifierMixin, BaseEstimator):
        def fit(self, x, y=None):
            self.classes_ = np.arange(np.shape(x)[1])
            return self

        def predict_proba(self, x):
            return np.asarray(x)

        def predict(self, x):
            return np.asarray(x).argmax(1)

    p, y = _probs(800, 5, seed, temperature=1.5)
    pc, yc, pt = p[:400], y[:400], p[400:]
    mapie = SplitConformalClassifier(estimator=Passthrough().fit(pc), confidence_level=1 - alpha,
                                     conformity_score=score, prefit=True, random_state=seed)
    mapie.conformalize(pc, yc)
    _, sets = mapie.predict_set(pt)
    u = np.random.RandomState(seed).uniform(size=400) if score == "aps" else None
    ours = M.conformal_sets(pc, yc, pt, alpha=alpha, score=score, u=u)
    assert ours.qhat == pytest.approx(float(mapie._mapie_classifier.conformity_score_function_.quantiles_[0]),
                                      abs=1e-12)
    np.testing.assert_array_equal(ours.sets, sets[:, :, 0])


@pytest.mark.parametrize("score", ["lac", "aps"])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_coverage_guarantee_over_many_draws(score, temperature):
    """Marginal coverage P(y in C) >= 1 - alpha for calibrated and over-confident probabilities alike.

    Over S = 200 draws of n = 200 calibration and m = 200 test questions, the mean coverage has standard
    deviation about sqrt(a(1 - a) (1/(n + 2) + 1/m) / S) = 0.0021 at a = 0.1 (the coverage given a
    calibration set is Beta-distributed with variance a(1 - a)/(n + 2); the test questions add a binomial
    a(1 - a)/m). The test allows 3 of them below 1 - alpha. LAC's coverage is also at most
    1 - alpha + 1/(n + 1) (continuous scores), which catches a threshold that is too high."""
    alpha, n, m, draws = 0.1, 200, 200, 200
    covs = []
    for s in range(draws):
        p, y = _probs(n + m, 4, 1000 + s, temperature)
        covs.append(M.conformal_sets(p[:n], y[:n], p[n:], y[n:], alpha=alpha, score=score).coverage)
    sd = np.sqrt(alpha * (1 - alpha) * (1 / (n + 2) + 1 / m) / draws)
    assert np.mean(covs) >= 1 - alpha - 3 * sd
    if score == "lac":
        assert np.mean(covs) <= 1 - alpha + 1 / (n + 1) + 3 * sd


def test_aps_adapts_and_lac_is_smallest_on_average():
    d = make_synthetic(2000, 4, chat_temperature=1.0, n_mc=32, seed=0)
    p = np.exp(d.chat - d.chat.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    lac = M.conformal_sets(p[:1000], d.labels[:1000], p[1000:], d.labels[1000:], alpha=0.1, score="lac")
    aps = M.conformal_sets(p[:1000], d.labels[:1000], p[1000:], d.labels[1000:], alpha=0.1, score="aps")
    assert lac.mean_size <= aps.mean_size  # LAC minimises the expected set size (Sadinle et al.)
    conf = p[1000:].max(1)
    sizes = M.set_sizes(aps.sets)
    assert sizes[conf > 0.9].mean() < sizes[conf < 0.5].mean()  # sure questions get smaller sets


def test_goldens():
    p = np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.9, 0.05, 0.05]])
    y = np.array([0, 1, 1, 0])
    np.testing.assert_allclose(M.conformity_scores(p, y, score="lac"), [0.4, 0.6, 0.3, 0.1])
    np.testing.assert_allclose(M.conformity_scores(p, y, score="aps"), [0.6, 0.9, 0.7, 0.9])
    # n = 4, alpha = 0.4: rank ceil(5 * 0.6) = 3 -> third smallest
    assert M.conformal_quantile([0.4, 0.6, 0.3, 0.1], alpha=0.4) == 0.4
    assert M.conformal_quantile([0.4, 0.6, 0.3, 0.1], alpha=0.1) == np.inf  # rank 5 > n: every option
    sets = M.prediction_sets(p, 0.4, score="lac")
    # LAC keeps p_j >= 1 - 0.4: the second question's set is empty (LAC sets may be)
    np.testing.assert_array_equal(sets, [[1, 0, 0], [0, 0, 0], [0, 1, 0], [1, 0, 0]])
    aps = M.prediction_sets(p, 0.8, score="aps")  # up to and including the option reaching 0.8
    np.testing.assert_array_equal(aps, [[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 0]])
    assert M.coverage(sets, y) == 0.75 and M.set_sizes(sets).tolist() == [1, 0, 1, 1]
    missing = np.array([[0.7, 0.3, 0.0]])
    assert not M.prediction_sets(missing, np.inf, score="lac")[0, 2]  # a missing option is never in a set


def test_conformal_metrics_keys_and_errors():
    p, y = _probs(100, 4, 0)
    out = M.conformal_metrics(p, y, alpha=0.1, seed=0)
    assert set(out) == {"lac_coverage", "lac_size", "aps_coverage", "aps_size"}
    assert 0 <= out["lac_coverage"] <= 1 and 1 <= out["aps_size"] <= 4
    assert all(np.isnan(v) for v in M.conformal_metrics(p[:3], y[:3]).values())
    with pytest.raises(InputError, match="alpha"):
        M.conformal_quantile([0.1], alpha=1.5)
    with pytest.raises(InputError, match="score"):
        M.conformity_scores(p, y, score="raps")
