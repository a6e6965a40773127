"""Scoring on Ray (refcal.backends.ray): the same scores as one process, a killed worker, a killed driver.

The fast tests use the shipped FakeBackend with ``batch_term`` (every score depends on the batch it
was scored in, so a batch cut differently than in one process would show); ``slow`` runs two replicas
of a packaged model.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from refcal.backends import load_backend
from refcal.backends.ray import RayBackend, RayOptions, _temp_dir
from refcal.data.base import Question
from refcal.errors import InputError
from refcal.scoring import score_questions

pytest.importorskip("ray")  # installed by `make test` (the ray extra); refcal works without it

QUESTIONS = [Question(f"q{i}", f"Question number {i} {'x' * (i % 7)}? #{i % 4}", ("a", "b", "c", "d"), i % 4)
             for i in range(24)]
FAKE = {"batch_term": 1e-3}


def _reference(**kw):
    return score_questions(load_backend("fake:r", FAKE), QUESTIONS, cache=False, progress=False, batch_size=3, **kw)


def test_two_workers_equal_one_process_private_instance(tmp_path):
    import ray

    ref = _reference()
    with RayBackend("fake:r", FAKE, workers=2, temp_dir=str(tmp_path / "ray")) as rb:
        assert ray.is_initialized() and rb.fingerprint == "fake-r" and rb.batch_invariant is False
        session = rb._private_dir
        assert session.is_dir()
        out = score_questions(rb, QUESTIONS, cache_dir=tmp_path / "cache", progress=False, batch_size=3)
        assert out.meta["backend"]["ray"]["workers"] == 2
    assert not ray.is_initialized()  # the private instance is shut down, its session files removed
    assert not session.exists()
    np.testing.assert_array_equal(out.logits, ref.logits)
    assert out.meta["fingerprint"] == ref.meta["fingerprint"]
    # the cache it wrote is the one a single-process run reads: nothing is scored again
    local = load_backend("fake:r", FAKE)
    again = score_questions(local, QUESTIONS, cache_dir=tmp_path / "cache", progress=False, batch_size=3)
    assert local.calls == 0
    np.testing.assert_array_equal(again.logits, ref.logits)


@pytest.fixture(scope="module")
def shared_ray(tmp_path_factory):
    """One private Ray instance for the tests below (RayBackend joins it and leaves it running)."""
    import ray

    ray.init(address="local", include_dashboard=False, num_cpus=2, log_to_driver=False,
             _temp_dir=str(_temp_dir(str(tmp_path_factory.mktemp("ray")))))
    yield
    ray.shutdown()


def test_killed_worker_is_restarted_and_its_batch_rescored(shared_ray, tmp_path):
    ref = _reference()
    with RayBackend("fake:r", {**FAKE, "sleep": 0.2}, workers=1) as rb:
        inner = rb.dispatch_batches
        killed = []

        def dispatch(call, batches):
            for b, pairs in inner(call, batches):
                if not killed:
                    (pid,) = rb.pids
                    os.kill(pid, signal.SIGKILL)  # kill -9 the only worker after its first batch
                    killed.append(pid)
                yield b, pairs

        rb.dispatch_batches = dispatch
        out = score_questions(rb, QUESTIONS, cache_dir=tmp_path, progress=False, batch_size=3)
        assert len(rb.pids) == 2 and killed[0] in rb.pids  # a new process finished the work
    np.testing.assert_array_equal(out.logits, ref.logits)


_DRIVER = """
import sys
from refcal.data.base import Question
from refcal.scoring import score_questions
from refcal.backends.ray import RayBackend
qs = [Question(f"q{i}", f"Question number {i} {'x' * (i % 7)}? #{i % 4}", ("a", "b", "c", "d"), i % 4)
      for i in range(24)]
with RayBackend("fake:r", {"batch_term": 1e-3, "sleep": 1.0}, workers=1, temp_dir=sys.argv[2]) as rb:
    score_questions(rb, qs, cache_dir=sys.argv[1], progress=False, batch_size=3)
