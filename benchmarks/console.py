"""Console output of the suite's progress messages (stdlib ``logging``).

Modules log to ``logging.getLogger(__name__)`` under ``benchmarks``, ``common``
and ``backends``; nothing passes ``print`` around. ``bench`` shows those
messages on stdout, one line each; the run worker (``benchmarks.run_worker``)
prefixes them with ``PROGRESS_MARK`` so that the parent tells the driver's
messages from framework noise: marked lines are echoed to the terminal, the
rest stays in the run's ``log.txt``.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

PROGRESS_MARK = "| "
SUITE_LOGGERS = ("benchmarks", "common", "backends")


class _ConsoleHandler(logging.Handler):
    """Writes each record as one line to the *current* ``sys.stdout`` (so a test's
    captured stdout, or a reconfigured stream, receives it)."""

    def __init__(self, prefix: str):
        super().__init__(logging.INFO)
        self.prefix = prefix
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stdout
            # a progress bar on the terminal (common.progress) is cleared and redrawn below
            with tqdm.external_write_mode(file=stream):
                stream.write("".join(f"{self.prefix}{line}\n" for line in text.splitlines() or [""]))
                stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the program down
            self.handleError(record)


def configure_console(prefix: str = "") -> None:
    """Show the suite's INFO messages on stdout, each line prefixed by ``prefix``
    (idempotent: a second call replaces the handler). A file name that is not UTF-8
    prints with ``\\x..`` escapes instead of failing."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):
            pass
    for name in SUITE_LOGGERS:
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
            logger.removeHandler(handler)
        logger.addHandler(_ConsoleHandler(prefix))
        logger.setLevel(logging.INFO)
