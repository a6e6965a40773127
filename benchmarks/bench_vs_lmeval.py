"""Cloze scoring cost: refcal against lm-evaluation-harness (HFLM) and the cost floor, one run.

Same converted model folder, same questions (``load_dataset(dataset, limit=n, seed=0)``, the
``cloze_requests`` contexts and options), float32 on CPU, torch's default threads.

* lm-eval whole  - a fresh process: import lm_eval, ``HFLM(pretrained=<folder>, batch_size=8)``,
                   ``loglikelihood`` on every (context, option) pair.
* refcal whole   - a fresh ``refcal score -m <alias> -d <dataset> --limit n --scoring cloze`` process
                   with an empty cache folder (nothing reused).
* scoring only   - the part of those processes spent in ``HFLM.loglikelihood`` / ``score_questions``.
* floor          - in this process: the decoder alone over each question's context followed by all
                   its options' tokens (one plain causal row per question, length-sorted, padding
                   capped as refcal does), then the output head and its normaliser (logsumexp) at the
                   option tokens only: the least work that yields every option's log-likelihood.
                   Timed alternately with refcal's ``score_questions`` on the same loaded model.

Every measurement is repeated ``--repeats`` times, alternating the contenders, and the minimum is
reported (the machine is shared; the minimum is the least disturbed run). CPU seconds (user + system
of the process) are reported next to wall seconds: they are less sensitive to other processes.
The scores are compared too (max |refcal - lm-eval| over every option). Run::

    PYTHONPATH=src HF_HUB_OFFLINE=1 python benchmarks/bench_vs_lmeval.py -n 150 | tee -a results.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = ("smollm2-135m-instruct", "gemma-3-270m")


# ---------------------------------------------------------------------------------------------- workers
def lmeval_worker(folder: str, pairs_file: str, out_file: str, batch_size: int) -> None:
    """The lm-evaluation-harness side: nothing from refcal is imported here."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=folder, batch_size=batch_size, device="cpu", dtype="float32")
    pairs = json.loads(Path(pairs_file).read_text())
    inst = [Instance(request_type="loglikelihood", doc={}, arguments=(c, o), idx=j) for j, (c, o) in enumerate(pairs)]
    t0 = time.perf_counter()
    res = lm.loglikelihood(inst, disable_tqdm=True)
    dt = time.perf_counter() - t0
    Path(out_file).write_text(json.dumps({"scoring_s": dt, "ll": [float(r[0]) for r in res]}))


def refcal_worker(out_file: str, argv: list[str]) -> None:
    """``refcal score`` as the CLI runs it, with the time spent in ``score_questions`` recorded."""
    import refcal.scoring as scoring
    from refcal.cli import main

    inner = scoring.score_questions
    spent: list[float] = []

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            spent.append(time.perf_counter() - t0)

    scoring.score_questions = timed
    rc = main(argv)
    Path(out_file).write_text(json.dumps({"scoring_s": sum(spent), "rc": rc}))


