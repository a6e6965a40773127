"""Shared user-facing vocabulary: template lists, scoring modes, column-mapping flags, limits.

Every command parses these the same way, so ``run`` and ``score`` accept the same syntax.
"""

from __future__ import annotations

from .errors import InputError

#: Instruction templates of the DACA paper's Table 5 (see :data:`refcal.tasks.prompts.TEMPLATES`).
TEMPLATE_IDS: tuple[int, ...] = (1, 2, 3, 4, 5)

#: Scoring modes of multiple-choice questions. ``letter``: next-token logits of the option letters;
#: ``cloze``: summed log-probability of each option's text; ``cloze-norm`` per character;
#: ``cloze-token`` per token; ``cape``: letter scoring averaged over the k cyclic shifts of the options.
SCORINGS: tuple[str, ...] = ("letter", "cloze", "cloze-norm", "cloze-token", "cape")
CLOZE_SCORINGS: tuple[str, ...] = ("cloze", "cloze-norm", "cloze-token")

#: CAPE's option orders (``--cape-orders``): ``cyclic``, the k cyclic shifts (k letter requests per question);
#: ``all``, every one of the k! orders (k <= :data:`CAPE_MAX_ALL_ORDERS` options: at most 24 requests).
CAPE_ORDERS: tuple[str, ...] = ("cyclic", "all")
#: CAPE's prompt templates (``--cape-templates``): ``one``, the run's ``--template``; ``all``, DACA's five
#: instructions as extra members (5x the requests, and the same CAPE scores whatever ``--template`` is).
CAPE_TEMPLATES: tuple[str, ...] = ("one", "all")
#: the most options ``--cape-orders all`` accepts (4! = 24 orders; 5! = 120 would be 120 requests a question)
CAPE_MAX_ALL_ORDERS = 4
#: ``--bins`` / ``n_bins``: equal-width confidence bins of ECE, MCE, AECE and the diagrams. More than this
#: many bins has no statistical meaning (about one question per bin at a million questions) and only costs
#: memory: 1e9 bins took 23 GB before this bound.
MAX_BINS = 1000

#: Default scoring: cloze for local models (a proper likelihood); API models only expose the
#: top-k log-probabilities of one generated token, so they default to letter scoring.
DEFAULT_SCORING = "cloze"
DEFAULT_API_SCORING = "letter"

#: Column-mapping keys for user data files and the command-line flag of each.
COLUMN_FLAGS: dict[str, str] = {
    "question_col": "--question-col",
    "choices_col": "--choices-col",
    "option_cols": "--option-cols",
    "answer_col": "--answer-col",
    "answer_format": "--answer-format",
    "id_col": "--id-col",
    "subject_col": "--subject-col",
}
COLUMN_KEYS: tuple[str, ...] = tuple(COLUMN_FLAGS)


def is_api_model(spec: str | None) -> bool:
    """``openai:MODEL`` names an OpenAI-compatible endpoint."""
    return bool(spec) and str(spec).startswith("openai:")


def default_scoring(*model_specs: str | None) -> str:
    """The scoring used when none is given: letter if any model is an API model, else cloze."""
    return DEFAULT_API_SCORING if any(is_api_model(s) for s in model_specs) else DEFAULT_SCORING


def parse_templates(value: str | int | list | tuple, *, option: str = "--template") -> list[int]:
    """``"1"``, ``"1,3"``, ``"all"`` (or an int / list of ints) -> sorted unique template ids.

    Raises :class:`~refcal.errors.InputError` naming ``option`` for anything else.
    """
    if isinstance(value, bool):
        raise InputError(f"{option} {value!r} is not valid; use 1..5, a comma-separated list such as 1,3, or all")
    if isinstance(value, int):
        items: list = [value]
    elif isinstance(value, list | tuple):
        items = list(value)
    else:
        text = str(value).strip().lower()
        if text == "all":
            return list(TEMPLATE_IDS)
        items = [v.strip() for v in text.split(",")]
    out: list[int] = []
    for v in items:
        try:
            t = int(v)
        except (TypeError, ValueError):
            t = -1
        if isinstance(v, bool) or t not in TEMPLATE_IDS:
            raise InputError(f"{option} {value!r} is not valid; use 1..5, a comma-separated list such as 1,3, "
                             "or all")
        if t not in out:
            out.append(t)
    return out


def check_cape_options(orders: str, templates: str) -> None:
    """Refuse an unknown ``--cape-orders`` / ``--cape-templates`` value with one line naming the flag."""
    if orders not in CAPE_ORDERS:
        raise InputError(f"--cape-orders {orders!r} is not valid; use {' or '.join(CAPE_ORDERS)}")
    if templates not in CAPE_TEMPLATES:
        raise InputError(f"--cape-templates {templates!r} is not valid; use {' or '.join(CAPE_TEMPLATES)}")


def parse_limit(value: int | None) -> int | None:
    """``--limit``: ``None`` or ``0`` means every question; a positive N at most N questions."""
    if value is None:
        return None
    if isinstance(value, bool) or int(value) < 0:
        raise InputError(f"--limit {value!r} is not valid; use a positive number, or 0 for every question")
    return int(value) or None
