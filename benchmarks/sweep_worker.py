"""One job of ``bench throughput --sweep`` in its own interpreter (``benchmarks.sweep``).

``python -m benchmarks.sweep_worker JOB.json`` runs one job and sends one ``result``
message (``benchmarks.child``) per finished measurement as soon as it is finished, so that a job stopped
at the sweep's time budget keeps what it measured. Frameworks never share a
process: each (backend, model, precision, mode) is a job of its own, reached
through the registry (``backends.base.get_backend``). Jobs:

* ``flops``: FLOPs of one forward pass per image of each model, counted by the
  PyTorch backend (``FlopCounterMode`` on the torchvision model it trains);
* ``model_step``: the throughput protocol (``Backend.throughput``) for a list of
  (kind, batch size) items, every layer training; a batch that runs out of
  device memory falls back to the next smaller size (the framework's own
  error, ``Backend.is_out_of_memory``; ``Backend.release_memory`` frees what
  the failed step held) and the row says so;
* ``end_to_end``: real fine-tuning epochs over a folder of JPEG files through
  the backend's own input pipeline (``Backend.fit_phase``), beside the model
  step of the same phase on an in-memory batch and the pipeline alone
  (``Backend.time_input_pipeline``); an eager ``model_step`` job with ``e2e``
  runs these after its own rows, in the same process.

Each item checks the job's ``deadline`` (seconds since the epoch) against its
estimated cost first and is reported as not run when it would not finish in time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from backends.base import BackendError, WeightsRequest, get_backend
from benchmarks import child
from benchmarks.throughput import ALL_LAYERS
from common.config import DataConfig, ModelConfig, Recipe, RunConfig, TrainConfig, load_recipe
from common import messages
from common.data import Sample, Split, load_image_folder
from common.models import get_model

INJECTED = "injected by --smoke"


def emit(record: dict) -> None:
    """One ``result`` message for the parent (``benchmarks.sweep``), sent at once."""
    messages.send("result", **record)


def _config(job: dict, recipe: Recipe, run_dir: str, batch_size: int, workers: int = 0) -> RunConfig:
    return RunConfig(backend=job["backend"], recipe=recipe,
                     data=DataConfig(source="synthetic", image_size=job["image_size"],
                                     num_workers=workers),
                     model=ModelConfig(name=job["model"], weights="none"),
                     train=TrainConfig(batch_size=batch_size, precision=job["precision"]),
                     run_dir=run_dir)


def _ten_class_split() -> Split:
    """Ten classes and one nameless sample: the throughput protocol times in-memory batches, so the
    split only gives the head its width."""
    return Split(classes=tuple(f"c{i}" for i in range(10)), train=[Sample("-", 0)], val=[], test=[])


def _fits(job: dict, estimate: float) -> bool:
    return time.time() + estimate <= job["deadline"]


# ------------------------------------------------------------------ flops

def flops(job: dict) -> None:
    """``{"event": "flops", "model", "image_size", "forward_flops"}`` for each of ``job["models"]``."""
    for item in job["models"]:
        spec = get_model(item["model"])
        sub = {**job, "model": spec.name, "image_size": item["image_size"], "precision": "fp32"}
        with tempfile.TemporaryDirectory(prefix="sweep-flops-") as tmp:
            b = get_backend(job["backend"])(
                _config(sub, Recipe(name="flops", phases=(ALL_LAYERS,)), tmp, 1), Path(tmp))
            try:
                b.setup(_ten_class_split(), item["image_size"])
                b.build(spec, 10, WeightsRequest("none"), 0)
                emit({"event": "flops", "model": spec.name, "image_size": item["image_size"],
                      "forward_flops": b.forward_flops(), "backend": job["backend"],
                      "versions": b.frameworks()})
            finally:
                b.close()


# ------------------------------------------------------------------ model step

def _tf32(result: dict) -> bool:
    """Whether this step's fp32 convolutions may have run as TF32 (see each backend's
    throughput record: torch's flags, Keras' backend, slim's TensorFlow setting)."""
    tf32 = result.get("tf32")
    if isinstance(tf32, dict):  # PyTorch: convolutions follow cudnn.allow_tf32
        return bool(tf32.get("cudnn_conv"))
    return bool(tf32)


