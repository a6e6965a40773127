"""Model backends: requests in, option scores (or text) out. Loaded lazily so optional extras stay optional.

:func:`load_backend` picks the backend from the model spec through :data:`REGISTRY`:

=================  =================================================  ==========================
spec               backend                                            options
=================  =================================================  ==========================
``openai:MODEL``   :class:`~.openai.OpenAIBackend` (HTTP API)          :class:`~.openai.OpenAIOptions`
``fake:NAME``      :class:`~.fake.FakeBackend` (tests, no model)       :class:`FakeOptions`
anything else      :class:`~.transformers.TransformersBackend`: a      :class:`~.transformers.TransformersOptions`
                   built-in alias, Hugging Face id, folder or ``.gguf``
=================  =================================================  ==========================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import InputError
from .base import Backend, BackendOptions, ClozeRequest, ClozeResult, GenerateRequest, LetterRequest

__all__ = ["REGISTRY", "Backend", "BackendOptions", "ClozeRequest", "ClozeResult", "FakeOptions", "GenerateRequest",
           "LetterRequest", "backend_kind", "load_backend", "options_class"]


@dataclass(frozen=True)
class FakeOptions(BackendOptions):
    """Settings of :class:`~.fake.FakeBackend` (see its module docstring)."""

    backend = "fake:"

    scale: float = 1.0
    bias: Sequence[float] = ()
    hint_boost: float = 1.0
    batch_term: float = 0.0
    sleep: float = 0.0


@dataclass(frozen=True)
class _Entry:
    prefix: str | None  # None: the fallback (local models)
    options: str  # "module:Class" of the options dataclass
    load: Callable[[str, Any], Backend]


def _openai(spec: str, opts: Any) -> Backend:
    from .openai import OpenAIBackend  # each backend module is imported on use: it may need an extra (httpx)

    return OpenAIBackend(spec[len("openai:"):], opts)


def _fake(spec: str, opts: Any) -> Backend:
    from .fake import FakeBackend  # imported on use, like every registry entry

    return FakeBackend(spec[len("fake:"):] or "fake", **asdict(opts))


def _transformers(spec: str, opts: Any) -> Backend:
    from .transformers import TransformersBackend  # imported on use: torch and transformers are an extra

    return TransformersBackend.from_spec(spec, opts)


#: backend name -> how specs select it, its options class and its loader (first matching prefix wins)
REGISTRY: dict[str, _Entry] = {
    "openai": _Entry("openai:", "openai:OpenAIOptions", _openai),
    "fake": _Entry("fake:", "__init__:FakeOptions", _fake),
    "transformers": _Entry(None, "transformers:TransformersOptions", _transformers),
}


def backend_kind(spec: str) -> str:
    """The :data:`REGISTRY` name of the backend serving ``spec``."""
    for name, entry in REGISTRY.items():
        if entry.prefix is not None and str(spec).startswith(entry.prefix):
            return name
    return next(name for name, entry in REGISTRY.items() if entry.prefix is None)


def options_class(spec: str) -> type[BackendOptions]:
    """The options dataclass of the backend serving ``spec``."""
    module, cls = REGISTRY[backend_kind(spec)].options.split(":")
    if module == "__init__":
        return globals()[cls]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def load_backend(spec: str, options: BackendOptions | dict[str, Any] | None = None, *, api_base: str | None = None,
                 **kwargs: Any) -> Backend:
    """Build the backend ``spec`` names (see the module docstring).

    ``options`` is the backend's options dataclass or a dict of its fields; keyword arguments override
    it. ``api_base`` is applied where the backend has such an option and ignored elsewhere (a run may
    pair a local base model with an API chat model). An option the backend does not have is an
    :class:`~refcal.errors.InputError`.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError("the model spec is empty; pass a built-in alias, a folder, a .gguf file, a hub id or openai:MODEL")
    kind = backend_kind(spec)
    cls = options_class(spec)
    if api_base is not None and "api_base" in cls.__dataclass_fields__:
        kwargs["api_base"] = api_base
    return REGISTRY[kind].load(spec, cls.build(options, **kwargs))
