"""BIG-bench tasks (TruthfulQA-MC, elementary_math_qa, TruthfulQA generation): **optional data**.

refcal needs three JSON files from the BIG-bench 1.0.0 source archive (``bigbench-1.0.0.tar.gz``, 358 MB).
The package index these machines reach no longer offers that file (it lists only ``bigbench 0.0.1``, checked
on 7 December 2026), and no other registry package was found that carries TruthfulQA or MathQA as data, so
the three data sets need a set-up step that nothing in ``make test`` depends on:
``refcal datasets --setup-bigbench --sdist PATH`` with ``PATH`` a copy of the archive, its extracted folder,
or a folder holding the task files (``truthful_qa/task_mc.json``, ...). :func:`fetch` checks an archive's
SHA-256, extracts just those files into ``<data_home>/bigbench/`` (see :func:`refcal._paths.data_home`;
``$REFCAL_DATA_DIR`` overrides it) and does nothing when the files are already there. Without ``--sdist`` it
tries pip's configured package index, on request only, and says in one line when the index does not offer
the file. ``python scripts/fetch_bigbench.py`` does the same.

The archive is found through **pip's configured package index** (``index-url`` / ``extra-index-url``
/ ``find-links`` from pip's configuration and ``PIP_*`` variables, else pip's own default index), so a
mirror or a private index works, and checked against the pinned SHA-256. ``pip download`` itself cannot
be used: pip >= 26 refuses this sdist even with ``--no-deps`` after downloading all of it ("Distributions
from PyPI cannot declare direct URL dependencies": its metadata points at a bleurt zip inside the
archive) and keeps nothing. So refcal asks pip for its configuration (``pip config list``), reads the
index's simple page for ``bigbench`` (PEP 503 HTML) and downloads the file that page links to.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import ssl
import subprocess
import sys
import tarfile
import urllib.parse
import urllib.request
from functools import lru_cache
from html.parser import HTMLParser
from pathlib import Path

from .._io import atomic_output
from .._paths import data_home
from ..errors import DatasetError
from ._io import shuffled
from .base import Question

log = logging.getLogger(__name__)

SDIST_NAME = "bigbench-1.0.0.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"
#: the task files refcal reads, relative to ``benchmark_tasks/`` (also their place in the cache);
#: ``truthful_qa/questions.json`` holds the true and false reference answers of ``truthfulqa-gen``
FILES = ("truthful_qa/task_mc.json", "elementary_math_qa/question_only/task.json", "truthful_qa/questions.json")
SETUP_COMMAND = "refcal datasets --setup-bigbench --sdist PATH"
#: the index route, tried only when asked for (``refcal datasets --setup-bigbench`` without ``--sdist``)
INDEX_COMMAND = "refcal datasets --setup-bigbench"


def bigbench_dir() -> Path:
    """Where the extracted task files live: ``<data_home>/bigbench``."""
    return data_home() / "bigbench"


def is_fetched(root: Path | None = None) -> bool:
    """True when every file in :data:`FILES` is present."""
    root = bigbench_dir() if root is None else root
    return all((root / f).is_file() for f in FILES)


# ---------------------------------------------------------------------------------------------- finding
def pip_config() -> dict[str, str]:
    """pip's effective configuration as ``pip config list`` reports it (later sources override earlier).

    Keys lose their section (``global.index-url`` -> ``index-url``); environment variables (``PIP_*``)
    come last, as pip applies them last.
    """
    try:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                             timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise DatasetError(f"cannot ask pip for its package index ({e}); install pip in this environment, or "
                           f"download {SDIST_NAME} yourself and run `{SETUP_COMMAND}`") from None
    conf: dict[str, str] = {}
    for line in out.splitlines():
        m = re.fullmatch(r"[^.]*\.([\w-]+)='(.*)'", line.strip())
        if m:
            conf[m.group(1)] = m.group(2)
    return conf


def pip_default_index() -> str:
    """The index pip uses when none is configured (read from pip, not written here)."""
    try:
        from pip._internal.models.index import PyPI  # pip names its own default index
    except ImportError:
        raise DatasetError("pip is not importable, so its default package index is unknown; set PIP_INDEX_URL, or "
                           f"pass an already downloaded {SDIST_NAME} with `{SETUP_COMMAND}`") from None
    return PyPI.simple_url


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def _read_url(url: str, context: ssl.SSLContext | None, timeout: float = 60) -> bytes:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme == "file":
        path = Path(urllib.request.url2pathname(parsed.path))
        return (path / "index.html" if path.is_dir() else path).read_bytes()
    with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
        return resp.read()


def find_sdist(conf: dict[str, str] | None = None) -> str:
    """URL of ``bigbench-1.0.0.tar.gz`` on pip's configured indexes (or a ``find-links`` folder).

    Raises
    ------
    DatasetError
        No configured index lists the file.
    """
    conf = pip_config() if conf is None else conf
    for folder in conf.get("find-links", "").split():
        candidate = Path(urllib.request.url2pathname(urllib.parse.urlsplit(folder).path) if "://" in folder else folder)
        if (candidate / SDIST_NAME).is_file():
            return (candidate / SDIST_NAME).resolve().as_uri()
    indexes = [] if conf.get("no-index", "").lower() in ("1", "true", "yes") else \
        [conf.get("index-url") or pip_default_index(), *conf.get("extra-index-url", "").split()]
    context = _ssl_context(conf)
    tried = []
    for index in indexes:
        page = index.rstrip("/") + "/bigbench/"
        try:
            html = _read_url(page, context).decode("utf-8", errors="replace")
        except (OSError, ValueError) as e:
            tried.append(f"{page} ({getattr(e, 'reason', None) or e})")
            continue
        parser = _Links()
        parser.feed(html)
        for href in parser.hrefs:
            url = urllib.parse.urljoin(page, href)
            if urllib.parse.unquote(urllib.parse.urlsplit(url).path).rsplit("/", 1)[-1] == SDIST_NAME:
                return url
        tried.append(f"{page} (no {SDIST_NAME})")
    raise DatasetError(f"the package index no longer offers {SDIST_NAME} (tried: {'; '.join(tried) or 'none'}); "
                       f"get a copy of the archive (or its task files) elsewhere and run `{SETUP_COMMAND}`, or "
                       "point pip at an index that has it (PIP_INDEX_URL)")


def _ssl_context(conf: dict[str, str]) -> ssl.SSLContext | None:
    cert = conf.get("cert")
    return ssl.create_default_context(cafile=cert) if cert and Path(cert).is_file() else None


def _download(url: str, dest: Path, context: ssl.SSLContext | None = None) -> None:
    log.info("downloading %s (358 MB, once)", url.split("#", 1)[0])
    digest = hashlib.sha256()
    with atomic_output(dest) as tmp:
        with open(tmp, "wb") as out:
            if url.startswith("file:"):
                src = open(urllib.request.url2pathname(urllib.parse.urlsplit(url).path), "rb")  # noqa: SIM115
            else:
                src = urllib.request.urlopen(url.split("#", 1)[0], timeout=60, context=context)  # noqa: SIM115
            with src:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        if digest.hexdigest() != SDIST_SHA256:
            raise DatasetError(f"the downloaded BIG-bench archive has SHA-256 {digest.hexdigest()}, not {SDIST_SHA256}; "
                               "retry, or pass a verified copy with --sdist")


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
                with atomic_output(target) as tmp, open(tmp, "wb") as out, src:
                    shutil.copyfileobj(src, out)
                found.add(rel)
                if len(found) == len(wanted):
                    break
    except (tarfile.TarError, OSError, EOFError) as e:
        # never tell the user to delete a file they passed with --sdist: it may be theirs to keep
        raise DatasetError(f"cannot read the BIG-bench archive {sdist} ({e}); it is not a valid "
                           f"bigbench-1.0.0.tar.gz: get an intact copy and run `{SETUP_COMMAND}` again") from e
    missing = sorted(set(FILES) - found)
    if missing:
        raise DatasetError(f"{sdist} lacks {', '.join(missing)}; it is not the bigbench 1.0.0 sdist")


#: where the task files sit inside a folder the user passes: the task folder itself, ``benchmark_tasks``,
#: the ``bigbench`` package folder, or the extracted sdist
_FOLDER_PREFIXES = ("", "benchmark_tasks/", "bigbench/benchmark_tasks/", "bigbench-1.0.0/bigbench/benchmark_tasks/")


def _copy_folder(folder: Path, root: Path) -> None:
    """Copy the task files from a folder (an extracted sdist or the task files themselves) into ``root``."""
    for prefix in _FOLDER_PREFIXES:
        if all((folder / prefix / f).is_file() for f in FILES):
            break
    else:
        missing = [f for f in FILES if not any((folder / p / f).is_file() for p in _FOLDER_PREFIXES)]
        raise DatasetError(f"{folder} lacks {', '.join(missing)}; pass the extracted bigbench 1.0.0 sdist or a "
                           f"folder holding {', '.join(FILES)}")
    for rel in FILES:  # check every file before copying any, so a broken set leaves nothing behind
        src = folder / prefix / rel
        try:
            json.loads(src.read_text(encoding="utf-8"))["examples"]  # noqa: B018
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DatasetError(f"{src} is not a BIG-bench task file ({type(e).__name__}: {e}); pass an intact "
                               "copy of the bigbench 1.0.0 task files") from None
    for rel in FILES:
        src = folder / prefix / rel
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as tmp:
            shutil.copyfile(src, tmp)


def fetch(root: Path | None = None, *, sdist: Path | None = None, url: str | None = None) -> Path:
    """Make the BIG-bench task files available; a no-op when they already are.

    Parameters
    ----------
    root : Path, optional
        Destination (default :func:`bigbench_dir`).
    sdist : Path, optional
        An already downloaded ``bigbench-1.0.0.tar.gz``, its extracted folder, or a folder holding the task
        files (it is never deleted).
    url : str, optional
        Where to download the archive from when ``sdist`` is not given (default: found on pip's configured
        package index, see :func:`find_sdist`).

    Returns
    -------
    Path
        The folder holding ``truthful_qa/task_mc.json`` and ``elementary_math_qa/question_only/task.json``.
    """
    root = bigbench_dir() if root is None else Path(root)
    if is_fetched(root):
        log.info("BIG-bench task files already in %s", root)
        return root
    if sdist is not None and not Path(sdist).exists():
        raise DatasetError(f"no such file or folder: {sdist}; pass the path of bigbench-1.0.0.tar.gz, of its "
                           "extracted folder, or of a folder holding the task files")
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        if sdist is not None and Path(sdist).is_dir():
            _copy_folder(Path(sdist), root)
            return root
        if sdist is not None:
            _extract(Path(sdist), root)
            return root
        _fetch_online(url, root)
    except BaseException:
        if created and not any(root.iterdir()):
            root.rmdir()  # leave no empty folder behind a failed set-up
        raise
    return root


def _fetch_online(url: str | None, root: Path) -> None:
    conf = pip_config() if url is None else {}
    url = find_sdist(conf) if url is None else url
    archive = root / SDIST_NAME
    try:
        _download(url, archive, _ssl_context(conf))
    except OSError as e:
        raise DatasetError(f"cannot download {url.split('#', 1)[0]} ({getattr(e, 'reason', None) or e}); download "
                           f"{SDIST_NAME} elsewhere and run `{SETUP_COMMAND}`") from e
    try:
        _extract(archive, root)
    finally:
        archive.unlink(missing_ok=True)


def _examples(rel: str) -> list[dict]:
    path = bigbench_dir() / rel
    if not path.is_file():
        raise DatasetError(f"this data set is optional and not set up (BIG-bench file {path} is missing); get "
                           f"bigbench-1.0.0.tar.gz or its task files and run `{SETUP_COMMAND}` once")
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

