"""A model's output head restricted to the option letters (BaseCal-Proj).

The answer position
    Letter scoring reads the option logits from the next-token logits at the *last prompt position*
    (:meth:`TransformersBackend.score_letters`: ``logits = head(h_T)[letter ids]``). The hidden state a
    backend returns from ``answer_hidden_states`` is that ``h_T``: the decoder's final (normalised) hidden
    state, before the output head, computed with the backend's own encoder (chat template and special
    tokens exactly as when scoring) and left-padded batches (the last column of every row is its last real
    token). So ``OptionHead.logits(h_T)`` reproduces the letter scores, which the tests check. Cloze
    scoring has no such position (see ``docs/METHODS.md``, ``proj``) and is not served.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._math import head_logits
from ..errors import InputError, ModelError
from ..tasks.requests import LetterRequest
from .batching import pack


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
        return head_logits(hidden, self.weight, self.bias, self.softcap)


class AnswerPositionMixin:
    """Hidden states at the answer position and the option head, for a backend with ``_encode_letter``,
    ``_forward``, ``_head_w`` / ``_head_b`` / ``_softcap``, ``letter_token_ids``, ``_torch``, ``device`` and
    ``batch_size`` (:class:`~refcal.backends.transformers.TransformersBackend`; the same class, its own file).
    """

    @property
    def hidden_size(self) -> int:
        """Width ``H`` of the final hidden states (the output head's input)."""
        return int(self._head_w.shape[1])

    def option_head(self, letters: Sequence[str], chat: bool = False) -> OptionHead:
        """The rows of the output head for the tokens scored as ``letters`` (float64 copies), with the
        model's logit soft-capping (see :mod:`refcal.backends.heads`)."""
        ids = self.letter_token_ids(tuple(letters), chat)
        torch = self._torch
        with torch.inference_mode():
            rows = torch.tensor(ids, device=self.device)
            w = self._head_w[rows].double().cpu().numpy()
            b = None if self._head_b is None else self._head_b[rows].double().cpu().numpy()
        cap = float(self._softcap) if self._softcap else None
        return OptionHead(w, b, cap, tuple(letters), tuple(int(i) for i in ids))

    def answer_hidden_states(self, requests: Sequence[LetterRequest]) -> np.ndarray:
        """Final hidden state at the answer position of each letter request: float32 ``(n, H)``, in request
        order (the ``h_T`` whose head rows give the letter scores; cached by :func:`refcal.scoring.hidden_states`)."""
        torch = self._torch
        enc = [self._encode_letter(r) for r in requests]
        if any(not e for e in enc):
            raise InputError("a letter prompt has no tokens; give each question a text")
        out = np.empty((len(requests), self.hidden_size), dtype=np.float32)
        order = sorted(range(len(enc)), key=lambda i: (-len(enc[i]), i))
        with torch.inference_mode():
            for chunk in pack(order, [len(enc[i]) for i in order], self.batch_size):
                h, _, _ = self._forward([enc[i] for i in chunk])
                last = h[:, -1, :].float().cpu().numpy()
                for b, i in enumerate(chunk):
                    out[i] = last[b]
        if not np.isfinite(out).all():
            raise ModelError(f"{self.name} returned non-finite hidden states; try --dtype float32")
        return out
