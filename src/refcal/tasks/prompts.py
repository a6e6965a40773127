"""Questions -> scoring requests: the paper's instruction templates, few-shot prefixes, cloze contexts.

Letter prompts (the paper's format, DACA arXiv 2505.16690, Table 5)::

    <instruction>
    [few-shot examples, each "Question: ...\\nA: ...\\n...\\nAnswer: <letter>\\n\\n"]
    Question: <question>
    A: <option 1>
    B: <option 2>
    Answer:

The instruction and few-shot examples form the :attr:`LetterRequest.prefix` shared by every
request, so a backend can compute its key-value cache once. The prompt ends with ``"Answer:"``
without a trailing space: the letter is then scored as the next token, and backends say whether
they use the " A" or the "A" token (see :mod:`refcal.backends.transformers`).

Cloze requests (lm-evaluation-harness style) use no instruction: the context is
``[few-shot]Question: <question>\\nAnswer:`` and each continuation is ``" " + option text``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..data.base import Question
from ..errors import InputError
from .requests import ClozeRequest, LetterRequest

#: The five instructions of the paper's Table 5, verbatim (template ids 1..5).
TEMPLATES: dict[int, str] = {
    1: "The following are multiple-choice questions. Give ONLY the correct option, no other words or explanation:",
    2: "Answer the following multiple choice questions by selecting ONLY the correct option:",
    3: "For each of the following multiple choice questions, provide just the correct letter:",
    4: "Select the correct answer for each of the following questions:",
    5: "Choose the right option for each multiple-choice question below. Respond with the letter only:",
}


def option_letters(k: int) -> tuple[str, ...]:
    """Labels of ``k`` options: A, B, ..., Z, then AA, AB, ... (spreadsheet style)."""
    out = []
    for i in range(k):
        s, n = "", i + 1
        while n:
            n, r = divmod(n - 1, 26)
            s = chr(65 + r) + s
        out.append(s)
    return tuple(out)


def format_question(q: Question) -> str:
    """``"Question: ...\\nA: ...\\n...\\nAnswer:"`` for one question (no trailing space)."""
    _check_question(q)
    letters = option_letters(len(q.choices))
    lines = [f"Question: {q.question.strip()}"]
    lines += [f"{letter}: {str(c).strip()}" for letter, c in zip(letters, q.choices, strict=True)]
    lines.append("Answer:")
    return "\n".join(lines)


def letter_requests(
    questions: Sequence[Question],
    *,
    template: int = 1,
    chat: bool = False,
    fewshot: Sequence[Question] = (),
) -> list[LetterRequest]:
    """One :class:`LetterRequest` per question.

    Parameters
    ----------
    questions : sequence of Question
    template : int
        Instruction id 1..5 (:data:`TEMPLATES`).
    chat : bool
        Ask the backend to wrap ``prefix + prompt`` in the model's chat template (a user turn
        followed by the generation prompt). ``False`` reproduces the paper.
    fewshot : sequence of Question
        Solved examples (each needs a label) placed after the instruction, shared by all requests.
    """
    instruction = instruction_text(template)
    shots = "".join(f"{format_question(ex)} {_answer_letter(ex)}\n\n" for ex in fewshot)
    prefix = f"{instruction}\n{shots}"
    return [
        LetterRequest(prefix, format_question(q), option_letters(len(q.choices)), chat=bool(chat))
        for q in questions
    ]


def cloze_requests(questions: Sequence[Question], *, fewshot: Sequence[Question] = ()) -> list[ClozeRequest]:
    """One :class:`ClozeRequest` per question: context ``"Question: ...\\nAnswer:"``, continuations
    ``" <option text>"``; few-shot examples (with their correct option text) precede the context."""
    shots = "".join(f"{_cloze_context(ex)} {str(ex.choices[_label(ex)]).strip()}\n\n" for ex in fewshot)
    out = []
    for q in questions:
        _check_question(q)
        conts = tuple(" " + str(c).strip() for c in q.choices)
        out.append(ClozeRequest(shots + _cloze_context(q), conts))
    return out


def instruction_text(template: int) -> str:
    """The instruction of template ``template`` (1..5)."""
    if isinstance(template, bool) or template not in TEMPLATES:
        raise InputError(f"template {template!r} does not exist; choose one of 1..{len(TEMPLATES)} (or 'all')")
    return TEMPLATES[template]


def _cloze_context(q: Question) -> str:
    return f"Question: {q.question.strip()}\nAnswer:"


def _check_question(q: Question) -> None:
    if len(q.choices) < 2:
        raise InputError(f"question {q.id!r} has {len(q.choices)} option(s); every question needs at least 2")


def _label(ex: Question) -> int:
    if not 0 <= ex.label < len(ex.choices):
        raise InputError(f"few-shot example {ex.id!r} has no valid label ({ex.label}); few-shot examples need answers")
    return ex.label


def _answer_letter(ex: Question) -> str:
    return option_letters(len(ex.choices))[_label(ex)]
