"""Ctrl-C through the real entry point while an API request is stuck on a slow-drip server.

The process must end within a couple of seconds with exit 130 and one line, keep every answer that had
finished (the rerun sends only the unfinished request), and not wait for the stuck socket.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import refcal
from api_server import FakeVLLM, FaultProxy

SRC = os.environ.get('REFCAL_TEST_SRC') or str(Path(refcal.__file__).resolve().parents[1])
N = 12
_RESET_SIGINT = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "sys.argv[0] = 'refcal'; from refcal.cli import main; sys.exit(main())")


def _score(proxy: FaultProxy, tmp_path: Path) -> subprocess.Popen:
    # PYTHONFAULTHANDLER: if the process ever hangs after the signal, SIGABRT makes it print every thread's
    # stack to stderr, and the failure shows where it waits
    env = {**os.environ, "PYTHONPATH": SRC, "REFCAL_CACHE_DIR": str(tmp_path / "cache"), "PYTHONFAULTHANDLER": "1"}
    # the child starts with Python's own SIGINT handler whatever it inherits: a process started in the
    # background of a non-interactive shell (`make test &`, nohup) inherits SIGINT *ignored*, and Python keeps
    # an ignored SIGINT, so Ctrl-C could never reach it (the cause of this test's two failures in whole-suite
    # new-machine runs started in the background: exit 0 after the 30 s deadline, not 130)
    cmd = [sys.executable, "-c", _RESET_SIGINT, "score", "-m", "openai:fake-vllm", "--api-base", proxy.url,
           "-d", str(tmp_path / "q.jsonl"), "--scoring", "letter", "--api-letters", "topk", "--no-progress", "--batch-size", "16",
           "-o", str(tmp_path / "out.parquet")]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(cond, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_with_a_request_stuck_on_a_slow_drip_server(tmp_path):
    (tmp_path / "q.jsonl").write_text("".join(
        json.dumps({"id": f"q{i}", "question": f"Question {i}?", "choices": ["a", "b", "c", "d"], "label": i % 4})
        + "\n" for i in range(N)))
    with FakeVLLM() as fake, FaultProxy(fake.url.rsplit("/v1", 1)[0]) as proxy:
        proxy.script(("drip", 0.5))  # the first request: headers, then a byte every 0.5 s for ever
        proc = _score(proxy, tmp_path)
        try:
            assert _wait(lambda: proxy.n_forwarded >= N - 1, 60), proc.stderr.read() if proc.poll() else "slow"
            assert _wait(lambda: any(len(p.read_bytes().splitlines()) >= N - 1
                                     for p in (tmp_path / "cache").rglob("*.jsonl")), 30)
            start = time.monotonic()
            proc.send_signal(signal.SIGINT)
            # before the fix: never (the pool joined the stuck thread); the stuck attempt's own deadline is 30 s
            try:
                rc = proc.wait(timeout=25)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)
                proc.wait(timeout=10)
                raise AssertionError("no exit 25 s after SIGINT; the threads' stacks:\n" + proc.stderr.read()) from None
            elapsed = time.monotonic() - start
        finally:
            if proc.poll() is None:
                proc.kill()
        err = proc.stderr.read().strip()
        assert rc == 130, err
        assert elapsed < 10, elapsed  # typically 0.4-0.6 s; loose for a loaded 2-core machine
        assert err.splitlines()[-1] == ("refcal: interrupted; finished work is saved, run the same command "
                                         "again to resume"), err
        assert "Traceback" not in err
        # the rerun sends only the request that never finished
        before = proxy.n_posts
        proc = _score(proxy, tmp_path)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert proxy.n_posts - before == 1
