"""The process of one training run: ``python -m benchmarks.run_worker RUN_DIR/config.json``.

``bench run`` starts one of these per (backend, recipe, seed) so that
TensorFlow and PyTorch never share an interpreter, a crash is contained, and
peak memory is per run. The result is always written to ``result.json``; the
driver's log messages and progress go to the parent as ``benchmarks.child``
messages, which it echoes to the terminal.

A worker dies with its parent (``child.begin``: ``PR_SET_PDEATHSIG`` on Linux, a
watchdog on the parent's PID elsewhere): a killed ``bench run`` leaves no
training behind; its temporary folder, ``RUN_DIR/tmp``, is removed when the run
starts again.
It holds its run directory's claim (``common.locks``) until it exits, so no
second worker can run in the same directory.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from benchmarks import child
from benchmarks.console import SUITE_LOGGERS

log = logging.getLogger("benchmarks.run_worker")  # not __main__ under -m

EXIT_BUSY = child.EXIT_BUSY  # the run directory is claimed by another live worker


def main(argv: list[str] | None = None) -> int:
    from benchmarks import runner
    from common.locks import DirectoryBusy, adopt_claim, claim_directory

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.run_worker RUN_DIR/config.json", file=sys.stderr)
        return 2
    # under torchrun (one worker per device): the launcher is the parent and holds the run
    # directory's claim; rank 0 alone talks to the terminal and writes the run's files
    launched = "LOCAL_RANK" in os.environ
    child.begin()  # dies with bench; its log messages go to bench
    from common.parallel import is_main_process
    from common.progress import PROGRESS_ENV

    if not is_main_process():
        for name in SUITE_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        os.environ[PROGRESS_ENV] = "off"
    config_file = Path(argv[0])
    run_dir = config_file.parent
    try:
        inherited = os.environ.get(runner.CLAIM_FD_ENV)
        if launched:
            claim = contextlib.nullcontext()
        else:
            claim = adopt_claim(run_dir, int(inherited)) if inherited else claim_directory(run_dir)
    except DirectoryBusy as busy:
        log.error(f"error: run directory {run_dir} is held by worker PID {busy.pid or '?'}; "
                  f"not starting a second worker in it")
        return EXIT_BUSY

    from benchmarks.driver import RunInterrupted, run
    from common.config import RunConfig
    from common.timing import Timeline

    timeline = Timeline()  # from this process's start: interpreter start-up and imports count
    timeline.add("startup", 0.0, timeline.now())
    with claim:
        config = RunConfig.from_dict(json.loads(config_file.read_text(encoding="utf-8")))
        try:
            result = run(config, timeline)
        except RunInterrupted as stop:  # its resume point is saved; no result.json
            log.info(f"stopped by signal {stop.signum}; 'bench run --resume' continues it")
            return 128 + stop.signum
        except OSError as err:  # result.json itself could not be written (a full disk)
            from common.paths import disk_full_message, is_disk_full

            log.error(f"error: {disk_full_message(err.filename or run_dir) if is_disk_full(err) else err}")
            return 1
    if result["status"] != "ok":
        if is_main_process():
            log.info(f"error: {result['error']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
