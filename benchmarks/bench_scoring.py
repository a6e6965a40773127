"""Letter scoring cost: naive loop vs refcal vs the cost floor, same model and questions, one run.

* naive  - one forward pass per question through the whole model, full-vocabulary logits at every
           position (what ``model(ids).logits[0, -1, letter_ids]`` costs).
* refcal - :meth:`TransformersBackend.score_letters`: length-sorted left-padded batches, the shared
           instruction prefix run once through the key-value cache, k rows of the head at one position.
* floor  - the decoder alone (no output head at all) over every prompt, in the same length-sorted,
           padding-capped batches, without a prefix cache: the work of reading every prompt once.

Targets: naive / refcal >= 5 and refcal / floor <= 1.2. Each variant is timed ``--repeats``
times, interleaved, and the minimum is reported (the machine is shared; the minimum is the least
disturbed measurement). Run::

    PYTHONPATH=src HF_HUB_OFFLINE=1 python benchmarks/bench_scoring.py --model smollm2-135m-instruct -n 24
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from refcal.backends.batching import pack
from refcal.backends.transformers import TransformersBackend
from refcal.data import load_dataset
from refcal.tasks.prompts import letter_requests


def naive(be: TransformersBackend, reqs) -> list[np.ndarray]:
    out = []
    with torch.inference_mode():
        for r in reqs:
            logits = be.model(torch.tensor([be._encode_letter(r)], device=be.device)).logits
            out.append(logits[0, -1, be.letter_token_ids(r.letters)].double().cpu().numpy())
    return out


def floor(be: TransformersBackend, reqs) -> None:
    enc = sorted((be._encode_letter(r) for r in reqs), key=len, reverse=True)
    # the same padding-aware batches as refcal, so the floor is not inflated by padding
    chunks = pack(list(range(len(enc))), [len(e) for e in enc], be.batch_size)
    with torch.inference_mode():
        for chunk in chunks:
            be._forward([enc[i] for i in chunk])


def ours(be: TransformersBackend, reqs) -> list[np.ndarray]:
    be._prefix_cache = None  # pay for the prefix in every repeat
    return be.score_letters(reqs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dataset", default="mmlu")
    ap.add_argument("-n", type=int, default=24, help="questions")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fewshot", type=int, default=0, help="MMLU dev examples in the shared prefix")
    args = ap.parse_args()

    be = TransformersBackend.from_spec(args.model, batch_size=args.batch_size)
    qs = load_dataset(args.dataset, limit=args.n, seed=0)
    shots = ()
    if args.fewshot:
        from refcal.data import fewshot_examples

        shots = fewshot_examples(args.dataset, subject=qs[0].subject, k=args.fewshot)
    reqs = letter_requests(qs, template=1, fewshot=shots)
    n_tok = [len(be._encode_letter(r)) for r in reqs]
    print(f"model {args.model} ({be.meta['dtype']}, {be.device}, {torch.get_num_threads()} threads), "
          f"{len(reqs)} {args.dataset} questions, prompt tokens mean {np.mean(n_tok):.0f} max {max(n_tok)}, "
          f"batch {args.batch_size}, vocab {be._head_w.shape[0]}")
    # warm-up (first calls allocate) and a correctness check against the naive loop
    ref = naive(be, reqs[:4])
    got = ours(be, reqs[:4])
    floor(be, reqs[:4])
    err = max(float(np.abs(a - b).max()) for a, b in zip(ref, got, strict=True))
    times: dict[str, list[float]] = {"naive": [], "refcal": [], "floor": []}
    fns = {"naive": naive, "refcal": ours, "floor": floor}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(be, reqs)
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"  {k:8s} {v:8.3f} s   ({v / len(reqs) * 1000:7.1f} ms/question; runs {', '.join(f'{x:.2f}' for x in times[k])})")
    print(f"  naive / refcal = {best['naive'] / best['refcal']:.2f}x   (target >= 5)")
    print(f"  refcal / floor = {best['refcal'] / best['floor']:.2f}x   (target <= 1.2)")
    print(f"  max |refcal - naive| letter logit = {err:.2e}")


if __name__ == "__main__":
    main()
