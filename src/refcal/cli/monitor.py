"""``refcal monitor LOG``: label-free drift of a served calibrator (:mod:`refcal.serve.monitor`)."""

from __future__ import annotations

from pathlib import Path

import click

_PATH = click.Path(path_type=Path)


@click.command()
@click.argument("log", type=_PATH)
@click.option("--calibrator", "cal_path", type=_PATH, required=True, help="The calibrator the proxy served.")
@click.option("--window", default="1000", show_default=True,
              help="Window: a record count (1000) or a duration (90s, 30m, 1h, 1d).")
@click.option("--baseline", type=_PATH, default=None,
              help="Chat-model scores of the calibration set (confidence histogram for PSI).")
@click.option("--baseline-base", type=_PATH, default=None,
              help="Base-model scores of the calibration set (its agreement rate; the deployed temperature's error).")
@click.option("-o", "--output", type=_PATH, default=None,
              help="Folder for monitor.html and monitor.json [default: LOG/monitor, or beside a segment file].")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True,
              help="False-alarm rate over all windows (Bonferroni).")
@click.option("--n-boot", type=click.IntRange(min=20), default=200, show_default=True, help="Bootstrap resamples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap resamples.")
def monitor(log: Path, cal_path: Path, window: str, baseline: Path | None, baseline_base: Path | None,
            output: Path | None, alpha: float, n_boot: int, seed: int) -> int:
    """Agreement, refitted temperature, confidence shift (PSI) and estimated accuracy per window of LOG.

    Exit code 3 when the deployed temperature falls outside a window's interval (for cron and CI).
    """
    from ..errors import InputError
    from ..serve.drift import monitor as run
    from ..serve.drift_report import write_monitor_report

    if baseline_base is not None and baseline is None:
        raise InputError("--baseline-base needs --baseline (the chat model's scores of the same questions)")
    result = run(log, cal_path, window=window, baseline=None if baseline is None else str(baseline),
                 baseline_base=None if baseline_base is None else str(baseline_base), n_boot=n_boot, alpha=alpha,
                 seed=seed)
    out = output if output is not None else (log / "monitor" if log.is_dir() else log.parent / "monitor")
    paths = write_monitor_report(result, out)
    s = result.summary
    t = s["deployed_temperature"]
    click.echo(f"{s['n_records']} records in {s['n_windows']} windows, {s['n_reference']} with a reference sample; "
               f"deployed temperature {'n/a' if t is None else f'{t:.4g}'}; max PSI {s['max_psi']:.3f}")
    if result.flagged:
        click.echo(f"DRIFT: the deployed temperature is outside the interval of {s['n_flagged']} window(s): "
                   f"{s['flagged_windows'][:20]}")
    else:
        click.echo("no drift flagged")
    click.echo(f"wrote {paths['html']} and {paths['json']}")
    return result.exit_code
