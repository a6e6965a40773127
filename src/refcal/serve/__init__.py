"""Calibrated confidence where the answers are served, and label-free drift monitoring.

* :func:`create_app` / :func:`serve` (``refcal serve``): an OpenAI-compatible proxy that adds a ``refcal``
  field with calibrated option probabilities to the answers of the chat model's server, and appends one
  record per calibrated request to a crash-safe monitoring log (:class:`LogWriter`, :func:`read_log`).
* :func:`monitor` (``refcal monitor``): agreement rate, refitted DACA temperature, confidence shift (PSI)
  and estimated accuracy per time window of that log, with bootstrap intervals.

Starlette, uvicorn, aiohttp and prometheus-client are the ``serve`` extra, imported only here.
"""

from .config import ServeConfig
from .log import LogData, LogWriter, read_log

__all__ = ["LogData", "LogWriter", "ServeConfig", "create_app", "monitor", "read_log", "serve"]


def __getattr__(name: str):
    if name in ("create_app", "serve"):
        from . import app

        return getattr(app, name)
    if name == "monitor":
        from .drift import monitor

        return monitor
    raise AttributeError(name)
