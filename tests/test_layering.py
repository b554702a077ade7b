"""docs/design.md, "Layout": ``benchmarks/`` reaches backends only through the registry
(``backends.base``), never by importing a framework backend's package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from backends.base import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
# the framework backends' packages: backends/<fw>/ of every registry entry (keras-jax and
# keras-torch share backends/keras/)
FRAMEWORK_PACKAGES = sorted({entry.partition(":")[0].split(".")[1] for entry in REGISTRY.values()
                             if entry.startswith("backends.")})
# benchmarks/ modules allowed to import a framework backend's package directly, each with
# why: a backend's own benchmark script that is about that framework. None today:
# bench_torch_vs_minimal.py (the PyTorch backend against a hand-written torchvision loop)
# reaches the backend through backends.base.get_backend and imports torch itself.
EXCEPTIONS: dict[str, str] = {}


def backend_imports(source: str) -> list[str]:
    """The framework backend packages (``backends.<fw>...``) that ``source`` imports:
    ``import backends.<fw>``, ``from backends.<fw>... import``, ``from backends import <fw>``,
    at any depth (inside functions too)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if len(parts) > 1 and parts[0] == "backends" and parts[1] in FRAMEWORK_PACKAGES:
                found.append(module)
    return found


def test_the_scan_finds_every_form_of_a_backend_import():
    assert FRAMEWORK_PACKAGES == ["keras", "pytorch", "slim"]
    source = ("import backends.slim.tfrecord\n"
              "from backends.keras import model\n"
              "def f():\n    from backends import pytorch\n"
              "from backends.base import backend_info\n"  # the registry: allowed
              "from backends import native\n")            # framework-free: allowed
    assert backend_imports(source) == ["backends.slim.tfrecord", "backends.keras",
                                       "backends.keras.model", "backends.pytorch"]


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix()
                                        for p in (ROOT / "benchmarks").rglob("*.py")))
def test_benchmarks_reach_backends_only_through_the_registry(path):
    imported = backend_imports((ROOT / path).read_text(encoding="utf-8"))
    if path in EXCEPTIONS:
        return
    assert not imported, (f"{path} imports {', '.join(imported)}: reach the backend through "
                          f"backends.base (a BackendInfo field naming 'module:function'), or "
                          f"list the file in EXCEPTIONS with the reason")


def test_every_bench_command_is_one_module_of_benchmarks_commands():
    """docs/design.md, "Layout": cli.py only parses and maps errors to exit codes; each
    command's flags and handler live in one module of ``benchmarks/commands/``."""
    import argparse

    from benchmarks import cli, commands

    files = {p.stem for p in (ROOT / "benchmarks" / "commands").glob("*.py")} - {"__init__", "shared"}
    assert {m.__name__.rpartition(".")[2] for m in commands.MODULES} == files
    sub = next(a for a in cli.get_args_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert list(cli.COMMANDS) == list(sub.choices)  # one handler per command, in --help's order
    owners = [m for m in commands.MODULES for _ in m.HANDLERS]
    assert len(owners) == len(cli.COMMANDS)  # no command handled by two modules
    cli_source = (ROOT / "benchmarks" / "cli.py").read_text(encoding="utf-8")
    assert "add_argument(" not in cli_source and "def cmd_" not in cli_source
