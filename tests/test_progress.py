"""Progress of long work (``common.progress``): a bar on a terminal, plain lines
otherwise, and a worker's progress rendered by the parent ``bench``."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path


from backends import base
from benchmarks import cli
from common import progress as prog

TESTS = Path(__file__).resolve().parent


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_bar_and_anything_else_plain_lines(monkeypatch):
    monkeypatch.delenv(prog.PROGRESS_ENV, raising=False)
    assert prog.progress_mode(Terminal()) == "bar"
    assert prog.progress_mode(io.StringIO()) == "lines"
    monkeypatch.setenv(prog.PROGRESS_ENV, "off")
    assert prog.progress_mode(Terminal()) == "off"

    screen = Terminal()
    with prog.Progress(4, "epoch 1 train", mode="bar", stream=screen) as bar:
        for _ in range(4):
            bar.update(1)
        drawn = screen.getvalue()
        assert bar.n == 4
    assert "epoch 1 train:   0%|" in drawn and "0/4" in drawn and "batch/s" in drawn  # tqdm's bar


def test_plain_lines_come_at_most_every_interval(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="common.progress")
    monkeypatch.setenv(prog.SECONDS_ENV, "0")
    with prog.Progress(3, "predict val", mode="lines") as bar:
        for _ in range(3):
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("predict val: 1/3 batches (33 %), 0 s, ~0 s left"), lines
    assert len(lines) == 3
    caplog.clear()
    monkeypatch.delenv(prog.SECONDS_ENV)
    assert list(prog.progress(range(50), desc="features train")) == list(range(50))
    assert not caplog.records  # well under 30 s: no line


def test_events_are_rendered_by_the_parent_as_a_bar_or_lines(monkeypatch, caplog):
    monkeypatch.setenv(prog.SECONDS_ENV, "0")
    pipe = io.StringIO()
    with prog.Progress(2, "epoch 2 train", mode="events", stream=pipe) as bar:
        bar.update(1)
        bar.update(1)
    events = [prog.parse_event(line) for line in pipe.getvalue().splitlines()]
    assert [(e["n"], e["total"], e["done"]) for e in events] == [(1, 2, False), (2, 2, False),
                                                                  (2, 2, True)]
    assert prog.parse_event("| epoch 2 ...") is None

    screen = Terminal()
    relay = prog.ProgressRelay("[pytorch-head-s0] ", mode="bar", stream=screen)
    for e in events:
        relay.feed(e)
    assert relay.current is None and "[pytorch-head-s0] epoch 2 train" in screen.getvalue()

    caplog.set_level(logging.INFO, logger="common.progress")
    relay = prog.ProgressRelay("[keras-head-s0] ", mode="events")  # passed on as lines
    for e in events:
        relay.feed(e)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == [
        "[keras-head-s0] epoch 2 train: 1/2 batches (50 %)",
        "[keras-head-s0] epoch 2 train: 2/2 batches (100 %)"]


def test_bench_run_shows_the_workers_progress_and_keeps_it_out_of_the_log(monkeypatch, tiny_quads,
                                                                          tmp_path, capsys):
    monkeypatch.setenv(base.EXTRA_BACKENDS_ENV, "fake=fake_backend:FakeBackend")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setitem(base.REGISTRY, "fake", "fake_backend:FakeBackend")
    monkeypatch.setenv(prog.SECONDS_ENV, "0")  # every batch, in the worker and here
    monkeypatch.delenv(prog.PROGRESS_ENV, raising=False)
    out = tmp_path / "out"
    assert cli.main(["run", "--backend", "fake", "--recipe", "head", "--data", str(tiny_quads),
                     "--weights", "none", "--epochs", "1", "--batch-size", "4", "--out", str(out),
                     "--no-report"]) == 0
    terminal = capsys.readouterr().out  # not a terminal here: plain lines
    assert "  [fake-head-s0] predict val: 1/2 batches (50 %)" in terminal
    assert "  [fake-head-s0] predict test: 2/2 batches (100 %)" in terminal
    assert '{"bench": "progress"' not in (out / "fake-head-s0" / "log.txt").read_text()
