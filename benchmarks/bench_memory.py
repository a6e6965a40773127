"""Benchmark: peak memory and time of `refcal fit` / `refcal evaluate` on millions of questions.

Data (k = 4 options, written once into a work folder): base and chat score files of ``--n-jsonl``
questions as JSON Lines and of ``--n-parquet`` questions as Parquet (row groups of 1,000,000), the same
generator as ``bench_fit.py`` (calibrated base logits, over-confident chat logits, labels drawn from the
base softmax), in blocks so that writing them needs little memory.

Cases, each in its own subprocess (peak RSS = the child's VmHWM, read by the child at exit):

* ``stream fit`` / ``stream evaluate``: the CLI commands (``refcal fit`` DACA temperature; ``refcal
  evaluate --calibrator``), which stream both formats;
* ``in-memory fit`` / ``in-memory evaluate`` (JSONL only, the baseline): ``load_scores`` + ``join_scores``
  + ``DACA().fit`` / ``metrics.evaluate`` as the CLI did before streaming.

The fitted temperatures of the streaming and in-memory fits on the JSONL file are compared (relative
difference printed). Results go to ``benchmarks/results/memory_<cores>cores.txt``.

Run: ``PYTHONPATH=src python benchmarks/bench_memory.py [--n-jsonl 1000000] [--n-parquet 10000000]
[--workdir /tmp/refcal-bench-memory] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_fit import make_data  # noqa: E402

K = 4
BLOCK = 250_000


def _blocks(n: int):
    for b, lo in enumerate(range(0, n, BLOCK)):
        m = min(BLOCK, n - lo)
        f, g, y = make_data(m, K, seed=1000 + b)
        yield lo, f, g, y


def write_jsonl(n: int, base: Path, chat: Path) -> None:
    with open(base, "w") as fb, open(chat, "w") as fc:
        for lo, f, g, y in _blocks(n):
            for i in range(len(y)):
                qid, lab = f"q{lo + i}", int(y[i])
                fb.write(json.dumps({"id": qid, "logits": f[i].tolist(), "label": lab}) + "\n")
                fc.write(json.dumps({"id": qid, "logits": g[i].tolist(), "label": lab}) + "\n")


def write_parquet(n: int, base: Path, chat: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("id", pa.string()), ("logits", pa.list_(pa.float64())), ("label", pa.int64())])
    with pq.ParquetWriter(base, schema) as wb, pq.ParquetWriter(chat, schema) as wc:
        for lo, f, g, y in _blocks(n):
            ids = pa.array([f"q{lo + i}" for i in range(len(y))], pa.string())
            offsets = pa.array(np.arange(0, K * len(y) + 1, K, dtype=np.int32))
            for writer, x in ((wb, f), (wc, g)):
                logits = pa.ListArray.from_arrays(offsets, pa.array(x.ravel()))
                writer.write_table(pa.table({"id": ids, "logits": logits, "label": pa.array(y, pa.int64())},
                                            schema=schema), row_group_size=1_000_000)


IN_MEMORY_FIT = """
import sys, json
from refcal.scores import join_scores, load_scores
from refcal.calibrate import DACA
j = join_scores(load_scores(sys.argv[1]), load_scores(sys.argv[2]))
print(json.dumps({"temperature": DACA().fit(j.base, j.chat).temperature_}))
"""

IN_MEMORY_EVALUATE = """
import sys
from refcal import metrics
from refcal._math import softmax
from refcal.calibrate import load_calibrator
from refcal.scores import load_scores
s = load_scores(sys.argv[1])
cal = load_calibrator(sys.argv[2])
metrics.evaluate(softmax(s.logits), s.labels)
metrics.evaluate(cal.predict_proba(s.logits), s.labels)
"""


#: runs ``-m module args`` or ``-c code args`` and, at exit, writes the process's VmHWM (peak resident set
#: of its own address space, in kB) to argv[1]. ``ru_maxrss`` from ``wait4`` would also count the pages of
#: the forked parent before ``exec`` (the kernel carries that high-water mark over), VmHWM does not.
LAUNCHER = """
import atexit, runpy, sys
out = sys.argv[1]
def report():
    with open("/proc/self/status") as fh:
        hwm = next(line.split()[1] for line in fh if line.startswith("VmHWM"))
    with open(out, "w") as fh:
        fh.write(hwm)
atexit.register(report)
mode, target, rest = sys.argv[2], sys.argv[3], sys.argv[4:]
if mode == "-m":
    sys.argv = [target, *rest]
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    sys.argv = ["-c", *rest]
    exec(compile(target, "<case>", "exec"), {"__name__": "__main__"})
