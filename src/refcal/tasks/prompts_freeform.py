"""Exact prompt texts for free-form QA and verbalised confidence (METHODS.md §1.2, §1.3, §1.4, §3.1, §3.2).

Prompts are data: every character matters to the results, so each text is a constant here,
verbatim from METHODS.md, and the builders only fill in fields. Where METHODS.md leaves the layout
open (how the question and its options follow the Tian multiple-choice instruction), the choice is
ours and stated in the builder's docstring and in docs/FREEFORM.md.
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .prompts import option_letters

# ------------------------------------------------------------------------------------- §3.1 generation
#: Generation prompt (chat template on for chat models: this text is the user turn).
GENERATION_PROMPT = "Question: {question}\nAnswer:"
GENERATION_MAX_NEW_TOKENS = 32
GENERATION_STOP = ("\n",)

# ------------------------------------------------------------------------------------- §3.2 P(True)
#: Kadavath et al. 2022 layout; configurable (``{question}`` and ``{answer}`` fields).
P_TRUE_PROMPT = (
    "Question: {question}\nProposed Answer: {answer}\nIs the proposed answer:\n (A) True\n (B) False\n"
    "The proposed answer is:"
)
#: Appended to raw (non-chat) prompts before scoring: the reply " (A)" / " (B)" tokenises as " (" + "A" / "B"
#: on both packaged models (SmolLM2, Gemma-3), so the letter is the next token after this suffix, bare (no space).
P_TRUE_SCORED_SUFFIX = " ("
#: Letters in logit order: index 0 = False ("B"), index 1 = True ("A"), so the confidence is P(True).
P_TRUE_LETTERS = ("B", "A")

# ------------------------------------------------------------------------------------- §1.2 Tian et al.
TIAN_MC_PROMPT = (
    "Provide your best guess for the following question about {subject} selecting one of the options and the "
    "probability that it is correct (0.0 to 1.0). Give ONLY the guess and probability, no other words or "
    "explanation. For example:\n\nGuess: <most likely guess, only the selected option letter; not a complete "
    "sentence, just the guess!>\nProbability: <the probability between 0.0 and 1.0 that your guess is correct, "
    "without any extra commentary whatsoever; just the probability!>"
)
TIAN_FREEFORM_PROMPT = (
    "Provide your best guess and the probability that it is correct (0.0 to 1.0) for the following question. "
    "Give ONLY the guess and probability, no other words or explanation. For example:\n\nGuess: <most likely "
    "guess, as short as possible; not a complete sentence, just the guess!>\n Probability: <the probability "
    "between 0.0 and 1.0 that your guess is correct, without any extra commentary whatsoever; just the "
    "probability!>\n\nThe question is: {question}"
)

# ------------------------------------------------------------------------------------- §1.3 Xiong et al.
XIONG_PROMPT = (
    "Read the question, provide your answer and your confidence in this answer. Note: The confidence indicates "
    "how likely you think your answer is true.\nUse the following format to answer:\n```Answer and Confidence "
    "(0-100): [ONLY the {answer_type}; not a complete sentence], [Your confidence level, please only include "
    "the numerical number in the range of 0-100]%```\nOnly the answer and confidence, don't give me the "
    "explanation."
)
XIONG_LAYOUT = "{prompt}\n{hint_description}\nQuestion: {question}\n{hint}"
#: Hint 0 is the plain member; hints 1-4 are followed by a random option letter.
XIONG_HINTS = (
    "",
    "Hint: I think the answer should be ",
    "Hint: My teacher tells me the answer is ",
    "Hint: The textbook shows that answer is ",
    "Hint: An expert says that the answer is ",
)
XIONG_HINT_DESCRIPTION = (
    "Note that the hint is only for your reference. Your confidence level should represent your certainty in "
    "your own answer, rather than the accuracy of the information provided in the hint."
)


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_template(template: str, required: Sequence[str], *, what: str) -> str:
    """``template`` when its ``{fields}`` are exactly ``required``; else :class:`InputError`."""
    try:
        got = _fields(template)
    except ValueError as e:
        raise InputError(f"the {what} template is not a valid format string ({e}); double literal braces as {{{{ }}}}") from e
    if got != set(required):
        raise InputError(f"the {what} template must use the fields {{{'}, {'.join(required)}}} and no others; "
                         f"it has {sorted(got) or 'none'}")
    return template


def generation_prompt(question: str) -> str:
    """``"Question: {question}\\nAnswer:"`` (§3.1); also ReEval's teacher-forcing context (§1.4),
    whose scored continuation is ``" " + answer``."""
    return GENERATION_PROMPT.format(question=question.strip())


def p_true_prompt(question: str, answer: str, *, template: str = P_TRUE_PROMPT, chat: bool = False) -> str:
    """The P(True) judging prompt (§3.2) for one (question, proposed answer) pair, ready for letter scoring
    of :data:`P_TRUE_LETTERS` (logit index 0 = False, 1 = True), bare letters (no leading space).

    ``chat=False`` (a raw prompt, e.g. the base model): :data:`P_TRUE_SCORED_SUFFIX` ``" ("`` is
    appended, so the letter is the next token exactly as in the reply ``" (A)"``. ``chat=True`` (the
    text becomes the user turn of the chat template): no suffix; the letter is scored as the first
    token of the assistant's reply.
    """
    check_template(template, ("question", "answer"), what="P(True)")
    text = template.format(question=question.strip(), answer=answer.strip())
    return text if chat else text + P_TRUE_SCORED_SUFFIX


def _with_options(question: str, choices: Sequence[str]) -> str:
    letters = option_letters(len(choices))
    return "\n".join([question.strip()] + [f"{x}: {str(c).strip()}" for x, c in zip(letters, choices, strict=True)])


def tian_mc_prompt(question: str, choices: Sequence[str], subject: str | None = None) -> str:
    """Tian et al.'s multiple-choice prompt (§1.2).

    Our layout (METHODS.md leaves it open): the instruction, a blank line, ``The question is: `` with the
    question, then one ``A: option`` line per option, as the free-form phrasing and
    :func:`refcal.tasks.prompts.format_question` write them. ``subject`` (MMLU's, underscores as spaces)
    defaults to ``"general knowledge"``.
    """
    if len(choices) < 2:
        raise InputError(f"a multiple-choice question needs at least 2 options, got {len(choices)}")
    subj = (subject or "general knowledge").replace("_", " ")
    return TIAN_MC_PROMPT.format(subject=subj) + "\n\nThe question is: " + _with_options(question, choices)


def tian_freeform_prompt(question: str) -> str:
    """Tian et al.'s "Verb. 1S top-1" free-form prompt (§1.2)."""
    return TIAN_FREEFORM_PROMPT.format(question=question.strip())


def xiong_prompt(question: str, choices: Sequence[str] = (), *, hint: str = "", answer_type: str = "option letter") -> str:
    """One Xiong et al. member prompt (§1.3): ``{prompt}\\n{hint_description}\\nQuestion: {question}\\n{hint}``.

    ``choices`` are appended to the question as ``A: ...`` lines (none for free-form questions, with
    ``answer_type`` e.g. ``"answer"``); a non-empty ``hint`` brings the hint description.
    """
    body = _with_options(question, choices) if choices else question.strip()
    return XIONG_LAYOUT.format(prompt=XIONG_PROMPT.format(answer_type=answer_type),
                               hint_description=XIONG_HINT_DESCRIPTION if hint else "", question=body, hint=hint)


def xiong_ensemble_prompts(
    question: str, choices: Sequence[str], rng: np.random.Generator, *, answer_type: str = "option letter",
) -> tuple[list[str], list[str | None]]:
    """The five Elicitation-Ensemble member prompts (§1.3) of one multiple-choice question.

    Member 0 has no hint; members 1-4 append a hint naming a letter drawn uniformly from the options
    with ``rng`` (seed it per question, e.g. ``np.random.default_rng([seed, index])``, for a
    reproducible draw).

    Returns
    -------
    (list of str, list of str or None)
        The 5 prompts and the hinted letter of each member (None for member 0).
    """
    if len(choices) < 2:
        raise InputError(f"a multiple-choice question needs at least 2 options, got {len(choices)}")
    letters = option_letters(len(choices))
    hinted: list[str | None] = [None] + [letters[int(i)] for i in rng.integers(0, len(letters), size=len(XIONG_HINTS) - 1)]
    prompts = [xiong_prompt(question, choices, hint=h + (x or ""), answer_type=answer_type)
               for h, x in zip(XIONG_HINTS, hinted, strict=True)]
    return prompts, hinted
