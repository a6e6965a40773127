"""Base and chat score sets aligned on question id."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import MismatchError
from .scoreset import QUESTION_HASH, ScoreSet


@dataclass
class JoinedScores:
    """Base and chat scores aligned on question id (order of the chat file)."""

    ids: np.ndarray
    base: np.ndarray
    chat: np.ndarray
    labels: np.ndarray
    chat_scores: ScoreSet
    base_scores: ScoreSet


def join_scores(base: ScoreSet, chat: ScoreSet) -> JoinedScores:
    """Align two score sets on ``id``.

    Raises
    ------
    MismatchError
        The sets do not cover the same ids, an id has a different number of options, or the
        labels disagree.
    """
    b_src = base.meta.get("source", "base scores")
    c_src = chat.meta.get("source", "chat scores")
    b_ids = [str(i) for i in base.ids]
    c_ids = [str(i) for i in chat.ids]
    b_pos = {i: r for r, i in enumerate(b_ids)}
    only_chat = [i for i in c_ids if i not in b_pos]
    c_set = set(c_ids)
    only_base = [i for i in b_ids if i not in c_set]
    if only_chat or only_base:
        parts = []
        if only_chat:
            parts.append(f"{len(only_chat)} id(s) only in {c_src} (e.g. {only_chat[0]!r})")
        if only_base:
            parts.append(f"{len(only_base)} id(s) only in {b_src} (e.g. {only_base[0]!r})")
        raise MismatchError(
            "base and chat scores do not cover the same questions: " + "; ".join(parts)
            + "; score both models on the same data set and split"
        )
    order = np.array([b_pos[i] for i in c_ids], dtype=np.int64)
    _check_same_questions(base.columns.get(QUESTION_HASH), order, chat.columns.get(QUESTION_HASH), c_ids, b_src, c_src)
    b_nopt = base.n_options[order]
    diff = np.flatnonzero(b_nopt != chat.n_options)
    if diff.size:
        r = diff[0]
        raise MismatchError(
            f"question {c_ids[r]!r} has {b_nopt[r]} options in {b_src} but {chat.n_options[r]} in {c_src}; "
            "both models must be scored on the same options"
        )
    k = max(base.logits.shape[1], chat.logits.shape[1])
    b = _pad(base.logits[order], k)
    c = _pad(chat.logits, k)
    mb, mc = np.isneginf(b), np.isneginf(c)
    if (mb != mc).any():
        r = np.flatnonzero((mb != mc).any(axis=1))[0]
        raise MismatchError(
            f"question {c_ids[r]!r}: the two files mark different options as missing; re-score both models"
        )
    bl, cl = base.labels[order], chat.labels
    conflict = (bl >= 0) & (cl >= 0) & (bl != cl)
    if conflict.any():
        r = np.flatnonzero(conflict)[0]
        raise MismatchError(f"question {c_ids[r]!r} has label {bl[r]} in {b_src} but {cl[r]} in {c_src}")
    labels = np.where(cl >= 0, cl, bl)
    return JoinedScores(chat.ids.copy(), b, c, labels, chat, base.subset(order))


def _check_same_questions(b_hash: np.ndarray | None, order: np.ndarray, c_hash: np.ndarray | None,
                          c_ids: list[str], b_src: str, c_src: str) -> None:
    """Refuse a join where one id names different question texts in the two files (when both record them)."""
    if b_hash is None or c_hash is None:
        return
    for r, (hb, hc) in enumerate(zip(b_hash[order], c_hash, strict=True)):
        if hb is not None and hc is not None and hb != hc:
            raise MismatchError(
                f"question {c_ids[r]!r} has different question texts in {b_src} and {c_src} (their {QUESTION_HASH} "
                "values differ): the files were scored on different data, or ids were assigned differently "
                "(row numbers of differently ordered copies); score both models on the same file, keyed by an id column"
            )


def _pad(x: np.ndarray, k: int) -> np.ndarray:
    if x.shape[1] == k:
        return x
    out = np.full((x.shape[0], k), -np.inf)
    out[:, : x.shape[1]] = x
    return out
