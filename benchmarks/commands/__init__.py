"""The ``bench`` commands, one module each: ``add_parser(sub)`` adds its subcommand(s) to
the parser of ``benchmarks.cli`` and ``HANDLERS`` maps each to the function that runs it.
``shared`` holds what several commands use (``UsageError``, argument types, checks of
shared flags, the claim of a run directory).

The order of ``MODULES`` is the order of ``bench --help``.
"""

from benchmarks.commands import (data, explain, listing, parity, recipe, report, run, saved_run,
                                 throughput, weights)

MODULES = (run, listing, recipe, data, throughput, report, saved_run, weights, explain, parity)
