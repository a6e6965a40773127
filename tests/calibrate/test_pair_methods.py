"""The label-free methods beyond DACA (issue 13): agreement-aware DACA (`daca_agree`) and mutual calibration
(`mutual`). Each is checked against an independent computation and never reads labels."""

import json

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from refcal._math import log_softmax, softmax
from refcal.calibrate import DACA, load_calibrator
from refcal.calibrate.agreement import AgreementDACA, answer_cross_entropy
from refcal.calibrate.alignment import agreement_mask
from refcal.calibrate.methods import METHODS
from refcal.calibrate.mutual import MutualCalibration, _divergence, project_mutual
from refcal.errors import CalibratorFileError, InputError, NotFittedError
from refcal.synthetic import make_synthetic

NEW = ("daca_agree", "mutual")


@pytest.fixture(scope="module")
def data():
    return make_synthetic(1500, 4, seed=3)


@pytest.mark.parametrize("key", NEW)
def test_fit_never_reads_labels(data, key):
    """Labels given, labels all unknown (-1), labels scrambled or none: the same fit, bit for bit."""
    m = METHODS[key]
    assert not m.needs_labels and m.needs_base
    outs = []
    for labels in (data.labels, np.full_like(data.labels, -1), data.labels[::-1].copy(), None):
        fitted = m.fit(data.chat, data.base, labels, scaling="temperature")
        outs.append(m.predict(fitted, data.chat, data.base, data.chat))
    for other in outs[1:]:
        np.testing.assert_array_equal(outs[0], other)
    assert not np.allclose(outs[0], log_softmax(data.chat))  # it did change something


def test_daca_agree_agreeing_side_is_daca(data):
    cal = AgreementDACA().fit(data.base, data.chat)
    ref = DACA().fit(data.base, data.chat)
    assert cal.temperature_agree_ == pytest.approx(ref.temperature_, rel=1e-9)
    assert cal.n_agree_ == ref.n_agree_ and cal.fallback_ is None


def test_daca_agree_disagreeing_side_minimises_the_answer_cross_entropy(data):
    """Independent check: a plain probability-space loss, minimised by scipy's bounded Brent."""
    cal = AgreementDACA().fit(data.base, data.chat)
    dis = ~agreement_mask(data.base, data.chat)
    g, p = data.chat[dis], softmax(data.base[dis])
    b = g.argmax(axis=1)
    t = p[np.arange(b.size), b]

    def loss(tau):
        c = softmax(g / tau)[np.arange(b.size), b]
        return -np.mean(t * np.log(c) + (1 - t) * np.log(1 - c))

    ref = minimize_scalar(loss, bounds=(0.5, 100), method="bounded", options={"xatol": 1e-9}).x
    assert cal.temperature_disagree_ == pytest.approx(ref, rel=1e-5)
    assert answer_cross_entropy(np.log(cal.temperature_disagree_), g, t) == pytest.approx(loss(ref), rel=1e-9)
    assert cal.target_disagree_ == pytest.approx(t.mean())
    # the two sides really differ here (the chat model's confidence on disagreements is too high)
    assert cal.temperature_disagree_ > 1.5 * cal.temperature_agree_


def test_daca_agree_applies_each_side_by_the_agreement_of_the_question(data):
    cal = AgreementDACA().fit(data.base[:700], data.chat[:700])
    f, g = data.base[700:], data.chat[700:]
    agree = f.argmax(1) == g.argmax(1)
    expect = np.where(agree[:, None], g / cal.temperature_agree_, g / cal.temperature_disagree_)
    np.testing.assert_allclose(cal.predict_log_proba(g, f), log_softmax(expect), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cal.predict_proba(g, f).sum(axis=1), 1.0)


def test_daca_agree_reduces_to_daca_without_disagreement():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(50, 3)) * 3
    f = g / 2 + rng.normal(size=(50, 3)) * 0.01
    f[np.arange(50), g.argmax(1)] += 5  # every question agrees
    cal = AgreementDACA().fit(f, g)
    assert cal.n_agree_ == 50 and cal.fallback_ == "disagree<-agree"
    assert cal.temperature_disagree_ == cal.temperature_agree_
    np.testing.assert_allclose(cal.predict_log_proba(g, f), DACA().fit(f, g).predict_log_proba(g), atol=1e-9)
    # and with no agreement at all it borrows the other way (DACA itself would fail)
    f2 = f.copy()
    f2[np.arange(50), g.argmax(1)] -= 100
    cal2 = AgreementDACA().fit(f2, g)
    assert cal2.n_agree_ == 0 and cal2.fallback_ == "agree<-disagree"


