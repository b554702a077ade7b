"""Console output of the suite's progress messages (stdlib ``logging``).

Modules log to ``logging.getLogger(__name__)`` under ``benchmarks``, ``common``
and ``backends``; nothing passes ``print`` around. ``bench`` shows those
messages on stdout, one line each; a child process of ``bench``
(``benchmarks.child``) sends each as a ``log`` message (``common.messages``) so that
the parent tells the suite's messages from framework noise: messages are echoed
to the terminal, the rest stays in a run's ``log.txt``, where the messages are
kept behind ``PROGRESS_MARK``.
"""

from __future__ import annotations

import logging
import sys

from tqdm import tqdm

from common import messages

PROGRESS_MARK = "| "
SUITE_LOGGERS = ("benchmarks", "common", "backends")


class _ConsoleHandler(logging.Handler):
    """Writes each record as one line to the *current* ``sys.stdout`` (so a test's
    captured stdout, or a reconfigured stream, receives it)."""

    def __init__(self, prefix: str, as_messages: bool = False):
        super().__init__(logging.INFO)
        self.prefix = prefix
        self.as_messages = as_messages
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            stream = sys.stdout
            # a progress bar on the terminal (common.progress) is cleared and redrawn below
            if self.as_messages:  # a child of bench: the parent shows it
                messages.send("log", stream, text=text)
                return
            with tqdm.external_write_mode(file=stream):
                stream.write("".join(f"{self.prefix}{line}\n" for line in text.splitlines() or [""]))
                stream.flush()
        except Exception:  # noqa: BLE001 - logging must never take the program down
            self.handleError(record)


def configure_console(prefix: str = "", as_messages: bool = False) -> None:
    """Show the suite's INFO messages on stdout, each line prefixed by ``prefix``, or each
    message as one ``log`` message for the parent (``as_messages``, in a child of ``bench``)
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
        logger.addHandler(_ConsoleHandler(prefix, as_messages))
        logger.setLevel(logging.INFO)
