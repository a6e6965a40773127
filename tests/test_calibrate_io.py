"""Calibrator JSON round trips, input validation and error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refcal.calibrate import (
    DACA,
    MatrixScaling,
    NaiveAlignment,
    TemperatureScaling,
    VectorScaling,
    agreement_diagnostics,
    load_calibrator,
)
from refcal.errors import CalibratorFileError, FitError, InputError, MismatchError, NotFittedError


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(120, 4))
    f[::5, 3] = -np.inf
    g = 2.0 * f + rng.normal(scale=0.5, size=f.shape)
    y = np.argmax(f + rng.normal(size=f.shape), axis=1)
    y[::5] = np.minimum(y[::5], 2)
    return f, g, y


def fitted(name: str, data):
    f, g, y = data
    return {
        "daca": lambda: DACA().fit(f, g),
        "daca-vector": lambda: DACA("vector", l2=0.01).fit(f, g),
        "daca-matrix": lambda: DACA("matrix").fit(f, g),
        "naive": lambda: NaiveAlignment().fit(f, g),
        "ts": lambda: TemperatureScaling().fit(g, y),
        "vs": lambda: VectorScaling(l2=0.1).fit(g, y),
        "ms": lambda: MatrixScaling().fit(g, y),
    }[name]()


NAMES = ["daca", "daca-vector", "daca-matrix", "naive", "ts", "vs", "ms"]


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_is_exact(tmp_path, data, name: str) -> None:
    cal = fitted(name, data)
    path = tmp_path / "cal.json"
    cal.save(path, inputs={"base": tmp_path / "base.parquet", "model": "m"})
    back = load_calibrator(path)
    assert type(back) is type(cal)
    g = data[1]
    assert np.array_equal(back.predict_proba(g), cal.predict_proba(g))
    assert back.to_dict(inputs={"base": str(tmp_path / "base.parquet"), "model": "m"}) == json.loads(
        path.read_text())
    assert not list(tmp_path.glob(".calibrator-*"))  # the temporary file was renamed away


def test_json_layout(tmp_path, data) -> None:
    cal = fitted("daca", data)
    cal.save(tmp_path / "c.json", inputs={"chat": "chat.parquet"})
    d = json.loads((tmp_path / "c.json").read_text())
    assert d["method"] == "daca" and d["scaling"] == "temperature"
    assert d["temperature"] == cal.temperature_ == d["parameters"]["temperature"]
    assert d["agreement"] == {"n": 120, "n_agree": cal.n_agree_, "agreement_rate": cal.n_agree_ / 120}
    assert d["solver"]["converged"] is True and d["solver"]["n_iter"] == cal.n_iter_
    assert d["inputs"] == {"chat": "chat.parquet"} and d["refcal_version"]
    ms = fitted("ms", data).to_dict()
    assert "temperature" not in ms and np.array(ms["parameters"]["coef"]).shape == (4, 4)
    assert "agreement" not in ms and ms["method"] == "ms"


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not a refcal calibrator"),
        ('{"format": "refcal-calibrator", "method": "platt"}', "unknown calibration method 'platt'"),
    ],
)
def test_load_errors(tmp_path, content, match) -> None:
    path = tmp_path / "c.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CalibratorFileError, match=match):
        load_calibrator(path)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.pop("solver"), "missing key 'solver'"),
        (lambda d: d["parameters"].pop("temperature"), "missing key 'temperature'"),
        (lambda d: d["parameters"].update(temperature=-1.0), "parameters are malformed"),
        (lambda d: d["hyperparameters"].update(scaling="cubic"), "scaling must be one of"),
        (lambda d: d["hyperparameters"].update(bogus=1), "malformed value"),
    ],
)
def test_load_rejects_broken_content(tmp_path, data, edit, match) -> None:
    d = fitted("daca", data).to_dict()
    edit(d)
    (tmp_path / "c.json").write_text(json.dumps(d))
    with pytest.raises((CalibratorFileError, InputError), match=match):
        load_calibrator(tmp_path / "c.json")


def test_load_rejects_wrong_matrix_shape(tmp_path, data) -> None:
    d = fitted("daca-matrix", data).to_dict()
    d["parameters"]["coef"] = d["parameters"]["coef"][:3]
    (tmp_path / "c.json").write_text(json.dumps(d))
    with pytest.raises(CalibratorFileError, match="parameters are malformed"):
        load_calibrator(tmp_path / "c.json")


def test_load_directory(tmp_path) -> None:
    with pytest.raises(CalibratorFileError, match="directory"):
        load_calibrator(tmp_path)


def test_not_fitted() -> None:
    for cal in (DACA(), TemperatureScaling(), MatrixScaling()):
        with pytest.raises(NotFittedError, match="call fit"):
            cal.predict_proba(np.zeros((2, 3)))
        with pytest.raises(NotFittedError):
            cal.to_dict()


@pytest.mark.parametrize(
    ("logits", "match"),
    [
        (np.zeros(4), "must be 2-D"),
        (np.zeros((0, 4)), "no rows"),
        (np.zeros((3, 1)), "at least 2"),
        (np.array([[0.0, np.nan], [0, 1]]), "NaN/\\+inf value\\(s\\) \\(first in row 0\\)"),
        (np.array([[0.0, 1.0], [np.inf, 1]]), "first in row 1"),
        (np.array([[0.0, 1.0], [1, -1e300]]), "first in row 1"),
        (np.array([[0.0, 1.0], [-np.inf, -np.inf]]), "all missing"),
        (np.array([["a", "b"]]), "real numbers"),
        ([[1.0, 2.0], [1.0]], "2-D numeric array"),
    ],
)
def test_logit_validation(logits, match) -> None:
    with pytest.raises(InputError, match=match):
        DACA().fit(logits, logits)
    with pytest.raises(InputError, match=match):
        TemperatureScaling().fit(logits, np.zeros(3, dtype=int))


def test_pair_validation() -> None:
    f = np.zeros((3, 4))
    with pytest.raises(MismatchError, match="same questions"):
        DACA().fit(f, np.zeros((3, 5)))
    g = f.copy()
    g[1, 3] = -np.inf
    with pytest.raises(MismatchError, match="missing .* first row 1"):
        DACA().fit(f, g)
    with pytest.raises(MismatchError):
        agreement_diagnostics(f, g)


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.array([0, -1, 1]), "1 of 3 labels are unknown"),
        (np.array([0, 3, 1]), "must lie in \\[0, 2\\]"),
        (np.array([0, 1]), "shape \\(3,\\)"),
        (np.array([0.5, 1, 1]), "must be integers"),
        (np.array([0, 1, 2]), "points at a missing"),
    ],
)
def test_label_validation(labels, match) -> None:
    g = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 1.0, -np.inf]])
    with pytest.raises(InputError, match=match):
        TemperatureScaling().fit(g, labels)


def test_weight_and_param_validation() -> None:
    f = np.random.default_rng(1).normal(size=(5, 3))
    for w, match in [(np.ones(4), "shape \\(5,\\)"), (-np.ones(5), "non-negative"), (np.zeros(5), "sums to 0")]:
        with pytest.raises(InputError, match=match):
            DACA().fit(f, f, sample_weight=w)
    for kwargs, match in [({"scaling": "cubic"}, "scaling must be one of"), ({"l2": -1.0}, "l2 must be"),
                          ({"max_iter": 0}, "max_iter"), ({"temperature_bounds": (2, 1)}, "temperature_bounds"),
                          ({"on_bound": "ignore"}, "on_bound")]:
        with pytest.raises(InputError, match=match):
            DACA(**kwargs).fit(f, f)
    g = f.copy()
    g[4] = np.roll(f[4], 1)  # only the last question disagrees (a permuted row changes the argmax)
    with pytest.raises(FitError, match="with positive sample_weight"):
        DACA().fit(f, g, sample_weight=np.r_[np.zeros(4), 1.0])


def test_transform_checks_option_count(data) -> None:
    cal = fitted("daca-vector", data)
    with pytest.raises(InputError, match="fitted on 4"):
        cal.predict_proba(np.zeros((2, 5)))
    # Temperature scaling is option-count agnostic.
    assert fitted("daca", data).predict_proba(np.zeros((2, 5))).shape == (2, 5)


def test_save_to_missing_folder(tmp_path, data) -> None:
    with pytest.raises(InputError, match="cannot write the calibrator"):
        fitted("daca", data).save(tmp_path / "nope" / "c.json")
    with pytest.raises(InputError, match="inputs must be a dict"):
        fitted("daca", data).save(tmp_path / "c.json", inputs=["a"])
