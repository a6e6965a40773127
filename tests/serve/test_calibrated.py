"""The served calibrator: one row at a time, equal to the calibrator's own predict_log_proba."""

from __future__ import annotations

import numpy as np
import pytest

from refcal import DACA, load_calibrator
from refcal.errors import InputError
from refcal.serve.calibrated import ServedCalibrator
from refcal.synthetic import make_synthetic


@pytest.mark.parametrize("k", [2, 4, 7])
def test_served_temperature_row_equals_predict_log_proba(tmp_path, k):
    d = make_synthetic(400, k, seed=k)
    DACA().fit(d.base, d.chat).save(tmp_path / "cal.json")
    served, cal = ServedCalibrator(tmp_path / "cal.json", allow_other_k=True), load_calibrator(tmp_path / "cal.json")
    rng = np.random.default_rng(0)
    rows = rng.normal(0, 6, (300, k))
    if k > 2:
        rows[::3, 0] = -np.inf  # a missing option stays impossible
    rows[1::7] *= 80  # far-apart logits: the log-sum-exp must not overflow
    for g in rows:
        got, want = served.predict(g), cal.predict_log_proba(g[None])[0]
        assert np.array_equal(np.isneginf(got), np.isneginf(want))
        np.testing.assert_allclose(got[np.isfinite(want)], want[np.isfinite(want)], rtol=0, atol=1e-12)


def test_served_row_that_is_not_ordinary_goes_through_the_checked_path(tmp_path):
    d = make_synthetic(400, 4, seed=0)
    DACA().fit(d.base, d.chat).save(tmp_path / "cal.json")
    served = ServedCalibrator(tmp_path / "cal.json")
    with pytest.raises(InputError):
        served.predict(np.array([0.0, np.nan, -1.0, -2.0]))
    for row in ([-np.inf] * 4, [0.0] + [-np.inf] * 3, [0.0, np.inf, 1.0, 2.0]):
        with pytest.raises(InputError):
            served.predict(np.array(row))
