"""Local causal language models through Hugging Face transformers.

What is computed, and why it is cheap
-------------------------------------
Letter scoring
    The option logits are the next-token logits of the letter tokens at the last prompt position.
    Only ``k`` rows of the output head are used: ``h_T @ W[letter_ids].T`` (then the model's final
    logit soft-capping, ``c * tanh(z / c)``, when its config sets one, as Gemma 2 does). Because every
    score is a logit of the same softmax, differences within a row equal those of full log-probabilities.
Letter tokens
    ``letter_style="auto"``: without a chat template the prompt ends with ``"Answer:"`` and the
    natural next token is the letter with a leading space (``" A"``); it is used when it is a single
    token, else the bare letter. With the chat template the answer starts a fresh assistant turn, so
    the bare letter (``"A"``) is preferred. ``"space"`` / ``"bare"`` force one variant.
Cloze scoring
    Tokenised like lm-evaluation-harness: ``whole = enc(context + continuation)``,
    ``ctx = enc(context)``, continuation tokens = ``whole[len(ctx):]``; the model reads
    ``ctx + continuation tokens`` and the score is the sum of the continuation tokens' log-probabilities.
    The full vocabulary is needed there (a log-probability needs the normaliser) but only at the
    continuation positions.
Batching and the key-value cache
    Requests are sorted by token length and batched with left padding, an attention mask and
    position ids counted over real tokens only. Tokens shared by all letter requests with the same
    ``prefix`` (instruction, few-shot examples) are run once; the batch continues from that cache. A
    cloze question is one row: its context once, then every option's tokens, under an attention mask
    that lets an option see the context and itself only, position ids restarting after the context
    for each option (:mod:`refcal.backends._cloze_tree`); the head runs on the scored rows of the whole
    batch in one product. Models whose attention takes no custom mask (flash attention) run each
    context once into a key-value cache that its options continue from instead.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, MissingDependencyError, ModelError
from . import _cloze_tree, models
from ._generate import GenerationMixin
from .base import BackendOptions, ClozeRequest, ClozeResult, GenerateRequest, LetterRequest, collect
from .batching import common_prefix, pack
from .heads import AnswerPositionMixin

log = logging.getLogger(__name__)

LETTER_STYLES = ("auto", "space", "bare")
DTYPES = ("float32", "bfloat16", "float16")
#: shared prefixes shorter than this are not worth a separate forward pass
_MIN_PREFIX = 4


def _torch():
    try:
        import torch  # optional heavy dependency (the `transformers` extra), imported on use
        import transformers  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(e.name or "torch", "transformers") from None
    return torch


@dataclass(frozen=True)
class TransformersOptions(BackendOptions):
    """Settings of a local model (:meth:`TransformersBackend.from_spec`); unknown keys are refused.

    ``device=None`` picks CUDA when available, else CPU; ``dtype=None`` picks bfloat16 on CUDA and
    float32 on CPU; ``batch_size`` sequences per forward pass; ``letter_style`` see the module docstring.
    """

    backend = "local (transformers)"

    device: str | None = None
    dtype: str | None = None
    batch_size: int = 8
    letter_style: str = "auto"

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise InputError(f"dtype {self.dtype!r} is not supported; use {', '.join(DTYPES)}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InputError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if self.letter_style not in LETTER_STYLES:
            raise InputError(f"letter style {self.letter_style!r} is not known; choose one of {', '.join(LETTER_STYLES)}")
        if self.device is not None and not isinstance(self.device, str):
            raise InputError(f"device {self.device!r} is not valid; use cpu, cuda or cuda:N")


class TransformersBackend(GenerationMixin, AnswerPositionMixin):
    """A causal LM scoring letters and cloze continuations, and generating greedily.

    Parameters
    ----------
    model, tokenizer
        A loaded ``AutoModelForCausalLM`` (eval mode) and its tokenizer.
    identity : str
        Names the exact weights (GGUF sha256, hub revision, folder digest); part of :attr:`fingerprint`.
    batch_size : int
        Sequences per forward pass.
    letter_style : {"auto", "space", "bare"}
    name : str
        Short label for logs and metadata.
    """

    #: padding and batch composition change the last digits of a score (see the README on resume)
    batch_invariant = False
    #: no request counters are kept (an API backend's ``stats`` counts requests sent)
    stats = None

    def __init__(self, model: Any, tokenizer: Any, *, identity: str, batch_size: int = 8,
                 letter_style: str = "auto", name: str = "model"):
        torch = _torch()
        if letter_style not in LETTER_STYLES:
            raise InputError(f"letter style {letter_style!r} is not known; choose one of {', '.join(LETTER_STYLES)}")
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = int(batch_size)
        self.letter_style = letter_style
        self.name = name
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._torch = torch
        self._decoder = model.get_decoder()
        # transformers 5.x renamed `past_key_values` to `cache`; 4.x only knows the old name
        params = inspect.signature(self._decoder.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        head = model.get_output_embeddings()
        self._head_w = head.weight
        self._head_b = getattr(head, "bias", None)
        self._softcap = getattr(model.config, "final_logit_softcapping", None)
        self._pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._letter_ids: dict[tuple[tuple[str, ...], bool], list[int]] = {}
        self._prefix_cache: tuple[tuple[int, ...], Any] | None = None
        settings = {"identity": identity, "dtype": str(self.dtype), "device": self.device.type,
                    "letter_style": letter_style, "v": 1}
        digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.fingerprint = f"{name}-{digest}"
        self.meta = {"name": name, "identity": identity, "dtype": str(self.dtype).replace("torch.", ""),
                     "device": self.device.type, "letter_style": letter_style}

    # ------------------------------------------------------------------------------------- loading
    @classmethod
    def from_spec(cls, spec: str, options: TransformersOptions | Mapping[str, Any] | None = None,
                  **kwargs: Any) -> TransformersBackend:
        """Load a built-in alias, a ``.gguf`` file, a model folder or a Hugging Face id.

        ``options`` (:class:`TransformersOptions` or a dict; keyword arguments override it) sets
        device, dtype, batch size and letter style. GGUF files are converted once and cached (see
        :mod:`refcal.backends.models`).
        """
        opts = TransformersOptions.build(options, **kwargs)
        torch = _torch()
        from transformers import (  # optional heavy dependency, imported on use
            AutoModelForCausalLM,
            AutoTokenizer,
        )

        dev = opts.device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            torch_device = torch.device(dev)
        except RuntimeError:
            raise InputError(f"device {dev!r} is not valid; use cpu, cuda or cuda:N") from None
        dtype = opts.dtype or ("bfloat16" if torch_device.type == "cuda" else "float32")
        batch_size, letter_style = opts.batch_size, opts.letter_style
        resolved = models.resolve(spec)
        try:
            tok = AutoTokenizer.from_pretrained(resolved.path)
            model = AutoModelForCausalLM.from_pretrained(resolved.path, dtype=getattr(torch, dtype))
        except OSError as e:
            offline = " (HF_HUB_OFFLINE is set, so only cached hub models work)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise ModelError(
                f"cannot load model {spec!r}{offline}: {str(e).splitlines()[0].rstrip('.')}; pass a built-in alias "
                f"({', '.join(models.ALIASES)}), a model folder, a .gguf file or an available hub id"
            ) from None
        identity = resolved.identity
        if identity.startswith("hf:"):
            identity += "@" + str(getattr(model.config, "_commit_hash", None) or "unknown")
        model.to(torch_device)
        name = spec if spec in models.ALIASES else os.path.basename(spec.rstrip("/")) or spec
        return cls(model, tok, identity=identity, batch_size=batch_size, letter_style=letter_style, name=name)

    # ------------------------------------------------------------------------------------- tokens
    def _encode_letter(self, r: LetterRequest) -> list[int]:
        return self._encode_text(r.prefix + r.prompt, r.chat)

    def _chat_text(self, text: str) -> str:
        """``text`` as the user turn of the chat template, the assistant's turn opened."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise InputError(f"model {self.name!r} has no chat template; use --chat-template off")
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)

    def _encode_text(self, text: str, chat: bool) -> list[int]:
        if chat:
            return self.tokenizer(self._chat_text(text), add_special_tokens=False)["input_ids"]
        return self.tokenizer(text)["input_ids"]

    def request_length(self, r: LetterRequest | ClozeRequest | GenerateRequest) -> int:
        """Token count used to sort batches."""
        if isinstance(r, LetterRequest):
            return len(self._encode_letter(r))
        if isinstance(r, GenerateRequest):
            return len(self._encode_text(r.prompt, r.chat)) + r.max_new_tokens
        return _cloze_tree.tree_length(*self._encode_cloze(r))

    def letter_token_ids(self, letters: Sequence[str], chat: bool = False) -> list[int]:
        """Token id scored for each letter (see the module docstring for the variant chosen)."""
        key = (tuple(letters), bool(chat))
        if key not in self._letter_ids:
            styles = {"space": (" {}",), "bare": ("{}",)}.get(
                self.letter_style, ("{}", " {}") if chat else (" {}", "{}"))
            ids = []
            for letter in letters:
                for style in styles:
                    enc = self.tokenizer(style.format(letter), add_special_tokens=False)["input_ids"]
                    if len(enc) == 1:
                        ids.append(enc[0])
                        break
                else:
                    raise ModelError(f"option label {letter!r} is not a single token for {self.name}; "
                                     "use fewer options or cloze scoring")
            if len(set(ids)) != len(ids):
                raise ModelError(f"option labels {letters} map to repeated tokens for {self.name}")
            self._letter_ids[key] = ids
        return self._letter_ids[key]

    # ------------------------------------------------------------------------------------- forward
    def _forward(self, rows: list[list[int]], past: Any = None, past_mask: Any = None):
        """Left-padded forward of ``rows`` after an optional cache; returns (hidden (B,T,H), mask (B,T), cache)."""
        torch = self._torch
        width = max(1, max(len(r) for r in rows))
        ids = torch.full((len(rows), width), self._pad, dtype=torch.long)
        own = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            if r:
                ids[b, width - len(r):] = torch.tensor(r)
                own[b, width - len(r):] = 1
        start = past_mask.sum(1, keepdim=True) if past_mask is not None else 0
        # positions count real tokens only, so padding never shifts a sequence's positions
        pos = (start + own.cumsum(1) - 1).clamp(min=0)
        mask = own if past_mask is None else torch.cat([past_mask, own], 1)
        kw = {self._cache_kw: past} if past is not None else {}
        out = self._decoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                            position_ids=pos.to(self.device), use_cache=True, **kw)
        return out.last_hidden_state, own, getattr(out, self._cache_kw)

    def _head(self, h: Any, rows: Any = None) -> Any:
        """Logits from final hidden states ``h`` (..., H), using only head rows ``rows`` when given."""
        w = self._head_w if rows is None else self._head_w[rows]
        z = h @ w.T
        if self._head_b is not None:
            z = z + (self._head_b if rows is None else self._head_b[rows])
        if self._softcap:
            z = self._torch.tanh(z / self._softcap) * self._softcap
        return z

    def _prefix_kv(self, tokens: tuple[int, ...]) -> Any:
        """Key-value cache of a shared prefix, computed once and reused while the prefix repeats."""
        if self._prefix_cache is None or self._prefix_cache[0] != tokens:
            _, _, kv = self._forward([list(tokens)])
            self._prefix_cache = (tokens, kv)
        return self._prefix_cache[1]

    # ------------------------------------------------------------------------------------- letters
    def score_letters(self, requests: Sequence[LetterRequest], *, use_prefix_cache: bool = True) -> list[np.ndarray]:
        """Letter logits, one float64 array (k,) per request (see the module docstring)."""
        torch = self._torch
        out: list[np.ndarray | None] = [None] * len(requests)
        groups: dict[tuple[str, bool], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.prefix, r.chat), []).append(i)
        with torch.inference_mode():
            for idx in groups.values():
                enc = [self._encode_letter(requests[i]) for i in idx]
                p = common_prefix(enc) if use_prefix_cache and len(idx) > 1 else 0
                p = min(p, min(len(e) for e in enc) - 1)
                if p < _MIN_PREFIX:
                    p = 0
                order = sorted(range(len(idx)), key=lambda j: -len(enc[j]))
                for chunk in pack(order, [len(enc[j]) - p for j in order], self.batch_size):
                    rows = [enc[j][p:] for j in chunk]
                    past = past_mask = None
                    if p:
                        past = copy.deepcopy(self._prefix_kv(tuple(enc[chunk[0]][:p])))
                        past.batch_repeat_interleave(len(chunk))
                        past_mask = torch.ones((len(chunk), p), dtype=torch.long)
                    h, _, _ = self._forward(rows, past, past_mask)
                    last = h[:, -1, :]
                    for b, j in enumerate(chunk):
                        r = requests[idx[j]]
                        ids = torch.tensor(self.letter_token_ids(r.letters, r.chat), device=self.device)
                        out[idx[j]] = self._head(last[b], ids).double().cpu().numpy()
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------- cloze
    def _encode_cloze(self, r: ClozeRequest) -> tuple[list[int], list[list[int]]]:
        ctx_text, conts = r.context, list(r.continuations)
        # the chat template already holds the special tokens it needs
        special = {"add_special_tokens": False} if getattr(r, "chat", False) else {}
        if special:
            ctx_text = self._chat_text(ctx_text)
        # as lm-evaluation-harness: trailing spaces of the context belong to the continuation
        stripped = ctx_text.rstrip(" ")
        if stripped != ctx_text:
            conts = [ctx_text[len(stripped):] + c for c in conts]
            ctx_text = stripped
        ctx = self.tokenizer(ctx_text, **special)["input_ids"]
        if not ctx:
            raise InputError("a cloze context is empty and the model adds no start token; give a context")
        cont_ids = []
        for c in conts:
            # encode whole then split: a token merged across the boundary counts for the option
            piece = self.tokenizer(ctx_text + c, **special)["input_ids"][len(ctx):]
            if not piece:
                raise InputError(f"option {c!r} has no tokens after the context; options must be non-empty")
            cont_ids.append(piece)
        return ctx, cont_ids

    def score_cloze(self, requests: Sequence[ClozeRequest]) -> list[ClozeResult]:
        """Summed continuation log-probabilities, with token and character counts."""
        return collect(self.score_cloze_iter(requests), len(requests))

    def score_cloze_iter(self, requests: Sequence[ClozeRequest]) -> Iterator[tuple[int, ClozeResult]]:
        """:meth:`score_cloze` as ``(index, result)`` pairs, yielded batch by batch.

        Each question is one row (context once, then its options, under a tree-shaped attention mask:
        :mod:`refcal.backends._cloze_tree`); rows sorted by length, padding capped as for letters.
        Models whose attention takes no custom mask use :meth:`_score_cloze_reference`.
        """
        enc = [self._encode_cloze(r) for r in requests]
        lay = self._cloze_layout(enc[0]) if enc else None
        if lay is None:
            yield from enumerate(self._score_cloze_reference(requests))
            return
        lens = [_cloze_tree.tree_length(*e) for e in enc]
        order = sorted(range(len(requests)), key=lambda i: (-lens[i], i))
        for chunk in pack(order, [lens[i] for i in order], self.batch_size):
            with self._torch.inference_mode():
                sums = _cloze_tree.score(self._decoder, self._head, [enc[i] for i in chunk], lay=lay,
                                         vocab=int(self._head_w.shape[0]), pad=self._pad, dtype=self.dtype,
                                         device=self.device)
            for i, s in zip(chunk, sums, strict=True):
                yield i, ClozeResult(tuple(s), tuple(len(c) for c in enc[i][1]),
                                     tuple(len(c) for c in requests[i].continuations))

    def _cloze_layout(self, first: tuple[list[int], list[list[int]]]) -> _cloze_tree.Layout | None:
        """The tree path's mask layout, or None for the cache path. Checked once per backend on its first
        question against plain forward passes of the whole model (an architecture that ignores a custom
        mask, e.g. one that derives position biases from a 2-D mask, falls back instead of scoring wrong)."""
        if getattr(self, "_cloze_lay", False) is False:
            lay = _cloze_tree.layout(self.model.config)
            if lay is not None:
                err = _cloze_tree.check(self.model, self._decoder, self._head, first, lay=lay,
                                        vocab=int(self._head_w.shape[0]), pad=self._pad, dtype=self.dtype,
                                        device=self.device)
                if not err <= _cloze_tree.CHECK_TOL:
                    log.warning("cloze rows with a shared context differ from plain forward passes by %.1e nats "
                                "on %s; using the slower key-value-cache path", err, self.name)
                    lay = None
            self._cloze_lay = lay
        return self._cloze_lay

    def _score_cloze_reference(self, requests: Sequence[ClozeRequest]) -> list[ClozeResult]:
        """The key-value-cache path: contexts batched through the cache, then options in batches,
        each continuing from a copy of its context's cache (models without custom masks; tests)."""
        torch = self._torch
        results: list[ClozeResult | None] = [None] * len(requests)
        enc = [self._encode_cloze(r) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: -len(enc[i][0]))
        with torch.inference_mode():
            for chunk in pack(order, [len(enc[i][0]) for i in order], self.batch_size):
                # contexts minus their last token go through the cache; the last one starts each option row
                _, ctx_mask, kv = self._forward([enc[i][0][:-1] for i in chunk])
                sel, rows, targets = [], [], []
                for b, i in enumerate(chunk):
                    ctx, conts = enc[i]
                    for c in conts:
                        sel.append(b)
                        rows.append([ctx[-1]] + c[:-1])
                        targets.append(c)
                scores: list[float] = []
                for s2 in range(0, len(rows), self.batch_size):
                    part = range(s2, min(len(rows), s2 + self.batch_size))
                    index = torch.tensor([sel[t] for t in part])
                    past = copy.deepcopy(kv)
                    past.reorder_cache(index.to(self.device))
                    h, _, _ = self._forward([rows[t] for t in part], past, ctx_mask[index])
                    for b, t in enumerate(part):
                        n = len(targets[t])
                        logp = torch.log_softmax(self._head(h[b, -n:, :]).float(), -1)
                        tok = torch.tensor(targets[t], device=self.device)
                        scores.append(float(logp[torch.arange(n, device=self.device), tok].double().sum()))
                pos = 0
                for i in chunk:
                    conts = requests[i].continuations
                    results[i] = ClozeResult(
                        tuple(scores[pos: pos + len(conts)]),
                        tuple(len(c) for c in enc[i][1]),
                        tuple(len(c) for c in conts),
                    )
                    pos += len(conts)
        return results  # type: ignore[return-value]


    def score_letters_iter(self, requests: Sequence[LetterRequest]) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`score_letters` as ``(index, scores)`` pairs (all computed before the first is yielded)."""
        yield from enumerate(self.score_letters(requests))
