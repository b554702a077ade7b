"""``bench explain``: the recipe's steps, each framework's code cut from marked regions of the
backends' sources, as markdown and a three-column HTML page; the page follows the code."""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from benchmarks import cli
from benchmarks.explain import (FRAMEWORKS, STEPS, ExplainError, extract_region, render,
                                steps_for)
from common.config import load_recipe

ROOT = Path(__file__).resolve().parent.parent


class Columns(HTMLParser):
    """Per step section: the frameworks of its columns and each column's code text."""

    def __init__(self):
        super().__init__()
        self.steps: dict[str, list[tuple[str, str]]] = {}
        self._step = self._framework = None
        self._in_code = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and "step" in attrs.get("class", ""):
            self._step, self._framework = attrs["id"], None
            self.steps[self._step] = []
        elif tag == "div" and "data-framework" in attrs:
            self._framework = attrs["data-framework"]
            self.steps[self._step].append((self._framework, ""))
        elif tag == "code" and self._framework:
            self._in_code = True

    def handle_endtag(self, tag):
        if tag == "code":
            self._in_code = False

    def handle_data(self, data):
        if self._in_code and self._framework:
            framework, text = self.steps[self._step][-1]
            self.steps[self._step][-1] = (framework, text + data)


def test_explain_two_phase_writes_three_code_columns_per_step(tmp_path, capsys):
    assert cli.main(["explain", "two_phase", "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "explain-two_phase.md").read_text()
    parser = Columns()
    parser.feed((tmp_path / "explain-two_phase.html").read_text())
    keys = [s.key for s in steps_for(load_recipe("two_phase"))]
    assert keys == ["build", "restore", "freeze", "batchnorm", "optimizer", "fit", "predict"]
    assert list(parser.steps) == keys
    for key, columns in parser.steps.items():
        assert [f for f, _ in columns] == list(FRAMEWORKS), key
        assert all(code.strip() for _, code in columns), key
    # the idiom of each framework is on the page, in its own words
    freeze = dict(parser.steps["freeze"])
    assert "requires_grad_(False)" in freeze["pytorch"]
    assert "layer.trainable = False" in freeze["keras"]
    assert "in_scopes(v.op.name, trainable_scopes)" in freeze["slim"]
    assert "km.train_model.compile(" in dict(parser.steps["optimizer"])["keras"]
    assert "slim.assign_from_checkpoint_fn" in dict(parser.steps["restore"])["slim"]
    assert markdown.count("```python") == 3 * len(keys)
    assert "- top2: the top 2 blocks and the head, sgd at 0.0001" in markdown
    assert "written:" in capsys.readouterr().out


def test_scratch_has_no_restore_step():
    assert "restore" not in [s.key for s in steps_for(load_recipe("scratch"))]


def _copy_sources(root: Path) -> None:
    for step in STEPS:
        for source, _ in step.regions.values():
            (root / source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / source, root / source)


def test_the_page_changes_when_a_marked_region_changes(tmp_path):
    _copy_sources(tmp_path)
    before, _ = render(load_recipe("two_phase"), tmp_path)
    path = tmp_path / "backends/pytorch/recipe.py"
    text = path.read_text()
    assert "    model.requires_grad_(False)\n" in text
    path.write_text(text.replace("    model.requires_grad_(False)\n",
                                 "    model.requires_grad_(False)  # a teacher's note\n", 1))
    after, html = render(load_recipe("two_phase"), tmp_path)
    assert before != after
    assert "model.requires_grad_(False)  # a teacher's note" in after
    assert "a teacher&#39;s note" in html or "a teacher's note" in html


def test_a_missing_region_is_one_line_naming_the_file_and_the_region(tmp_path, capsys):
    _copy_sources(tmp_path)
    path = tmp_path / "backends/keras/recipe.py"
    path.write_text(path.read_text().replace("# --8<-- [end:predict]", "# the end mark lost"))
    with pytest.raises(ExplainError, match=r"recipe\.py: region 'predict' is never closed"):
        render(load_recipe("two_phase"), tmp_path)
    path.write_text(path.read_text().replace("# --8<-- [start:predict]", "# the start mark lost"))
    with pytest.raises(ExplainError, match=r"recipe\.py: no region 'predict' \(mark it with"):
        extract_region(path, "predict")


def test_regions_keep_their_relative_indentation_and_join_parts_with_an_ellipsis(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    # --8<-- [start:r]\n    a = 1\n    if a:\n        b = 2\n"
                      "    # --8<-- [end:r]\n    c = 3\n    # --8<-- [start:r]\n    return b\n"
                      "    # --8<-- [end:r]\n")
    assert extract_region(source, "r") == "a = 1\nif a:\n    b = 2\n...\nreturn b"


def test_the_committed_page_is_what_bench_explain_writes():
    """docs/explain-two_phase.md is ``bench explain two_phase --out docs``: a change to a marked
    region must be followed by that command (this test says so when it was not)."""
    markdown, html = render(load_recipe("two_phase"))
    assert (ROOT / "docs" / "explain-two_phase.md").read_text() == markdown, \
        "docs/explain-two_phase.md is stale: run bench explain two_phase --out docs"
    assert (ROOT / "docs" / "explain-two_phase.html").read_text() == html
