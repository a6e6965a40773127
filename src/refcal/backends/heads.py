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

from dataclasses import dataclass

import numpy as np

from ..errors import InputError


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
