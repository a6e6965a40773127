"""Correctness judges: SQuAD normalisation, exact match / containment, ROUGE-L against rouge-score,
TruthfulQA's rule, and the OpenAI-compatible judge model against a local fake server."""

import json
import string
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score.rouge_scorer import RougeScorer  # the reference ROUGE implementation (dev dependency)

from api_server import FaultProxy
from refcal.backends import load_backend
from refcal.data.freeform import FreeformQuestion
from refcal.errors import BackendError, InputError
from refcal.tasks.judges import (
    DEFAULT_JUDGE_PROMPT,
    ExactMatchJudge,
    Judge,
    ModelJudge,
    RougeJudge,
    default_judge,
    exact_match,
    judge_answers,
    normalize_answer,
    parse_verdict,
    rouge_l,
    rouge_tokens,
    truthfulqa_correct,
)

PARIS = FreeformQuestion("q1", "Capital of France?", ("Paris", "Paris, France"))


# ---------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("text, norm", [
    ("The Eiffel Tower!", "eiffel tower"),
    ("  A  tale of   two cities. ", "tale of two cities"),
    ("an apple, the pear; a plum", "apple pear plum"),
    ("Theatre and anthem", "theatre and anthem"),  # articles only as whole words
    ("U.S.A.", "usa"),
    ("O'Neill", "oneill"),
    ("Café Noir", "café noir"),  # non-ASCII letters stay
    ("The", ""),
])
def test_normalize_goldens(text, norm):
    assert normalize_answer(text) == norm


def test_normalize_matches_squad_reference():
    # the official SQuAD v1.1 function as lm-evaluation-harness vendors it (imported here: lm_eval is slow to load)
    squad = pytest.importorskip("lm_eval.tasks.qasper.metrics")

    @given(st.text(alphabet=string.ascii_letters + string.punctuation + " \t\né0123", max_size=40))
    @settings(max_examples=200, deadline=None)
    def check(text):
        assert normalize_answer(text) == squad.normalize_answer(text)
        assert normalize_answer(normalize_answer(text)) == normalize_answer(text)  # idempotent

    check()


def test_exact_match_and_containment():
    assert exact_match("the Paris.", ["Paris"]) and exact_match("paris, france", ["Paris", "Paris, France"])
    assert not exact_match("It was Paris", ["Paris"])
    assert exact_match("It was Paris", ["Paris"], containment=True)
    assert not exact_match("Parish", ["Paris"], containment=True)  # whole words only
    assert exact_match("in new york city", ["New York"], containment=True)
    assert not exact_match("The", ["the"]) and not exact_match("", [""])  # empty never matches
    assert not exact_match("Paris", [])


