"""``refcal fit``, ``refcal evaluate`` and ``refcal apply``."""

from __future__ import annotations

from pathlib import Path

import click

from ..calibrate.base import CALIBRATORS, check_task, task_of_scores
from ..calibrate.methods import KINDS, METHODS, fittable_methods
from ..errors import InputError

# readable=False: an unreadable file is reported by the loaders under the one exit-code rule (exit 1), not
# by click as a usage error (exit 2)
_PATH = click.Path(dir_okay=False, readable=False, path_type=Path)
def fit_methods() -> tuple[str, ...]:
    """``refcal fit --method``: every method of the registry with a calibrator fitted on plain score files
    (read when the command runs, so a method registered at run time is offered too)."""
    return tuple(dict.fromkeys(k for kind in KINDS for k in fittable_methods(kind)))


class _MethodChoice(click.Choice):
    """A ``click.Choice`` of :func:`fit_methods`, read from the registry each time."""

    def __init__(self) -> None:
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return fit_methods()

    @choices.setter
    def choices(self, value: object) -> None:  # click.Choice.__init__ assigns it
        pass


#: what ``apply`` writes: log-probabilities below this are written as it (probability 0 either way), since
#: score files hold |x| <= 1e100 only (``refcal.scores.bad_logits``)
LOGIT_FLOOR = -1e100


def _method_help() -> str:
    parts = []
    for k in fit_methods():
        m = METHODS[k]
        what = "labelled (the chat file's labels)" if m.needs_labels else "label-free (needs --base)"
        scale = ", follows --scaling" if m.follows_scaling or not isinstance(m.calibrator, str) else ""
        parts.append(f"{k}: {m.label}, {what}{scale}")
    return "; ".join(parts) + " (docs/METHODS.md)."


@click.command()
@click.option("--base", "base_path", type=_PATH, default=None,
              help="Base-model (PLM) score file (.parquet/.jsonl); every label-free method needs it.")
@click.option("--chat", "chat_path", type=_PATH, required=True, help="Chat-model (PoLM) score file.")
@click.option("--method", type=_MethodChoice(), default="daca", show_default=True, help=_method_help())
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
    """Fit a calibrator of the chat model from BASE and CHAT score files (joined on id); label-free unless the
    method is a labelled oracle, which fits on the labels of CHAT alone. The calibrator records the kind of
    scores it was fitted on (multiple-choice option logits or free-form P(True)); ``apply`` checks it.

    A temperature fit of DACA or naive alignment on two refcal score files that list the questions in the
    same order streams them block by block (bounded memory, same result); other inputs are loaded whole.
    """
    from .._io import ensure_parent
    from ..scores import file_meta
    from ..streaming import is_streamable

    ensure_parent(output, what="the calibrator", create=False)  # before any work
    m = METHODS[method]
    reads_base = any(m.needs_base(k) for k in m.inputs)  # daca_k: labelled and both models' scores
    if not reads_base and base_path is not None:
        raise InputError(f"--method {method} is fitted on the chat model's labels alone and does not read --base; "
                         "drop it")
    if reads_base and base_path is None:
        raise InputError(f"--method {method} is fitted on both models' scores: pass --base (only the methods "
                         "fitted on the chat model's labels alone need none)")
    if scaling != "temperature" and isinstance(m.calibrator, str) and not m.follows_scaling:
        raise InputError(f"--scaling {scaling} applies to methods that follow it; {method} has one form only")
    cal = m.make(scaling)
    if "l2" in cal.get_params():
        cal.l2 = l2
    elif l2:
        raise InputError(f"--l2 applies to vector and matrix scaling; {method} with --scaling {scaling} has no such term")
    kind = task_of_scores(file_meta(chat_path)) if lmeval_metric is None and is_streamable(chat_path) else None
    cal, n, metas = _fit_calibrator(m, cal, base_path, chat_path, lmeval_metric, kind)
    inputs = {
        "base": None if base_path is None else str(base_path), "chat": str(chat_path), "n_questions": int(n),
        "base_meta": None if metas[0] is None else _short_meta(metas[0]), "chat_meta": _short_meta(metas[1]),
    }
    cal.save(output, inputs=inputs)
    fp = cal.fitted_params()
    labelled = fp.get("n_labels", fp["n"])  # daca_k fits on every question, the labels of some
    agree = ((f"labels of {labelled} of {n} questions" if labelled < n else "labels of every question")
             if m.needs_labels else "no labels" if "n_agree" not in fp
             else f"no labels; {fp['n_agree']} agree, rate {fp['n_agree'] / n:.3f}")
    click.echo(f"{method} / {cal.scaling} on {n} {cal.task_} questions ({agree})")
    click.echo(_fit_summary(cal))
    click.echo(f"wrote {output}")


