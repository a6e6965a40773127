"""Readers for score files written by other tools (recognised by content, see :func:`refcal.load_scores`)."""

from .lmeval import LMEVAL_METRICS, is_lmeval_log, read_lmeval

__all__ = ["LMEVAL_METRICS", "is_lmeval_log", "read_lmeval"]
