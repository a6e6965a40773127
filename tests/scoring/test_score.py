"""score_questions: assembly, cloze modes, cache, resume after Ctrl-C and after kill -9."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from refcal.backends.fake import FakeBackend as _Fake
from refcal.data.base import Question
from refcal.errors import InputError
from refcal.scoring import score_questions
from refcal.tasks.prompts import format_question


class FakeBackend(_Fake):
    """The shipped fake with a batch term (1e-9 x characters in the call), so any change in batch
    composition shows, and "same scores after resume" also proves the batch plan survives."""

    def __init__(self, **kw):
        super().__init__("1", **{"batch_term": 1e-9, **kw})


def make_questions(n: int = 20) -> list[Question]:
    return [
        Question(f"q{i}", f"Question number {i} " + "x" * (i % 7), tuple(f"opt{j}" for j in range(2 + i % 3)),
                 label=i % 2, subject="s" + str(i % 2))
        for i in range(n)
    ]


def test_scoreset_shape_labels_meta_and_ragged_padding(tmp_path):
    qs = make_questions(6)
    s = score_questions(FakeBackend(), qs, cache_dir=tmp_path, meta={"dataset": "toy", "split": "test"})
    assert list(s.ids) == [q.id for q in qs]
    assert s.logits.shape == (6, 4)
    assert list(s.n_options) == [2, 3, 4, 2, 3, 4]
    assert np.isneginf(s.logits[0, 2:]).all() and np.isfinite(s.logits[2]).all()
    assert list(s.labels) == [0, 1, 0, 1, 0, 1]
    assert list(s.columns["subject"]) == ["s0", "s1"] * 3
    assert s.meta["fingerprint"] == "fake-1" and s.meta["scoring"] == "letter" and s.meta["template"] == 1
    assert s.meta["dataset"] == "toy" and s.meta["chat"] is False and s.meta["fewshot"] == 0


def test_cloze_modes_divide_the_same_sums(tmp_path):
    qs = make_questions(4)
    be = FakeBackend()
    raw = score_questions(be, qs, scoring="cloze", cache_dir=tmp_path)
    per_char = score_questions(be, qs, scoring="cloze-norm", cache_dir=tmp_path)
    per_tok = score_questions(be, qs, scoring="cloze-token", cache_dir=tmp_path)
    assert len(be.batches) == 1  # the three modes share one cached computation
    # continuation " opt0" has 5 characters and (fake) 3 tokens
    assert np.isfinite(raw.logits[0, 0])
    assert per_char.logits[0, 0] == raw.logits[0, 0] / 5
    assert per_tok.logits[0, 0] == raw.logits[0, 0] / 3
    assert per_char.meta["template"] is None


def test_cache_hit_scores_nothing(tmp_path):
    qs = make_questions(10)
    first = score_questions(FakeBackend(), qs, batch_size=3, cache_dir=tmp_path)
    be = FakeBackend()
    again = score_questions(be, qs, batch_size=3, cache_dir=tmp_path)
    assert be.calls == 0 and not be.batches
    np.testing.assert_array_equal(first.logits, again.logits)
    # another template is another cache entry
    be2 = FakeBackend()
    score_questions(be2, qs, batch_size=3, cache_dir=tmp_path, template=2)
    assert len(be2.scored) == 10


def test_resume_after_ctrl_c_is_exact_and_rescores_nothing(tmp_path):
    qs = make_questions(23)
    reference = score_questions(FakeBackend(), qs, batch_size=4, cache=False)
    be = FakeBackend(interrupt_after=3)
    with pytest.raises(KeyboardInterrupt):
        score_questions(be, qs, batch_size=4, cache_dir=tmp_path)
    done = set(be.scored)
    assert len(done) == 12
    be2 = FakeBackend()
    resumed = score_questions(be2, qs, batch_size=4, cache_dir=tmp_path)
    assert not done & set(be2.scored)
    assert len(be2.scored) == 23 - 12
    np.testing.assert_array_equal(resumed.logits, reference.logits)


def test_torn_last_line_rescores_its_whole_planned_batch_bit_identically(tmp_path):
    qs = make_questions(5)
    reference = score_questions(FakeBackend(), qs, batch_size=2, cache=False)
    score_questions(FakeBackend(), qs, batch_size=2, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*[0-9a-f].jsonl")
    lines = path.read_bytes().split(b"\n")
    # drop the last two results and leave half of one line, as a kill -9 mid-write would: the plan is
    # [[a, b], [c, d], [e]], so c is cached, d torn and e missing
    path.write_bytes(b"\n".join(lines[:3]) + b"\n" + lines[3][:17])
    be = FakeBackend()
    s = score_questions(be, qs, batch_size=2, cache_dir=tmp_path)
    assert be.batches == [2, 1]  # d with its planned partner c, then e: not d alone
    np.testing.assert_array_equal(s.logits, reference.logits)  # bit-identical, batch term included
    parsed = [json.loads(x) for x in path.read_bytes().splitlines()]
    assert len(parsed) == 5 and len({p["h"] for p in parsed}) == 5  # c's cached line kept, not written twice
    assert parsed[2] == json.loads(lines[2])


class IterBackend(FakeBackend):
    """Yields results one by one and fails on the fourth, like an API backend whose server dies."""

    def score_letters_iter(self, requests):
        for i, r in enumerate(requests):
            if i == 3:
                raise RuntimeError("server died")
            self.scored.append(r.prompt)
            yield i, np.arange(len(r.letters), dtype=float)


def test_iter_backend_keeps_finished_items(tmp_path):
    qs = make_questions(6)
    with pytest.raises(RuntimeError):
        score_questions(IterBackend(), qs, batch_size=6, cache_dir=tmp_path)
    invariant = _Fake("1")  # no batch term: only the missing questions are scored again
    assert invariant.batch_invariant
    score_questions(invariant, qs, batch_size=6, cache_dir=tmp_path)
    assert len(invariant.scored) == 3
    # a batch-dependent backend scores the whole planned batch again and keeps the three cached rows
    with pytest.raises(RuntimeError):
        score_questions(IterBackend(), qs, batch_size=6, cache_dir=tmp_path / "y")
    be = FakeBackend()
    s = score_questions(be, qs, batch_size=6, cache_dir=tmp_path / "y")
    assert len(be.scored) == 6
    (path,) = (tmp_path / "y").glob("*[0-9a-f].jsonl")
    assert len(path.read_bytes().splitlines()) == 6
    assert np.isfinite(s.logits[:, :2]).all()


def test_errors(tmp_path):
    qs = make_questions(3)
    with pytest.raises(InputError, match="scoring 'bogus'"):
        score_questions(FakeBackend(), qs, scoring="bogus", cache=False)
    with pytest.raises(InputError, match="no questions"):
        score_questions(FakeBackend(), [], cache=False)
    with pytest.raises(InputError, match="chat template applies to letter scoring only"):
        score_questions(FakeBackend(), qs, scoring="cloze", chat=True, cache=False)
    with pytest.raises(InputError, match="batch size"):
        score_questions(FakeBackend(), qs, batch_size=0, cache=False)


_CHILD = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from test_score import FakeBackend, make_questions
from refcal.scoring import score_questions
s = score_questions(FakeBackend(sleep={sleep}), make_questions(40), batch_size=2, cache_dir={cache!r}, progress=False)
np.save({out!r}, s.logits)
"""


