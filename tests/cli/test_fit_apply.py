"""`refcal fit / apply / evaluate` (issue 22, items 5, 14, 15): the task kind every method records, a tampered
daca_agree file, and logits apply may write."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refcal.calibrate import load_calibrator
from refcal.cli import main
from refcal.scores import ScoreSet, load_scores
from refcal.synthetic import make_synthetic
from refcal.tasks.freeform import FREEFORM_TASK

LABEL_FREE = ("daca", "naive", "daca_agree", "mutual")


def _files(tmp_path, *, freeform: bool, n: int = 200, seed: int = 0):
    """Base / chat score files: free-form P(True) 2-vectors, or 2-option multiple-choice logits."""
    d = make_synthetic(n, 2, seed=seed)
    meta = {"task": FREEFORM_TASK} if freeform else {}
    ids = [f"q{i}" for i in range(n)]
    paths = []
    for role, logits in (("base", d.base), ("chat", d.chat)):
        p = tmp_path / f"{'ff' if freeform else 'mc'}_{role}.parquet"
        ScoreSet.from_rows(ids, logits.tolist(), d.labels.tolist(), meta=meta).save(p)
        paths.append(str(p))
    return paths


@pytest.mark.parametrize("method", [*LABEL_FREE, "ts"])
def test_every_method_records_the_task_it_was_fitted_on(tmp_path, method, capsys):
    ff_base, ff_chat = _files(tmp_path, freeform=True)
    mc_base, mc_chat = _files(tmp_path, freeform=False, seed=1)
    base = ["--base", ff_base] if method in LABEL_FREE else []
    for kind, chat in (("free-form", ff_chat), ("multiple-choice", mc_chat)):
        cal = tmp_path / f"{kind}.json"
        b = base and ["--base", ff_base if kind == "free-form" else mc_base]
        assert main(["fit", "--method", method, *b, "--chat", chat, "-o", str(cal)]) == 0
        assert json.loads(cal.read_text())["task"] == kind == load_calibrator(cal).task_
    apply_base = ["--base", ff_base] if method == "daca_agree" else []
    ok = tmp_path / "ok.parquet"
    assert main(["apply", "--scores", ff_chat, "--calibrator", str(tmp_path / "free-form.json"), *apply_base,
                 "-o", str(ok)]) == 0
    capsys.readouterr()
    apply_base = ["--base", mc_base] if method == "daca_agree" else []
    assert main(["apply", "--scores", mc_chat, "--calibrator", str(tmp_path / "free-form.json"), *apply_base,
                 "-o", str(tmp_path / "no.parquet")]) == 2
    err = capsys.readouterr().err
    assert "fitted on free-form scores but" in err and "holds multiple-choice scores" in err
    assert len(err.strip().splitlines()) == 1


def test_a_method_of_the_other_kind_is_refused_by_fit(tmp_path, capsys):
    d = make_synthetic(100, 4, seed=0)
    ids = [str(i) for i in range(100)]
    paths = {}
    for role, x in (("base", d.base), ("chat", d.chat)):
        paths[role] = tmp_path / f"{role}.parquet"
        ScoreSet.from_rows(ids, x.tolist(), d.labels.tolist(), meta={"task": FREEFORM_TASK}).save(paths[role])
    assert main(["fit", "--method", "daca_vector", "--base", str(paths["base"]), "--chat", str(paths["chat"]),
                 "-o", str(tmp_path / "c.json")]) == 2
    assert "does not apply to free-form questions" in capsys.readouterr().err


def test_a_tampered_daca_agree_file_is_one_line_exit_2(tmp_path, capsys):
    base, chat = _files(tmp_path, freeform=False)
    cal = tmp_path / "agree.json"
    assert main(["fit", "--method", "daca_agree", "--base", base, "--chat", chat, "-o", str(cal)]) == 0
    doc = json.loads(cal.read_text())
    doc["hyperparameters"]["temperature_bounds"] = [1e-310, 1e4]
    doc["parameters"]["temperature_agree"] = 1e-308
    cal.write_text(json.dumps(doc))
    capsys.readouterr()
    for cmd in (["apply", "--scores", chat, "--base", base, "--calibrator", str(cal), "-o", str(tmp_path / "o.parquet")],
                ["evaluate", "--scores", chat, "--base", base, "--calibrator", str(cal)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert "beyond the floating-point range" in err and len(err.strip().splitlines()) == 1, err


def test_apply_never_writes_logits_beyond_1e100(tmp_path):
    """T = 0.001 (within the bounds) on logits near 1e100: the log-probabilities reach -2e103; apply writes
    -1e100 there (probability 0 either way) and refcal reads its own output back."""
    ids = [f"q{i}" for i in range(6)]
    rows = [[1e100, -1e100, 0.0], [1.0, 2.0, 3.0]] * 3
    chat = tmp_path / "chat.parquet"
    ScoreSet.from_rows(ids, rows, [0, 2] * 3).save(chat)
    base, chat_fit = _files(tmp_path, freeform=False)
    cal = tmp_path / "daca.json"
    assert main(["fit", "--method", "ts", "--chat", chat_fit, "-o", str(cal)]) == 0
    doc = json.loads(cal.read_text())
    doc["temperature"] = doc["parameters"]["temperature"] = 0.001
    doc["n_options"] = 3
    cal.write_text(json.dumps(doc))
    out = tmp_path / "out.parquet"
    assert main(["apply", "--scores", str(chat), "--calibrator", str(cal), "-o", str(out)]) == 0
    got = load_scores(out).logits
    assert np.all(got >= -1e100) and got.min() == -1e100
    np.testing.assert_allclose(np.exp(got).sum(axis=1), 1.0)
