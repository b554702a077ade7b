"""``bench explain [RECIPE]``: the recipe's steps in the three frameworks' own code, side by side.

The code on the page is cut from the backends' sources by marked regions (the
``pymdownx.snippets`` convention)::

    # --8<-- [start:freeze]
    model.requires_grad_(False)
    ...
    # --8<-- [end:freeze]

so the page cannot drift from the code that runs: change a region and the page
changes; remove one and ``bench explain`` fails naming the file and the region.
Each step says in one or two sentences how the frameworks differ and points to
the rows of docs/differences.md that measure it. Framework-free: the sources are
read as text, nothing is imported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from common.config import Recipe

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "templates"
MARK = re.compile(r"^\s*# --8<-- \[(start|end):([A-Za-z0-9_-]+)\]\s*$")

#: the three columns: (heading, the framework's own reference the code follows)
FRAMEWORKS = {
    "pytorch": ("PyTorch", "torchvision's references/classification/train.py"),
    "keras": ("Keras 3", "the keras.io transfer-learning guide"),
    "slim": ("TF-Slim", "slim's train_image_classifier.py"),
}


class ExplainError(ValueError):
    """A region the page needs is missing or malformed (one line: file and region)."""


@dataclass(frozen=True)
class Step:
    key: str
    title: str
    difference: str                        # one or two sentences: how the frameworks differ
    region: str                            # the region's name, the same in every backend
    modules: tuple[str, str, str]          # the module of backends/<framework>/ holding it
    when: str = "always"                   # always | pretrained

    @property
    def regions(self) -> dict[str, tuple[str, str]]:
        """framework -> (source path from the repo root, region name)."""
        return {fw: (f"backends/{fw}/{module}.py", self.region)
                for fw, module in zip(FRAMEWORKS, self.modules)}


STEPS = (
    Step("build", "Build the model with a new head",
         "Each framework builds its own InceptionV3 and replaces the classifier: torchvision assigns a "
         "new `fc` module (a row per class), Keras puts pooling and `Dense` layers on the application's "
         "output (a column per class), slim builds the `Logits` scope as a 1x1 convolution.",
         "new-head", ("recipe", "recipe", "recipe")),
    Step("restore", "Restore the pretrained backbone, not the head",
         "PyTorch filters the state dict's keys and loads the rest; Keras loads by structure, through "
         "a model shaped like the checkpoint; slim restores by variable name, excluding scopes "
         "(`--checkpoint_exclude_scopes`).",
         "restore-without-head", ("recipe", "recipe", "recipe"),
         when="pretrained"),
    Step("freeze", "Freeze the backbone, unfreeze the blocks a phase trains",
         "PyTorch switches `requires_grad` per module; Keras sets `layer.trainable` and must compile "
         "again; slim passes the trained scopes' variables to the train op (`--trainable_scopes`).",
         "freeze", ("recipe", "recipe", "recipe")),
    Step("batchnorm", "BatchNorm in frozen blocks",
         "`requires_grad=False` does not stop a torch BatchNorm in `train()` mode from updating its "
         "statistics, so frozen modules go back to `eval()`; a Keras 3 BatchNormalization with "
         "`trainable=False` always runs in inference mode; slim fixes `is_training` per layer when it "
         "builds the graph.",
         "batchnorm", ("recipe", "recipe", "recipe")),
    Step("optimizer", "The optimizer, with a larger learning rate for the head",
         "PyTorch has parameter groups; Keras has none, so the suite's optimizer scales the head's "
         "learning rate inside `update_step`; slim groups two optimizers in one train op.",
         "optimizer", ("recipe", "recipe", "recipe")),
    Step("fit", "Fit one phase",
         "PyTorch writes the loop (`train_one_epoch`); Keras runs one `model.fit` per phase with "
         "callbacks; slim runs the train op in a session.",
         "fit", ("recipe", "recipe", "recipe")),
    Step("predict", "Predict",
         "Every framework runs its model in inference mode (BatchNorm on moving statistics, no "
         "dropout): torch under `inference_mode` in `eval()`, Keras' `predict`, slim's eval tower "
         "built with `is_training=False`.",
         "predict", ("recipe", "recipe", "recipe")),
)


def extract_region(path: Path, region: str) -> str:
    """The lines between ``# --8<-- [start:region]`` and ``# --8<-- [end:region]`` of ``path``,
    dedented; a region marked more than once is its parts in file order, joined by ``...``."""
    if not path.is_file():
        raise ExplainError(f"{path}: no such source file (region {region!r})")
    parts: list[list[str]] = []
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        m = MARK.match(line)
        if m:
            if m.group(2) == region:
                if m.group(1) == "start":
                    if inside:
                        raise ExplainError(f"{path}:{number}: region {region!r} starts again "
                                           f"before it ends")
                    inside = True
                    parts.append([])
                else:
                    if not inside:
                        raise ExplainError(f"{path}:{number}: region {region!r} ends before it "
                                           f"starts")
                    inside = False
            continue  # other regions' marks are not code
        if inside:
            parts[-1].append(line)
    if inside:
        raise ExplainError(f"{path}: region {region!r} is never closed (# --8<-- [end:{region}])")
    if not parts:
        raise ExplainError(f"{path}: no region {region!r} (mark it with # --8<-- [start:{region}] "
                           f"and # --8<-- [end:{region}])")
    if not any(line.strip() for part in parts for line in part):
        raise ExplainError(f"{path}: region {region!r} is empty")
    # one dedent for every part, so that their relative indentation stays
    lines = [line for part in parts for line in part if line.strip()]
    cut = min(len(line) - len(line.lstrip()) for line in lines)
    return "\n...\n".join("\n".join(line[cut:].rstrip() for line in part).strip("\n")
                           for part in parts)


def steps_for(recipe: Recipe) -> list[Step]:
    """The steps ``recipe`` takes, in order."""
    wanted = {"always"}
    if recipe.init == "pretrained":
        wanted.add("pretrained")
    return [s for s in STEPS if s.when in wanted]


def phase_lines(recipe: Recipe) -> list[str]:
    """One line per phase: what trains, the optimizer, the learning rate, BatchNorm."""
    out = []
    for p in recipe.phases:
        trains = {"head": "the head", "all": "every layer"}.get(
            p.train, f"the top {p.top_blocks} blocks and the head" if p.train == "top" else p.train)
        extra = f", head learning rate x{p.head_lr_multiplier:g}" if p.head_lr_multiplier != 1 else ""
        out.append(f"{p.name}: {trains}, {p.optimizer} at {p.learning_rate:g}{extra}, "
                   f"{p.epochs} epoch(s), BatchNorm {p.bn}")
    return out


def inline_code(text: str) -> Markup:
    """``text`` escaped for HTML, its markdown `code` spans as ``<code>``."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text))))


