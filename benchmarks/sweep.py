"""``bench throughput --sweep``: every backend, model, precision, mode and batch size in one
command, within a time budget, written as one JSON, one markdown table and one plot.

The parent (this module) imports no framework. It plans rows, most important first,
runs each job (a (backend, model, precision, mode) with its rows) in its own
``benchmarks.sweep_worker`` process, and reads each row back as soon as the child
prints it, so a job stopped at the budget keeps what it measured:

* model step (docs/design.md, "Throughput protocol"): train and inference img/s
  (median, p10, p90) at batch 256, 128 and 64 with every layer training, the first
  (compiling) step, peak device memory; a batch that runs out of memory falls back to
  the next smaller one and the row says so;
* FLOPs per image, counted once per model and size with PyTorch's
  ``FlopCounterMode`` on the torchvision model (a training step = 3 x forward), and MFU
  against the device's peak dense FLOP/s for the precision that ran
  (``common.gpu_peaks``; an unknown device leaves MFU blank);
* end to end: real fine-tuning epochs (``two_phase`` phase 2, ``full``) over a
  generated folder of JPEG files through each backend's own input pipeline, beside
  the model step of the same phase and the pipeline alone, so that the stage that
  limits is a number.

Backends that cannot run on the machine (no TensorFlow on the lent GPU machines) are
rows that say why, never numbers. ``--smoke`` runs the same code on a CPU with tiny
sizes, injects an out-of-memory error at the largest batch and a device name for the
MFU arithmetic, and says loudly that it is not a result.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shlex
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from backends.base import BackendError, availability, backend_info, backend_names, unsupported_model
from benchmarks import child
from common import gpu_peaks
from common.models import MODELS, SMOKE_MODEL
from common.results import cpu_name, write_json_atomic

log = logging.getLogger(__name__)



def _declared_sweeps() -> dict:
    """Each registry entry's ``BackendInfo.sweep`` (its modes and time estimates), in registry
    order; entries without one (or whose descriptor does not load) are not in the sweep."""
    out = {}
    for name in backend_names():
        try:
            declared = backend_info(name).sweep
        except BackendError:
            continue
        if declared is not None:
            out[name] = declared
    return out


SWEEPS = _declared_sweeps()
# what the sweep runs, most important first: (backend, mode), by each ``SweepMode.order``.
# ``mode`` is how the step runs: PyTorch eager or torch.compile; Keras' compiled step is XLA
# on jax, eager on torch, a tf.function on TensorFlow; slim a TF1 graph.
SWEEP_MODES = {(b, m.name): m for b, m in sorted(
    ((b, m) for b, declared in SWEEPS.items() for m in declared.modes), key=lambda bm: bm[1].order)}
MODES: tuple[tuple[str, str], ...] = tuple(SWEEP_MODES)
COMPILED = {m.name for m in SWEEP_MODES.values() if m.compiled}  # every new shape is a compilation
# the backend whose model-step jobs count each model's FLOPs (Backend.forward_flops)
FLOPS_BACKEND = next((b for b, declared in SWEEPS.items() if declared.counts_flops), None)
HEADLINE_MODELS = ("inception_v3", "resnet50")
BATCH_SIZES = (256, 128, 64)
PRECISIONS = ("bf16", "fp32")
KINDS = ("train", "infer")
E2E_PHASES = (("two_phase", "top2"), ("full", "full"))
E2E_MODEL, E2E_BATCH = "inception_v3", 128
TARGET_E2E_RATIO = 0.9
E2E_IMAGES_PER_CLASS = 512   # 10 classes: 5,120 images, 40 batches of 128, 20 of 256
TRAIN_FLOPS_FACTOR = 3       # a training step ~ forward + backward (2 x forward)

# Estimates (seconds) on one H100 with 16 cores, declared by each backend
# (``BackendInfo.sweep``), used to plan within the budget until measured figures replace
# them; each job's real duration is in the JSON ("jobs").
START_SECONDS = {b: declared.start_seconds for b, declared in SWEEPS.items()}
ITEM_SECONDS = {(b, mode, kind): m.train_seconds if kind == "train" else m.infer_seconds
                for (b, mode), m in SWEEP_MODES.items() for kind in ("train", "infer")}
E2E_PHASE_SECONDS = {b: declared.e2e_phase_seconds for b, declared in SWEEPS.items()}
FLOPS_SECONDS = 15.0
REPORT_RESERVE_SECONDS = 10.0  # the JSON, markdown and plot are written after the deadline

NO_TENSORFLOW = "no TensorFlow on this machine"
SMOKE_DEVICE = "NVIDIA H100 80GB HBM3"  # injected by --smoke for the MFU arithmetic only
SMOKE_BUDGET_SECONDS = 1800.0  # --smoke: a safety net (its estimates are a GPU's); a stuck child stops


@dataclass(frozen=True)
class Settings:
    """What one sweep measures and how (the CLI's options, resolved)."""

    backends: tuple[str, ...] = tuple(dict.fromkeys(b for b, _ in MODES))
    modes: tuple[str, ...] = tuple(dict.fromkeys(m for _, m in MODES))
    models: tuple[str, ...] = ()          # () = every model of common.models.MODELS
    precisions: tuple[str, ...] = PRECISIONS
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    steps: int = 20
    warmup: int = 3
    budget_seconds: float = 420.0
    smoke: bool = False
    e2e: bool = True
    e2e_batch: int = E2E_BATCH
    e2e_epochs: int = 2
    e2e_images_per_class: int = E2E_IMAGES_PER_CLASS
    workers: int = 0                      # input-pipeline workers; 0: the cores less one
    inject_oom: tuple[int, ...] = ()      # batch sizes whose first step raises the framework's OOM
    device_name: str | None = None        # the device name the MFU peak is looked up by (--smoke)
    # one process per (backend, mode, model, precision), its end-to-end rows included: no
    # compiled mode's batch size or end-to-end rows in a process (and a compilation) of its own
    one_job_per_key: bool = False
    # jobs run side by side: 1 on a GPU (each row is timed with the machine to itself); the
    # CPU smoke one per core, the cores' threads divided among them (``run_sweep``)
    processes: int = 1
    command: str = ""

    @classmethod
    def for_smoke(cls, **kw) -> "Settings":
        """The same code paths on a CPU, as small as they go: every backend and mode, one
        model (``common.models.SMOKE_MODEL`` at its minimum size: every backend has it, and
        it has the fewest layers to compile), fp32 (bf16 on a CPU without bf16 units is
        emulated, ~10x slower a step), batches of 4 and 2, 2 timed steps, 10 JPEG files in
        batches of 2 through one pipeline worker; an out-of-memory error injected at batch 4
        and a device name injected for the MFU arithmetic. Every (backend, mode) is one
        process (``one_job_per_key``): on a GPU a compiled mode's batch sizes and end-to-end
        rows are jobs of their own so that the budget reaches every mode's headline row
        first; here that would only start and compile the same model again. The processes run
        side by side, one per core (``processes``): a smoke's numbers are not results, its
        wall time is the frameworks' start, model builds and compilations."""
        base = dict(models=(SMOKE_MODEL,), precisions=("fp32",), batch_sizes=(4, 2), steps=2,
                    warmup=1, smoke=True, e2e_batch=2, e2e_images_per_class=1, workers=1,
                    inject_oom=(4,), device_name=SMOKE_DEVICE, budget_seconds=SMOKE_BUDGET_SECONDS,
                    one_job_per_key=True, processes=_cores())
        return cls(**{**base, **kw})


@dataclass(frozen=True)
class Item:
    """One row to measure: a (kind, batch) of a job."""

    kind: str
    batch: int
    tier: int


@dataclass
class Job:
    """One child process: ``model_step`` over ``items``, ``end_to_end`` or ``flops``."""

    job: str
    backend: str
    mode: str
    model: str
    precision: str
    image_size: int
    tier: int
    items: list[Item] = field(default_factory=list)
    count_flops: bool = False  # a PyTorch job also counts its model's FLOPs (no extra process)
    e2e: bool = False          # an eager model-step job also runs its key's end-to-end rows

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.backend, self.mode, self.model, self.precision)

    def item_seconds(self, item: Item) -> float:
        return ITEM_SECONDS[(self.backend, self.mode, item.kind)]

    def estimate(self) -> float:
        if self.job == "flops":
            return FLOPS_SECONDS
        e2e = E2E_PHASE_SECONDS[self.backend] * len(E2E_PHASES) \
            if self.job == "end_to_end" or self.e2e else 0.0
        return START_SECONDS[self.backend] + sum(self.item_seconds(i) for i in self.items) + e2e

    @property
    def runs_e2e(self) -> bool:
        return self.job == "end_to_end" or self.e2e

    def first_estimate(self) -> float:
        """What must fit in the budget to start this job at all."""
        if self.job == "model_step" and self.items:
            return START_SECONDS[self.backend] + self.item_seconds(self.items[0])
        if self.job == "end_to_end":
            return START_SECONDS[self.backend] + E2E_PHASE_SECONDS[self.backend]
        return self.estimate()


