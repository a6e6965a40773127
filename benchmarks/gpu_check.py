"""One-shot check of the transformers backend on a GPU in bfloat16 against CPU float32 references.

Usage (two steps)::

    # here, on the CPU machine: export questions and float32 CPU reference scores
    python benchmarks/gpu_check.py reference --out DIR
    # on a GPU machine with the GGUF files: score the same questions in bfloat16 (and float32) on CUDA
    python benchmarks/gpu_check.py check --ref DIR --smollm2 PATH.gguf --gemma PATH.gguf

The project never needs a GPU; this script only reports how close bfloat16 on CUDA comes to the
float32 CPU scores (probability differences, argmax agreement) and the throughput on the packaged models.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

N_LETTER = 48  # MMLU questions, letter scoring
N_CLOZE = 48  # SciQ questions, cloze scoring


def _questions():
    from refcal.data import load_dataset

    return {
        "letter": load_dataset("mmlu", split="test", limit=N_LETTER, seed=1),
        "cloze": load_dataset("sciq", limit=N_CLOZE, seed=1),
    }


def _score(backend, qs, kind: str) -> np.ndarray:
    from refcal.scoring import score_questions

    scoring = "letter" if kind == "letter" else "cloze"
    return score_questions(backend, qs, scoring=scoring, cache=False, progress=False, batch_size=16).logits


def _logsoftmax(x: np.ndarray) -> np.ndarray:
    from refcal._math import log_softmax

    return log_softmax(x)


def reference(out: Path) -> None:
    from refcal.backends.transformers import TransformersBackend

    out.mkdir(parents=True, exist_ok=True)
    qs = _questions()
    (out / "questions.json").write_text(json.dumps({k: [
        {"id": q.id, "question": q.question, "choices": list(q.choices), "label": q.label, "subject": q.subject}
        for q in v] for k, v in qs.items()}))
    ref = {}
    for alias in ("smollm2-135m-instruct", "gemma-3-270m"):
        b = TransformersBackend.from_spec(alias, device="cpu", dtype="float32")
        ref[alias] = {k: _score(b, v, k).tolist() for k, v in qs.items()}
        del b
    (out / "reference.json").write_text(json.dumps(ref))
    print(f"wrote {out}/questions.json and reference.json")


def check(ref_dir: Path, paths: dict[str, str], out: Path | None) -> None:
    import torch

    from refcal.backends.transformers import TransformersBackend
    from refcal.data.base import Question

    qd = json.loads((ref_dir / "questions.json").read_text())
    qs = {k: [Question(d["id"], d["question"], tuple(d["choices"]), d["label"], d["subject"]) for d in v]
          for k, v in qd.items()}
    ref = json.loads((ref_dir / "reference.json").read_text())
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    for alias, path in paths.items():
        t0 = time.perf_counter()
        TransformersBackend.from_spec(path, device="cuda", dtype="bfloat16")  # converts + caches the GGUF
        report[f"{alias}_first_load_s"] = round(time.perf_counter() - t0, 2)
        for dtype in ("bfloat16", "float32"):
            t0 = time.perf_counter()
            b = TransformersBackend.from_spec(path, device="cuda", dtype=dtype)
            load_s = time.perf_counter() - t0
            for kind, questions in qs.items():
                _score(b, questions[:4], kind)  # warm-up (kernels, allocator)
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                x = _score(b, questions, kind)
                torch.cuda.synchronize()
                dt = time.perf_counter() - t0
                r = np.asarray(ref[alias][kind], dtype=float)
                p, pr = np.exp(_logsoftmax(x)), np.exp(_logsoftmax(r))
                report[f"{alias}/{dtype}/{kind}"] = {
                    "questions_per_s": round(len(questions) / dt, 1),
                    "max_abs_prob_diff_vs_cpu_fp32": float(np.abs(p - pr).max()),
                    "mean_tv_distance_vs_cpu_fp32": float(0.5 * np.abs(p - pr).sum(axis=1).mean()),
                    "argmax_agreement_vs_cpu_fp32": float((p.argmax(1) == pr.argmax(1)).mean()),
                    "load_s": round(load_s, 2),
                }
            del b
            torch.cuda.empty_cache()
    text = json.dumps(report, indent=2)
    print(text)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_check.json").write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("reference")
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("check")
    c.add_argument("--ref", type=Path, required=True)
    c.add_argument("--smollm2", required=True)
    c.add_argument("--gemma", required=True)
    c.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.cmd == "reference":
        reference(a.out)
    else:
        check(a.ref, {"smollm2-135m-instruct": a.smollm2, "gemma-3-270m": a.gemma}, a.out)


if __name__ == "__main__":
    main()
