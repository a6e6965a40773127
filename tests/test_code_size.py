"""The house rules of docs/ARCHITECTURE.md that a reshape must keep: no source file over 450 lines and no
function over 120 lines (a longer one is a module's worth of work)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "refcal"
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 120


def test_no_source_file_over_the_limit():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES}
    assert not long, f"split these modules (over {MAX_FILE_LINES} lines): {long}"


def test_no_function_over_the_limit():
    long = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.name} ({n} lines)")
    assert not long, f"split these functions (over {MAX_FUNCTION_LINES} lines): {long}"
