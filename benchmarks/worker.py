"""Child-process entry point: ``python -m benchmarks.worker RUN_DIR/config.json``.

``bench run`` starts one of these per (backend, recipe, seed) so that
TensorFlow and PyTorch never share an interpreter, a crash is contained, and
peak memory is per run. The result is always written to ``result.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.driver import run
from common.config import RunConfig


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.worker RUN_DIR/config.json", file=sys.stderr)
        return 2
    config = RunConfig.from_dict(json.loads(Path(argv[0]).read_text()))

    def log(msg: str) -> None:
        print(f"| {msg}", flush=True)  # runner.PROGRESS_MARK: echoed to the terminal

    result = run(config, log=log)
    if result["status"] != "ok":
        print(f"| error: {result['error']}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
