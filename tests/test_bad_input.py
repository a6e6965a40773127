"""What a new user hits first: bad input through the real entry point.

The rule under test: bad input gives ONE line on stderr naming the problem and what to do, a
non-zero exit, no traceback, and no output file (not even a half-written one). Library-level error
tests live in test_scores.py / test_calibrate_io.py; these drive ``refcal.cli.main``.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import refcal
from refcal.cli import main
from refcal.scores import ScoreSet
from refcal.synthetic import make_synthetic

SRC = str(Path(refcal.__file__).resolve().parents[1])


def fails(capsys, argv, *, rc=2, match=()):
    """Run the CLI, check the one-line error contract, return the stderr line."""
    code = main([str(a) for a in argv])
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert code == rc, (code, cap.err)
    assert "Traceback" not in cap.err and "\n" not in err, cap.err
    assert err.startswith("refcal"), err
    for m in (match,) if isinstance(match, str) else match:
        assert m in err, (m, err)
    return err


def scores(path, k=4, n=60, seed=0, labels=True):
    d = make_synthetic(n, k, seed=seed)
    ids = [f"q{i}" for i in range(n)]
    return ScoreSet.from_rows(ids, d.chat.tolist(), d.labels.tolist() if labels else None).save(path)


@pytest.fixture()
def pair(tmp_path):
    """Base and chat score files of the same 200 questions (k = 4), plus a temperature calibrator."""
    d = make_synthetic(200, 4, seed=1)
    ids = [f"q{i}" for i in range(200)]
    base = ScoreSet.from_rows(ids, d.base.tolist(), d.labels.tolist()).save(tmp_path / "base.parquet")
    chat = ScoreSet.from_rows(ids, d.chat.tolist(), d.labels.tolist()).save(tmp_path / "chat.jsonl")
    return base, chat


def _parquet(path, **cols):
    pq.write_table(pa.table(cols), path)
    return path


# ---------------------------------------------------------------------------------------- score files
SCORE_FILES = {
    "empty": (lambda p: p.write_bytes(b""), "the file is empty"),
    "binary garbage": (lambda p: p.write_bytes(bytes(range(256)) * 3), "not UTF-8 text nor Parquet"),
    "corrupt parquet": (lambda p: p.write_bytes(b"PAR1" + bytes(range(200))), "cannot read Parquet"),
    "csv": (lambda p: p.write_text("id,logits\na,1\n"), "not valid JSON"),
    "missing key": (lambda p: p.write_text('{"id": "a", "scores": [1, 2]}\n'), "missing key 'logits'"),
    "nan logit": (lambda p: p.write_text('{"id": "a", "logits": [NaN, 1], "label": 0}\n'), "has logit NaN"),
    "label out of range": (lambda p: p.write_text('{"id": "a", "logits": [0, 1], "label": 5}\n'),
                           "has label 5 but only 2 options"),
    "one option": (lambda p: p.write_text('{"id": "a", "logits": [0], "label": 0}\n'), "at least 2"),
    "null id": (lambda p: p.write_text('{"id": null, "logits": [0, 1], "label": 0}\n'),
                "id None is not a string or integer"),
    # Parquet files with the right column names but wrong column types
    "parquet string labels": (lambda p: _parquet(p, id=["a", "b"], logits=[[1.0, 2.0], [2.0, 1.0]],
                                                 label=["A", "B"]), "label 'A' is not an option index"),
    "parquet string logits": (lambda p: _parquet(p, id=["a", "b"], logits=[["1", "2"], ["2", "1"]]),
                              "logit 0 is '1', not a number"),
    "parquet scalar logits": (lambda p: _parquet(p, id=["a", "b"], logits=[1.0, 2.0]),
                              "'logits' must be a list of numbers"),
    "parquet list ids": (lambda p: _parquet(p, id=[[1], [2]], logits=[[1.0, 2.0], [2.0, 1.0]]),
                         "is not a string or integer"),
    "parquet no logits column": (lambda p: _parquet(p, id=["a"], score=[1.0]), "missing column 'logits'"),
}


@pytest.mark.parametrize("case", list(SCORE_FILES))
def test_bad_score_file(tmp_path, capsys, case):
    make, message = SCORE_FILES[case]
    path = tmp_path / "s.data"
    make(path)
    fails(capsys, ["evaluate", "--scores", path, "--json", tmp_path / "m.json"], match=[str(path), message])
    assert not (tmp_path / "m.json").exists()


def test_utf8_bom_jsonl_is_read(tmp_path, capsys):
    # Windows editors prepend a byte-order mark; it is not part of the JSON and must not be an error
    path = tmp_path / "bom.jsonl"
    path.write_text('{"id": "a", "logits": [0, 1], "label": 1}\n{"id": "b", "logits": [2, 1], "label": 1}\n',
                    encoding="utf-8-sig")
    assert main(["evaluate", "--scores", str(path)]) == 0
    assert "vanilla" in capsys.readouterr().out


def test_directory_and_missing_paths(tmp_path, capsys, pair):
    base, chat = pair
    out = tmp_path / "cal.json"
    fails(capsys, ["fit", "--base", tmp_path, "--chat", chat, "-o", out],
          match=["refcal fit: error:", "is a directory", "refcal fit --help"])
    fails(capsys, ["fit", "--base", tmp_path / "nope.jsonl", "--chat", chat, "-o", out], match="no such file")
    fails(capsys, ["fit", "--base", base, "--chat", chat, "-o", tmp_path], match="is a directory")
    fails(capsys, ["fit", "--base", base, "--chat", chat, "-o", "/refcal-no-such-top-folder/c.json"],
          match=["cannot write the calibrator", "refusing to create the folder /refcal-no-such-top-folder at the "
                 "file-system root"])
    assert not Path("/refcal-no-such-top-folder").exists()
    (tmp_path / "file").write_text("x")
    fails(capsys, ["fit", "--base", base, "--chat", chat, "-o", tmp_path / "file" / "c.json"],
          match=["cannot write the calibrator", "exists and is not a folder"])
    assert not out.exists()
    # a missing folder elsewhere is created, as `apply -o` and `score -o` do
    assert main(["fit", "--base", str(base), "--chat", str(chat), "-o", str(tmp_path / "no" / "dir" / "c.json")]) == 0
    assert (tmp_path / "no" / "dir" / "c.json").is_file()


def test_fit_mismatched_option_counts(tmp_path, capsys, pair):
    base, _ = pair
    chat5 = scores(tmp_path / "chat5.jsonl", k=5, n=200)
    fails(capsys, ["fit", "--base", base, "--chat", chat5, "-o", tmp_path / "c.json"],
          match=["has 4 options in", "but 5 in", "same options"])
    assert not (tmp_path / "c.json").exists()


def test_fit_bad_option_values(tmp_path, capsys, pair):
    base, chat = pair
    fails(capsys, ["fit", "--base", base, "--chat", chat, "--scaling", "vector", "--l2", "-1",
                   "-o", tmp_path / "c.json"], match="l2 must be a finite number >= 0")
    fails(capsys, ["fit", "--base", base, "--chat", chat, "--method", "bayes", "-o", tmp_path / "c.json"],
          match=["'bayes' is not one of", "--help"])
    fails(capsys, ["fit", "--base", base, "-o", tmp_path / "c.json"], match="Missing option '--chat'")
    assert not (tmp_path / "c.json").exists()


# ---------------------------------------------------------------------------------------- calibrators
@pytest.fixture()
def calibrators(tmp_path, pair):
    base, chat = pair
    paths = {}
    for scaling in ("temperature", "vector"):
        paths[scaling] = tmp_path / f"{scaling}.json"
        assert main(["fit", "--base", str(base), "--chat", str(chat), "--scaling", scaling,
                     "-o", str(paths[scaling])]) == 0
    return paths


def _edit(src, dest, fn):
    doc = json.loads(Path(src).read_text())
    fn(doc)
    Path(dest).write_text(json.dumps(doc))
    return dest


CAL_EDITS = {
    "unknown method": (lambda d: d.update(method="platt"), "unknown calibration method 'platt'"),
    "method not a string": (lambda d: d.update(method=["daca"]), "unknown calibration method ['daca']"),
    "unknown hyperparameter": (lambda d: d["hyperparameters"].update(bogus=1), "unknown hyperparameter 'bogus'"),
    "section of wrong type": (lambda d: d.update(parameters=[1.0]), "'parameters' must be a JSON object"),
    "bad scaling": (lambda d: d["hyperparameters"].update(scaling="cubic"), "scaling must be one of"),
}


@pytest.mark.parametrize("case", list(CAL_EDITS))
def test_bad_calibrator_json(tmp_path, capsys, calibrators, pair, case):
    edit, message = CAL_EDITS[case]
    bad = _edit(calibrators["temperature"], tmp_path / "bad.json", edit)
    out = tmp_path / "out.parquet"
    err = fails(capsys, ["apply", "--scores", pair[1], "--calibrator", bad, "-o", out],
                match=[str(bad), message, "refcal fit"])
    assert err.count("re-create it") == 1  # the hint is not repeated by nested wrapping
    assert not out.exists()


def test_unreadable_calibrator_files(tmp_path, capsys, pair):
    base, chat = pair
    empty = tmp_path / "empty.json"
    empty.write_text("")
    fails(capsys, ["evaluate", "--scores", chat, "--calibrator", empty], match="the file is empty")
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(bytes(range(128, 256)))
    fails(capsys, ["evaluate", "--scores", chat, "--calibrator", garbage], match="not valid JSON")
    # the usual mix-up: a score file where the calibrator goes
    for wrong in (base, chat):
        fails(capsys, ["evaluate", "--scores", chat, "--calibrator", wrong],
              match=["this is a score file, not a calibrator", "refcal fit -o"])


def test_vector_calibrator_on_other_option_count(tmp_path, capsys, calibrators):
    chat5 = scores(tmp_path / "chat5.jsonl", k=5)
    out, metrics = tmp_path / "out.parquet", tmp_path / "m.json"
    fails(capsys, ["apply", "--scores", chat5, "--calibrator", calibrators["vector"], "-o", out],
          match=["is vector scaling fitted on 4 options but", "has 5", "fit a calibrator on scores with 5 options"])
    fails(capsys, ["evaluate", "--scores", chat5, "--calibrator", calibrators["vector"], "--json", metrics],
          match="fitted on 4")
    assert not out.exists() and not metrics.exists()


def test_apply_refuses_unknown_output_type_before_work(tmp_path, capsys, pair, calibrators):
    out = tmp_path / "calibrated.txt"
    fails(capsys, ["apply", "--scores", pair[1], "--calibrator", calibrators["temperature"], "-o", out],
          match=["unknown score file type '.txt'", ".parquet or .jsonl"])
    assert not out.exists()
    # checked before the inputs are read: a missing calibrator is not what gets reported
    fails(capsys, ["apply", "--scores", pair[1], "--calibrator", tmp_path / "none.json", "-o", out],
          match="unknown score file type")


# ---------------------------------------------------------------------------------------- report
REPORT_DOCS = {
    "methods a string": ({"methods": "x"}, "'methods' must be a JSON object"),
    "method entry a number": ({"methods": {"chat": 5}}, "methods['chat'] must be an object"),
    "metric a string": ({"methods": {"chat": {"ece": {"mean": "a"}}}}, "methods['chat']['ece']"),
    "fits not lists": ({"fits": {"daca": "x"}}, "fits['daca'] must be a list"),
    "diagnostics subset": ({"diagnostics": {"agree": 3}}, "diagnostics['agree'] must be a JSON object"),
    "n_bins text": ({"config": {"n_bins": "ten"}}, "n_bins must be a positive integer"),
}


@pytest.mark.parametrize("case", list(REPORT_DOCS))
def test_report_malformed_metrics(tmp_path, capsys, case):
    doc, message = REPORT_DOCS[case]
    (tmp_path / "metrics.json").write_text(json.dumps(doc))
    fails(capsys, ["report", tmp_path], match=["metrics.json", message, "refcal run"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # nothing written


def test_report_not_a_run_folder(tmp_path, capsys):
    fails(capsys, ["report", tmp_path / "missing"], match="not a folder")
    fails(capsys, ["report", tmp_path], match="metrics.json: not found")
    (tmp_path / "metrics.json").write_text("{ broken")
    fails(capsys, ["report", tmp_path], match="cannot be read as JSON")
    f = tmp_path / "file.txt"
    f.write_text("x")
    fails(capsys, ["report", f], match="is a file")
    fails(capsys, ["report"], match="Missing argument 'RUN_DIR'")


# ---------------------------------------------------------------------------------------- datasets, demo, top level
def test_datasets_errors(tmp_path, capsys, monkeypatch):
    fails(capsys, ["datasets", "--sdist", tmp_path / "x.tar.gz"], match="does not exist")
    garbage = tmp_path / "bigbench.tar.gz"
    garbage.write_bytes(b"not a tarball")
    monkeypatch.setenv("REFCAL_DATA_DIR", str(tmp_path / "home"))
    err = fails(capsys, ["datasets", "--setup-bigbench", "--sdist", garbage],
                match=["cannot read the BIG-bench archive", "not a valid bigbench-1.0.0.tar.gz"])
    assert "delete it" not in err  # the user's own file must not be deleted on our advice
    assert garbage.exists() and not (tmp_path / "home" / "bigbench").exists()


def test_demo_bad_options(capsys):
    fails(capsys, ["demo", "-k", "1"], match=["refcal demo: error:", "'-k' / '--n-options'", "refcal demo --help"])
    fails(capsys, ["demo", "-n", "5"], match="5 is not in the range x>=100")


def test_top_level(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"refcal, version {refcal.__version__}"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in ("fit", "evaluate", "apply", "report", "datasets", "demo", "run", "score"))
    fails(capsys, ["frobnicate"], match=["No such command 'frobnicate'", "refcal --help"])
    fails(capsys, ["--frob"], match=["No such option '--frob'", "refcal --help"])


def test_no_arguments_shows_help(capsys):
    rc = main([])
    cap = capsys.readouterr()
    assert rc != 0 and "Traceback" not in cap.err
    assert "Commands:" in cap.out + cap.err


# ---------------------------------------------------------------------------------------- safety nets
def _boom(exc):
    def f(*a, **k):
        raise exc
    return f


def test_unexpected_exception_is_one_line(tmp_path, capsys, monkeypatch, pair):
    monkeypatch.setattr("refcal.scores.load_scores", _boom(TypeError("bug in here")))
    argv = ["fit", "--base", pair[0], "--chat", pair[1], "-o", tmp_path / "c.json"]
    fails(capsys, argv, rc=1, match=["internal error (TypeError: bug in here)", "--debug"])
    with pytest.raises(TypeError, match="bug in here"):  # --debug shows the real traceback
        main(["--debug", *map(str, argv)])


def test_os_error_is_one_line(tmp_path, capsys, monkeypatch, pair):
    monkeypatch.setattr("refcal.scores.load_scores",
                        _boom(PermissionError(13, "Permission denied", str(pair[0]))))
    fails(capsys, ["fit", "--base", pair[0], "--chat", pair[1], "-o", tmp_path / "c.json"], rc=1,
          match=[f"{pair[0]}: Permission denied", "permissions"])


def test_multiline_messages_are_folded(tmp_path, capsys, monkeypatch, pair):
    from refcal.errors import InputError

    monkeypatch.setattr("refcal.scores.load_scores", _boom(InputError("first line\nsecond line")))
    fails(capsys, ["fit", "--base", pair[0], "--chat", pair[1], "-o", tmp_path / "c.json"],
          match="first line second line")


def test_ctrl_c(tmp_path, capsys, monkeypatch, pair):
    monkeypatch.setattr("refcal.scores.load_scores", _boom(KeyboardInterrupt()))
    rc = main(["fit", "--base", str(pair[0]), "--chat", str(pair[1]), "-o", str(tmp_path / "c.json")])
    err = capsys.readouterr().err
    assert rc == 130 and "Traceback" not in err
    # click prints one blank line first to end the terminal's ^C echo; the message itself is one line
    assert err.strip().count("\n") == 0 and err.strip().startswith("refcal: interrupted")
    assert not (tmp_path / "c.json").exists()


# ---------------------------------------------------------------------------------------- real processes
def _python(*args, code=None):
    env = {**os.environ, "PYTHONPATH": SRC}
    env.pop("REFCAL_DEBUG", None)
    cmd = [sys.executable, "-c", code] if code else [sys.executable, "-m", "refcal", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_subprocess_error_and_version(tmp_path, pair):
    p = _python("fit", "--base", tmp_path / "missing.jsonl", "--chat", pair[1], "-o", tmp_path / "c.json")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1 and "no such file" in p.stderr and "Traceback" not in p.stderr
    p = _python("bogus")
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "No such command 'bogus'" in p.stderr
    p = _python("--version")
    assert p.returncode == 0 and refcal.__version__ in p.stdout and p.stderr == ""


HEAVY = ("torch", "transformers", "matplotlib", "httpx")


def test_import_stays_light():
    code = (
        "import sys, refcal\n"
        "refcal.DACA, refcal.load_scores, refcal.metrics, refcal.ScoreSet\n"
        "from refcal.cli import main\n"
        "rc = main(['--help'])\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules) or 'none', rc)\n"
    )
    p = _python(code=code)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "none 0"


def test_heavy_module_guard_can_fail():
    # the check above really sees imports: importing one of them is detected
    p = _python(code=f"import sys, matplotlib; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert "matplotlib" in p.stdout


def test_logits_bigger_than_float_range(tmp_path, capsys):
    # 1e400 parses to inf in JSON: an error, not silent probabilities of NaN
    path = tmp_path / "big.jsonl"
    path.write_text('{"id": "a", "logits": [0, 1e400], "label": 0}\n')
    fails(capsys, ["evaluate", "--scores", path], match=[str(path), "has logit +inf"])
