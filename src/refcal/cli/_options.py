"""Option groups shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..backends.openai import LETTER_MODES
from ..options import COLUMN_KEYS

#: ``--api-letters``: how an ``openai:`` model's option letters are scored (its backend option ``letters``)
API_LETTERS: tuple[str, ...] = LETTER_MODES
API_LETTERS_HELP = ("openai: models: how option letters are scored. exact: the server scores the letter tokens "
                    "themselves (vLLM's logprob_token_ids; a server without it is refused); topk: from the top-k "
                    "log-probabilities, absent letters floored; auto: exact where the server can, else topk.")


def column_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--question-col`` ... for user data files (JSONL / CSV / Parquet / HF folders)."""
    opts = [
        click.option("--question-col", default=None, help="User files: column with the question text."),
        click.option("--choices-col", default=None, help="User files: column holding the list of options."),
        click.option("--option-cols", default=None,
                     help="User files: comma-separated option columns (instead of --choices-col)."),
        click.option("--answer-col", default=None, help="User files: column with the answer."),
        click.option("--answer-format", type=click.Choice(["letter", "index", "text"]), default=None,
                     help="User files: how --answer-col encodes the answer (default: detected)."),
        click.option("--id-col", default=None, help="User files: question id column (default: row number)."),
        click.option("--subject-col", default=None, help="User files: subject/group column."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def pop_columns(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Remove the column options from ``kwargs``; return those that were given."""
    cols = {k: kwargs.pop(k, None) for k in COLUMN_KEYS}
    if cols.get("option_cols"):
        cols["option_cols"] = [c.strip() for c in cols["option_cols"].split(",") if c.strip()]
    return {k: v for k, v in cols.items() if v is not None}


def ray_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--ray`` ... : score on a Ray cluster (:mod:`refcal.backends.ray`)."""
    opts = [
        click.option("--ray", "ray", is_flag=True,
                     help="Score on Ray: an actor pool of model replicas (needs refcal[ray])."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="--ray: model replicas (actors) [default: 1]."),
        click.option("--ray-address", default=None,
                     help="--ray: auto or HOST:PORT of a running cluster (default: a private local instance)."),
        click.option("--ray-num-cpus", type=click.FloatRange(min=0, min_open=True), default=None,
                     help="--ray: CPUs per actor (also its torch threads) [default: 1]."),
        click.option("--ray-num-gpus", type=click.FloatRange(min=0), default=None,
                     help="--ray: GPUs per actor, fractions share one [default: 0]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def pop_ray(kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """Remove the Ray options from ``kwargs``; the :class:`refcal.backends.ray.RayOptions` fields given
    with ``--ray``, or None without it (Ray options without ``--ray`` are an error)."""
    from ..errors import InputError

    on = kwargs.pop("ray", False)
    names = {"workers": "workers", "ray_address": "address", "ray_num_cpus": "num_cpus", "ray_num_gpus": "num_gpus"}
    given = {key: kwargs.pop(key, None) for key in names}
    given = {k: v for k, v in given.items() if v is not None}
    if given and not on:
        raise InputError(f"--{next(iter(given)).replace('_', '-')} applies with --ray only; add --ray")
    return {names[k]: v for k, v in given.items()} if on else None
