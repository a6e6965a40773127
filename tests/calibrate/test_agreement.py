"""Agreement-aware DACA at its solver bounds (issue 20) and with a tampered temperature (issue 22, item 14)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refcal.calibrate import DACA, AgreementDACA, CalibrationWarning, load_calibrator
from refcal.errors import InputError
from refcal.synthetic import make_synthetic


def test_both_temperatures_warn_and_record_the_bound():
    """A flat base model: both targets are uniform, so both temperatures run to the upper bound, each warned
    about like DACA's, and recorded in fitted_params (what metrics.json shows per fit)."""
    rng = np.random.default_rng(0)
    chat = 3.0 * rng.normal(size=(300, 4))
    base = 1e-6 * rng.normal(size=(300, 4))
    with pytest.warns(CalibrationWarning) as rec:
        cal = AgreementDACA().fit(base, chat)
    text = [str(w.message) for w in rec]
    assert any("where the models agree hit the upper bound" in t for t in text)
    assert any("where the models disagree hit the upper bound" in t for t in text)
    fp = cal.fitted_params()
    assert fp["temperature_agree_at_bound"] is True and fp["temperature_disagree_at_bound"] is True
    assert cal.at_bound_agree_ == cal.at_bound_disagree_ == "max_temperature"
    with pytest.warns(CalibrationWarning, match="upper bound"):  # DACA warns the same
        DACA().fit(base, chat)


def test_no_warning_inside_the_bounds():
    d = make_synthetic(600, 4, seed=2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        cal = AgreementDACA().fit(d.base, d.chat)
    assert cal.fitted_params()["temperature_agree_at_bound"] is False


@pytest.mark.parametrize("side", ["agree", "disagree"])
def test_a_tampered_temperature_is_refused_like_dacas(tmp_path, side):
    """Widened bounds and T = 1e-308 written into the file: applying it is one InputError (as for DACA), never
    NaN logits or a RuntimeWarning."""
    d = make_synthetic(200, 4, seed=1)
    AgreementDACA().fit(d.base, d.chat).save(tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    doc["hyperparameters"]["temperature_bounds"] = [1e-310, 1e4]
    doc["parameters"][f"temperature_{side}"] = 1e-308
    (tmp_path / "c.json").write_text(json.dumps(doc))
    cal = load_calibrator(tmp_path / "c.json")
    with pytest.raises(InputError, match="beyond the floating-point range"):
        cal.predict_log_proba(d.chat, d.base)
