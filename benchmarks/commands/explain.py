"""``bench explain [RECIPE]``: a recipe's steps in the three frameworks' own code,
side by side (``benchmarks.explain``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.commands.shared import UsageError, writable_dir
from common.config import load_recipe


def add_parser(sub) -> None:
    exp = sub.add_parser("explain", help="a recipe's steps in the three frameworks' own code, side "
                                         "by side (markdown and HTML)")
    exp.add_argument("recipe", nargs="?", default="two_phase",
                     help="a built-in recipe name or a recipe TOML file (default: two_phase)")
    exp.add_argument("--out", type=Path, default=Path("results") / "explain",
                     help="folder for explain-<recipe>.md and .html (default: results/explain)")


def cmd_explain(args: argparse.Namespace) -> int:
    from benchmarks.explain import ExplainError, render

    recipe = load_recipe(args.recipe)
    try:
        markdown, html = render(recipe)  # every region read before anything is written
    except ExplainError as err:
        raise UsageError(f"bench explain: {err}") from None
    writable_dir(args.out)
    md_path, html_path = args.out / f"explain-{recipe.name}.md", args.out / f"explain-{recipe.name}.html"
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(html, encoding="utf-8")
    print(f"written: {md_path}, {html_path}")
    return 0


HANDLERS = {"explain": cmd_explain}
