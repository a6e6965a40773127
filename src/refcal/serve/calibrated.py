"""What the proxy adds to an answer: the request's ``refcal`` field, the calibrator, the ``refcal`` result.

A request opts in with ``"refcal": {"task": "multiple_choice", "n_options": k}`` (optionally
``"letters": ["A", ...]``) or ``"refcal": {"task": "free_form"}`` (optionally ``"question": "..."``,
default the last user message). The letter log-probabilities come from the answer's first token through
:mod:`refcal.backends.api_logprobs` (the ``openai:`` backend's top-k rule, floor included), so the
proxy's numbers equal ``refcal score`` through that backend followed by ``refcal apply``.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import os
import string
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..calibrate.base import TASKS
from ..errors import CalibratorFileError, InputError

#: the request's ``refcal.task`` -> the calibrator's ``task_`` (:data:`refcal.calibrate.base.TASKS`; a file of the
#: previous build with ``"free-form P(True)"`` loads as ``"free-form"``)
TASK_KINDS = {"multiple_choice": TASKS[0], "free_form": TASKS[1]}
MAX_OPTIONS = 26


class RequestMismatch(InputError):
    """The request's ``refcal`` field is malformed or does not fit the calibrator (HTTP 422)."""


@dataclass(frozen=True)
class RefcalSpec:
    """A parsed ``refcal`` request field."""

    task: str  # "multiple_choice" | "free_form"
    letters: tuple[str, ...]
    question: str | None = None

    @property
    def k(self) -> int:
        return len(self.letters)


