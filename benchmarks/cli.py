"""``bench``: a thin command line over the library (torchvision references style).

``get_args_parser()`` only parses: each command's flags and handler live in its module of
``benchmarks.commands`` (``run``, ``data``, ``throughput``, ``report``, ``saved_run``,
``weights``, ``explain``, ``parity``, ``recipe``, ``listing``), whose handlers call plain
functions that the tests call directly. ``main()`` maps errors to exit codes: user errors
(a bad recipe key, a missing data folder, an unknown backend) print one line
``bench: error: ...`` and exit 2; finished results are never touched by a failing command.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from typing import Iterator

from backends.base import BackendError
from benchmarks.commands import MODULES
from benchmarks.commands.recipe import slim_flags_argv
from benchmarks.commands.run import build_configs, missing_imagenet_weights
from benchmarks.commands.shared import EXIT_USAGE, OneLineParser, UsageError, parse_backends
from benchmarks.console import configure_console
from benchmarks.runner import PlanError
from benchmarks.saved_run import BackendProcessFailed, SavedRunError
from common.canonical import ConversionError
from common.config import ConfigError
from common.data import DataError
from common.paths import cache_root

# what callers (and the tests) use from here; the rest lives in benchmarks.commands
__all__ = ["COMMANDS", "EXIT_USAGE", "UsageError", "build_configs", "get_args_parser", "main",
           "missing_imagenet_weights", "parse_backends"]
COMMANDS = {name: handler for module in MODULES for name, handler in module.HANDLERS.items()}


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="bench",
        description="Fine-tune pretrained image classifiers with PyTorch, Keras 3 and TF-Slim "
                    "from one recipe and compare them.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in MODULES:
        module.add_parser(sub)
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM to ``bench``: it stops as Ctrl-C stops it (a sweep lets its run save the epoch
    in hand; every ``with`` block unwinds, so the temporary folders a command made under the
    system's temporary directory are removed) and exits 143."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[dict]:
    """While ``bench`` runs a command, SIGTERM raises ``Terminated`` (the default action
    would end the process at once, leaving its temporary folders behind) and is recorded in
    the yielded ``{"signum"}``; the previous handler is restored afterwards (``main`` is also
    called in-process, by the tests)."""
    received: dict = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def terminate(signum, frame):
        received["signum"] = signum
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    configure_console()
    # matplotlib's font cache and config live with the suite's other caches, not in $HOME
    # (docs/design.md: everything generated or cached lives under the cache root)
    os.environ.setdefault("MPLCONFIGDIR", str(cache_root() / "matplotlib"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(slim_flags_argv(argv))
    args.argv = argv
    try:
        with sigterm_as_interrupt() as received:
            try:
                code = COMMANDS[args.command](args)
            except Terminated:
                code = None
        if received["signum"] is not None:  # a sweep stopped as by Ctrl-C (its code 130)
            print("bench: stopped by SIGTERM", file=sys.stderr)
            return 128 + signal.SIGTERM
        return code
    except (UsageError, ConfigError, DataError, BackendError, PlanError, SavedRunError,
            ConversionError) as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"bench: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except BackendProcessFailed as err:  # not bad input: an export that fails its check, a crash
        print(f"bench: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
