"""Functions stay readable in one sitting: none in the packages runs over 80 lines."""

from __future__ import annotations

import ast

from tests.conftest import ROOT

PACKAGES = ("lepton", "flows", "tasks", "effects", "lepton_core")
MAX_LINES = 80


def long_functions(root=ROOT, limit: int = MAX_LINES) -> list[str]:
    found = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = (node.end_lineno or node.lineno) - node.lineno + 1
                    if n > limit:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({n} lines)")
    return found


def test_no_function_is_over_80_lines():
    assert not long_functions(), "split these: " + "; ".join(long_functions())


def test_the_check_finds_a_long_function(tmp_path):
    (tmp_path / "lepton").mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "lepton" / "long.py").write_text(f"def too_long():\n{body}\n")
    for pkg in PACKAGES[1:]:
        (tmp_path / pkg).mkdir()
    assert long_functions(tmp_path) == ["lepton/long.py:1 too_long (81 lines)"]
