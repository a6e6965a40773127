"""`refcal serve` / `refcal monitor` end to end: a real server process, its refusal to start, usage errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from serve_helpers import mc

from refcal.cli import main
from refcal.serve.fake_upstream import free_port


def _refcal(*args, **kw):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), **kw.pop("env", {})}
    return subprocess.Popen([sys.executable, "-m", "refcal", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


@pytest.mark.parametrize("content,needle", [
    (None, "no such file"), ("{}", "not a refcal calibrator"), ('{"id": "q1", "logits": [1, 2]}', "score file"),
    ("{broken", "not valid JSON"),
])
def test_bad_calibrator_refuses_to_start_with_one_line(tmp_path, upstream, content, needle):
    path = tmp_path / "cal.json"
    if content is not None:
        path.write_text(content)
    proc = _refcal("serve", "--upstream", upstream.url + "/v1", "--calibrator", str(path), "--port", str(free_port()))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_bad_usage_exits_2(cal_path, capsys):
    assert main(["serve", "--upstream", "ftp://x", "--calibrator", str(cal_path)]) == 2
    assert "--upstream must be an http(s) URL" in capsys.readouterr().err
    assert main(["serve", "--upstream", "http://127.0.0.1:9/v1", "--calibrator", str(cal_path),
                 "--api-key-env", "REFCAL_TEST_UNSET_VAR"]) == 2
    assert main(["monitor", "/nonexistent/log", "--calibrator", str(cal_path)]) == 2
    assert main(["monitor", "/nonexistent/log", "--calibrator", str(cal_path), "--window", "1w"]) == 2


def test_refcal_serve_process_answers_and_stops(tmp_path, upstream, cal_path):
    port = free_port()
    log = tmp_path / "log"
    proc = _refcal("serve", "--upstream", upstream.url + "/v1", "--calibrator", str(cal_path), "--port", str(port),
                   "--log", str(log), "--api-key-env", "PROXY_KEY", env={"PROXY_KEY": "k1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        r = httpx.post(url + "/v1/chat/completions", json=mc("hello"), headers={"Authorization": "Bearer k1"})
        assert r.status_code == 200 and 0.25 <= r.json()["refcal"]["confidence"] <= 1
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert "k1" not in err and "hello" not in err
    rec = json.loads(next(log.glob("segment-*.jsonl")).read_text())
    assert rec["id"] == r.json()["refcal"]["request_id"]
