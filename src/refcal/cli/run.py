"""``refcal run``: the whole job in one command."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..calibrate.methods import DEFAULT_METHODS, METHODS
from ..options import (
    CAPE_ORDERS,
    CAPE_TEMPLATES,
    MAX_BINS,
    SCORINGS,
    default_scoring,
    parse_limit,
    parse_templates,
)
from ..run.config import DEFAULT_BASE, DEFAULT_CHAT, DEFAULT_DATASET, DEFAULT_LIMIT, DTYPES, SCALINGS
from ._options import API_LETTERS, API_LETTERS_HELP, column_options, pop_columns, pop_ray, ray_options

_EPILOG = """\b
Exit codes: 0 success; 2 bad input or usage (the message names the option or file);
1 an operating-system error (permission, disk full) or an internal error; 130 interrupted
(Ctrl-C: finished scores are cached, run the same command again to resume)."""


@click.command(epilog=_EPILOG)
@click.option("--base", default=DEFAULT_BASE, show_default=True,
              help="Base (pre-trained) model: built-in alias, Hugging Face id, folder, .gguf, or openai:MODEL.")
@click.option("--chat", default=DEFAULT_CHAT, show_default=True,
              help="Chat (post-trained) model to calibrate; same forms as --base.")
@click.option("--dataset", "-d", default=DEFAULT_DATASET, show_default=True,
              help="Built-in data set (see `refcal datasets`) or a data file (.jsonl, .csv, .parquet).")
@click.option("--split", default=None, help="Evaluation split (default: the data set's test split).")
@click.option("--calib-split", default=None,
              help="Split the calibrators are fitted on (MMLU: validation); default: random splits of --split.")
@click.option("--subjects", default=None, help="MMLU subjects, comma-separated.")
@click.option("--template", "-t", "template", default="1", show_default=True,
              help="Prompt template 1..5, a list '1,3', or 'all' (letter scoring; mean ± std over templates).")
@click.option("--scoring", type=click.Choice(list(SCORINGS)), default=None,
              show_default="cloze; letter for openai: models",
              help="letter (paper's next-token letter logits), cloze (summed log-prob of the option text), "
                   "cloze-norm / cloze-token (per character / per token), cape (letter scoring averaged over "
                   "the k cyclic shifts of the options).")
@click.option("--cape-orders", type=click.Choice(list(CAPE_ORDERS)), default=None, show_default="cyclic",
              help="CAPE (the cape method, or --scoring cape): the k cyclic shifts of the options, or all k! "
                   "orders (k <= 4: at most 24 letter requests a question).")
@click.option("--cape-templates", type=click.Choice(list(CAPE_TEMPLATES)), default=None, show_default="one",
              help="CAPE: the prompt template of each unit only, or DACA's five templates as extra members "
                   "(5x the requests; the same CAPE scores in every template's units).")
@click.option("--chat-template", type=click.Choice(["off", "on"]), default="off", show_default=True,
              help="Wrap prompts in the chat model's chat template (off reproduces the paper).")
@click.option("--fewshot", type=click.IntRange(min=0), default=0, show_default=True,
              help="Solved examples before each question (MMLU: per subject, from dev).")
@click.option("--limit", type=click.IntRange(min=0), default=DEFAULT_LIMIT, show_default=True,
              help="Questions per split (MMLU: per subject); 0 = every question.")
@click.option("--methods", default=None, show_default=",".join(DEFAULT_METHODS),
              help=f"Methods to compare, comma-separated: {', '.join(METHODS)}; or the keywords default, "
                   "no-generation (every method without generated text) and all (adds the slow elicitation "
                   "methods). Free-form data sets: "
                   "chat, p_true, base, naive, daca, reeval, verbal, ts (default all).")
@click.option("--judge", default=None, show_default="exact (TruthfulQA: ROUGE-L)",
              help="Free-form data sets: how answers are judged correct (evaluation only): exact, contains, "
                   "or openai:MODEL (an OpenAI-compatible judge model at --judge-api-base).")
@click.option("--judge-api-base", default=None, help="Base URL of the judge model's OpenAI-compatible API.")
@click.option("--n-splits", type=click.IntRange(min=1), default=5, show_default=True,
              help="Random calibration / test splits (data sets without a calibration split).")
@click.option("--calib-frac", type=float, default=0.3, show_default=True,
              help="Share of the questions used for calibration in each random split.")
@click.option("--scaling", type=click.Choice(list(SCALINGS)), default="temperature", show_default=True,
              help="Map fitted by DACA, naive alignment and the ts oracle (daca_vector, vs ... fix their own).")
@click.option("--bins", type=click.IntRange(min=1, max=MAX_BINS), default=10, show_default=True,
              help="Equal-width confidence bins of ECE, MCE and the reliability diagrams.")
@click.option("--labels-budget", default=None, metavar="K,K,...",
              help="Label-efficiency curve: fit each labelled method (ts, platt, isotonic, histogram, daca_k) on "
                   "k labelled calibration questions for each k, e.g. 0,10,25,50,100,250,all "
                   "(docs/few-labels.md).")
@click.option("--labels-draws", type=click.IntRange(min=1), default=10, show_default=True,
              help="Random draws of the k labelled questions per k (--labels-budget).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the --limit subsample, the random splits and the bootstrap.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Questions per forward pass (local models).")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
@click.option("--dtype", type=click.Choice(list(DTYPES)), default=None,
              help="Local models' weights (default: bfloat16 on CUDA, float32 on CPU).")
@click.option("--api-base", default=None, help="Base URL of an OpenAI-compatible API (for openai:MODEL).")
@click.option("--api-letters", type=click.Choice(list(API_LETTERS)), default=None, show_default="auto",
              help=API_LETTERS_HELP)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where resumable scores live (default $REFCAL_CACHE_DIR/scores, else "
                   "$XDG_CACHE_HOME/refcal/scores, else ~/.cache/refcal/scores).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: runs/<dataset>-<time>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--no-report", is_flag=True, help="Skip the HTML/Markdown report.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@column_options
@ray_options
def run(base, chat, dataset, split, calib_split, subjects, template, scoring, cape_orders, cape_templates,
        chat_template, fewshot, limit,
        methods, judge, judge_api_base, n_splits, calib_frac, scaling, bins, labels_budget, labels_draws, seed, batch_size, device, dtype, api_base,
        api_letters, cache_dir, output, overwrite, no_report, no_progress, **columns) -> None:
    """Score both models (cached, resumable), fit the calibrators (default: DACA, naive alignment and the
    labelled oracle), evaluate on held-out questions and write a run folder with a report.

    With no arguments: the packaged Gemma-3-270M (base) and SmolLM2-135M-Instruct (chat) on SciQ.
    Free-form data sets (triviaqa, nq-open, truthfulqa-gen, files with question and answers columns): the
    chat model answers each question, the answers are judged, and every method's confidence that an
    answer is correct is evaluated (docs/FREEFORM.md).
    """
    from ..calibrate.methods import parse_methods
    from ..report import write_report  # the run folder's finish hook: run/ itself imports no report
    from ..run import RunConfig, load_result, summary_table
    from ..run import run as run_job
    from ..run.budget import parse_labels_budget
    from ..run.freeform import is_freeform, parse_freeform_methods, run_freeform

    cols = pop_columns(columns)
    ray = pop_ray(columns)
    if no_progress:
        from .._progress import third_party_progress

        third_party_progress(False)  # transformers' weight-loading and conversion bars too
    freeform = is_freeform(dataset, cols)
    if freeform and ray is not None:
        raise click.UsageError("--ray applies to multiple-choice data sets; score free-form runs without it")
    if ray is not None and cache_dir:
        ray.setdefault("temp_dir", str(Path(cache_dir) / "ray"))  # a private instance's session files
    if not freeform and (judge or judge_api_base):
        raise click.UsageError("--judge and --judge-api-base apply to free-form data sets only")
    cfg = RunConfig(
        base=base, chat=chat, dataset=dataset, split=split, calib_split=calib_split,
        subjects=[s.strip() for s in subjects.split(",")] if subjects else None,
        templates=parse_templates(template), scoring=scoring or default_scoring(base, chat),
        chat_template=chat_template == "on", fewshot=fewshot, limit=parse_limit(limit), n_splits=n_splits,
        calib_frac=calib_frac, scaling=scaling, n_bins=bins, seed=seed, batch_size=batch_size, api_base=api_base,
        api_letters=api_letters, device=device, dtype=dtype, cache_dir=cache_dir, progress=not no_progress,
        columns=cols,
        methods=parse_freeform_methods(methods) if freeform else parse_methods(methods), ray=ray,
        cape_orders=cape_orders or "cyclic", cape_templates=cape_templates or "one",
        labels_budget=parse_labels_budget(labels_budget) if labels_budget else None, labels_draws=labels_draws,
    )
    if freeform and labels_budget:
        raise click.UsageError("--labels-budget applies to multiple-choice data sets only")
    if freeform and (cape_orders or cape_templates):
        raise click.UsageError("--cape-orders and --cape-templates apply to multiple-choice data sets only")
    finish = None if no_report else write_report
    out = output or Path("runs") / f"{Path(dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if freeform:
        run_dir = run_freeform(cfg, out, judge=judge, judge_api_base=judge_api_base, methods=cfg.methods,
                               overwrite=overwrite, finish=finish)
    else:
        run_dir = run_job(cfg, out, overwrite=overwrite, finish=finish)
    res = load_result(run_dir)
    if res.freeform:
        acc = res.freeform.get("accuracy")
        click.echo(f"\n{res.freeform.get('n_questions')} answers generated"
                   + (f", {100 * acc:.1f}% judged correct" if acc is not None else " (no references: not judged)")
                   + f", {res.freeform.get('n_empty_answers', 0)} empty")
    click.echo(f"\n{cfg.chat} calibrated with {cfg.base} on {cfg.dataset} — {res.protocol}")
    cal, d = res.calibrator, res.diagnostics
    if cal is not None and cal.error is None:
        deploy = f"deployable DACA temperature {cal.temperature:.4g}" if cal.temperature is not None \
            else "deployable DACA calibrator"
    else:
        deploy = f"NO deployable calibrator ({cal.error if cal else 'not fitted'})"
    if d is not None:
        click.echo(f"agreement: {d.n_agree}/{d.n} questions ({100 * d.agreement_rate:.1f}%); {deploy}")
    fallbacks = {m: n for m, n in res.fallbacks.items() if n}
    if fallbacks:
        click.echo("could not be fitted on some units (evaluated uncalibrated there): "
                   + ", ".join(f"{res.label(m)} {n}/{len(res.fits[m])}" for m, n in fallbacks.items()))
    click.echo(summary_table(res))
    if res.label_budget.get("worth_labels"):
        click.echo(res.label_budget["worth_labels"]["sentence"])
    wall = res.timing.get("wall_seconds")
    if wall is not None:
        click.echo(f"wall time {wall:.1f} s (scoring {res.timing.get('scoring_seconds', float('nan')):.1f} s)")
    if not res.has_labels:
        click.echo("(no labels: ECE, Brier, NLL and accuracy need labels; only confidences are shown)")
    click.echo(f"\nrun folder: {run_dir}" + ("" if no_report else f"  (report: {run_dir / 'report.html'})"))
