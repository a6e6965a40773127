"""The label-efficiency curve (refcal.run.budget, `refcal run --labels-budget`): label use, k = 0, the
"worth N labels" rule, metrics.json and the report figure."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from refcal import metrics
from refcal.calibrate import DACA
from refcal.errors import InputError
from refcal.run.budget import (
    BUDGET_METHODS,
    draw_labelled,
    fit_on_budget,
    label_budget,
    parse_labels_budget,
    resampled_ece,
    worth_labels,
)
from refcal.run.protocol import Part, Unit
from refcal.synthetic import make_world


@pytest.fixture(scope="module")
def world():
    return make_world("overconfident-base", 600, 4, chat_temperature=3.0, seed=2)


def _units(d, n_units=2, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for s in range(n_units):
        perm = rng.permutation(len(d.labels))
        c, t = perm[:200], perm[200:]
        part = lambda i: Part(d.base[i], d.chat[i], d.labels[i], [str(v) for v in i])  # noqa: E731
        out.append(Unit(1, f"split{s}", part(c), part(t), s == 0))
    return out


def test_parse_labels_budget():
    assert parse_labels_budget("50, 0,10,all,10") == [0, 10, 50, None]
    with pytest.raises(InputError, match="--labels-budget"):
        parse_labels_budget("10,ten")
    with pytest.raises(InputError, match="empty"):
        parse_labels_budget(" , ")


@pytest.mark.parametrize("key", BUDGET_METHODS)
def test_each_method_reads_only_its_drawn_labels(key, world):
    """Label use: changing every label outside the k drawn questions leaves the fit unchanged; changing a
    drawn one changes it."""
    y = world.labels[:200].copy()
    idx = draw_labelled(200, 25, np.random.default_rng(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fit_on_budget(key, world.base[:200], world.chat[:200], y, idx)
        other = y.copy()
        rest = np.setdiff1d(np.arange(200), idx)
        other[rest] = (other[rest] + 1 + np.arange(rest.size) % 3) % 4
        same = fit_on_budget(key, world.base[:200], world.chat[:200], other, idx)
        mine = y.copy()
        mine[idx[:10]] = (mine[idx[:10]] + 1) % 4
        moved = fit_on_budget(key, world.base[:200], world.chat[:200], mine, idx)
    probe = world.chat[200:260]
    np.testing.assert_array_equal(same.predict_log_proba(probe), ref.predict_log_proba(probe))
    assert not np.array_equal(moved.predict_log_proba(probe), ref.predict_log_proba(probe))


def test_k_zero_is_the_chat_model_or_daca(world):
    idx = draw_labelled(200, 0, np.random.default_rng(0))
    assert fit_on_budget("ts", world.base[:200], world.chat[:200], world.labels[:200], idx) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dk = fit_on_budget("daca_k", world.base[:200], world.chat[:200], world.labels[:200], idx)
        assert dk.temperature_ == DACA().fit(world.base[:200], world.chat[:200]).temperature_


def test_worth_labels_rule_on_hand_made_curves():
    ks = [0, 10, 25, "all"]
    # three draws; TS's ECE per k and draw; DACA's ECE 0.05
    draws = [[0.2, 0.2, 0.2], [0.06, 0.04, 0.08], [0.045, 0.05, 0.055], [0.03]]
    w = worth_labels(ks, draws, 0.05)
    assert w["n"] == 25  # mean at 10 is 0.06 > 0.05, mean at 25 is 0.05 <= 0.05
    assert w["per_draw"] == [25, 10, "all"]
    assert (w["low"], w["high"]) == (10, "all")
    assert "worth about 25 labels" in w["sentence"]
    never = worth_labels([0, 10], [[0.2], [0.1, 0.1]], 0.05)
    assert never["n"] is None and "did not reach" in never["sentence"]


def test_resampled_ece_is_the_ece_of_each_resample(world):
    """The bootstrap's vectorised ECE equals refcal.metrics.ece on the resampled questions."""
    p = DACA().fit(world.base[:200], world.chat[:200]).predict_proba(world.chat[200:])
    y = world.labels[200:]
    rng = np.random.default_rng(3)
    idx = [rng.integers(0, len(y), len(y)) for _ in range(4)]
    w = np.array([np.bincount(i, minlength=len(y)) for i in idx])
    got = resampled_ece(p, y, np.vstack([np.ones(len(y)), w]), n_bins=15)
    want = [metrics.ece(p, y, n_bins=15)] + [metrics.ece(p[i], y[i], n_bins=15) for i in idx]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_worth_labels_names_the_ends_of_the_grid():
    ks = [0, 10, 25, "all"]
    zero = worth_labels(ks, [[0.04], [0.045] * 2, [0.05] * 2, [0.03]], 0.05)
    assert (zero["n"], zero["status"]) == (0, "zero") and "worth 0 labels" in zero["sentence"]
    first = worth_labels(ks, [[0.2], [0.04] * 2, [0.05] * 2, [0.03]], 0.05)
    assert (first["n"], first["status"]) == (10, "at_most") and "at most 10 labels" in first["sentence"]
    never = worth_labels(ks, [[0.2], [0.1] * 2, [0.09] * 2, [0.08]], 0.05, n_calib=[120, 120])
    assert (never["n"], never["status"], never["high"]) == (None, "not_reached", None)
    assert "more than all (120) labels" in never["sentence"]
    mid = worth_labels(ks, [[0.2], [0.1] * 2, [0.05] * 2, [0.03]], 0.05)
    assert (mid["status"], mid["between"]) == ("reached", [10, 25])
    dip = worth_labels(ks, [[0.2], [0.04] * 2, [0.07] * 2, [0.03]], 0.05)  # a lucky k = 10, worse at 25
    assert (dip["n"], dip["status"]) == ("all", "reached")


