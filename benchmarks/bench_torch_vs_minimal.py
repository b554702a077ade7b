"""Benchmark (c): CPU train img/s of the PyTorch backend vs a minimal torchvision loop.

The backend's figure is its ``throughput`` train img/s (the number in every
result.json: model built by ``backends/pytorch/recipe.py``, optimizer from the
recipe vocabulary, the common timing protocol). The minimal loop is what a
user would write from the torchvision docs: ``torchvision.models.<model>``
with a new ``fc``, ``torch.optim.SGD(momentum=0.9)``, ``CrossEntropyLoss``,
a plain loop timed with ``time.perf_counter``. Same model, batch, size and
thread count; rounds alternate; medians compared.

    python -m benchmarks.bench_torch_vs_minimal [--model inception_v3 --batch-size 16]

Target: ratio >= 1.0 (the backend costs nothing over hand-written code).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGET = 1.0


def minimal_loop(model_name: str, num_classes: int, batch_size: int, image_size: int, steps: int):
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(0)
    if model_name == "inception_v3":
        model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    else:
        model = getattr(torchvision.models, model_name)(weights=None)
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.randn(batch_size, 3, image_size, image_size)
    y = torch.randint(0, num_classes, (batch_size,))

    def run() -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        return batch_size * steps / (time.perf_counter() - t0)
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="inception_v3")
    p.add_argument("--image-size", type=int, default=75)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)

    import torch

    from backends.base import WeightsRequest, get_backend
    from benchmarks.throughput import ALL_LAYERS
    from common.config import DataConfig, ModelConfig, Recipe, RunConfig, TrainConfig
    from common.data import Sample, Split
    from common.models import get_model

    minimal = minimal_loop(args.model, 5, args.batch_size, args.image_size, args.steps)
    with tempfile.TemporaryDirectory(prefix="bench-minimal-") as tmp:
        config = RunConfig(backend="pytorch", recipe=Recipe("minimal", (ALL_LAYERS,)),
                           data=DataConfig(image_size=args.image_size),
                           model=ModelConfig(name=args.model, weights="none"),
                           train=TrainConfig(batch_size=args.batch_size), run_dir=tmp)
        b = get_backend("pytorch")(config, Path(tmp))
        b.setup(Split(tuple(f"c{i}" for i in range(5)), [Sample("-", 0)], [], []), args.image_size)
        b.build(get_model(args.model), 5, WeightsRequest("none"), 0)
        b.apply_phase(ALL_LAYERS, 0)
        minimal()  # warm-up
        ours, theirs = [], []
        for _ in range(args.rounds):
            theirs.append(minimal())
            ours.append(b.throughput(args.batch_size, "fp32", args.steps, 1)["train"]["images_per_second"])
        b.close()
    o, t = statistics.median(ours), statistics.median(theirs)
    ratio = o / t
    print(f"pytorch backend {o:.1f} img/s / minimal torchvision loop {t:.1f} img/s = {ratio:.3f} "
          f"({args.model} {args.image_size}px batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds of {args.steps} steps; target >= {TARGET}: "
          f"{'met' if ratio >= TARGET else 'NOT met'})")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
