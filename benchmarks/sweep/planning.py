"""``bench throughput --sweep``, the plan: what runs, in which order, within which budget.

The time tables come from each backend's ``BackendInfo.sweep`` (its modes, their order and
priority, the estimates the budget is planned with); ``Settings`` is one sweep's options
resolved; ``plan`` turns them into the jobs to run, most important first, and the rows that
will not run with their reason. No framework imported, no process started
(``benchmarks.sweep.execution`` runs the plan, ``benchmarks.sweep.output`` writes it).
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from backends.base import availability, backend_info, loaded_infos, unsupported_model
from common.models import MODELS, SMOKE_MODEL


def _declared_sweeps() -> dict:
    """Each registry entry's ``BackendInfo.sweep`` (its modes and time estimates), in registry
    order; entries without one (or whose descriptor does not load) are not in the sweep."""
    return {name: info.sweep for name, info in loaded_infos() if info.sweep is not None}


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
                    one_job_per_key=True, processes=cores())
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
                    skipped += [row_base(backend, mode, model, precision, image_size(model, settings),
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


def row_base(backend: str, mode: str, model: str, precision: str, size: int, item: Item) -> dict:
    """What a model-step row says of itself before it is measured (or why it is not)."""
    return {"table": "model_step", "backend": backend, "mode": mode, "model": model,
            "precision": precision, "image_size": size, "kind": item.kind,
            "batch_requested": item.batch, "tier": item.tier}


def models_order(model: str) -> int:
    """A model's place in the tables: the headline models first, then ``common.models.MODELS``."""
    return (HEADLINE_MODELS.index(model) if model in HEADLINE_MODELS
            else len(HEADLINE_MODELS) + list(MODELS).index(model))


def cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