def page(recipe: Recipe, root: Path = ROOT) -> dict:
    """What the templates render: the recipe, its phases, and per step the three code columns."""
    steps = []
    for step in steps_for(recipe):
        columns = []
        for framework, (title, reference) in FRAMEWORKS.items():
            source, region = step.regions[framework]
            columns.append({"framework": framework, "title": title, "reference": reference,
                            "source": source, "code": extract_region(root / source, region)})
        steps.append({"key": step.key, "title": step.title, "difference": step.difference,
                      "difference_html": inline_code(step.difference), "columns": columns})
    return {"recipe": recipe.name, "description": recipe.description, "phases": phase_lines(recipe),
            "steps": steps}


def render(recipe: Recipe, root: Path = ROOT) -> tuple[str, str]:
    """(markdown, self-contained HTML) of ``recipe``'s explain page."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined,
                      keep_trailing_newline=True, autoescape=False)
    data = page(recipe, root)
    markdown = env.get_template("explain.md.j2").render(**data)
    env.autoescape = True
    html = env.get_template("explain.html.j2").render(**data)
    return markdown, html


def write(recipe: Recipe, out: Path, root: Path = ROOT) -> tuple[Path, Path]:
    """``out/explain-<recipe>.md`` and ``.html`` (``out`` created)."""
    markdown, html = render(recipe, root)
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / f"explain-{recipe.name}.md", out / f"explain-{recipe.name}.html"
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(html, encoding="utf-8")
    return md_path, html_path
