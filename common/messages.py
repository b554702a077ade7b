"""The one message type a child process of ``bench`` sends its parent: a JSON line.

Every child that runs a framework (``benchmarks.child``) talks to ``bench`` on its
stdout in lines of one shape, ``{"bench": KIND, ...}`` with KIND one of

* ``log``: ``{"text"}``, a log message of the suite (``benchmarks.console``), which the
  parent logs again;
* ``progress``: ``{"desc", "n", "total", "unit", "done"}``, a progress event
  (``common.progress``), which the parent renders on its own terminal;
* ``result``: the child's answer (any fields); a sweep job sends one per measurement;
* ``error``: ``{"kind", "error"}``, why the child failed in one line; ``kind`` is
  ``usage`` (bad input: the parent exits 2), ``check`` (a check failed) or ``failed``.

Any other line (a framework's own output) is not a message and is kept, or shown, as text.
Framework-free, so that ``common.progress`` writes the same lines as the worker modules.
"""

from __future__ import annotations

import json
import sys
from typing import TextIO

KEY = "bench"
KINDS = ("log", "progress", "result", "error")
_START = '{"' + KEY + '": '  # json.dumps puts KEY first with these separators


def encode(kind: str, /, **fields) -> str:
    """One message as a line (no newline): ``{"bench": kind, **fields}`` (a field may be
    named ``kind`` or ``stream``: a sweep's rows have a ``kind``)."""
    if kind not in KINDS:
        raise ValueError(f"unknown message kind {kind!r}; one of {', '.join(KINDS)}")
    return json.dumps({KEY: kind, **fields}, default=_plain)


def send(kind: str, stream: TextIO | None = None, /, **fields) -> None:
    """Write one message to ``stream`` (default: the current ``sys.stdout``), flushed at once."""
    stream = sys.stdout if stream is None else stream
    stream.write(encode(kind, **fields) + "\n")
    stream.flush()


def decode(line: str) -> dict | None:
    """The message in ``line`` (``{"bench": kind, ...}``), or None when it is not one."""
    if not line.startswith(_START):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or message.get(KEY) not in KINDS:
        return None
    return message


def _plain(value):
    """numpy scalars and paths in a message, as JSON numbers and strings."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)
