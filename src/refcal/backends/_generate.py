"""Greedy generation of :class:`~refcal.backends.transformers.TransformersBackend` (a mixin: the same class,
kept in its own file; it uses the backend's encoder, forward pass and head)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from ..errors import InputError
from ..tasks.requests import cut_at_stop
from .base import GenerateRequest, collect
from .batching import pack


class GenerationMixin:
    """``generate`` / ``generate_iter`` for a backend with ``_encode_text``, ``_forward``, ``_head``,
    ``tokenizer``, ``model`` and ``batch_size``."""

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """Greedy continuation of each prompt: at most ``max_new_tokens`` tokens, cut before the first
        stop string (or the model's end-of-sequence token).

        Prompts are sorted by length and decoded together in left-padded batches (padding capped as for
        scoring): one forward pass over the batch's prompts, then one single-token step per new token for
        all rows still running, each reading the shared key-value cache. Only the last position's hidden
        state goes through the output head. Padding changes the last digits of the logits, so a row's
        greedy choice can differ from an unbatched run's only at a near tie of its top two tokens.
        """
        return collect(self.generate_iter(requests), len(requests))

    def _eos_ids(self) -> frozenset[int]:
        """Tokens that end a generation: the tokenizer's end of sequence and the model's generation
        config's (chat models often end a turn with a token of their own, e.g. ``<|im_end|>``)."""
        ids = {self.tokenizer.eos_token_id}
        cfg = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(cfg if isinstance(cfg, (list, tuple)) else [cfg])
        return frozenset(int(i) for i in ids if i is not None)

    def _generate_batch(self, prompts: list[list[int]], requests: list[GenerateRequest]) -> list[str]:
        torch = self._torch
        eos = self._eos_ids()
        n = len(prompts)
        new: list[list[int]] = [[] for _ in range(n)]
        running = [True] * n
        with torch.inference_mode():
            h, mask, kv = self._forward(prompts)
            last = h[:, -1, :]
            for _ in range(max(r.max_new_tokens for r in requests)):
                picks = self._head(last).argmax(-1).tolist()
                for b, tok in enumerate(picks):
                    if not running[b]:
                        continue
                    if tok in eos:
                        running[b] = False
                        continue
                    new[b].append(tok)
                    r = requests[b]
                    if len(new[b]) >= r.max_new_tokens or (
                            r.stop and any(s and s in self.tokenizer.decode(new[b], skip_special_tokens=True)
                                           for s in r.stop)):
                        running[b] = False
                if not any(running):
                    break
                # finished rows keep stepping (their tokens are ignored) so the batch's cache stays aligned
                step = [[new[b][-1] if new[b] else self._pad] for b in range(n)]
                h, own, kv = self._forward(step, kv, mask)
                mask = torch.cat([mask, own], 1)
                last = h[:, -1, :]
        return [cut_at_stop(self.tokenizer.decode(t, skip_special_tokens=True), r.stop)
                for t, r in zip(new, requests, strict=True)]

    def generate_iter(self, requests: Sequence[GenerateRequest]) -> Iterator[tuple[int, str]]:
        """:meth:`generate` as ``(index, text)`` pairs, yielded batch by batch as each batch finishes."""
        for r in requests:
            if isinstance(r.max_new_tokens, bool) or not isinstance(r.max_new_tokens, int) or r.max_new_tokens < 1:
                raise InputError("each generation request needs a positive max_new_tokens")
        enc = [self._encode_text(r.prompt, r.chat) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: (-len(enc[i]), i))
        for chunk in pack(order, [len(enc[i]) for i in order], self.batch_size):
            texts = self._generate_batch([enc[i] for i in chunk], [requests[i] for i in chunk])
            yield from zip(chunk, texts, strict=True)