# ------------------------------------------------------------------ plan

def image_size(model: str, settings: Settings) -> int:
    """Each model's native size on a GPU (299, 224); its minimum in a CPU smoke."""
    spec = MODELS[model]
    return spec.min_size if settings.smoke else spec.default_size


def models_of(settings: Settings) -> list[str]:
    """The suite's model table (``common.models.MODELS``), the headline models first."""
    names = list(settings.models or MODELS)
    return sorted(names, key=lambda m: (HEADLINE_MODELS.index(m) if m in HEADLINE_MODELS
                                        else len(HEADLINE_MODELS), list(MODELS).index(m)))


def tier(backend: str, mode: str, model: str, precision: str, kind: str, batch: int,
         biggest: int) -> int:
    """Priority of a row, 0 first: bf16 training at the largest batch in its mode's
    ``SweepMode.tier`` (PyTorch eager 0, then Keras on jax 1), [the end-to-end target, 2
    (``Sweep.e2e_tier``)], the rest of bf16 at the largest
    batch (3), [other end-to-end rows, 4], fp32 at the largest batch (5), smaller batches
    (6), models beyond InceptionV3 and ResNet-50 (7)."""
    if model not in HEADLINE_MODELS:
        return 7
    if batch != biggest:
        return 6
    if precision != "bf16":
        return 5
    return SWEEP_MODES[(backend, mode)].tier if kind == "train" else 3


