"""Small file helpers: every output is written atomically (temporary file + rename).

Permissions follow the process umask like every other tool: files get ``0666 & ~umask`` and folders
``0777 & ~umask`` (``tempfile`` alone would leave them 0600 / 0700 whatever the umask).
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import InputError, permission_denied


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows, else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new regular file: ``0666 & ~umask``."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """Mode of a new folder: ``0777 & ~umask``."""
    return 0o777 & ~current_umask()


def make_temp_dir(prefix: str, parent: str | os.PathLike | None = None) -> Path:
    """``tempfile.mkdtemp`` whose folder then gets the umask's mode (mkdtemp always makes it 0700).

    For folders that are renamed into place once complete (run folders, converted models).
    """
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(tmp, dir_mode())
    return tmp


def apply_umask(root: str | os.PathLike) -> None:
    """Give every file under ``root`` (and ``root``) the mode a plain ``open`` / ``mkdir`` would have:
    ``0666 & ~umask`` for files (execute bits kept where set), ``0777 & ~umask`` for folders. For trees
    written by libraries that create private temporary files (safetensors writes 0600 whatever the umask),
    so another user or a Ray actor under another uid can read them. Entries owned by someone else are left
    alone (``chmod`` would fail)."""
    fmode, dmode, uid = file_mode(), dir_mode(), os.geteuid()
    for here, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            p = os.path.join(here, name)
            st = os.lstat(p)
            if st.st_uid != uid or os.path.islink(p):
                continue
            want = dmode if name in dirs else (fmode | (st.st_mode & 0o111 & dmode))
            if st.st_mode & 0o7777 != want:
                os.chmod(p, want)
    if os.stat(root).st_uid == uid:
        os.chmod(root, dmode)


def ensure_parent(path: str | os.PathLike, *, what: str = "the output", create: bool = True) -> Path:
    """Create the missing folders above ``path`` (like ``mkdir -p``), with one clean error when that fails.

    A missing folder directly under the file-system root (``/newdir/out.json``) is refused rather than
    created: that is almost always a typo for a relative path. ``create=False`` only checks, before slow
    work, what creating and writing would meet: the root rule, a file in the way, a folder that cannot be
    written (an existing one included).

    Raises
    ------
    InputError
        The folder cannot be created (permissions, a file in the way, the file-system root). A refusal by
        the operating system is chained to a ``PermissionError``, so the CLI exits 1 for it
        (:func:`refcal.errors.exit_code_of`).
    """
    path = Path(path)
    parent = path.parent
    if parent.is_dir():
        if not create and not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {what} to {path}: the folder {parent} is not writable (permission "
                             "denied); choose a folder you can write to") from permission_denied(parent)
        return path
    missing = parent
    while not missing.parent.exists() and missing.parent != missing.parent.parent:
        missing = missing.parent
    if missing.parent == missing.parent.parent and missing.parent.is_absolute() and not missing.exists():
        raise InputError(f"cannot write {what} to {path}: refusing to create the folder {missing} at the file-system "
                         "root; create it first, or pass a path inside an existing folder")
    if not create:
        if missing.exists():
            raise InputError(f"cannot write {what} to {path}: {missing} exists and is not a folder; choose another path")
        if not os.access(missing.parent, os.W_OK | os.X_OK):
            raise InputError(f"cannot write {what} to {path}: cannot create the folder {missing} (permission denied); "
                             "choose a folder you can write to") from permission_denied(missing.parent)
        return path
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"cannot write {what} to {path}: {parent} exists and is not a folder; "
                         "choose another path") from None
    except NotADirectoryError:
        raise InputError(f"cannot write {what} to {path}: a part of {parent} is a file, not a folder; "
                         "choose another path") from None
    except OSError as exc:
        raise InputError(f"cannot write {what} to {path}: cannot create the folder {parent} ({exc.strerror}); "
                         "choose a folder you can write to") from None
    return path


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; when the block ends normally it replaces ``path``,
    otherwise it is removed, so readers never see a half-written file. The folder must exist.

    The file ends with mode ``0666 & ~umask``, like a file created by ``open``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` so that readers never see a half-written file (missing folders are created)."""
    path = ensure_parent(path)
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any, *, strict: bool = False) -> Path:
    """JSON (indented) written atomically.

    By default non-finite floats become null (metrics may be undefined). ``strict=True`` refuses them
    instead (``ValueError``): for files whose every number must round-trip, such as calibrators.
    """
    return atomic_write_text(path, json.dumps(obj if strict else _finite(obj), indent=2, allow_nan=False) + "\n")


def _finite(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def rename_exclusive(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` (a file or folder) to ``dst`` atomically, only if ``dst`` does not exist.

    Linux ``renameat2(RENAME_NOREPLACE)`` where libc and the file system have it; elsewhere ``dst`` is
    first claimed with ``os.mkdir`` (exclusive by definition) and ``src`` renamed onto that empty folder.
    Either way two processes renaming onto the same ``dst`` cannot both succeed.

    Raises
    ------
    FileExistsError
        ``dst`` exists (another process got there first).
    """
    import ctypes

    src, dst = os.fspath(src), os.fspath(dst)
    fn = _renameat2()
    if fn is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # else: no such flag here, fall back
            raise OSError(err, os.strerror(err), dst)
    if not os.path.isdir(src):
        # a file: link() never replaces, then drop the old name
        os.link(src, dst)
        os.unlink(src)
        return
    os.mkdir(dst)  # FileExistsError if it exists: the claim
    try:
        os.rename(src, dst)  # a folder may replace an empty folder: ours
    except BaseException:
        os.rmdir(dst)
        raise


_RENAMEAT2: list[Any] = []


def _renameat2() -> Any:
    """libc's ``renameat2`` through ctypes, or None where it is missing (non-Linux, old glibc)."""
    import ctypes

    if not _RENAMEAT2:
        fn = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        except (OSError, AttributeError):
            fn = None
        _RENAMEAT2.append(fn)
    return _RENAMEAT2[0]
