"""Scoring tasks: the protocol, the letter / cloze / permuted-letter (CAPE) tasks, and CAPE's rotation
invariance on a fake backend and on the real packaged models."""

from __future__ import annotations

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
    make_task,
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
