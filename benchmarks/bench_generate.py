"""Greedy generation cost: refcal's batched decoding against one prompt at a time and against
transformers' own ``model.generate``, same model, same prompts, timed alternately in one run.

* one-by-one   - :meth:`TransformersBackend.generate` with ``batch_size=1`` (each prompt alone: the
                 former code path's cost).
* refcal       - :meth:`TransformersBackend.generate` with ``--batch-size`` (left-padded batches of
                 length-sorted prompts, one step for every running row, the output head only at the last
                 position).
* hf.generate  - ``model.generate(do_sample=False)`` on the same batches (tokenizer left padding, the
                 same chat-templated prompts, ``max_new_tokens``), the library's own greedy loop.

Every contender generates the same number of new tokens per prompt as refcal did (stop strings off, end of
sequence honoured), so the work is the same; the texts are compared. Each is timed ``--repeats`` times,
interleaved, and the minimum is reported (the least disturbed run). Run::

    PYTHONPATH=src HF_HUB_OFFLINE=1 python benchmarks/bench_generate.py -n 16
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from refcal.backends.batching import pack
from refcal.backends.transformers import TransformersBackend
from refcal.data.freeform import load_triviaqa
from refcal.tasks import prompts_freeform as pf
from refcal.tasks.requests import GenerateRequest


def hf_generate(be: TransformersBackend, reqs: list[GenerateRequest]) -> list[str]:
    tok = be.tokenizer
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    enc = [be._encode_text(r.prompt, r.chat) for r in reqs]
    order = sorted(range(len(reqs)), key=lambda i: (-len(enc[i]), i))
    out = [""] * len(reqs)
    with torch.inference_mode():
        for chunk in pack(order, [len(enc[i]) for i in order], be.batch_size):
            width = max(len(enc[i]) for i in chunk)
            ids = torch.full((len(chunk), width), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, i in enumerate(chunk):
                ids[b, width - len(enc[i]):] = torch.tensor(enc[i])
                mask[b, width - len(enc[i]):] = 1
            gen = be.model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                    max_new_tokens=reqs[chunk[0]].max_new_tokens, pad_token_id=tok.pad_token_id)
            for b, i in enumerate(chunk):
                out[i] = tok.decode(gen[b, width:], skip_special_tokens=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("-n", type=int, default=16, help="TriviaQA questions")
    ap.add_argument("--max-new-tokens", type=int, default=pf.GENERATION_MAX_NEW_TOKENS)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    be = TransformersBackend.from_spec(args.model, batch_size=args.batch_size)
    qs = load_triviaqa()[: args.n]
    # no stop strings: every contender runs to max_new_tokens or the end of sequence, the same work
    reqs = [GenerateRequest(pf.generation_prompt(q.question), args.max_new_tokens, (), True) for q in qs]
    n_tok = [len(be._encode_text(r.prompt, r.chat)) for r in reqs]
    print(f"model {args.model} ({be.meta['dtype']}, {be.device}, {torch.get_num_threads()} threads, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), {len(reqs)} TriviaQA prompts "
          f"(chat template), prompt tokens mean {np.mean(n_tok):.0f}, max_new_tokens {args.max_new_tokens}, "
          f"batch {args.batch_size}, load average at start {os.getloadavg()[0]:.1f}")

    def one_by_one(be, reqs):
        be.batch_size = 1
        try:
            return be.generate(reqs)
        finally:
            be.batch_size = args.batch_size

    fns = {"one-by-one": one_by_one, "refcal": lambda be, r: be.generate(r), "hf.generate": hf_generate}
    fns["refcal"](be, reqs[:2])  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    texts: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            texts[name] = fn(be, reqs)
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"  {k:12s} {v:8.2f} s   ({v / len(reqs):6.2f} s/prompt; runs {', '.join(f'{x:.2f}' for x in times[k])})")
    print(f"  one-by-one / refcal = {best['one-by-one'] / best['refcal']:.2f}x;  "
          f"hf.generate / refcal = {best['hf.generate'] / best['refcal']:.2f}x")
    for k in ("one-by-one", "hf.generate"):
        same = sum(a == b for a, b in zip(texts["refcal"], texts[k], strict=True))
        print(f"  same text as refcal: {k} {same}/{len(reqs)}")
    print(f"  load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
