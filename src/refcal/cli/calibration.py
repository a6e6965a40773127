"""``refcal fit``, ``refcal evaluate`` and ``refcal apply``."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError

# readable=False: an unreadable file is reported by the loaders under the one exit-code rule (exit 1), not
# by click as a usage error (exit 2)
_PATH = click.Path(dir_okay=False, readable=False, path_type=Path)
#: ``refcal fit --method``: label-free on (base, chat) except ``ts`` (labelled, the chat file's labels)
FIT_METHODS = ("daca", "naive", "ts", "daca_agree", "mutual", "platt", "isotonic", "histogram", "daca_k")
#: few-label top-label maps (refcal.calibrate.fewlabel): fitted on the chat file's labelled questions only
_TOP_LABEL = {"platt": "PlattScaling", "isotonic": "IsotonicCalibration", "histogram": "HistogramBinning"}
_LABELLED = {"temperature": "TemperatureScaling", "vector": "VectorScaling", "matrix": "MatrixScaling"}


@click.command()
@click.option("--base", "base_path", type=_PATH, default=None,
              help="Base-model (PLM) score file (.parquet/.jsonl); every method but ts needs it.")
@click.option("--chat", "chat_path", type=_PATH, required=True, help="Chat-model (PoLM) score file.")
@click.option("--method", type=click.Choice(FIT_METHODS), default="daca", show_default=True,
              help="daca: align on agreeing questions only; naive: on every question (baseline); ts: labelled "
                   "temperature (or --scaling vector / matrix) scaling on the chat file's labels (an oracle); "
                   "daca_agree: one temperature where the models agree, another where they disagree; mutual: "
                   "mutual calibration with the base model (docs/METHODS.md); platt / isotonic / histogram: "
                   "few-label maps of the chat model's top-label confidence, on the chat file's labelled "
                   "questions; daca_k: DACA's temperature as the prior of a fit on the labelled questions "
                   "(docs/few-labels.md). ts, platt, isotonic, histogram and daca_k read labels.")
@click.option("--scaling", type=click.Choice(["temperature", "vector", "matrix"]), default="temperature",
              show_default=True,
              help="temperature: one parameter, any number of options; vector / matrix: per-option maps, "
                   "only for scores with the same number of options.")
@click.option("--l2", type=float, default=0.0, show_default=True,
              help="L2 pull towards the identity (vector/matrix scaling, small data).")
@click.option("-o", "--output", type=_PATH, default=Path("calibrator.json"), show_default=True,
              help="Where to write the calibrator JSON (missing folders are created).")
@click.option("--lmeval-metric", type=click.Choice(["acc", "acc_norm", "acc_bytes"]), default=None,
              help="lm-evaluation-harness samples files: which ranking the logits reproduce (default acc).")
def fit(base_path: Path, chat_path: Path, method: str, scaling: str, l2: float, output: Path,
        lmeval_metric: str | None) -> None:
    """Fit a calibrator of the chat model from BASE and CHAT score files (joined on id); label-free except
    ``--method ts``, which fits on the labels of CHAT alone.

    DACA / naive temperature scaling of two refcal score files that list the questions in the same order
    streams them block by block (bounded memory, same result); other inputs are loaded whole.
    """
    from .._io import ensure_parent
    from ..calibrate.alignment import agreement_mask
    from ..scores import join_scores, load_scores
    from ..streaming import OrderMismatch, fit_temperature_streaming, is_streamable

    ensure_parent(output, what="the calibrator", create=False)  # before any work
    chat_only = method == "ts" or method in _TOP_LABEL
    if not chat_only and base_path is None:
        raise InputError(f"--method {method} is fitted on both models' scores: pass --base (only the labelled "
                         "--method ts, platt, isotonic and histogram need none)")
    if chat_only and base_path is not None:
        raise InputError(f"--method {method} is fitted on the chat model's labels alone and does not read --base; "
                         "drop it")
    if method in ("daca_agree", "mutual", "daca_k", *_TOP_LABEL) and scaling != "temperature":
        raise InputError(f"--scaling {scaling} applies to daca, naive and ts; {method} has one form only")
    streamed = None
    if (method in ("daca", "naive") and scaling == "temperature" and lmeval_metric is None
            and is_streamable(base_path) and is_streamable(chat_path)):
        try:
            streamed = fit_temperature_streaming(chat_path, base_path, method=method)
        except OrderMismatch:
            streamed = None  # the files list the questions in different orders: join them in memory
    kwargs = {"l2": l2} if scaling != "temperature" else {}
    base_meta: dict | None = None
    if streamed is not None:
        cal, n, n_agree = streamed.calibrator, streamed.n, streamed.n_agree
        base_meta, chat_meta = streamed.meta["base"], streamed.meta["chat"]
    elif method in _TOP_LABEL:
        from ..calibrate import fewlabel

        chat = load_scores(chat_path, lmeval_metric=lmeval_metric)
        known = chat.labels >= 0
        if not known.any():
            raise InputError(f"{chat_path}: no question has a label; --method {method} is fitted on labels")
        cal = getattr(fewlabel, _TOP_LABEL[method])().fit(chat.logits[known], chat.labels[known])
        n, n_agree, chat_meta = int(known.sum()), None, chat.meta
    elif method == "ts":
        from ..calibrate import labelled

        chat = load_scores(chat_path, lmeval_metric=lmeval_metric)
        n_missing = int((chat.labels < 0).sum())
        if n_missing:
            raise InputError(f"{chat_path}: {n_missing} of {len(chat)} questions have no label; --method ts is "
                             "labelled scaling and needs every label (--method daca is label-free)")
        cal = getattr(labelled, _LABELLED[scaling])(**kwargs).fit(chat.logits, chat.labels)
        n, n_agree, chat_meta = len(chat), None, chat.meta
    else:
        from ..calibrate import DACA, NaiveAlignment
        from ..calibrate.agreement import AgreementDACA
        from ..calibrate.mutual import MutualCalibration

        joined = join_scores(load_scores(base_path, lmeval_metric=lmeval_metric),
                             load_scores(chat_path, lmeval_metric=lmeval_metric))
        if method in ("daca", "naive"):
            cls = DACA if method == "daca" else NaiveAlignment
            cal = cls(scaling=scaling, **kwargs).fit(joined.base, joined.chat)
        elif method == "daca_k":  # every question's logits, the chat file's known labels (-1: unlabelled)
            from ..calibrate import DACAWithLabels

            cal = DACAWithLabels().fit(joined.base, joined.chat, joined.labels)
        else:
            cal = (AgreementDACA if method == "daca_agree" else MutualCalibration)().fit(joined.base, joined.chat)
        n, n_agree = len(joined.ids), int(agreement_mask(joined.base, joined.chat).sum())
        base_meta, chat_meta = joined.base_scores.meta, joined.chat_scores.meta
    inputs = {
        "base": None if base_path is None else str(base_path), "chat": str(chat_path), "n_questions": int(n),
        "base_meta": None if base_meta is None else _short_meta(base_meta), "chat_meta": _short_meta(chat_meta),
    }
    cal.save(output, inputs=inputs)
    what = method if method in ("daca_agree", "mutual", "daca_k", *_TOP_LABEL) else f"{method} / {scaling} scaling"
    agree = "labels of every question" if n_agree is None else f"{n_agree} agree, rate {n_agree / n:.3f}"
    click.echo(f"{what} on {n} questions ({agree})")
    click.echo(_fit_summary(cal))
    click.echo(f"wrote {output}")


def _fit_summary(cal) -> str:
    """One line on what was fitted."""
    method = cal.method
    if method == "daca_agree":
        borrowed = f"; {cal.fallback_}" if cal.fallback_ else ""
        return (f"temperature where the models agree = {cal.temperature_agree_:.6g}, where they disagree = "
                f"{cal.temperature_disagree_:.6g}{borrowed}  ({cal.n_iter_} iterations)")
    if method == "daca_k":
        prior = ("no label: DACA's temperature" if cal.prior_sd_ is None else
                 f"prior: DACA's temperature {cal.prior_temperature_:.6g}, width {cal.prior_sd_:.3g} on 1/τ")
        return f"temperature = {cal.temperature_:.6g} from {cal.n_labels_} labels ({prior})"
    if method in _TOP_LABEL:
        return f"top-label confidence map fitted on {cal.n_} labelled questions ({cal.n_correct_} answered right)"
    if method == "mutual":
        return (f"{cal.bin_confidence_.size} confidence bins, projection divergence {cal.divergence_:.3g} "
                f"({cal.n_iter_} SLSQP iterations, converged: {cal.converged_})")
    if cal.scaling == "temperature":
        return f"temperature = {cal.temperature_:.6g}  ({cal.n_iter_} iterations, converged: {cal.converged_})"
    return f"L-BFGS: {cal.n_iter_} iterations, converged: {cal.converged_}"


@click.command()
@click.option("--scores", "scores_path", type=_PATH, required=True, help="Score file with labels.")
@click.option("--calibrator", "cal_path", type=_PATH, default=None, help="Also evaluate after calibration.")
@click.option("--bins", type=click.IntRange(min=1), default=10, show_default=True, help="ECE/MCE/AECE bins.")
@click.option("--json", "json_path", type=_PATH, default=None, help="Write the metrics as JSON here.")
@click.option("--allow-other-k", is_flag=True,
              help="With --calibrator: accept a temperature fitted on another number of options.")
@click.option("--lmeval-metric", type=click.Choice(["acc", "acc_norm", "acc_bytes"]), default=None,
              help="lm-evaluation-harness samples files: which ranking the logits reproduce (default acc).")
@click.option("--base", "base_path", type=_PATH, default=None,
              help="Base-model score file: a daca_agree calibrator reads both models' logits (their agreement).")
def evaluate(scores_path: Path, cal_path: Path | None, bins: int, json_path: Path | None, allow_other_k: bool,
             lmeval_metric: str | None, base_path: Path | None) -> None:
    """Calibration metrics of a score file (needs labels); before and after a calibrator."""
    import numpy as np

    from .. import metrics
    from .._math import softmax
    from ..scores import load_scores
    from ..streaming import evaluate_streaming, is_streamable

    cal = None
    if cal_path is not None:
        from ..calibrate import load_calibrator

        cal = load_calibrator(cal_path)
    _check_base(cal, cal_path, base_path)
    streamable = cal is None or (cal.method != "daca_agree" and cal.scaling in ("temperature", "binned"))
    if lmeval_metric is None and streamable and is_streamable(scores_path):
        # bounded memory: metrics accumulated block by block (same values as the in-memory path)
        streamed = evaluate_streaming(scores_path, calibrator=cal, n_bins=bins)
        if cal is not None:
            _check_options(cal, streamed, scores_path, cal_path, allow_other_k)
        _print_metrics(streamed.metrics, bins, json_path, scores_path, cal_path, streamed.n)
        return
    scores = load_scores(scores_path, lmeval_metric=lmeval_metric)
    if not scores.has_labels:
        n_missing = int((scores.labels < 0).sum())
        raise InputError(
            f"{scores_path}: {n_missing} of {len(scores)} questions have no label; evaluation needs labels "
            "(use `refcal fit`/`apply` for label-free calibration)"
        )
    results = {"vanilla": metrics.evaluate(softmax(scores.logits), scores.labels, n_bins=bins)}
    if cal is not None:
        _check_options(cal, scores, scores_path, cal_path, allow_other_k)
        logp = _calibrated(cal, scores, base_path, lmeval_metric)
        results["calibrated"] = metrics.evaluate(np.exp(logp), scores.labels, n_bins=bins)
    _print_metrics(results, bins, json_path, scores_path, cal_path, len(scores))


def _print_metrics(results: dict, bins: int, json_path: Path | None, scores_path: Path, cal_path: Path | None,
                   n: int) -> None:
    from .._io import atomic_write_json, ensure_parent

    click.echo(_metrics_table(results, bins))
    if json_path is not None:
        ensure_parent(json_path, what="the metrics")
        atomic_write_json(json_path, {"scores": str(scores_path), "calibrator": cal_path, "n_bins": bins,
                                      "n": n, "metrics": results})
        click.echo(f"wrote {json_path}")


@click.command()
@click.option("--scores", "scores_path", type=_PATH, required=True, help="Chat-model score file.")
@click.option("--calibrator", "cal_path", type=_PATH, required=True, help="calibrator.json from `refcal fit`.")
@click.option("-o", "--output", type=_PATH, required=True,
              help="Calibrated score file (.parquet/.jsonl; missing folders are created).")
@click.option("--allow-other-k", is_flag=True,
              help="Apply a temperature fitted on another number of options (vector/matrix scaling: never).")
@click.option("--lmeval-metric", type=click.Choice(["acc", "acc_norm", "acc_bytes"]), default=None,
              help="lm-evaluation-harness samples files: which ranking the logits reproduce (default acc).")
@click.option("--base", "base_path", type=_PATH, default=None,
              help="Base-model score file: a daca_agree calibrator reads both models' logits (their agreement).")
def apply(scores_path: Path, cal_path: Path, output: Path, allow_other_k: bool, lmeval_metric: str | None,
          base_path: Path | None) -> None:
    """Write calibrated log-probabilities (as logits) for every question of a score file."""
    from .._io import ensure_parent
    from ..calibrate import load_calibrator
    from ..scores import check_output_path, load_scores

    check_output_path(output)  # fail before any work, not after it
    ensure_parent(output, what="the calibrated scores", create=False)
    cal = load_calibrator(cal_path)
    _check_base(cal, cal_path, base_path)
    scores = load_scores(scores_path, lmeval_metric=lmeval_metric)
    _check_options(cal, scores, scores_path, cal_path, allow_other_k)
    logp = _calibrated(cal, scores, base_path, lmeval_metric)
    out = scores.with_logits(logp, calibrated=True, calibrator=str(cal_path))
    out.save(output)
    click.echo(f"wrote {output} ({len(out)} questions, calibrated log-probabilities)")


def _check_base(cal, cal_path: Path | None, base_path: Path | None) -> None:
    """A daca_agree calibrator needs the base model's scores at apply time; nothing else reads them."""
    pair = cal is not None and cal.method == "daca_agree"
    if pair and base_path is None:
        raise InputError(f"{cal_path} is agreement-aware DACA: it picks each question's temperature by whether the "
                         "two models agree, so it needs the base model's scores; pass --base BASE_SCORES")
    if base_path is not None and not pair:
        raise InputError("--base is read only by a daca_agree calibrator; drop it")