"""


def test_driver_killed_then_resumed(shared_ray, tmp_path):
    ref = _reference()
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(_DRIVER), str(cache), str(tmp_path / "r")],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        lines: list[str] = []
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(cache.glob("*.jsonl"))
            lines = files[0].read_text().splitlines() if files else []
            if len(lines) >= 6:  # two batches of 3 done, more to come (1 s each)
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the driver ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9 the driver and the Ray instance it started
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    n_saved = len([ln for ln in next(cache.glob("*.jsonl")).read_text().splitlines() if json.loads(ln)])
    assert 6 <= n_saved < len(QUESTIONS)
    with RayBackend("fake:r", FAKE, workers=2) as rb:
        sent = []
        inner = rb.dispatch_batches

        def dispatch(call, batches):
            sent.extend(len(b) for b in batches)
            yield from inner(call, batches)

        rb.dispatch_batches = dispatch
        out = score_questions(rb, QUESTIONS, cache_dir=cache, progress=False, batch_size=3)
    assert sum(sent) == len(QUESTIONS) - n_saved  # only the unfinished batches were sent
    np.testing.assert_array_equal(out.logits, ref.logits)


def test_worker_error_is_one_typed_line(shared_ray):
    from refcal.errors import ModelError

    with RayBackend("fake:r", FAKE) as rb:
        with pytest.raises(ModelError, match="a Ray worker failed .*run the same command again") as info:
            list(rb.dispatch_batches("score_letters", [["not a request"]]))
    assert "\n" not in str(info.value)


def test_api_counters_come_back_from_the_actors(shared_ray, tmp_path):
    """An API backend's request counters (and letter_source) under Ray equal a single-process run's."""
    from api_server import FakeVLLM

    for kind, opts in (("vllm", {"letters": "topk", "top_logprobs": 2}), ("vllm", {"letters": "auto"}),
                       ("old", {"letters": "auto", "top_logprobs": 2})):
        with FakeVLLM(kind, scale=4.0) as fake:
            opts = {**opts, "api_base": fake.url, "concurrency": 2}
            local = load_backend("openai:fake-vllm", opts)
            ref = score_questions(local, QUESTIONS, cache=False, progress=False, batch_size=3)
            with RayBackend("openai:fake-vllm", opts, workers=2) as rb:
                assert rb.stats["n_requests"] == 0  # nothing sent yet (the probe actor sends nothing)
                out = score_questions(rb, QUESTIONS, cache_dir=tmp_path / f"c-{kind}-{opts['letters']}", progress=False,
                                      batch_size=3)
                assert rb.pids  # the batches were scored by the actors, their counters added up here
            np.testing.assert_array_equal(out.logits, ref.logits)
            want = local.stats.as_dict()
            exact = kind == "vllm" and opts["letters"] == "auto"
            assert rb.stats == want and want["n_requests"] == len(QUESTIONS)
            assert want["letter_source"] == ("exact" if exact else "topk")
            assert (want["n_floored_letters"] > 0) == (not exact)
            # why auto fell back (an older vLLM ignores the field) comes back from the actors too
            assert bool(want["letters_note"]) == (kind == "old") and rb.stats["letters_note"] == want["letters_note"]
            assert {k: out.meta["backend"][k] for k in want} == want  # the score file's meta, too


def test_merge_stats_sums_counts_and_merges_sources():
    from refcal.backends.ray import merge_stats

    total: dict = {}
    for delta in ({"n": 2, "letter_source": "unresolved"}, {"n": 3, "letter_source": "exact"},
                  {"n": 0, "letter_source": "unresolved"}, {"n": 1, "letter_source": "exact"}):
        merge_stats(total, delta)
    assert total == {"n": 6, "letter_source": "exact"}
    merge_stats(total, {"n": 1, "letter_source": "topk"})  # actors that disagree: both are named
    assert total == {"n": 7, "letter_source": "exact+topk"}
    for note in ("", "first reason", "second reason"):  # a note (a sentence) keeps the first non-empty one
        merge_stats(total, {"letters_note": note})
    assert total["letters_note"] == "first reason"


def test_options_refused_before_ray_starts(monkeypatch):
    def no_start(self):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(RayBackend, "_start", no_start)
    with pytest.raises(InputError, match="workers"):
        RayOptions(workers=0)
    with pytest.raises(InputError, match="does not apply"):
        RayBackend("fake:r", {"device": "cpu"})
    with pytest.raises(InputError, match="ray-address"):
        RayBackend("fake:r", address=" ")


def test_temp_dir_short_enough_for_unix_sockets(tmp_path):
    short = Path(tempfile.mkdtemp(prefix="g"))  # /tmp/gXXXXXXXX: room for Ray's socket paths
    try:
        ok = _temp_dir(str(short / "ray"))
        assert ok.parent == short / "ray" and len(str(ok / "session_2026-12-02_07-13-12_123456_1234567"
                                                      / "sockets" / "plasma_store")) <= 107
    finally:
        shutil.rmtree(short)
    deep = tmp_path / ("d" * 60)
    fallback = _temp_dir(str(deep))
    try:
        assert not str(fallback).startswith(str(tmp_path)) and not deep.exists()
    finally:
        fallback.rmdir()


@pytest.mark.slow
def test_packaged_model_two_workers_equal_one_process(tmp_path):
    """Two SmolLM2 replicas (one thread each) on 8 SciQ questions: identical to one process."""
    from refcal.data import load_dataset

    questions = load_dataset("sciq", limit=8, seed=0)
    opts = {"device": "cpu", "batch_size": 4}
    local = load_backend("smollm2-135m-instruct", opts)
    ref = score_questions(local, questions, cache=False, progress=False, batch_size=4)
    with RayBackend("smollm2-135m-instruct", opts, workers=2, threads=1) as rb:
        out = score_questions(rb, questions, cache_dir=tmp_path, progress=False, batch_size=4)
        assert rb.fingerprint == local.fingerprint
    np.testing.assert_array_equal(out.logits, ref.logits)


def test_cli_score_with_ray(tmp_path):
    from refcal.cli import main
    from refcal.scores import load_scores

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": q.id, "question": q.question, "choices": list(q.choices),
                                        "label": q.label}) + "\n" for q in QUESTIONS))
    out = tmp_path / "s.parquet"
    assert main(["score", "-m", "fake:r", "-d", str(data), "--batch-size", "3", "--scoring", "letter", "--ray", "--workers", "2",
                 "--cache-dir", str(tmp_path / "c"), "-o", str(out)]) == 0
    ref = score_questions(load_backend("fake:r"), QUESTIONS, cache=False, progress=False, batch_size=3)
    np.testing.assert_array_equal(load_scores(out).logits, ref.logits)
    assert main(["score", "-m", "fake:r", "-d", str(data), "--workers", "2", "-o", str(out)]) == 2  # no --ray


def test_run_with_ray_equals_run_without(shared_ray, tmp_path, monkeypatch):
    from refcal.cli import main
    from refcal.scores import load_scores

    monkeypatch.setenv("REFCAL_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"id": q.id, "question": q.question, "choices": list(q.choices),
                                        "label": q.label}) + "\n" for q in QUESTIONS))
    common = ["run", "--base", "fake:b", "--chat", "fake:c", "-d", str(data), "--scoring", "letter", "--limit", "0",
              "--batch-size", "3", "--no-report", "--no-progress"]
    assert main([*common, "-o", str(tmp_path / "local"), "--cache-dir", str(tmp_path / "c1")]) == 0
    assert main([*common, "-o", str(tmp_path / "ray"), "--cache-dir", str(tmp_path / "c2"), "--ray",
                 "--workers", "2"]) == 0
    for role in ("base", "chat"):
        a, b = (load_scores(tmp_path / run / "scores" / f"{role}.parquet") for run in ("local", "ray"))
        np.testing.assert_array_equal(a.logits, b.logits)
        assert b.meta["backend"]["ray"]["workers"] == 2
    assert json.loads((tmp_path / "ray" / "config.json").read_text())["ray"]["workers"] == 2
