"""The import contracts of pyproject.toml ([tool.importlinter], docs/ARCHITECTURE.md) hold for the package and
catch a deliberately added upward import (run on a copy of the package, so the tree itself is untouched)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"

pytestmark = pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (the dev extra)")


def _lint(tmp_path: Path, edit=None) -> subprocess.CompletedProcess:
    """``lint-imports`` with the project's contracts on a copy of ``src/refcal``, after ``edit(copy)``."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "src" / "refcal", work / "src" / "refcal", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", work / "pyproject.toml")
    if edit is not None:
        edit(work / "src" / "refcal")
    env = {"PATH": str(LINT.parent), "PYTHONPATH": str(work / "src"), "HOME": str(tmp_path)}
    return subprocess.run([str(LINT), "--no-cache"], cwd=work, env=env, capture_output=True, text=True, timeout=300)


def _contract_lines(out: str) -> dict[str, str]:
    return {line.rsplit(" ", 1)[0]: line.rsplit(" ", 1)[1] for line in out.splitlines()
            if line.endswith((" KEPT", " BROKEN"))}


def test_contracts_hold_and_an_upward_import_breaks_them(tmp_path):
    clean = _lint(tmp_path / "clean")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    kept = _contract_lines(clean.stdout)
    assert len(kept) == 4 and set(kept.values()) == {"KEPT"}, clean.stdout

    def upward(pkg: Path) -> None:
        # the score files (a low layer) reaching up into the report
        f = pkg / "scores" / "join.py"
        f.write_text(f.read_text() + "\nfrom ..report import write_report  # noqa: E402,F401\n")

    broken = _lint(tmp_path / "broken", upward)
    assert broken.returncode != 0
    result = _contract_lines(broken.stdout)
    assert result["refcal layers: each imports only the ones below it"] == "BROKEN", broken.stdout
    assert "refcal.scores is not allowed to import refcal.report" in broken.stdout
    assert "- refcal.scores.join -> refcal.report (l." in broken.stdout


def test_a_cycle_inside_a_package_is_caught(tmp_path):
    """A loop between two sibling modules: the layers of the package allow neither direction to be hidden,
    not even in a function body."""

    def cycle(pkg: Path) -> None:
        f = pkg / "scores" / "scoreset.py"
        f.write_text(f.read_text() + "\n\ndef _late():\n    from .join import join_scores  # noqa: F401\n")

    out = _lint(tmp_path, cycle)
    assert out.returncode != 0
    assert _contract_lines(out.stdout)["no import cycles between sibling modules or packages, at any depth"] == "BROKEN"


def test_every_public_submodule_and_lazy_name_resolves():
    """``refcal.<name>`` for every name ``dir(refcal)`` lists (the lazy table must follow the moves)."""
    import refcal

    for name in dir(refcal):
        assert getattr(refcal, name) is not None, name
