"""BIG-bench set-up (download, hash check, extraction, no-op) on a tiny fake sdist, loaders, CLI listing."""

import hashlib
import io
import json
import os
import tarfile
from collections import Counter

import pytest

from refcal.cli import main
from refcal.data import bigbench, list_datasets, load_dataset
from refcal.errors import DatasetError

TQA = {"examples": [
    {"input": "Is the sky green?", "target_scores": {"No.": 1, "Yes.": 0, "Sometimes.": 0}},
    {"input": "Do fish fly?", "target_scores": {"Mostly not.": 1, "Yes.": 0}},
]}
MQA = {"examples": [{"input": "1 + 1 = ?", "target_scores": {"1": 0, "2": 1, "3": 0, "4": 0, "5": 0}}]}
TQG = {"examples": [{"Question": "Is the sky green?", "True answers": ["No"], "False answers": ["Yes"]}]}


def _fake_sdist(path, files):
    with tarfile.open(path, "w:gz") as tar:
        for rel, doc in files.items():
            data = json.dumps(doc).encode()
            info = tarfile.TarInfo("bigbench-1.0.0/bigbench/benchmark_tasks/" + rel)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture()
def data_home(refcal_dirs):
    """The test's private data home (tests/conftest.py), with the loaders' memo cleared around the test."""
    for f in (bigbench.load_truthfulqa_mc, bigbench.load_mathqa):
        f.cache_clear()
    yield refcal_dirs.data
    for f in (bigbench.load_truthfulqa_mc, bigbench.load_mathqa):
        f.cache_clear()


def test_missing_files_tell_the_setup_command(data_home):
    with pytest.raises(DatasetError, match=r"run `refcal datasets --setup-bigbench` once"):
        load_dataset("truthfulqa-mc")
    info = {i.name: i for i in list_datasets()}
    assert not info["mathqa"].available and info["mathqa"].setup == "refcal datasets --setup-bigbench"
    assert info["mmlu"].available


def test_fetch_from_sdist_then_noop_and_load(tmp_path, data_home):
    sdist = _fake_sdist(tmp_path / "bb.tar.gz", {
        "truthful_qa/task_mc.json": TQA, "elementary_math_qa/question_only/task.json": MQA,
        "truthful_qa/questions.json": TQG,
        "other_task/task.json": {"examples": []}})
    root = bigbench.fetch(sdist=sdist)
    assert root == data_home / "bigbench" and bigbench.is_fetched()
    assert not (root / "other_task").exists()  # only the needed files are kept
    assert sdist.exists()  # a user-supplied archive is not deleted
    sdist.unlink()
    assert bigbench.fetch() == root  # no-op: no archive, no download needed

    tqa = load_dataset("truthfulqa-mc")
    assert [q.id for q in tqa] == ["0", "1"]
    assert [q.choices[q.label] for q in tqa] == ["No.", "Mostly not."]
    assert sorted(tqa[0].choices) == sorted(TQA["examples"][0]["target_scores"])
    (mqa,) = load_dataset("mathqa")
    assert mqa.choices == ("1", "2", "3", "4", "5") and mqa.label == 1  # source order kept
    assert all(i.available for i in list_datasets())


def test_download_checks_the_hash(tmp_path, data_home, monkeypatch):
    sdist = _fake_sdist(tmp_path / "bb.tar.gz", {"truthful_qa/task_mc.json": TQA,
                                                 "elementary_math_qa/question_only/task.json": MQA,
                                                 "truthful_qa/questions.json": TQG})
    url = sdist.as_uri()
    with pytest.raises(DatasetError, match="has SHA-256 .* retry, or pass a verified copy with --sdist"):
        bigbench.fetch(url=url)
    assert not list((data_home / "bigbench").glob("*.tar.gz*"))  # no partial archive left behind
    monkeypatch.setattr(bigbench, "SDIST_SHA256", hashlib.sha256(sdist.read_bytes()).hexdigest())
    root = bigbench.fetch(url=url)
    assert bigbench.is_fetched(root) and not list(root.glob("*.tar.gz"))  # downloaded archive deleted


def test_incomplete_or_broken_archives(tmp_path, data_home):
    partial = _fake_sdist(tmp_path / "p.tar.gz", {"truthful_qa/task_mc.json": TQA})
    with pytest.raises(DatasetError, match="lacks elementary_math_qa/question_only/task.json"):
        bigbench.fetch(sdist=partial)
    broken = tmp_path / "b.tar.gz"
    broken.write_bytes(b"not a tarball")
    with pytest.raises(DatasetError, match="cannot read the BIG-bench archive"):
        bigbench.fetch(sdist=broken)
    with pytest.raises(DatasetError, match="no such file"):
        bigbench.fetch(sdist=tmp_path / "nope.tar.gz")


@pytest.mark.real_data
def test_real_bigbench_sizes():
    for f in (bigbench.load_truthfulqa_mc, bigbench.load_mathqa):
        f.cache_clear()
    if not bigbench.is_fetched() and not os.environ.get("CI"):  # `make test` fetches them; CI must not skip
        pytest.skip("BIG-bench files not set up; run `refcal datasets --setup-bigbench`")
    tqa = load_dataset("truthfulqa-mc")
    assert len(tqa) == 299 and {len(q.choices) for q in tqa} == {2, 3, 4, 5}
    # the source lists the true answer first; after the id-seeded shuffle it is spread out
    assert max(Counter(q.label for q in tqa).values()) < 100
    mqa = load_dataset("mathqa")
    assert len(mqa) == 7688 and sum(len(q.choices) == 5 for q in mqa) == 7500
    for qs in (tqa, mqa):
        assert len({q.id for q in qs}) == len(qs) and all(0 <= q.label < len(q.choices) for q in qs)


def test_cli_table_json_and_subjects(data_home, capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "mmlu" in out and "test 14042, validation 1531, dev 285" in out
    assert "run `refcal datasets --setup-bigbench`" in out  # marked: the fake home has no BIG-bench files
    assert main(["datasets", "--json"]) == 0
    doc = {d["name"]: d for d in json.loads(capsys.readouterr().out)}
    assert doc["hellaswag"]["splits"] == {"validation": 10042} and doc["mathqa"]["available"] is False
    assert main(["datasets", "--subjects"]) == 0
    assert len(capsys.readouterr().out.split()) == 57


def test_cli_setup_bigbench(tmp_path, data_home, capsys):
    sdist = _fake_sdist(tmp_path / "bb.tar.gz", {"truthful_qa/task_mc.json": TQA,
                                                 "elementary_math_qa/question_only/task.json": MQA,
                                                 "truthful_qa/questions.json": TQG})
    assert main(["datasets", "--setup-bigbench", "--sdist", str(sdist)]) == 0
    assert "ready in" in capsys.readouterr().out and bigbench.is_fetched()
    assert main(["datasets", "--sdist", str(sdist)]) == 2  # --sdist alone is a usage error