def not_run_reason(backend: str, precision: str) -> str | None:
    """Why ``backend`` has no rows here: not installed (TensorFlow named as such), or no bf16."""
    reason = availability(backend)
    if reason:
        # BackendInfo.availability: "tensorflow, tf_slim, tf_keras not installed; <hint>"
        missing = reason.split(" not installed")[0].split(", ") if " not installed" in reason else []
        return NO_TENSORFLOW if "tensorflow" in missing else reason
    if precision == "bf16" and backend_info(backend).bf16_refusal:
        return backend_info(backend).bf16_refusal
    return None


def plan(settings: Settings) -> tuple[list[Job], list[dict]]:
    """The jobs to run in order, and the rows that will not run (with their reason).

    A job of an eager mode measures all its rows in one process (each is seconds); a
    compiled mode's rows of one batch size are a job of their own, so that its smaller
    batch sizes (each a new compilation) wait for the more important rows of every mode.
    A job takes the priority of its first row; jobs of one priority run cheapest first."""
    biggest = max(settings.batch_sizes)
    jobs: list[Job] = []
    skipped: list[dict] = []
    for backend, mode in MODES:
        if backend not in settings.backends or mode not in settings.modes:
            continue
        for model in models_of(settings):
            if unsupported_model(backend, model):
                continue  # the backend does not have this model: no row
            for precision in settings.precisions:
                reason = not_run_reason(backend, precision)
                items = [Item(kind, batch, tier(backend, mode, model, precision, kind, batch, biggest))
                         for batch in sorted(settings.batch_sizes, reverse=True) for kind in KINDS]
                if reason:
                    skipped += [_row_base(backend, mode, model, precision, image_size(model, settings),
                                          item) | {"status": "not run", "reason": reason}
                                for item in items]
                    continue
                chunks: dict[int, list[Item]] = {}
                split = mode in COMPILED and not settings.one_job_per_key
                for item in items:  # batch sizes from the largest, train before infer
                    chunks.setdefault(item.batch if split else 0, []).append(item)
                for chunk in chunks.values():
                    chunk.sort(key=lambda i: i.tier)
                    jobs.append(Job("model_step", backend, mode, model, precision,
                                    image_size(model, settings), chunk[0].tier, chunk))
    if settings.e2e:
        for e2e in _e2e_jobs(settings, skipped):
            # an eager backend's end-to-end rows run in its model-step job of the same (backend,
            # model, precision, mode): one interpreter start instead of two (a compiled one's
            # too with one_job_per_key)
            host = next((j for j in jobs if j.key == e2e.key
                         and (e2e.mode not in COMPILED or settings.one_job_per_key)), None)
            if host is not None:
                host.e2e = True
            else:
                jobs.append(e2e)
    # within a priority the cheaper mode first (its model steps; stable: then MODES' and the
    # models' order)
    jobs.sort(key=lambda j: (j.tier, START_SECONDS[j.backend] + sum(j.item_seconds(i) for i in j.items)))
    # FLOPs: counted by the first job of each model on the backend that counts them
    # (``Sweep.counts_flops``: PyTorch, which has the torchvision model built); a model no
    # such job measures gets a counting job of its own, first, in that backend's first mode
    counted = set()
    for j in jobs:
        if j.job == "model_step" and j.backend == FLOPS_BACKEND and (j.model, j.image_size) not in counted:
            j.count_flops = True
            counted.add((j.model, j.image_size))
    needs_flops = sorted({(j.model, j.image_size) for j in jobs if j.job == "model_step"} - counted)
    if needs_flops and FLOPS_BACKEND and availability(FLOPS_BACKEND) is None:
        jobs.insert(0, Job("flops", FLOPS_BACKEND, SWEEPS[FLOPS_BACKEND].modes[0].name,
                           ",".join(m for m, _ in needs_flops), "fp32", 0, -1))
    return jobs, skipped


