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
    "unknown method": (lambda d: d.update(method="beta"), "unknown calibration method 'beta'"),
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
    "n_bins text": ({"config": {"n_bins": "ten"}}, "n_bins must be an integer from 1 to 1000"),
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
def test_datasets_errors(tmp_path, capsys, refcal_dirs):
    fails(capsys, ["datasets", "--sdist", tmp_path / "x.tar.gz"], match="does not exist")
    garbage = tmp_path / "bigbench.tar.gz"
    garbage.write_bytes(b"not a tarball")
    err = fails(capsys, ["datasets", "--setup-bigbench", "--sdist", garbage],
                match=["cannot read the BIG-bench archive", "not a valid bigbench-1.0.0.tar.gz"])
    assert "delete it" not in err  # the user's own file must not be deleted on our advice
    assert garbage.exists() and not (refcal_dirs.data / "bigbench").exists()


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


def _break_loading(monkeypatch, exc):
    """Make reading score files raise ``exc``, on the in-memory and the streaming path of `fit` alike."""
    monkeypatch.setattr("refcal.scores.load_scores", _boom(exc))
    monkeypatch.setattr("refcal.streaming.is_streamable", _boom(exc))


def test_unexpected_exception_is_one_line(tmp_path, capsys, monkeypatch, pair):
    _break_loading(monkeypatch, TypeError("bug in here"))
    argv = ["fit", "--base", pair[0], "--chat", pair[1], "-o", tmp_path / "c.json"]
    fails(capsys, argv, rc=1, match=["internal error (TypeError: bug in here)", "--debug"])
    with pytest.raises(TypeError, match="bug in here"):  # --debug shows the real traceback
        main(["--debug", *map(str, argv)])


def test_os_error_is_one_line(tmp_path, capsys, monkeypatch, pair):
    _break_loading(monkeypatch, PermissionError(13, "Permission denied", str(pair[0])))
    fails(capsys, ["fit", "--base", pair[0], "--chat", pair[1], "-o", tmp_path / "c.json"], rc=1,
          match=[f"{pair[0]}: Permission denied", "permissions"])


def test_multiline_messages_are_folded(tmp_path, capsys, monkeypatch, pair):
    from refcal.errors import InputError

    _break_loading(monkeypatch, InputError("first line\nsecond line"))
    fails(capsys, ["fit", "--base", pair[0], "--chat", pair[1], "-o", tmp_path / "c.json"],
          match="first line second line")


def test_ctrl_c(tmp_path, capsys, monkeypatch, pair):
    _break_loading(monkeypatch, KeyboardInterrupt())
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
        "refcal.AgreementDACA, refcal.MutualCalibration, refcal.BaseCalProj\n"
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


# ---------------------------------------------------------------------------------------- issue 9 (hardening)
def test_fit_vector_and_matrix_on_a_small_file(tmp_path, capsys):
    # 20 x 4 scores: L-BFGS-B may stop "abnormally" (seed 7, matrix); the calibrator must still be saved
    for seed in (0, 7):
        d = make_synthetic(20, 4, seed=seed)
        ids = [f"q{i}" for i in range(20)]
        base = ScoreSet.from_rows(ids, d.base.tolist()).save(tmp_path / f"b{seed}.jsonl")
        chat = ScoreSet.from_rows(ids, d.chat.tolist()).save(tmp_path / f"c{seed}.jsonl")
        for scaling in ("vector", "matrix"):
            out = tmp_path / f"{scaling}{seed}.json"
            assert main(["fit", "--base", str(base), "--chat", str(chat), "--scaling", scaling, "-o", str(out)]) == 0
            doc = json.loads(out.read_text())
            assert isinstance(doc["solver"]["converged"], bool)
            assert main(["apply", "--scores", str(chat), "--calibrator", str(out), "-o", str(tmp_path / "o.jsonl")]) == 0
    assert "Traceback" not in capsys.readouterr().err


def test_other_option_count_is_an_explicit_choice(tmp_path, capsys, calibrators):
    chat5 = scores(tmp_path / "chat5.jsonl", k=5)
    out = tmp_path / "out.parquet"
    fails(capsys, ["apply", "--scores", chat5, "--calibrator", calibrators["temperature"], "-o", out],
          match=["was fitted on 4 options but", "has 5", "--allow-other-k"])
    fails(capsys, ["evaluate", "--scores", chat5, "--calibrator", calibrators["temperature"]],
          match="--allow-other-k")
    assert not out.exists()
    assert main(["apply", "--scores", str(chat5), "--calibrator", str(calibrators["temperature"]), "-o", str(out),
                 "--allow-other-k"]) == 0
    assert main(["evaluate", "--scores", str(chat5), "--calibrator", str(calibrators["temperature"]),
                 "--allow-other-k"]) == 0
    capsys.readouterr()
    # vector scaling has one parameter per option: never, flag or not
    fails(capsys, ["apply", "--scores", chat5, "--calibrator", calibrators["vector"], "-o", out, "--allow-other-k"],
          match="vector scaling has one parameter per option")


