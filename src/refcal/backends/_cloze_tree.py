"""Cloze scoring that reads each question's context once: one row per question, a tree-shaped mask.

A question with context ``c`` and options ``o_1 .. o_k`` becomes one row of tokens::

    c_1 .. c_n | o_1[:-1] | o_2[:-1] | ... | o_k[:-1]

with an attention mask in which the context is causal, each option's tokens see the whole context
and the earlier tokens of their own option only (never another option), and position ids that
restart at ``n`` for every option. Each option therefore gets exactly the hidden states of a plain
forward pass over ``c + o_j``, while the context is computed once for all options and no key-value
cache is copied. The last token of an option is never an input (nothing after it is scored).

Only the rows whose log-probabilities are needed reach the output head: the context's last position
(it predicts each option's first token) and every option token but the last. They are gathered from
all questions of the batch and go through the head as one matrix product (reading the head's weights
once per batch matters on a CPU: Gemma-3's is 670 MB), then
``log p(t) = z_t - logsumexp(z)`` and a per-option sum.

Which models: the mask is handed to the model as a ready 4-D additive mask, which transformers passes
through unchanged for the ``sdpa`` and ``eager`` attention implementations. Sliding-window layers get
the same tree mask with the window applied to the position ids (``pos_q - pos_k < window``, the
transformers rule); models mixing full and sliding layers (Gemma 2/3) get one mask per layer type.
Other attention implementations or layer types return ``None`` from :func:`layout` and are scored by
the key-value-cache path instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

#: output-head logits computed per matrix product, in elements (2**26 float32 = 256 MiB)
HEAD_CHUNK = 1 << 26
#: largest difference (nats) from plain forward passes that :func:`check` accepts (float32 rounding is ~1e-5)
CHECK_TOL = 1e-3

_FULL, _SLIDING = "full_attention", "sliding_attention"


@dataclass(frozen=True)
class Layout:
    """How a model wants its mask: ``window`` (None: no sliding window), ``mixed`` (a dict per layer type)."""

    window: int | None
    mixed: bool


def layout(config: Any) -> Layout | None:
    """The mask layout a model's config calls for, or None when a custom 4-D mask is not supported."""
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in ("sdpa", "eager"):
        return None
    types = set(getattr(config, "layer_types", None) or ())
    if types - {_FULL, _SLIDING}:
        return None
    window = getattr(config, "sliding_window", None)
    if types == {_FULL} or not window:
        return Layout(None, False)
    return Layout(int(window), types == {_FULL, _SLIDING})


def tree_length(ctx: Sequence[int], conts: Sequence[Sequence[int]]) -> int:
    """Tokens of a question's row: the context plus every option but its last token."""
    return len(ctx) + sum(len(c) - 1 for c in conts)


