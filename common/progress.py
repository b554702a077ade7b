"""Progress of long work, one helper for every backend: training epochs, evaluation passes
and feature extraction.

A backend wraps its batch loop in ``progress(batches, total, desc)`` (or updates a
``Progress`` from a Keras callback or a ``session.run`` loop); what the user sees is
decided here, once per process, by ``PROGRESS_ENV`` or the terminal:

* ``bar``: a tqdm bar on stderr, redrawn at most twice a second and cleared when the
  pass ends (the driver's one line per epoch stays) — when stderr is a terminal;
* ``lines``: a plain log line (``common.progress`` logger) at most every
  ``LINE_SECONDS`` (30 s) while a pass runs, so a log file or CI output shows a sign
  of life without a line per batch — when it is not;
* ``events``: one ``progress`` message (``common.messages``) on stdout at most every
  ``EVENT_SECONDS`` (0.5 s) for a pass longer than that. ``bench`` sets this for the worker
  processes it starts (their stdout is a pipe), and re-renders the events with its
  own ``bar`` or ``lines`` rendering (``ProgressRelay``), so the parent's terminal,
  not the child's pipe, decides;
* ``off``: nothing.

``SECONDS_ENV`` replaces both intervals (``0``: every batch).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Iterable, Iterator, TextIO, TypeVar

from common import messages

PROGRESS_ENV = "TRANSFER_BENCH_PROGRESS"
# seconds between plain lines and between events, instead of the defaults below
SECONDS_ENV = "TRANSFER_BENCH_PROGRESS_SECONDS"
MODES = ("bar", "lines", "events", "off")
LINE_SECONDS = 30.0   # plain lines: at most one per pass every 30 s
EVENT_SECONDS = 0.5   # events for the parent: at most two a second, none for a shorter pass

log = logging.getLogger(__name__)
T = TypeVar("T")


def interval(default: float) -> float:
    """``SECONDS_ENV`` when it holds a number >= 0, else ``default``."""
    try:
        value = float(os.environ.get(SECONDS_ENV, ""))
    except ValueError:
        return default
    return value if value >= 0 else default


def progress_mode(stream: TextIO | None = None) -> str:
    """``PROGRESS_ENV`` when set to one of ``MODES``, else ``bar`` on a terminal, ``lines``
    otherwise."""
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if mode in MODES:
        return mode
    stream = sys.stderr if stream is None else stream
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or replaced stream
        return "lines"


class Progress:
    """Progress of one pass of ``total`` units (batches), rendered as ``mode`` says.

    ``update(n)`` adds, ``update_to(n)`` sets; ``close()`` (or leaving the ``with``
    block) ends the pass. ``stream`` is where a bar (stderr) or events (stdout) go.
    """

    def __init__(self, total: int | None, desc: str, unit: str = "batch", *,
                 mode: str | None = None, stream: TextIO | None = None):
        self.total, self.desc, self.unit = total, desc, unit
        self.mode = mode or progress_mode(stream)
        self.n = 0
        self.every = interval(EVENT_SECONDS if self.mode == "events" else LINE_SECONDS)
        self.started = time.monotonic()
        self._last = self.started  # when the last line or event went out
        self._sent = False         # whether an event for this pass went out
        self._closed = False
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                             mininterval=0.5, file=stream if stream is not None else sys.stderr)
        self._stream = stream

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.update_to(self.n + n)

    def update_to(self, n: int) -> None:
        if self._closed or n == self.n:
            return
        step, self.n = n - self.n, n
        if self._bar is not None:
            self._bar.update(step)
            return
        now = time.monotonic()
        if self.mode == "lines" and now - self._last >= self.every:
            self._last = now
            log.info(self.line(now))
        elif self.mode == "events" and now - self._last >= self.every:
            self._last = now
            self._event(done=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "events" and self._sent:
            self._event(done=True)  # the parent closes its bar

    def line(self, now: float | None = None) -> str:
        """``desc: n/total batches (p %), s elapsed, ~s left``."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        units = f"{self.unit}es" if self.unit.endswith(("s", "sh", "ch", "x")) else f"{self.unit}s"
        if self.total:
            left = elapsed / self.n * (self.total - self.n) if self.n else None
            eta = f", ~{left:.0f} s left" if left is not None else ""
            return (f"{self.desc}: {self.n}/{self.total} {units} ({100 * self.n / self.total:.0f} %), "
                    f"{elapsed:.0f} s{eta}")
        return f"{self.desc}: {self.n} {units}, {elapsed:.0f} s"

    def _event(self, done: bool) -> None:
        self._sent = True
        stream = self._stream if self._stream is not None else sys.stdout
        messages.send("progress", stream, desc=self.desc, n=self.n, total=self.total,
                      unit=self.unit, done=done)


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "",
             unit: str = "batch") -> Iterator[T]:
    """``iterable``, one ``Progress`` unit per item (``total`` defaults to ``len``)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    with Progress(total, desc, unit) as bar:
        for item in iterable:
            yield item
            bar.update(1)


def parse_event(line: str) -> dict | None:
    """The progress event in a child's output line (a ``progress`` message without its
    kind), or None when the line is not one."""
    message = messages.decode(line)
    if message is None or message[messages.KEY] != "progress" or "desc" not in message:
        return None
    return {k: v for k, v in message.items() if k != messages.KEY}


class ProgressRelay:
    """The parent's rendering of a child's progress events: one ``Progress`` at a time
    (a new ``desc`` ends the previous pass), in this process's own mode (``bar`` on a
    terminal, ``lines`` otherwise; ``events`` is passed on as ``lines``)."""

    def __init__(self, prefix: str = "", mode: str | None = None, stream: TextIO | None = None):
        self.prefix = prefix
        mode = mode or progress_mode(stream)
        self.mode = "lines" if mode == "events" else mode
        self.stream = stream
        self.current: Progress | None = None

    def feed(self, event: dict) -> None:
        desc = f"{self.prefix}{event['desc']}"
        if self.current is not None and self.current.desc != desc:
            self.close()
        if self.current is None:
            if event.get("done"):
                return
            self.current = Progress(event.get("total"), desc, event.get("unit", "batch"),
                                    mode=self.mode, stream=self.stream)
        self.current.update_to(int(event.get("n", 0)))
        if event.get("done"):
            self.close()

    def close(self) -> None:
        if self.current is not None:
            self.current.close()
            self.current = None