def test_worth_labels_paired_bootstrap_interval():
    """With bootstrap replicates, the interval is the 2.5 / 97.5 % quantiles of each replicate's crossing
    against that replicate's own DACA ECE (paired), on the grid."""
    ks = [0, 10, 25, "all"]
    draws = [[0.2] * 2, [0.06] * 2, [0.05] * 2, [0.03]]
    # 40 replicates: TS per k; DACA moves with TS (paired) in the first 38, jumps in the last 2
    ts = np.tile([0.2, 0.06, 0.05, 0.03], (40, 1))
    daca = np.full(40, 0.05)
    daca[:20] = 0.061  # crossing at 10 in half the replicates
    daca[-1] = 0.01  # never
    w = worth_labels(ks, draws, 0.05, boot=(ts, daca))
    assert w["interval"] == "paired bootstrap" and w["n"] == 25 and w["n_boot"] == 40
    assert (w["low"], w["high"]) == (10, None)
    assert w["p_ts_at_most_daca"] == [0.0, 0.5, pytest.approx(39 / 40), pytest.approx(39 / 40)]


def test_label_budget_record_and_its_invariants(world):
    units = _units(world)
    lb = label_budget(units, [0, 10, None], n_draws=3, seed=0)
    assert lb["ks"] == [0, 10, "all"] and lb["n_calib"] == [200, 200]
    ts = lb["methods"]["ts"]["metrics"]["ece"]
    assert [len(v) for v in ts["draws"]] == [3, 3, 1]
    # k = 0: every label-only method is the chat model, daca_k is DACA (the reference line)
    chat0 = ts["mean"][0]
    for m in ("platt", "isotonic", "histogram"):
        assert lb["methods"][m]["metrics"]["ece"]["mean"][0] == chat0
    assert lb["methods"]["daca_k"]["metrics"]["ece"]["mean"][0] == pytest.approx(lb["daca"]["ece"]["mean"], abs=1e-15)
    d = lb["daca"]["ece"]
    assert d["low"] <= d["mean"] <= d["high"]
    assert [[len(d) for d in v] for v in ts["cells"]] == [[2] * 3, [2] * 3, [2]]
    np.testing.assert_allclose([np.mean(d) for d in ts["cells"][1]], ts["draws"][1], rtol=0, atol=1e-15)
    assert np.mean(d["units"]) == pytest.approx(d["mean"], abs=1e-15)
    w = lb["worth_labels"]
    assert w["interval"] == "paired bootstrap" and len(w["p_ts_at_most_daca"]) == 3
    grid = [0, 10, "all", None]
    assert grid.index(w["low"]) <= grid.index(w["n"]) <= grid.index(w["high"])
    assert json.loads(json.dumps(lb)) == lb  # plain JSON
    again = label_budget(units, [0, 10, None], n_draws=3, seed=0)
    assert again == lb  # seeded


def test_label_budget_refuses_unlabelled_units(world):
    units = _units(world, 1)
    units[0].calib.labels = units[0].calib.labels.copy()
    units[0].calib.labels[0] = -1
    with pytest.raises(InputError, match="labels"):
        label_budget(units, [10])


def test_plot_label_budget_draws_on_a_given_axes(world):
    pytest.importorskip("matplotlib")
    from refcal.report import plots as P

    lb = label_budget(_units(world, 1), [0, 10, None], n_draws=2, seed=0)
    data = P.label_curves(lb)
    assert data.k.tolist() == [0, 10, 200] and data.k_labels == ("0", "10", "all")
    fig = P.new_figure()
    ax = fig.add_subplot()
    assert P.plot_label_budget(data, ax=ax) is ax
    assert len(ax.lines) == len(BUDGET_METHODS) + 1  # one curve per method + DACA's line
    with pytest.raises(InputError, match="label-budget"):
        P.label_curves({"ks": [0]})


def test_refcal_run_labels_budget_end_to_end(tmp_path, monkeypatch):
    from refcal.cli import main

    monkeypatch.setenv("REFCAL_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}? #{i % 4}",
                                        "choices": ["a", "b", "c", "d"], "answer": i % 4}) + "\n" for i in range(80)))
    out = tmp_path / "run"
    assert main(["run", "--base", "fake:b", "--chat", "fake:c", "-d", str(data), "--scoring", "letter", "--limit", "0",
                 "--no-progress", "--methods", "chat,daca,ts", "--n-splits", "2", "--labels-budget", "0,5,all",
                 "--labels-draws", "2", "-o", str(out)]) == 0
    doc = json.loads((out / "metrics.json").read_text())
    lb = doc["label_budget"]
    assert lb["ks"] == [0, 5, "all"] and set(lb["methods"]) == set(BUDGET_METHODS)
    assert "sentence" in lb["worth_labels"]
    assert (out / "plots" / "label_budget.png").is_file()
    assert "How many labels is DACA worth?" in (out / "report.md").read_text()
    assert main(["run", "--base", "fake:b", "--chat", "fake:c", "-d", str(data), "--labels-budget", "x",
                 "-o", str(tmp_path / "bad")]) == 2