def test_daca_agree_save_load_round_trip(data, tmp_path):
    cal = AgreementDACA().fit(data.base, data.chat)
    path = tmp_path / "cal.json"
    cal.save(path, inputs={"base": "b"})
    back = load_calibrator(path)
    assert isinstance(back, AgreementDACA)
    np.testing.assert_array_equal(back.predict_log_proba(data.chat, data.base),
                                  cal.predict_log_proba(data.chat, data.base))
    doc = json.loads(path.read_text())
    for key, value, what in (("parameters", {"temperature_agree": -1.0, "temperature_disagree": 2.0}, "temperature_agree"),
                             ("hyperparameters", {"min_group": 0, "temperature_bounds": [1e-3, 1e4]}, "min_group"),
                             ("fallback", "sideways", "fallback")):
        bad = dict(doc, **{key: value})
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(CalibratorFileError, match=what):
            load_calibrator(tmp_path / "bad.json")
    bad = {k: v for k, v in doc.items() if k != "agreement"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CalibratorFileError, match="missing key 'agreement'"):
        load_calibrator(tmp_path / "bad.json")


def test_daca_agree_errors(data):
    with pytest.raises(NotFittedError):
        AgreementDACA().predict_proba(data.chat, data.base)
    with pytest.raises(InputError, match="min_group"):
        AgreementDACA(min_group=0).fit(data.base, data.chat)
    with pytest.raises(InputError):
        AgreementDACA().fit(data.base[:, :1], data.chat[:, :1])


def test_mutual_save_load_round_trip(data, tmp_path):
    cal = MutualCalibration(n_bins=8, loss="brier").fit(data.base, data.chat)
    path = tmp_path / "cal.json"
    cal.save(path, inputs={"base": "b"})
    doc = json.loads(path.read_text())
    assert doc["method"] == "mutual" and doc["hyperparameters"] == {"n_bins": 8, "n_ref_bins": 10, "loss": "brier"}
    back = load_calibrator(path)
    assert isinstance(back, MutualCalibration) and repr(back) == repr(cal)
    np.testing.assert_array_equal(back.predict_log_proba(data.chat), cal.predict_log_proba(data.chat))
    for attr in ("bin_confidence_", "bin_projected_", "bin_unordered_", "bin_counts_"):
        np.testing.assert_array_equal(getattr(back, attr), getattr(cal, attr))
    assert (back.n_, back.n_options_, back.divergence_, back.objective_) == \
        (cal.n_, cal.n_options_, cal.divergence_, cal.objective_)
    params = doc["parameters"]
    knots = params["bin_confidence"]
    for key, value, what in (
            ("parameters", dict(params, bin_confidence=knots[::-1]), "non-decreasing"),
            ("parameters", dict(params, bin_projected=[1.5] * len(knots)), "bin_projected"),
            ("parameters", dict(params, bin_counts=params["bin_counts"][:-1]), "differ in length"),
            ("parameters", dict(params, bin_counts=[True] * len(knots)), "bin_counts"),
            ("parameters", dict(params, bin_confidence=["0.1"] * len(knots)), "bin_confidence"),
            ("hyperparameters", {"n_bins": 8, "n_ref_bins": 10, "loss": "hinge"}, "loss"),
            ("hyperparameters", {"n_bins": 8, "n_ref_bins": 10, "loss": "log", "extra": 1}, "extra"),
            ("scaling", "temperature", "binned"),
            ("divergence", float("nan"), "divergence"),
            ("n", 1, "bin_counts add up")):
        bad = dict(doc, **{key: value})
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(CalibratorFileError, match=what):
            load_calibrator(tmp_path / "bad.json")
    bad = {k: v for k, v in doc.items() if k != "solver"}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(CalibratorFileError, match="missing key 'solver'"):
        load_calibrator(tmp_path / "bad.json")


