"""Every shell and Python example of the README and the documentation is tested.

The code blocks fenced as ``bash``, ``sh``, ``shell``, ``console`` or ``python`` in ``README.md`` and
``docs/**/*.md`` are extracted, and ``docs/examples.toml`` says how each one is tested (its header
explains the fields). A block with no entry fails, and so does an entry whose block is gone, so an
example cannot be added, edited or removed without its test following. A fence with no language fails
too: every block must say whether it is code.

``how = "run"`` executes the block as a user would (``bash -e`` for shell, ``python`` for Python) in an
empty folder, with this checkout's sources first on ``PYTHONPATH``, its ``refcal`` on ``PATH`` and the
private cache folders of ``tests/conftest.py``, after the entry's ``subs`` (literal replacements, e.g. a
``fake:`` model for a real one, a smaller ``--limit``) and after its ``setup`` code. For ``console``
blocks (``$ command`` lines followed by what it prints) and entries with ``output`` (a string found in
a ``text`` block of the same file: that block is the printed output), the printed output is compared
line by line with the block; a line ``...`` stands for any number of lines.
``how = "parse"`` parses every ``refcal`` line of a block with the command line's own parser (options, types,
choices, ranges, method names) without running it: for records of long real runs.
``how = "pytest"`` names the tests that run the block's exact scenario (they need a server, a cluster
or minutes of real-model time); the named test functions must exist.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
MAPPING = ROOT / "docs" / "examples.toml"
CODE_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "console": "console", "python": "python"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository root
    line: int  # 1-based line of the opening fence
    lang: str  # the info string's first word, lower case ("" when none)
    code: str


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def extract_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of one Markdown file (indented fences too: lists, admonitions)."""
    blocks, lines, i = [], path.read_text(encoding="utf-8").splitlines(), 0
    rel = path.relative_to(ROOT).as_posix()
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence = m["indent"], m["fence"]
        lang = (m["info"].strip().split() or [""])[0].lower().lstrip("{.").rstrip("}")
        body, j = [], i + 1
        while j < len(lines) and not (lines[j].strip().startswith(fence) and lines[j].strip().strip(fence[0]) == ""):
            body.append(lines[j][len(indent):] if lines[j].startswith(indent) else lines[j].lstrip())
            j += 1
        blocks.append(Block(rel, i + 1, lang, "\n".join(body) + "\n"))
        i = j + 1
    return blocks


def load_mapping() -> list[dict]:
    entries = tomllib.loads(MAPPING.read_text(encoding="utf-8"))["example"]
    names = [e["name"] for e in entries]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"docs/examples.toml: duplicate names {sorted(dupes)}"
    return entries


ALL_BLOCKS = [b for f in doc_files() for b in extract_blocks(f)]
CODE_BLOCKS = [b for b in ALL_BLOCKS if b.lang in CODE_LANGS]
ENTRIES = load_mapping()


def matches(entry: dict, block: Block) -> bool:
    return entry["file"] == block.file and entry["match"] in block.code


def entry_for(block: Block) -> dict | None:
    found = [e for e in ENTRIES if matches(e, block)]
    assert len(found) <= 1, f"{block.file}:{block.line}: several entries match: {[e['name'] for e in found]}"
    return found[0] if found else None


def _params():
    for b in CODE_BLOCKS:
        e = entry_for(b)
        marks = [pytest.mark.slow] if e and e.get("slow") else []
        yield pytest.param(b, e, id=e["name"] if e else f"UNMAPPED-{b.file}:{b.line}", marks=marks)


#: a fence without a language whose first line looks like this is an untested command: refused
COMMAND_LIKE = re.compile(r"^\s*(\$ |refcal |python3? |make |pip |lm_eval |ray |import |from \S+ import )")


def test_no_command_hides_in_an_unlabelled_fence():
    bare = [f"{b.file}:{b.line}" for b in ALL_BLOCKS if not b.lang and COMMAND_LIKE.match(b.code)]
    assert not bare, f"commands in code fences without a language (label them bash / python and map them): {bare}"


def test_every_entry_has_exactly_one_block():
    for e in ENTRIES:
        hits = [b for b in CODE_BLOCKS if matches(e, b)]
        assert len(hits) == 1, f"docs/examples.toml entry {e['name']!r}: {len(hits)} blocks of {e['file']} " \
                               f"contain {e['match']!r} (it must name exactly one)"
        assert e.get("how") in ("run", "parse", "pytest"), f"entry {e['name']!r}: how must be run, parse or pytest"


