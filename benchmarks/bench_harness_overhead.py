"""Benchmark (a): harness overhead = harness train img/s / a bare training loop's.

The harness figure is what every result.json reports: the backend's
``throughput`` (``common.timing.measure_steps``: a sync and a clock read
around every step, median step time). The bare loop is the same model,
optimizer and in-memory batch driven by a plain ``for`` loop in the same
framework, timed once around all steps (each backend's ``bare_train_loop``).
Rounds alternate bare/harness so that drift of the machine hits both; the
medians over rounds are compared.

    python -m benchmarks.bench_harness_overhead --backend all

Target: ratio >= 0.98 for every backend.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks import child

TARGET = 0.98


def measure(backend_name: str, model: str, image_size: int, batch_size: int, steps: int,
            rounds: int) -> dict:
    from backends.base import WeightsRequest, get_backend
    from benchmarks.throughput import ALL_LAYERS
    from common.config import DataConfig, ModelConfig, Recipe, RunConfig, TrainConfig
    from common.data import Sample, Split
    from common.models import get_model

    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        config = RunConfig(backend=backend_name, recipe=Recipe("overhead", (ALL_LAYERS,)),
                           data=DataConfig(image_size=image_size), model=ModelConfig(name=model, weights="none"),
                           train=TrainConfig(batch_size=batch_size), run_dir=tmp)
        split = Split(tuple(f"c{i}" for i in range(5)), [Sample("-", 0)], [], [])
        b = get_backend(backend_name)(config, Path(tmp))
        try:
            b.setup(split, image_size)
            b.build(get_model(model), 5, WeightsRequest("none"), 0)
            b.apply_phase(ALL_LAYERS, 0)
            bare = b.bare_train_loop(batch_size, steps)  # each backend's own plain loop
            bare()  # compile / warm up
            bare_ips, harness_ips = [], []
            for _ in range(rounds):
                bare_ips.append(batch_size * steps / bare())
                harness_ips.append(b.throughput(batch_size, "fp32", steps, 1)["train"]["images_per_second"])
        finally:
            b.close()
    bare_m, harness_m = statistics.median(bare_ips), statistics.median(harness_ips)
    return {"backend": backend_name, "model": model, "image_size": image_size, "batch_size": batch_size,
            "steps": steps, "rounds": rounds, "bare_images_per_second": bare_m,
            "harness_images_per_second": harness_m, "ratio": harness_m / bare_m, "target": TARGET,
            "bare_rounds": bare_ips, "harness_rounds": harness_ips}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="all")
    p.add_argument("--model", default="inception_v3")
    p.add_argument("--image-size", type=int, default=75)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child-process mode
    args = p.parse_args(argv)
    if args.json:
        child.begin()
        return child.serve(lambda: measure(args.backend, args.model, args.image_size,
                                           args.batch_size, args.steps, args.rounds))

    def describe(r: dict) -> tuple[str, bool]:
        met = r["ratio"] >= TARGET
        return (f"{r['backend']:8s} {r['model']} {r['image_size']}px batch {r['batch_size']}: harness "
                f"{r['harness_images_per_second']:.1f} img/s / bare loop "
                f"{r['bare_images_per_second']:.1f} img/s = {r['ratio']:.3f} "
                f"(target >= {TARGET}: {'met' if met else 'NOT met'})", met)

    ok = child.run_per_backend("benchmarks.bench_harness_overhead", args.backend, [
        "--model", args.model, "--image-size", args.image_size, "--batch-size", args.batch_size,
        "--steps", args.steps, "--rounds", args.rounds], describe)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
