"""Synthetic base/chat logits with known calibration, for the demo, tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._math import log_softmax, softmax


@dataclass
class SyntheticData:
    """``base`` is calibrated by construction; ``chat`` is more accurate and over-confident.

    Attributes
    ----------
    base, chat : ndarray (n, k)
        Option logits of the two models.
    labels : ndarray (n,)
        Drawn from the true answer distribution.
    chat_temperature : float
        The chat model's logits are ``chat_temperature`` times its calibrated logits.
    """

    base: np.ndarray
    chat: np.ndarray
    labels: np.ndarray
    chat_temperature: float


def make_synthetic(
    n: int = 5000, k: int = 4, *, scale: float = 2.0, base_noise: float = 0.5,
    chat_temperature: float = 3.0, n_mc: int = 256, seed: int | np.random.Generator = 0,
) -> SyntheticData:
    """Generate a calibrated base model and an over-confident chat model.

    A latent ``z ~ N(0, scale² I_k)`` decides the answer, ``y ~ softmax(z)``. The chat model sees
    ``z`` exactly (so ``z`` is its calibrated logit) but reports ``chat_temperature · z``. The base
    model sees ``z + ε``, ``ε ~ N(0, base_noise² I)``, and reports its exact Bayes posterior
    ``P(y | z + ε) = E[softmax(z) | z + ε]`` (Monte Carlo over the Gaussian posterior of ``z``), which
    is calibrated by construction and a little less accurate than the chat model. DACA's premise is
    that post-training changes confidence far more than knowledge; with a much noisier base model
    (``base_noise`` ≫ 1) the base model's flatter answers pull the fit towards under-confidence.
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, scale, size=(n, k))
    y = np.array([rng.choice(k, p=p) for p in softmax(z)])
    obs = z + rng.normal(0.0, base_noise, size=(n, k))
    shrink = scale**2 / (scale**2 + base_noise**2)
    post_sd = np.sqrt(shrink) * base_noise
    draws = obs[:, None, :] * shrink + rng.normal(0.0, post_sd, size=(n, n_mc, k))
    base_p = softmax(draws).mean(axis=1)
    base = log_softmax(np.log(base_p))
    return SyntheticData(base=base, chat=chat_temperature * z, labels=y, chat_temperature=chat_temperature)