"""


def measured(argv: list[str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MB, stdout) of one child process ``python <argv>`` (argv starts with ``-m`` or
    ``-c``); the peak RSS is the child's VmHWM (see :data:`LAUNCHER`)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    tmp = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    t0 = time.perf_counter()
    with open(tmp / "out", "w") as out_fh, open(tmp / "err", "w") as err_fh:
        status = subprocess.call([sys.executable, "-c", LAUNCHER, str(tmp / "hwm"), *argv], stdout=out_fh,
                                 stderr=err_fh, env=env)
    dt = time.perf_counter() - t0
    out, err = (tmp / "out").read_text(), (tmp / "err").read_text()
    hwm_kb = float((tmp / "hwm").read_text()) if (tmp / "hwm").exists() else float("nan")
    shutil.rmtree(tmp)
    if status != 0:
        raise SystemExit(f"case failed (exit status {status}): {' '.join(argv)}\n{out}\n{err}")
    return dt, hwm_kb / 1024.0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-jsonl", type=int, default=1_000_000)
    ap.add_argument("--n-parquet", type=int, default=10_000_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/refcal-bench-memory"))
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    ap.add_argument("--skip-in-memory", action="store_true")
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args()
    wd = args.workdir
    wd.mkdir(parents=True, exist_ok=True)
    refcal = ["-m", "refcal"]
    files = {}
    for fmt, n in (("jsonl", args.n_jsonl), ("parquet", args.n_parquet)):
        if n <= 0:
            continue
        base, chat = wd / f"base_{n}.{fmt}", wd / f"chat_{n}.{fmt}"
        if not (base.exists() and chat.exists()):
            t0 = time.perf_counter()
            (write_jsonl if fmt == "jsonl" else write_parquet)(n, base, chat)
            print(f"wrote {fmt} n={n} in {time.perf_counter() - t0:.0f} s", flush=True)
        files[fmt] = (n, base, chat)

    rows: list[tuple[str, int, str, float, float]] = []
    temps: dict[str, float] = {}
    for fmt, (n, base, chat) in files.items():
        cal = wd / f"cal_{fmt}.json"
        dt, mb, _ = measured(refcal + ["fit", "--base", str(base), "--chat", str(chat), "-o", str(cal)])
        rows.append((fmt, n, "stream fit (refcal fit)", dt, mb))
        temps[f"stream {fmt}"] = json.loads(cal.read_text())["temperature"]
        print(rows[-1], flush=True)
        dt, mb, _ = measured(refcal + ["evaluate", "--scores", str(chat), "--calibrator", str(cal)])
        rows.append((fmt, n, "stream evaluate (refcal evaluate)", dt, mb))
        print(rows[-1], flush=True)
        if fmt == "jsonl" and not args.skip_in_memory:
            dt, mb, out = measured(["-c", IN_MEMORY_FIT, str(base), str(chat)])
            rows.append((fmt, n, "in-memory fit (baseline)", dt, mb))
            temps["in-memory jsonl"] = json.loads(out)["temperature"]
            print(rows[-1], flush=True)
            dt, mb, _ = measured(["-c", IN_MEMORY_EVALUATE, str(chat), str(cal)])
            rows.append((fmt, n, "in-memory evaluate (baseline)", dt, mb))
            print(rows[-1], flush=True)

    cores = len(os.sched_getaffinity(0))
    lines = [
        f"# bench_memory.py: k = {K}, DACA temperature; {cores} cores; {platform.processor() or platform.machine()}; "
        f"python {platform.python_version()}",
        f"{'format':<8}{'n':>12}  {'case':<36}{'time s':>9}{'peak RSS MB':>13}",
    ]
    lines += [f"{f:<8}{n:>12,}  {case:<36}{dt:>9.1f}{mb:>13.0f}" for f, n, case, dt, mb in rows]
    for name, t in temps.items():
        lines.append(f"temperature ({name}): {t!r}")
    if "stream jsonl" in temps and "in-memory jsonl" in temps:
        rel = abs(temps["stream jsonl"] - temps["in-memory jsonl"]) / temps["in-memory jsonl"]
        lines.append(f"relative difference stream vs in-memory (jsonl): {rel:.2e}")
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.output or ROOT / "benchmarks" / "results" / f"memory_{cores}cores.txt"
    out.write_text(text)
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(wd)


if __name__ == "__main__":
    main()
