"""The sweep: every (backend, recipe, seed) in its own child process.

TensorFlow and PyTorch never share an interpreter; a crash (even a segfault)
in one run becomes a ``failed`` result and the sweep goes on; a backend that
is not installed becomes a ``skipped`` result with its reason. ``sweep.json``
in the run directory records the plan so that ``bench run --resume RUN_DIR``
runs only what is missing, and Ctrl-C never loses a finished result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from backends.base import availability, backend_info, unsupported_model
from benchmarks import child
from benchmarks.console import PROGRESS_MARK
from common.config import ConfigError, RunConfig, validate_run
from common.locks import DirectoryBusy, DirectoryClaim, claim_directory
from common.paths import disk_full_message, is_disk_full
from common.progress import ProgressRelay
from common.results import base_result, run_name, write_json_atomic

SWEEP_FILE = "sweep.json"
# how long a run directory may stay claimed by a worker of a killed sweep (it dies with
# its parent, see run_worker) before the run is reported as held
RUN_CLAIM_WAIT_SECONDS = 10.0
# how long a stopped sweep (Ctrl-C) lets its worker finish the epoch in hand and write its
# resume point before it is killed (a second Ctrl-C kills it at once: it dies with bench)
STOP_GRACE_SECONDS = 30.0
CLAIM_FD_ENV = "TRANSFER_BENCH_RUN_CLAIM_FD"     # the run directory's claim, inherited
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


class PlanError(ValueError):
    """``sweep.json`` is missing, malformed or not a plan this version can run (one line)."""


def read_plan(run_dir: Path) -> list[PlannedRun]:
    """The planned runs of the sweep in ``run_dir``, each config validated like a new one."""
    f = Path(run_dir) / SWEEP_FILE
    try:
        raw = json.loads(f.read_text(encoding="utf-8"))
        runs = []
        for r in raw["runs"]:
            config = RunConfig.from_dict(r["config"])
            name = run_name(config.backend, config.recipe.name, config.train.seed)
            if r["name"] != name:
                raise ValueError(f"run {r['name']!r} should be named {name!r}")
            validate_run(config)
            # the directory may have moved since the sweep started
            runs.append(PlannedRun(name, dataclasses.replace(config, run_dir=str(Path(run_dir) / name))))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        what = f"{type(err).__name__}: {err}" if not isinstance(err, ConfigError) else str(err)
        raise PlanError(f"{f} is not a readable sweep plan ({what}); start a new sweep with "
                        f"--out") from None
    if not runs:
        raise PlanError(f"{f} plans no runs; start a new sweep with --out")
    return runs


def finished(run: PlannedRun) -> dict | None:
    """The run's ``ok`` result if it has one (anything unreadable counts as unfinished)."""
    f = Path(run.config.run_dir) / "result.json"
    try:
        result = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and result.get("status") == "ok" else None


def _same_but_seed(a: RunConfig, b: RunConfig) -> bool:
    def key(c: RunConfig) -> dict:
        d = c.to_dict()
        d.pop("run_dir", None)
        d["train"] = {k: v for k, v in d["train"].items() if k != "seed"}
        return d
    return key(a) == key(b)


def earlier_throughput(config: RunConfig, device: dict, versions: dict) -> tuple[str, dict] | None:
    """The throughput an earlier run of this sweep measured for the same (backend, recipe)
    and every other setting but the seed, on the same device with the same framework
    versions: ``(its run name, its result's throughput)``, or None (not in a sweep, no such
    finished run, or that run cited another's). The timed step does not depend on the seed
    (the weights' values, not their shapes, differ), so a multi-seed sweep measures it once
    per (backend, recipe) (docs/design.md, "Throughput protocol")."""
    sweep_dir = Path(config.run_dir).parent
    if not (sweep_dir / SWEEP_FILE).is_file():
        return None
    try:
        planned = read_plan(sweep_dir)
    except PlanError:
        return None
    me = Path(config.run_dir).name
    for run in planned:
        if run.name == me:
            return None  # only runs planned before this one
        if not _same_but_seed(run.config, config):
            continue
        done = finished(run)
        measured = (done or {}).get("throughput") or {}
        if (done and done.get("device") == device and done.get("versions") == versions
                and measured.get("train") and not measured.get("measured_in")):
            return run.name, measured
    return None


