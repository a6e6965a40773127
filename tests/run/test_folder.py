"""The run folder as written through `refcal run` (fake models): what it may contain, and how it is placed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import refcal.report
from refcal.cli import main

SECRETS = ("alice", "s3cr3t", "SECRETKEY", "TOKENVALUE")


def _data(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Question {i}? #{i % 4}",
                                        "choices": ["a", "b", "c", "d"], "label": i % 4}) + "\n" for i in range(40)))
    return path


def _argv(data, out, *extra):
    return ["run", "--base", "fake:b", "--chat", "fake:c", "-d", str(data), "--scoring", "letter", "--limit", "0",
            "--no-progress", "-o", str(out), *extra]


def test_credentials_in_api_base_never_reach_the_run_folder(tmp_path, capsys):
    api_base = "http://alice:s3cr3t@127.0.0.1:9/v1?api_key=SECRETKEY&api-version=2024-06-01&access_token=TOKENVALUE"
    out = tmp_path / "run"
    assert main(_argv(_data(tmp_path), out, "--api-base", api_base)) == 0
    shown = capsys.readouterr()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "metrics.json", "report.md", "report.html"}
    for p in files:
        blob = p.read_bytes()
        assert not [s for s in SECRETS if s.encode() in blob], p
    for s in SECRETS:
        assert s not in shown.out + shown.err
    config = json.loads((out / "config.json").read_text())
    assert config["api_base"] == "http://127.0.0.1:9/v1?api-version=2024-06-01"  # the public form is kept
    assert json.loads((out / "metrics.json").read_text())["config"]["api_base"] == config["api_base"]


def test_judge_credentials_are_sent_but_never_stored(tmp_path, capsys, monkeypatch):
    """The free-form judge at ``--judge-api-base`` with user info and a key parameter: HTTP Basic is sent
    (no API key is set), nothing of the credentials reaches the run folder or the terminal."""
    from api_server import ScriptedServer

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    data = tmp_path / "ff.jsonl"
    data.write_text("".join(json.dumps({"question": f"Which thing is number {i}?", "answers": [str(i)]}) + "\n"
                            for i in range(12)))
    reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"}, "finish_reason": "stop"}]}
    with ScriptedServer(lambda path, req: (200, reply)) as srv:
        base = srv.url.replace("http://", "http://alice:s3cr3t@") + "?api_key=SECRETKEY"
        out = tmp_path / "run"
        assert main(["run", "--dataset", str(data), "--base", "fake:base", "--chat", "fake:chat", "--methods",
                     "chat", "--judge", "openai:judge", "--judge-api-base", base, "--no-progress",
                     "-o", str(out)]) == 0, capsys.readouterr().err
    assert srv.auth and set(srv.auth) == {"Basic YWxpY2U6czNjcjN0"}  # base64("alice:s3cr3t")
    shown = capsys.readouterr()
    for p in [p for p in out.rglob("*") if p.is_file()]:
        assert not [s for s in SECRETS if s.encode() in p.read_bytes()], p
    assert not [s for s in SECRETS if s in shown.out + shown.err]


@pytest.mark.parametrize("overwrite", [False, True], ids=["exclusive", "overwrite"])
def test_two_runs_finishing_onto_one_folder(tmp_path, monkeypatch, capsys, overwrite):
    """Run B starts and finishes while run A writes its report (past A's "already exists" check): A must
    not delete B's folder; without --overwrite A exits 2 with one line, and both keep their cached scores."""
    data, out = _data(tmp_path), tmp_path / "run"
    extra = ("--overwrite",) if overwrite else ()
    original = refcal.report.write_report
    calls = []

    def racing(run_dir, *a, **kw):
        calls.append(run_dir)
        if len(calls) == 1:  # run A, just before its rename: run B goes from start to finish
            assert main(_argv(data, out, "--seed", "1", *extra)) == 0
        return original(run_dir, *a, **kw)

    monkeypatch.setattr(refcal.report, "write_report", racing)
    code = main(_argv(data, out, *extra))
    err = capsys.readouterr().err.strip()
    seed = json.loads((out / "config.json").read_text())["seed"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    if overwrite:
        assert code == 0 and seed == 0  # A replaced B, as --overwrite asks
    else:
        assert code == 2, err
        assert err.startswith("refcal: error:") and "created by another run" in err and "\n" not in err
        assert seed == 1 and (out / "report.html").is_file()  # B's folder, complete
        monkeypatch.setattr(refcal.report, "write_report", original)
        assert main(_argv(data, tmp_path / "run2")) == 0  # A's work again, from the cache


def test_metrics_json_records_the_commit_and_library_versions(tmp_path, capsys):
    import subprocess
    from importlib import metadata

    from refcal.run import load_result

    out = tmp_path / "run"
    assert main(_argv(_data(tmp_path), out)) == 0
    prov = json.loads((out / "metrics.json").read_text())["provenance"]
    head = subprocess.run(["git", "-C", str(Path(refcal.report.__file__).parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or None
    assert prov["commit"] == head and (prov["dirty"] is None) == (head is None)
    for name in ("refcal", "numpy", "torch", "transformers"):
        assert prov["versions"][name] == metadata.version(name)
    assert load_result(out).provenance == prov  # read back with the rest of the document
