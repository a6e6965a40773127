"""The transformers backend against independent full forward passes.

Fast tests use a tiny random Gemma-2 model (it soft-caps its final logits, so the k-row head path is
tested with capping) and a character-level tokenizer; ``slow`` tests use the two packaged models.

Tolerances: the backend and the references run the same float32 network on differently padded
batches, so sums are accumulated in other orders; differences are ~1e-6 relative, and 1e-4 absolute
on logits of magnitude <= 40 is far below anything that changes a score meaningfully.
"""

from __future__ import annotations

import string

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from refcal.backends.transformers import TransformersBackend  # noqa: E402
from refcal.data.base import Question  # noqa: E402
from refcal.errors import InputError  # noqa: E402
from refcal.tasks.prompts import cloze_requests, letter_requests  # noqa: E402

QS = [
    Question("q1", "What is the capital of France?", ("Paris", "London", "Rome", "Berlin"), 0),
    Question("q2", "2+2=?", ("3", "4", "5"), 1),
    Question("q3", "Which planet is the red one, fourth from the sun?", ("Venus", "Mars", "Jupiter", "Saturn", "Io"), 1),
    Question("q4", "Water boils at what Celsius temperature at sea level?", ("100", "50"), 0),
]
SHOTS = [Question("f1", "Colour of the sky?", ("Blue", "Green"), 0)]
ATOL = 1e-4


def _tiny_backend(batch_size: int = 3) -> TransformersBackend:
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import Gemma2Config, Gemma2ForCausalLM, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", *string.printable])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>")
    cfg = Gemma2Config(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, final_logit_softcapping=5.0,
                       sliding_window=4096, pad_token_id=0)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(cfg)
    with torch.no_grad():  # random init gives near-uniform logits; widen them so capping matters
        model.lm_head.weight.mul_(30.0)
    return TransformersBackend(model, tok, identity="tiny", batch_size=batch_size, name="tiny")


def _ref_letters(be: TransformersBackend, req) -> np.ndarray:
    ids = be._encode_letter(req)
    with torch.no_grad():
        full = be.model(torch.tensor([ids])).logits[0, -1].double()
    return full[be.letter_token_ids(req.letters, req.chat)].numpy()


def _ref_cloze(be: TransformersBackend, req) -> list[float]:
    ctx = be.tokenizer(req.context)["input_ids"]
    out = []
    for c in req.continuations:
        cont = be.tokenizer(req.context + c)["input_ids"][len(ctx):]
        with torch.no_grad():
            lp = torch.log_softmax(be.model(torch.tensor([ctx + cont])).logits[0].double(), -1)
        out.append(sum(float(lp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont)))
    return out


def _check(be: TransformersBackend, chat_modes=(False,)):
    for chat in chat_modes:
        reqs = letter_requests(QS, fewshot=SHOTS, chat=chat, template=2)
        cached = be.score_letters(reqs)
        plain = be.score_letters(reqs, use_prefix_cache=False)
        for r, a, b in zip(reqs, cached, plain, strict=True):
            ref = _ref_letters(be, r)
            assert a.shape == (len(r.letters),) and np.isfinite(a).all()
            np.testing.assert_allclose(a, ref, atol=ATOL, rtol=0)
            np.testing.assert_allclose(b, ref, atol=ATOL, rtol=0)
    creqs = cloze_requests(QS, fewshot=SHOTS)
    for r, res in zip(creqs, be.score_cloze(creqs), strict=True):
        assert res.n_chars == tuple(len(c) for c in r.continuations)
        assert all(n >= 1 for n in res.n_tokens)
        np.testing.assert_allclose(res.logprob, _ref_cloze(be, r), atol=ATOL, rtol=0)


def test_tiny_model_matches_full_forward_with_softcap():
    be = _tiny_backend()
    assert be._softcap == 5.0
    _check(be)


def test_tiny_prefix_cache_is_used_and_batch_size_does_not_matter():
    be = _tiny_backend(batch_size=2)
    reqs = letter_requests(QS, fewshot=SHOTS)
    a = be.score_letters(reqs)
    assert be._prefix_cache is not None and len(be._prefix_cache[0]) >= 20
    b = _tiny_backend(batch_size=8).score_letters(reqs)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, atol=ATOL, rtol=0)


def test_tiny_letter_tokens_and_errors():
    be = _tiny_backend()
    # " A" is two characters, hence two tokens here: the bare letter is used
    assert be.letter_token_ids(("A", "B")) == [be.tokenizer.convert_tokens_to_ids("A"),
                                               be.tokenizer.convert_tokens_to_ids("B")]
    with pytest.raises(InputError, match="no chat template"):
        be.score_letters(letter_requests(QS[:1], chat=True))
    with pytest.raises(InputError, match="letter style"):
        TransformersBackend(be.model, be.tokenizer, identity="x", letter_style="weird")
    assert be.fingerprint.startswith("tiny-")
    other = TransformersBackend(be.model, be.tokenizer, identity="tiny", letter_style="bare", name="tiny")
    assert other.fingerprint != be.fingerprint


