"""``bench throughput``: the model-step protocol for one backend in its own process.

Builds the model with random weights (weights do not change the speed),
trains every layer (the most expensive and most comparable phase) and times
train and inference steps on an in-memory batch via the backend's
``throughput``, which applies ``common.timing.measure_steps``.

Run directly: ``python -m benchmarks.throughput BACKEND MODEL BATCH SIZE PRECISION STEPS WARMUP``
prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import traceback
from pathlib import Path

from backends.base import WeightsRequest, get_backend
from benchmarks.json_subprocess import run_json_child
from benchmarks.driver import throughput_phase_record
from common.config import Phase, Recipe, RunConfig, DataConfig, ModelConfig, TrainConfig
from common.data import Sample, Split
from common.models import get_model

ALL_LAYERS = Phase(name="all", train="all", optimizer="momentum", learning_rate=1e-3, bn="train",
                   augment=False)


def measure(backend: str, model: str, batch_size: int, image_size: int | None,
            precision: str, steps: int, warmup: int) -> dict:
    """Throughput of ``backend``/``model`` (imports that framework)."""
    spec = get_model(model)
    size = image_size or spec.default_size
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        config = RunConfig(backend=backend, recipe=Recipe(name="throughput", phases=(ALL_LAYERS,)),
                           data=DataConfig(source="synthetic", image_size=size),
                           model=ModelConfig(name=model, weights="none"),
                           train=TrainConfig(batch_size=batch_size, precision=precision),
                           run_dir=tmp)
        # the protocol uses in-memory batches; the split only names the classes
        empty = Split(classes=tuple(f"c{i}" for i in range(10)), train=[Sample("-", 0)], val=[], test=[])
        b = get_backend(backend)(config, Path(tmp))
        try:
            b.setup(empty, size)
            b.build(spec, 10, WeightsRequest("none"), 0)
            b.apply_phase(ALL_LAYERS, 0)
            result = b.throughput(batch_size, precision, steps, warmup)
            result.update(status="ok", backend=backend, model=model, image_size=size,
                          versions=b.frameworks(), device=b.device(),
                          phase=throughput_phase_record(ALL_LAYERS, spec))
            return result
        finally:
            b.close()


def measure_in_child(backend: str, model: str, batch_size: int, image_size: int | None,
                     precision: str, steps: int, warmup: int) -> dict:
    """``measure`` in a fresh interpreter (frameworks never share a process)."""
    result = run_json_child("benchmarks.throughput", [backend, model, batch_size, image_size or 0,
                                                      precision, steps, warmup])
    result.setdefault("backend", backend)
    result.setdefault("model", model)
    return result


def main(argv: list[str]) -> int:
    backend, model, batch, size, precision, steps, warmup = argv
    try:
        result = measure(backend, model, int(batch), int(size) or None, precision, int(steps), int(warmup))
    except Exception as err:  # reported to the parent as a failed measurement
        result = {"status": "failed", "backend": backend, "model": model,
                  "error": f"{type(err).__name__}: {err}".splitlines()[0],
                  "traceback": traceback.format_exc()}
    result.pop("step_seconds", None)
    print(json.dumps(result, default=float))
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
