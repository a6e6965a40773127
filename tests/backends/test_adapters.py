"""Post-trained aliases: base + committed LoRA adapter, merged once, cached, keyed by the adapter's bytes."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from refcal.backends import models  # noqa: E402
from refcal.errors import ModelError  # noqa: E402

TEMPLATE = "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['content'] }}<end_of_turn>{% endfor %}"


def _tiny_base(folder: Path) -> None:
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tmodels
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",
                                         "a", "b", "c", "d", "user", "model"])}
    tk = Tokenizer(tmodels.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>")
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=0)
    Gemma3ForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)


def _adapter(base: Path, out: Path, seed: int) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    pm = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    pm.save_pretrained(out)
    (out / "chat_template.jinja").write_text(TEMPLATE)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    base = tmp_path / "base"
    _tiny_base(base)
    adapters = tmp_path / "adapters"
    _adapter(base, adapters / "tiny-sft", seed=1)
    monkeypatch.setattr(models, "ADAPTERS_DIR", adapters)
    return models.ResolvedModel(str(base), "dir:tinybase"), adapters / "tiny-sft"


def _logits(folder_or_model, ids):
    from transformers import AutoModelForCausalLM

    model = folder_or_model
    if isinstance(folder_or_model, (str, Path)):
        model = AutoModelForCausalLM.from_pretrained(folder_or_model, dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_merged_alias_equals_base_plus_adapter_and_is_cached(setup):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, adapter = setup
    got = models.merged_adapter("tiny-sft", base)
    ids = torch.tensor([[1, 3, 9, 5, 6, 4, 3, 10]])
    live = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base.path), adapter)
    want, plain = _logits(live, ids), _logits(base.path, ids)
    merged = _logits(got.path, ids)
    torch.testing.assert_close(merged, want, rtol=0, atol=1e-5)
    assert (merged - plain).abs().max() > 1e-3  # the adapter changed the model
    assert got.identity.startswith("dir:tinybase+lora:")
    tok = AutoTokenizer.from_pretrained(got.path)
    assert tok.chat_template == TEMPLATE
    # a second resolve reuses the merged folder
    stamp = (Path(got.path) / "model.safetensors").stat().st_mtime_ns
    again = models.merged_adapter("tiny-sft", base)
    assert again == got and (Path(again.path) / "model.safetensors").stat().st_mtime_ns == stamp


def test_a_changed_adapter_never_reuses_a_stale_merge(setup):
    base, adapter = setup
    first = models.merged_adapter("tiny-sft", base)
    _adapter(Path(base.path), adapter, seed=2)
    second = models.merged_adapter("tiny-sft", base)
    assert second.path != first.path and second.identity != first.identity


def test_missing_adapter_files_name_the_fix(setup):
    base, adapter = setup
    (adapter / "adapter_model.safetensors").unlink()
    with pytest.raises(ModelError, match="adapter_model.safetensors.*post_train.py"):
        models.merged_adapter("tiny-sft", base)


def test_post_trained_aliases_are_chat_models_of_the_base_family():
    for name in ("gemma-3-270m-sft", "gemma-3-270m-dpo"):
        assert models.ALIASES[name].role == "chat"
        assert models.ADAPTED[name] == "gemma-3-270m"
