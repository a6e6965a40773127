"""Model backends: prompts in, option scores out. Loaded lazily so optional extras stay optional."""

from __future__ import annotations

from typing import Any

from .base import Backend, ClozeRequest, ClozeResult, LetterRequest

__all__ = ["Backend", "ClozeRequest", "ClozeResult", "LetterRequest", "load_backend"]


def load_backend(spec: str, *, api_base: str | None = None, **kwargs: Any) -> Backend:
    """Build a backend from a model spec.

    ``openai:MODEL`` -> an OpenAI-compatible endpoint (``api_base``, key from ``OPENAI_API_KEY``);
    anything else -> a local transformers model (built-in alias, Hugging Face id, folder or .gguf file).
    """
    if spec.startswith("openai:"):
        from .openai import OpenAIBackend

        return OpenAIBackend(model=spec[len("openai:"):], api_base=api_base, **kwargs)
    from .transformers import TransformersBackend

    return TransformersBackend.from_spec(spec, **kwargs)
