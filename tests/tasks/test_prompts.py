"""Prompt construction: exact strings, templates, few-shot prefixes, cloze requests, errors."""

from __future__ import annotations

import pytest

from refcal.backends.base import ClozeRequest, LetterRequest
from refcal.data.base import Question
from refcal.errors import InputError
from refcal.tasks.prompts import TEMPLATES, cloze_requests, format_question, letter_requests, option_letters

Q = Question("q1", "What is 2 + 2?", ("3", "4", "5"), label=1, subject="math")
EX = Question("e1", "Sky colour?", ("green", "blue"), label=1)


def test_template_one_is_the_papers_text():
    assert TEMPLATES[1] == (
        "The following are multiple-choice questions. Give ONLY the correct option, no other words or explanation:"
    )
    assert sorted(TEMPLATES) == [1, 2, 3, 4, 5]
    assert len(set(TEMPLATES.values())) == 5


def test_letter_request_exact_text():
    (r,) = letter_requests([Q], template=1)
    assert r == LetterRequest(
        prefix=TEMPLATES[1] + "\n",
        prompt="Question: What is 2 + 2?\nA: 3\nB: 4\nC: 5\nAnswer:",
        letters=("A", "B", "C"),
        chat=False,
    )


@pytest.mark.parametrize("t", [2, 3, 4, 5])
def test_other_templates_change_only_the_instruction(t):
    (r1,) = letter_requests([Q], template=1)
    (rt,) = letter_requests([Q], template=t, chat=True)
    assert rt.prefix == TEMPLATES[t] + "\n"
    assert rt.prompt == r1.prompt
    assert rt.chat is True


def test_fewshot_prefix_holds_solved_examples_and_is_shared():
    reqs = letter_requests([Q, EX], template=3, fewshot=[EX])
    shot = "Question: Sky colour?\nA: green\nB: blue\nAnswer: B\n\n"
    assert reqs[0].prefix == TEMPLATES[3] + "\n" + shot
    assert reqs[0].prefix == reqs[1].prefix


def test_option_letters_beyond_z():
    letters = option_letters(28)
    assert letters[:3] == ("A", "B", "C")
    assert letters[25:] == ("Z", "AA", "AB")
    assert option_letters(2) == ("A", "B")


def test_options_are_stripped_and_k_follows_the_question():
    q = Question("q", "  Pick one ", (" x ", "y", "z", "w", "v"))
    text = format_question(q)
    assert text == "Question: Pick one\nA: x\nB: y\nC: z\nD: w\nE: v\nAnswer:"


def test_cloze_requests():
    (r,) = cloze_requests([Q])
    assert r == ClozeRequest("Question: What is 2 + 2?\nAnswer:", (" 3", " 4", " 5"))
    (r,) = cloze_requests([Q], fewshot=[EX])
    assert r.context == "Question: Sky colour?\nAnswer: blue\n\nQuestion: What is 2 + 2?\nAnswer:"


def test_errors():
    with pytest.raises(InputError, match="template 6 does not exist"):
        letter_requests([Q], template=6)
    with pytest.raises(InputError, match="template True"):
        letter_requests([Q], template=True)
    with pytest.raises(InputError, match="at least 2"):
        letter_requests([Question("x", "?", ("only",))])
    with pytest.raises(InputError, match="few-shot example 'nolabel'"):
        letter_requests([Q], fewshot=[Question("nolabel", "?", ("a", "b"))])
    with pytest.raises(InputError, match="few-shot example"):
        cloze_requests([Q], fewshot=[Question("nolabel", "?", ("a", "b"))])
