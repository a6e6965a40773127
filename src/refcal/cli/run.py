"""``refcal run``: the whole job in one command."""

from __future__ import annotations

import time
from pathlib import Path

import click

from .. import pipeline as P
from ..options import parse_templates
from ._options import column_options, pop_columns


@click.command()
@click.option("--base", default=P.DEFAULT_BASE, show_default=True,
              help="Base (pre-trained) model: built-in alias, Hugging Face id, folder, .gguf, or openai:MODEL.")
@click.option("--chat", default=P.DEFAULT_CHAT, show_default=True,
              help="Chat (post-trained) model to calibrate; same forms as --base.")
@click.option("--dataset", "-d", default=P.DEFAULT_DATASET, show_default=True,
              help="Built-in data set (see `refcal datasets`).")
@click.option("--split", default=None, help="Evaluation split (default: the data set's test split).")
@click.option("--calib-split", default=None,
              help="Split the calibrators are fitted on (MMLU: validation); default: random splits of --split.")
@click.option("--subjects", default=None, help="MMLU subjects, comma-separated.")
@click.option("--template", "template", default="1", show_default=True,
              help="Prompt template 1..5, a list '1,3', or 'all' (mean ± std over templates).")
@click.option("--scoring", type=click.Choice(["letter", "cloze", "cloze-norm", "cloze-token"]),
              default=None, show_default=f"{P.DEFAULT_SCORING}; letter for openai: models",
              help="letter (paper's next-token letter logits), cloze (summed log-prob of the option text), "
                   "cloze-norm / cloze-token (per character / per token).")
@click.option("--chat-template", type=click.Choice(["off", "on"]), default="off", show_default=True,
              help="Wrap prompts in the chat model's chat template (off reproduces the paper).")
@click.option("--fewshot", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--limit", type=click.IntRange(min=0), default=P.DEFAULT_LIMIT, show_default=True,
              help="Questions per split (MMLU: per subject); 0 = all.")
@click.option("--n-splits", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--calib-frac", type=float, default=0.3, show_default=True)
@click.option("--scaling", type=click.Choice(["temperature", "vector", "matrix"]), default="temperature",
              show_default=True)
@click.option("--bins", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available).")
@click.option("--api-base", default=None, help="Base URL of an OpenAI-compatible API (for openai:MODEL).")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: runs/<dataset>-<time>).")
@click.option("--overwrite", is_flag=True, help="Replace an existing run folder.")
@click.option("--no-report", is_flag=True, help="Skip the HTML/Markdown report.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@column_options
def run(base, chat, dataset, split, calib_split, subjects, template, scoring, chat_template, fewshot, limit,
        n_splits, calib_frac, scaling, bins, seed, batch_size, device, api_base, output, overwrite, no_report,
        no_progress, **columns) -> None:
    """Score both models (cached, resumable), fit DACA, naive alignment and the labelled oracle,
    evaluate on held-out questions and write a run folder with a report.

    With no arguments: the packaged Gemma-3-270M (base) and SmolLM2-135M-Instruct (chat) on SciQ.
    """
    if scoring is None:
        api = base.startswith("openai:") or chat.startswith("openai:")
        scoring = "letter" if api else P.DEFAULT_SCORING
    cfg = P.RunConfig(
        base=base, chat=chat, dataset=dataset, split=split, calib_split=calib_split,
        subjects=[s.strip() for s in subjects.split(",")] if subjects else None,
        templates=parse_templates(template), scoring=scoring, chat_template=chat_template == "on",
        fewshot=fewshot, limit=limit or None, n_splits=n_splits, calib_frac=calib_frac, scaling=scaling,
        n_bins=bins, seed=seed, batch_size=batch_size, api_base=api_base, device=device,
        progress=not no_progress, columns=pop_columns(columns),
    )
    out = output or Path("runs") / f"{Path(dataset).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = P.run(cfg, out, overwrite=overwrite, report=not no_report)
    doc = P.load_metrics(run_dir)
    d = doc["diagnostics"]
    click.echo(f"\n{cfg.chat} calibrated with {cfg.base} on {cfg.dataset} — {doc['protocol']}")
    cal = doc["calibrator"]
    deploy = (f"deployable DACA temperature {cal['temperature']:.4g}" if "error" not in cal
              else f"NO deployable calibrator ({cal['error']})")
    click.echo(f"agreement: {d['n_agree']}/{d['n']} questions ({100 * d['agreement_rate']:.1f}%); {deploy}")
    fallbacks = {m: n for m, n in doc.get("fallbacks", {}).items() if n}
    if fallbacks:
        click.echo("could not be fitted on some units (evaluated uncalibrated there): "
                   + ", ".join(f"{P.METHOD_LABELS[m]} {n}/{len(doc['fits'][m])}" for m, n in fallbacks.items()))
    click.echo(P.summary_table(doc))
    if not doc["has_labels"]:
        click.echo("(no labels: ECE, Brier, NLL and accuracy need labels; only confidences are shown)")
    click.echo(f"\nrun folder: {run_dir}" + ("" if no_report else f"  (report: {run_dir / 'report.html'})"))
