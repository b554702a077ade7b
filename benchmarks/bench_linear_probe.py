"""Benchmark (b): a linear-probe epoch vs a head-only epoch on the same data.

Both train only a classifier on a frozen backbone. The ``head`` recipe pays
for a forward (and the head's backward) pass through the backbone on every
epoch; ``linear_probe`` pays for it once, caches the features on disk, and
then an epoch is one pass of the logistic head over the cached features.

    python -m benchmarks.bench_linear_probe --backend pytorch [--model inception_v3]

Prints, per backend: median head-epoch seconds, feature-cache build seconds,
median linear-probe epoch seconds (load the .npz + one full-batch pass of
``common.linear.fit_logistic``) and their ratio (target >= 50x).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET = 50.0


def measure(backend_name: str, model: str, image_size: int, epochs: int) -> dict:
    from backends.base import WeightsRequest, get_backend
    from benchmarks.driver import prepare_split
    from common.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_recipe
    from common.linear import fit_logistic
    from common.models import get_model

    with tempfile.TemporaryDirectory(prefix="bench-probe-") as tmp:
        config = RunConfig(backend=backend_name, recipe=load_recipe("head"),
                           data=DataConfig(image_size=image_size), model=ModelConfig(name=model),
                           train=TrainConfig(batch_size=16), run_dir=tmp)
        split = prepare_split(config)
        b = get_backend(backend_name)(config, Path(tmp))
        try:
            b.setup(split, image_size)
            b.build(get_model(model), split.num_classes, WeightsRequest("none"), 0)
            phase = load_recipe("head").phases[0]
            b.apply_phase(phase, 0)
            b.set_learning_rate(phase.learning_rate)
            head_epochs = []
            for e in range(epochs + 1):  # the first epoch warms up and is dropped
                t0 = time.perf_counter()
                b.fit_epoch(phase, e + 1)
                head_epochs.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            feats = b.extract_features("train")
            cache = Path(tmp) / "features.npz"
            np.savez(cache, train=feats)
            cache_seconds = time.perf_counter() - t0
        finally:
            b.close()
        labels = np.asarray([s.label for s in split.train])
        probe_epochs = []
        for _ in range(epochs + 1):
            t0 = time.perf_counter()
            cached = np.load(cache)["train"]
            fit_logistic(cached, labels, split.num_classes, steps=1)
            probe_epochs.append(time.perf_counter() - t0)
    head = statistics.median(head_epochs[1:])
    probe = statistics.median(probe_epochs[1:])
    return {"backend": backend_name, "model": model, "image_size": image_size,
            "train_images": len(split.train), "head_epoch_seconds": head,
            "feature_cache_seconds": cache_seconds, "linear_probe_epoch_seconds": probe,
            "ratio": head / probe, "target": TARGET}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="pytorch", help="pytorch, keras, slim or all")
    p.add_argument("--model", default="inception_v3")
    p.add_argument("--image-size", type=int, default=75)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # child-process mode
    args = p.parse_args(argv)
    if args.json:
        print(json.dumps(measure(args.backend, args.model, args.image_size, args.epochs)))
        return 0
    from benchmarks.json_subprocess import run_per_backend

    def describe(r: dict) -> tuple[str, bool]:
        met = r["ratio"] >= TARGET
        return (f"{r['backend']:8s} {r['model']} {r['image_size']}px, {r['train_images']} train images: "
                f"head epoch {r['head_epoch_seconds']:.2f}s, feature cache built once in "
                f"{r['feature_cache_seconds']:.2f}s, linear-probe epoch "
                f"{r['linear_probe_epoch_seconds'] * 1000:.1f}ms -> {r['ratio']:.3g}x faster "
                f"(target >= {TARGET:.0f}x: {'met' if met else 'NOT met'})", met)

    ok = run_per_backend("benchmarks.bench_linear_probe", args.backend, [
        "--model", args.model, "--image-size", args.image_size, "--epochs", args.epochs], describe)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
