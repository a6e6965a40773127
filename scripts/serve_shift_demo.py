"""A real constructed shift for ``refcal monitor``: SciQ, then MMLU, through ``refcal serve`` in front of llama.cpp.

What it does (everything real: the packaged models, no synthetic score):

1. Draws, with ``--seed``, ``--n-calib`` SciQ questions to calibrate on, ``--n`` other SciQ questions and ``--n``
   MMLU test questions to serve.
2. Starts llama.cpp's OpenAI-compatible server (``scripts/llama_server.py``) with the packaged
   SmolLM2-135M-Instruct GGUF (the chat model), scores the calibration questions through it
   (``refcal score -m openai:smollm2 --chat-template on``: the same chat requests the proxy will forward) and
   with the reference (base) model ``gemma-3-270m`` (``refcal score``), and fits DACA (``refcal fit``).
3. Starts ``refcal serve`` in front of the llama.cpp server with ``--reference gemma-3-270m --reference-rate R``
   and sends the SciQ questions, then the MMLU ones (one client, the prompts ``refcal score`` uses). The first
   request is also sent with ``curl`` and kept, with ``GET /metrics`` at the end, for docs/serving.md.
4. Runs ``refcal monitor`` on the log (windows of ``--n / 2`` records: two SciQ windows, two MMLU windows), and
   on the SciQ records alone (two halves of one data set), with the calibration set as baseline.
5. Writes ``monitor.json`` + ``monitor.html`` of both runs, the example request / response / metrics, and a
   summary ``README.md`` (with each window's true accuracy, from the labels, which the monitor never reads) to
   ``--out`` (default ``docs/results/serve-shift``).

Run (a few minutes on 2 shared cores)::

    OMP_NUM_THREADS=1 nice python scripts/serve_shift_demo.py [--n 160] [--n-calib 300]

Thresholds are the monitor's defaults (``--alpha 0.05`` over all windows, PSI reported, not thresholded).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_ALIAS = "smollm2"
REFERENCE = "gemma-3-270m"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer in {timeout:.0f} s")


def _refcal(*args: str) -> int:
    print("$ refcal " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "refcal", *args], env=_env()).returncode


def _questions(args):
    from refcal.data.registry import load_dataset

    rng = np.random.default_rng(args.seed)
    sciq = load_dataset("sciq")
    order = rng.permutation(len(sciq))
    calib = [sciq[i] for i in order[: args.n_calib]]
    served_sciq = [sciq[i] for i in order[args.n_calib: args.n_calib + args.n]]
    mmlu = load_dataset("mmlu", limit=args.n, seed=args.seed)
    return calib, served_sciq, mmlu


def _write_data(path: Path, questions) -> None:
    with open(path, "w") as fh:
        for q in questions:
            fh.write(json.dumps({"id": q.id, "question": q.question, "choices": list(q.choices), "answer": q.label}) + "\n")


def _body(q) -> dict:
    """The chat request ``refcal score -m openai:... --chat-template on`` sends for ``q``, plus ``refcal``."""
    from refcal.tasks.prompts import letter_requests

    req = letter_requests([q], template=1, chat=True)[0]
    return {"model": MODEL_ALIAS, "messages": [{"role": "user", "content": req.prefix + req.prompt}],
            "max_tokens": 1, "temperature": 0, "n": 1, "seed": 0,
            "refcal": {"task": "multiple_choice", "n_options": len(req.letters)}}


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _serve(args, work: Path, llama_url: str, served: list[tuple[str, object]], out: Path) -> list[dict]:
    port = _free_port()
    cmd = [sys.executable, "-m", "refcal", "serve", "--upstream", llama_url, "--calibrator", str(work / "calibrator.json"),
           "--reference", REFERENCE, "--reference-rate", str(args.reference_rate), "--port", str(port),
           "--log", str(work / "log"), "--timeout", "600"]
    print("$ refcal " + " ".join(cmd[3:]), flush=True)
    proxy = subprocess.Popen(cmd, env=_env())
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        _wait(f"{base}/health", proxy, 600)
        first = _body(served[0][1])
        (out / "request.json").write_text(json.dumps(first, indent=2) + "\n")
        curl = subprocess.run(["curl", "-s", f"{base}/v1/chat/completions", "-H", "Content-Type: application/json",
                               "-d", json.dumps(first)], capture_output=True, text=True, check=True, timeout=600)
        (out / "response.json").write_text(json.dumps(json.loads(curl.stdout), indent=2) + "\n")
        t0 = time.perf_counter()
        for i, (name, q) in enumerate(served[1:], 1):
            got = _post(f"{base}/v1/chat/completions", _body(q))
            rc = got["refcal"]
            rows.append({"dataset": name, "id": q.id, "request_id": rc["request_id"], "answer": rc["answer"],
                         "confidence": rc["confidence"], "correct": rc["answer"] == "ABCDEFGHIJ"[q.label]})
            if i % 20 == 0:
                print(f"served {i}/{len(served)} ({time.perf_counter() - t0:.0f} s)", flush=True)
        rc0 = json.loads((out / "response.json").read_text())["refcal"]
        q0 = served[0][1]
        rows.insert(0, {"dataset": served[0][0], "id": q0.id, "request_id": rc0["request_id"], "answer": rc0["answer"],
                        "confidence": rc0["confidence"], "correct": rc0["answer"] == "ABCDEFGHIJ"[q0.label]})
        with urllib.request.urlopen(f"{base}/metrics", timeout=30) as resp:
            (out / "metrics.txt").write_text(resp.read().decode())
    finally:
        proxy.send_signal(signal.SIGINT)  # a clean stop: pending reference samples are written to the log
        try:
            proxy.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proxy.kill()
    return rows


def _sciq_only_log(work: Path, rows: list[dict]) -> Path:
    """The log's SciQ records alone (selected by request id, original order): two halves of one data set."""
    keep = {r["request_id"] for r in rows if r["dataset"] == "sciq"}
    dst = work / "log-sciq"
    dst.mkdir()
    for seg in sorted((work / "log").glob("segment-*.jsonl")):
        lines = [line for line in seg.read_text().splitlines(keepends=True) if json.loads(line)["id"] in keep]
        (dst / seg.name).write_text("".join(lines))
    return dst


