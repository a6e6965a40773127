"""The multiple-choice tasks: letter scoring, cloze scoring, and letter scoring over several orders of the
options (CAPE: the cyclic shifts or all k! orders, optionally over DACA's five templates)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..data.base import Question
from ..errors import InputError, ModelError
from ..options import CAPE_MAX_ALL_ORDERS, CAPE_ORDERS, TEMPLATE_IDS, check_cape_options
from . import prompts
from .base import is_count_list, is_score_list, keys_are
from .requests import ClozeResult

CLOZE_MODES = ("cloze", "cloze-norm", "cloze-token")


def _letter_row(result: Any, k: int) -> Any:
    """JSON-ready letter scores: a list (minus infinity as None), or ``{"l": list, "f": n floored}``
    when the backend says which letters it floored (API top-k)."""
    floored = getattr(result, "floored", None)  # API backends: letters absent from the top-k
    arr = np.asarray(result.logprobs if floored is not None else result, dtype=np.float64).reshape(-1)
    if arr.shape != (k,):
        raise ModelError(f"the backend returned {arr.size} letter scores for {k} options")
    if np.isnan(arr).any() or np.isposinf(arr).any():
        raise ModelError("the backend returned NaN or +inf letter scores")
    row = [None if np.isneginf(v) else float(v) for v in arr]
    return row if floored is None else {"l": row, "f": int(sum(bool(f) for f in floored))}


def _letter_valid(raw: Any, k: int) -> bool:
    if isinstance(raw, dict):
        f = raw.get("f")
        return (keys_are(raw, {"l", "f"}) and is_score_list(raw["l"], k, none_ok=True)
                and isinstance(f, int) and not isinstance(f, bool) and 0 <= f <= k)
    return is_score_list(raw, k, none_ok=True)


def _letter_values(raw: Any) -> list[float | None]:
    return list(raw["l"]) if isinstance(raw, dict) else list(raw)


class LetterTask:
    """``letter``: next-token logits of the option letters, one request per question (the paper's way)."""

    kind = "letter"
    name = "letter"

    def __init__(self, *, template: int = 1, chat: bool = False):
        self.template = template
        self.chat = bool(chat)

    def requests(self, question: Question, fewshot: Sequence[Question] = ()) -> list[Any]:
        return prompts.letter_requests([question], template=self.template, chat=self.chat, fewshot=fewshot)

    def reduce(self, question: Question, results: Sequence[Any]) -> Any:
        return _letter_row(results[0], len(question.choices))

    def valid(self, question: Question, raw: Any) -> bool:
        return _letter_valid(raw, len(question.choices))

    def finish(self, raw: Any) -> list[float | None]:
        return _letter_values(raw)

    def cache_key(self) -> dict[str, Any]:
        return {"template": self.template, "kind": "letter", "chat": self.chat}

    def columns(self, raws: Sequence[Any]) -> dict[str, list[Any]]:
        if not any(isinstance(r, dict) for r in raws):
            return {}
        # letters an API's top-k left out, per question (cached answers included)
        return {"n_floored": [int(r["f"]) if isinstance(r, dict) else 0 for r in raws]}

    def meta(self) -> dict[str, Any]:
        return {"scoring": self.name, "template": self.template, "chat": self.chat}


class ClozeTask:
    """``cloze`` (summed log-probability of each option's text), ``cloze-norm`` (per character) and
    ``cloze-token`` (per token): one backend computation and one cache file, only :meth:`finish` differs."""

    kind = "cloze"

    def __init__(self, mode: str = "cloze", *, template: int | None = None, chat: bool = False):
        # cloze prompts have no instruction: ``template`` is accepted (every task takes it) and ignored
        if mode not in CLOZE_MODES:
            raise InputError(f"cloze mode {mode!r} is not known; choose one of {', '.join(CLOZE_MODES)}")
        if chat:
            raise InputError("the chat template applies to letter scoring only; use --chat-template off with cloze")
        self.name = mode

    def requests(self, question: Question, fewshot: Sequence[Question] = ()) -> list[Any]:
        return prompts.cloze_requests([question], fewshot=fewshot)

    def reduce(self, question: Question, results: Sequence[Any]) -> Any:
        res = results[0]
        if not isinstance(res, ClozeResult) or not (
                len(res.logprob) == len(res.n_tokens) == len(res.n_chars) == len(question.choices)):
            raise ModelError("the backend returned a malformed cloze result")
        return {"lp": [float(v) for v in res.logprob], "nt": [int(v) for v in res.n_tokens],
                "nc": [int(v) for v in res.n_chars]}

    def valid(self, question: Question, raw: Any) -> bool:
        k = len(question.choices)
        return (keys_are(raw, {"lp", "nt", "nc"}) and is_score_list(raw["lp"], k)
                and is_count_list(raw["nt"], k) and is_count_list(raw["nc"], k))

    def finish(self, raw: Any) -> list[float | None]:
        lp = raw["lp"]
        if self.name == "cloze":
            return list(lp)
        den = raw["nc"] if self.name == "cloze-norm" else raw["nt"]
        return [v / max(d, 1) for v, d in zip(lp, den, strict=True)]

    def cache_key(self) -> dict[str, Any]:
        return {"template": None, "kind": "cloze", "chat": False}

    def columns(self, raws: Sequence[Any]) -> dict[str, list[Any]]:
        return {}

    def meta(self) -> dict[str, Any]:
        return {"scoring": self.name, "template": None, "chat": False}


def permute(question: Question, order: Sequence[int]) -> Question:
    """``question`` with its options in ``order``: option ``j`` of the result is option ``order[j]`` of the
    original (the label follows its option)."""
    k = len(question.choices)
    if sorted(order) != list(range(k)):
        raise InputError(f"{list(order)} is not an order of {k} options")
    label = list(order).index(question.label) if 0 <= question.label < k else question.label
    return dataclasses.replace(question, choices=tuple(question.choices[i] for i in order), label=label)


def rotate(question: Question, shift: int) -> Question:
    """``question`` with its options cyclically shifted left by ``shift``: option ``j`` of the result
    is option ``(j + shift) % k`` of the original (the label follows its option)."""
    k = len(question.choices)
    return permute(question, [(j + shift) % k for j in range(k)])


def cape_orders(k: int, orders: str = "cyclic") -> list[tuple[int, ...]]:
    """The option orders CAPE shows a question with ``k`` options: ``cyclic``, the k cyclic shifts (shift
    ``s`` first: ``(s, s + 1, ...) mod k``); ``all``, the k! permutations in lexicographic order, refused
    above :data:`refcal.options.CAPE_MAX_ALL_ORDERS` options."""
    if orders == "cyclic":
        return [tuple((j + s) % k for j in range(k)) for s in range(k)]
    if orders == "all":
        if k > CAPE_MAX_ALL_ORDERS:
            raise InputError(f"--cape-orders all needs at most {CAPE_MAX_ALL_ORDERS} options "
                             f"({math.factorial(CAPE_MAX_ALL_ORDERS)} orders), but a question has {k} "
                             f"({math.factorial(k)} orders); use --cape-orders cyclic ({k} orders)")
        return list(itertools.permutations(range(k)))
    raise InputError(f"--cape-orders {orders!r} is not valid; use {' or '.join(CAPE_ORDERS)}")


class PermutedLetterTask(LetterTask):
    """``cape``: letter scoring of the options shown in several orders (CAPE, Jiang et al. 2023), mapped
    back to the original order and averaged as probabilities.

    Members: every order of :func:`cape_orders` (``orders="cyclic"``: the k cyclic shifts; ``"all"``: the
    k! permutations, k <= 4), for the task's ``template`` (``templates="one"``) or for each of DACA's five
    instructions (``templates="all"``: template-major, then order). A question makes one letter request
    per member; request ``m`` shows original option ``order_m[j]`` at position ``j``, and its scores are
    mapped back to the original option order. The raw row keeps every mapped member row
    (``{"shifts": [row_0, ...]}``; the name is the cyclic mode's, kept so existing caches stay valid), so
    other aggregations can be computed later from the cache. :meth:`finish` gives the log of the average
    of the members' softmax distributions, every sum exactly rounded (``math.fsum``): a set of members
    closed under re-ordering the options (cyclic shifts of a rotated question, or all k! orders of any
    permuted question) gives bit-identical results whatever order the options came in.
    """

    name = "cape"

    def __init__(self, *, template: int = 1, chat: bool = False, orders: str = "cyclic", templates: str = "one"):
        super().__init__(template=template, chat=chat)
        check_cape_options(orders, templates)
        self.orders = orders
        self.templates = templates
        self.member_templates: tuple[int, ...] = TEMPLATE_IDS if templates == "all" else (template,)

    def members(self, k: int) -> list[tuple[int, tuple[int, ...]]]:
        """``(template, order)`` of each member of a question with ``k`` options, in request order."""
        orders = cape_orders(k, self.orders)
        return [(t, o) for t in self.member_templates for o in orders]

    def requests(self, question: Question, fewshot: Sequence[Question] = ()) -> list[Any]:
        return [prompts.letter_requests([permute(question, o)], template=t, chat=self.chat, fewshot=fewshot)[0]
                for t, o in self.members(len(question.choices))]

    def reduce(self, question: Question, results: Sequence[Any]) -> Any:
        k = len(question.choices)
        members = self.members(k)
        if len(results) != len(members):
            raise ModelError(f"the backend returned {len(results)} results for {len(members)} permuted requests")
        shifts = []
        for (_, order), res in zip(members, results, strict=True):
            row = _letter_row(res, k)
            vals = _letter_values(row)
            # position j showed original option order[j]
            mapped: list[float | None] = [None] * k
            for j, i in enumerate(order):
                mapped[i] = vals[j]
            shifts.append({"l": mapped, "f": row["f"]} if isinstance(row, dict) else mapped)
        return {"shifts": shifts}

    def valid(self, question: Question, raw: Any) -> bool:
        k = len(question.choices)
        try:
            n = len(self.members(k))
        except InputError:
            return False
        return (keys_are(raw, {"shifts"}) and isinstance(raw["shifts"], list) and len(raw["shifts"]) == n
                and all(_letter_valid(r, k) for r in raw["shifts"]))

    def finish(self, raw: Any) -> list[float | None]:
        rows = np.array([[-np.inf if v is None else v for v in _letter_values(r)] for r in raw["shifts"]])
        # log-softmax of each member, normalised with fsum (exactly rounded): the result does not depend on
        # the order of the options within a row nor on the order of the members
        top_r = rows.max(axis=1, keepdims=True)
        logp = rows - (top_r + np.log([[math.fsum(r)] for r in np.exp(rows - top_r)]))
        out: list[float | None] = []
        for col in logp.T:
            top = col.max()
            if np.isneginf(top):
                out.append(None)
                continue
            out.append(float(top + np.log(math.fsum(np.exp(col - top)) / len(col))))
        return out

    def cache_key(self) -> dict[str, Any]:
        # the default mode's key is the one it always had (existing caches stay valid); with all five
        # templates the result does not depend on --template, so every template shares one cache file
        key: dict[str, Any] = {"template": self.template, "kind": "cape", "chat": self.chat}
        if self.orders != "cyclic":
            key["orders"] = self.orders
        if self.templates != "one":
            key.update(template=None, templates=list(self.member_templates))
        return key

    def columns(self, raws: Sequence[Any]) -> dict[str, list[Any]]:
        if not any(isinstance(s, dict) for r in raws for s in r["shifts"]):
            return {}
        return {"n_floored": [sum(int(s["f"]) if isinstance(s, dict) else 0 for s in r["shifts"]) for r in raws]}

    def meta(self) -> dict[str, Any]:
        return {**super().meta(), "template": self.template if self.templates == "one" else None,
                "cape_orders": self.orders, "cape_templates": list(self.member_templates)}