def _child(tmp_path: Path, sleep: float, out: str) -> subprocess.Popen:
    code = _CHILD.format(tests=str(Path(__file__).parent), sleep=sleep, cache=str(tmp_path / "c"),
                         out=str(tmp_path / out))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-c", code], env=env)


def test_kill_minus_9_then_restart_gives_identical_scores(tmp_path):
    proc = _child(tmp_path, 0.15, "a.npy")
    deadline = time.time() + 60
    n_lines = 0
    while time.time() < deadline and proc.poll() is None:
        files = list((tmp_path / "c").glob("*[0-9a-f].jsonl"))
        n_lines = files[0].read_bytes().count(b"\n") if files else 0
        if n_lines >= 6:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the child finished before it could be killed; raise its sleep"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (cache_file,) = (tmp_path / "c").glob("*[0-9a-f].jsonl")
    saved = len([x for x in cache_file.read_bytes().split(b"\n") if x.strip()])
    assert 6 <= saved < 40
    restart = _child(tmp_path, 0.0, "b.npy")
    assert restart.wait(timeout=120) == 0
    lines = [json.loads(x) for x in cache_file.read_bytes().splitlines()]
    # every question appears exactly once: nothing already saved was scored again
    assert len(lines) == 40 and len({x["h"] for x in lines}) == 40
    reference = score_questions(FakeBackend(), make_questions(40), batch_size=2, cache=False)
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), reference.logits)


