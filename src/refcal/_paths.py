"""The one place that decides where refcal keeps files between runs."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$REFCAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/refcal``, else ``~/.cache/refcal``.

    Converted models live under ``models/``, score caches under ``scores/``.
    """
    env = os.environ.get("REFCAL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "refcal"


def data_home() -> Path:
    """Data refcal downloads once (BIG-bench task files): ``$REFCAL_DATA_DIR``, else :func:`cache_root`."""
    env = os.environ.get("REFCAL_DATA_DIR")
    return Path(env).expanduser() if env else cache_root()