def test_mutual_projection_is_the_bregman_projection():
    """Optimality, checked independently: the generalised Pythagorean inequality
    D(mu, c) >= D(mu, h) + D(h, c) for feasible points mu of the reference-compatible set."""
    rng = np.random.default_rng(1)
    counts = rng.integers(1, 20, size=(4, 5)).astype(float)
    ref_sums = counts.sum(axis=1) * np.array([0.1, 0.3, 0.6, 0.9])
    c = np.array([0.2, 0.5, 0.7, 0.9, 0.97])
    n_j = counts.sum(axis=0)
    for loss in ("log", "brier"):
        h, res = project_mutual(counts, ref_sums, c, loss)
        assert res.success

        def div(a, b, loss=loss):
            return float(n_j @ _divergence(a, b, loss)[0])

        for _ in range(20):  # random feasible points: each reference bin's right answers spread at random
            share = rng.dirichlet(np.ones(5), size=4) * counts
            y = np.minimum(share / share.sum(axis=1, keepdims=True) * ref_sums[:, None], counts)
            if not np.allclose(y.sum(axis=1), ref_sums):
                continue
            mu = y.sum(axis=0) / n_j
            assert div(mu, c) >= div(mu, h) + div(h, c) - 1e-6


def test_mutual_leaves_a_mutually_calibrated_model_alone(data):
    """The chat model identical to the reference: nothing to correct (the projection is the identity)."""
    cal = MutualCalibration().fit(data.base, data.base)
    assert cal.divergence_ < 1e-6
    np.testing.assert_allclose(cal.bin_projected_, cal.bin_confidence_, atol=2e-3)


def test_mutual_projection_stops_at_the_reference_ceiling():
    """Known answer, worked by hand. Reference bins (rows): 150 pairs at rate 0.1, 50 at rate 0.7, so
    R = (15, 35); chat bins (columns): 150 low pairs, 50 top pairs. The compatible set lets every right
    answer of a reference bin sit on any of its pairs, so the top bin can be right at most
    (min(15, 10) + min(35, 40)) / 50 = 0.9 (the max-flow cut), and at least (0 + 25) / 50 = 0.5. A chat
    model claiming 0.96 there is lowered to exactly 0.9, not towards the reference's 0.7, under both
    losses; one claiming 0.85 is already compatible and is left alone."""
    counts = np.array([[140.0, 10.0], [10.0, 40.0]])
    ref_sums = np.array([15.0, 35.0])
    for loss in ("log", "brier"):
        h, res = project_mutual(counts, ref_sums, np.array([2 / 150, 0.96]), loss)
        assert res.success
        np.testing.assert_allclose(h, [5 / 150, 0.9], atol=1e-6)  # totals kept: 150 h_low + 50 h_top = 50
        h, _ = project_mutual(counts, ref_sums, np.array([7.5 / 150, 0.85]), loss)
        np.testing.assert_allclose(h, [7.5 / 150, 0.85], atol=1e-6)


def test_mutual_is_the_identity_when_the_chat_model_matches_each_reference_bin():
    """Sufficient condition for doing nothing: if the chat model's probabilities add up to the reference's
    in every reference bin, y_ij = (chat mass of cell ij) is feasible, so c is in the compatible set and
    the projection returns it, however over-confident the chat model is on a single question."""
    rng = np.random.default_rng(7)
    for _ in range(5):
        counts = rng.integers(1, 30, size=(6, 5)).astype(float)
        chat_mass = counts * rng.uniform(0.02, 0.98, size=counts.shape)  # mean chat probability per cell
        c = chat_mass.sum(axis=0) / counts.sum(axis=0)
        h, res = project_mutual(counts, chat_mass.sum(axis=1), c, "log")
        np.testing.assert_allclose(h, c, atol=1e-6)


