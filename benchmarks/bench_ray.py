"""Ray scaling on one machine: 1 vs 2 model replicas (actors) of one thread each, same questions, one run.

Both variants go through :class:`refcal.backends.ray.RayBackend` on one private Ray instance, so the
ratio isolates the actor pool: the driver plans the same batches, each actor loads its own copy of
the model once (``threads=1``: ``torch.set_num_threads(1)``) and scores one planned batch per call.
Reported per variant: the wall time of the scoring phase (from the first batch sent to the last
result back, actor start and model load included, as a user waits for them) and the time after the
pool's first result (steady state). Variants alternate ``--repeats`` times; the minimum of each is
kept (the machine is shared). Scores of every repeat are checked identical to one process's. Run::

    PYTHONPATH=src HF_HUB_OFFLINE=1 python benchmarks/bench_ray.py -n 64 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import ray

from refcal.backends import load_backend
from refcal.backends.ray import RayBackend, _temp_dir
from refcal.data import load_dataset
from refcal.scoring import score_questions


def timed(rb: RayBackend, questions, batch_size: int, scoring: str) -> tuple[np.ndarray, float, float]:
    inner = rb.dispatch_batches
    marks: list[float] = []

    def dispatch(call, batches):
        marks.append(time.perf_counter())
        for item in inner(call, batches):
            marks.append(time.perf_counter())
            yield item

    rb.dispatch_batches = dispatch
    out = score_questions(rb, questions, scoring=scoring, cache=False, progress=False, batch_size=batch_size)
    return out.logits, marks[-1] - marks[0], marks[-1] - marks[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--dataset", default="sciq")
    ap.add_argument("--scoring", default="cloze")
    ap.add_argument("-n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    questions = load_dataset(args.dataset, limit=args.n, seed=0)
    opts = {"device": "cpu", "batch_size": args.batch_size}
    import torch

    torch.set_num_threads(1)
    ref = score_questions(load_backend(args.model, opts), questions, scoring=args.scoring, cache=False,
                          progress=False, batch_size=args.batch_size).logits
    ray.init(address="local", include_dashboard=False, num_cpus=os.cpu_count(), log_to_driver=False,
             _temp_dir=str(_temp_dir(None)))
    best: dict[int, tuple[float, float]] = {}
    try:
        for rep in range(args.repeats):
            for workers in (1, 2):
                with RayBackend(args.model, opts, workers=workers, threads=1) as rb:
                    logits, wall, steady = timed(rb, questions, args.batch_size, args.scoring)
                    np.testing.assert_array_equal(logits, ref)
                    print(f"repeat {rep} workers {workers}: scoring {wall:.1f} s, after first result {steady:.1f} s "
                          f"({len(rb.pids)} worker processes answered)", flush=True)
                w, s = best.get(workers, (np.inf, np.inf))
                best[workers] = (min(w, wall), min(s, steady))
    finally:
        ray.shutdown()
    (w1, s1), (w2, s2) = best[1], best[2]
    print(f"\n{args.model}, {args.scoring}, {args.n} {args.dataset} questions, batch {args.batch_size}, "
          f"{os.cpu_count()} cores, min of {args.repeats}")
    print(f"1 worker : {w1:.1f} s scoring, {s1:.1f} s after the first result")
    print(f"2 workers: {w2:.1f} s scoring, {s2:.1f} s after the first result")
    print(f"speed-up 1 -> 2 workers: {w1 / w2:.2f}x scoring, {s1 / s2:.2f}x after the first result; "
          "scores identical to one process in every repeat")


if __name__ == "__main__":
    main()