TAMPERED = {
    "tiny temperature": (lambda d: (d.update(temperature=1e-320), d["parameters"].update(temperature=1e-320)),
                         "temperature must be a number within the solver's bounds"),
    "string temperature": (lambda d: d["parameters"].update(temperature="2.0"), "got '2.0'"),
    "bool temperature": (lambda d: d["parameters"].update(temperature=True), "got True"),
    "future version": (lambda d: d.update(format_version=99), "this build of refcal reads format_version 1"),
    "text version": (lambda d: d.update(format_version="abc"), "format_version 'abc'"),
    "no version": (lambda d: d.pop("format_version"), "has no format_version, but this build of refcal reads"),
    "negative k": (lambda d: d.update(n_options=-3), "n_options must be an integer >= 2, got -3"),
}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_calibrator_is_refused(tmp_path, capsys, calibrators, pair, case):
    edit, message = TAMPERED[case]
    bad = _edit(calibrators["temperature"], tmp_path / "bad.json", edit)
    for out in (tmp_path / "out.parquet", tmp_path / "out.jsonl"):
        fails(capsys, ["apply", "--scores", pair[1], "--calibrator", bad, "-o", out], match=[str(bad), message])
        assert not out.exists()


def test_deeply_nested_calibrator_is_one_line(tmp_path, capsys, pair):
    bad = tmp_path / "deep.json"
    bad.write_text('{"format": "refcal-calibrator", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    fails(capsys, ["apply", "--scores", pair[1], "--calibrator", bad, "-o", tmp_path / "o.parquet"],
          match="nested too deeply")
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"id": "a", "logits": [0, 1], "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    fails(capsys, ["evaluate", "--scores", deep], match=[str(deep), "nested too deeply"])


def test_huge_logits_one_message_for_fit_apply_and_evaluate(tmp_path, capsys, pair, calibrators):
    # finite but beyond 1e100: named as such (not "NaN/+inf"), with the file, by every command alike
    big = tmp_path / "big.jsonl"
    big.write_text('{"id": "q0", "logits": [0, 1e150, 1, 2], "label": 0}\n{"id": "q1", "logits": [0, 1, 2, 3], '
                   '"label": 1}\n')
    errs = [fails(capsys, ["evaluate", "--scores", big]),
            fails(capsys, ["apply", "--scores", big, "--calibrator", calibrators["temperature"],
                           "-o", tmp_path / "o.parquet"]),
            fails(capsys, ["fit", "--base", big, "--chat", big, "-o", tmp_path / "c.json"])]
    for err in errs:
        assert f"{big}: question 'q0' option 1 has logit 1e+150, beyond the allowed range |x| <= 1e+100" in err
        assert "NaN" not in err
    assert len({e.split("error: ", 1)[1] for e in errs}) == 1


