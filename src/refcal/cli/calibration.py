"""``refcal fit``, ``refcal evaluate`` and ``refcal apply``."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError

_PATH = click.Path(dir_okay=False, path_type=Path)


@click.command()
@click.option("--base", "base_path", type=_PATH, required=True, help="Base-model (PLM) score file (.parquet/.jsonl).")
@click.option("--chat", "chat_path", type=_PATH, required=True, help="Chat-model (PoLM) score file.")
@click.option("--method", type=click.Choice(["daca", "naive"]), default="daca", show_default=True,
              help="daca: align on agreeing questions only; naive: on every question (baseline).")
@click.option("--scaling", type=click.Choice(["temperature", "vector", "matrix"]), default="temperature",
              show_default=True)
@click.option("--l2", type=float, default=0.0, show_default=True,
              help="L2 pull towards the identity (vector/matrix scaling, small data).")
@click.option("-o", "--output", type=_PATH, default=Path("calibrator.json"), show_default=True)
def fit(base_path: Path, chat_path: Path, method: str, scaling: str, l2: float, output: Path) -> None:
    """Fit a label-free calibrator of the chat model from BASE and CHAT score files (joined on id)."""
    from ..calibrate import DACA, NaiveAlignment, agreement_diagnostics
    from ..scores import join_scores, load_scores

    joined = join_scores(load_scores(base_path), load_scores(chat_path))
    cls = DACA if method == "daca" else NaiveAlignment
    kwargs = {"l2": l2} if scaling != "temperature" else {}
    cal = cls(scaling=scaling, **kwargs).fit(joined.base, joined.chat)
    inputs = {
        "base": str(base_path), "chat": str(chat_path), "n_questions": int(len(joined.ids)),
        "base_meta": _short_meta(joined.base_scores.meta), "chat_meta": _short_meta(joined.chat_scores.meta),
    }
    cal.save(output, inputs=inputs)
    labels = joined.labels if (joined.labels >= 0).all() else None
    diag = agreement_diagnostics(joined.base, joined.chat, labels)
    click.echo(f"{method} / {scaling} scaling on {len(joined.ids)} questions "
               f"({diag['n_agree']} agree, rate {diag['agreement_rate']:.3f})")
    if scaling == "temperature":
        click.echo(f"temperature = {cal.temperature_:.6g}  ({cal.n_iter_} iterations, converged: {cal.converged_})")
    else:
        click.echo(f"L-BFGS: {cal.n_iter_} iterations, converged: {cal.converged_}")
    click.echo(f"wrote {output}")


@click.command()
@click.option("--scores", "scores_path", type=_PATH, required=True, help="Score file with labels.")
@click.option("--calibrator", "cal_path", type=_PATH, default=None, help="Also evaluate after calibration.")
@click.option("--bins", type=click.IntRange(min=1), default=10, show_default=True, help="ECE/MCE/AECE bins.")
@click.option("--json", "json_path", type=_PATH, default=None, help="Write the metrics as JSON here.")
def evaluate(scores_path: Path, cal_path: Path | None, bins: int, json_path: Path | None) -> None:
    """Calibration metrics of a score file (needs labels); before and after a calibrator."""
    from .. import metrics
    from .._io import atomic_write_json
    from .._math import softmax
    from ..scores import load_scores

    scores = load_scores(scores_path)
    if not scores.has_labels:
        n_missing = int((scores.labels < 0).sum())
        raise InputError(
            f"{scores_path}: {n_missing} of {len(scores)} questions have no label; evaluation needs labels "
            "(use `refcal fit`/`apply` for label-free calibration)"
        )
    results = {"vanilla": metrics.evaluate(softmax(scores.logits), scores.labels, n_bins=bins)}
    if cal_path is not None:
        from ..calibrate import load_calibrator

        cal = load_calibrator(cal_path)
        results["calibrated"] = metrics.evaluate(cal.predict_proba(scores.logits), scores.labels, n_bins=bins)
    click.echo(_metrics_table(results, bins))
    if json_path is not None:
        atomic_write_json(json_path, {"scores": str(scores_path), "calibrator": cal_path, "n_bins": bins,
                                      "n": len(scores), "metrics": results})
        click.echo(f"wrote {json_path}")


@click.command()
@click.option("--scores", "scores_path", type=_PATH, required=True, help="Chat-model score file.")
@click.option("--calibrator", "cal_path", type=_PATH, required=True, help="calibrator.json from `refcal fit`.")
@click.option("-o", "--output", type=_PATH, required=True, help="Calibrated score file (.parquet/.jsonl).")
def apply(scores_path: Path, cal_path: Path, output: Path) -> None:
    """Write calibrated log-probabilities (as logits) for every question of a score file."""
    from ..calibrate import load_calibrator
    from ..scores import check_output_path, load_scores

    check_output_path(output)  # fail before any work, not after it
    cal = load_calibrator(cal_path)
    scores = load_scores(scores_path)
    logp = cal.predict_log_proba(scores.logits)
    out = scores.with_logits(logp, calibrated=True, calibrator=str(cal_path))
    out.save(output)
    click.echo(f"wrote {output} ({len(out)} questions, calibrated log-probabilities)")


def _short_meta(meta: dict) -> dict:
    keys = ("model", "fingerprint", "dataset", "split", "template", "scoring", "chat_template", "source")
    return {k: meta[k] for k in keys if k in meta}


def _metrics_table(results: dict[str, dict[str, float]], bins: int) -> str:
    cols = [("ece", "ECE %", 100), ("mce", "MCE %", 100), ("aece", "AECE %", 100), ("brier", "Brier", 1),
            ("nll", "NLL", 1), ("accuracy", "Acc", 1), ("auroc", "AUROC", 1)]
    head = f"{'':<12}" + "".join(f"{name:>10}" for _, name, _ in cols)
    lines = [head]
    for method, m in results.items():
        cells = []
        for key, _, scale in cols:
            v = m.get(key)
            cells.append(f"{'n/a':>10}" if v is None or v != v else f"{v * scale:>10.3f}")
        lines.append(f"{method:<12}" + "".join(cells))
    lines.append(f"({bins} equal-width bins; ECE/MCE/AECE in percent)")
    return "\n".join(lines)
