"""Benchmark (b): the whole linear-probe fit vs ONE head-only epoch on the same data.

Both train only a classifier on a frozen backbone. The ``head`` recipe pays
for a forward (and the head's backward) pass through the backbone on every
epoch; ``linear_probe`` pays for it once, caches the features on disk, and
then fits its logistic-regression head on the cached features — the whole
fit, L2 strength chosen on the validation split over ``common.linear.C_GRID``
with L-BFGS (``common.linear.fit_linear_probe``).

    python -m benchmarks.bench_linear_probe --backend pytorch [--model inception_v3]

Prints, per backend: median head-epoch seconds, feature-cache build seconds,
median probe-fit seconds (load the .npz + the whole fit; rounds alternate with
head epochs) and their ratio (target >= 1: the whole probe fit costs less than
one epoch of ``head``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import child

TARGET = 1.0


def measure(backend_name: str, model: str, image_size: int, epochs: int) -> dict:
    from backends.base import WeightsRequest, get_backend
    from benchmarks.driver import prepare_split
    from common.config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_recipe
    from common.linear import fit_linear_probe
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
            b.fit_epoch(phase, 1)  # warm-up (graph building, compilation): not timed
            t0 = time.perf_counter()
            cache = Path(tmp) / "features.npz"
            np.savez(cache, train=b.extract_features("train"), val=b.extract_features("val"))
            cache_seconds = time.perf_counter() - t0
            labels = {s: np.asarray([x.label for x in split.subset(s)]) for s in ("train", "val")}

            def probe_fit() -> None:
                cached = dict(np.load(cache))
                fit_linear_probe(cached["train"], labels["train"], cached["val"], labels["val"],
                                 split.num_classes)

            probe_fit()  # warm-up: imports scikit-learn
            # rounds alternate head epoch / probe fit, so drift of the machine hits both
            head_epochs, probe_fits = [], []
            for e in range(epochs):
                t0 = time.perf_counter()
                b.fit_epoch(phase, e + 2)
                head_epochs.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                probe_fit()
                probe_fits.append(time.perf_counter() - t0)
        finally:
            b.close()
    head = statistics.median(head_epochs)
    probe = statistics.median(probe_fits)
    return {"backend": backend_name, "model": model, "image_size": image_size,
            "train_images": len(split.train), "head_epoch_seconds": head,
            "feature_cache_seconds": cache_seconds, "linear_probe_fit_seconds": probe,
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
        child.begin()
        return child.serve(lambda: measure(args.backend, args.model, args.image_size, args.epochs))

    def describe(r: dict) -> tuple[str, bool]:
        met = r["ratio"] >= TARGET
        return (f"{r['backend']:8s} {r['model']} {r['image_size']}px, {r['train_images']} train images: "
                f"head epoch {r['head_epoch_seconds']:.2f}s, feature cache built once in "
                f"{r['feature_cache_seconds']:.2f}s, whole linear-probe fit "
                f"{r['linear_probe_fit_seconds'] * 1000:.1f}ms -> {r['ratio']:.3g}x "
                f"(target >= {TARGET:g}x: {'met' if met else 'NOT met'})", met)

    ok = child.run_per_backend("benchmarks.bench_linear_probe", args.backend, [
        "--model", args.model, "--image-size", args.image_size, "--epochs", args.epochs], describe)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
