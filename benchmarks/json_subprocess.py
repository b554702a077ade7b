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


def run_per_backend(module: str, backend: str, args: list, describe) -> bool:
    """Run ``python -m module --json --backend NAME *args`` for each backend named by
    ``backend`` ("all" or one name), printing ``describe(result) -> (line, met)``;
    True when every available backend met its target (unavailable ones are skipped)."""
    from backends.base import availability, backend_names

    ok = True
    for name in backend_names() if backend == "all" else [backend]:
        reason = availability(name)
        if reason:
            print(f"{name}: skipped ({reason})")
            continue
        result = run_json_child(module, ["--json", "--backend", name, *args])
        if result.get("status") == "failed":
            print(f"{name}: failed ({result['error']})")
            ok = False
            continue
        line, met = describe(result)
        print(line)
        ok &= met
    return ok
