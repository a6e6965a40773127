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
        ('{"format": "refcal-calibrator", "format_version": 1, "method": "beta"}', "unknown calibration method 'beta'"),
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
        (lambda d: d["parameters"].update(temperature=-1.0), "temperature must be a number within"),
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
    with pytest.raises(CalibratorFileError, match="coef must be a 4 x 4 array"):
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
        (np.array([[0.0, np.nan], [0, 1]]), "1 value\\(s\\) that are not allowed \\(first in row 0, option 1: NaN\\)"),
        (np.array([[0.0, 1.0], [np.inf, 1]]), "first in row 1, option 0: \\+inf"),
        (np.array([[0.0, 1.0], [1, -1e300]]), "first in row 1, option 1: -1e\\+300, beyond the allowed range"),
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


def test_save_creates_missing_folders_but_refuses_a_file_in_the_way(tmp_path, data) -> None:
    fitted("daca", data).save(tmp_path / "new" / "sub" / "c.json")
    assert load_calibrator(tmp_path / "new" / "sub" / "c.json").temperature_ > 0
    (tmp_path / "plain").write_text("x")
    with pytest.raises(InputError, match="cannot write the calibrator .* is a file, not a folder"):
        fitted("daca", data).save(tmp_path / "plain" / "sub" / "c.json")
    with pytest.raises(InputError, match="inputs must be a dict"):
        fitted("daca", data).save(tmp_path / "c.json", inputs=["a"])


# ------------------------------------------------------------------ issue 9: plain JSON, strict loading
def _plain(x) -> bool:
    """Only the types the json module writes natively (numpy scalars subclassing float included are not)."""
    if isinstance(x, dict):
        return all(type(k) is str and _plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_plain(v) for v in x)
    return x is None or type(x) in (str, int, float, bool)


def _solver_regimes(data):
    """(name, calibrator) fitted where the solver stops early, stops at a bound, and converges.

    The temperature solver refuses to stop early (FitError), so early stops are vector / matrix only.
    """
    f, g, y = data
    one_hot = np.where(np.arange(4) == y[:, None], 30.0, -30.0)  # near one-hot targets: lower bound
    one_hot[f == -np.inf] = -np.inf
    out = []
    for cls in (DACA, NaiveAlignment):
        for scaling in ("temperature", "vector", "matrix"):
            out.append((f"{cls.method}-{scaling}-converged", cls(scaling).fit(f, g)))
        for scaling in ("vector", "matrix"):
            out.append((f"{cls.method}-{scaling}-early", cls(scaling, max_iter=1).fit(f, g)))
        out.append((f"{cls.method}-temperature-bound", cls(temperature_bounds=(0.9, 1.1)).fit(one_hot, g)))
    out += [("ts-converged", TemperatureScaling().fit(g, y)),
            ("ts-bound", TemperatureScaling(temperature_bounds=(0.9, 1.1)).fit(g, y))]
    for cls in (VectorScaling, MatrixScaling):
        out += [(f"{cls.method}-early", cls(max_iter=1).fit(g, y)), (f"{cls.method}-converged", cls().fit(g, y))]
    return out


def test_every_calibrator_saves_plain_json_in_every_solver_regime(tmp_path, data, recwarn) -> None:
    regimes = _solver_regimes(data)
    assert any(not c.converged_ for _, c in regimes) and any(c.at_bound_ for _, c in regimes)
    assert any(c.converged_ and not c.at_bound_ for _, c in regimes)
    for name, cal in regimes:
        d = cal.to_dict()
        assert _plain(d), name
        for attr in ("converged_", "n_iter_", "objective_", "solver_message_", "n_options_", "n_"):
            assert type(getattr(cal, attr)) in (bool, int, float, str), (name, attr, type(getattr(cal, attr)))
        cal.save(tmp_path / f"{name}.json")
        back = load_calibrator(tmp_path / f"{name}.json")
        assert back.converged_ is cal.converged_ and back.at_bound_ == cal.at_bound_, name
        assert np.array_equal(back.predict_proba(data[1]), cal.predict_proba(data[1])), name


