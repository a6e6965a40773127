"""BaseCal-Proj (`proj`): the least-squares map against independent solvers, label blindness, the hidden
states at the answer position (the base head there reproduces the letter scores), their cache, and `refcal
run --methods proj` on tiny local models, fake models and (slow) the packaged pair."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg

from refcal._math import log_softmax
from refcal.calibrate.methods import HIDDEN_SOURCE, METHODS, MethodContext
from refcal.calibrate.proj import BaseCalProj, ProjInputs, fit_linear_map
from refcal.cli import main
from refcal.errors import FitError, InputError, MismatchError, NotFittedError
from refcal.metrics import TopLabel
from refcal.scoring import hidden_states


class _Head:
    """A numpy stand-in of :class:`refcal.backends.heads.OptionHead` (no torch needed)."""

    def __init__(self, weight, bias=None, softcap=None):
        self.weight, self.bias, self.softcap = weight, bias, softcap

    def logits(self, h):
        z = h @ self.weight.T + (0 if self.bias is None else self.bias)
        return np.tanh(z / self.softcap) * self.softcap if self.softcap else z


def _world(n=300, hc=12, hb=9, k=4, seed=0, noise=0.3):
    """Chat states, base states an affine image of them plus noise, a base head and chat logits."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=(n, hc))
    a = rng.normal(size=(hc, hb)) / np.sqrt(hc)
    v = u @ a + rng.normal(size=hb) + noise * rng.normal(size=(n, hb))
    head = _Head(rng.normal(size=(k, hb)), rng.normal(size=k), softcap=8.0)
    g = 3 * rng.normal(size=(n, k))
    g[: n // 5, -1] = -np.inf  # some questions have k - 1 options
    return u, v, head, g


# ---------------------------------------------------------------------------------------------- the map
def _with_intercept(x):
    return np.hstack([x, np.ones((x.shape[0], 1))])


def test_overdetermined_map_matches_scipy_qr_solver():
    """n > H_c: the unique least-squares solution; scipy's complete-orthogonal-factorisation driver
    (gelsy, not the SVD numpy uses) on the design with an explicit column of ones gives the same."""
    u, v, _, _ = _world(n=200)
    w, c, rank = fit_linear_map(u, v)
    sol = scipy.linalg.lstsq(_with_intercept(u), v, lapack_driver="gelsy")[0]
    np.testing.assert_allclose(w, sol[:-1], rtol=0, atol=1e-10)
    np.testing.assert_allclose(c, sol[-1], rtol=0, atol=1e-10)
    assert rank == u.shape[1]


def test_underdetermined_map_is_the_minimum_norm_interpolant():
    """n < H_c (the packaged pair: 120 calibration questions, 576 chat dimensions): sklearn's
    LinearRegression (centred, scipy gelsd) gives the same minimum-norm map, which interpolates."""
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(1)
    u, v = rng.normal(size=(15, 40)), rng.normal(size=(15, 6))
    w, c, rank = fit_linear_map(u, v)
    ref = LinearRegression().fit(u, v)
    np.testing.assert_allclose(w, ref.coef_.T, rtol=0, atol=1e-10)
    np.testing.assert_allclose(c, ref.intercept_, rtol=0, atol=1e-10)
    np.testing.assert_allclose(u @ w + c, v, rtol=0, atol=1e-10)
    assert rank == 14  # centring removes one dimension
    # any other interpolant (add a direction orthogonal to the centred rows) has a larger norm
    null = scipy.linalg.null_space(u - u.mean(axis=0))[:, :1]
    other = w + null @ rng.normal(size=(1, 6))
    np.testing.assert_allclose((u - u.mean(0)) @ other, (u - u.mean(0)) @ w, atol=1e-10)
    assert np.linalg.norm(other) > np.linalg.norm(w)


def test_ridge_matches_sklearn_and_the_closed_form():
    from sklearn.linear_model import Ridge

    u, v, _, _ = _world(n=40, hc=25)
    w, c, _ = fit_linear_map(u, v, alpha=3.0)
    ref = Ridge(alpha=3.0, solver="svd").fit(u, v)
    np.testing.assert_allclose(w, ref.coef_.T, rtol=0, atol=1e-9)
    np.testing.assert_allclose(c, ref.intercept_, rtol=0, atol=1e-9)
    uc, vc = u - u.mean(0), v - v.mean(0)
    np.testing.assert_allclose(w, np.linalg.solve(uc.T @ uc + 3.0 * np.eye(25), uc.T @ vc), atol=1e-9)


def test_recovers_a_known_affine_map():
    u, v, _, _ = _world(n=2000, noise=0.0)
    rng = np.random.default_rng(0)  # the same draws as _world
    rng.normal(size=(2000, 12))
    a = rng.normal(size=(12, 9)) / np.sqrt(12)
    cal = BaseCalProj().fit(u, v)
    np.testing.assert_allclose(cal.coef_, a, atol=1e-10)
    assert cal.r2_ == pytest.approx(1.0) and cal.rank_ == 12 and cal.n_ == 2000


def test_exact_map_gives_the_base_models_probability_of_the_chat_answer():
    """When the chat states are an invertible affine image of the base states the map is exact, so the
    projected confidence is the base head's own probability of the chat model's answer (BaseCal-ReEval)."""
    rng = np.random.default_rng(4)
    v = rng.normal(size=(100, 6))
    u = v @ rng.normal(size=(6, 6)) + 2.0
    head = _Head(rng.normal(size=(3, 6)), softcap=4.0)
    g = rng.normal(size=(100, 3))
    b, conf = BaseCalProj().fit(u[:60], v[:60]).predict_top_label(u[60:], head, g[60:])
    base_lp = log_softmax(head.logits(v[60:]))
    np.testing.assert_array_equal(b, g[60:].argmax(1))
    np.testing.assert_allclose(conf, np.exp(base_lp[np.arange(40), b]), rtol=1e-9)


def test_missing_options_get_no_probability():
    u, v, head, g = _world()
    p = np.exp(BaseCalProj().fit(u, v).predict_log_proba(u, head, g))
    assert np.all(p[: len(g) // 5, -1] == 0)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


def test_fit_and_apply_errors():
    u, v, head, g = _world(n=10)
    with pytest.raises(NotFittedError):
        BaseCalProj().transform(u)
    with pytest.raises(MismatchError, match="base_hidden has 9"):
        BaseCalProj().fit(u, v[:9])
    with pytest.raises(FitError, match="at least 2"):
        BaseCalProj().fit(u[:1], v[:1])
    with pytest.raises(InputError, match="non-finite"):
        BaseCalProj().fit(np.where(np.eye(10, 12) > 0, np.nan, u), v)
    with pytest.raises(InputError, match="alpha"):
        BaseCalProj(alpha=-1).fit(u, v)
    cal = BaseCalProj().fit(u, v)
    with pytest.raises(InputError, match="width 11"):
        cal.transform(u[:, :11])
    with pytest.raises(MismatchError):
        ProjInputs(u, v[:9], g, head)


# ---------------------------------------------------------------------------------------------- registry
def test_fit_never_reads_labels():
    """Through the registry: true labels, every label -1, scrambled labels, none: the same fit and output."""
    u, v, head, g = _world()
    m = METHODS["proj"]
    assert not m.needs_labels and m.top_label and m.source == HIDDEN_SOURCE
    cal, test = ProjInputs(u[:100], v[:100], g[:100], head), ProjInputs(u[100:], v[100:], g[100:], head)
    labels = np.random.default_rng(0).integers(0, 3, 100)
    outs, coefs = [], []
    for y in (labels, np.full(100, -1), labels[::-1].copy(), None):
        fitted = m.fit(None, cal, y, scaling="temperature")
        coefs.append(fitted.coef_)
        outs.append(m.apply(fitted, None, test))
    for other, coef in zip(outs[1:], coefs[1:], strict=True):
        np.testing.assert_array_equal(coef, coefs[0])
        np.testing.assert_array_equal(other.confidence, outs[0].confidence)
        np.testing.assert_array_equal(other.prediction, outs[0].prediction)
    assert isinstance(outs[0], TopLabel)
    np.testing.assert_array_equal(outs[0].prediction, g[100:].argmax(1))  # the chat model's answer


def test_unfitted_unit_keeps_the_chat_models_confidence():
    from refcal.run.evaluate import Unfitted

    u, v, head, g = _world(n=20)
    out = METHODS["proj"].apply(Unfitted("no fit"), None, ProjInputs(u, v, g, head))
    np.testing.assert_allclose(out.confidence, np.exp(log_softmax(g)).max(1))


def test_why_not():
    m = METHODS["proj"]
    assert "letter scoring only" in m.why_not(MethodContext(has_labels=True, scoring="cloze", hidden_states=True))
    assert "local transformers models only" in m.why_not(MethodContext(has_labels=True, scoring="letter"))
    assert m.why_not(MethodContext(has_labels=False, scoring="letter", hidden_states=True)) is None


# ---------------------------------------------------------------------------------------------- hidden states
@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_transformers_backend import _tiny_backend

    return _tiny_backend(batch_size=3)


def _questions(n=9):
    from refcal.data.base import Question

    return [Question(f"q{i}", f"Question number {i}: {'why ' * (i % 4)}is it so?",
                     tuple(f"opt {j}{i}" for j in range(3 + i % 2)), i % 3) for i in range(n)]


def test_base_head_at_the_answer_position_reproduces_the_letter_scores(tiny):
    """The hidden state is taken where the letter logits are read: the k head rows (soft-capped, Gemma 2)
    at it give the backend's letter scores."""
    from refcal.tasks.prompts import letter_requests, option_letters

    qs = _questions()
    reqs = letter_requests(qs, template=2)
    h = tiny.answer_hidden_states(reqs)
    assert h.dtype == np.float32 and h.shape == (len(qs), 32)
    head = tiny.option_head(option_letters(4))
    assert head.softcap == 5.0
    for i, s in enumerate(tiny.score_letters(reqs)):
        np.testing.assert_allclose(head.logits(h[i: i + 1])[0, : len(s)], s, rtol=0, atol=1e-4)
        assert np.abs(head.logits(h[i: i + 1])[0, : len(s)]).max() > 0.5  # not trivially zero


def test_hidden_states_are_cached_and_resume(tiny, tmp_path, monkeypatch):
    qs = _questions()
    meta = {"dataset": "toy", "split": "test"}
    first = hidden_states(tiny, qs, template=1, cache_dir=tmp_path, meta=meta)
    assert first.ids == tuple(q.id for q in qs) and first.x.shape == (9, 32)
    parts = sorted((tmp_path / "hidden").glob("*/part-*.npz"))
    assert len(parts) >= 3  # one file per batch of at most 3

    calls = []
    forward = type(tiny)._forward
    monkeypatch.setattr(type(tiny), "_forward", lambda self, rows, *a: calls.append(len(rows)) or forward(self, rows, *a))
    again = hidden_states(tiny, qs, template=1, cache_dir=tmp_path, meta=meta)
    assert calls == []  # everything from the cache
    np.testing.assert_array_equal(again.x, first.x)

    parts[0].unlink()  # an interrupted run: one batch missing
    resumed = hidden_states(tiny, qs, template=1, cache_dir=tmp_path, meta=meta)
    assert 1 <= len(calls) and sum(calls) <= 3
    np.testing.assert_array_equal(resumed.x, first.x)
    np.testing.assert_array_equal(resumed.take(["q3", "q0"]), first.x[[3, 0]])
    with pytest.raises(InputError, match="no hidden state"):
        resumed.take(["nope"])
    # another template is another prompt, so another cache entry
    calls.clear()
    other = hidden_states(tiny, qs, template=2, cache_dir=tmp_path, meta=meta)
    assert sum(calls) == 9 and not np.allclose(other.x, first.x)


def test_torn_cache_file_is_recomputed(tiny, tmp_path):
    qs = _questions(4)
    first = hidden_states(tiny, qs, cache_dir=tmp_path)
    part = sorted((tmp_path / "hidden").glob("*/part-*.npz"))[0]
    part.write_bytes(part.read_bytes()[:40])
    np.testing.assert_array_equal(hidden_states(tiny, qs, cache_dir=tmp_path).x, first.x)


# ---------------------------------------------------------------------------------------------- refcal run
def _save_tiny(path, seed):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_transformers_backend import _tiny_backend

    torch.manual_seed(seed)
    be = _tiny_backend()
    if seed:
        with torch.no_grad():
            for p in be.model.parameters():
                p.add_(0.05 * torch.randn_like(p))
    be.model.save_pretrained(path)
    be.tokenizer.save_pretrained(path)
    return str(path)


def test_run_with_proj_on_local_models(tmp_path):
    base, chat = _save_tiny(tmp_path / "base", 0), _save_tiny(tmp_path / "chat", 1)
    out = tmp_path / "run"
    rc = main(["run", "--base", base, "--chat", chat, "-d", "sciq", "--scoring", "letter", "--limit", "20",
               "--n-splits", "2", "--methods", "chat,reeval,proj", "--no-progress", "--cache-dir",
               str(tmp_path / "cache"), "-o", str(out)])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert "proj" in doc["methods"] and "proj" not in doc["unavailable"]
    proj = doc["methods"]["proj"]
    assert 0 <= proj["ece"]["mean"] <= 1 and np.isfinite(proj["mean_confidence"]["mean"])
    # the chat model's answers: the same accuracy as the chat model
    assert proj["accuracy"]["values"] == doc["methods"]["chat"]["accuracy"]["values"]
    assert len(doc["fits"]["proj"]) == 2 and all(r["n"] == 6 for r in doc["fits"]["proj"])
    assert any((tmp_path / "cache" / "hidden").iterdir())


@pytest.mark.parametrize(("spec", "scoring", "why"), [
    ("fake:", "letter", "local transformers models only"),
    ("fake:", "cloze", "letter scoring only"),
])
def test_run_lists_proj_as_unavailable(tmp_path, spec, scoring, why):
    out = tmp_path / "run"
    rc = main(["run", "--base", f"{spec}b", "--chat", f"{spec}c", "-d", "sciq", "--scoring", scoring,
               "--limit", "12", "--n-splits", "1", "--methods", "chat,proj", "--no-progress", "-o", str(out)])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    assert "proj" not in doc["methods"] and why in doc["unavailable"]["proj"]


@pytest.mark.slow
def test_real_models_proj_end_to_end(tmp_path, monkeypatch):
    """The packaged pair (Gemma-3-270M base, SmolLM2-135M-Instruct chat), 6 SciQ questions, letter scoring;
    the base head at the base model's extracted states gives back its letter scores (the answer position)."""
    errors = []
    head_error = ProjInputs.head_error
    monkeypatch.setattr(ProjInputs, "head_error", lambda self, base: errors.append(head_error(self, base)) or errors[-1])
    out = tmp_path / "run"
    rc = main(["run", "--scoring", "letter", "--limit", "6", "--n-splits", "1", "--methods", "chat,proj",
               "--no-progress", "-o", str(out)])
    assert rc == 0
    doc = json.loads((out / "metrics.json").read_text())
    conf = doc["methods"]["proj"]["mean_confidence"]["mean"]
    assert "proj" not in doc["unavailable"] and 0 < conf <= 1
    # float32 on CPU; the scores and the states come from differently padded batches (~1e-5)
    assert len(errors) == 1 and errors[0] < 1e-3
    import pyarrow.parquet as pq

    pred = pq.read_table(out / "predictions" / "proj.parquet").to_pydict()
    assert pred  # the per-question answers and confidences were written
