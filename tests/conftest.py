"""Test isolation: never reach a model hub, never depend on the user's environment.

Every test gets its own empty cache and data folders: ``REFCAL_CACHE_DIR``, ``REFCAL_DATA_DIR`` and
``XDG_CACHE_HOME`` point into a fresh temporary folder (the ``refcal_dirs`` fixture gives the paths).
Two ways open a window onto the real folders, explicitly:

* ``real_models`` (implied by ``slow`` and ``api``, whose tests load the packaged models): the real
  cache's converted models (``models/``, ``sha/``) are linked into the test's cache, so the one-time
  GGUF conversion is reused while score caches stay private to the test;
* ``real_data``: ``REFCAL_DATA_DIR`` is the real data home (where the optional BIG-bench files would be;
  no test needs them: their loaders are tested on a small synthetic archive).

Third-party caches that only cost time to rebuild (Hugging Face hub, matplotlib fonts) keep their real
location although ``XDG_CACHE_HOME`` moves.
"""

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# a real key in the developer's shell must never reach a test server or a log
os.environ.pop("OPENAI_API_KEY", None)

from refcal._paths import cache_root, data_home  # noqa: E402

#: the folders as the user's environment defines them, read before any test changes it
REAL_CACHE = cache_root()
REAL_DATA = data_home()
_XDG = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
os.environ.setdefault("HF_HOME", str(_XDG / "huggingface"))
os.environ.setdefault("MPLCONFIGDIR", str(_XDG / "matplotlib"))

_MODEL_MARKERS = ("real_models", "slow", "api")


def pytest_configure(config):
    config.addinivalue_line("markers", "real_models: link the real cache's converted models into the test's cache")
    config.addinivalue_line("markers", "real_data: use the real data home (fetched BIG-bench files)")


@pytest.fixture(autouse=True)
def refcal_dirs(request, tmp_path_factory, monkeypatch):
    """Private cache / data / XDG cache folders for one test (see the module docstring)."""
    root = tmp_path_factory.mktemp("refcal-dirs")
    # real_cache / real_data: the user's folders, for the tests of this isolation itself (a test module cannot
    # `import conftest`: tests/serve/conftest.py is imported under the same name)
    dirs = SimpleNamespace(cache=root / "cache", data=root / "data", xdg=root / "xdg",
                           real_cache=REAL_CACHE, real_data=REAL_DATA)
    for d in (dirs.cache, dirs.xdg):
        d.mkdir()
    monkeypatch.setenv("REFCAL_CACHE_DIR", str(dirs.cache))
    monkeypatch.setenv("XDG_CACHE_HOME", str(dirs.xdg))
    if request.node.get_closest_marker("real_data"):
        dirs.data = REAL_DATA
    monkeypatch.setenv("REFCAL_DATA_DIR", str(dirs.data))
    if any(request.node.get_closest_marker(m) for m in _MODEL_MARKERS):
        for sub in ("models", "sha"):
            (REAL_CACHE / sub).mkdir(parents=True, exist_ok=True)
            (dirs.cache / sub).symlink_to(REAL_CACHE / sub, target_is_directory=True)
    return dirs