def _ref_generate(be: TransformersBackend, prompt: str, n: int) -> str:
    """Independent greedy decoding: full forward passes, no cache, no padding."""
    ids = be.tokenizer(prompt)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(be.model(torch.tensor([ids + new])).logits[0, -1].argmax())
            new.append(nxt)
    return be.tokenizer.decode(new, skip_special_tokens=True)


def test_tiny_greedy_generation_matches_full_forward_and_stops():
    from refcal.tasks import GenerateRequest

    be = _tiny_backend()
    prompts = ["Question: 2+2=?\nAnswer:", "Hi"]
    refs = [_ref_generate(be, p, 6) for p in prompts]
    got = be.generate([GenerateRequest(p, max_new_tokens=6) for p in prompts])
    assert got == refs
    stop = refs[0][1:3]
    cut = be.generate([GenerateRequest(prompts[0], max_new_tokens=6, stop=(stop,))])[0]
    assert cut == refs[0][: refs[0].index(stop)]
    assert list(be.generate_iter([GenerateRequest(prompts[1], max_new_tokens=6)])) == [(0, refs[1])]
    with pytest.raises(InputError, match="max_new_tokens"):
        be.generate([GenerateRequest("x", max_new_tokens=0)])


def test_tiny_generation_stops_at_the_generation_configs_end_token(monkeypatch):
    """A chat model's end-of-turn token (its generation config's ``eos_token_id``, not the tokenizer's) ends
    the answer, as the tokenizer's end of sequence does."""
    from refcal.tasks import GenerateRequest

    be = _tiny_backend()
    prompt = "Question: 2+2=?\nAnswer:"
    ids = be.tokenizer(prompt)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(6):
            new.append(int(be.model(torch.tensor([ids + new])).logits[0, -1].argmax()))
    stop = next(i for i, t in enumerate(new) if t != be.tokenizer.eos_token_id and t not in new[:i])
    monkeypatch.setattr(be.model.generation_config, "eos_token_id", [new[stop]], raising=False)
    got = be.generate([GenerateRequest(prompt, max_new_tokens=6)])[0]
    assert got == be.tokenizer.decode(new[:stop], skip_special_tokens=True)
    assert be._eos_ids() == {new[stop]} | ({be.tokenizer.eos_token_id} - {None})
    assert got != be.tokenizer.decode(new, skip_special_tokens=True)  # the end token really cut the answer


def test_tiny_batched_generation_equals_one_at_a_time(monkeypatch):
    """Rows of different lengths decoded in one left-padded batch, stopping at different steps, give the
    same text as the independent full-forward reference; the batch really is one batch."""
    from refcal.tasks import GenerateRequest

    be = _tiny_backend(batch_size=8)
    prompts = ["Question: 2+2=?\nAnswer:", "Question: 3+4=?\nAnswer:", "Question: what is x?\nAnswer:",
               "Question: 10-2=?\nAnswer:"]
    lengths = [5, 7, 3, 6]
    refs = [_ref_generate(be, p, n) for p, n in zip(prompts, lengths, strict=True)]
    calls = []
    real = be._generate_batch
    monkeypatch.setattr(be, "_generate_batch", lambda p, r: calls.append(len(p)) or real(p, r))
    got = be.generate([GenerateRequest(p, max_new_tokens=n) for p, n in zip(prompts, lengths, strict=True)])
    assert got == refs
    assert calls == [4]
    pairs = list(be.generate_iter([GenerateRequest(p, max_new_tokens=n) for p, n in zip(prompts, lengths, strict=True)]))
    assert sorted(pairs) == sorted(enumerate(refs)) and calls == [4, 4]


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_packaged_models(alias, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    be = TransformersBackend.from_spec(alias, batch_size=3)
    assert be.meta["dtype"] == "float32" and be.meta["identity"].startswith("gguf:")
    chat = be.tokenizer.chat_template is not None
    assert chat == (alias == "smollm2-135m-instruct")
    _check(be, chat_modes=(False, True) if chat else (False,))
    # after "Answer:" the letter with its leading space is one token in both vocabularies
    space_a = be.tokenizer(" A", add_special_tokens=False)["input_ids"]
    assert be.letter_token_ids(("A",)) == space_a
    if chat:
        assert be.letter_token_ids(("A",), chat=True) == be.tokenizer("A", add_special_tokens=False)["input_ids"]