@pytest.mark.parametrize(("block", "entry"), list(_params()))
def test_example(block: Block, entry: dict | None, tmp_path, refcal_dirs):
    assert entry is not None, (f"{block.file}:{block.line}: this {block.lang} block has no entry in "
                               f"docs/examples.toml; add one saying how it is tested:\n{block.code}")
    if entry.get("tests") or entry["how"] == "pytest":
        check_named_tests(entry)
    if entry["how"] == "pytest":
        return
    code = block.code
    for old, new in entry.get("subs", []):
        assert old in code, f"entry {entry['name']!r}: substitution {old!r} not found in the block"
        code = code.replace(old, new)
    if entry["how"] == "parse":
        check_command_lines(Block(block.file, block.line, block.lang, code), entry)
        return
    if entry.get("prelude"):
        assert block.lang == "python", f"entry {entry['name']!r}: a prelude is for python blocks"
        code = entry["prelude"] + "\n" + code
    env = example_env(tmp_path)
    if entry.get("setup"):
        run_code("bash", entry["setup"], tmp_path, env, entry)
    if CODE_LANGS[block.lang] == "console":
        run_console(code, tmp_path, env, entry)
        return
    out = run_code(CODE_LANGS[block.lang], code, tmp_path, env, entry)
    if entry.get("output"):
        expected = output_block(block.file, entry["output"])
        compare_output(out, expected, entry["name"])
    if entry.get("rows_in"):
        page = (ROOT / entry["rows_in"]).read_text(encoding="utf-8").splitlines()
        rows = [r for r in out.splitlines() if r.startswith("|") and not r.startswith("|---")]
        assert rows, f"example {entry['name']!r} printed no table rows"
        missing = [r for r in rows if r not in page]
        assert not missing, f"rows printed by {entry['name']!r} but not in {entry['rows_in']}:\n" + "\n".join(missing)


def check_command_lines(block: Block, entry: dict) -> None:
    """Parse every ``refcal`` line as the command line would: command, options, types, choices and ranges,
    and the method names of ``--methods``; nothing runs."""
    import click

    from refcal.calibrate.methods import parse_methods
    from refcal.cli import cli

    text = re.sub(r"\\\n", " ", block.code)
    lines = [ln.split(" #")[0].strip() for ln in text.splitlines()]
    commands = [shlex.split(ln)[1:] for ln in lines if ln.startswith("refcal ")]
    assert commands, f"example {entry['name']!r}: no refcal command line to parse"
    for args in commands:
        try:
            ctx = cli.make_context("refcal", list(args))
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            name, cmd, rest = cli.resolve_command(ctx, rest)
            sub = cmd.make_context(name, rest, parent=ctx)
        except click.ClickException as e:
            pytest.fail(f"example {entry['name']!r}: `refcal {' '.join(args)}` does not parse: {e.format_message()}")
        if sub.params.get("methods"):
            parse_methods(sub.params["methods"])


def check_named_tests(entry: dict) -> None:
    tests = entry.get("tests", [])
    assert tests, f"entry {entry['name']!r}: how = pytest needs tests = ['tests/...py::name', ...]"
    for node in tests:
        file, _, func = node.partition("::")
        path = ROOT / file
        assert path.is_file(), f"entry {entry['name']!r}: {file} does not exist"
        defined = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
        assert func in defined, f"entry {entry['name']!r}: {file} defines no test {func!r}"


def example_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update({"COLUMNS": "100", "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "NO_COLOR": "1",
                "REFCAL_REPO": str(ROOT), "PYTHONHASHSEED": "0"})
    return env


def run_code(lang: str, code: str, cwd: Path, env: dict, entry: dict) -> str:
    cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=entry.get("timeout", 300))
    assert p.returncode == entry.get("exit", 0), (
        f"example {entry['name']!r} exited {p.returncode}\n--- code\n{code}\n--- stdout\n{p.stdout[-4000:]}"
        f"\n--- stderr\n{p.stderr[-4000:]}")
    return p.stdout


def run_console(code: str, cwd: Path, env: dict, entry: dict) -> None:
    """``$ cmd`` lines (continued by a trailing backslash) and the output each one prints."""
    steps: list[tuple[str, list[str]]] = []
    lines = code.splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            assert steps, f"example {entry['name']!r}: console blocks start with a '$ ' command line"
            steps[-1][1].append(lines[i])
            i += 1
            continue
        cmd = lines[i][2:]
        while cmd.endswith("\\") and i + 1 < len(lines):
            i += 1
            cmd = cmd[:-1] + "\n" + lines[i]
        steps.append((cmd, []))
        i += 1
    for cmd, expected in steps:
        out = run_code("bash", cmd, cwd, env, entry)
        if entry.get("compare", True):
            compare_output(out, "\n".join(expected), f"{entry['name']}: $ {cmd}")