def _calibrated(cal, scores, base_path: Path | None, lmeval_metric: str | None):
    """Calibrated log-probabilities (n, k) of ``scores`` (the chat model's), in its question order."""
    if cal.method != "daca_agree":
        return cal.predict_log_proba(scores.logits)
    from ..scores import join_scores, load_scores

    joined = join_scores(load_scores(base_path, lmeval_metric=lmeval_metric), scores)  # in the chat file's order
    return cal.predict_log_proba(joined.base, joined.chat)


def _check_options(cal, scores, scores_path: Path, cal_path: Path, allow_other_k: bool) -> None:
    """Applying a calibrator to scores of another task is refused; to scores with another number of options
    it must be an explicit choice."""
    from ..calibrate.io import check_task

    meta = getattr(scores, "meta", None)
    if meta is None:  # a streamed evaluation: the file's own metadata
        from ..scores import file_meta as _file_meta

        meta = _file_meta(scores_path)
    check_task(cal, meta, cal_source=str(cal_path), scores_source=str(scores_path))
    k = int(scores.n_options.max())
    if k == cal.n_options_:
        return
    if cal.scaling in ("vector", "matrix"):
        raise InputError(
            f"{cal_path} is {cal.scaling} scaling fitted on {cal.n_options_} options but {scores_path} has {k}; "
            f"{cal.scaling} scaling has one parameter per option: fit a calibrator on scores with {k} options"
        )
    if not allow_other_k:
        raise InputError(
            f"{cal_path} was fitted on {cal.n_options_} options but {scores_path} has {k}; "
            f"{'a temperature' if cal.scaling == 'temperature' else 'a confidence map'} "
            "transfers across option counts only approximately: pass --allow-other-k to apply it anyway, or fit "
            f"a calibrator on scores with {k} options"
        )


def _short_meta(meta: dict) -> dict:
    keys = ("model", "fingerprint", "dataset", "split", "template", "scoring", "chat_template", "source")
    return {k: meta[k] for k in keys if k in meta}


def _metrics_table(results: dict[str, dict[str, float]], bins: int) -> str:
    from ..metrics import columns

    cols = [(c.key, c.header, c.scale) for c in columns("cli")]
    head = f"{'':<12}" + "".join(f"{name:>10}" for _, name, _ in cols)
    lines = [head]
    for method, m in results.items():
        cells = []
        for key, _, scale in cols:
            v = m.get(key)
            cells.append(f"{'n/a':>10}" if v is None or v != v else f"{v * scale:>10.3f}")
        lines.append(f"{method:<12}" + "".join(cells))
    lines.append(f"({bins} equal-width bins; the ECE family and accuracy in percent)")
    return "\n".join(lines)
