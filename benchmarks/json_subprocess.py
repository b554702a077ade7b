"""Run a benchmark function in a fresh interpreter and read back its JSON line.

Frameworks never share a process (TensorFlow and PyTorch fight over threads
and memory, and importing TensorFlow before torchvision can crash), so every
measurement that imports one runs as ``python -m MODULE ARGS...`` whose last
stdout line starting with ``{`` is the result.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.console import PROGRESS_MARK

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def run_json_child(module: str, args: list[str], progress: bool = False,
                   launcher: list[str] = (), environment: dict | None = None) -> dict:
    """The JSON result of ``python -m module *args``, or a failed record with the last error line.

    ``progress``: the child's stdout lines marked ``console.PROGRESS_MARK`` (its log
    messages) are logged here as they come, so a long child such as pretraining shows
    its progress. ``launcher``: the arguments of a launcher module the child runs under
    (``-m torch.distributed.run --standalone ...``); ``environment``: variables to set."""
    from benchmarks.runner import PARENT_PID_ENV, _die_with_this_process

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
    env[PARENT_PID_ENV] = str(os.getpid())  # a child that honours it dies with this process
    env.update(environment or {})
    cmd = [sys.executable, *launcher, "-m", module, *map(str, args)]
    with tempfile.TemporaryFile(mode="w+") as stderr:
        # a launcher (torchrun) cannot arm its own death signal: armed here, before it starts
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                                preexec_fn=_die_with_this_process if launcher else None)
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if progress and line.startswith(PROGRESS_MARK):
                log.info(line[len(PROGRESS_MARK):].rstrip())
        code = proc.wait()
        stderr.seek(0)
        err_lines = stderr.read().strip().splitlines()
    for line in reversed(lines):
        if line.startswith("{"):
            return json.loads(line)
    tail = (err_lines or ["no output"])[-1]
    return {"status": "failed", "error": f"{module} exited with {code}: {tail}"}


def run_per_backend(module: str, backend: str, args: list, describe) -> bool:
    """Run ``python -m module --json --backend NAME *args`` for each backend named by
    ``backend`` ("all" or one name), printing ``describe(result) -> (line, met)``;
    True when every available backend met its target (unavailable ones are skipped)."""
    from backends.base import availability, default_backends

    ok = True
    for name in default_backends() if backend == "all" else [backend]:
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
