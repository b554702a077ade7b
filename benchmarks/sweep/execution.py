"""``bench throughput --sweep``, the run: each planned job in its own process, within the budget.

Each job (a (backend, model, precision, mode) with its rows) runs in a
``benchmarks.sweep_worker`` process started through ``benchmarks.child``; each row is read
back as soon as the child sends it, so a job stopped at the budget keeps what it measured.
``run_sweep`` plans (``benchmarks.sweep.planning``), runs the jobs (one at a time on a GPU,
side by side in a CPU smoke), completes each row (FLOPs, MFU, the limiting stage) and writes
the outputs (``benchmarks.sweep.output``). No framework imported.
"""

from __future__ import annotations

import json
import logging
import platform
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from benchmarks import child
from benchmarks.sweep import planning
from benchmarks.sweep.output import limiting_stage, targets, write_outputs
from benchmarks.sweep.planning import (E2E_MODEL, E2E_PHASE_SECONDS, E2E_PHASES, TRAIN_FLOPS_FACTOR, Job,
                                       Settings, image_size, models_of, plan, row_base)
from common import gpu_peaks
from common.results import cpu_name, write_json_atomic

log = logging.getLogger(__name__)

REPORT_RESERVE_SECONDS = 10.0  # the JSON, markdown and plot are written after the deadline


# ------------------------------------------------------------------ children

# what each framework reads for its CPU threads: torch (and numpy's BLAS) OpenMP's, TensorFlow
# its intra-op pool's, inductor the processes it compiles with; jax has a switch for one thread
# (``child_env``)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "TF_NUM_INTRAOP_THREADS", "TORCHINDUCTOR_COMPILE_THREADS")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false"


def child_env(threads: int | None = None, backend: str | None = None,
              tmp: Path | None = None) -> dict[str, str]:
    """The worker's environment (``child.environment``, without progress: its stdout carries
    result messages only; ``tmp``: its job folder, removed if bench dies); with ``threads``
    (jobs side by side on a CPU) each framework's threads capped at that many, where the
    user has not set the variable already."""
    env = child.environment(backend, progress=False, tmp=tmp, tmp_as_tmpdir=False)
    if threads:
        for name in THREAD_VARIABLES:
            env.setdefault(name, str(threads))
        if threads == 1 and XLA_ONE_THREAD not in env.get("XLA_FLAGS", ""):
            env["XLA_FLAGS"] = " ".join(filter(None, [env.get("XLA_FLAGS"), XLA_ONE_THREAD]))
    return env


def run_child(payload: dict, deadline: float, on_record: Callable[[dict], None]) -> dict:
    """Run one job in ``python -m benchmarks.sweep_worker``, handing each result message to
    ``on_record`` as it comes (its error message as a ``failed`` event); killed at
    ``deadline`` (what it sent stays). Returns ``{"seconds", "returncode", "killed",
    "stderr_tail", "ready_seconds"}`` (``ready_seconds``: from the start to the job's ``job``
    record, i.e. the interpreter, the framework's import, the model's build; None when it
    never came)."""
    with child.temporary_folder("bench-sweep-job-") as tmp:
        job_file = tmp / "job.json"
        job_file.write_text(json.dumps(payload), encoding="utf-8")
        t0 = time.time()
        ready: list[float] = []

        def record(message: dict) -> None:
            if message.get("event") == "job" and not ready:
                ready.append(time.time() - t0)
            on_record(message)

        ended = child.run(child.command("benchmarks.sweep_worker", [job_file]),
                          child_env(payload.get("threads"), payload.get("backend"), tmp),
                          on_result=record, merge_stderr=False, deadline=deadline,
                          own_session=True, on_log=lambda text: None)
    if ended.error is not None:
        on_record({"event": "failed", "error": ended.error["error"],
                   "traceback": ended.error.get("traceback")})
    return {"seconds": ended.seconds, "returncode": ended.code, "killed": ended.killed,
            "stderr_tail": ended.tail[-3:], "ready_seconds": ready[0] if ready else None}