def _data_file(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


QROWS = [{"id": f"k{i}", "question": f"Question number {i}? #{i % 3}", "choices": ["a", "b", "c"], "answer": i % 3}
         for i in range(12)]


def test_data_file_id_column_is_used_and_must_be_unique(tmp_path, capsys):
    data = _data_file(tmp_path / "d.jsonl", QROWS)
    out = tmp_path / "s.jsonl"
    assert main(["score", "-m", "fake:x", "-d", str(data), "-o", str(out), "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"k{i}" for i in range(12)]
    assert all(len(r["question_hash"]) == 12 for r in rows)
    dup = _data_file(tmp_path / "dup.jsonl", [*QROWS, {**QROWS[0], "question": "another"}])
    fails(capsys, ["score", "-m", "fake:x", "-d", dup, "-o", tmp_path / "x.jsonl"],
          match=["rows 0 and 12 share the id 'k0'", "--id-col"])
    assert not (tmp_path / "x.jsonl").exists()


def test_join_refuses_different_questions_under_one_id(tmp_path, capsys):
    # two differently ordered copies of one file without ids: row numbers pair different questions
    plain = [{k: v for k, v in r.items() if k != "id"} for r in QROWS]
    a = _data_file(tmp_path / "a.jsonl", plain)
    b = _data_file(tmp_path / "b.jsonl", plain[::-1])
    sa, sb = tmp_path / "sa.parquet", tmp_path / "sb.parquet"
    for data, out in ((a, sa), (b, sb)):
        assert main(["score", "-m", "fake:x", "-d", str(data), "-o", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    fails(capsys, ["fit", "--base", sa, "--chat", sb, "-o", tmp_path / "c.json"],
          match=["has different question texts in", "question_hash", "keyed by an id column"])
    assert not (tmp_path / "c.json").exists()
    # with ids, the reordered copy joins question to question
    c = _data_file(tmp_path / "c.jsonl", QROWS[::-1])
    sc = tmp_path / "sc.parquet"
    assert main(["score", "-m", "fake:y", "-d", str(_data_file(tmp_path / "i.jsonl", QROWS)), "-o", str(sa),
                 "--no-progress"]) == 0
    assert main(["score", "-m", "fake:x", "-d", str(c), "-o", str(sc), "--no-progress"]) == 0
    assert main(["fit", "--base", str(sa), "--chat", str(sc), "-o", str(tmp_path / "c.json")]) == 0


def test_latin1_csv_is_one_clean_line(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_bytes('question,choices,answer\nCaf\xe9 or th\xe9?,"[""caf\xe9"", ""th\xe9""]",0\n'.encode("latin-1"))
    fails(capsys, ["score", "-m", "fake:x", "-d", path, "-o", tmp_path / "s.jsonl"],
          match=[str(path), "is not UTF-8 text", "Latin-1", "iconv -f latin1 -t utf-8 d.csv > d-utf8.csv"])


def test_column_errors_name_the_flags(tmp_path, capsys):
    path = tmp_path / "d.csv"
    path.write_text('q,opts,answer\nWhy?,"[""a"", ""b""]",0\n')
    fails(capsys, ["score", "-m", "fake:x", "-d", path, "-o", tmp_path / "s.jsonl"],
          match=["question column 'question' not found in d.csv", "--question-col"])
    fails(capsys, ["score", "-m", "fake:x", "-d", path, "-o", tmp_path / "s.jsonl", "--question-col", "q"],
          match=["--choices-col", "--option-cols"])
    fails(capsys, ["score", "-m", "fake:x", "-d", path, "-o", tmp_path / "s.jsonl", "--question-col", "q",
                   "--option-cols", "a,b"], match=["option column 'a' not found", "--option-cols"])


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_respect_the_umask(tmp_path, pair, umask):
    base, chat = pair
    old = os.umask(umask)
    try:
        out = tmp_path / "out"
        files = [out / "cal.json", out / "s.parquet", out / "s.jsonl", out / "m.json"]
        assert main(["fit", "--base", str(base), "--chat", str(chat), "-o", str(files[0])]) == 0
        for f in files[1:3]:
            assert main(["apply", "--scores", str(chat), "--calibrator", str(files[0]), "-o", str(f)]) == 0
        assert main(["evaluate", "--scores", str(chat), "--calibrator", str(files[0]), "--json", str(files[3])]) == 0
        for f in files:
            assert f.stat().st_mode & 0o777 == 0o666 & ~umask, (f, oct(f.stat().st_mode))
        assert out.stat().st_mode & 0o777 == 0o777 & ~umask
        from refcal._io import make_temp_dir

        assert make_temp_dir(".run.", tmp_path).stat().st_mode & 0o777 == 0o777 & ~umask
    finally:
        os.umask(old)


def test_score_defaults_agree_with_run(tmp_path, capsys):
    from refcal.options import default_scoring

    assert default_scoring("fake:x") == "cloze" and default_scoring("openai:gpt") == "letter"
    data = _data_file(tmp_path / "d.jsonl", QROWS)
    out = tmp_path / "s.parquet"
    assert main(["score", "-m", "fake:x", "-d", str(data), "-o", str(out), "--no-progress", "--limit", "0"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 12 questions" in printed and "(cloze" in printed and "template" not in printed
    from refcal.scores import load_scores

    assert load_scores(out).meta["scoring"] == "cloze"
    assert main(["score", "-m", "fake:x", "-d", str(data), "-o", str(out), "--no-progress", "--limit", "5",
                 "--scoring", "letter"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 5 questions" in printed and "(template 1, letter" in printed
    fails(capsys, ["score", "-m", "fake:x", "-d", data, "-o", out, "-t", "all"], match="letter scoring only")


def test_help_names_exit_codes_and_every_option_has_help(capsys):
    import click

    from refcal.cli import COMMANDS, cli

    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for code in ("0 success", "1 the operating system refused", "2 bad input or usage", "130 interrupted"):
        assert code in text
    ctx = click.Context(cli)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        bare = [p.name for p in cmd.params if isinstance(p, click.Option) and not p.help]
        assert not bare, (name, bare)


def test_outputs_at_the_file_system_root_are_refused_before_any_work(tmp_path, capsys, pair, calibrators, monkeypatch):
    import refcal.calibrate

    def never(*a, **k):
        raise AssertionError("work started before the output path was checked")

    monkeypatch.setattr(refcal.calibrate, "load_calibrator", never)
    monkeypatch.setattr("refcal.data.load_dataset", never)
    top = "/refcal-no-such-top-folder"
    fails(capsys, ["apply", "--scores", pair[1], "--calibrator", calibrators["temperature"], "-o", f"{top}/o.parquet"],
          match=["cannot write the calibrated scores", "at the file-system root"])
    fails(capsys, ["score", "-m", "fake:x", "-d", "sciq", "-o", f"{top}/s.parquet"],
          match=["cannot write the scores", "at the file-system root"])
    (tmp_path / "file").write_text("x")
    fails(capsys, ["score", "-m", "fake:x", "-d", "sciq", "-o", tmp_path / "file" / "s.parquet"],
          match="exists and is not a folder")
    assert not Path(top).exists()
