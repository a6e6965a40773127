"""The one-pipeline reshape (issue 19) changed no number: the ``metrics.json`` of a fake-backend multiple-choice run
(``--methods no-generation``) and of a fake free-form run equal those the previous code wrote
(``tests/fixtures/reshape``, made by its ``make_fixtures.py`` before the reshape), key renames aside:

* free-form ``p_true`` -> ``chat`` (the chat model's P(True), what calibrators transform) and ``chat`` ->
  ``likelihood`` (the answer's mean token probability), everywhere a method key appears;
* added: ``daca_agree`` fit records say whether each temperature hit its bound, ``mutual``'s carry its
  projection divergence, free-form results list their evaluation units; the free-form ``confidence`` note
  names the new keys;
* added since: the few-label methods (``ADDED_METHODS``) and the metrics package's newer metrics
  (``ADDED_METRICS``), left out of the comparison only where the fixture has no such key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from refcal.cli import main

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "reshape"
RENAMES = {"free-form": {"p_true": "chat", "chat": "likelihood"}, "multiple-choice": {}}
ADDED_FIT_KEYS = {"temperature_agree_at_bound", "temperature_disagree_at_bound", "divergence"}
#: methods and metrics that came after the fixtures: compared only where the fixture has them
ADDED_METHODS = {"platt", "isotonic", "histogram", "daca_k"}
ADDED_METRICS = {"smooth_ece", "classwise_ece", "debiased_ece", "brier_reliability", "brier_resolution",
                 "brier_uncertainty", "lac_coverage", "lac_size", "aps_coverage", "aps_size"}
#: the sharper, biased fake chat model the fixtures were made with
CHAT = ["--model-option", "chat.scale=3", "--model-option", "chat.bias=[0.8]"]


def _renamed(d: dict, names: dict[str, str]) -> dict:
    return {names.get(k, k): v for k, v in d.items()}


def _trim(new: object, old: object) -> object:
    """``new`` without the keys of :data:`ADDED_METHODS` / :data:`ADDED_METRICS` that ``old`` lacks (recursively)."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {k: _trim(v, old.get(k)) for k, v in new.items()
                if k in old or k not in ADDED_METHODS | ADDED_METRICS}
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        return [_trim(a, b) for a, b in zip(new, old, strict=True)]
    return new


def _run(tmp_path: Path, data: str, extra: list[str]) -> dict:
    out = tmp_path / "run"
    assert main(["run", "--base", "fake:b", "--chat", "fake:c", "-d", str(FIXTURES / data), "--no-progress",
                 "--no-report", "--cache-dir", str(tmp_path / "cache"), "-o", str(out), *extra, *CHAT]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.parametrize(("name", "kind", "extra"), [
    ("mc", "multiple-choice", ["--scoring", "letter", "--methods", "no-generation", "--limit", "0"]),
    ("ff", "free-form", ["--limit", "0"]),
])
def test_metrics_equal_the_previous_code(tmp_path, name, kind, extra):
    old = json.loads((FIXTURES / f"{name}_metrics.json").read_text())
    names = RENAMES[kind]
    # the fixture's method keys renamed where they name methods, so that _trim pairs each method with its own
    like_new = {k: _renamed(v, names) if k in ("methods", "method_labels", "selective", "unavailable", "fallbacks",
                                               "fits") and isinstance(v, dict) else v for k, v in old.items()}
    for part in ("bootstrap", "freeform"):
        if isinstance(old.get(part), dict) and isinstance(old[part].get("methods"), dict):
            like_new[part] = {**old[part], "methods": _renamed(old[part]["methods"], names)}
    new = _trim(_run(tmp_path, f"{name}_data.jsonl", extra), like_new)
    for key in ("methods", "method_labels", "selective", "unavailable", "fallbacks"):
        assert _renamed(old.get(key, {}), names) == new.get(key, {}), key
    if old.get("bootstrap"):
        assert {**old["bootstrap"], "methods": _renamed(old["bootstrap"]["methods"], names)} == new["bootstrap"]
    for key in ("diagnostics", "calibrator", "premise", "has_labels", "n_questions", "n_eval", "n_units", "protocol",
                "parse_failures"):
        assert old.get(key) == new.get(key), key
    assert old.get("units") in ([], None, new["units"])
    assert set(_renamed(old["fits"], names)) == set(new["fits"])
    for method, recs in _renamed(old["fits"], names).items():
        trimmed = [{k: v for k, v in r.items() if k not in ADDED_FIT_KEYS or k in o} for r, o in zip(new["fits"][method], recs,
                                                                                                   strict=True)]
        assert recs == trimmed, method
    if kind == "multiple-choice":
        assert all({"temperature_agree_at_bound", "temperature_disagree_at_bound"} <= set(r)
                   for r in new["fits"]["daca_agree"])
    if kind == "free-form":
        ff_old, ff_new = old["freeform"], new["freeform"]
        assert _renamed(ff_old["methods"], names) == ff_new["methods"]
        for a, b in zip(ff_old["examples"], ff_new["examples"], strict=True):
            assert {**a, "confidence": _renamed(a["confidence"], names)} == b
        same = set(ff_old) - {"methods", "examples", "confidence"}
        assert {k: ff_old[k] for k in same} == {k: ff_new[k] for k in same}
        assert new["config"]["task"] == "free-form" and new["config"]["chat_template"] is True
        assert new["config"]["methods"] == [names.get(k, k) for k in old["config"]["methods"]] or \
            set(new["config"]["methods"]) == {names.get(k, k) for k in old["config"]["methods"]}