def test_vector_calibrator_whose_lbfgs_stops_unclean_saves(tmp_path) -> None:
    # the reported case: `fit --scaling vector` on 20 x 4 scores; L-BFGS-B's "abnormal" stop used to give
    # a numpy bool converged_ that json refused
    from refcal.synthetic import make_synthetic

    d = make_synthetic(20, 4, seed=0)
    for seed in range(10):
        d = make_synthetic(20, 4, seed=seed)
        for scaling in ("vector", "matrix"):
            cal = DACA(scaling).fit(d.base, d.chat)
            assert type(cal.converged_) is bool
            cal.save(tmp_path / "c.json")
            assert load_calibrator(tmp_path / "c.json").converged_ is cal.converged_


def _edited(tmp_path, data, name, edit):
    d = fitted(name, data).to_dict()
    edit(d)
    path = tmp_path / "c.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize(
    ("name", "edit", "match"),
    [
        ("daca", lambda d: d["parameters"].update(temperature="2.0"), "temperature must be a number .* got '2.0'"),
        ("daca", lambda d: d["parameters"].update(temperature=True), "temperature must be a number .* got True"),
        ("daca", lambda d: d["parameters"].update(temperature=1e-320), r"within the solver's bounds \[0.001, 10000\]"),
        ("daca", lambda d: d["parameters"].update(temperature=1e5), "within the solver's bounds"),
        ("daca", lambda d: d.update(temperature=3.0), "differs from parameters.temperature"),
        ("daca", lambda d: d.update(format_version=99), "format_version 99, but this build of refcal reads format_version 1"),
        ("daca", lambda d: d.update(format_version="abc"), "format_version 'abc', but this build .* reads format_version 1"),
        ("daca", lambda d: d.update(format_version=True), "format_version True"),
        ("daca", lambda d: d.pop("format_version"), "has no format_version, but this build .* reads format_version 1"),
        ("daca", lambda d: d.update(n_options=-3), "n_options must be an integer >= 2, got -3"),
        ("daca", lambda d: d.update(n_options=4.0), "n_options must be an integer"),
        ("daca", lambda d: d.update(n=0), "n must be an integer >= 1"),
        ("daca", lambda d: d["agreement"].update(n_agree=500), "agreement 500 of 120"),
        ("daca", lambda d: d["solver"].update(converged="yes"), "converged must be true or false"),
        ("daca", lambda d: d["solver"].update(objective=None), "objective must be a finite number"),
        ("daca", lambda d: d["solver"].update(at_bound="sideways"), "at_bound must be null"),
        ("daca", lambda d: d["hyperparameters"].update(max_iter=True), "max_iter must be a positive integer"),
        ("daca", lambda d: d["hyperparameters"].update(l2="0"), "l2 must be a finite number"),
        ("daca", lambda d: d["hyperparameters"].update(temperature_bounds=[1]), "temperature_bounds must be"),
        ("daca", lambda d: d.update(scaling="vector"), "scaling 'vector' does not match"),
        ("daca-vector", lambda d: d.update(n_options=5), "coef must be a 5 array"),
        ("daca-vector", lambda d: d["parameters"]["coef"].__setitem__(0, "1"), "coef must be a 4 array of finite"),
        ("daca-matrix", lambda d: d["parameters"]["coef"][1].append(0.0), "coef must be a 4 x 4 array"),
        ("ms", lambda d: d["parameters"]["intercept"].__setitem__(2, True), "intercept must be a 4 array"),
        ("ms", lambda d: d["parameters"].update(coef=[[1e999] * 4] * 4), "finite numbers"),
    ],
)
def test_every_field_is_checked_against_its_type_and_bounds(tmp_path, data, name, edit, match) -> None:
    with pytest.raises(CalibratorFileError, match=match):
        load_calibrator(_edited(tmp_path, data, name, edit))


def test_deeply_nested_calibrator_is_one_clean_error(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{"format": "refcal-calibrator", "inputs": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(CalibratorFileError, match="nested too deeply"):
        load_calibrator(path)


def test_tiny_temperature_never_gives_nan_logits(data) -> None:
    cal = fitted("daca", data)
    cal.temperature_ = 1e-320  # set by hand: load_calibrator refuses such a file
    with pytest.raises(InputError, match="beyond the floating-point range"):
        cal.predict_log_proba(data[1])
    for bad in (0.0, -1.0, float("nan"), "2"):
        cal.temperature_ = bad
        with pytest.raises(InputError, match="temperature_ must be a finite number > 0"):
            cal.transform(data[1])
