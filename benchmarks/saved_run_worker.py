"""The process that reopens a finished run's checkpoint:
``python -m benchmarks.saved_run_worker JOB.json``.

``bench eval``, ``bench predict`` and ``bench export`` (``benchmarks.saved_run``)
start one of these per command, with the run's backend environment, so that the
run's framework, and only that one, is imported. It rebuilds the model from the
run's ``config.json`` through the backend contract (``setup``, ``build`` with
no weights, ``restore`` of the checkpoint), so the model, its head and its input
pipeline are the ones the run trained and evaluated with. Then, as the job says:

* ``logits``: the model's logits for the job's images (the backend's own
  ``predict`` over its evaluation pipeline), saved as ``.npy``;
* ``export``: ``Backend.export`` of the model in the job's format, checked on a
  golden batch of the run's test images.

The answer is a ``result`` message, or an ``error`` message whose kind says a bad
input (``usage``, exit 2), a failed export check (``check``) or a failure
(``benchmarks.child``); log lines and progress go to the parent as messages too.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from benchmarks import child
from benchmarks.saved_run import GOLDEN_IMAGES
from common.config import RunConfig
from common.data import DataError, Sample, Split, load_image
from common.models import get_model
from common.preprocess import get_normalisation

log = logging.getLogger("benchmarks.saved_run_worker")  # not __main__ under -m


def golden_batch(samples: list[Sample], image_size: int, normalisation: str,
                 count: int = GOLDEN_IMAGES) -> np.ndarray:
    """Up to ``count`` images of ``samples`` decoded by ``common.data.load_image`` at
    ``image_size`` and normalised: float32 ``[N, size, size, 3]``, the export check's input."""
    pixels = np.stack([load_image(s.path, image_size) for s in samples[:count]])
    return get_normalisation(normalisation).apply(pixels).astype(np.float32)


def open_checkpoint(config: RunConfig, classes: tuple[str, ...], images: list[Sample],
                    image_size: int, checkpoint: Path, workdir: Path):
    """The run's backend with its model rebuilt and ``checkpoint`` restored; ``images`` are
    its ``test`` subset (nothing else is read)."""
    from backends.base import WeightsRequest, get_backend

    split = Split(tuple(classes), train=[], val=[], test=images)
    backend = get_backend(config.backend)(config, workdir)
    try:
        backend.setup(split, image_size)
        backend.build(get_model(config.model.name), len(classes), WeightsRequest("none"),
                      config.recipe.head_hidden_units)
        backend.restore(checkpoint)
    except BaseException:
        backend.close()
        raise
    return backend


def run_job(job: dict) -> dict:
    """Do what ``job`` asks (see the module docstring); the answer's fields."""
    config = RunConfig.from_dict(json.loads(Path(job["config"]).read_text(encoding="utf-8")))
    images = [Sample(p, int(label)) for p, label in job["images"]]
    workdir = Path(job["workdir"])
    backend = open_checkpoint(config, tuple(job["classes"]), images, int(job["image_size"]),
                              Path(job["checkpoint"]), workdir)
    try:
        answer = {"versions": backend.frameworks(), "device": backend.device(),
                  "normalisation": backend.preprocessing_name()}
        if job["action"] == "logits":
            logits = backend.predict("test")
            np.save(workdir / "logits.npy", logits)
            return {**answer, "logits": str(workdir / "logits.npy")}
        if job["action"] == "export":
            golden = golden_batch(images, int(job["image_size"]), backend.preprocessing_name())
            record = backend.export(job["format"], Path(job["directory"]), golden)
            return {**answer, "export": record}
        raise ValueError(f"unknown action {job['action']!r}")
    finally:
        backend.close()


def main(argv: list[str] | None = None) -> int:
    from backends.base import BackendError, ExportCheckFailed

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmarks.saved_run_worker JOB.json", file=sys.stderr)
        return 2
    child.begin()  # dies with bench, and then removes its folder (the job, logits, scratch)
    job_file = Path(argv[0])
    job = {**json.loads(job_file.read_text(encoding="utf-8")), "workdir": str(job_file.parent)}
    return child.serve(lambda: {"status": "ok", **run_job(job)}, bad_input=(BackendError, DataError),
                       check=(ExportCheckFailed,))


if __name__ == "__main__":
    sys.exit(main())