class ServedCalibrator:
    """A calibrator loaded for serving (via :func:`refcal.load_calibrator`) with its file's sha256.

    Parameters
    ----------
    path : path of a calibrator JSON written by ``refcal fit``
    allow_other_k : bool
        Apply a temperature fitted on another number of options (as ``refcal apply --allow-other-k``).
    """

    def __init__(self, path: str | os.PathLike, *, allow_other_k: bool = False):
        from .. import load_calibrator

        self.path = os.fspath(path)
        self.cal = load_calibrator(self.path)  # CalibratorFileError: one line, the server does not start
        with open(self.path, "rb") as fh:
            self.sha256 = hashlib.sha256(fh.read()).hexdigest()
        self.allow_other_k = allow_other_k
        self.method = self.cal.method
        self.task = getattr(self.cal, "task_", "multiple-choice")
        self.n_options = int(getattr(self.cal, "n_options_", 0) or 0)
        self.scaling = getattr(self.cal, "scaling", None)
        self.needs_base = bool(getattr(self.cal, "needs_base_at_apply", self.method == "daca_agree"))
        doc = self.cal.to_dict()
        self.params = doc.get("parameters", {k: doc[k] for k in ("temperatures",) if k in doc})
        self.temperature = _temperature(self.cal)
        self._plain_t = self.temperature if _plain_temperature(self.cal) else None
        try:  # a calibrator that cannot map a row of its own size is broken: refuse it at start, not per request
            self.predict(np.zeros(max(self.n_options, 2)) + np.arange(max(self.n_options, 2)) * 0.1,
                         np.zeros(max(self.n_options, 2)) if self.needs_base else None)
        except Exception as exc:
            raise CalibratorFileError(f"{self.path}: cannot be applied ({exc}); re-create it with `refcal fit`") from None

    def describe(self) -> dict[str, Any]:
        """``calibrator`` part of every ``refcal`` result."""
        return {"method": self.method, "params": self.params, "sha256": self.sha256}

    def check(self, spec: RefcalSpec) -> None:
        """Raise :class:`RequestMismatch` when this calibrator does not fit the request."""
        want = TASK_KINDS[spec.task]
        if want != self.task:
            raise RequestMismatch(f"the calibrator is for {self.task} scores but the request asks for {spec.task}; "
                                  "serve a calibrator fitted on this task")
        if self.task != TASK_KINDS["multiple_choice"] or spec.k == self.n_options or not self.n_options:
            return
        if self.scaling in ("vector", "matrix") or not self.allow_other_k:
            raise RequestMismatch(f"the calibrator was fitted on {self.n_options} options but the request has "
                                  f"n_options={spec.k}; send {self.n_options}-option questions"
                                  + ("" if self.scaling in ("vector", "matrix") else
                                     " or start the proxy with --allow-other-k"))

    def predict(self, chat: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
        """Calibrated log-probabilities, shape (k,), of one row of chat log-probabilities."""
        if self._plain_t is not None and base is None:
            out = _temperature_row(chat, self._plain_t)
            if out is not None:
                return out
        g = np.asarray(chat, dtype=np.float64)[None, :]
        f = None if base is None else np.asarray(base, dtype=np.float64)[None, :]
        return _predict_log_proba(self.cal, g, f, self._form)[0]

    @property
    def _form(self) -> str:
        if not hasattr(self, "_form_"):
            self._form_ = _call_form(self.cal)
        return self._form_


def _plain_temperature(cal: Any) -> bool:
    """Whether ``cal.predict_log_proba`` is exactly ``log_softmax(chat / temperature_)`` (the scaling base class's,
    temperature form: DACA, naive alignment, labelled temperature scaling)."""
    from ..calibrate._scaling import ScalingCalibrator

    return (isinstance(cal, ScalingCalibrator) and getattr(cal, "scaling", None) == "temperature"
            and type(cal).predict_log_proba is ScalingCalibrator.predict_log_proba
            and type(cal).transform is ScalingCalibrator.transform and _temperature(cal) is not None)


def _temperature_row(chat: Any, t: float) -> np.ndarray | None:
    """``log_softmax(chat / t)`` of one row, in plain floats (a row of 2..26 numbers: numpy's per-call cost
    is most of the work there). None when the row is not ordinary (NaN, +inf, fewer than two finite values):
    the calibrator's own checked path then answers or refuses."""
    z = [float(v) / t for v in chat]
    m = max(z)
    if not math.isfinite(m) or any(v != v or v == math.inf for v in z) or sum(v > -math.inf for v in z) < 2:
        return None
    lse = m + math.log(sum(math.exp(v - m) for v in z))
    return np.array([v - lse for v in z], dtype=np.float64)


def _call_form(cal: Any) -> str:
    params = inspect.signature(cal.predict_log_proba).parameters
    return "base" if "base" in params else "pair" if "base_logits" in params else "chat"


def _predict_log_proba(cal: Any, chat: np.ndarray, base: np.ndarray | None, form: str | None = None) -> np.ndarray:
    """``cal.predict_log_proba(chat, base=...)`` (the unified calibrator API), or the older pair form
    ``predict_log_proba(base, chat)`` of calibrators that read both models."""
    form = form or _call_form(cal)
    if form == "base":
        return np.asarray(cal.predict_log_proba(chat, base=base))
    if form == "pair":
        return np.asarray(cal.predict_log_proba(base, chat))
    return np.asarray(cal.predict_log_proba(chat))


def _temperature(cal: Any) -> float | None:
    t = getattr(cal, "temperature_", None)
    if getattr(cal, "scaling", "temperature") == "temperature" and isinstance(t, int | float) and math.isfinite(t):
        return float(t)
    return None


def parse_spec(field: Any, messages: Any = None) -> RefcalSpec:
    """Validate a request's ``refcal`` field (:class:`RequestMismatch` with one line when malformed)."""
    if not isinstance(field, dict):
        raise RequestMismatch('the "refcal" field must be an object such as {"task": "multiple_choice", "n_options": 4}')
    unknown = set(field) - {"task", "n_options", "letters", "question"}
    if unknown:
        raise RequestMismatch(f'unknown key(s) {sorted(unknown)} in "refcal"; allowed: task, n_options, letters, question')
    task = field.get("task")
    if task not in TASK_KINDS:
        raise RequestMismatch(f'"refcal.task" must be one of {list(TASK_KINDS)}, got {task!r}')
    if task == "free_form":
        question = field.get("question")
        if question is None:
            question = last_user_text(messages)
        if not isinstance(question, str) or not question.strip():
            raise RequestMismatch('free_form needs the question: a user message or "refcal.question"')
        from ..tasks.prompts_freeform import P_TRUE_LETTERS

        return RefcalSpec("free_form", tuple(P_TRUE_LETTERS), question)
    k = field.get("n_options")
    letters = field.get("letters")
    if letters is not None:
        if (not isinstance(letters, list) or not all(isinstance(x, str) and x.strip() for x in letters)
                or len(set(letters)) != len(letters) or len(letters) < 2):
            raise RequestMismatch('"refcal.letters" must be a list of at least two distinct non-empty strings')
        if k is not None and k != len(letters):
            raise RequestMismatch(f'"refcal.n_options" is {k} but "refcal.letters" has {len(letters)} letters')
        return RefcalSpec("multiple_choice", tuple(letters))
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_OPTIONS:
        raise RequestMismatch(f'"refcal.n_options" must be an integer in 2..{MAX_OPTIONS}, got {k!r}')
    return RefcalSpec("multiple_choice", tuple(string.ascii_uppercase[:k]))


def last_user_text(messages: Any) -> str | None:
    """Text of the last user message (string content, or the text parts of a list content)."""
    if not isinstance(messages, list):
        return None
    for msg in reversed(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            content = msg.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return None


def prompt_text(body: dict) -> str:
    """The request as one raw prompt for a reference (base) model: message contents joined, or ``prompt``."""
    if isinstance(body.get("prompt"), str):
        return body["prompt"]
    parts = []
    for msg in body.get("messages") or []:
        content = msg.get("content") if isinstance(msg, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
    return "\n\n".join(parts)


def result(spec: RefcalSpec, cal: ServedCalibrator, chat: np.ndarray, floored: tuple[bool, ...],
           letter_source: str, request_id: str, base: np.ndarray | None = None) -> dict[str, Any]:
    """The ``refcal`` field of the response (see the module docstring of :mod:`refcal.serve.app`)."""
    logp = cal.predict(chat, base)
    probs = np.exp(logp)
    if spec.task == "free_form":  # letters (False, True): the confidence is the calibrated P(True)
        p_true = float(probs[1])
        probabilities = {"True": p_true, "False": float(probs[0])}
        answer, confidence = ("True" if p_true >= 0.5 else "False"), p_true
    else:
        j = int(np.argmax(logp))
        probabilities = {letter: float(p) for letter, p in zip(spec.letters, probs, strict=True)}
        answer, confidence = spec.letters[j], float(probs[j])
    return {
        "task": spec.task, "probabilities": probabilities, "answer": answer, "confidence": confidence,
        "letter_source": letter_source, "floored": [spec.letters[i] for i, f in enumerate(floored) if f],
        "calibrator": cal.describe(), "request_id": request_id,
    }