def score(decoder: Callable[..., Any], head: Callable[[Any], Any], enc: Sequence[tuple[list[int], list[list[int]]]],
          *, lay: Layout, vocab: int, pad: int, dtype: Any, device: Any) -> list[list[float]]:
    """Summed log-probabilities of every option of every question in ``enc`` (one forward pass).

    ``enc`` holds ``(context tokens, [option tokens, ...])`` per question; ``decoder`` is the model
    without its head (returns ``last_hidden_state``), ``head`` maps hidden rows (N, H) to logits (N, ``vocab``).
    """
    import torch  # optional heavy dependency (the `transformers` extra), imported on use

    width = max(tree_length(*e) for e in enc)
    n_q = len(enc)
    ids = torch.full((n_q, width), pad, dtype=torch.long)
    seg = torch.full((n_q, width), -1, dtype=torch.long)  # -1 padding, 0 context, j + 1 option j
    pos = torch.zeros((n_q, width), dtype=torch.long)
    gather: list[int] = []  # flat (question, column) of each scored row
    targets: list[int] = []
    owner: list[int] = []  # option number (over the batch) of each scored row
    n_opt = 0
    for b, (ctx, conts) in enumerate(enc):
        row, sg, ps = list(ctx), [0] * len(ctx), list(range(len(ctx)))
        for j, c in enumerate(conts):
            start = len(row)
            gather.append(b * width + len(ctx) - 1)
            gather.extend(b * width + start + t for t in range(len(c) - 1))
            row += c[:-1]
            sg += [j + 1] * (len(c) - 1)
            ps += range(len(ctx), len(ctx) + len(c) - 1)
            targets += c
            owner += [n_opt] * len(c)
            n_opt += 1
        ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
        seg[b, : len(row)] = torch.tensor(sg, dtype=torch.long)
        pos[b, : len(row)] = torch.tensor(ps, dtype=torch.long)
    q, k = seg.unsqueeze(2), seg.unsqueeze(1)
    # causal within the row; a key is visible when it is context or the query's own option. Padding
    # (right of every real token) sees earlier padding, so no query row is fully masked (no NaN).
    see = torch.ones((width, width), dtype=torch.bool).tril() & ((k == 0) | (k == q))
    mask = _additive(see, dtype)
    if lay.window is not None and int(pos.max()) >= lay.window:
        near = (pos.unsqueeze(2) - pos.unsqueeze(1)) < lay.window
        windowed = _additive(see & near, dtype)
        mask = {_FULL: mask, _SLIDING: windowed} if lay.mixed else windowed
    elif lay.mixed:
        mask = {_FULL: mask, _SLIDING: mask}
    if isinstance(mask, dict):
        mask = {t: m.to(device) for t, m in mask.items()}
    else:
        mask = mask.to(device)
    out = decoder(input_ids=ids.to(device), attention_mask=mask, position_ids=pos.to(device), use_cache=False)
    hidden = out.last_hidden_state
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, torch.tensor(gather, device=device))
    tgt = torch.tensor(targets, device=device)
    lp = torch.empty(len(targets), dtype=torch.float32, device=device)
    step = max(1, HEAD_CHUNK // vocab)
    for s in range(0, len(targets), step):
        z = head(rows[s: s + step]).float()
        e = s + z.shape[0]
        lp[s:e] = z.gather(1, tgt[s:e, None]).squeeze(1) - torch.logsumexp(z, -1)
    sums = torch.zeros(n_opt, dtype=torch.float64, device=device).index_add_(
        0, torch.tensor(owner, device=device), lp.double()).cpu().tolist()
    out_rows, at = [], 0
    for _, conts in enc:
        out_rows.append(sums[at: at + len(conts)])
        at += len(conts)
    return out_rows


def check(model: Any, decoder: Callable[..., Any], head: Callable[[Any], Any],
          question: tuple[list[int], list[list[int]]], **kw: Any) -> float:
    """Largest |tree score - plain score| (nats) over one question's options, the plain score from a
    forward pass of the whole model over ``context + option`` (its own mask, head and soft-capping)."""
    import torch  # optional heavy dependency (the `transformers` extra), imported on use

    ctx, conts = question
    with torch.inference_mode():
        got = score(decoder, head, [question], **kw)[0]
        err = 0.0
        for c, g in zip(conts, got, strict=True):
            z = model(input_ids=torch.tensor([ctx + c], device=kw["device"])).logits[0, len(ctx) - 1: -1].float()
            tgt = torch.tensor(c, device=z.device)[:, None]
            want = float((z.gather(1, tgt).squeeze(1) - torch.logsumexp(z, -1)).double().sum())
            err = max(err, abs(g - want))
    return err


def _additive(see: Any, dtype: Any) -> Any:
    """(B, T, T) booleans -> (B, 1, T, T) additive mask in ``dtype`` (0 visible, the dtype's minimum hidden)."""
    import torch  # optional heavy dependency (the `transformers` extra), imported on use

    mask = torch.zeros(see.shape, dtype=dtype)
    return mask.masked_fill_(~see, torch.finfo(dtype).min).unsqueeze(1)
