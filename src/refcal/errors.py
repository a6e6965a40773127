"""One family of typed, user-facing errors.

Every message names the problem and what to do about it; the CLI prints it as one line on stderr
and exits non-zero (``--debug`` shows the traceback).
"""

from __future__ import annotations


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
