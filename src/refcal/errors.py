"""One family of typed, user-facing errors.

Every message names the problem and what to do about it; the CLI prints it as one line on stderr
and exits non-zero (``--debug`` shows the traceback).

Exit codes (:func:`exit_code_of`, the one rule every command follows): **2** the input or usage is
wrong (a bad option, a malformed file, a path that does not exist or is a file where a folder is
needed): fix the command; **1** the operating system refused (permission denied, read-only file system,
disk full, I/O error) or an internal error: fix the environment or report it; **130** interrupted. A
typed error raised while handling an OS error takes the OS error's side, so "permission denied" is 1
whichever command or file meets it.
"""

from __future__ import annotations

import errno

#: errno values meaning "the operating system refused", not "the input is wrong": exit code 1
OS_REFUSALS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EIO,
                         errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EBUSY, errno.ETXTBSY})


class RefcalError(Exception):
    """Base class of every error refcal raises on purpose."""

    exit_code = 2


class InputError(RefcalError, ValueError):
    """Malformed or inconsistent user input (files, arrays, options)."""


class ScoreFileError(InputError):
    """A score file cannot be read or does not follow the documented format."""


class MismatchError(InputError):
    """Two score sets do not cover the same question ids or the same options."""


class FitError(RefcalError, RuntimeError):
    """A calibrator cannot be fitted (no agreement examples, solver failure, ...)."""


class NotFittedError(RefcalError, AttributeError):
    """A calibrator was used before ``fit``."""


class CalibratorFileError(InputError):
    """A saved calibrator cannot be read."""


class DatasetError(InputError):
    """A data set cannot be found or parsed, or its columns do not match."""


class ModelError(RefcalError, RuntimeError):
    """A model cannot be loaded or scored."""


class BackendError(RefcalError, RuntimeError):
    """A remote scoring backend failed (dead server, repeated HTTP errors, timeouts)."""


class MissingDependencyError(RefcalError, ImportError):
    """An optional dependency is not installed."""

    def __init__(self, package: str, extra: str):
        super().__init__(
            f"this needs the optional dependency {package!r}; install it with "
            f"`pip install 'refcal[{extra}]'`"
        )


def os_refusal(exc: BaseException | None) -> OSError | None:
    """The OS error in ``exc`` or its cause / context chain whose errno is an OS refusal, else None."""
    seen = 0
    while exc is not None and seen < 16:
        if isinstance(exc, OSError) and exc.errno in OS_REFUSALS:
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def permission_denied(path: object) -> PermissionError:
    """A ``PermissionError`` for ``path``, to chain (``raise InputError(...) from permission_denied(p)``)
    when a check such as ``os.access`` finds a refusal before the operating system raises one."""
    return PermissionError(errno.EACCES, "Permission denied", str(path))


def exit_code_of(exc: BaseException) -> int:
    """The CLI exit code of ``exc`` (see the module docstring): 1 for an OS refusal anywhere in its
    chain, else 2 for a :class:`RefcalError` (its ``exit_code``) or an OSError about the path itself
    (not found, not a folder, exists), else 1."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if os_refusal(exc) is not None:
        return 1
    if isinstance(exc, RefcalError):
        return exc.exit_code
    if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST,
                                                  errno.ENAMETOOLONG):
        return 2
    return 1

