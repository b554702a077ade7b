"""Run a benchmark function in a fresh interpreter and read back its JSON line.

Frameworks never share a process (TensorFlow and PyTorch fight over threads
and memory, and importing TensorFlow before torchvision can crash), so every
measurement that imports one runs as ``python -m MODULE ARGS...`` whose last
stdout line starting with ``{`` is the result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_json_child(module: str, args: list[str]) -> dict:
    """The JSON result of ``python -m module *args``, or a failed record with the last error line."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"status": "failed", "error": f"{module} exited with {proc.returncode}: {tail}"}
