"""``refcal demo``: the method on synthetic data where the right answer is known."""

from __future__ import annotations

import click
import numpy as np


@click.command()
@click.option("-n", "--n-questions", type=click.IntRange(min=100), default=5000, show_default=True,
              help="Synthetic questions to draw.")
@click.option("-k", "--n-options", type=click.IntRange(min=2), default=4, show_default=True,
              help="Options per question.")
@click.option("--chat-temperature", type=click.FloatRange(min=0, min_open=True, max=1e3), default=3.0, show_default=True,
              help="How over-confident the synthetic chat model is.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the synthetic data.")
def demo(n_questions: int, n_options: int, chat_temperature: float, seed: int) -> None:
    """Synthetic demo: a calibrated base model, an over-confident chat model; compare calibrators.

    30 % of the questions are the (unlabelled) calibration set, 70 % the test set. Labelled
    temperature scaling uses the calibration set's labels; DACA and naive alignment use none.
    """
    from .. import metrics
    from .._math import softmax
    from ..calibrate import DACA, NaiveAlignment, TemperatureScaling, agreement_diagnostics
    from ..synthetic import make_synthetic

    data = make_synthetic(n_questions, n_options, chat_temperature=chat_temperature, seed=seed)
    rng = np.random.default_rng(seed + 1)
    perm = rng.permutation(n_questions)
    cut = int(round(0.3 * n_questions))
    cal_idx, test_idx = perm[:cut], perm[cut:]
    b, c, y = data.base, data.chat, data.labels
    daca = DACA().fit(b[cal_idx], c[cal_idx])
    naive = NaiveAlignment().fit(b[cal_idx], c[cal_idx])
    ts = TemperatureScaling().fit(c[cal_idx], y[cal_idx])
    rows = {
        "chat (vanilla)": (softmax(c[test_idx]), None),
        "base": (softmax(b[test_idx]), None),
        "naive": (naive.predict_proba(c[test_idx]), naive.temperature_),
        "DACA": (daca.predict_proba(c[test_idx]), daca.temperature_),
        "TS (labelled)": (ts.predict_proba(c[test_idx]), ts.temperature_),
    }
    diag = agreement_diagnostics(b[cal_idx], c[cal_idx], y[cal_idx])
    click.echo(f"synthetic: n={n_questions}, k={n_options}, chat over-confident by T={chat_temperature:g}; "
               f"calibration {cut} / test {n_questions - cut}; agreement rate {diag['agreement_rate']:.3f}")
    click.echo(f"{'method':<16}{'temperature':>12}{'ECE %':>9}{'MCE %':>9}{'Brier':>8}{'NLL':>8}{'Acc':>7}")
    for name, (p, t) in rows.items():
        m = metrics.evaluate(p, y[test_idx], n_bins=10)
        ts_txt = f"{t:12.3f}" if t is not None else f"{'-':>12}"
        click.echo(f"{name:<16}{ts_txt}{100 * m['ece']:9.3f}{100 * m['mce']:9.3f}{m['brier']:8.4f}"
                   f"{m['nll']:8.4f}{m['accuracy']:7.3f}")