def test_fewshot_per_subject_mapping(tmp_path):
    qs = make_questions(4)
    shots = {"s0": [Question("e0", "Zero?", ("a", "b"), label=0)], "s1": [Question("e1", "One?", ("a", "b"), label=1)]}
    be = FakeBackend()
    s = score_questions(be, qs, fewshot=shots, cache_dir=tmp_path)
    assert s.meta["fewshot"] == 1
    be2 = FakeBackend()
    score_questions(be2, qs, cache_dir=tmp_path)
    assert len(be2.scored) == 4  # zero-shot is another cache entry
    from refcal.tasks.prompts import letter_requests

    expected = [letter_requests([q], fewshot=shots[q.subject])[0].prefix for q in qs]
    assert sorted(be.prefixes) == sorted(expected)
    assert "Question: Zero?" in expected[0] and "Question: One?" in expected[1]


def test_cli_score_end_to_end_with_fake_backend(tmp_path, monkeypatch, capsys):
    import refcal.backends
    import refcal.data
    from refcal.cli import main
    from refcal.scores import load_scores

    seen = {}

    def fake_load_backend(spec, *, api_base=None, **kw):
        seen.update(spec=spec, api_base=api_base, **kw)
        return FakeBackend()

    monkeypatch.setattr(refcal.backends, "load_backend", fake_load_backend)
    monkeypatch.setattr(refcal.data, "load_dataset", lambda name, **kw: make_questions(kw["limit"] or 20))
    out = tmp_path / "s.parquet"
    args = ["score", "-m", "openai:gpt", "-d", "toy", "--limit", "5", "--template", "all", "--api-base",
            "http://x", "--cache-dir", str(tmp_path / "c"), "-o", str(out)]
    assert main(args) == 0
    assert seen == {"spec": "openai:gpt", "api_base": "http://x"}
    files = sorted(p.name for p in tmp_path.glob("s_t*.parquet"))
    assert files == [f"s_t{t}.parquet" for t in range(1, 6)]
    s3 = load_scores(tmp_path / "s_t3.parquet")
    assert len(s3) == 5 and s3.meta["template"] == 3 and s3.meta["dataset"] == "toy"
    direct = score_questions(FakeBackend(), make_questions(5), template=3, cache=False)
    np.testing.assert_array_equal(s3.logits, direct.logits)
    capsys.readouterr()
    assert main(["score", "-m", "m", "-d", "toy", "--scoring", "cloze", "--chat-template", "on", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["refcal: error: --chat-template on applies to --scoring letter only"]
    assert main(["score", "-m", "m", "-d", "toy", "--template", "9", "-o", str(out)]) == 2


class DetailedBackend(FakeBackend):
    """Like an API backend: reports which letters were floored (absent from the top-k)."""

    def score_letters_iter_detailed(self, requests):
        from refcal.backends.api_logprobs import LetterScores

        for i, v in enumerate(self.score_letters(requests)):
            floored = tuple(j == len(v) - 1 and i % 2 == 0 for j in range(len(v)))  # every other request
            yield i, LetterScores(np.asarray(v, dtype=float), floored, float(v[-1]) if any(floored) else float("nan"))


def test_floor_counts_are_cached_and_survive_resume(tmp_path):
    qs = make_questions(10)
    first = score_questions(DetailedBackend(), qs, scoring="letter", cache_dir=tmp_path, progress=False,
                            batch_size=4)
    assert "n_floored" in first.columns and int(np.sum(first.columns["n_floored"])) > 0
    backend = DetailedBackend()
    again = score_questions(backend, qs, scoring="letter", cache_dir=tmp_path, progress=False, batch_size=4)
    assert backend.calls == 0  # all from the cache ...
    assert list(again.columns["n_floored"]) == list(first.columns["n_floored"])  # ... floor counts included
    np.testing.assert_array_equal(again.logits, first.logits)


@pytest.mark.parametrize("bad", ["null", '{"x": 1}', "[1.0]", "[1.0, NaN, 2.0]", "[1.0, Infinity, 2.0]",
                                 "[1.0, 1e400, 2.0]", '["1.0", "2.0", "3.0"]', "[true, false, true]",
                                 '{"l": [1.0, 2.0, 3.0], "f": -1}', '"abc"'])
def test_malformed_cache_rows_are_scored_again(tmp_path, bad):
    qs = make_questions(4)  # q1 has 3 options
    reference = score_questions(FakeBackend(), qs, batch_size=1, cache=False)
    score_questions(FakeBackend(), qs, batch_size=1, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*[0-9a-f].jsonl")
    lines = path.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if json.loads(line)["id"] == "q1")
    obj = json.loads(lines[row])
    lines[row] = f'{{"h": "{obj["h"]}", "id": "q1", "r": {bad}}}'
    path.write_text("\n".join(lines) + "\n")
    be = FakeBackend()
    s = score_questions(be, qs, batch_size=1, cache_dir=tmp_path)
    assert be.scored == [format_question(qs[1])]  # only the malformed one
    np.testing.assert_array_equal(s.logits, reference.logits)
    assert list(s.n_options) == [2, 3, 4, 2]


@pytest.mark.parametrize("scoring", ["cloze", "cape"])
def test_malformed_rows_of_other_tasks_are_scored_again(tmp_path, scoring):
    qs = make_questions(3)
    reference = score_questions(FakeBackend(), qs, scoring=scoring, batch_size=1, cache=False)
    score_questions(FakeBackend(), qs, scoring=scoring, batch_size=1, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*[0-9a-f].jsonl")
    objs = [json.loads(x) for x in path.read_text().splitlines()]
    bad = [{"lp": [0.0], "nt": [1], "nc": [1]}, {"lp": [0.0, 0.0], "nt": [1, -1], "nc": [1, 1]}] \
        if scoring == "cloze" else [{"shifts": [[0.0, 1.0]]}, {"shifts": [[0.0, 1.0], [0.0]]}]
    for o, b in zip(objs, bad, strict=False):
        o["r"] = b
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    be = FakeBackend()
    s = score_questions(be, qs, scoring=scoring, batch_size=1, cache_dir=tmp_path)
    assert len(be.batches) == 2
    np.testing.assert_array_equal(s.logits, reference.logits)


def test_progress_lines_off_a_terminal(tmp_path, caplog, monkeypatch):
    import refcal.scoring.progress

    caplog.set_level(logging.INFO, logger="refcal.progress")
    score_questions(FakeBackend(), make_questions(20), batch_size=1, cache=False, progress=True)
    lines = [r.getMessage() for r in caplog.records if r.name == "refcal.progress"]
    assert len(lines) == 10 and lines[0].startswith("scoring: 2/20 questions (10%)") and "20/20" in lines[-1]
    caplog.clear()
    score_questions(FakeBackend(), make_questions(20), batch_size=1, cache=False, progress=False)
    assert not [r for r in caplog.records if r.name == "refcal.progress"]
    # a stalled backend still shows a line every PROGRESS_EVERY_S
    monkeypatch.setattr(refcal.scoring.progress, "PROGRESS_EVERY_S", 0.05)
    score_questions(FakeBackend(sleep=0.4), make_questions(2), batch_size=2, cache=False, progress=True)
    stalled = [r.getMessage() for r in caplog.records if r.name == "refcal.progress"]
    assert any(m.startswith("scoring: 0/2 questions") for m in stalled)


def test_cape_scoring_mode_and_task_keyword(tmp_path):
    from refcal.tasks import LetterTask

    qs = make_questions(6)
    be = FakeBackend()
    s = score_questions(be, qs, scoring="cape", batch_size=8, cache_dir=tmp_path)
    assert s.meta["scoring"] == "cape" and s.meta["template"] == 1
    assert be.calls == sum(len(q.choices) for q in qs)
    assert all(n <= 8 for n in be.batches)  # a batch holds at most batch_size requests ...
    np.testing.assert_allclose(np.exp(s.logits).sum(1), 1.0)  # ... and CAPE rows are log-probabilities
    letter = score_questions(FakeBackend(), qs, task=LetterTask(template=2), cache=False)
    assert letter.meta["template"] == 2 and letter.meta["scoring"] == "letter"


#: Largest difference (nats) allowed between a row scored in another batch plan and a fresh run's; the
#: measured maximum on the packaged models is ~1e-5 (float32 sums accumulated in another order).
PLAN_BOUND = 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("alias, scoring", [("smollm2-135m-instruct", "letter"), ("gemma-3-270m", "cloze")])
def test_cache_warmed_by_another_limit_stays_within_the_bound(tmp_path, alias, scoring):
    """A cache filled by a run on a subset (another batch plan) is reused by a run on all questions."""
    from refcal.backends import load_backend
    from refcal.data import load_dataset

    backend = load_backend(alias, device="cpu", batch_size=8)
    qs = load_dataset("sciq", limit=32, seed=0)
    fresh = score_questions(backend, qs, scoring=scoring, cache=False, progress=False)
    subset = qs[::3]  # 11 questions: other batches than in the run on all 32
    score_questions(backend, subset, scoring=scoring, cache_dir=tmp_path, progress=False)
    warm = score_questions(backend, qs, scoring=scoring, cache_dir=tmp_path, progress=False)
    diff = np.abs(warm.logits - fresh.logits).max(axis=1)
    print(f"{alias} {scoring}: {int((diff > 0).sum())} of {len(qs)} rows differ, max {diff.max():.3g} nats")
    assert diff.max() <= PLAN_BOUND
    np.testing.assert_array_equal(warm.logits.argmax(1), fresh.logits.argmax(1))