def _two_level_pair(aligned: bool, n: int = 400, k: int = 4, conf: float = 0.8, ref: float = 0.3):
    """Chat model: `conf` on its answer b, the rest spread evenly. Reference: `ref` on one option, the rest
    spread evenly; that option is b itself (aligned) or, independently of b, each option equally often."""
    q = np.arange(n)
    b = q % k
    r = b if aligned else (q // k) % k
    chat = np.full((n, k), np.log((1 - conf) / (k - 1)))
    chat[q, b] = np.log(conf)
    base = np.full((n, k), np.log((1 - ref) / (k - 1)))
    base[q, r] = np.log(ref)
    return base, chat


def test_mutual_moves_only_where_the_reference_separates_the_chat_answers():
    """The analytic property behind the near-vanilla real runs. Both references below give the same
    probabilities (0.3 on one option of 4, 0.7 / 3 on the others), both are calibrated on their two bins
    for some labelling, and the chat model says 0.8 on its answer in both cases.

    * aligned (the reference's 0.3 is always on the chat model's answer): the reference bins are exactly the
      chat model's answers and the other options, each cell is a whole bin, the compatible set is the single
      point (0.7 / 3, 0.3), and the fit must move the chat model's 0.8 to exactly 0.3;
    * mixed (the reference's 0.3 is on the chat model's answer in a quarter of the questions): the 0.7 n
      right answers of the 0.233 bin may all fall on the 0.75 n chat answers it holds, so the chat answers
      can be right up to (min(0.3 n, 0.25 n) + min(0.7 n, 0.75 n)) / n = 0.95 >= 0.8: nothing contradicts
      the chat model and the fit is the identity (divergence 0)."""
    base, chat = _two_level_pair(aligned=True)
    cal = MutualCalibration().fit(base, chat)
    np.testing.assert_allclose(cal.bin_confidence_, [0.2 / 3, 0.8], atol=1e-9)
    np.testing.assert_allclose(cal.bin_projected_, [0.7 / 3, 0.3], atol=1e-6)
    np.testing.assert_allclose(cal.predict_proba(chat).max(axis=1), 0.3, atol=1e-6)

    base, chat = _two_level_pair(aligned=False)
    assert (base.argmax(1) == chat.argmax(1)).mean() == 0.25
    cal = MutualCalibration().fit(base, chat)
    np.testing.assert_allclose(cal.bin_projected_, cal.bin_confidence_, atol=1e-6)
    assert cal.divergence_ < 1e-9
    np.testing.assert_allclose(cal.predict_proba(chat), softmax(chat), atol=1e-6)

    # a flat (uninformative) reference contradicts nothing either: one bin, R = n = the chat model's total
    cal = MutualCalibration().fit(np.zeros_like(chat), chat)
    np.testing.assert_allclose(cal.bin_projected_, cal.bin_confidence_, atol=1e-6)


def test_mutual_lowers_an_over_confident_chat_model_and_keeps_its_answers(data):
    cal = MutualCalibration().fit(data.base, data.chat)
    p = cal.predict_proba(data.chat)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert np.all(np.diff(cal.bin_projected_) >= 0)  # the map is increasing
    assert p.max(axis=1).mean() < softmax(data.chat).max(axis=1).mean() - 0.05
    assert (p.argmax(1) == data.chat.argmax(1)).mean() > 0.99
    with pytest.raises(InputError, match="loss"):
        MutualCalibration(loss="hinge").fit(data.base, data.chat)


def test_run_with_the_new_methods(tmp_path, monkeypatch):
    """Both go through `refcal run --methods` (fake backends) and report metrics and fit records."""
    from refcal.backends.fake import FakeBackend
    from refcal.cli import main
    from refcal.data.base import Question
    from refcal.run import load_result, protocol

    monkeypatch.setenv("REFCAL_CACHE_DIR", str(tmp_path / "cache"))
    backends = {"fake-base": FakeBackend("base", scale=1.0), "fake-chat": FakeBackend("chat", scale=3.0)}
    monkeypatch.setattr("refcal.backends.load_backend", lambda spec, **kw: backends[spec])
    rng = np.random.default_rng(0)
    qs = []
    for i in range(150):
        y = int(rng.integers(4))
        qs.append(Question(id=f"q-{i}", question=f"question {i} #{y}", choices=tuple(f"option {j}" for j in range(4)),
                           label=y))
    monkeypatch.setattr(protocol, "load_questions", lambda cfg, split: qs)
    monkeypatch.setattr(protocol, "default_split", lambda name: "test")
    rc = main(["run", "--base", "fake-base", "--chat", "fake-chat", "--dataset", "toy", "--scoring", "letter",
               "--methods", "chat,daca,daca_agree,mutual", "--no-report", "--no-progress", "-o", str(tmp_path / "r")])
    assert rc == 0
    res = load_result(tmp_path / "r")
    for key in NEW:
        assert np.isfinite(res.methods[key]["ece"].mean)
        assert len(res.fits[key]) == 5 and all(r.error is None for r in res.fits[key])
    # the agreement-aware fit records keep both temperatures (metrics.json round trip)
    assert all(r.temperature_agree > 0 and r.temperature_disagree > 0 and r.temperature is None
               for r in res.fits["daca_agree"])


@pytest.mark.parametrize("world", ["calibrated-base", "overconfident-base", "agree-gain"])
def test_synthetic_worlds(world):
    from refcal import metrics
    from refcal.calibrate import TemperatureScaling, agreement_diagnostics
    from refcal.synthetic import make_world

    d = make_world(world, 4000, 4, chat_temperature=3.0, seed=0)
    assert d.base.shape == d.chat.shape == (4000, 4) and d.labels.shape == (4000,)
    # the chat model is over-confident by exactly the stated temperature: labelled TS finds it
    assert TemperatureScaling().fit(d.chat, d.labels).temperature_ == pytest.approx(3.0, rel=0.1)
    base_ece = metrics.ece(softmax(d.base), d.labels)
    diag = agreement_diagnostics(d.base, d.chat, d.labels)
    if world == "overconfident-base":
        assert base_ece > 0.08  # the reference itself is over-confident
    else:
        assert base_ece < 0.03
    if world == "agree-gain":  # the chat model is more accurate, and the gain sits where the two agree
        assert diag["agreement_rate"] < 0.7
        chat_acc = (d.chat.argmax(1) == d.labels).mean()
        assert chat_acc > (d.base.argmax(1) == d.labels).mean() + 0.03


def test_demo_compares_every_method_in_a_world():
    from click.testing import CliRunner

    from refcal.cli.demo import demo

    out = CliRunner().invoke(demo, ["-n", "600", "--world", "overconfident-base", "--methods", "all"])
    assert out.exit_code == 0, out.output
    assert "synthetic (overconfident-base)" in out.output
    for label in ("agreement-aware DACA", "mutual calibration", "DACA", "temperature scaling"):
        assert label in out.output
    assert "CAPE" not in out.output  # needs another score source, which synthetic data does not have
    bad = CliRunner().invoke(demo, ["--world", "flat"])
    assert bad.exit_code != 0 and "flat" in bad.output


# ---------------------------------------------------------------------------------------------- refcal fit / apply
@pytest.fixture()
def score_files(data, tmp_path):
    from refcal.scores import ScoreSet

    ids = [f"q{i}" for i in range(len(data.labels))]
    # the base file lists the questions in another order: fit, apply and evaluate must join on id
    rev = slice(None, None, -1)
    base = ScoreSet.from_rows(ids[rev], data.base[rev].tolist(), data.labels[rev].tolist()).save(tmp_path / "b.parquet")
    chat = ScoreSet.from_rows(ids, data.chat.tolist(), data.labels.tolist()).save(tmp_path / "c.parquet")
    nolabels = ScoreSet.from_rows(ids, data.chat.tolist()).save(tmp_path / "c_nl.parquet")
    return str(base), str(chat), str(nolabels)


def test_cli_fit_daca_agree_records_both_temperatures_and_applies(data, score_files, tmp_path, capsys):
    from refcal.cli import main
    from refcal.scores import load_scores

    base, chat, nolabels = score_files
    out = tmp_path / "agree.json"
    assert main(["fit", "--base", base, "--chat", nolabels, "--method", "daca_agree", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    ref = AgreementDACA().fit(data.base, data.chat)
    doc = json.loads(out.read_text())
    assert doc["method"] == "daca_agree"
    assert doc["parameters"] == {"temperature_agree": ref.temperature_agree_,
                                 "temperature_disagree": ref.temperature_disagree_}
    assert f"{ref.temperature_agree_:.6g}" in printed and f"{ref.temperature_disagree_:.6g}" in printed
    assert doc["inputs"]["base"] == base
    # apply: needs the base scores (the agreement), joined on id
    calibrated = tmp_path / "cal.parquet"
    assert main(["apply", "--scores", chat, "--calibrator", str(out), "-o", str(calibrated)]) == 2
    assert "pass --base" in capsys.readouterr().err
    assert main(["apply", "--scores", chat, "--base", base, "--calibrator", str(out), "-o", str(calibrated)]) == 0
    np.testing.assert_allclose(load_scores(calibrated).logits, ref.predict_log_proba(data.chat, data.base),
                               rtol=0, atol=1e-12)
    metrics_json = tmp_path / "m.json"
    assert main(["evaluate", "--scores", chat, "--base", base, "--calibrator", str(out), "--json",
                 str(metrics_json)]) == 0
    from refcal.metrics import ece

    got = json.loads(metrics_json.read_text())["metrics"]["calibrated"]["ece"]
    assert got == pytest.approx(ece(ref.predict_proba(data.chat, data.base), data.labels), abs=1e-12)


def test_cli_fit_mutual_round_trips_through_apply_and_evaluate(data, score_files, tmp_path, capsys):
    from refcal.cli import main
    from refcal.metrics import ece
    from refcal.scores import load_scores

    base, chat, nolabels = score_files
    out = tmp_path / "mutual.json"
    assert main(["fit", "--base", base, "--chat", nolabels, "--method", "mutual", "-o", str(out)]) == 0
    assert "divergence = " in capsys.readouterr().out
    ref = MutualCalibration().fit(data.base, data.chat)
    calibrated = tmp_path / "cal.parquet"
    assert main(["apply", "--scores", chat, "--calibrator", str(out), "-o", str(calibrated)]) == 0
    np.testing.assert_allclose(load_scores(calibrated).logits, ref.predict_log_proba(data.chat), rtol=0, atol=1e-12)
    metrics_json = tmp_path / "m.json"
    assert main(["evaluate", "--scores", chat, "--calibrator", str(out), "--json", str(metrics_json)]) == 0
    got = json.loads(metrics_json.read_text())["metrics"]["calibrated"]["ece"]
    assert got == pytest.approx(ece(ref.predict_proba(data.chat), data.labels), abs=1e-12)
    assert main(["apply", "--scores", chat, "--base", base, "--calibrator", str(out), "-o", str(calibrated)]) == 2
    assert "(daca_agree); drop it" in capsys.readouterr().err


def test_cli_fit_ts_needs_labels_and_no_base(data, score_files, tmp_path, capsys):
    from refcal.calibrate import TemperatureScaling, VectorScaling
    from refcal.cli import main

    base, chat, nolabels = score_files
    out = tmp_path / "ts.json"
    assert main(["fit", "--chat", nolabels, "--method", "ts", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "have no label" in err and "--method ts" in err and err.count("\n") == 1
    assert main(["fit", "--chat", chat, "--method", "ts", "-o", str(out)]) == 0
    cal = load_calibrator(out)
    assert isinstance(cal, TemperatureScaling)
    assert cal.temperature_ == pytest.approx(TemperatureScaling().fit(data.chat, data.labels).temperature_, rel=1e-12)
    assert json.loads(out.read_text())["inputs"]["base"] is None
    assert main(["fit", "--chat", chat, "--method", "ts", "--scaling", "vector", "-o", str(out)]) == 0
    assert isinstance(load_calibrator(out), VectorScaling)
    for method in ("daca", "daca_agree", "mutual"):  # label-free methods need the base model
        assert main(["fit", "--chat", chat, "--method", method, "-o", str(out)]) == 2
        assert "pass --base" in capsys.readouterr().err
    assert main(["fit", "--base", base, "--chat", chat, "--method", "ts", "-o", str(out)]) == 2
    assert "does not read --base" in capsys.readouterr().err
    assert main(["fit", "--base", base, "--chat", chat, "--method", "mutual", "--scaling", "vector",
                 "-o", str(out)]) == 2
    assert "one form only" in capsys.readouterr().err
