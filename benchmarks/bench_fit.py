"""Benchmark: DACA temperature fit vs a replica of the paper's reference optimiser, same data, same process.

Data: synthetic MMLU-sized set (n = 14042 questions, k = 4 options). The base model is calibrated by
construction (labels are drawn from its own softmax); the chat model's logits are a noisy, sharpened
copy (over-confident). Both fits see the same logits.

Reference replica (lives only here): torch Adam on tau (tau0 = 1), 400 epochs over the agreeing questions,
batch 256 with seeded shuffling, lr 0.1, probabilities clamped to [1e-8, 1 - 1e-8], KL(base || chat/tau)
loss, float32 as in the reference code.

Prints the speed ratio (reference time / best-of-N time of ``DACA().fit``) and the full-data objective
``mean_x m(x) KL(p(x) || softmax(g(x) / tau))`` of both temperatures, evaluated in float64.

Run: ``PYTHONPATH=src python benchmarks/bench_fit.py [--epochs 400] [--repeats 20]``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from refcal._math import log_softmax
from refcal.calibrate import DACA, agreement_mask


def make_data(n: int = 14042, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated base logits f, over-confident chat logits g, labels drawn from softmax(f)."""
    rng = np.random.default_rng(seed)
    f = rng.normal(scale=1.5, size=(n, k))
    p = np.exp(log_softmax(f))
    labels = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    g = 3.0 * (f + rng.normal(scale=0.6, size=(n, k)))
    return f, g, labels


def objective(f: np.ndarray, g: np.ndarray, tau: float) -> float:
    """Full-data DACA objective in float64: mean over all x of m(x) KL(p || softmax(g / tau))."""
    m = agreement_mask(f, g)
    logp, logq = log_softmax(f), log_softmax(g / tau)
    kl = np.sum(np.exp(logp) * (logp - logq), axis=1)
    return float(np.sum(kl * m) / f.shape[0])


def reference_fit(f: np.ndarray, g: np.ndarray, *, epochs: int, seed: int = 0) -> float:
    """Replica of the paper's optimiser (Adam on tau with clamped probabilities); returns tau."""
    import torch

    m = agreement_mask(f, g)
    base = torch.softmax(torch.tensor(f[m], dtype=torch.float32), dim=1)
    chat = torch.tensor(g[m], dtype=torch.float32)
    tau = torch.nn.Parameter(torch.ones(()))
    opt = torch.optim.Adam([tau], lr=0.1)
    gen = torch.Generator().manual_seed(seed)
    n = chat.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, 256):
            idx = perm[start : start + 256]
            p = base[idx].clamp(1e-8, 1 - 1e-8)
            q = torch.softmax(chat[idx] / tau, dim=1).clamp(1e-8, 1 - 1e-8)
            loss = (p * (p.log() - q.log())).sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return float(tau.detach())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=20, help="best-of-N timing of the DACA fit")
    args = ap.parse_args(argv)
    f, g, _ = make_data()

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = DACA().fit(f, g)
        times.append(time.perf_counter() - t0)
    t_ours = min(times)

    import torch

    torch.manual_seed(0)
    t0 = time.perf_counter()
    tau_ref = reference_fit(f, g, epochs=args.epochs)
    t_ref = time.perf_counter() - t0

    obj_ours, obj_ref = objective(f, g, ours.temperature_), objective(f, g, tau_ref)
    ratio = t_ref / t_ours
    print(f"data: n={f.shape[0]} k={f.shape[1]} agreement rate {ours.agreement_rate_:.4f}")
    print(f"ours (Newton): tau={ours.temperature_:.12f}  n_iter={ours.n_iter_}  best of {args.repeats}: "
          f"{t_ours * 1e3:.3f} ms  (median {np.median(times) * 1e3:.3f} ms)")
    print(f"reference (Adam, {args.epochs} epochs): tau={tau_ref:.12f}  time {t_ref:.3f} s")
    print(f"speed ratio: {ratio:.0f}x  (target >= 1000x)")
    print(f"full-data objective: ours {obj_ours:.15g}  reference {obj_ref:.15g}  "
          f"(ours - reference = {obj_ours - obj_ref:.3g})")
    ok = ratio >= 1000 and obj_ours <= obj_ref
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
