"""Final hidden states at the answer position of letter prompts (BaseCal-Proj), cached per question.

The answer position
    Letter scoring reads the option logits from the next-token logits at the *last prompt position*
    (:meth:`TransformersBackend.score_letters`: ``logits = head(h_T)[letter ids]``). The hidden state
    extracted here is that ``h_T``: the decoder's final (normalised) hidden state, before the output
    head. So ``head(h_T)[letter ids]`` reproduces the letter scores, which the tests check. Cloze
    scoring has no such position (see ``docs/METHODS.md``, ``proj``) and is not served.
Batching
    The requests are encoded with the backend's own encoder (``_encode_letter``: chat template and
    special tokens exactly as when scoring), sorted by token length, packed like the backend's batches
    (``transformers._pack``) and run left-padded through its ``_forward``; with left padding the last
    column of every row is its last real token. No shared-prefix key-value cache: the hidden state is
    the same up to float rounding, and a zero-shot prompt's shared instruction is short.
Cache and resume
    ``<cache>/hidden/<key>/`` holds ``key.json`` and one ``part-*.npz`` per computed batch (``h``: the
    request hashes, ``x``: float32 ``(m, H)``), each written atomically (temporary file, then
    ``os.replace``). ``<key>`` hashes the backend fingerprint, data set, split, the letter task's
    cache key (template, chat template) and the few-shot examples, as the score cache does
    (:mod:`refcal.scoring`). Batches are planned over all questions before the cache is read and a
    batch with a missing question is computed whole (its cached rows kept), so an interrupted
    extraction resumes with the same values as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._paths import cache_root
from ..errors import InputError, ModelError
from ..tasks.requests import LetterRequest, request_json

log = logging.getLogger(__name__)

_CACHE_VERSION = 1


@dataclass(frozen=True)
class OptionHead:
    """A model's output head restricted to the option-letter tokens: ``z = softcap(h @ weight.T + bias)``.

    Attributes
    ----------
    weight : ndarray (K, H) float64
        Head rows of the letter tokens of ``letters`` (the tokens :meth:`letter_token_ids` scores).
    bias : ndarray (K,) or None
    softcap : float or None
        The model's ``final_logit_softcapping`` (``c * tanh(z / c)``), as :meth:`TransformersBackend._head`.
    letters : tuple of str
    token_ids : tuple of int
    """

    weight: np.ndarray
    bias: np.ndarray | None
    softcap: float | None
    letters: tuple[str, ...]
    token_ids: tuple[int, ...]

    def logits(self, hidden: np.ndarray) -> np.ndarray:
        """Option logits (n, K) of final hidden states ``hidden`` (n, H), in float64."""
        h = np.asarray(hidden, dtype=np.float64)
        if h.ndim != 2 or h.shape[1] != self.weight.shape[1]:
            raise InputError(f"hidden states of shape {h.shape} do not fit a head of width {self.weight.shape[1]}")
        z = h @ self.weight.T
        if self.bias is not None:
            z = z + self.bias
        if self.softcap:
            z = np.tanh(z / self.softcap) * self.softcap
        return z


@dataclass(frozen=True)
class HiddenStates:
    """Answer-position hidden states of some questions: ``ids`` (n,) and float32 ``x`` (n, H)."""

    ids: tuple[str, ...]
    x: np.ndarray

    def take(self, ids: Sequence[Any]) -> np.ndarray:
        """The rows of ``ids`` (compared as strings, as score files compare them), in that order."""
        index = {q: i for i, q in enumerate(self.ids)}
        missing = [q for q in ids if str(q) not in index]
        if missing:
            raise InputError(f"question {missing[0]!r} has no hidden state; re-run to extract it")
        return self.x[[index[str(q)] for q in ids]]


def option_head(backend: Any, letters: Sequence[str], chat: bool = False) -> OptionHead:
    """The rows of ``backend``'s output head for the tokens it scores as ``letters`` (float64 copies)."""
    ids = backend.letter_token_ids(tuple(letters), chat)
    torch = backend._torch
    with torch.inference_mode():
        rows = torch.tensor(ids, device=backend.device)
        w = backend._head_w[rows].double().cpu().numpy()
        b = None if backend._head_b is None else backend._head_b[rows].double().cpu().numpy()
    cap = float(backend._softcap) if backend._softcap else None
    return OptionHead(w, b, cap, tuple(letters), tuple(int(i) for i in ids))


def answer_hidden_states(backend: Any, requests: Sequence[LetterRequest]) -> np.ndarray:
    """Final hidden state at the answer position of each letter request: float32 (n, H).

    ``backend`` is a :class:`~refcal.backends.transformers.TransformersBackend`; its encoder and forward
    pass are reused (see the module docstring). Rows come back in request order.
    """
    from .transformers import _pack

    torch = backend._torch
    enc = [backend._encode_letter(r) for r in requests]
    if any(not e for e in enc):
        raise InputError("a letter prompt has no tokens; give each question a text")
    width = int(backend._head_w.shape[1])
    out = np.empty((len(requests), width), dtype=np.float32)
    order = sorted(range(len(enc)), key=lambda i: (-len(enc[i]), i))
    with torch.inference_mode():
        for chunk in _pack(order, [len(enc[i]) for i in order], backend.batch_size):
            h, _, _ = backend._forward([enc[i] for i in chunk])
            last = h[:, -1, :].float().cpu().numpy()
            for b, i in enumerate(chunk):
                out[i] = last[b]
    if not np.isfinite(out).all():
        raise ModelError(f"{backend.name} returned non-finite hidden states; try --dtype float32")
    return out


