"""``refcal demo``: the method on synthetic data where the right answer is known."""

from __future__ import annotations

import click
import numpy as np

from ..synthetic import WORLDS


@click.command()
@click.option("-n", "--n-questions", type=click.IntRange(min=100), default=5000, show_default=True,
              help="Synthetic questions to draw.")
@click.option("-k", "--n-options", type=click.IntRange(min=2), default=4, show_default=True,
              help="Options per question.")
@click.option("--chat-temperature", type=click.FloatRange(min=0, min_open=True, max=1e3), default=3.0, show_default=True,
              help="How over-confident the synthetic chat model is.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the synthetic data.")
@click.option("--world", type=click.Choice(list(WORLDS)), default="calibrated-base", show_default=True,
              help="Synthetic world: " + "; ".join(f"{k}: {v}" for k, v in WORLDS.items()) + ".")
@click.option("--methods", "methods", default=None, metavar="LIST",
              help="Comma-separated registry methods, or 'all' (those that need no extra score source); "
                   "default: `refcal run`'s default selection.")
def demo(n_questions: int, n_options: int, chat_temperature: float, seed: int, world: str,
         methods: str | None) -> None:
    """Synthetic demo: a calibrated base model, an over-confident chat model; compare calibrators.

    30 % of the questions are the (unlabelled) calibration set, 70 % the test set. Labelled
    temperature scaling uses the calibration set's labels; DACA and naive alignment use none.
    The methods are those of `refcal run`'s default selection unless --methods says otherwise.
    """
    from .. import metrics
    from ..calibrate import agreement_diagnostics
    from ..calibrate.methods import METHODS, parse_methods
    from ..synthetic import make_world

    keys = [k for k in parse_methods(methods) if METHODS[k].inputs.get("multiple-choice") is not None
            and METHODS[k].inputs["multiple-choice"].chat == "scores"]  # synthetic worlds have logits only
    data = make_world(world, n_questions, n_options, chat_temperature=chat_temperature, seed=seed)
    rng = np.random.default_rng(seed + 1)
    perm = rng.permutation(n_questions)
    cut = int(round(0.3 * n_questions))
    cal_idx, test_idx = perm[:cut], perm[cut:]
    b, c, y = data.base, data.chat, data.labels
    diag = agreement_diagnostics(b[cal_idx], c[cal_idx], y[cal_idx])
    click.echo(f"synthetic ({world}): n={n_questions}, k={n_options}, chat over-confident by T={chat_temperature:g}; "
               f"calibration {cut} / test {n_questions - cut}; agreement rate {diag['agreement_rate']:.3f}")
    click.echo(f"{'method':<40}{'temperature':>12}{'ECE %':>9}{'MCE %':>9}{'Brier':>8}{'NLL':>8}{'Acc':>7}")
    for key in keys:  # the registry's methods, fitted and applied as `refcal run` does
        method = METHODS[key]
        fitted = method.fit(c[cal_idx], b[cal_idx], y[cal_idx])
        log_p = method.predict(fitted, c[test_idx], b[test_idx], c[test_idx], "multiple-choice")
        probs = np.exp(log_p) if isinstance(log_p, np.ndarray) else log_p  # a top-label method: as it is
        m = metrics.evaluate(probs, y[test_idx], n_bins=10)
        fp = fitted.fitted_params() if fitted is not None else {}
        temps = [fp[k] for k in ("temperature", "temperature_agree", "temperature_disagree") if k in fp]
        ts_txt = (f"{temps[0]:12.3f}" if len(temps) == 1 else f"{'-':>12}" if not temps
                  else f"{'/'.join(f'{t:.2f}' for t in temps):>12}")  # daca_agree: agreeing / disagreeing
        click.echo(f"{method.label:<40}{ts_txt}{100 * m['ece']:9.3f}{100 * m['mce']:9.3f}{m['brier']:8.4f}"
                   f"{m['nll']:8.4f}{m['accuracy']:7.3f}")
