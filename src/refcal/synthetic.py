"""Synthetic base/chat logits with known calibration, for the demo, tests and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._math import log_softmax, softmax
from .errors import InputError


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
    base = _noisy_posterior(z, base_noise, scale, n_mc, rng)
    return SyntheticData(base=base, chat=chat_temperature * z, labels=y, chat_temperature=chat_temperature)


def _noisy_posterior(z: np.ndarray, noise: float, scale: float, n_mc: int, rng: np.random.Generator) -> np.ndarray:
    """Log of the exact Bayes posterior ``P(y | z + eps)``, ``eps ~ N(0, noise^2 I)``, for ``z ~ N(0, scale^2 I)``
    (Monte Carlo over the Gaussian posterior of ``z``): a calibrated model that sees ``z`` through noise."""
    n, k = z.shape
    obs = z + rng.normal(0.0, noise, size=(n, k))
    shrink = scale**2 / (scale**2 + noise**2)
    post_sd = np.sqrt(shrink) * noise
    draws = obs[:, None, :] * shrink + rng.normal(0.0, post_sd, size=(n, n_mc, k))
    return log_softmax(np.log(softmax(draws).mean(axis=1)))


#: ``refcal demo --world``: name -> one line on what it tests
WORLDS = {
    "calibrated-base": "DACA's premise: a calibrated base model; the chat model sees the answer logits exactly "
                       "(its extra accuracy shows on the disagreeing questions) and is over-confident by T",
    "overconfident-base": "as calibrated-base, but the base model reports its posterior sharpened 2x "
                          "(logits doubled): an over-confident reference",
    "agree-gain": "the chat model knows the answer logits exactly on half the questions and is as noisy as the "
                  "base model on the rest, so its extra accuracy sits mostly where the two agree; over-confident by T",
}


def make_world(world: str, n: int = 5000, k: int = 4, *, chat_temperature: float = 3.0,
               seed: int | np.random.Generator = 0) -> SyntheticData:
    """One of the synthetic worlds of :data:`WORLDS` (``calibrated-base`` is :func:`make_synthetic`).

    In every world the labels follow ``y ~ softmax(z)`` and the chat model reports ``chat_temperature``
    times the log of its calibrated posterior, so the labelled temperature ``chat_temperature`` is right.
    """
    if world == "calibrated-base":
        return make_synthetic(n, k, chat_temperature=chat_temperature, seed=seed)
    if world not in WORLDS:
        raise InputError(f"unknown synthetic world {world!r}; choose from {', '.join(WORLDS)}")
    rng = np.random.default_rng(seed)
    scale, noise, n_mc = 2.0, 0.5, 256
    z = rng.normal(0.0, scale, size=(n, k))
    y = np.array([rng.choice(k, p=p) for p in softmax(z)])
    if world == "overconfident-base":
        base = log_softmax(2.0 * _noisy_posterior(z, noise, scale, n_mc, rng))
        chat = z
    else:  # agree-gain
        noise = 1.5
        base = _noisy_posterior(z, noise, scale, n_mc, rng)
        knows = rng.random(n) < 0.5
        # where the chat model does not know, it sees its own noisy copy: calibrated, as accurate as the base
        chat = np.where(knows[:, None], z, _noisy_posterior(z, noise, scale, n_mc, rng))
    return SyntheticData(base=base, chat=chat_temperature * chat, labels=y, chat_temperature=chat_temperature)
