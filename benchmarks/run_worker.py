"""The process of one training run: ``python -m benchmarks.run_worker RUN_DIR/config.json``.

``bench run`` starts one of these per (backend, recipe, seed) so that
TensorFlow and PyTorch never share an interpreter, a crash is contained, and
peak memory is per run. The result is always written to ``result.json``; the
driver's log messages go to stdout behind ``console.PROGRESS_MARK`` so that
the parent echoes them to the terminal.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from benchmarks.console import PROGRESS_MARK, configure_console
from benchmarks.driver import run
from common.config import RunConfig

log = logging.getLogger(__name__)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.run_worker RUN_DIR/config.json", file=sys.stderr)
        return 2
    configure_console(prefix=PROGRESS_MARK)  # the parent echoes these lines to the terminal
    config = RunConfig.from_dict(json.loads(Path(argv[0]).read_text()))
    result = run(config)
    if result["status"] != "ok":
        log.info(f"error: {result['error']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
