"""The contract between tasks and models: the :class:`Backend` protocol.

A backend turns requests (:mod:`refcal.tasks.requests`, re-exported here) into numbers or text and
nothing else; batching order, caching and resume live in :mod:`refcal.scoring`, prompts in
:mod:`refcal.tasks.prompts`, what a scoring mode asks for in :mod:`refcal.tasks`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, is_dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import BackendError, InputError, ModelError
from ..tasks.requests import ClozeRequest, ClozeResult, GenerateRequest, LetterRequest

__all__ = ["Backend", "BackendOptions", "ClozeRequest", "ClozeResult", "GenerateRequest", "LetterRequest",
           "NotSupportedError", "call_iter"]


class NotSupportedError(BackendError):
    """The backend cannot serve this kind of request (e.g. cloze scoring through a chat API)."""


@runtime_checkable
class Backend(Protocol):
    """What every model backend provides (:class:`~refcal.backends.transformers.TransformersBackend`,
    :class:`~refcal.backends.openai.OpenAIBackend`, :class:`~refcal.backends.fake.FakeBackend`).

    Results of the ``*_iter`` variants are ``(index into requests, result)`` pairs yielded as each
    request finishes (in any order), so the scorer saves finished work even if a later request fails.
    """

    #: Stable string naming the model weights and every scoring-relevant setting; keys the score cache.
    fingerprint: str
    #: True when a request's result does not depend on the other requests of its call (an HTTP API):
    #: the scorer then re-sends only missing questions on resume instead of their whole planned batch.
    batch_invariant: bool

    @property
    def meta(self) -> Mapping[str, Any]:
        """Settings worth recording with the scores (stored in ``ScoreSet.meta["backend"]``)."""
        ...

    @property
    def stats(self) -> Any:
        """Request counters of this process (a dataclass with ``as_dict()``), or None when none are kept."""
        ...

    def request_length(self, request: LetterRequest | ClozeRequest | GenerateRequest) -> int:
        """Size of a request (tokens when known) used to sort and batch similar requests together."""
        ...

    def score_letters(self, requests: Sequence[LetterRequest]) -> list[np.ndarray]:
        """One float64 array of shape (k,) per request: the letters' next-token logits
        (or log-probabilities; only differences within a row matter)."""
        ...

    def score_letters_iter(self, requests: Sequence[LetterRequest]) -> Iterator[tuple[int, np.ndarray]]:
        ...

    def score_cloze(self, requests: Sequence[ClozeRequest]) -> list[ClozeResult]:
        """One :class:`ClozeResult` per request (:class:`NotSupportedError` where impossible)."""
        ...

    def score_cloze_iter(self, requests: Sequence[ClozeRequest]) -> Iterator[tuple[int, ClozeResult]]:
        ...

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        """Greedy continuation of each request, without its stop string."""
        ...

    def generate_iter(self, requests: Sequence[GenerateRequest]) -> Iterator[tuple[int, str]]:
        ...


def collect(pairs: Iterable[tuple[int, Any]], n: int) -> list[Any]:
    """The results of an ``_iter`` call (``(index, result)`` pairs in any order) as a list in request order."""
    out: list[Any] = [None] * n
    for i, res in pairs:
        out[i] = res
    return out


def call_iter(backend: Any, call: str, requests: Sequence[Any]) -> Iterator[tuple[int, Any]]:
    """``(index, result)`` pairs of ``backend.<call>`` on ``requests``.

    Prefers ``<call>_iter_detailed`` (API letters with their floored flags), then ``<call>_iter``, then
    the list method; a list of the wrong length is a :class:`~refcal.errors.ModelError`.
    """
    for name in (f"{call}_iter_detailed", f"{call}_iter"):
        it = getattr(backend, name, None)
        if it is not None:
            yield from it(requests)
            return
    fn = getattr(backend, call, None)
    if fn is None:
        raise NotSupportedError(f"the backend {type(backend).__name__} has no {call}; use another scoring mode")
    out = fn(list(requests))
    if len(out) != len(requests):
        raise ModelError(f"the backend returned {len(out)} results for {len(requests)} requests")
    yield from enumerate(out)


@dataclass(frozen=True)
class BackendOptions:
    """Base of each backend's options dataclass: builds from a mapping and refuses unknown keys."""

    #: the backend's name in messages (``"transformers"``, ``"openai"``, ...)
    backend = "model"

    @classmethod
    def build(cls, options: Any = None, **overrides: Any) -> Any:
        """``options`` (an instance of this class, a mapping or None) updated with ``overrides``.

        Raises :class:`~refcal.errors.InputError` for an option this backend does not have, or an
        options object of another backend.
        """
        if options is None:
            values: dict[str, Any] = {}
        elif isinstance(options, cls):
            values = asdict(options)
        elif is_dataclass(options) and not isinstance(options, type):
            raise InputError(f"{type(options).__name__} does not apply to {cls.backend} models; "
                             f"pass {cls.__name__} or a dict of options")
        elif isinstance(options, Mapping):
            values = dict(options)
        else:
            raise InputError(f"backend options must be {cls.__name__} or a dict, got {type(options).__name__}")
        values.update(overrides)
        known = [f.name for f in fields(cls)]
        unknown = sorted(k for k in values if k not in known)
        if unknown:
            raise InputError(f"option {unknown[0]!r} does not apply to {cls.backend} models; "
                             f"known options: {', '.join(known)}")
        return cls(**values)