def side_by_side(jobs: list[Job], start: Callable[[Job], object], processes: int
                 ) -> Iterable[tuple[Job, object]]:
    """``(job, start(job))`` for each job in ``jobs``' order. One process: each job starts when
    the one before it has finished (a GPU's timing). More: ``processes`` threads each run
    one job's child at a time, the longest estimate first (the shortest run last, to end
    together); the results still come in ``jobs``' order, so the JSON, markdown and plot do
    not depend on which finished first. A pool thread lives until no job is left, so each
    child's ``PR_SET_PDEATHSIG`` (tied to the thread that started it) fires only when this
    process dies."""
    if processes <= 1:
        for job in jobs:
            yield job, start(job)
        return
    waiting = sorted(range(len(jobs)), key=lambda i: -jobs[i].estimate())
    outcomes: dict[int, tuple[bool, object]] = {}
    finished = [threading.Event() for _ in jobs]
    lock, stop = threading.Lock(), threading.Event()

    def work() -> None:
        while not stop.is_set():
            with lock:
                if not waiting:
                    return
                i = waiting.pop(0)
            try:
                outcomes[i] = (True, start(jobs[i]))
            except BaseException as err:  # noqa: BLE001 - raised again in the caller's thread
                outcomes[i] = (False, err)
            finally:
                finished[i].set()

    for n in range(processes):
        threading.Thread(target=work, name=f"sweep-jobs-{n}", daemon=True).start()
    try:
        for i, job in enumerate(jobs):
            while not finished[i].wait(1.0):  # a timed wait: Ctrl-C reaches this thread
                pass
            ok, value = outcomes[i]
            if not ok:
                raise value
            yield job, value
    finally:
        stop.set()  # no further job starts once the caller stops (an error, Ctrl-C)


# ------------------------------------------------------------------ the sweep

