"""Cloze scoring with one row per question (tree-shaped attention mask, head only at scored rows).

Checked against two independent computations on tiny random models: a plain forward pass of
``context + option`` per option with the full-vocabulary log-softmax (tokenised the
lm-evaluation-harness way, re-implemented here), and the key-value-cache path the backend keeps
(``_score_cloze_reference``). The models are a 2-layer Llama (plain causal attention) and a 2-layer
Gemma-3 text model whose sliding window (5 positions) is shorter than the rows, so both the
per-layer-type masks and the window rule are exercised. The tokenizer is a small byte-level BPE
trained here, so tokens merge across the context/option boundary as they do in real vocabularies.

Tolerance 1e-4 nats on sums of a few log-probabilities of magnitude <= 10: the paths run the same
float32 network on differently shaped batches, so only the order of accumulation differs (~1e-6).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from refcal.backends import _cloze_tree  # noqa: E402
from refcal.backends.transformers import TransformersBackend  # noqa: E402
from refcal.errors import InputError  # noqa: E402
from refcal.tasks.requests import ClozeRequest  # noqa: E402

ATOL = 1e-4

REQS = [
    ClozeRequest("Question: What is the capital of France?\nAnswer:", (" Paris", " London", " Rome", " Berlin")),
    ClozeRequest("Question: 2+2=?\nAnswer:", (" 3", " 4", " five or more, certainly")),
    # the trailing space moves to the options; "Par" + "is" merges across the boundary
    ClozeRequest("Colour of the sky? ", ("Blue", "Green")),
    ClozeRequest("The capital of France is Par", ("is, the capital", " and more", "is, the capital of France")),
    ClozeRequest("Question: Which planet is the red one, fourth from the sun, after the Earth?\nAnswer:",
                 (" Mars", " Venus", " Jupiter", " Saturn", " Io")),
    ClozeRequest("Q", (" a", " b")),
]
CORPUS = [r.context + c for r in REQS for c in r.continuations] * 3 + [
    "Paris is the capital of France. The sky is blue; grass is green. Question: Answer: planet sun Earth"]


def _tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<bos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(CORPUS, trainer)
    tk.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>")


def _backend(kind: str, batch_size: int = 3, attn: str = "sdpa") -> TransformersBackend:
    tok = _tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=0, bos_token_id=1)
    torch.manual_seed(0)
    if kind == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**common, attn_implementation=attn))
    else:
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        cfg = Gemma3TextConfig(**common, sliding_window=5, layer_types=["sliding_attention", "full_attention"],
                               attn_implementation=attn)
        model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # random init gives near-uniform logits; widen them so differences show
        model.get_output_embeddings().weight.mul_(20.0)
    return TransformersBackend(model, tok, identity=kind, batch_size=batch_size, name=kind)


def _harness_split(tok, context: str, cont: str) -> tuple[list[int], list[int]]:
    """Context and continuation tokens as lm-evaluation-harness's ``_encode_pair`` (spaces only)."""
    n = len(context) - len(context.rstrip(" "))
    if n:
        context, cont = context[:-n], context[-n:] + cont
    whole = tok(context + cont)["input_ids"]
    ctx = tok(context)["input_ids"]
    return ctx, whole[len(ctx):]