def _e2e_jobs(settings: Settings, skipped: list[dict]) -> list[Job]:
    """One end-to-end job per backend (its own default mode), InceptionV3 when selected."""
    models = models_of(settings)
    model = E2E_MODEL if E2E_MODEL in models else models[0]
    out = []
    seen = set()
    for backend, mode in MODES:
        if backend in seen:  # one row per backend, in its own first mode
            continue
        seen.add(backend)
        if backend not in settings.backends or mode not in settings.modes \
                or unsupported_model(backend, model):
            continue
        precision = "bf16" if "bf16" in settings.precisions and not backend_info(backend).bf16_refusal \
            else "fp32"
        t = SWEEPS[backend].e2e_tier
        reason = not_run_reason(backend, precision)
        if reason:
            skipped += [{"table": "end_to_end", "backend": backend, "mode": mode, "model": model,
                         "precision": precision, "batch": settings.e2e_batch, "recipe": recipe,
                         "phase": phase, "status": "not run", "reason": reason}
                        for recipe, phase in E2E_PHASES]
            continue
        out.append(Job("end_to_end", backend, mode, model, precision, image_size(model, settings), t))
    return out


def _row_base(backend: str, mode: str, model: str, precision: str, size: int, item: Item) -> dict:
    return {"table": "model_step", "backend": backend, "mode": mode, "model": model,
            "precision": precision, "image_size": size, "kind": item.kind,
            "batch_requested": item.batch, "tier": item.tier}


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
    threads = max(1, _cores() // processes) if processes > 1 else None
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
        "machine": {"cpu": cpu_name(), "cores": _cores(), "platform": platform.platform(),
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


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _workers(settings: Settings) -> int:
    """Input-pipeline workers: the cores less one (the training process's own)."""
    return settings.workers or max(1, _cores() - 1)


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
    rows = [_row_base(job.backend, job.mode, job.model, job.precision, job.image_size, item)
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
    rows = [_row_base(job.backend, job.mode, job.model, job.precision, job.image_size, i)
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


def limiting_stage(row: dict) -> str | None:
    """Which stage limits an end-to-end row, from its numbers: the model step when the
    epoch keeps within ``TARGET_E2E_RATIO`` of it; else the input pipeline when it alone
    is slower than the model step; else the loop between them."""
    if row.get("status") != "ok" or row.get("ratio") is None:
        return None
    decode = (row.get("decode") or {}).get("images_per_second")
    step = row["model_step_images_per_second"]
    if row["ratio"] >= TARGET_E2E_RATIO:
        return "the model step (the input pipeline keeps up)"
    if decode is None:
        return "not known: the input pipeline alone was not timed"
    if decode < step:
        return (f"the input pipeline: {decode:.0f} img/s decoding and augmenting alone, "
                f"below the model step's {step:.0f}")
    return (f"the loop around the step (copies, per-step host work): the pipeline alone gives "
            f"{decode:.0f} img/s, the model step {step:.0f}")


# ------------------------------------------------------------------ targets

def targets(record: dict) -> list[dict]:
    """The issue's targets on an H100, checked against this sweep's rows (not on a CPU)."""
    rows = record["rows"]

    def rate(backend, mode, model, batch=256):
        for r in rows:
            if (r["backend"], r["mode"], r["model"], r["precision"], r["kind"],
                    r["batch_requested"]) == (backend, mode, model, "bf16", "train", batch) \
                    and r.get("status") == "ok":
                return r["images_per_second"]
        return None

    out = []
    for model, floor in (("inception_v3", 2500.0), ("resnet50", 3000.0)):
        got = rate("pytorch", "eager", model)
        out.append({"target": f"{model} bf16 train, torch backend, batch 256 >= {floor:.0f} img/s",
                    "value": got, "met": None if got is None or record["smoke"] else got >= floor})
        jax = rate("keras-jax", "XLA", model)
        within = None if got is None or jax is None else jax / got
        out.append({"target": f"{model} bf16 train batch 256: Keras on jax within 15 % of torch",
                    "value": within,
                    "met": None if within is None or record["smoke"] else within >= 0.85})
    e2e = next((r for r in record["end_to_end"] if r["backend"] == "pytorch"
                and r.get("model") == "inception_v3" and r.get("phase") == "full"
                and r.get("status") == "ok"), None)
    ratio = e2e["ratio"] if e2e else None
    out.append({"target": "inception_v3 bf16 batch 128, torch backend: end to end >= 90 % of the "
                          "model step (full fine-tuning)", "value": ratio,
                "met": None if ratio is None or record["smoke"] else ratio >= TARGET_E2E_RATIO})
    return out


# ------------------------------------------------------------------ outputs

def write_outputs(record: dict, out_dir: Path) -> dict[str, Path]:
    """``throughput.json``, ``throughput.md`` and ``throughput.png`` under ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "throughput.json", "md": out_dir / "throughput.md",
             "png": out_dir / "throughput.png"}
    write_json_atomic(paths["json"], record)
    plot(record, paths["png"])
    text = markdown(record, paths["png"].name)
    tmp = paths["md"].with_name(".throughput.md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(paths["md"])
    return paths


def markdown(record: dict, plot_name: str = "throughput.png") -> str:
    """The sweep as GitHub markdown (``templates/sweep.j2`` with the report's macros)."""
    from benchmarks.report import render

    order = {b: i for i, (b, _) in reversed(list(enumerate(MODES)))}
    e2e_rows = sorted((r for r in record["end_to_end"] if r.get("status") != "not run"),
                      key=lambda r: (order.get(r["backend"], 99), r.get("recipe") != "two_phase"))
    return render("sweep.j2", "markdown", r=record, plot=plot_name, model_rows=_table_rows(record),
                  e2e_rows=e2e_rows,
                  not_run=_not_run_groups(record), fm=_formatters(), conditions=_conditions(record))


def _conditions(record: dict) -> list[tuple[str, str]]:
    """The table of conditions at the top of the markdown: what ran, where, how."""
    d, s, tflops = record["device"], record["settings"], _formatters()["tflops"]
    peaks = d["peaks"]
    return [
        ("command", f"`{record['command']}`"),
        ("device", (d["name"] or "no GPU") + (" (injected by --smoke for the MFU arithmetic; "
                                               "the steps ran on the CPU)" if d["injected_for_mfu"] else "")),
        ("device per backend", "; ".join(f"{b}: {v.get('name', v.get('kind', '?'))}"
                                         for b, v in d["by_backend"].items()) or "—"),
        ("host", f"{record['machine']['cpu']}, {record['machine']['cores']} cores, "
                 f"Python {record['machine']['python']}"),
        *([("processes", f"{s['processes']} jobs side by side, {s['threads_per_process']} CPU "
                         f"thread(s) each (a CPU smoke; a GPU sweep runs one job at a time)")]
          if (s.get("processes") or 1) > 1 else []),
        ("versions", "; ".join(f"{b}: " + ", ".join(f"{k} {v}" for k, v in versions.items())
                               for b, versions in record["versions"].items()) or "—"),
        ("protocol", f"{s['steps']} timed steps after the first (compiling) step and {s['warmup']} "
                     f"warm-up steps; median img/s with p10–p90; every layer trains (momentum SGD, "
                     f"BatchNorm in train mode); batch sizes {', '.join(map(str, s['batch_sizes']))}; "
                     f"a batch that runs out of memory falls back to the next smaller one"
                     + (f" (out-of-memory error injected at batch "
                        f"{', '.join(map(str, s['inject_oom']))})" if s["inject_oom"] else "")),
        ("FLOPs", "counted once per model and size by `torch.utils.flop_counter.FlopCounterMode` "
                  "on the PyTorch backend's torchvision model (eval-mode forward of one image; a "
                  f"multiply-add = 2); a training step counts {TRAIN_FLOPS_FACTOR} x forward. Keras' "
                  "ResNet-50 is ResNet v1 (stride in the first 1x1 convolution), not torchvision's "
                  "v1.5: its MFU uses the torchvision count"),
        ("MFU peak", f"{peaks['device']}: bf16 {tflops(peaks['bf16'])}, TF32 {tflops(peaks['tf32'])}, "
                     f"fp32 {tflops(peaks['fp32'])} TFLOP/s dense ({peaks['source']}); an fp32 row is "
                     f"held to the TF32 peak when its framework lets convolutions run as TF32"
                     if peaks else "no peak for this device in common/gpu_peaks.py: MFU left blank"),
        ("budget", f"{s['budget_seconds']:.0f} s planned, {record['elapsed_seconds']:.0f} s taken"),
    ]


def _formatters() -> dict:
    def rate(v):
        return "—" if v is None else f"{v:,.1f}"

    def gb(v):
        return "—" if not v else f"{v / 2**30:.1f} GiB"

    def gflops(v):
        return "—" if not v else f"{v / 1e9:.2f}"

    def pct(v):
        return "—" if v is None else f"{100 * v:.1f} %"

    def secs(v):
        return "—" if v is None else f"{v:.1f} s"

    def mfu(v):  # below 1 %, two decimals
        return "—" if v is None else f"{100 * v:.2f} %" if v < 0.01 else f"{100 * v:.1f} %"

    def tflops(v):
        return "—" if not v else f"{v / 1e12:,.1f}"

    return {"rate": rate, "gb": gb, "gflops": gflops, "pct": pct, "secs": secs, "tflops": tflops, "mfu": mfu}


def _table_rows(record: dict) -> list[dict]:
    """Measured and failed model-step rows (not-run rows are grouped apart), in plan order."""
    order = {m: i for i, m in enumerate(MODES)}
    rows = [r for r in record["rows"] if r.get("status") != "not run"]
    return sorted(rows, key=lambda r: (order.get((r["backend"], r["mode"]), 99),
                                       models_order(r["model"]), PRECISIONS.index(r["precision"]),
                                       KINDS.index(r["kind"]), -r["batch_requested"]))


def models_order(model: str) -> int:
    return (HEADLINE_MODELS.index(model) if model in HEADLINE_MODELS
            else len(HEADLINE_MODELS) + list(MODELS).index(model))


def _not_run_groups(record: dict) -> list[dict]:
    """Rows that did not run, one line per (table, backend, mode, reason)."""
    groups: dict[tuple, dict] = {}
    for r in record["rows"] + record["end_to_end"]:
        if r.get("status") != "not run":
            continue
        key = (r["table"], r["backend"], r["mode"], r["reason"])
        g = groups.setdefault(key, {"table": r["table"], "backend": r["backend"], "mode": r["mode"],
                                    "reason": r["reason"], "rows": 0, "what": set()})
        g["rows"] += 1
        g["what"].add(f"{r['model']} {r['precision']}")
    return [{**g, "what": ", ".join(sorted(g["what"]))} for g in groups.values()]


def plot(record: dict, path: Path) -> None:
    """One figure: train and inference img/s at the largest batch, a panel per (kind,
    precision) measured, a bar per backend and mode (the batch it fell back to on the bar
    when memory ran out); and the end-to-end rows beside their model step and their
    pipeline alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    biggest = max(record["settings"]["batch_sizes"])
    rows = [r for r in record["rows"] if r.get("status") == "ok" and r["batch_requested"] == biggest]
    panels = [(k, p) for k in KINDS for p in PRECISIONS
              if any((r["kind"], r["precision"]) == (k, p) for r in rows)]
    e2e = [r for r in record["end_to_end"] if r.get("status") == "ok"]
    count = max(1, len(panels) + bool(e2e))
    cols = min(count, 2)
    fig = Figure(figsize=(6.2 * cols, 3.6 * math.ceil(count / cols) + 0.8), dpi=110,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = list(fig.subplots(math.ceil(count / cols), cols, squeeze=False).flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    series = [m for m in MODES if any((r["backend"], r["mode"]) == m for r in rows)]
    models = sorted({r["model"] for r in rows}, key=models_order)
    width = 0.8 / max(1, len(series))
    for ax, (kind, precision) in zip(axes, panels):
        for i, (backend, mode) in enumerate(series):
            found = [next((r for r in rows if (r["backend"], r["mode"], r["model"], r["kind"],
                                                r["precision"]) == (backend, mode, model, kind,
                                                                    precision)), None)
                     for model in models]
            bars = ax.bar([j - 0.4 + width * (i + 0.5) for j in range(len(models))],
                          [r["images_per_second"] if r else 0.0 for r in found], width * 0.92,
                          color=_mode_color(backend, mode), label=f"{backend} {mode}",
                          hatch="//" if mode == "torch.compile" else None)
            ax.bar_label(bars, fontsize=6, padding=2, labels=[
                "" if r is None else f"{r['images_per_second']:.0f}"
                + (f"\n(b{r['batch']})" if r.get("fell_back") else "") for r in found])
        ax.set_xticks(range(len(models)), models)
        ax.set(title=f"model step: {kind}, {precision}, batch {biggest}", ylabel="images / s")
        ax.margins(y=0.2)
    if e2e:
        ax = axes[len(panels)]
        labels = [f"{r['backend']}\n{r['phase']}" for r in e2e]
        for i, (what, key) in enumerate((("end to end", "end_to_end_images_per_second"),
                                         ("model step", "model_step_images_per_second"),
                                         ("pipeline alone", None))):
            values = [(r.get("decode") or {}).get("images_per_second") if key is None else r[key]
                      for r in e2e]
            bars = ax.bar([j - 0.3 + 0.2 * i for j in range(len(e2e))],
                          [v or 0.0 for v in values], 0.18, label=what,
                          color=("#333333", "#999999", "#cccccc")[i])
            ax.bar_label(bars, labels=["" if not v else f"{v:.0f}" for v in values], fontsize=6,
                         padding=2)
        ax.set_xticks(range(len(e2e)), labels, fontsize=7)
        ax.set(title=f"end to end, {e2e[0]['model']}, batch {e2e[0]['batch']}",
               ylabel="images / s")
        ax.legend(fontsize=7)
        ax.margins(y=0.2)
    if not panels and not e2e:
        axes[0].text(0.5, 0.5, "no row was measured", ha="center", va="center")
    if series:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center",
                   ncols=min(len(series), 6))
    title = record["device"]["name"] or "no GPU"
    if record["smoke"]:
        title = f"CPU SMOKE TEST, NOT A RESULT ({record['machine']['cpu']})"
    fig.suptitle(f"bench throughput --sweep: {title}", fontsize=10)
    fig.savefig(path, format="png", facecolor="white")


def _mode_color(backend: str, mode: str) -> str:
    color = backend_info(backend).color
    if mode == "torch.compile":  # a darker shade of the backend's own colour
        r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
        return "#{:02x}{:02x}{:02x}".format(*(int(c * 0.6) for c in (r, g, b)))
    return color


# ------------------------------------------------------------------ the command

def settings_from_args(args, argv: Iterable[str]) -> Settings:
    """``bench throughput --sweep`` options -> ``Settings`` (``--smoke``: the CPU smoke)."""
    kw: dict = {"command": shlex.join(["bench", *argv])}
    if args.backend:
        kw["backends"] = tuple(args.backend)
    if args.mode:
        kw["modes"] = tuple(args.mode)
    if args.model:
        kw["models"] = tuple(args.model)
    if args.precision_list:
        kw["precisions"] = tuple(args.precision_list)
    if args.budget_seconds is not None:
        kw["budget_seconds"] = float(args.budget_seconds)
    if args.no_end_to_end:
        kw["e2e"] = False
    if args.steps_given:
        kw["steps"] = args.steps
    if args.warmup_given:
        kw["warmup"] = args.warmup
    return Settings.for_smoke(**kw) if args.smoke else Settings(**kw)


def default_out(settings: Settings) -> Path:
    """``benchmarks/results/throughput-<UTC time>`` (a smoke: ``results/throughput-smoke``,
    git-ignored: a smoke test is never a result)."""
    if settings.smoke:
        return Path("results") / "throughput-smoke"
    return Path("benchmarks") / "results" / time.strftime("throughput-%Y%m%d-%H%M%S", time.gmtime())


__all__ = ["BATCH_SIZES", "Job", "MODES", "NO_TENSORFLOW", "Settings", "limiting_stage",
           "markdown", "plan", "run_sweep", "settings_from_args", "targets", "tier"]
