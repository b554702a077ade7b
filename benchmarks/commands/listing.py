"""``bench list``: the backends (with availability), models and recipes."""

from __future__ import annotations

import argparse

from backends.base import ALIASES, availability, backend_names, backends_with_model, default_backends
from common.config import available_recipes, load_recipe
from common.models import MODELS


def add_parser(sub) -> None:
    sub.add_parser("list", help="backends (with availability), models, recipes")


def cmd_list(_args: argparse.Namespace) -> int:
    print("backends (--backend all: " + ", ".join(default_backends()) + "):")
    for name in backend_names():
        reason = availability(name)
        aliases = [a for a, target in ALIASES.items() if target == name]
        label = name + (f" (also {', '.join(aliases)})" if aliases else "")
        print(f"  {label:30s} {'available' if reason is None else 'unavailable: ' + reason}")
    print("models:")
    for m in MODELS.values():
        print(f"  {m.name:13s} default {m.default_size}px, min {m.min_size}px, "
              f"blocks {', '.join(m.blocks)}; backends: {', '.join(backends_with_model(m.name))}")
    print("recipes:")
    for r in available_recipes():
        recipe = load_recipe(r)
        print(f"  {r:13s} {recipe.description}")
    return 0


HANDLERS = {"list": cmd_list}