def hidden_states(
    backend: Any,
    questions: Sequence[Any],
    *,
    template: int = 1,
    chat: bool = False,
    fewshot: Sequence[Any] | Mapping[str | None, Sequence[Any]] = (),
    cache_dir: str | os.PathLike | None = None,
    cache: bool = True,
    meta: Mapping[str, Any] | None = None,
) -> HiddenStates:
    """Answer-position hidden states (float32 ``(n, H)``) of the letter prompts of ``questions``, cached.

    The prompts are those of letter scoring with the same ``template``, ``chat`` and ``fewshot``
    (:class:`refcal.tasks.LetterTask`), so the states belong to the scores of the same run.
    ``cache_dir`` is the score cache folder of the run (``--cache-dir``; default ``<cache root>/scores``):
    the states go to its sibling layout ``<cache_dir>/hidden`` (default ``<cache root>/hidden``).
    ``meta["dataset"]`` and ``meta["split"]`` key the cache as they key the score cache.
    """
    from ..tasks import make_task

    if not questions:
        raise InputError("no questions to extract hidden states for; check the data set, split and --limit")
    task = make_task("letter", template=template, chat=chat)
    if isinstance(fewshot, Mapping):
        shots = [tuple(fewshot.get(q.subject, ())) for q in questions]
    else:
        shots = [tuple(fewshot)] * len(questions)
    requests = []
    for q, ex in zip(questions, shots, strict=True):
        (req,) = task.requests(q, ex)
        requests.append(req)
    meta = dict(meta or {})
    key = {
        "v": _CACHE_VERSION, "what": "answer-hidden-states", "fingerprint": str(backend.fingerprint),
        "dataset": meta.get("dataset"), "split": meta.get("split"), **task.cache_key(),
        "fewshot": _hash(json.dumps(sorted({json.dumps([[e.id, e.question, list(e.choices), e.label] for e in ex])
                                            for ex in shots}))),
    }
    hashes = [_hash(json.dumps(request_json(r), ensure_ascii=False)) for r in requests]
    root = Path(cache_dir) / "hidden" if cache_dir is not None else cache_root() / "hidden"
    store = _HiddenStore(root, key) if cache else None
    width = int(backend._head_w.shape[1])
    rows: dict[int, np.ndarray] = {}
    if store:
        cached = store.load(width)
        rows = {i: cached[h] for i, h in enumerate(hashes) if h in cached}
        if rows:
            log.info("resuming: %d of %d hidden states already in %s", len(rows), len(questions), store.path)
    lens = [backend.request_length(r) for r in requests]
    order = sorted(range(len(requests)), key=lambda i: (-lens[i], i))
    from .transformers import _pack

    for batch in _pack(order, [lens[i] for i in order], backend.batch_size):
        if all(i in rows for i in batch):
            continue
        x = answer_hidden_states(backend, [requests[i] for i in batch])
        new = [b for b, i in enumerate(batch) if i not in rows]  # cached rows of a re-run batch stay as they were
        for b in new:
            rows[batch[b]] = x[b]
        if store:
            store.append([hashes[batch[b]] for b in new], x[new])
    x = np.stack([rows[i] for i in range(len(questions))]).astype(np.float32, copy=False)
    return HiddenStates(tuple(str(q.id) for q in questions), x)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class _HiddenStore:
    """One folder of ``part-*.npz`` files (request hashes + float32 rows) per cache key."""

    def __init__(self, root: Path, key: Mapping[str, Any]):
        blob = json.dumps(key, sort_keys=True)
        self.path = root / _hash(blob)[:24]
        self._key = blob

    def load(self, width: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        if not self.path.is_dir():
            return out
        for part in sorted(self.path.glob("part-*.npz")):
            try:
                with np.load(part, allow_pickle=False) as z:
                    h, x = z["h"], z["x"]
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                log.warning("unreadable hidden-state cache file %s is ignored (its rows are computed again)", part)
                continue
            if x.ndim != 2 or x.shape != (h.shape[0], width) or not np.isfinite(x).all():
                log.warning("malformed hidden-state cache file %s is ignored (its rows are computed again)", part)
                continue
            out.update(zip(h.tolist(), x, strict=True))
        return out

    def append(self, hashes: Sequence[str], x: np.ndarray) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            key_file = self.path / "key.json"
            if not key_file.exists():
                key_file.write_text(self._key)
            fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".npz", dir=self.path)
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, h=np.asarray(hashes, dtype=str), x=np.asarray(x, dtype=np.float32))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path / f"part-{hashes[0][:16]}.npz")
        except OSError as e:
            raise InputError(f"cannot write the hidden-state cache {self.path} ({e}); pass a writable --cache-dir") \
                from None


__all__ = ["HiddenStates", "OptionHead", "option_head", "answer_hidden_states", "hidden_states"]