def _fit_calibrator(m, cal, base_path: Path | None, chat_path: Path, lmeval_metric: str | None,
                    kind: str | None) -> tuple[object, int, tuple[dict | None, dict]]:
    """``(fitted calibrator with its task, questions, (base meta, chat meta))``: streamed where it can be."""
    from ..scores import is_streamable, join_scores, load_scores
    from ..streaming import OrderMismatch, fit_temperature_streaming

    if (cal.streamable_fit and cal.scaling == "temperature" and lmeval_metric is None and kind is not None
            and is_streamable(base_path) and is_streamable(chat_path)):
        m.reads(kind)
        try:
            streamed = fit_temperature_streaming(chat_path, base_path, method=cal.method, **_streaming_params(cal))
        except OrderMismatch:
            streamed = None  # the files list the questions in different orders: join them in memory
        if streamed is not None:
            streamed.calibrator.task_ = kind
            return streamed.calibrator, streamed.n, (streamed.meta["base"], streamed.meta["chat"])
    chat = load_scores(chat_path, lmeval_metric=lmeval_metric)
    kind = task_of_scores(chat.meta)
    m.reads(kind)  # a method of the other kind only: one line naming the kinds it applies to
    if m.needs_labels:
        n_missing = int((chat.labels < 0).sum())
        if n_missing == len(chat):
            raise InputError(f"{chat_path}: {n_missing} of {len(chat)} questions have no label; --method {m.key} "
                             "is fitted on labels (--method daca is label-free)")
    if not m.needs_base(kind):
        # the calibrator decides what unknown labels mean: an oracle refuses them, a few-label map skips them
        cal.fit_roles(chat.logits, None, chat.labels)
        cal.task_ = kind
        return cal, len(chat), (None, chat.meta)
    joined = join_scores(load_scores(base_path, lmeval_metric=lmeval_metric), chat)
    cal.fit_roles(joined.chat, joined.base, joined.labels if m.needs_labels else None)
    cal.task_ = kind
    return cal, len(joined.ids), (joined.base_scores.meta, joined.chat_scores.meta)


def _streaming_params(cal) -> dict:
    """The hyper-parameters the block-wise temperature fit takes."""
    return {k: v for k, v in cal.get_params().items() if k in ("max_iter", "tol", "temperature_bounds", "on_bound")}


def _fit_summary(cal) -> str:
    """One line on what was fitted: its fitted parameters and the solver's record."""
    fp = {k: v for k, v in cal.fitted_params().items() if k not in ("n", "n_agree", "agreement_rate")}
    shown = ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}" for k, v in fp.items())
    fallback = getattr(cal, "fallback_", None)
    return (f"{shown or 'fitted'}{'; ' + fallback if fallback else ''}  ({cal.n_iter_} iterations, "
            f"converged: {cal.converged_})")


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
              help="Base-model score file, for a calibrator that reads both models' logits at apply time "
                   "(daca_agree: their agreement).")
def evaluate(scores_path: Path, cal_path: Path | None, bins: int, json_path: Path | None, allow_other_k: bool,
             lmeval_metric: str | None, base_path: Path | None) -> None:
    """Calibration metrics of a score file (needs labels); before and after a calibrator."""
    import numpy as np

    from .. import metrics
    from .._math import softmax
    from ..scores import is_streamable, load_scores
    from ..streaming import evaluate_streaming

    cal = None
    if cal_path is not None:
        from ..calibrate import load_calibrator

        cal = load_calibrator(cal_path)
    _check_base(cal, cal_path, base_path)
    streamable = cal is None or (not cal.needs_base_at_apply and cal.scaling in ("temperature", "binned"))
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
              help="Base-model score file, for a calibrator that reads both models' logits at apply time "
                   "(daca_agree: their agreement).")
def apply(scores_path: Path, cal_path: Path, output: Path, allow_other_k: bool, lmeval_metric: str | None,
          base_path: Path | None) -> None:
    """Write calibrated log-probabilities (as logits) for every question of a score file.

    Score files hold values with |x| <= 1e100 only, so a log-probability below -1e100 (an option the
    calibrated model gives probability 0 in any case: exp(-1e100) is 0) is written as -1e100; a missing
    option stays -inf.
    """
    import numpy as np

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
    logp = np.where(np.isfinite(logp), np.maximum(logp, LOGIT_FLOOR), logp)  # see the docstring
    out = scores.with_logits(logp, calibrated=True, calibrator=str(cal_path))
    out.save(output)
    click.echo(f"wrote {output} ({len(out)} questions, calibrated log-probabilities)")


def _check_base(cal, cal_path: Path | None, base_path: Path | None) -> None:
    """A calibrator that reads both models' logits at apply time needs the base model's scores; no other
    reads them."""
    needs = cal is not None and cal.needs_base_at_apply
    if needs and base_path is None:
        raise InputError(f"{cal_path} is {cal.description.split(':')[0]}: it reads both models' logits at apply time "
                         "(e.g. their agreement), so it needs the base model's scores; pass --base BASE_SCORES")
    if base_path is not None and not needs:
        raise InputError("--base is read only by a calibrator that reads both models' logits at apply time "
                         f"({', '.join(k for k, c in CALIBRATORS.items() if c.needs_base_at_apply)}); drop it")


def _calibrated(cal, scores, base_path: Path | None, lmeval_metric: str | None):
    """Calibrated log-probabilities (n, k) of ``scores`` (the chat model's), in its question order."""
    if not cal.needs_base_at_apply:
        return cal.predict_log_proba(scores.logits)
    from ..scores import join_scores, load_scores

    joined = join_scores(load_scores(base_path, lmeval_metric=lmeval_metric), scores)  # in the chat file's order
    return cal.predict_log_proba(joined.chat, joined.base)


def _check_options(cal, scores, scores_path: Path, cal_path: Path, allow_other_k: bool) -> None:
    """Applying a calibrator to scores of another task is refused; to scores with another number of options
    it must be an explicit choice (never for a map with one parameter per option)."""
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
            f"{'a temperature' if cal.scaling == 'temperature' else 'a ' + cal.scaling + ' map'} "
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
