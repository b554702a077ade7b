"""docs/ names the test behind every claim: each name it cites must be a test that exists.
README is a product page for users: no test names, no commit hashes, about 200 lines, and
the two commands CI runs.

A renamed or deleted test would otherwise leave a claim in docs backed by nothing.
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


def _docs() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs").glob("*.md"))}


def test_every_test_the_docs_cite_exists():
    defined = _defined_tests()
    everything = set()
    for name, text in _docs().items():
        cited = _cited(text)
        everything |= cited
        missing = sorted(cited - defined)
        assert not missing, f"docs/{name} cites tests that do not exist: {missing}"
        files = sorted(f for f in _cited_files(text) if not (ROOT / "tests" / f).is_file())
        assert not files, f"docs/{name} cites test files that do not exist: {files}"
    assert len(everything) > 100, "docs should cite the tests behind their claims"


def test_readme_is_a_product_page_with_the_two_commands_ci_runs():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not _cited(text) and not _cited_files(text), "README names tests: they belong in docs/"
    hashes = re.findall(r"(?<![\w/.-])[0-9a-f]{7,40}(?![\w-])", text)
    assert not hashes, f"README names commits: {hashes}"
    assert len(text.splitlines()) <= 220
    assert max(map(len, text.splitlines())) <= 120
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    test_command = re.search(r"^python3 -m venv .*pytest -q$", ci, re.M).group(0)
    assert f"```bash\n{test_command}\n```" in text
    run_command = test_command.split(" && .venv/bin/python -m pytest")[0].replace(
        "-q -e '.[test]'", "-e '.[all]'") + " && .venv/bin/bench run"
    assert f"```bash\n{run_command}\n```" in text
    for link in re.findall(r"\]\((docs/[^)]+)\)", text):
        assert (ROOT / link).is_file(), f"README links to a missing {link}"


def test_the_check_finds_a_missing_name():
    assert _cited("see `test_a_claim_nobody_wrote` and tests/test_x.py::test_y[keras]") == {
        "test_a_claim_nobody_wrote", "test_y"}
    assert "test_a_claim_nobody_wrote" not in _defined_tests()
