"""README names the test behind every claim: each name it cites must be a test that exists.

A renamed or deleted test would otherwise leave a claim in README backed by nothing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _defined_tests() -> set[str]:
    names = set()
    for path in (ROOT / "tests").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def _cited(text: str) -> set[str]:
    """``test_...`` names README cites (``file.py::test_x`` or a bare ``test_x``), without
    a parametrisation suffix."""
    return {m.group(1) for m in re.finditer(r"(?<![\w/.])(test_[A-Za-z0-9_]+)(?:\[[^\]]*\])?", text)
            if not m.group(1).endswith("_")}


def _cited_files(text: str) -> set[str]:
    return set(re.findall(r"tests/(test_[A-Za-z0-9_]+\.py)", text))


def test_every_test_readme_cites_exists():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    cited = _cited(text)
    assert len(cited) > 20, "README should cite the tests behind its claims"
    missing = sorted(cited - _defined_tests())
    assert not missing, f"README cites tests that do not exist: {missing}"
    files = sorted(f for f in _cited_files(text) if not (ROOT / "tests" / f).is_file())
    assert not files, f"README cites test files that do not exist: {files}"


def test_the_check_finds_a_missing_name():
    assert _cited("see `test_a_claim_nobody_wrote` and tests/test_x.py::test_y[keras]") == {
        "test_a_claim_nobody_wrote", "test_y"}
    assert "test_a_claim_nobody_wrote" not in _defined_tests()