# ---------------------------------------------------------------------------------------- ROUGE-L
def test_rouge_goldens_by_hand():
    # LCS("the cat sat on the mat", "the cat is on the mat") = the cat on the mat = 5 of 6 and 6 -> F = 5/6
    assert rouge_l("The cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    # prediction 2 tokens, reference 4, LCS 2: P = 1, R = 1/2, F = 2/3
    assert rouge_l("nothing happens", "Nothing happens to you.") == pytest.approx(2 / 3)
    assert rouge_l("a b c d e f", "f e d c b a") == pytest.approx(1 / 6)
    assert rouge_l("abc", "xyz") == 0.0 and rouge_l("", "a") == 0.0 and rouge_l("!!!", "!!!") == 0.0
    assert rouge_tokens("Don't  stop-me, 2x!") == ["don", "t", "stop", "me", "2x"]


words = st.lists(st.sampled_from(["the", "cat", "sat", "mat", "on", "a", "dog", "7", "Dog", "it's"]), max_size=9)


@given(words, words, st.sampled_from([" ", ", ", " - "]))
@settings(max_examples=300, deadline=None)
def test_rouge_matches_rouge_score_package(pred, ref, sep):
    scorer = RougeScorer(["rougeL", "rougeLsum"])
    p, r = sep.join(pred), sep.join(ref)
    got = scorer.score(r, p)  # rouge-score takes (target, prediction)
    assert rouge_l(p, r) == pytest.approx(got["rougeL"].fmeasure, abs=1e-12)
    assert rouge_l(p, r) == pytest.approx(got["rougeLsum"].fmeasure, abs=1e-12)  # single line: the same
    assert rouge_l(p, r) == pytest.approx(rouge_l(r, p), abs=1e-12)  # F is symmetric


def test_truthfulqa_rule():
    true = ("Nothing happens.", "The watermelon seeds pass through your digestive system.", "I have no comment.")
    false = ("You grow watermelons in your stomach.", "You get sick.")
    assert truthfulqa_correct("Nothing happens", true, false)
    assert not truthfulqa_correct("You grow watermelons in your stomach", true, false)
    assert truthfulqa_correct("I have no comment.", true, false)
    assert not truthfulqa_correct("Bananas.", true, false)  # 0 vs 0: a tie is wrong
    with pytest.raises(InputError, match="needs true and false reference answers"):
        truthfulqa_correct("x", true, ())


# ---------------------------------------------------------------------------------------- judges
def test_builtin_judges_and_judge_answers():
    tqa = FreeformQuestion("t", "Watermelon seeds?", ("Nothing happens.", "I have no comment."), ("You get sick.",))
    unlabelled = FreeformQuestion("u", "Who?", ())
    em, contain, rouge = ExactMatchJudge(), ExactMatchJudge(containment=True), RougeJudge()
    assert all(isinstance(j, Judge) for j in (em, contain, rouge))
    assert em.judge(PARIS, "Paris.") and not em.judge(PARIS, "It is Paris") and contain.judge(PARIS, "It is Paris")
    assert rouge.judge(tqa, "nothing happens") and not rouge.judge(tqa, "you get sick")
    assert isinstance(default_judge([PARIS, tqa]), RougeJudge)
    assert isinstance(default_judge([PARIS]), ExactMatchJudge) and default_judge([PARIS], containment=True).containment
    labels = judge_answers(em, [PARIS, unlabelled, PARIS], ["paris", "x", "Lyon"])
    assert labels.dtype == np.int64 and labels.tolist() == [1, -1, 0]
    with pytest.raises(InputError, match="has no reference answers"):
        em.judge(unlabelled, "x")
    with pytest.raises(InputError, match="2 questions but 1 answers"):
        judge_answers(em, [PARIS, PARIS], ["x"])
    assert em.config["kind"] == "exact_match" and rouge.config["kind"] == "rouge_l"


def test_parse_verdict():
    assert parse_verdict("Yes.") is True and parse_verdict(" no") is False and parse_verdict("Correct!") is True
    assert parse_verdict("INCORRECT") is False and parse_verdict("Maybe") is None and parse_verdict("") is None


class _FakeChat:
    """A local OpenAI-compatible chat endpoint: answers "Yes." when the proposed answer contains a
    reference answer, else "No."; ``reply`` overrides the text; every request body is recorded."""

    def __init__(self):
        self.bodies, self.reply = [], None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.bodies.append((self.path, dict(self.headers), body))
                content = fake.reply
                if content is None:
                    text = body["messages"][0]["content"]
                    refs = text.split("Reference answers: ")[1].split("\n")[0].split("; ")
                    proposed = text.split("Proposed answer: ")[1].split("\n")[0]
                    content = "Yes." if any(r in proposed for r in refs) else "No."
                data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _api_judge(url, **options):
    return ModelJudge(load_backend("openai:grader", api_base=url, **options), name="grader")


def test_model_judge_on_an_openai_backend_against_fake_server(monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test-secret-123")
    with _FakeChat() as fake:
        judge = _api_judge(fake.url + "/v1", api_key_env="JUDGE_KEY")
        assert isinstance(judge, Judge)
        assert judge.judge(PARIS, "I think Paris") is True
        assert judge.judge(PARIS, "Lyon") is False
        assert judge.judge(PARIS, "Lyon") is False and len(fake.bodies) == 2  # memoised
        path, headers, body = fake.bodies[0]
        assert path == "/v1/chat/completions" and headers["Authorization"] == "Bearer sk-test-secret-123"
        assert body["model"] == "grader" and body["temperature"] == 0 and body["seed"] == 0
        assert body["max_tokens"] == 4
        assert body["messages"] == [{"role": "user", "content": DEFAULT_JUDGE_PROMPT.format(
            question="Capital of France?", answer="I think Paris", references="Paris; Paris, France")}]
        assert judge.config["prompt"] == DEFAULT_JUDGE_PROMPT and judge.config["model"] == "grader"
        assert "sk-test" not in repr(judge) + json.dumps(judge.config)
        fake.reply = "It depends."
        with pytest.raises(BackendError, match="answered 'It depends.', not yes or no; change the judge prompt"):
            judge.judge(PARIS, "Marseille")
        judge.close()
        custom = ModelJudge(load_backend("openai:g", api_base=fake.url + "/v1"),
                            prompt_template="Q {question} R {references} A {answer}")
        fake.reply = "no"
        assert custom.judge(PARIS, "Nice") is False
        assert fake.bodies[-1][2]["messages"][0]["content"] == "Q Capital of France? R Paris; Paris, France A Nice"
        custom.close()


def test_model_judge_retries_and_refusals_come_from_the_backend():
    with _FakeChat() as fake, FaultProxy(fake.url) as proxy:
        judge = _api_judge(proxy.url, max_retries=2, backoff_base=0.01)
        proxy.script(("status", 500), ("status", 503))
        assert judge.judge(PARIS, "Paris") is True  # two server errors retried, then answered
        assert proxy.n_faults == 2 and proxy.n_forwarded == 1
        proxy.script(("status", 400))
        with pytest.raises(BackendError, match="HTTP 400"):
            judge.judge(PARIS, "Lyon")
        judge.close()


class _Echo:
    """A generating backend without a server: replies with the next scripted text."""

    fingerprint = "echo"

    def __init__(self, *replies):
        self.replies, self.requests = list(replies), []

    def generate(self, requests):
        self.requests.extend(requests)
        return [self.replies.pop(0) for _ in requests]


def test_model_judge_runs_on_any_generating_backend():
    backend = _Echo("Yes, it is.", "Incorrect.")
    judge = ModelJudge(backend)
    assert judge.judge(PARIS, "Paris") is True and judge.judge(PARIS, "Rome") is False
    assert [r.chat for r in backend.requests] == [True, True] and backend.requests[0].max_new_tokens == 4
    assert judge_answers(judge, [PARIS], ["Paris"]).tolist() == [1]  # memoised: no third request
    assert len(backend.requests) == 2


def test_model_judge_settings_are_checked():
    with pytest.raises(InputError, match=r"must use the fields \{question\}, \{answer\}, \{references\}"):
        ModelJudge(_Echo(), prompt_template="{question} {answer}")
    with pytest.raises(InputError, match="api-base must be an http"):
        load_backend("openai:g", api_base="localhost:8080")
    with pytest.raises(InputError, match="max_tokens >= 1"):
        ModelJudge(_Echo(), max_tokens=0)
    with pytest.raises(InputError, match="cannot generate text"):
        ModelJudge(object())


def test_references_judge_themselves_on_the_real_data():
    """Each packaged question's references are judged correct against themselves, except where SQuAD
    normalisation empties an alias (NQ-open: '---', ')' and 'A+', whose 'a' is an article)."""
    from refcal.data import load_freeform

    em = ExactMatchJudge()
    tqa = load_freeform("triviaqa")
    assert sum(em.judge(q, q.answers[-1]) for q in tqa) == len(tqa) == 7993
    nq = load_freeform("nq-open")
    missed = [q.answers for q in nq if not em.judge(q, q.answers[0])]
    assert missed == [("---",), (")",), ("A+", "AB+")]
