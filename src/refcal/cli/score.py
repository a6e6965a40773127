"""``refcal score``: one model, one data set -> a score file (option logits per question)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from ..errors import InputError
from ..options import (
    CAPE_ORDERS,
    CAPE_TEMPLATES,
    CLOZE_SCORINGS,
    SCORINGS,
    default_scoring,
    is_api_model,
    parse_limit,
    parse_templates,
)
from ._options import API_LETTERS, API_LETTERS_HELP, column_options, pop_columns, pop_ray, ray_options

log = logging.getLogger(__name__)


@click.command("score")
@click.option("--model", "-m", required=True,
              help="Built-in alias (gemma-3-270m, gemma-3-270m-sft, gemma-3-270m-dpo, smollm2-135m-instruct), "
                   "Hugging Face id, model folder, "
                   ".gguf file, or openai:MODEL.")
@click.option("--dataset", "-d", required=True, help="Built-in data set name or a data file.")
@click.option("--split", default=None, help="Split (default: the data set's evaluation split).")
@click.option("--subjects", default=None, help="Comma-separated subjects to keep (MMLU).")
@click.option("--template", "-t", default="1", show_default=True,
              help="Prompt template 1..5, a list '1,3', or 'all' (letter scoring; one file per template).")
@click.option("--scoring", type=click.Choice(list(SCORINGS)), default=None,
              show_default="cloze; letter for openai: models",
              help="letter: next-token logits of the option letters; cloze: summed log-prob of the option text; "
                   "cloze-norm: per character; cloze-token: per token; cape: letter scoring averaged over "
                   "orders of the options (--cape-orders, --cape-templates).")
@click.option("--cape-orders", type=click.Choice(list(CAPE_ORDERS)), default=None, show_default="cyclic",
              help="--scoring cape: the k cyclic shifts of the options, or all k! orders (k <= 4: at most 24).")
@click.option("--cape-templates", type=click.Choice(list(CAPE_TEMPLATES)), default=None, show_default="one",
              help="--scoring cape: the --template prompt only, or DACA's five templates as extra members "
                   "(5x the requests; one file whatever --template is).")
@click.option("--chat-template", type=click.Choice(["on", "off"]), default="off", show_default=True,
              help="Wrap prompts in the model's chat template (off reproduces the paper).")
@click.option("--fewshot", type=click.IntRange(min=0), default=0, show_default=True,
              help="Solved examples from the few-shot split (MMLU: per subject, from dev).")
@click.option("--limit", type=click.IntRange(min=0), default=0, show_default=True,
              help="Score at most N questions (a random subsample); 0 = every question.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --limit subsample.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Questions per forward pass (local models).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available).")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
              help="Default: bfloat16 on CUDA, float32 on CPU.")
@click.option("--api-base", default=None, help="Base URL of an OpenAI-compatible server (openai:MODEL).")
@click.option("--api-letters", type=click.Choice(list(API_LETTERS)), default=None, show_default="auto",
              help=API_LETTERS_HELP)
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Where resumable results live (default $REFCAL_CACHE_DIR/scores, else $XDG_CACHE_HOME/refcal/scores, else ~/.cache/refcal/scores).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@column_options
@ray_options
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Output .parquet or .jsonl; with --template all, one file per template (name_t1.parquet, ...).")
def score(model: str, dataset: str, split: str | None, subjects: str | None, template: str, scoring: str | None,
          cape_orders: str | None, cape_templates: str | None, chat_template: str, fewshot: int, limit: int | None, seed: int, batch_size: int, device: str | None,
          dtype: str | None, api_base: str | None, api_letters: str | None, cache_dir: str | None, no_progress: bool,
          output: str, **columns: Any) -> None:
    """Score MODEL on DATASET and write option logits (resumable: rerun the same command after an interruption)."""
    from .._io import ensure_parent
    from ..backends import options_class
    from ..backends.ray import open_backend
    from ..data import fewshot_examples, load_dataset
    from ..scores import check_output_path
    from ..scoring import score_questions
    from ..tasks import make_task

    ray = pop_ray(columns)
    if no_progress:
        from .._progress import third_party_progress

        third_party_progress(False)  # transformers' weight-loading and conversion bars too
    if api_letters is not None and not is_api_model(model):
        raise InputError(f"--api-letters applies to openai:MODEL models, not {model}")
    if ray is not None and cache_dir:
        ray.setdefault("temp_dir", str(Path(cache_dir) / "ray"))  # a private instance's session files
    check_output_path(output)  # before any slow work
    ensure_parent(output, what="the scores", create=False)
    templates = parse_templates(template)
    limit = parse_limit(limit)
    scoring = scoring or default_scoring(model)
    chat = chat_template == "on"
    if scoring != "letter" and chat:
        raise InputError("--chat-template on applies to --scoring letter only")
    if scoring in CLOZE_SCORINGS and len(templates) > 1:
        raise InputError("prompt templates apply to letter scoring only (cloze prompts have no instruction); "
                         "use --scoring letter with --template all, or one template")
    if cape_templates == "all" and len(templates) > 1:
        raise InputError("--cape-templates all already averages over the five templates (one file); "
                         "drop --template or pass one template")
    # refuses --cape-* with another scoring mode, before any slow work
    tasks = {t: make_task(scoring, template=t, chat=chat, cape_orders=cape_orders, cape_templates=cape_templates)
             for t in templates}
    questions = load_dataset(dataset, split=split, subjects=subjects, limit=limit, seed=seed, **pop_columns(columns))
    shots: Any = ()
    if fewshot:
        subj = sorted({q.subject for q in questions if q.subject is not None})
        if subj:
            shots = {s: fewshot_examples(dataset, subject=s, k=fewshot) for s in subj}
        else:
            shots = fewshot_examples(dataset, k=fewshot)
    # pass each backend only the options it has (an API or the fake backend has no device)
    fields = options_class(model).__dataclass_fields__
    for flag, value in (("--device", device), ("--dtype", dtype)):
        if value is not None and flag[2:] not in fields:
            raise InputError(f"{flag} applies to local models, not {model}")
    local = {"device": device, "dtype": dtype, "batch_size": batch_size}
    kwargs: dict[str, Any] = {k: v for k, v in local.items() if k in fields and v is not None}
    if api_letters is not None:
        kwargs["letters"] = api_letters
    with open_backend(model, ray, api_base=api_base, **kwargs) as backend:
        out = Path(output)
        for t in templates:
            meta = {"model": model, "dataset": dataset, "split": split, "subjects": subjects, "limit": limit,
                    "seed": seed}
            scores = score_questions(backend, questions, task=tasks[t], fewshot=shots, batch_size=batch_size,
                                     cache_dir=cache_dir, progress=not no_progress, meta=meta)
            path = out if len(templates) == 1 else out.with_name(f"{out.stem}_t{t}{out.suffix}")
            scores.save(path)
            acc = ""
            if scores.has_labels:
                acc = f", accuracy {float((scores.logits.argmax(1) == scores.labels).mean()):.3f}"
            how = scoring if scoring in CLOZE_SCORINGS else f"template {t}, {scoring}"  # cloze has no template
            if scoring == "cape":
                how = _cape_how(tasks[t])
            click.echo(f"wrote {len(scores)} questions to {path} ({how}{acc})")


def _cape_how(task: Any) -> str:
    """What a CAPE score file averages, for the closing line: orders x templates."""
    templates = task.member_templates
    orders = "cyclic shifts" if task.orders == "cyclic" else "all orders"
    where = f"template {templates[0]}" if len(templates) == 1 else f"{len(templates)} templates"
    return f"cape: {orders}, {where}"
