"""The exit-code rule, one table over every command (refcal.errors.exit_code_of):

2 = bad input or usage (fix the command or the file), 1 = the operating system refused (permission
denied, ...) or an internal error, 130 = interrupted. Permission denied is 1 whichever command meets it,
on an input or an output, and an unwritable ``run -o`` / ``score -o`` is refused before any slow work.

The commands run in ONE subprocess: as root (this machine) it drops the capabilities that bypass file
permissions (``setpriv``), so chmod'ed files really are refused; as another user chmod suffices.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import refcal
from refcal.calibrate import DACA
from refcal.scores import ScoreSet
from refcal.synthetic import make_synthetic

SRC = os.environ.get("REFCAL_TEST_SRC") or str(Path(refcal.__file__).resolve().parents[1])

_DRIVER = r"""
import contextlib, io, json, sys
from refcal.cli import main
out = []
for argv in json.load(open(sys.argv[1])):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    out.append([rc, err.getvalue()])
json.dump(out, open(sys.argv[2], "w"))
"""


def _files(root: Path) -> dict[str, Path]:
    d = make_synthetic(120, 4, seed=0)
    ids = [f"q{i}" for i in range(120)]
    p = {"base": root / "base.parquet", "chat": root / "chat.parquet", "cal": root / "cal.json",
         "ro": root / "ro", "secret_scores": root / "secret.parquet", "secret_cal": root / "secret_cal.json",
         "data": root / "q.jsonl", "run": root / "run", "ro_cache": root / "ro_cache"}
    ScoreSet.from_rows(ids, d.base.tolist(), d.labels.tolist()).save(p["base"])
    ScoreSet.from_rows(ids, d.chat.tolist(), d.labels.tolist()).save(p["chat"])
    DACA().fit(d.base, d.chat).save(p["cal"])
    shutil.copy(p["chat"], p["secret_scores"])
    shutil.copy(p["cal"], p["secret_cal"])
    p["data"].write_text("".join(json.dumps({"id": f"q{i}", "question": f"Q {i}?", "choices": ["a", "b", "c", "d"],
                                             "label": i % 4}) + "\n" for i in range(40)))
    for k in ("ro", "ro_cache"):
        p[k].mkdir()
    return p


# (name, argv built from the paths, expected exit code, words the one line must hold)
CASES = [
    ("fit -o unwritable", lambda p: ["fit", "--base", p["base"], "--chat", p["chat"], "-o", p["ro"] / "c.json"],
     1, "permission denied"),
    ("apply -o unwritable", lambda p: ["apply", "--scores", p["chat"], "--calibrator", p["cal"], "-o",
                                       p["ro"] / "o.parquet"], 1, "permission denied"),
    ("evaluate --json unwritable", lambda p: ["evaluate", "--scores", p["chat"], "--json", p["ro"] / "m.json"],
     1, "permission denied"),
    ("score -o unwritable", lambda p: ["score", "-m", "fake:b", "-d", p["data"], "--scoring", "letter",
                                       "--no-progress", "-o", p["ro"] / "s.parquet"], 1, "permission denied"),
    ("run -o unwritable", lambda p: ["run", "--base", "fake:b", "--chat", "fake:c", "-d", p["data"], "--scoring",
                                     "letter", "--limit", "0", "--no-progress", "--no-report", "-o",
                                     p["ro"] / "run"], 1, "permission denied"),
    ("score cache unwritable", lambda p: ["score", "-m", "fake:b", "-d", p["data"], "--scoring", "letter",
                                          "--no-progress", "--cache-dir", p["ro_cache"], "-o", p["run"] / "s.parquet"],
     1, "permission denied"),
    ("fit unreadable scores", lambda p: ["fit", "--base", p["base"], "--chat", p["secret_scores"], "-o",
                                         p["run"] / "c.json"], 1, "permission denied"),
    ("evaluate unreadable scores", lambda p: ["evaluate", "--scores", p["secret_scores"]], 1, "permission denied"),
    ("apply unreadable calibrator", lambda p: ["apply", "--scores", p["chat"], "--calibrator", p["secret_cal"],
                                               "-o", p["run"] / "o.parquet"], 1, "permission denied"),
    ("report into a read-only run folder", lambda p: ["report", p["ro_run"]], 1, "permission denied"),
    # the other side of the rule: a path that is wrong, not refused, is bad input
    ("fit missing scores", lambda p: ["fit", "--base", p["base"], "--chat", p["run"] / "nope.parquet"], 2, "nope"),
    ("apply missing calibrator", lambda p: ["apply", "--scores", p["chat"], "--calibrator", p["run"] / "nope.json",
                                            "-o", p["run"] / "o.parquet"], 2, "nope"),
    ("evaluate --json onto a folder", lambda p: ["evaluate", "--scores", p["chat"], "--json", p["ro"]], 2, ""),
    ("report missing folder", lambda p: ["report", p["run"] / "nope"], 2, "nope"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("perm")
    p = _files(root)
    (root / "run").mkdir()
    from refcal.cli import main

    p["ro_run"] = root / "ro_run"
    assert main(["run", "--base", "fake:b", "--chat", "fake:c", "-d", str(p["data"]), "--scoring", "letter",
                 "--limit", "0", "--no-progress", "--no-report", "--cache-dir", str(root / "cache0"),
                 "-o", str(p["ro_run"])]) == 0
    os.chmod(p["ro_run"], 0o555)
    os.chmod(p["ro"], 0o555)
    os.chmod(p["ro_cache"], 0o555)
    os.chmod(p["secret_scores"], 0)
    os.chmod(p["secret_cal"], 0)
    argvs = [[str(a) for a in build(p)] for _, build, _, _ in CASES]
    (root / "argv.json").write_text(json.dumps(argvs))
    cmd = [sys.executable, "-c", _DRIVER, str(root / "argv.json"), str(root / "out.json")]
    if os.geteuid() == 0:  # root ignores file modes: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.fail("running as root needs setpriv (util-linux) to test permission errors")
        cmd = ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", *cmd]
    env = {**os.environ, "PYTHONPATH": SRC, "REFCAL_CACHE_DIR": str(root / "cache")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return {name: tuple(r) for (name, *_), r in zip(CASES, json.loads((root / "out.json").read_text()), strict=True)}, root


@pytest.mark.parametrize("name,rc,words", [(c[0], c[2], c[3]) for c in CASES], ids=[c[0] for c in CASES])
def test_exit_code_rule(results, name, rc, words):
    got, _ = results
    code, err = got[name]
    line = err.strip()
    assert code == rc, (code, err)
    assert "\n" not in line and line.startswith("refcal") and "Traceback" not in err, err
    assert words.lower() in line.lower(), line
    assert ".run." not in line and "/.run" not in line, line  # no hidden temporary folder named


def test_unwritable_run_folder_is_refused_before_any_scoring(results):
    _, root = results
    assert not list((root / "cache").rglob("*.jsonl")) or all(
        "ro_cache" in str(x) for x in (root / "cache").rglob("*.jsonl")), "scored before refusing -o"
