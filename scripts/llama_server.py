"""Serve a GGUF model with llama-cpp-python's OpenAI-compatible server, safely on any x86 CPU.

Usage (the same options as ``python -m llama_cpp.server``)::

    python scripts/llama_server.py --model SmolLM2-135M-Instruct.Q4_1.gguf --host 127.0.0.1 --port 8080 \
        --n_ctx 2048 --n_threads 2 --seed 0

Two settings differ from the stock server, both found on 2-core Xeon machines with AMX:

* CPU "extra buffer types" (weight repacking, the AMX matmul) are turned off: the AMX kernel of the
  llama.cpp bundled with llama-cpp-python 0.3.36 crashes with SIGSEGV in ``ggml_backend_amx_mul_mat``
  on the first request; the plain kernels are also the ones every CPU runs, so results do not depend
  on the machine's instruction set extensions.
* ``OMP_WAIT_POLICY=PASSIVE`` (unless set): OpenMP's default busy-waiting makes each request 5-20x
  slower when the cores are shared with other processes.
"""

from __future__ import annotations

import os
import runpy

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when libgomp loads, i.e. at import below

import llama_cpp.llama_cpp as _c  # noqa: E402

_default_params = _c.llama_model_default_params


def _model_params():
    params = _default_params()
    params.use_extra_bufts = False
    return params


_c.llama_model_default_params = _model_params

if __name__ == "__main__":
    runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
