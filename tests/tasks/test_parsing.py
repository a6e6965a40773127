"""Confidence parsers, failure policy, avg_conf, and the free-form prompt texts (METHODS.md §1.2, §1.3, §3)."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from refcal.errors import InputError
from refcal.tasks import prompts_freeform as pf
from refcal.tasks.parsing import (
    ParseResult,
    apply_failure_policy,
    avg_conf,
    count_failures,
    failure_confidence,
    option_index,
    parse_answer_confidence,
    parse_guess_probability,
)


@pytest.mark.parametrize("text, answer, conf, clipped", [
    ("Guess: Paris\nProbability: 0.8", "Paris", 0.8, False),
    ("Guess: Paris\nProbability: .8", "Paris", 0.8, False),
    ("Guess: Paris\nProbability: 80%", "Paris", 0.8, False),
    ("Guess: Paris\nProbability: 80 %", "Paris", 0.8, False),
    ("Guess: Paris\nProbability: 0,8", "Paris", 0.8, False),  # decimal comma
    ("Guess: Paris\nProbability: 1.", "Paris", 1.0, False),
    ("Guess: Paris\nProbability: 80", "Paris", 0.8, False),  # > 1 without % is a percentage
    ("guess: paris probability: 0.25", "paris", 0.25, False),  # one line, lower case
    ('**Guess:** "B"\n**Probability:** 0.9', "B", 0.9, False),  # markdown, quotes
    ("Sure!\nGuess: Mount Everest\nProbability: 1", "Mount Everest", 1.0, False),
    ("Guess: Paris.\nProbability: 0.7\n", "Paris", 0.7, False),  # a final full stop dropped
    ("Guess: x\nProbability: 150%", "x", 1.0, True),
    ("Guess: x\nProbability: 250", "x", 1.0, True),
    ("Guess: x\nProbability: -0.2", "x", 0.0, True),
    ("Guess：x\nProbability：0.5", "x", 0.5, False),  # full-width colons
])
def test_tian_parser_goldens(text, answer, conf, clipped):
    r = parse_guess_probability(text)
    assert r == ParseResult(answer, pytest.approx(conf, abs=1e-12), True, None, clipped)


@pytest.mark.parametrize("text, reason, answer, conf", [
    ("", "empty reply", None, None),
    ("   \n", "empty reply", None, None),
    ("Guess: Paris", "no probability", "Paris", None),
    ("Guess: Paris\nProbability: high", "no probability", "Paris", None),
    ("Probability: 0.3", "no guess", None, 0.3),
    ("Guess:\nProbability: 0.3", "no guess", None, 0.3),
    ("I think it is Paris, 80% sure.", "no guess", None, None),
])
def test_tian_parser_failures(text, reason, answer, conf):
    r = parse_guess_probability(text)
    assert not r.ok and r.reason == reason and r.answer == answer and r.confidence == conf


@pytest.mark.parametrize("text, answer, conf, clipped", [
    ("Answer and Confidence (0-100): B, 80%", "B", 0.8, False),
    ("```Answer and Confidence (0-100): B, 80%```", "B", 0.8, False),
    ("Answer and Confidence (0-100): Paris, France, 90%", "Paris, France", 0.9, False),  # last comma splits
    ("Answer and Confidence (0-100): C, 100", "C", 1.0, False),
    ("Answer and Confidence (0-100): C, 7", "C", 0.07, False),  # 0-100 scale: integers are percentages
    ("Answer and Confidence (0-100): C, 0.8", "C", 0.8, False),  # a decimal <= 1 is a fraction
    ("Answer and Confidence (0-100): C, 85.5%", "C", 0.855, False),
    ("answer and confidence: **A**, 60%.", "A", 0.6, False),
    ("B, 75%", "B", 0.75, False),  # header missing: the first line
    ("Answer and Confidence (0-100): A, 120%", "A", 1.0, True),
    ("Answer & Confidence (0-100): D; 40%", "D", 0.4, False),
])
def test_xiong_parser_goldens(text, answer, conf, clipped):
    r = parse_answer_confidence(text)
    assert r == ParseResult(answer, pytest.approx(conf, abs=1e-12), True, None, clipped)


@pytest.mark.parametrize("text, reason, answer, conf", [
    ("", "empty reply", None, None),
    ("Answer and Confidence (0-100): C", "no confidence", "C", None),
    ("Answer and Confidence (0-100): , 50%", "no answer", None, 0.5),
    ("I am not sure.", "no confidence", "I am not sure", None),
])
def test_xiong_parser_failures(text, reason, answer, conf):
    r = parse_answer_confidence(text)
    assert not r.ok and r.reason == reason and r.answer == answer and r.confidence == conf


# format -> largest rounding error of the printed number
_STYLES = {"{:.4f}": 5e-5, "{:.3f}": 5e-4, "{:.2%}": 5e-5}


@given(p=st.floats(0, 1), style=st.sampled_from(sorted(_STYLES)))
def test_tian_roundtrip(p, style):
    r = parse_guess_probability("Guess: 42\nProbability: " + style.format(p))
    assert r.ok and r.answer == "42" and abs(r.confidence - p) <= _STYLES[style] + 1e-12 and not r.clipped


@given(c=st.integers(0, 100), pct=st.booleans(), ans=st.sampled_from(["A", "B", "Paris", "New York, NY"]))
def test_xiong_roundtrip(c, pct, ans):
    r = parse_answer_confidence(f"Answer and Confidence (0-100): {ans}, {c}{'%' if pct else ''}")
    assert r.ok and r.answer == ans and r.confidence == pytest.approx(c / 100)


@given(st.text(max_size=80))
def test_parsers_never_raise_and_stay_in_range(text):
    for r in (parse_guess_probability(text), parse_answer_confidence(text)):
        assert isinstance(r, ParseResult)
        assert r.ok == (r.reason is None) and (not r.ok or (r.answer and r.confidence is not None))
        assert r.confidence is None or (0.0 <= r.confidence <= 1.0 and not math.isnan(r.confidence))


def test_option_index():
    cases = {"B": 1, "b": 1, "(C)": 2, "D) Paris": 3, "A.": 0, "B: Paris": 1, "Option A": 0, "[d]": 3,
             "E": -1, "Paris": -1, "": -1, "AB": -1}
    assert {a: option_index(a, 4) for a in cases} == cases
    assert option_index(None, 4) == -1 and option_index("E", 5) == 4


def test_failure_policy_and_counts():
    assert failure_confidence(4) == 0.25 and failure_confidence(None) == 0.5 and failure_confidence(2) == 0.5
    with pytest.raises(InputError, match="n_options must be an integer >= 2"):
        failure_confidence(1)
    good = parse_guess_probability("Guess: A\nProbability: 0.9")
    bad = parse_guess_probability("Guess: A")
    assert apply_failure_policy(good, n_options=4) is good
    fixed = apply_failure_policy(bad, n_options=5)
    assert fixed == ParseResult(None, 0.2, False, "no probability")  # still counted as a failure
    assert apply_failure_policy(bad).confidence == 0.5
    clipped = parse_guess_probability("Guess: A\nProbability: 2%%")
    empty = parse_answer_confidence("")
    assert count_failures([good, bad, fixed, empty, clipped]) == {
        "n": 5, "n_failed": 3, "n_clipped": 0, "no probability": 2, "empty reply": 1}
    assert count_failures([parse_guess_probability("Guess: A\nProbability: 3")])["n_clipped"] == 0
    assert count_failures([parse_guess_probability("Guess: A\nProbability: 300")])["n_clipped"] == 1


def test_avg_conf_goldens():
    # members: A .8, A .6, B .9, a .5 (same as A after case folding), C .2
    pred, conf = avg_conf(["A", "A", "B", "a", "C"], [0.8, 0.6, 0.9, 0.5, 0.2])
    assert pred == "A" and conf == pytest.approx((0.8 + 0.6 + 0.5) / 3.0)
    # a failed member (None) counts in neither sum
    assert avg_conf(["B", None, "B", "C", "B"], [0.5, 0.5, 0.5, 1.0, 0.0])[1] == pytest.approx(1.0 / 2.0)
    # all confidences 0: the fraction of members agreeing with member 0
    assert avg_conf(["A", "A", "B", "C", "A"], [0, 0, 0, 0, 0]) == ("A", 0.6)
    # member 0 failed: no prediction, the failure-policy confidence
    assert avg_conf([None, "A", "A", "A", "A"], [None, 0.9, 0.9, 0.9, 0.9], n_options=4) == (None, 0.25)
    assert avg_conf(["D) x", "d", "B", "D", "A"], [1, 1, 1, 1, 1], key=lambda a: str(option_index(a, 4)))[1] == 0.6
    with pytest.raises(InputError, match="one confidence per member"):
        avg_conf(["A"], [0.1, 0.2])
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        avg_conf(["A", "B"], [0.5, 80])


members = st.lists(st.tuples(st.sampled_from(["A", "B", "C", None]), st.floats(0, 1)), min_size=1, max_size=8)


@given(members)
def test_avg_conf_properties(ms):
    answers, confs = [a for a, _ in ms], [c for _, c in ms]
    pred, conf = avg_conf(answers, confs)
    assert pred == answers[0] and 0.0 <= conf <= 1.0 + 1e-12
    if answers[0] is not None:
        # independent re-computation, and: adding a member that agrees never lowers the score
        valid = [(a, c) for a, c in ms if a is not None]
        total = sum(c for _, c in valid)
        expect = (sum(c for a, c in valid if a == answers[0]) / total if total > 0
                  else sum(a == answers[0] for a, _ in valid) / len(valid))
        assert conf == pytest.approx(expect, abs=1e-12)
        if total > 0:
            assert avg_conf(answers + [answers[0]], confs + [0.7])[1] >= conf - 1e-12
        # permuting the hinted members (1..) leaves the score unchanged
        assert avg_conf([answers[0]] + answers[1:][::-1], [confs[0]] + confs[1:][::-1])[1] == pytest.approx(conf)


# ---------------------------------------------------------------------------------------- prompts

# Copied verbatim from METHODS.md (\n as written there), an independent golden for the constants.
METHODS_TIAN_MC = (
    'Provide your best guess for the following question about {subject} selecting one of the options and '
    'the probability that it is correct (0.0 to 1.0). Give ONLY the guess and probability, no other words'
    ' or explanation. For example:\\n\\nGuess: <most likely guess, only the selected option letter; not a c'
    'omplete sentence, just the guess!>\\nProbability: <the probability between 0.0 and 1.0 that your gues'
    's is correct, without any extra commentary whatsoever; just the probability!>'
)
METHODS_TIAN_FREEFORM = (
    'Provide your best guess and the probability that it is correct (0.0 to 1.0) for the following questi'
    'on. Give ONLY the guess and probability, no other words or explanation. For example:\\n\\nGuess: <most'
    ' likely guess, as short as possible; not a complete sentence, just the guess!>\\n Probability: <the p'
    'robability between 0.0 and 1.0 that your guess is correct, without any extra commentary whatsoever; '
    'just the probability!>\\n\\nThe question is: {question}'
)
METHODS_XIONG = (
    'Read the question, provide your answer and your confidence in this answer. Note: The confidence indi'
    'cates how likely you think your answer is true.\\nUse the following format to answer:\\n```Answer and '
    'Confidence (0-100): [ONLY the {answer_type}; not a complete sentence], [Your confidence level, pleas'
    "e only include the numerical number in the range of 0-100]%```\\nOnly the answer and confidence, don'"
    't give me the explanation.'
)
METHODS_P_TRUE = (
    'Question: {question}\\nProposed Answer: {answer}\\nIs the proposed answer:\\n (A) True\\n (B) False\\nThe'
    ' proposed answer is:'
)


def test_constants_equal_methods_md():
    nl = "\\n"
    assert pf.TIAN_MC_PROMPT == METHODS_TIAN_MC.replace(nl, "\n")
    assert pf.TIAN_FREEFORM_PROMPT == METHODS_TIAN_FREEFORM.replace(nl, "\n")
    assert pf.XIONG_PROMPT == METHODS_XIONG.replace(nl, "\n")
    assert pf.P_TRUE_PROMPT == METHODS_P_TRUE.replace(nl, "\n")
    assert pf.XIONG_HINTS == ("", "Hint: I think the answer should be ", "Hint: My teacher tells me the answer is ",
                              "Hint: The textbook shows that answer is ", "Hint: An expert says that the answer is ")
    assert pf.XIONG_HINT_DESCRIPTION == (
        "Note that the hint is only for your reference. Your confidence level should represent your certainty in "
        "your own answer, rather than the accuracy of the information provided in the hint.")
    assert pf.XIONG_LAYOUT == "{prompt}\n{hint_description}\nQuestion: {question}\n{hint}"


def test_prompt_texts_are_verbatim():
    # goldens copied by hand from METHODS.md (\n as written there)
    assert pf.P_TRUE_PROMPT.format(question="Q?", answer="X") == (
        "Question: Q?\nProposed Answer: X\nIs the proposed answer:\n (A) True\n (B) False\nThe proposed answer is:")
    assert pf.p_true_prompt(" Q? ", " X ") == pf.P_TRUE_PROMPT.format(question="Q?", answer="X") + " ("
    assert pf.p_true_prompt("Q?", "X", chat=True) == pf.P_TRUE_PROMPT.format(question="Q?", answer="X")
    assert pf.P_TRUE_LETTERS == ("B", "A")  # index 0 = False, 1 = True
    assert pf.generation_prompt("Who?") == "Question: Who?\nAnswer:"
    assert (pf.GENERATION_MAX_NEW_TOKENS, pf.GENERATION_STOP) == (32, ("\n",))
    ff = pf.tian_freeform_prompt("Who?")
    assert ff.startswith("Provide your best guess and the probability that it is correct (0.0 to 1.0) for the")
    assert "just the guess!>\n Probability: <the probability between 0.0 and 1.0" in ff
    assert ff.endswith("just the probability!>\n\nThe question is: Who?")
    mc = pf.tian_mc_prompt("Which?", ["x", "y"], "college_physics")
    assert mc.startswith("Provide your best guess for the following question about college physics selecting")
    assert "only the selected option letter; not a complete sentence, just the guess!>\nProbability: <" in mc
    assert mc.endswith("just the probability!>\n\nThe question is: Which?\nA: x\nB: y")


def test_xiong_members():
    prompts, hinted = pf.xiong_ensemble_prompts("Which?", ["x", "y", "z"], np.random.default_rng(0))
    assert len(prompts) == 5 and hinted[0] is None and all(h in ("A", "B", "C") for h in hinted[1:])
    assert hinted == [None] + ["ABC"[i] for i in np.random.default_rng(0).integers(0, 3, size=4)]
    head = pf.XIONG_PROMPT.format(answer_type="option letter")
    assert "[ONLY the option letter; not a complete sentence]" in head
    assert prompts[0] == head + "\n\nQuestion: Which?\nA: x\nB: y\nC: z\n"
    assert prompts[2] == (head + "\n" + pf.XIONG_HINT_DESCRIPTION + "\nQuestion: Which?\nA: x\nB: y\nC: z\n"
                          "Hint: My teacher tells me the answer is " + hinted[2])
    again, _ = pf.xiong_ensemble_prompts("Which?", ["x", "y", "z"], np.random.default_rng(0))
    assert again == prompts  # seeded
    assert pf.xiong_prompt("Who?", answer_type="answer").endswith("Question: Who?\n")


def test_template_checks():
    assert pf.p_true_prompt("Q", "A", template="{question} -> {answer}?") == "Q -> A? ("
    with pytest.raises(InputError, match=r"must use the fields \{question\}, \{answer\} and no others"):
        pf.p_true_prompt("Q", "A", template="{question} {answr}")
    with pytest.raises(InputError, match="not a valid format string"):
        pf.p_true_prompt("Q", "A", template="{question} {answer")
    with pytest.raises(InputError, match="at least 2 options"):
        pf.tian_mc_prompt("Q", ["only"])


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_p_true_letters_are_the_tokens_after_the_suffix(alias, monkeypatch):
    """The documented choice holds on both packaged tokenizers: prompt + " (A)" tokenises as the raw
    prompt's tokens followed by the bare letter "A" (one token) and ")"."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from refcal.backends.models import resolve

    tok = AutoTokenizer.from_pretrained(resolve(alias).path)
    prompt = pf.p_true_prompt("What is the capital of France?", "Paris")
    base = tok(prompt, add_special_tokens=False)["input_ids"]
    assert tok.decode(base[-1:]) == " ("
    for letter in pf.P_TRUE_LETTERS:
        (lid,) = tok(letter, add_special_tokens=False)["input_ids"]
        full = tok(prompt + letter + ")", add_special_tokens=False)["input_ids"]
        assert full[: len(base) + 1] == base + [lid]