def run_sweep(settings: Settings, out_dir: Path, runner=run_child,
              clock: Callable[[], float] = time.time) -> dict:
    """Plan, run within ``settings.budget_seconds`` and write ``throughput.json``,
    ``throughput.md`` and ``throughput.png`` under ``out_dir``; returns the JSON record."""
    start = clock()
    deadline = start + settings.budget_seconds - REPORT_RESERVE_SECONDS
    jobs, rows = plan(settings)
    flops: dict[str, dict] = {}
    devices: dict[str, dict] = {}
    versions: dict[str, dict] = {}
    decode: dict[str, dict] = {}
    job_log: list[dict] = []
    processes = max(1, min(settings.processes, len(jobs)))
    threads = max(1, planning.cores() // processes) if processes > 1 else None
    folder: list[Path] = []
    folder_lock = threading.Lock()

    def data_folder() -> Path:
        with folder_lock:  # made once, by the first job that needs it
            if not folder:
                folder.append(_jpeg_folder(settings))
            return folder[0]

    def start_job(job: Job):
        """The job's child, or why it does not start (the budget)."""
        left = deadline - clock()
        if job.first_estimate() > left:
            return None, (f"time budget: ~{job.first_estimate():.0f} s needed to start, "
                          f"{max(0.0, left):.0f} s left")
        payload = _payload(job, settings, deadline, data_folder() if job.runs_e2e else None)
        if threads:
            payload["threads"] = threads
        got: list[dict] = []
        info = runner(payload, deadline, lambda record: got.append(_on_record(record, job, settings)))
        return (got, info), None

    for job, (outcome, reason) in side_by_side(jobs, start_job, processes):
        if outcome is None:
            rows += _not_run_rows(job, settings, reason)
            continue
        got, info = outcome
        for record in got:
            event = record.get("event")
            if event == "flops":
                flops.setdefault(record["model"], record)
            elif event == "job":
                devices[job.backend] = record.get("device") or {}
                versions[job.backend] = record.get("versions") or {}
            elif event == "decode":
                decode[job.backend] = record
            elif event in ("row", "e2e"):
                rows.append(record)
        rows += _unreported(job, got, settings, info)
        job_log.append({"job": job.job, "backend": job.backend, "mode": job.mode, "model": job.model,
                        "precision": job.precision, "tier": job.tier,
                        "items": [f"{i.kind}@{i.batch}" for i in job.items],
                        "estimate_seconds": round(job.estimate(), 1),
                        "seconds": round(info["seconds"], 1),
                        "ready_seconds": None if info.get("ready_seconds") is None
                        else round(info["ready_seconds"], 1), "killed": info["killed"],
                        "returncode": info["returncode"], "stderr_tail": info["stderr_tail"]})
        # what is measured so far, in case the whole command is stopped before the report
        write_json_atomic(Path(out_dir) / "throughput.json", {
            "complete": False, "command": settings.command, "smoke": settings.smoke,
            "rows": rows, "flops": flops, "decode": decode, "devices": devices, "jobs": job_log})
    for backend, record in decode.items():
        for row in rows:
            if row.get("table") == "end_to_end" and row.get("backend") == backend:
                row["decode"] = {k: record.get(k) for k in ("status", "images_per_second",
                                                            "images", "seconds", "pipeline", "reason")}
    device_name = _device_name(devices, settings)
    peaks = gpu_peaks.device_peaks(device_name)
    for row in rows:
        _complete_row(row, flops, peaks)
    record = {
        "complete": True, "command": settings.command, "smoke": settings.smoke,
        "not_a_result": ("CPU smoke test: tiny sizes, an injected out-of-memory error and an "
                         "injected device name; no figure here is a GPU measurement")
        if settings.smoke else None,
        "device": {"name": device_name, "by_backend": devices,
                   "injected_for_mfu": settings.device_name if settings.device_name else None,
                   "peaks": None if peaks is None else {
                       "device": peaks.name, "bf16": peaks.bf16, "tf32": peaks.tf32,
                       "fp32": peaks.fp32, "source": peaks.source}},
        "machine": {"cpu": cpu_name(), "cores": planning.cores(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "versions": versions,
        "settings": {"budget_seconds": settings.budget_seconds, "steps": settings.steps,
                     "warmup": settings.warmup, "batch_sizes": list(settings.batch_sizes),
                     "e2e_batch": settings.e2e_batch, "e2e_epochs": settings.e2e_epochs,
                     "e2e_images": settings.e2e_images_per_class * 10,
                     "workers": _workers(settings), "inject_oom": list(settings.inject_oom),
                     "processes": processes, "threads_per_process": threads},
        "flops": {m: {"image_size": f["image_size"], "forward_flops_per_image": f["forward_flops"],
                      "train_flops_per_image": _train_flops(f["forward_flops"]),
                      "counted_by": "torch.utils.flop_counter.FlopCounterMode on the PyTorch "
                                    "backend's torchvision model, eval-mode forward of one image; "
                                    f"a training step counts {TRAIN_FLOPS_FACTOR} x forward",
                      "versions": f.get("versions")} for m, f in flops.items()},
        "rows": [r for r in rows if r.get("table") == "model_step"],
        "end_to_end": [r for r in rows if r.get("table") == "end_to_end"],
        "jobs": job_log,
        "elapsed_seconds": round(clock() - start, 1),
        "data": str(folder[0]) if folder else None,
    }
    record["targets"] = targets(record)
    write_outputs(record, out_dir)
    record["elapsed_seconds"] = round(clock() - start, 1)
    write_json_atomic(Path(out_dir) / "throughput.json", record)
    return record


def _workers(settings: Settings) -> int:
    """Input-pipeline workers: the cores less one (the training process's own)."""
    return settings.workers or max(1, planning.cores() - 1)


def _train_flops(forward: float | None) -> float | None:
    return None if forward is None else TRAIN_FLOPS_FACTOR * forward


def _jpeg_folder(settings: Settings) -> Path:
    from common.synthetic import generate_jpeg_folder

    size = image_size(E2E_MODEL if E2E_MODEL in models_of(settings) else models_of(settings)[0],
                      settings)
    t0 = time.time()
    folder = generate_jpeg_folder(settings.e2e_images_per_class, size=size,
                                  workers=1 if settings.smoke else None)
    log.info(f"JPEG folder {folder} ({settings.e2e_images_per_class * 10} images, {size} px) "
             f"ready in {time.time() - t0:.1f} s")
    return folder


def _payload(job: Job, settings: Settings, deadline: float, data: Path | None) -> dict:
    payload = {"job": job.job, "backend": job.backend, "mode": job.mode, "model": job.model,
               "precision": job.precision, "image_size": job.image_size, "deadline": deadline,
               "steps": settings.steps, "warmup": settings.warmup,
               "batch_sizes": list(settings.batch_sizes), "smoke": settings.smoke}
    if job.job == "flops":
        payload["models"] = [{"model": m, "image_size": image_size(m, settings)}
                             for m in job.model.split(",")]
    if job.job == "model_step":
        payload["items"] = [{"kind": i.kind, "batch": i.batch, "tier": i.tier,
                             "estimate_seconds": job.item_seconds(i)} for i in job.items]
        payload["inject_oom"] = list(settings.inject_oom)
        payload["count_flops"] = job.count_flops
    if job.runs_e2e:
        payload.update(e2e=True, data=str(data), batch=settings.e2e_batch, epochs=settings.e2e_epochs,
                       workers=_workers(settings),
                       phases=[{"recipe": r, "phase": p,
                                "estimate_seconds": E2E_PHASE_SECONDS[job.backend]}
                               for r, p in E2E_PHASES])
    return payload


def _on_record(record: dict, job: Job, settings: Settings) -> dict:
    """Label a child's record with its job and echo it on the console as it comes."""
    event = record.get("event")
    if event == "row":
        record.update(table="model_step", backend=job.backend, mode=job.mode, model=job.model,
                      precision=job.precision, image_size=job.image_size)
        record["tier"] = next((i.tier for i in job.items if i.kind == record["kind"]
                               and i.batch == record["batch_requested"]), job.tier)
    elif event == "e2e":
        record.update(table="end_to_end", backend=job.backend, mode=job.mode, model=job.model,
                      precision=job.precision, image_size=job.image_size)
    line = console_line(record)
    if line:
        log.info(line)
    return record


def console_line(record: dict) -> str:
    event = record.get("event")
    if event == "row":
        head = (f"{record['backend']} {record['mode']} {record['model']} {record['precision']} "
                f"{record['kind']} {record['batch_requested']}")
        if record.get("status") != "ok":
            return f"{head}: {record.get('status')} ({record.get('reason') or record.get('error')})"
        return (f"{head}: {record['images_per_second']:.1f} img/s (p10 "
                f"{record['images_per_second_p10']:.1f}, p90 {record['images_per_second_p90']:.1f}; "
                f"first step {record['first_step_seconds']:.1f} s)"
                + (f" [batch {record['batch']}: {record['fell_back']}]" if record.get("fell_back") else ""))
    if event == "e2e":
        head = f"{record['backend']} end to end {record['model']} {record['recipe']}/{record['phase']}"
        if record.get("status") != "ok":
            return f"{head}: {record.get('status')} ({record.get('reason') or record.get('error')})"
        return (f"{head}: {record['end_to_end_images_per_second']:.1f} img/s end to end, "
                f"{record['model_step_images_per_second']:.1f} img/s model step")
    if event == "decode" and record.get("status") == "ok":
        return f"input pipeline alone: {record['images_per_second']:.1f} img/s ({record['pipeline']})"
    if event == "failed":
        return f"job failed: {record.get('error')}"
    return ""


def _not_run_rows(job: Job, settings: Settings, reason: str) -> list[dict]:
    rows = [row_base(job.backend, job.mode, job.model, job.precision, job.image_size, item)
            | {"status": "not run", "reason": reason} for item in job.items]
    if job.runs_e2e:
        rows += [{"table": "end_to_end", "backend": job.backend, "mode": job.mode, "model": job.model,
                  "precision": job.precision, "batch": settings.e2e_batch, "recipe": r, "phase": p,
                  "status": "not run", "reason": reason} for r, p in E2E_PHASES]
    return rows


def _unreported(job: Job, got: list[dict], settings: Settings, info: dict) -> list[dict]:
    """Rows the child never printed: stopped at the budget, or it failed (its error)."""
    failed = next((r for r in got if r.get("event") == "failed"), None)
    if info["killed"]:
        reason, status = "stopped at the time budget", "not run"
    elif failed is not None:
        reason, status = failed["error"], "failed"
    elif info["returncode"] != 0:
        reason = f"the job's process exited with {info['returncode']}: " \
                 f"{(info['stderr_tail'] or ['no output'])[-1]}"
        status = "failed"
    else:
        reason, status = "not reported by the job", "failed"
    key = "reason" if status == "not run" else "error"
    seen = {(r.get("kind"), r.get("batch_requested")) for r in got if r.get("event") == "row"}
    rows = [row_base(job.backend, job.mode, job.model, job.precision, job.image_size, i)
            | {"status": status, key: reason} for i in job.items if (i.kind, i.batch) not in seen]
    if job.runs_e2e:
        seen = {(r.get("recipe"), r.get("phase")) for r in got if r.get("event") == "e2e"}
        rows += [{"table": "end_to_end", "backend": job.backend, "mode": job.mode, "model": job.model,
                  "precision": job.precision, "batch": settings.e2e_batch, "recipe": r, "phase": p,
                  "status": status, key: reason} for r, p in E2E_PHASES if (r, p) not in seen]
    return rows


def _device_name(devices: dict[str, dict], settings: Settings) -> str | None:
    if settings.device_name:
        return settings.device_name
    names = [d.get("name") for d in devices.values() if d.get("kind") in ("cuda", "gpu")]
    return names[0] if names else None


def _complete_row(row: dict, flops: dict[str, dict], peaks) -> None:
    """FLOPs per image, the peak the row is held to and its MFU; the precision label."""
    if row.get("table") == "end_to_end":
        ratio = None
        if row.get("status") == "ok" and row.get("model_step_images_per_second"):
            ratio = row["end_to_end_images_per_second"] / row["model_step_images_per_second"]
        row["ratio"] = ratio
        row["limiting_stage"] = limiting_stage(row)
        return
    tf32 = bool(row.get("tf32"))
    row["precision_label"] = gpu_peaks.precision_label(row["precision"], tf32)
    forward = (flops.get(row["model"]) or {}).get("forward_flops")
    per_image = None if forward is None else (
        _train_flops(forward) if row["kind"] == "train" else forward)
    row["flops_per_image"] = per_image
    peak_kind = gpu_peaks.peak_precision(row["precision"], tf32)
    row["peak_flops"] = None if peaks is None else peaks.flops(peak_kind)
    row["peak_precision"] = peak_kind if peaks is not None else None
    row["mfu"] = gpu_peaks.mfu(row.get("images_per_second"), per_image, row["peak_flops"]) \
        if row.get("status") == "ok" else None
