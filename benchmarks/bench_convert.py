"""Benchmark: converting the packaged GGUF models to safetensors, stock reader vs read-once, same run.

``refcal`` converts each packaged GGUF model once (the first ``refcal run`` on a machine, so every
``make run`` from a fresh clone). ``transformers`` opens the file three times (config, tokenizer, weights);
:func:`refcal.backends._gguf.read_once` parses it once over a plain array. This runs both ways for each
alias, alternating (stock first, then read-once, ``--repeats`` times), checks that the two conversions wrote
bit-identical ``model.safetensors`` and tokenizer files, and prints the wall times and their ratio.

Run: ``PYTHONPATH=src python benchmarks/bench_convert.py [--aliases gemma-3-270m smollm2-135m-instruct]
[--repeats 1] [--out benchmarks/results/convert_cpu_2cores.txt]``.
"""

from __future__ import annotations

import argparse
import contextlib
import filecmp
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from refcal.backends import models


def convert(alias: str, out: Path, *, read_once: bool) -> float:
    make, _sha, _name = models._locate_alias(alias)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        gguf = make(Path(tmp))
        patch = contextlib.nullcontext() if read_once else _stock()
        start = time.perf_counter()
        with patch:
            models._convert(gguf, out)
        return time.perf_counter() - start


@contextlib.contextmanager
def _stock():
    """Undo the read-once patch inside ``_convert`` (the stock transformers path)."""
    saved = models.read_once
    models.read_once = contextlib.nullcontext
    try:
        yield
    finally:
        models.read_once = saved


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    if names != sorted(p.name for p in b.iterdir()):
        return False
    return all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--aliases", nargs="+", default=["gemma-3-270m", "smollm2-135m-instruct"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = ap.parse_args()
    lines = [f"# bench_convert.py: GGUF -> safetensors conversion; {os.cpu_count()} cores; {platform.machine()}; "
             f"python {platform.python_version()}; load average before: {os.getloadavg()[0]:.1f}",
             f"{'alias':24s} {'repeat':>6s} {'stock s':>9s} {'read-once s':>12s} {'ratio':>7s}  identical"]
    ok = True
    with tempfile.TemporaryDirectory() as work:
        for alias in args.aliases:
            for r in range(args.repeats):
                a, b = Path(work, f"{alias}-stock-{r}"), Path(work, f"{alias}-once-{r}")
                t_stock = convert(alias, a, read_once=False)
                t_once = convert(alias, b, read_once=True)
                same = same_files(a, b)
                ok &= same
                lines.append(f"{alias:24s} {r:6d} {t_stock:9.1f} {t_once:12.1f} {t_stock / t_once:7.2f}  {same}")
                print(lines[-1], flush=True)
    lines.append(f"# load average after: {os.getloadavg()[0]:.1f} (other jobs shared the cores when it is above 2)")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