def _unrun_result(run: PlannedRun, status: str, error: str) -> dict:
    c = run.config
    result = base_result(c.backend, c.recipe.name, c.train.seed, c.model.name, c.to_dict())
    result.update(status=status, error=error)
    return result


def _write_unrun(run: PlannedRun, status: str, error: str) -> dict:
    result = _unrun_result(run, status, error)
    write_json_atomic(Path(run.config.run_dir) / "result.json", result)
    return result


def run_child(run: PlannedRun) -> dict:
    """Run one planned run in a worker process, streaming its log; return its result.

    The run directory is claimed (``common.locks``) and the claim handed to the
    worker, which holds it for as long as it lives: a worker left over from a
    killed sweep keeps its directory from a second worker. A full disk becomes a
    ``failed`` result naming the disk, and the sweep goes on.
    """
    run_dir = Path(run.config.run_dir)
    try:
        claim = claim_directory(run_dir, wait=RUN_CLAIM_WAIT_SECONDS)
    except DirectoryBusy as busy:
        # not written: result.json belongs to the worker that holds the directory
        return _unrun_result(run, "failed", f"run directory {run_dir} is held by worker PID "
                                            f"{busy.pid or '?'} (of another bench run); left as is")
    except OSError as err:
        return _failed_on_disk(run, err)
    with claim:
        try:
            return _run_worker(run, claim)
        except OSError as err:
            return _failed_on_disk(run, err)


def _run_worker(run: PlannedRun, claim: DirectoryClaim) -> dict:
    run_dir = Path(run.config.run_dir)
    config_file = run_dir / "config.json"
    write_json_atomic(config_file, run.config.to_dict())
    result_file = run_dir / "result.json"
    before = result_file.stat().st_mtime_ns if result_file.exists() else None
    disk_full = None
    relay = ProgressRelay(prefix=f"  [{run.name}] ")  # the worker's progress, rendered here
    with worker_tmpdir(run_dir) as tmp, \
            open(run_dir / "log.txt", "a", encoding="utf-8", errors="backslashreplace") as logfile:
        # the backend's variables (e.g. KERAS_BACKEND before import; on several devices jax's
        # host devices before jax starts); RUN_DIR/tmp stays for the next start to remove
        env = child.environment(run.config.backend, run.config.train.devices, tmp=tmp,
                                remove_tmp_on_death=False)
        env[CLAIM_FD_ENV] = str(claim.fd)

        def keep(text: str) -> None:  # in log.txt; a full disk is the worker's to report
            nonlocal disk_full
            if disk_full is None:
                try:
                    logfile.write(text + "\n")
                    logfile.flush()
                except OSError as err:
                    if not is_disk_full(err):
                        raise
                    disk_full = err

        def echo(text: str) -> None:  # the driver's messages: in log.txt and on the terminal
            for line in text.splitlines() or [""]:
                keep(PROGRESS_MARK + line)
                log.info(f"  [{run.name}] {line}")

        def started(proc: subprocess.Popen) -> None:
            claim.set_holder(proc.pid)
            claim.release()  # the worker's inherited handle holds the directory from now on

        launched = worker_command(run.config, config_file)
        try:
            ended = child.run(launched, env, on_log=echo, on_progress=relay.feed, on_text=keep,
                              on_start=started, own_session=True,  # Ctrl-C reaches bench only
                              pass_fds=(claim.fd,), stop=_stop,
                              launched=launched[2] != "benchmarks.run_worker")
        finally:
            relay.close()
    code, tail = ended.code, ended.tail
    after = result_file.stat().st_mtime_ns if result_file.exists() else None
    if after is not None and after != before:
        try:
            return json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            if disk_full is None and not is_disk_full(err):
                return _write_unrun(run, "failed", f"result.json of the worker is unreadable ({err})")
    reason = f"signal {-code}" if code < 0 else f"exit code {code}"
    if any("RendezvousTimeoutError" in t for t in tail):
        t = run.config.train
        return _write_unrun(run, "failed", (
            f"the rendezvous at {t.rdzv_endpoint or 'localhost'} timed out after {t.rdzv_timeout} s "
            f"waiting for {t.nnodes} node(s); start 'bench run' with the same --rdzv-endpoint on "
            f"every node, or check that the address is reachable from each"))
    last = ended.last_line()
    if disk_full is not None:
        raise disk_full
    return _write_unrun(run, "failed", f"worker process died ({reason}): {last}"[:500])