# ---------------------------------------------------------------------------------------------- parent
def _run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of a child process (its output goes to ``log``)."""
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def floor(be, reqs, batch_size: int) -> None:
    """Decoder over context + every option token per question, head + logsumexp at option tokens only."""
    import torch

    from refcal.backends.batching import pack

    enc = [be._encode_cloze(r) for r in reqs]
    rows = [ctx + [t for c in conts for t in c] for ctx, conts in enc]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
    step = max(1, (1 << 26) // int(be._head_w.shape[0]))
    with torch.inference_mode():
        for chunk in pack(order, [len(rows[i]) for i in order], batch_size):
            width = max(len(rows[i]) for i in chunk)
            ids = torch.full((len(chunk), width), be._pad, dtype=torch.long)
            own = torch.zeros((len(chunk), width), dtype=torch.long)
            idx: list[int] = []
            for b, i in enumerate(chunk):
                ids[b, width - len(rows[i]):] = torch.tensor(rows[i])
                own[b, width - len(rows[i]):] = 1
                first = b * width + width - len(rows[i]) + len(enc[i][0]) - 1
                idx += range(first, first + sum(len(c) for c in enc[i][1]))
            pos = (own.cumsum(1) - 1).clamp(min=0)
            h = be._decoder(input_ids=ids, attention_mask=own, position_ids=pos, use_cache=False).last_hidden_state
            sel = h.reshape(-1, h.shape[-1])[torch.tensor(idx)]
            for s in range(0, len(idx), step):
                torch.logsumexp(be._head(sel[s: s + step]).float(), -1)


def bench_model(alias: str, args: argparse.Namespace, work: Path) -> None:
    import numpy as np
    import torch

    from refcal.backends.transformers import TransformersBackend
    from refcal.data import load_dataset
    from refcal.scores import load_scores
    from refcal.scoring import score_questions
    from refcal.tasks.prompts import cloze_requests

    try:
        from refcal.backends.models import resolve
    except ImportError:  # before the move into backends/
        from refcal.models import resolve
    folder = resolve(alias).path
    qs = load_dataset(args.dataset, limit=args.n, seed=0)
    reqs = cloze_requests(qs)
    be = TransformersBackend.from_spec(alias, batch_size=args.batch_size)
    enc = [be._encode_cloze(r) for r in reqs]
    n_opt = sum(len(c) for _, cs in enc for c in cs)
    n_pairs = sum(len(r.continuations) for r in reqs)
    print(f"model {alias} ({be.meta['dtype']}, {be.device}, {torch.get_num_threads()} threads), {len(reqs)} "
          f"{args.dataset} questions, {n_pairs} options, context tokens mean "
          f"{np.mean([len(c) for c, _ in enc]):.1f}, option tokens mean {n_opt / n_pairs:.1f}, "
          f"vocab {be._head_w.shape[0]}, batch {args.batch_size}, load average at start {os.getloadavg()[0]:.1f}",
          flush=True)
    pairs = [(r.context, c) for r in reqs for c in r.continuations]
    pairs_file = work / f"{alias}_pairs.json"
    pairs_file.write_text(json.dumps(pairs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HOME": str(work / "hf")}
    me = [sys.executable, os.path.abspath(__file__)]
    times: dict[str, list[tuple[float, float, float]]] = {"lm-eval": [], "refcal": []}
    lm_out, rc_out = work / f"{alias}_lmeval.json", work / f"{alias}_refcal.json"
    if not args.skip_whole:
        for rep in range(args.repeats):
            wall, cpu = _run([*me, "--worker", "lmeval", folder, str(pairs_file), str(lm_out), str(args.batch_size)], env,
                             work / "lmeval.log")
            times["lm-eval"].append((wall, cpu, json.loads(lm_out.read_text())["scoring_s"]))
            print(f"    run {rep + 1}: lm-eval whole {wall:.1f} s wall, {cpu:.1f} s CPU, scoring only "
                  f"{times['lm-eval'][-1][2]:.1f} s", flush=True)
            parquet = work / f"{alias}_{rep}.parquet"
            cli = ["score", "-m", alias, "-d", args.dataset, "--limit", str(args.n), "--scoring", "cloze",
                   "--batch-size", str(args.batch_size), "--cache-dir", str(work / f"cache{rep}_{alias}"),
                   "--no-progress", "-o", str(parquet)]
            wall, cpu = _run([*me, "--worker", "refcal", str(rc_out), *cli], env, work / "refcal.log")
            times["refcal"].append((wall, cpu, json.loads(rc_out.read_text())["scoring_s"]))
            print(f"    run {rep + 1}: refcal  whole {wall:.1f} s wall, {cpu:.1f} s CPU, scoring only "
                  f"{times['refcal'][-1][2]:.1f} s", flush=True)
        ll = np.array(json.loads(lm_out.read_text())["ll"])
        ours = load_scores(parquet).logits
        mine = np.array([ours[i, j] for i, r in enumerate(reqs) for j in range(len(r.continuations))])
        diff = float(np.abs(mine - ll).max())

    m = args.inproc_n or args.n
    qs_in, reqs_in = qs[:m], reqs[:m]

    def ours() -> None:
        score_questions(be, qs_in, scoring="cloze", batch_size=args.batch_size, cache=False, progress=False)

    def flo() -> None:
        floor(be, reqs_in, args.batch_size)

    ours()  # warm-up (first calls allocate)
    flo()
    inproc: dict[str, list[tuple[float, float]]] = {"refcal": [], "floor": []}
    for _ in range(args.repeats):
        for name, fn in (("refcal", ours), ("floor", flo)):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            inproc[name].append((time.perf_counter() - t0, time.process_time() - c0))

    def best(v, k):
        return min(x[k] for x in v)

    if not args.skip_whole:
        for name, v in times.items():
            print(f"  {name:8s} whole process {best(v, 0):7.1f} s wall ({best(v, 1):7.1f} s CPU), scoring only "
                  f"{best(v, 2):7.1f} s   (runs: {', '.join(f'{x[0]:.1f}/{x[2]:.1f}' for x in v)})")
        lm, rc = times["lm-eval"], times["refcal"]
        print(f"  lm-eval / refcal: whole process {best(lm, 0) / best(rc, 0):.2f}x wall, "
              f"{best(lm, 1) / best(rc, 1):.2f}x CPU; scoring only {best(lm, 2) / best(rc, 2):.2f}x   (goal >= 2)")
        print(f"  max |refcal - lm-eval| option log-likelihood = {diff:.1e} nats")
    print(f"  in-process, first {m} questions:")
    for name, v in inproc.items():
        print(f"  {name:8s} in-process {best(v, 0):7.1f} s wall ({best(v, 1):7.1f} s CPU)   "
              f"(runs: {', '.join(f'{x[0]:.1f}' for x in v)})")
    print(f"  refcal / floor = {best(inproc['refcal'], 0) / best(inproc['floor'], 0):.2f}x wall, "
          f"{best(inproc['refcal'], 1) / best(inproc['floor'], 1):.2f}x CPU   (goal <= 1.5); "
          f"load average at end {os.getloadavg()[0]:.1f}")
    sys.stdout.flush()


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        if sys.argv[2] == "lmeval":
            lmeval_worker(sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
        else:
            refcal_worker(sys.argv[3], sys.argv[4:])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", choices=MODELS, help="repeatable; default both packaged models")
    ap.add_argument("--dataset", default="arc-easy")
    ap.add_argument("-n", type=int, default=150, help="questions")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-whole", action="store_true", help="only the in-process refcal vs floor timing")
    ap.add_argument("--inproc-n", type=int, default=0, help="questions for refcal vs floor (default: -n)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="refcal-vs-lmeval-") as tmp:
        for alias in args.model or MODELS:
            bench_model(alias, args, Path(tmp))


if __name__ == "__main__":
    main()
