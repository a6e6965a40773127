"""Scoring tasks: the protocol, the letter / cloze / permuted-letter (CAPE) tasks, and CAPE's rotation
invariance on a fake backend and on the real packaged models."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from refcal.backends.fake import FakeBackend
from refcal.data.base import Question
from refcal.errors import InputError, ModelError
from refcal.options import SCORINGS
from refcal.scoring import score_questions
from refcal.tasks import (
    TASKS,
    ClozeTask,
    LetterRequest,
    LetterTask,
    PermutedLetterTask,
    Task,
    cape_orders,
    make_task,
    permute,
    rotate,
)

QS = [
    Question("q0", "Which is a mammal?", ("whale", "shark", "trout", "eel"), 0, "bio"),
    Question("q1", "2 + 3 = ?", ("4", "5", "6"), 1, "math"),
    Question("q2", "Largest planet?", ("Mars", "Venus", "Jupiter", "Mercury", "Earth"), 2, "astro"),
    Question("q3", "Water freezes at (Celsius)?", ("0", "100"), 0, "phys"),
]


def test_every_scoring_mode_has_a_task_that_follows_the_protocol():
    assert set(TASKS) == set(SCORINGS)
    for name in SCORINGS:
        task = make_task(name)
        assert isinstance(task, Task) and task.name == name and task.meta()["scoring"] == name
    # the three cloze modes share one cache file, letter and cape have their own
    keys = {name: str(make_task(name).cache_key()) for name in SCORINGS}
    assert keys["cloze"] == keys["cloze-norm"] == keys["cloze-token"]
    assert len({keys["letter"], keys["cloze"], keys["cape"]}) == 3
    with pytest.raises(InputError, match="scoring 'bogus'"):
        make_task("bogus")
    with pytest.raises(InputError, match="chat template applies to letter scoring only"):
        make_task("cloze-norm", chat=True)


def test_rotate_moves_options_and_label():
    q = QS[0]
    r = rotate(q, 1)
    assert r.choices == ("shark", "trout", "eel", "whale") and r.label == 3
    assert r.id == q.id and r.question == q.question and r.subject == q.subject
    assert rotate(r, 3) == q and rotate(q, 4) == q


def test_permuted_requests_and_mapping_back_to_the_original_order():
    task = PermutedLetterTask(template=2)
    q = QS[1]
    reqs = task.requests(q)
    assert len(reqs) == 3 and all(isinstance(r, LetterRequest) for r in reqs)
    assert "A: 4\nB: 5\nC: 6" in reqs[0].prompt and "A: 5\nB: 6\nC: 4" in reqs[1].prompt
    assert "A: 6\nB: 4\nC: 5" in reqs[2].prompt
    # a backend that scores each position with the (original) index of the option it shows
    results = [np.array([float((j + s) % 3) for j in range(3)]) for s in range(3)]
    raw = task.reduce(q, results)
    assert raw == {"shifts": [[0.0, 1.0, 2.0]] * 3}
    assert task.valid(q, raw) and not task.valid(QS[0], raw)
    with pytest.raises(ModelError, match="2 results for 3"):
        task.reduce(q, results[:2])


def test_cape_finish_is_the_log_of_the_mean_softmax():
    task = PermutedLetterTask()
    rows = [[0.0, 1.0, None], [2.0, -1.0, 0.5], [-3.0, 0.0, 3.0]]
    got = np.array(task.finish({"shifts": rows}))
    x = np.array([[-np.inf if v is None else v for v in r] for r in rows])
    p = np.exp(x) / np.exp(x).sum(1, keepdims=True)  # independent: plain softmax, then the mean
    np.testing.assert_allclose(got, np.log(p.mean(0)), rtol=1e-12)
    np.testing.assert_allclose(np.exp(got).sum(), 1.0)
    # huge logits stay finite
    assert np.isfinite(task.finish({"shifts": [[1000.0, -1000.0], [-1000.0, 1000.0]]})).all()


def _rotated(qs, shift):
    return [rotate(q, shift + i) for i, q in enumerate(qs)]  # a different shift per question


@pytest.mark.parametrize("shift", [1, 2])
def test_rotating_options_rotates_the_cape_result_and_nothing_else(shift):
    be = FakeBackend("order-sensitive", scale=2.0)
    ref = score_questions(be, QS, scoring="cape", cache=False, progress=False)
    rot = score_questions(be, _rotated(QS, shift), scoring="cape", cache=False, progress=False)
    for i, q in enumerate(QS):
        k, s = len(q.choices), (shift + i) % len(q.choices)
        # option j of the rotated question is option (j + s) % k of the original
        np.testing.assert_array_equal(rot.logits[i, :k], ref.logits[i, [(j + s) % k for j in range(k)]])
        assert rot.labels[i] == (ref.labels[i] - s) % k
    assert list(rot.ids) == list(ref.ids) and list(rot.n_options) == list(ref.n_options)
    assert list(rot.columns["subject"]) == list(ref.columns["subject"]) and rot.meta == ref.meta
    # the fake is order-sensitive: plain letter scoring of rotated options is not a rotation
    let = score_questions(be, QS, scoring="letter", cache=False, progress=False)
    let_rot = score_questions(be, _rotated(QS, shift), scoring="letter", cache=False, progress=False)
    k = len(QS[0].choices)
    assert not np.allclose(let_rot.logits[0, :k], let.logits[0, [(j + shift) % k for j in range(k)]])


def test_letter_and_cloze_tasks_validate_cache_rows():
    q = QS[1]
    letter, cloze = LetterTask(), ClozeTask("cloze-norm")
    assert letter.valid(q, [1.0, None, -2.0]) and letter.valid(q, {"l": [1.0, 2.0, 3.0], "f": 1})
    for bad in (None, [1.0, 2.0], [1.0, float("nan"), 2.0], {"l": [1.0, 2.0, 3.0]}, [True, 1.0, 2.0], "x"):
        assert not letter.valid(q, bad)
    good = {"lp": [-1.0, -2.0, -3.0], "nt": [1, 2, 1], "nc": [2, 2, 2]}
    assert cloze.valid(q, good) and cloze.finish(good) == [-0.5, -1.0, -1.5]
    for bad in ({**good, "nt": [1, 2]}, {**good, "lp": [-1.0, None, -3.0]}, {**good, "x": 1}, [-1.0, -2.0, -3.0]):
        assert not cloze.valid(q, bad)


# ------------------------------------------------------------------------------------------ real models
@pytest.fixture(scope="module")
def smollm2():
    from refcal.backends import load_backend

    return load_backend("smollm2-135m-instruct", batch_size=8, device="cpu")


@pytest.mark.slow
def test_cape_rotation_invariance_on_the_packaged_chat_model(smollm2):
    from refcal.data import load_dataset

    qs = load_dataset("sciq", limit=3, seed=0)
    ref = score_questions(smollm2, qs, scoring="cape", cache=False, progress=False)
    for shift in (1, 2):
        rot = score_questions(smollm2, _rotated(qs, shift), scoring="cape", cache=False, progress=False)
        for i, q in enumerate(qs):
            k, s = len(q.choices), (shift + i) % len(q.choices)
            p_ref = np.exp(ref.logits[i, [(j + s) % k for j in range(k)]])
            # the same k prompts, possibly in other batches: float32 differences only
            np.testing.assert_allclose(np.exp(rot.logits[i, :k]), p_ref, atol=1e-5)
            assert np.argmax(rot.logits[i, :k]) == np.argmax(p_ref)


# ------------------------------------------------------------------------------------------ CAPE options
QS4 = [q for q in QS if len(q.choices) <= 4]  # --cape-orders all takes at most 4 options


def test_cape_orders_cyclic_and_all():
    assert cape_orders(3) == [(0, 1, 2), (1, 2, 0), (2, 0, 1)]
    assert cape_orders(3, "all") == [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    assert len(cape_orders(4, "all")) == 24 and len(set(cape_orders(4, "all"))) == 24
    with pytest.raises(InputError, match=r"--cape-orders all needs at most 4 options .* has 5 \(120 orders\)"):
        cape_orders(5, "all")
    with pytest.raises(InputError, match="--cape-orders 'some'"):
        cape_orders(3, "some")


def test_permute_moves_options_and_label():
    q = QS[0]  # label 0: "whale"
    p = permute(q, (2, 0, 3, 1))
    assert p.choices == ("trout", "whale", "eel", "shark") and p.label == 1
    assert permute(q, (1, 2, 3, 0)) == rotate(q, 1)
    with pytest.raises(InputError, match="not an order of 4 options"):
        permute(q, (0, 0, 1, 2))


def _expected_cape(be: FakeBackend, q: Question, task: PermutedLetterTask) -> np.ndarray:
    """CAPE computed independently: each member's prompt scored by the fake's own formula, the position
    scores moved back to the options with an inverse permutation, softmax, plain mean."""
    probs = []
    for t, order in task.members(len(q.choices)):
        req = task_request(permute(q, order), t)
        v = be.vector(req.prefix + req.prompt, len(q.choices), req.prompt)
        mapped = v[np.argsort(order)]  # option i was shown at the position j with order[j] == i
        probs.append(np.exp(mapped) / np.exp(mapped).sum())
    return np.log(np.mean(probs, axis=0))


def task_request(q: Question, template: int) -> LetterRequest:
    from refcal.tasks.prompts import letter_requests

    return letter_requests([q], template=template)[0]


@pytest.mark.parametrize("templates", ["one", "all"])
def test_full_permutation_cape_matches_an_independent_computation(templates):
    be = FakeBackend("pos", scale=2.0, bias=(1.5, 0.5, 0.0, -0.5))
    task = PermutedLetterTask(template=2, orders="all", templates=templates)
    got = score_questions(be, QS4, task=task, cache=False, progress=False)
    n_members = {"one": 1, "all": 5}[templates]
    assert be.calls == n_members * sum(math.factorial(len(q.choices)) for q in QS4)
    for i, q in enumerate(QS4):
        k = len(q.choices)
        np.testing.assert_allclose(got.logits[i, :k], _expected_cape(be, q, task), rtol=1e-12, atol=1e-12)
    assert got.meta["cape_orders"] == "all"
    assert got.meta["cape_templates"] == ([2] if templates == "one" else [1, 2, 3, 4, 5])


@pytest.mark.parametrize("templates", ["one", "all"])
def test_full_permutation_cape_is_exactly_order_invariant(templates):
    """Every one of the k! orders of every question (k = 2, 3, 4) gives bit-identical CAPE probabilities
    per option, on a backend whose letter scores depend on the position (bias) and on the prompt text."""
    be = FakeBackend("pos", scale=2.0, bias=(1.5, 0.5, 0.0, -0.5))
    kw = {"cache": False, "progress": False}
    task = PermutedLetterTask(template=1, orders="all", templates=templates)
    ref = score_questions(be, QS4, task=task, **kw)
    for sigma in itertools.permutations(range(4)):
        shown = [permute(q, [s for s in sigma if s < len(q.choices)]) for q in QS4]
        got = score_questions(be, shown, task=task, **kw)
        for i, q in enumerate(shown):
            order = [s for s in sigma if s < len(q.choices)]
            # option j of the shown question is option order[j] of the original: exactly equal, not close
            np.testing.assert_array_equal(got.logits[i, : len(order)], ref.logits[i, order])
            assert got.labels[i] == order.index(ref.labels[i])
    # the default (cyclic shifts) is invariant to rotations only: swapping two options changes it
    cyc = PermutedLetterTask(template=1)
    a = score_questions(be, [QS[0]], task=cyc, **kw).logits[0]
    b = score_questions(be, [permute(QS[0], (1, 0, 2, 3))], task=cyc, **kw).logits[0]
    assert not np.allclose(b, a[[1, 0, 2, 3]])


def test_cape_template_members_and_cache_keys():
    q = QS[1]  # 3 options
    five = PermutedLetterTask(template=3, templates="all")
    reqs = five.requests(q)
    assert len(reqs) == 5 * 3
    instructions = [r.prefix for r in reqs]
    assert len(set(instructions)) == 5 and instructions[:3] == [instructions[0]] * 3  # template-major
    both = PermutedLetterTask(orders="all", templates="all")
    assert len(both.requests(q)) == 5 * 6
    # mapping back: a backend scoring each position with the original index of the option shown there
    results = [np.array([float(i) for i in o]) for _, o in both.members(3)]
    assert both.reduce(q, results) == {"shifts": [[0.0, 1.0, 2.0]] * 30}
    assert both.valid(q, both.reduce(q, results)) and not PermutedLetterTask().valid(q, both.reduce(q, results))
    # the default mode keeps its key (existing caches stay valid); every mode has its own key; with all five
    # templates the members do not depend on --template, so every template shares one cache file
    keys = {(o, t): str(PermutedLetterTask(template=1, orders=o, templates=t).cache_key())
            for o in ("cyclic", "all") for t in ("one", "all")}
    assert len(set(keys.values())) == 4
    assert PermutedLetterTask(template=1).cache_key() == {"template": 1, "kind": "cape", "chat": False}
    assert PermutedLetterTask(template=2).cache_key() != PermutedLetterTask(template=1).cache_key()
    assert PermutedLetterTask(template=2, templates="all").cache_key() == five.cache_key()


def test_cape_modes_never_share_cached_rows(tmp_path):
    be = FakeBackend("pos", scale=2.0, bias=(1.0, 0.0, 0.0, -1.0))
    kw = {"cache_dir": tmp_path, "progress": False, "meta": {"dataset": "t", "split": "s"}}
    cyc = score_questions(be, QS4, task=PermutedLetterTask(), **kw)
    calls = be.calls
    full = score_questions(be, QS4, task=PermutedLetterTask(orders="all"), **kw)
    assert be.calls - calls == sum(math.factorial(len(q.choices)) for q in QS4)  # nothing read from cyclic
    assert not np.allclose(np.nan_to_num(full.logits), np.nan_to_num(cyc.logits))
    calls = be.calls
    again = score_questions(be, QS4, task=PermutedLetterTask(orders="all"), **kw)
    assert be.calls == calls  # its own cache file
    np.testing.assert_array_equal(again.logits, full.logits)
    assert len(list(tmp_path.glob("*.jsonl"))) == 2


def test_cape_option_refusals(tmp_path, capsys):
    with pytest.raises(InputError, match="at most 4 options"):
        PermutedLetterTask(orders="all").requests(QS[2])  # 5 options: 120 orders
    assert not PermutedLetterTask(orders="all").valid(QS[2], {"shifts": []})
    with pytest.raises(InputError, match="--cape-templates 'two'"):
        PermutedLetterTask(templates="two")
    with pytest.raises(InputError, match="--cape-orders applies to CAPE only .* not to --scoring letter"):
        make_task("letter", cape_orders="all")
    with pytest.raises(InputError, match="--cape-templates applies to CAPE only"):
        make_task("cloze", cape_templates="all")
    assert isinstance(make_task("cape", cape_orders="all"), PermutedLetterTask)
    # before any question is scored, the five-option question is refused
    be = FakeBackend()
    with pytest.raises(InputError, match="at most 4 options"):
        score_questions(be, QS, task=PermutedLetterTask(orders="all"), cache=False, progress=False)
    assert be.calls == 0


@pytest.mark.parametrize(("args", "message"), [
    (["--scoring", "letter", "--cape-orders", "all"], "--cape-orders applies to CAPE only"),
    (["--scoring", "cape", "--cape-templates", "all", "--template", "all"], "already averages over the five"),
    (["--scoring", "cape", "--cape-orders", "all", "-d", "commonsenseqa"], "at most 4 options"),
])
def test_score_cli_refuses_bad_cape_options(tmp_path, capsys, args, message):
    from refcal.cli import main

    dataset = [] if "-d" in args else ["-d", "sciq"]
    rc = main(["score", "-m", "fake:x", *dataset, "--limit", "3", "--no-progress", "--cache-dir", str(tmp_path),
               "-o", str(tmp_path / "s.parquet"), *args])
    assert rc == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s.parquet").exists()


def test_score_cli_cape_modes(tmp_path, capsys):
    from refcal.cli import main
    from refcal.scores import load_scores

    out = {}
    for mode in ("cyclic", "all"):
        path = tmp_path / f"{mode}.parquet"
        assert main(["score", "-m", "fake:x", "-d", "sciq", "--limit", "4", "--no-progress", "--scoring", "cape",
                     "--cape-orders", mode, "--cape-templates", "all", "--cache-dir", str(tmp_path / "c"),
                     "-o", str(path)]) == 0
        out[mode] = load_scores(path)
        assert out[mode].meta["cape_orders"] == mode and out[mode].meta["cape_templates"] == [1, 2, 3, 4, 5]
    assert "cape: all orders, 5 templates" in capsys.readouterr().out
    assert not np.allclose(out["cyclic"].logits, out["all"].logits)


@pytest.mark.slow
def test_full_permutation_cape_invariance_on_the_packaged_chat_model(smollm2):
    """--cape-orders all on SmolLM2: a non-cyclic re-ordering (which the cyclic mode is not invariant to)
    leaves every option's CAPE probability unchanged up to float32 batch effects."""
    from refcal.data import load_dataset

    qs = load_dataset("sciq", limit=2, seed=0)
    task = PermutedLetterTask(orders="all")
    ref = score_questions(smollm2, qs, task=task, cache=False, progress=False)
    order = (2, 0, 3, 1)  # neither a rotation nor its own inverse
    got = score_questions(smollm2, [permute(q, order) for q in qs], task=task, cache=False, progress=False)
    # the same 24 prompts per question, in other batches: float32 differences only
    np.testing.assert_allclose(np.exp(got.logits), np.exp(ref.logits[:, list(order)]), atol=1e-5)
