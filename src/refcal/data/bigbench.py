"""BIG-bench multiple-choice tasks (TruthfulQA-MC, elementary_math_qa) and their one-time setup.

BIG-bench is on PyPI only as a 358 MB source archive (``bigbench==1.0.0``) that cannot be installed
offline in a useful way; refcal needs two JSON files from it. :func:`fetch` downloads the archive once,
checks its SHA-256, extracts just those files into ``<data_home>/bigbench/`` (see
:func:`refcal._paths.data_home`; ``$REFCAL_DATA_DIR`` overrides it) and deletes the archive. It does nothing
when the files are already there. Run it as ``refcal datasets --setup-bigbench`` or
``python scripts/fetch_bigbench.py`` (both accept ``--sdist PATH`` for a copy downloaded elsewhere).

Why not ``pip download``: pip >= 26 rejects this sdist ("Distributions from PyPI cannot declare direct
URL dependencies", its metadata points at a local bleurt zip), so the archive is fetched from the same
PyPI file-storage URL pip would use, and verified against PyPI's published hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
from functools import lru_cache
from pathlib import Path

from .._paths import data_home
from ..errors import DatasetError
from ._io import shuffled
from .base import Question

log = logging.getLogger(__name__)

SDIST_URL = (
    "https://files.pythonhosted.org/packages/95/f8/c019b3579df548a04cac12342cfcb878e50ddf6cfcd7fddba8cfc721c157/"
    "bigbench-1.0.0.tar.gz"
)
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"
#: the task files refcal reads, relative to ``benchmark_tasks/`` (also their place in the cache);
#: ``truthful_qa/questions.json`` holds the true and false reference answers of ``truthfulqa-gen``
FILES = ("truthful_qa/task_mc.json", "elementary_math_qa/question_only/task.json", "truthful_qa/questions.json")
SETUP_COMMAND = "refcal datasets --setup-bigbench"


def bigbench_dir() -> Path:
    """Where the extracted task files live: ``<data_home>/bigbench``."""
    return data_home() / "bigbench"


def is_fetched(root: Path | None = None) -> bool:
    """True when every file in :data:`FILES` is present."""
    root = bigbench_dir() if root is None else root
    return all((root / f).is_file() for f in FILES)


def _download(url: str, dest: Path) -> None:
    log.info("downloading %s (358 MB, once)", url)
    tmp = dest.with_suffix(".part")
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            out.write(chunk)
    if digest.hexdigest() != SDIST_SHA256:
        tmp.unlink(missing_ok=True)
        raise DatasetError(f"the downloaded BIG-bench archive has SHA-256 {digest.hexdigest()}, not {SDIST_SHA256}; "
                           "retry, or pass a verified copy with --sdist")
    tmp.replace(dest)


def _extract(sdist: Path, root: Path) -> None:
    wanted = {_PREFIX + f: f for f in FILES}
    found: set[str] = set()
    log.info("extracting %d task files from %s", len(wanted), sdist)
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for member in tar:
                rel = wanted.get(member.name)
                if rel is None or not member.isfile():
                    continue
                target = root / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                # write-then-rename, so an interrupted run never leaves a truncated task file behind
                with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp, src:
                    shutil.copyfileobj(src, tmp)
                os.replace(tmp.name, target)
                found.add(rel)
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError) as e:
        # never tell the user to delete a file they passed with --sdist: it may be theirs to keep
        raise DatasetError(f"cannot read the BIG-bench archive {sdist} ({e}); it is not a valid "
                           f"bigbench-1.0.0.tar.gz: download it again, or run `{SETUP_COMMAND}` online") from e
    missing = sorted(set(FILES) - found)
    if missing:
        raise DatasetError(f"{sdist} lacks {', '.join(missing)}; it is not the bigbench 1.0.0 sdist")


def fetch(root: Path | None = None, *, sdist: Path | None = None, url: str = SDIST_URL) -> Path:
    """Make the BIG-bench task files available; a no-op when they already are.

    Parameters
    ----------
    root : Path, optional
        Destination (default :func:`bigbench_dir`).
    sdist : Path, optional
        An already downloaded ``bigbench-1.0.0.tar.gz`` (for offline machines); it is not deleted.
    url : str
        Where to download the archive from when ``sdist`` is not given.

    Returns
    -------
    Path
        The folder holding ``truthful_qa/task_mc.json`` and ``elementary_math_qa/question_only/task.json``.
    """
    root = bigbench_dir() if root is None else Path(root)
    if is_fetched(root):
        log.info("BIG-bench task files already in %s", root)
        return root
    if sdist is not None and not Path(sdist).is_file():
        raise DatasetError(f"no such file: {sdist}; pass the path of bigbench-1.0.0.tar.gz")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if sdist is not None:
            _extract(Path(sdist), root)
            return root
        _fetch_online(url, root)
    except BaseException:
        if created and not any(root.iterdir()):
            root.rmdir()  # leave no empty folder behind a failed set-up
        raise
    return root


def _fetch_online(url: str, root: Path) -> None:
    archive = root / "bigbench-1.0.0.tar.gz"
    try:
        _download(url, archive)
    except OSError as e:
        raise DatasetError(f"cannot download {url} ({e}); download it elsewhere and run "
                           f"`{SETUP_COMMAND} --sdist PATH`") from e
    try:
        _extract(archive, root)
    finally:
        archive.unlink(missing_ok=True)


def _examples(rel: str) -> list[dict]:
    path = bigbench_dir() / rel
    if not path.is_file():
        raise DatasetError(f"BIG-bench file {path} is missing; run `{SETUP_COMMAND}` once "
                           "(downloads the 358 MB bigbench sdist and keeps 3 MB)")
    with open(path, encoding="utf-8") as f:
        return json.load(f)["examples"]


def _correct(scores: dict[str, float], qid: str) -> int:
    best = [i for i, v in enumerate(scores.values()) if v == 1]
    if len(best) != 1:
        raise DatasetError(f"BIG-bench question {qid} has {len(best)} correct options; expected exactly one")
    return best[0]


@lru_cache(maxsize=1)
def load_truthfulqa_mc(split: str) -> tuple[Question, ...]:
    """TruthfulQA multiple choice (BIG-bench ``truthful_qa/task_mc.json``): 299 questions, 2-5 options.

    The source always lists the true answer first; the options are shuffled with a permutation seeded
    by the question id (:func:`._io.stable_permutation`) so that the position carries no information.
    """
    out = []
    for i, ex in enumerate(_examples(FILES[0])):
        qid = str(i)
        choices, label = shuffled(f"truthfulqa-mc/{qid}", list(ex["target_scores"]), _correct(ex["target_scores"], qid))
        out.append(Question(qid, ex["input"].strip(), choices, label, meta={"source": "bigbench:truthful_qa"}))
    return tuple(out)


@lru_cache(maxsize=1)
def load_mathqa(split: str) -> tuple[Question, ...]:
    """MathQA-style word problems (BIG-bench ``elementary_math_qa/question_only``): 7688 questions.

    97.6 % have 5 options; BIG-bench collapsed duplicate option values and kept a few longer lists, so
    3 to 10 occur. Options stay in source order (the correct position is already spread over A-E).
    """
    out = []
    for i, ex in enumerate(_examples(FILES[1])):
        qid = str(i)
        out.append(Question(qid, ex["input"].strip(), tuple(ex["target_scores"]), _correct(ex["target_scores"], qid),
                            meta={"source": "bigbench:elementary_math_qa/question_only"}))
    return tuple(out)

