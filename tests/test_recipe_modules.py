"""Each framework's recipe in one idiom module, ``backends/<framework>/recipe.py``: short, free
of the harness's bookkeeping, the home of every region ``bench explain`` shows, and called by
the backend's adapter rather than copied into it (docs/design.md, Layout). Read as text:
nothing here imports a framework."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from benchmarks.explain import MARK, STEPS

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 250
#: words of the report, the result and timing, which live in the adapter around the recipe
FORBIDDEN = re.compile(r"result|report|describe|seconds|json|perf_counter|timeline|\btime\b",
                       re.IGNORECASE)
#: the frameworks whose recipe.py exists (extend this list, one name per framework)
FRAMEWORKS = ["pytorch", "slim", "keras"]


def _recipe(framework: str) -> Path:
    return ROOT / "backends" / framework / "recipe.py"


def _functions(path: Path) -> set[str]:
    """The functions and classes ``path`` defines at module level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.name for n in tree.body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _uses_of_recipe(path: Path) -> set[str]:
    """The recipe names ``path`` uses: ``recipe.NAME`` and ``from ...recipe import NAME``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "recipe":
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[-1] == "recipe":
            used.update(alias.name for alias in node.names)
    return used


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_recipe_module_is_short_and_free_of_bookkeeping(framework):
    text = _recipe(framework).read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_LINES
    found = [(number, m.group(0)) for number, line in enumerate(text.splitlines(), 1)
             for m in [FORBIDDEN.search(line)] if m]
    assert not found, f"backends/{framework}/recipe.py names bookkeeping: {found}"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_explained_region_is_cut_from_the_recipe_module(framework):
    for step in STEPS:
        assert step.regions[framework][0] == f"backends/{framework}/recipe.py", step.key
    others = [p.relative_to(ROOT) for p in sorted((ROOT / "backends" / framework).glob("*.py"))
              if p.name != "recipe.py"
              and any(MARK.match(line) for line in p.read_text(encoding="utf-8").splitlines())]
    assert not others, f"regions outside recipe.py: {others}"


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_the_adapter_calls_the_recipe_and_keeps_no_copy(framework):
    folder = ROOT / "backends" / framework
    defined = {name for name in _functions(_recipe(framework)) if not name.startswith("_")}
    used, copies = set(), {}
    for path in sorted(folder.glob("*.py")):
        if path.name == "recipe.py":
            continue
        used |= _uses_of_recipe(path)
        if defined & _functions(path):
            copies[path.name] = sorted(defined & _functions(path))
    assert not copies, f"the adapter defines recipe functions again: {copies}"
    assert "recipe" in {a.name for n in ast.walk(ast.parse((folder / "backend.py").read_text()))
                        if isinstance(n, ast.ImportFrom) for a in n.names}
    # every function of the recipe is called: by the adapter, or by the recipe itself
    inside = {n.id for n in ast.walk(ast.parse(_recipe(framework).read_text()))
              if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert defined <= used | inside, f"recipe functions nothing calls: {defined - used - inside}"
