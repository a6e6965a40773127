#!/usr/bin/env python
"""One-time set-up of the optional BIG-bench data sets (truthfulqa-mc, mathqa, truthfulqa-gen).

Not part of ``make test``: the package index no longer offers the bigbench 1.0.0 sdist. With ``--sdist`` (the
archive, its extracted folder, or a folder of the task files) it keeps the three task files refcal reads in
``$REFCAL_DATA_DIR/bigbench`` (default ``~/.cache/refcal/bigbench``); without it, it tries pip's configured
package index. Same as ``refcal datasets --setup-bigbench [--sdist PATH]``; a no-op when already done.

Usage: python scripts/fetch_bigbench.py [--sdist PATH]  (set REFCAL_DATA_DIR to change the destination)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

try:
    from refcal.data import bigbench
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from refcal.data import bigbench

from refcal.errors import RefcalError


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", type=Path, help="bigbench-1.0.0.tar.gz, its extracted folder, or a folder of the task files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        where = bigbench.fetch(sdist=args.sdist)
    except RefcalError as e:
        print(f"fetch_bigbench: error: {e}", file=sys.stderr)
        return 2
    logging.info("BIG-bench task files ready in %s", where)
    return 0


if __name__ == "__main__":
    sys.exit(main())