def _row(item: dict, kind: str, result: dict, batch: int, fell_back: list[int]) -> dict:
    t = result[kind]
    device = result.get("device")
    name = device.get("name") if isinstance(device, dict) else device
    return {"event": "row", "kind": kind, "batch_requested": item["batch"], "batch": batch,
            "status": "ok",
            "fell_back": (f"fell back from {', '.join(map(str, fell_back))}: out of memory"
                          if fell_back else None),
            "images_per_second": t["images_per_second"],
            "images_per_second_p10": t["images_per_second_p10"],
            "images_per_second_p90": t["images_per_second_p90"],
            "step_seconds_median": t["step_seconds_median"], "steps": t["steps"],
            "first_step_seconds": t["first_step_seconds"], "warmup_steps": t["warmup_steps"],
            "peak_memory_bytes": result.get("peak_memory_bytes"), "device": name,
            "tf32": _tf32(result), "precision_computed": result.get("precision"),
            "mode": result.get("mode")}


def model_step(job: dict) -> None:
    """The job's items in order: a ``row`` event each (``ok``, ``failed`` or ``not run``)."""
    spec = get_model(job["model"])
    items = job["items"]
    biggest = max(item["batch"] for item in items)
    with tempfile.TemporaryDirectory(prefix="sweep-step-") as tmp:
        b = get_backend(job["backend"])(
            _config(job, Recipe(name="throughput", phases=(ALL_LAYERS,)), tmp, biggest), Path(tmp))
        try:
            b.setup(_ten_class_split(), job["image_size"])
            b.build(spec, 10, WeightsRequest("none"), 0)
            b.apply_phase(ALL_LAYERS, 0)
            emit({"event": "job", "versions": b.frameworks(), "device": b.device(),
                  "execution_mode": b.execution_mode()})
            if job.get("count_flops"):
                emit({"event": "flops", "model": spec.name, "image_size": job["image_size"],
                      "forward_flops": b.forward_flops(), "backend": job["backend"],
                      "versions": b.frameworks()})
            done: dict[tuple[str, int], dict] = {}  # (kind, batch measured) -> its row
            for i, item in enumerate(items):
                if not _fits(job, item["estimate_seconds"]):
                    for rest in items[i:]:
                        emit({"event": "row", "kind": rest["kind"], "batch_requested": rest["batch"],
                              "status": "not run",
                              "reason": f"time budget: ~{rest['estimate_seconds']:.0f} s needed, "
                                        f"{max(0.0, job['deadline'] - time.time()):.0f} s left"})
                    return
                emit(_measure_item(b, job, item, done))
        finally:
            b.close()


def _measure_item(b, job: dict, item: dict, done: dict) -> dict:
    """One (kind, batch) row, falling back to smaller batches when memory runs out."""
    kind, t0 = item["kind"], time.time()
    smaller = [s for s in job["batch_sizes"] if s < item["batch"]]
    fell_back: list[int] = []
    for batch in [item["batch"], *sorted(smaller, reverse=True)]:
        if (kind, batch) in done:  # measured already (as another row's fallback)
            row = {**done[(kind, batch)], "batch_requested": item["batch"],
                   "fell_back": (f"fell back from {', '.join(map(str, fell_back))}: out of memory"
                                 if fell_back else None), "same_as_row_of_batch": batch}
            return row
        try:
            if batch in job.get("inject_oom", ()):
                raise b.out_of_memory_error(f"{INJECTED} at batch {batch}")
            result = b.throughput(batch, job["precision"], job["steps"], job["warmup"],
                                  kinds=(kind,), compile=job["mode"] in b.compile_modes)
        except Exception as err:  # noqa: BLE001 - the framework's OOM error is recognised below
            if not b.is_out_of_memory(err):
                return {"event": "row", "kind": kind, "batch_requested": item["batch"],
                        "status": "failed", "error": f"{type(err).__name__}: {err}".splitlines()[0],
                        "traceback": traceback.format_exc(), "seconds": time.time() - t0}
            b.release_memory()
            fell_back.append(batch)
            continue
        row = _row(item, kind, result, batch, fell_back)
        row["seconds"] = time.time() - t0
        done[(kind, batch)] = row
        return row
    return {"event": "row", "kind": kind, "batch_requested": item["batch"], "status": "failed",
            "error": f"out of memory at batch {', '.join(map(str, fell_back))}",
            "seconds": time.time() - t0}


# ------------------------------------------------------------------ end to end

def _jpeg_split(folder: str) -> Split:
    """Every image of the folder in training (timing needs no held-out images)."""
    ds = load_image_folder(folder)
    samples = sorted(ds.samples, key=lambda s: s.path)
    return Split(classes=ds.classes, train=samples, val=samples[:len(ds.classes)], test=[],
                 root=ds.root)