def output_block(file: str, marker: str) -> str:
    found = [b for b in ALL_BLOCKS if b.file == file and b.lang == "text" and marker in b.code]
    assert len(found) == 1, f"{file}: {len(found)} text blocks contain the output marker {marker!r}"
    return found[0].code


def compare_output(got: str, expected: str, what: str) -> None:
    """Line by line, trailing spaces ignored; an expected line ``...`` matches any number of lines."""
    g = [x.rstrip() for x in got.rstrip("\n").splitlines()]
    e = [x.rstrip() for x in expected.rstrip("\n").splitlines()]
    assert _match(g, e), (f"the printed output of {what} differs from the docs\n--- docs\n" + "\n".join(e)
                          + "\n--- real\n" + "\n".join(g))


def _match(got: list[str], exp: list[str]) -> bool:
    if not exp:
        return not got
    if exp[0] == "...":
        return any(_match(got[i:], exp[1:]) for i in range(len(got) + 1))
    return bool(got) and got[0] == exp[0] and _match(got[1:], exp[1:])


def test_readme_links_resolve():
    """The README is read on the code host, outside the site: its relative links must name existing files."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (ROOT / target).exists(), f"README.md links to {target}, which does not exist"


def test_readme_table_is_the_kept_default_run():
    """The README's `make run` table equals the kept run of the same setting (docs/results/sciq-cloze-l400)."""
    from refcal.run import load_result

    res = load_result(ROOT / "docs" / "results" / "sciq-cloze-l400")
    labels = {res.label(k): k for k in res.methods}
    labels["temperature scaling (labelled)"] = "ts"
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    start = lines.index("| method | ECE % | AECE % | Brier | NLL | accuracy |")
    rows = [r.strip("|").split("|") for r in lines[start + 2:] if r.startswith("|")][:6]
    assert [labels[r[0].strip()] for r in rows] == ["chat", "base", "naive", "daca", "ts", "daca_agree"]
    for label, *cells in rows:
        m = res.methods[labels[label.strip()]]
        want = [f"{100 * m['ece'].mean:.3f} ± {100 * m['ece'].std:.3f}",
                f"{100 * m['aece'].mean:.3f} ± {100 * m['aece'].std:.3f}",
                f"{m['brier'].mean:.3f}", f"{m['nll'].mean:.3f}", f"{m['accuracy'].mean:.3f}"]
        assert [c.strip() for c in cells] == want, label


def test_architecture_api_sketch_names_exist():
    """docs/ARCHITECTURE.md's public-API sketch (a signature summary, not runnable code): every name it shows
    exists: ``refcal.X``, ``refcal.metrics.<a|b>``, the bare class names, and the fitted attributes and
    methods a fitted calibrator has."""
    import numpy as np

    import refcal

    block = next(b for b in CODE_BLOCKS if b.file == "docs/ARCHITECTURE.md" and "refcal.DACA(" in b.code)
    for path in set(re.findall(r"\brefcal\.(\w+(?:\.\w+)?)", block.code)):
        obj = refcal
        for part in path.split("."):
            assert hasattr(obj, part), f"docs/ARCHITECTURE.md names refcal.{path}, which does not exist"
            obj = getattr(obj, part)
    for group in re.findall(r"refcal\.metrics\.<([\w|\s]+)>", block.code):
        for name in re.split(r"[|\s]+", group.strip()):
            assert hasattr(refcal.metrics, name), f"docs/ARCHITECTURE.md names refcal.metrics.{name}"
    for name in set(re.findall(r"\b([A-Z][a-z]+(?:[A-Z][a-z]+)+)\(", block.code)):
        assert hasattr(refcal, name), f"docs/ARCHITECTURE.md names {name}, which refcal does not export"
    data = refcal.make_synthetic(n=200, seed=0)
    fitted = [refcal.DACA().fit(data.base, data.chat), refcal.VectorScaling().fit(data.chat, data.labels)]
    for name in set(re.findall(r"\b([a-z][a-z_]*_)(?=[\s,/;)])", block.code)):
        assert any(hasattr(c, name) for c in fitted), f"no fitted calibrator has {name}"
    for name in set(re.findall(r"\b([a-z][a-z_]+)\((?:logits|path)?\)", block.code)):
        assert any(callable(getattr(c, name, None)) for c in fitted) or hasattr(refcal, name), name
    assert np.allclose(fitted[0].predict_proba(data.chat).sum(axis=1), 1.0)