def _monitor(args, work: Path, log: Path, dest: Path) -> int:
    return _refcal("monitor", str(log), "--calibrator", str(work / "calibrator.json"), "--window", str(args.n // 2),
                   "--baseline", str(work / "chat.jsonl"), "--baseline-base", str(work / "base.jsonl"), "-o", str(dest))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=160, help="questions served per data set")
    ap.add_argument("--n-calib", type=int, default=300, help="SciQ questions the calibrator is fitted on")
    ap.add_argument("--reference-rate", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "serve-shift")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "tests"))
    from api_server import LlamaServer

    work = args.work or Path(tempfile.mkdtemp(prefix="serve-shift-"))
    work.mkdir(parents=True, exist_ok=True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    calib, served_sciq, mmlu = _questions(args)
    _write_data(work / "calib.jsonl", calib)
    t_start = time.perf_counter()
    llama = LlamaServer(n_threads=1).start(timeout=600)
    try:
        steps = [
            ("score", "-m", f"openai:{MODEL_ALIAS}", "--api-base", llama.url, "--chat-template", "on", "-d",
             str(work / "calib.jsonl"), "--scoring", "letter", "--id-col", "id", "--no-progress",
             "-o", str(work / "chat.jsonl")),
            ("score", "-m", REFERENCE, "-d", str(work / "calib.jsonl"), "--scoring", "letter", "--id-col", "id",
             "--device", "cpu", "--no-progress", "-o", str(work / "base.jsonl")),
            ("fit", "--base", str(work / "base.jsonl"), "--chat", str(work / "chat.jsonl"), "-o",
             str(work / "calibrator.json")),
        ]
        for step in steps:
            if _refcal(*step) != 0:
                raise SystemExit(f"refcal {step[0]} failed")
        shutil.copy(work / "calibrator.json", out / "calibrator.json")
        served = [("sciq", q) for q in served_sciq] + [("mmlu", q) for q in mmlu]
        rows = _serve(args, work, llama.url, served, out)
    finally:
        llama.stop()
    (out / "served.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc_shift = _monitor(args, work, work / "log", out / "shift")
    sciq_log = _sciq_only_log(work, rows)
    rc_halves = _monitor(args, work, sciq_log, out / "sciq-halves")
    summary = {"n_calib": args.n_calib, "n_per_dataset": args.n, "window": args.n // 2, "seed": args.seed,
               "reference_rate": args.reference_rate, "exit_code_shift": rc_shift, "exit_code_sciq_halves": rc_halves,
               "wall_s": time.perf_counter() - t_start, "loadavg_at_end": os.getloadavg()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    from serve_shift_report import write_report  # noqa: E402 - scripts/ beside this file

    write_report(out, rows, summary, logs={"shift": work / "log", "sciq-halves": sciq_log})
    print(f"wrote {out}; exit codes: shift {rc_shift}, SciQ halves {rc_halves}")


if __name__ == "__main__":
    main()
