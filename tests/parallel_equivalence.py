"""Data-parallel equivalence runs of one framework in a process of its own:
``python tests/parallel_equivalence.py OUT_DIR CONFIG.json [CONFIG.json ...]``.

``tests/test_parallel.py`` starts it once for jax (keras-jax) and once for TensorFlow
(keras and slim), with the environment ``bench run`` gives a run of each backend on
``config.train.devices`` (> 1) devices (``BackendInfo.process_environment``: jax's host
devices on a CPU). For each config it builds the model twice from the same seed, first
on those devices (TensorFlow splits the CPU into logical devices before its runtime
starts, so the parallel runs come first), then on one, and from each it keeps the head
before and after the recipe's first phase (the calls ``benchmarks.driver`` makes:
``apply_phase``, then ``fit_phase``), the validation logits, the images trained on,
the phase's native record and the ``parallel`` record: ``OUT_DIR/<backend>.npz`` and
``OUT_DIR/<backend>.json``. One interpreter per framework keeps the test's cost at one
framework import.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from backends.base import WeightsRequest, get_backend
from benchmarks import driver
from common.config import RunConfig
from common.models import get_model


def run(config: RunConfig) -> tuple[dict, dict[str, np.ndarray]]:
    """``config``'s first phase, one epoch: what the parent compares, and the arrays."""
    clock = [time.perf_counter()]

    def done(what: str) -> None:  # where the child's seconds go, in the test's output
        now = time.perf_counter()
        print(f"{config.backend} on {config.train.devices} device(s): {what} "
              f"{now - clock[0]:.1f}s", flush=True)
        clock[0] = now

    split = driver.prepare_split(config)
    backend = get_backend(config.backend)(config, Path(config.run_dir))
    try:
        backend.setup(split, config.data.image_size)
        backend.build(get_model(config.model.name), split.num_classes, WeightsRequest("none"), 0)
        done("import, setup and build")
        phase = config.recipe.phases[0]
        report = backend.apply_phase(phase, 0)
        before = backend.snapshot("head")
        epochs: list[dict] = []
        backend.fit_phase(phase, 0, 0, lambda epoch, lr, stats: epochs.append(stats))
        after = backend.snapshot("head")
        done("the epoch")
        arrays = {**{f"before/{k}": v for k, v in before.items()},
                  **{f"after/{k}": v for k, v in after.items()},
                  "val_logits": backend.predict("val")}
        done("predict")
        record = {"devices": config.train.devices, "images": [e["images"] for e in epochs],
                  "native": report["native"],
                  "parallel": backend.parallel() if config.train.devices > 1 else None}
    finally:
        backend.close()
    return record, arrays


def main(out_dir: str, *config_files: str) -> None:
    for config_file in config_files:
        config = RunConfig.from_dict(json.loads(Path(config_file).read_text()))
        records, arrays = [], {}
        for devices in (config.train.devices, 1):
            one = dataclasses.replace(config, run_dir=str(Path(config.run_dir) / f"d{devices}"),
                                      train=dataclasses.replace(config.train, devices=devices))
            record, got = run(one)
            records.append(record)
            arrays.update({f"d{devices}/{k}": v for k, v in got.items()})
        np.savez(Path(out_dir) / f"{config.backend}.npz", **arrays)
        (Path(out_dir) / f"{config.backend}.json").write_text(json.dumps(records))


if __name__ == "__main__":
    main(*sys.argv[1:])
