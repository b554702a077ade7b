"""The sweep: every (backend, recipe, seed) in its own child process.

TensorFlow and PyTorch never share an interpreter; a crash (even a segfault)
in one run becomes a ``failed`` result and the sweep goes on; a backend that
is not installed becomes a ``skipped`` result with its reason. ``sweep.json``
in the run directory records the plan so that ``bench run --resume RUN_DIR``
runs only what is missing, and Ctrl-C never loses a finished result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from backends.base import availability, backend_info, unsupported_model
from benchmarks.console import PROGRESS_MARK
from common.config import RunConfig
from common.results import base_result, run_name, write_json_atomic

SWEEP_FILE = "sweep.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedRun:
    name: str
    config: RunConfig


def plan(configs: list[RunConfig]) -> list[PlannedRun]:
    return [PlannedRun(Path(c.run_dir).name, c) for c in configs]


def write_plan(run_dir: Path, runs: list[PlannedRun], argv: list[str]) -> None:
    write_json_atomic(run_dir / SWEEP_FILE, {
        "argv": argv, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "runs": [{"name": r.name, "config": r.config.to_dict()} for r in runs],
    })


def read_plan(run_dir: Path) -> list[PlannedRun]:
    raw = json.loads((run_dir / SWEEP_FILE).read_text())
    runs = []
    for r in raw["runs"]:
        config = RunConfig.from_dict(r["config"])
        # the directory may have moved since the sweep started
        config = dataclasses.replace(config, run_dir=str(run_dir / r["name"]))
        runs.append(PlannedRun(r["name"], config))
    return runs


def finished(run: PlannedRun) -> bool:
    f = Path(run.config.run_dir) / "result.json"
    if not f.is_file():
        return False
    try:
        return json.loads(f.read_text()).get("status") == "ok"
    except json.JSONDecodeError:
        return False


def _write_unrun(run: PlannedRun, status: str, error: str) -> dict:
    c = run.config
    result = base_result(c.backend, c.recipe.name, c.train.seed, c.model.name, c.to_dict())
    result.update(status=status, error=error)
    write_json_atomic(Path(c.run_dir) / "result.json", result)
    return result


def run_child(run: PlannedRun) -> dict:
    """Run one planned run in a child process, streaming its log; return its result."""
    run_dir = Path(run.config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "config.json"
    write_json_atomic(config_file, run.config.to_dict())
    result_file = run_dir / "result.json"
    before = result_file.stat().st_mtime_ns if result_file.exists() else None
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.update(backend_info(run.config.backend).environment)  # e.g. KERAS_BACKEND, before import
    repo_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo_root, env.get("PYTHONPATH")]))
    tail: list[str] = []
    with open(run_dir / "log.txt", "a", encoding="utf-8") as logfile:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.run_worker", str(config_file)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            start_new_session=True,  # Ctrl-C reaches the parent, which stops the child
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                logfile.write(line)
                logfile.flush()
                tail = (tail + [line.rstrip()])[-40:]
                if line.startswith(PROGRESS_MARK):  # driver messages; framework noise stays in log.txt
                    log.info(f"  [{run.name}] {line[len(PROGRESS_MARK):].rstrip()}")
            code = proc.wait()
        except BaseException:
            _stop(proc)
            raise
    after = result_file.stat().st_mtime_ns if result_file.exists() else None
    if after is None or after == before:
        reason = f"signal {-code}" if code < 0 else f"exit code {code}"
        last = next((t for t in reversed(tail) if t.strip()), "no output")
        return _write_unrun(run, "failed", f"worker process died ({reason}): {last}"[:500])
    return json.loads(result_file.read_text())


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_sweep(runs: list[PlannedRun], resume: bool = False) -> list[dict]:
    """Run every planned run not yet finished; return all results in plan order."""
    results = []
    for i, run in enumerate(runs, 1):
        if resume and finished(run):
            log.info(f"[{i}/{len(runs)}] {run.name}: already finished, kept")
            results.append(json.loads((Path(run.config.run_dir) / "result.json").read_text()))
            continue
        reason = availability(run.config.backend) or unsupported(run.config)
        if reason:
            log.info(f"[{i}/{len(runs)}] {run.name}: skipped ({reason})")
            results.append(_write_unrun(run, "skipped", reason))
            continue
        log.info(f"[{i}/{len(runs)}] {run.name}: running (log: {Path(run.config.run_dir) / 'log.txt'})")
        t0 = time.perf_counter()
        result = run_child(run)
        status = result["status"]
        extra = f"test top1 {result['test']['top1']:.3f}" if status == "ok" else result.get("error")
        log.info(f"[{i}/{len(runs)}] {run.name}: {status} in {time.perf_counter() - t0:.0f}s ({extra})")
        results.append(result)
    return results


def unsupported(config: RunConfig) -> str | None:
    return unsupported_model(config.backend, config.model.name)


def run_names(backends: list[str], recipes: list[str], seeds: list[int]) -> list[tuple[str, str, int, str]]:
    return [(b, r, s, run_name(b, r, s)) for b in backends for r in recipes for s in seeds]