@contextlib.contextmanager
def worker_tmpdir(run_dir: Path):
    """``RUN_DIR/tmp``, the worker's ``TMPDIR`` while it runs: the temporary files of the
    worker and its framework lie inside the run folder, like everything a run writes
    (a killed sweep's is removed when the run starts again)."""
    tmp = run_dir / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def worker_command(config: RunConfig, config_file: Path) -> list[str]:
    """The worker's command line: ``python -m benchmarks.run_worker CONFIG``, started under
    the backend's launcher when the run spreads over several processes (PyTorch: the
    elastic launcher, ``python -m torch.distributed.run``, i.e. ``torchrun``)."""
    worker = ["-m", "benchmarks.run_worker", str(config_file)]
    t = config.train
    launcher = backend_info(config.backend).launcher
    if not launcher or t.devices * t.nnodes == 1:
        return [sys.executable, *worker]
    if t.nnodes == 1:
        # one node: a local c10d rendezvous on a free port (torchrun --standalone)
        rendezvous = ["--standalone"]
    else:
        rendezvous = [f"--nnodes={t.nnodes}", f"--node-rank={t.node_rank}", "--rdzv-backend=c10d",
                      f"--rdzv-endpoint={t.rdzv_endpoint}", f"--rdzv-id={Path(config.run_dir).name}",
                      f"--rdzv-conf=join_timeout={t.rdzv_timeout}"]
    return [sys.executable, "-m", launcher, f"--nproc-per-node={t.devices}", *rendezvous,
            "--max-restarts=0", *worker]


def _failed_on_disk(run: PlannedRun, err: OSError) -> dict:
    """The result of a run that could not write its files; re-raised unless the disk is full."""
    if not is_disk_full(err):
        raise err
    run_dir = Path(run.config.run_dir)
    message = (f"{disk_full_message(err.filename or run_dir)}; free space there and continue with "
               f"'bench run --resume {run_dir.parent}'")
    try:
        return _write_unrun(run, "failed", message)
    except OSError:
        return _unrun_result(run, "failed", message)  # reported, not written: no room


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the worker (or its launcher, which passes it on) alone: the driver finishes
    the epoch in hand and writes its resume point (docs/design.md, "Checkpoints and
    resume"), while its input-pipeline processes keep serving it; after STOP_GRACE_SECONDS,
    or once it has exited, SIGKILL to whatever is left of its process group."""
    if proc.poll() is None:
        log.info(f"stopping: the run finishes its epoch and saves it (at most "
                 f"{STOP_GRACE_SECONDS:.0f} s; Ctrl-C again to stop at once)")
        try:
            os.kill(proc.pid, signal.SIGTERM)
            # read (and drop) what it still writes, so a full pipe never blocks its last epoch
            proc.communicate(timeout=STOP_GRACE_SECONDS)
        except (ProcessLookupError, subprocess.TimeoutExpired, ValueError, OSError):
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def run_sweep(runs: list[PlannedRun], resume: bool = False) -> list[dict]:
    """Run every planned run not yet finished; return all results in plan order."""
    results = []
    for i, run in enumerate(runs, 1):
        done = finished(run) if resume else None
        if done:
            log.info(f"[{i}/{len(runs)}] {run.name}: already finished, kept")
            results.append(done)
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
