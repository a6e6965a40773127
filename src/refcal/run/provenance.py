"""Where a run's numbers came from: the code commit and the versions of the libraries that made them.

Recorded in every ``metrics.json`` (``provenance``), so a published table can be traced to the code and the
numeric stack behind it. Versions are read from the installed distributions' metadata (nothing is imported);
the commit is that of the git work tree holding refcal's sources, when there is one (an installed wheel has
none: ``commit`` is then null).
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

#: the distributions whose versions can change a run's numbers
LIBRARIES = ("refcal", "numpy", "scipy", "torch", "transformers", "peft", "gguf", "httpx")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no git, or it hangs on a network file system
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance() -> dict[str, Any]:
    """``{"commit", "dirty", "python", "versions": {library: version or None}}``.

    ``dirty`` is true when tracked files of the work tree differ from ``commit`` (the numbers then come from
    code that no commit holds), null without a work tree.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status),
            "python": platform.python_version(),
            "versions": {name: _version(name) for name in LIBRARIES}}
