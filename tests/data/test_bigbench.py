"""BIG-bench set-up (download, hash check, extraction, no-op) on a tiny fake sdist, loaders, CLI listing."""

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

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
    with pytest.raises(DatasetError, match=r"optional and not set up .* run `refcal datasets --setup-bigbench "
                                           r"--sdist PATH` once"):
        load_dataset("truthfulqa-mc")
    info = {i.name: i for i in list_datasets()}
    for name in ("truthfulqa-mc", "mathqa", "truthfulqa-gen"):
        assert not info[name].available and info[name].setup == "refcal datasets --setup-bigbench --sdist PATH"
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


def test_cli_table_json_and_subjects(data_home, capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "mmlu" in out and "test 14042, validation 1531, dev 285" in out
    # the fake home has no BIG-bench files: the three sets are marked optional, with their set-up command
    assert out.count("optional, needs set-up: `refcal datasets --setup-bigbench --sdist PATH`") == 3
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


def test_setup_from_a_folder_of_task_files_or_an_extracted_sdist(tmp_path, data_home, capsys):
    docs = {"truthful_qa/task_mc.json": TQA, "elementary_math_qa/question_only/task.json": MQA,
            "truthful_qa/questions.json": TQG}
    extracted = tmp_path / "x" / "bigbench-1.0.0" / "bigbench" / "benchmark_tasks"
    for rel, doc in docs.items():
        (extracted / rel).parent.mkdir(parents=True, exist_ok=True)
        (extracted / rel).write_text(json.dumps(doc))
    assert main(["datasets", "--setup-bigbench", "--sdist", str(tmp_path / "x")]) == 0
    assert bigbench.is_fetched() and [q.label for q in load_dataset("mathqa")] == [1]
    assert (extracted / "truthful_qa/task_mc.json").exists()  # the user's folder is left alone


def test_setup_from_a_folder_refuses_missing_or_broken_files(tmp_path, data_home, capsys):
    folder = tmp_path / "tasks"
    (folder / "truthful_qa").mkdir(parents=True)
    (folder / "truthful_qa" / "task_mc.json").write_text(json.dumps(TQA))
    assert main(["datasets", "--setup-bigbench", "--sdist", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks elementary_math_qa/question_only/task.json" in err
    (folder / "elementary_math_qa" / "question_only").mkdir(parents=True)
    (folder / "elementary_math_qa" / "question_only" / "task.json").write_text("{not json")
    (folder / "truthful_qa" / "questions.json").write_text(json.dumps(TQG))
    assert main(["datasets", "--setup-bigbench", "--sdist", str(folder)]) == 2
    assert "is not a BIG-bench task file" in capsys.readouterr().err
    assert not bigbench.is_fetched() and not list((data_home / "bigbench").rglob("*.json"))  # nothing half-set-up


@pytest.mark.parametrize("name", ["truthfulqa-mc", "mathqa", "truthfulqa-gen"])
def test_run_on_an_optional_set_that_is_not_set_up_names_the_command(name, data_home, tmp_path, capsys):
    code = main(["run", "--dataset", name, "--base", "fake:base", "--chat", "fake:chat", "--limit", "8",
                 "-o", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "optional" in err and "`refcal datasets --setup-bigbench --sdist PATH`" in err
    assert not (tmp_path / "run").exists()


def _fake_index(tmp_path, sdist):
    """A PEP 503 simple index (file://) whose bigbench page links to ``sdist`` in another folder."""
    files = tmp_path / "files"
    files.mkdir()
    target = files / bigbench.SDIST_NAME
    target.write_bytes(sdist.read_bytes())
    page = tmp_path / "index" / "bigbench"
    page.mkdir(parents=True)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    page.joinpath("index.html").write_text(
        '<html><body><a href="../../files/bigbench-0.9.tar.gz">bigbench-0.9.tar.gz</a>'
        f'<a href="../../files/{bigbench.SDIST_NAME}#sha256={digest}">{bigbench.SDIST_NAME}</a></body></html>')
    return (tmp_path / "index").as_uri(), digest


@pytest.fixture()
def pip_env(monkeypatch):
    """pip sees only what a test configures (no config files, no PIP_* of this machine)."""
    for var in [v for v in os.environ if v.startswith("PIP_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    return monkeypatch


def test_setup_finds_the_archive_through_pips_index(tmp_path, data_home, pip_env):
    sdist = _fake_sdist(tmp_path / "bb.tar.gz", {"truthful_qa/task_mc.json": TQA,
                                                 "elementary_math_qa/question_only/task.json": MQA,
                                                 "truthful_qa/questions.json": TQG})
    index, digest = _fake_index(tmp_path, sdist)
    pip_env.setenv("PIP_INDEX_URL", index)
    assert bigbench.pip_config()["index-url"] == index
    assert bigbench.find_sdist().startswith((tmp_path / "files").as_uri() + "/" + bigbench.SDIST_NAME)
    with pytest.raises(DatasetError, match="has SHA-256"):  # the pinned hash of the real archive
        bigbench.fetch()
    pip_env.setattr(bigbench, "SDIST_SHA256", digest)
    root = bigbench.fetch()
    assert bigbench.is_fetched(root) and not list(root.glob("*.tar.gz*"))
    assert (tmp_path / "files" / bigbench.SDIST_NAME).exists()  # the index's copy is left alone


def test_setup_uses_find_links_and_extra_indexes_and_says_where_it_looked(tmp_path, data_home, pip_env):
    sdist = _fake_sdist(tmp_path / "bb.tar.gz", {"truthful_qa/task_mc.json": TQA})
    index, _ = _fake_index(tmp_path, sdist)
    empty = tmp_path / "empty"
    (empty / "bigbench").mkdir(parents=True)
    (empty / "bigbench" / "index.html").write_text("<html></html>")
    conf = {"index-url": empty.as_uri(), "extra-index-url": f"{(tmp_path / 'missing').as_uri()} {index}"}
    assert bigbench.find_sdist(conf).startswith((tmp_path / "files").as_uri())
    assert bigbench.find_sdist({"find-links": str(tmp_path / "files"), "no-index": "true"}) == \
        (tmp_path / "files" / bigbench.SDIST_NAME).resolve().as_uri()
    with pytest.raises(DatasetError, match=r"the package index no longer offers bigbench-1.0.0.tar.gz \(tried: .*"
                                           r"empty/bigbench/ \(no bigbench-1.0.0.tar.gz\); .*missing/bigbench/"):
        bigbench.find_sdist({"index-url": empty.as_uri(), "extra-index-url": (tmp_path / "missing").as_uri()})


def test_no_registry_address_is_written_in_the_project():
    import re
    import subprocess
    from urllib.parse import urlsplit

    root = Path(bigbench.__file__).resolve().parents[3]
    host = urlsplit(bigbench.pip_default_index()).hostname  # pip's default index, named by pip only
    archive_url = re.compile(r"https?://\S+\.tar\.gz")
    files = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True).stdout.split()
    assert files
    for name in files:
        path = root / name
        if path.suffix not in (".py", ".md", ".toml", ".txt", ".cfg", "") or not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        assert host not in text and not archive_url.search(text), name
