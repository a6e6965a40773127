"""The one calibrator shape (issue 19): every calibrator has params, repr, fitted_params, the same
``predict_log_proba(chat, base=None)``, and saves / loads through one table; files written by the previous
code (format_version 1, ``tests/fixtures/reshape/calibrators``) load and predict bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from refcal.calibrate import CALIBRATORS, Calibrator, load_calibrator
from refcal.calibrate.methods import METHODS
from refcal.errors import CalibratorFileError, InputError
from refcal.synthetic import make_synthetic

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "reshape" / "calibrators"
OLD_KEYS = ("daca", "daca_vector", "naive", "ts", "vs", "ms", "daca_agree", "mutual")


@pytest.fixture(scope="module")
def data():
    return make_synthetic(400, 4, seed=11)


def _fitted(key: str, data):
    m = METHODS[key]
    return m.fit(data.chat, data.base, data.labels)


@pytest.mark.parametrize("key", OLD_KEYS)
def test_a_file_of_the_previous_code_loads_and_predicts_bit_for_bit(key):
    inputs = np.load(OLD / "inputs.npz")
    cal = load_calibrator(OLD / f"{key}.json")
    assert json.loads((OLD / f"{key}.json").read_text())["format_version"] == 1
    assert cal.task_ == "multiple-choice"  # the previous code wrote no task for daca_agree
    out = cal.predict_log_proba(inputs["chat"], inputs["base"] if cal.needs_base_at_apply else None)
    np.testing.assert_array_equal(out, np.load(OLD / f"{key}_logp.npy"))


@pytest.mark.parametrize("key", [k for k in OLD_KEYS if k != "daca_vector"] + ["daca_vector"])
def test_every_calibrator_has_the_same_shape(tmp_path, data, key):
    cal = _fitted(key, data)
    assert isinstance(cal, Calibrator) and CALIBRATORS[cal.method] is type(cal)
    params = cal.get_params()
    assert repr(cal) == f"{type(cal).__name__}({', '.join(f'{k}={v!r}' for k, v in params.items())})"
    fp = cal.fitted_params()
    assert fp["n"] == 400 and all(isinstance(v, int | float | bool | str) for v in fp.values())
    cal.save(tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["format_version"] == 2 and doc["task"] == "multiple-choice" and doc["method"] == cal.method
    back = load_calibrator(tmp_path / "c.json")
    assert repr(back) == repr(cal) and back.fitted_params() == fp
    base = data.base if cal.needs_base_at_apply else None
    np.testing.assert_array_equal(back.predict_log_proba(data.chat, base), cal.predict_log_proba(data.chat, base))
    np.testing.assert_allclose(back.predict_proba(data.chat, base).sum(axis=1), 1.0)
    if cal.needs_base_at_apply:
        with pytest.raises(InputError, match="pass base="):
            cal.predict_log_proba(data.chat)


def test_a_file_of_one_method_is_refused_by_another_class(tmp_path, data):
    _fitted("daca", data).save(tmp_path / "c.json")
    doc = json.loads((tmp_path / "c.json").read_text())
    with pytest.raises(CalibratorFileError, match="holds a daca calibrator, not mutual"):
        CALIBRATORS["mutual"].from_dict(doc, "c.json")
    assert type(Calibrator.from_dict(doc, "c.json")) is CALIBRATORS["daca"]
