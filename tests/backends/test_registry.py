"""The backend registry, the options objects, the Backend protocol and the shipped fake backend."""

from __future__ import annotations

import numpy as np
import pytest

from refcal.backends import FakeOptions, backend_kind, load_backend, options_class
from refcal.backends.base import Backend, NotSupportedError, call_iter
from refcal.backends.fake import FakeBackend
from refcal.backends.openai import OpenAIBackend, OpenAIOptions
from refcal.errors import InputError, ModelError
from refcal.tasks import ClozeRequest, GenerateRequest, LetterRequest


def test_registry_picks_the_backend_from_the_spec():
    assert backend_kind("openai:gpt-4o") == "openai"
    assert backend_kind("fake:x") == "fake"
    for spec in ("gemma-3-270m", "google/gemma-3-270m", "/models/folder", "model.gguf", "openai"):
        assert backend_kind(spec) == "transformers"
    assert options_class("openai:m") is OpenAIOptions and options_class("fake:x") is FakeOptions
    assert options_class("x.gguf").__name__ == "TransformersOptions"


def test_options_refuse_unknown_keys_and_other_backends_options():
    with pytest.raises(InputError, match="option 'device' does not apply to openai: models"):
        load_backend("openai:m", api_base="http://127.0.0.1:9/v1", device="cpu")
    with pytest.raises(InputError, match="option 'concurrency' does not apply to local"):
        load_backend("some-folder", {"concurrency": 2})
    with pytest.raises(InputError, match="OpenAIOptions does not apply to fake: models"):
        load_backend("fake:x", OpenAIOptions())
    with pytest.raises(InputError, match="concurrency must be a positive integer"):
        OpenAIOptions(concurrency=0)
    with pytest.raises(InputError, match="dtype 'float8'"):
        options_class("m")(dtype="float8")
    with pytest.raises(InputError, match="batch size"):
        options_class("m").build({"batch_size": True})
    with pytest.raises(InputError, match="model spec is empty"):
        load_backend("  ")


def test_options_object_and_overrides_and_api_base():
    opts = OpenAIOptions(api_base="http://127.0.0.1:9/v1", concurrency=3, mode="completions")
    b = load_backend("openai:m", opts, max_retries=1)
    assert isinstance(b, OpenAIBackend) and b.concurrency == 3 and b.mode == "completions"
    assert b.policy.max_retries == 1 and b.api_base == "http://127.0.0.1:9/v1" and b.batch_invariant
    # api_base is ignored by backends without it (a run pairs a local base model with an API chat model)
    fake = load_backend("fake:base", {"scale": 2.0}, api_base="http://127.0.0.1:9/v1")
    assert isinstance(fake, FakeBackend) and fake.scale == 2.0 and fake.fingerprint == "fake-base"


def test_shipped_backends_follow_the_protocol():
    assert isinstance(FakeBackend(), Backend)
    assert isinstance(load_backend("openai:m", api_base="http://127.0.0.1:9/v1"), Backend)
    pytest.importorskip("transformers")
    from refcal.backends.transformers import TransformersBackend

    for name in ("score_letters", "score_letters_iter", "score_cloze", "score_cloze_iter", "generate",
                 "generate_iter", "request_length"):
        assert callable(getattr(TransformersBackend, name))
    assert TransformersBackend.batch_invariant is False and TransformersBackend.stats is None


def test_fake_backend_is_deterministic_and_has_its_knobs():
    r = LetterRequest("", "Question: 2+2? #1\nA: 3\nB: 4\nC: 5\nAnswer:", ("A", "B", "C"))
    a, b = FakeBackend().score_letters([r])[0], FakeBackend().score_letters([r])[0]
    np.testing.assert_array_equal(a, b)
    flat = FakeBackend(hint_boost=0.0).score_letters([r])[0]
    np.testing.assert_allclose(a - flat, [0.0, 1.0, 0.0])  # the #1 hint boosts option 1
    biased = FakeBackend(hint_boost=0.0, bias=(5.0,), scale=0.5).score_letters([r])[0]
    np.testing.assert_allclose(biased, 0.5 * flat + [5.0, 0.0, 0.0])
    rotated = LetterRequest("", "Question: 2+2? #1\nA: 4\nB: 5\nC: 3\nAnswer:", ("A", "B", "C"))
    assert not np.allclose(np.sort(FakeBackend().score_letters([rotated])[0]), np.sort(a))  # order-sensitive
    drift = FakeBackend(batch_term=1.0)
    assert not drift.batch_invariant and FakeBackend().batch_invariant
    assert drift.score_letters([r, r])[0][0] - drift.score_letters([r])[0][0] == pytest.approx(len(r.prompt))
    c = FakeBackend().score_cloze([ClozeRequest("Q?", (" yes", " no"))])[0]
    assert c.n_chars == (4, 3) and c.n_tokens == (2, 2) and len(c.logprob) == 2
    g = FakeBackend().generate([GenerateRequest("Say", max_new_tokens=5), GenerateRequest("Say", 5, stop=(" ",))])
    assert len(g[0].split()) == 5 and g[1] == "" and g == FakeBackend().generate(
        [GenerateRequest("Say", max_new_tokens=5), GenerateRequest("Say", 5, stop=(" ",))])
    be = FakeBackend(interrupt_after=1)
    be.score_letters([r])
    with pytest.raises(KeyboardInterrupt):
        be.score_letters([r])
    assert be.calls == 1 and be.batches == [1]


def test_call_iter_prefers_iterators_and_checks_lengths():
    class ListOnly:
        def score_letters(self, reqs):
            return [np.zeros(2)] * (len(reqs) + 1)

    r = LetterRequest("", "Q", ("A", "B"))
    with pytest.raises(ModelError, match="2 results for 1 requests"):
        list(call_iter(ListOnly(), "score_letters", [r]))
    with pytest.raises(NotSupportedError, match="has no generate"):
        list(call_iter(ListOnly(), "generate", [r]))
    assert [i for i, _ in call_iter(FakeBackend(), "score_letters", [r, r])] == [0, 1]