def _plain(be: TransformersBackend, req: ClozeRequest) -> list[float]:
    out = []
    for c in req.continuations:
        ctx, cont = _harness_split(be.tokenizer, req.context, c)
        with torch.no_grad():
            lp = torch.log_softmax(be.model(torch.tensor([ctx + cont])).logits[0].double(), -1)
        out.append(sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    return out


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def tiny(request):
    return _backend(request.param)


def test_matches_plain_forward_and_cache_path(tiny):
    assert _cloze_tree.layout(tiny.model.config) is not None
    got = tiny.score_cloze(REQS)
    assert tiny._cloze_lay is not None  # the first-question check passed: the tree path was used
    ref = tiny._score_cloze_reference(REQS)
    for r, g, f in zip(REQS, got, ref, strict=True):
        plain = _plain(tiny, r)
        np.testing.assert_allclose(g.logprob, plain, atol=ATOL, rtol=0)
        if tiny.name == "llama":
            # the cache path counts a sliding window over padded columns, so on the Gemma rows (longer
            # than its 5-position window, left-padded) it is off by up to 0.2 nats; the tree path is not
            np.testing.assert_allclose(f.logprob, plain, atol=ATOL, rtol=0)
        assert g.n_tokens == f.n_tokens == tuple(len(_harness_split(tiny.tokenizer, r.context, c)[1])
                                                  for c in r.continuations)
        assert g.n_chars == tuple(len(c) for c in r.continuations)
    # the boundary cases really are boundary cases for this vocabulary: a token merged across the
    # boundary (the model reads the context's own tokens, the option keeps what follows the merge)
    ctx, cont = _harness_split(tiny.tokenizer, REQS[3].context, REQS[3].continuations[0])
    assert ctx + cont != tiny.tokenizer(REQS[3].context + REQS[3].continuations[0])["input_ids"]
    assert tiny.tokenizer.decode(_harness_split(tiny.tokenizer, REQS[2].context, "Blue")[1]).startswith(" ")


def test_gemma3_rows_pass_the_sliding_window():
    be = _backend("gemma3")
    lay = _cloze_tree.layout(be.model.config)
    assert lay == _cloze_tree.Layout(5, True)
    enc = [be._encode_cloze(r) for r in REQS]
    assert max(len(ctx) + max(len(c) for c in conts) for ctx, conts in enc) > 3 * lay.window
    # the window matters: without it the scores move far beyond the tolerance
    wide = _cloze_tree.score(be._decoder, be._head, enc, lay=_cloze_tree.Layout(None, True),
                             vocab=len(be.tokenizer), pad=be._pad, dtype=be.dtype, device=be.device)
    narrow = _cloze_tree.score(be._decoder, be._head, enc, lay=lay, vocab=len(be.tokenizer), pad=be._pad,
                               dtype=be.dtype, device=be.device)
    assert max(abs(a - b) for x, y in zip(wide, narrow, strict=True) for a, b in zip(x, y, strict=True)) > 1e-2
    for r, n in zip(REQS, narrow, strict=True):
        np.testing.assert_allclose(n, _plain(be, r), atol=ATOL, rtol=0)


@pytest.mark.parametrize("kind", ["llama", "gemma3"])
def test_eager_attention_and_batch_sizes_agree(kind):
    base = [r.logprob for r in _backend(kind, batch_size=8).score_cloze(REQS)]
    for bs, attn in ((1, "sdpa"), (2, "eager"), (8, "eager")):
        be = _backend(kind, batch_size=bs, attn=attn)
        for a, b in zip(base, be.score_cloze(REQS), strict=True):
            np.testing.assert_allclose(b.logprob, a, atol=ATOL, rtol=0)


def test_deterministic_and_iter_order(tiny):
    a = tiny.score_cloze(REQS)
    b = dict(tiny.score_cloze_iter(REQS))
    assert sorted(b) == list(range(len(REQS)))
    assert [b[i] for i in range(len(REQS))] == a  # bit-identical on a repeat of the same batch
    lens = [tiny.request_length(r) for r in REQS]
    assert lens == [tiny.request_length(r) for r in REQS]
    for r, n in zip(REQS, lens, strict=True):
        ctx, conts = tiny._encode_cloze(r)
        assert n == len(ctx) + sum(len(c) - 1 for c in conts)


@pytest.mark.parametrize("why", ["layout", "check"])
def test_unsupported_attention_uses_the_cache_path(why, monkeypatch, caplog):
    want = _backend("llama").score_cloze(REQS)  # (the cache path mishandles Gemma's short test window)
    tiny = _backend("llama")
    if why == "layout":  # an attention implementation that takes no custom mask
        monkeypatch.setattr(_cloze_tree, "layout", lambda cfg: None)
    else:  # an architecture whose scores under the tree mask differ from plain forward passes
        monkeypatch.setattr(_cloze_tree, "check", lambda *a, **k: float("nan"))
    calls = []
    monkeypatch.setattr(_cloze_tree, "score", lambda *a, **k: calls.append(1))
    got = tiny.score_cloze(REQS)
    assert not calls and tiny._cloze_lay is None
    assert ("key-value-cache path" in caplog.text) == (why == "check")
    for a, b in zip(want, got, strict=True):
        np.testing.assert_allclose(b.logprob, a.logprob, atol=ATOL, rtol=0)


def test_check_measures_the_tree_rows(tiny):
    enc = tiny._encode_cloze(REQS[0])
    kw = dict(vocab=len(tiny.tokenizer), pad=tiny._pad, dtype=tiny.dtype, device=tiny.device)
    lay = _cloze_tree.layout(tiny.model.config)
    assert _cloze_tree.check(tiny.model, tiny._decoder, tiny._head, enc, lay=lay, **kw) < 1e-4
    # a head that is not the model's: the check sees it
    assert _cloze_tree.check(tiny.model, tiny._decoder, lambda h: tiny._head(h) * 1.5, enc, lay=lay, **kw) > 1e-2


def test_layout_rules():
    from types import SimpleNamespace as C

    assert _cloze_tree.layout(C(_attn_implementation="sdpa")) == _cloze_tree.Layout(None, False)
    assert _cloze_tree.layout(C(_attn_implementation="eager", sliding_window=64)) == _cloze_tree.Layout(64, False)
    assert _cloze_tree.layout(C(_attn_implementation="sdpa", sliding_window=64,
                                layer_types=["full_attention"])) == _cloze_tree.Layout(None, False)
    assert _cloze_tree.layout(C(_attn_implementation="sdpa", sliding_window=64,
                                layer_types=["full_attention", "sliding_attention"])) == _cloze_tree.Layout(64, True)
    assert _cloze_tree.layout(C(_attn_implementation="flash_attention_2")) is None
    assert _cloze_tree.layout(C(_attn_implementation="sdpa", layer_types=["chunked_attention"])) is None


def test_empty_option_is_refused(tiny):
    with pytest.raises(InputError, match="no tokens after the context"):
        tiny.score_cloze([ClozeRequest("Question: x\nAnswer:", (" a", ""))])


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_packaged_models_match_plain_forward(alias, monkeypatch):
    """16 ARC-Easy questions: every option within 1e-4 nats of a plain forward pass per option (measured
    ~2e-5; the former key-value-cache path was 2.6e-4 (SmolLM2) and 7.9e-4 (Gemma) off on ARC-Easy)."""
    from refcal.data import load_dataset
    from refcal.tasks.prompts import cloze_requests

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    be = TransformersBackend.from_spec(alias, batch_size=8)
    reqs = cloze_requests(load_dataset("arc-easy", limit=16, seed=0))
    for r, res in zip(reqs, be.score_cloze(reqs), strict=True):
        np.testing.assert_allclose(res.logprob, _plain(be, r), atol=ATOL, rtol=0)