def end_to_end(job: dict) -> None:
    """``decode`` (the pipeline alone) and one ``e2e`` event per phase of ``job["phases"]``,
    each phase in a backend of its own (its own model, pipeline and workers: a TF1 graph
    cannot hold a second model of the same scopes)."""
    spec = get_model(job["model"])
    split = _jpeg_split(job["data"])
    for index, item in enumerate(job["phases"]):
        if not _fits(job, item["estimate_seconds"]):
            emit({"event": "e2e", **item, "batch": job["batch"], "status": "not run",
                  "reason": f"time budget: ~{item['estimate_seconds']:.0f} s needed, "
                            f"{max(0.0, job['deadline'] - time.time()):.0f} s left"})
            continue
        recipe = load_recipe(item["recipe"])
        with tempfile.TemporaryDirectory(prefix="sweep-e2e-") as tmp:
            b = get_backend(job["backend"])(_config(job, recipe, tmp, job["batch"], job["workers"]),
                                            Path(tmp))
            try:
                b.setup(split, job["image_size"])
                if index == 0:
                    emit({"event": "job", "versions": b.frameworks(), "device": b.device(),
                          "execution_mode": b.execution_mode()})
                    try:
                        emit({"event": "decode", "status": "ok",
                              **b.time_input_pipeline(augment=True)})
                    except BackendError as err:
                        emit({"event": "decode", "status": "not run", "reason": str(err)})
                emit(_phase_epochs(b, job, spec, split, item, recipe))
            finally:
                b.close()


def _phase_epochs(b, job: dict, spec, split: Split, item: dict, recipe: Recipe) -> dict:
    """``job["epochs"]`` epochs of one recipe phase: per-epoch seconds, and the model step
    of the same phase on an in-memory batch."""
    phase = next(p for p in recipe.phases if p.name == item["phase"])
    phase = dataclasses.replace(phase, epochs=job["epochs"])
    t0 = time.time()
    try:
        b.build(spec, split.num_classes, WeightsRequest("none"), recipe.head_hidden_units)
        report = b.apply_phase(phase, 0)
        step = b.throughput(job["batch"], job["precision"], job["steps"], job["warmup"],
                            kinds=("train",))["train"]
        epochs: list[dict] = []
        b.fit_phase(phase, 0, 0, lambda epoch, lr, stats: epochs.append(
            {"epoch": epoch + 1, "images": stats["images"], "seconds": stats["seconds"]}))
    except Exception as err:  # noqa: BLE001 - reported in the row
        reason = ("out of memory" if b.is_out_of_memory(err) else
                  f"{type(err).__name__}: {err}".splitlines()[0])
        if b.is_out_of_memory(err):
            b.release_memory()
        return {"event": "e2e", **item, "batch": job["batch"], "status": "failed", "error": reason,
                "traceback": traceback.format_exc(), "seconds": time.time() - t0}
    last = epochs[-1]
    e2e = last["images"] / last["seconds"] if last["seconds"] > 0 else None
    return {"event": "e2e", **item, "status": "ok", "batch": job["batch"], "epochs": epochs,
            "end_to_end_images_per_second": e2e,
            "model_step_images_per_second": step["images_per_second"],
            "model_step": {k: step[k] for k in ("images_per_second_p10", "images_per_second_p90",
                                                "first_step_seconds", "steps")},
            "trainable_blocks": report["trainable_blocks"],
            "trainable_params": report["trainable_params"], "seconds": time.time() - t0}


JOBS = {"flops": flops, "model_step": model_step, "end_to_end": end_to_end}


def use_smoke_compilation_caches() -> None:
    """A CPU smoke keeps XLA's compilations on disk, as torch.compile (inductor) keeps its own
    by default (``/tmp/torchinductor_<user>``): jax's persistent compilation cache, set before
    jax is imported, under the same temporary folder. The first smoke on a machine pays every
    compilation; a later one still traces every step (the code paths run) and loads the
    compiled program. A GPU sweep never sets it: its first steps are what it reports."""
    user = os.environ.get("USER") or str(os.getuid())
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                          str(Path(tempfile.gettempdir()) / f"bench-smoke-jax-cache-{user}"))


def main(argv: list[str]) -> int:
    child.begin()
    job = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    if job.get("smoke"):
        use_smoke_compilation_caches()

    def work() -> dict:
        JOBS[job["job"]](job)
        if job["job"] == "model_step" and job.get("e2e"):  # an eager job's end-to-end rows
            end_to_end(job)
        return {"event": "done"}

    # a failure is an error message; the rows already sent stand
    return child.serve(work)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
