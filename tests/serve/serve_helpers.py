"""Helpers shared by the proxy tests (a module of its own: test files import it by name)."""

from __future__ import annotations

import re

import numpy as np


def mc(prompt: str, k: int = 4, model: str = "m", **extra) -> dict:
    """A chat request asking for calibrated multiple-choice confidence."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "refcal": {"task": "multiple_choice", "n_options": k}, **extra}


class PromptReference:
    """A reference model whose letter logits are written in the prompt as ``BASE=[...]``: stands in for a
    real base model, so tests know exactly what the reference said."""

    rate = 1.0

    def sampled(self) -> bool:
        return True

    async def score(self, prompt: str, letters) -> np.ndarray:
        return np.array([float(v) for v in re.search(r"BASE=\[([^\]]*)\]", prompt).group(1).split(",")])

    def close(self) -> None:
        pass


def wait_records(folder, n: int, timeout: float = 30.0):
    """The log's records once it holds ``n`` (reference samples are logged just after their answer)."""
    import time

    from refcal.errors import InputError
    from refcal.serve import read_log

    deadline = time.monotonic() + timeout
    while True:
        try:
            data = read_log(folder)
            if len(data) >= n:
                return data
        except InputError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"the log did not reach {n} records in {timeout} s")
        time.sleep(0.02)
