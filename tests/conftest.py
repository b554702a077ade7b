"""Shared fixtures: tiny synthetic data made once per session, tiny run configs.

Everything generated lives under a session temporary folder
(``TRANSFER_BENCH_DATA``), never in the repository's ``data/``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from pathlib import Path

# Under pytest-xdist (``-n N``) the N worker processes share the cores: each worker and the
# children it starts get cores // N threads for torch, TensorFlow and XLA (two workers with
# two threads each on a 2-core machine spin-wait, 3-4x slower than one thread each). Set
# before any framework is imported.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    for _name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS"):
        os.environ.setdefault(_name, _threads)
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

# Import order matters when one interpreter holds both frameworks (pytest does;
# `bench run` never does): `import tensorflow` before `torchvision.models`
# segfaults (in triton's import, even with torch already imported); importing
# torchvision.models first is fine.
if importlib.util.find_spec("torchvision") is not None:
    import torch  # noqa: F401
    import torchvision.models  # noqa: F401

import pytest

from common import synthetic
from common.config import DataConfig, ModelConfig, PretrainConfig, RunConfig, TrainConfig, load_recipe
from backends.base import availability

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def isolated_data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench-data")
    old = os.environ.get("TRANSFER_BENCH_DATA")
    os.environ["TRANSFER_BENCH_DATA"] = str(root)
    yield root
    if old is None:
        os.environ.pop("TRANSFER_BENCH_DATA", None)
    else:
        os.environ["TRANSFER_BENCH_DATA"] = old


@pytest.fixture(scope="session")
def tiny_quads(isolated_data_root) -> Path:
    """5 quadrilateral classes x 6 images (train 3 / val 1 / test 2 per class)."""
    return synthetic.generate(synthetic.SyntheticSpec("quads", 6, image_size=80, seed=1),
                              root=isolated_data_root, progress=False)


def tiny_config(backend: str, recipe: str, data: Path, run_dir: Path, *, model: str = "inception_v3",
                weights: str = "none", image_size: int = 75, epochs: int = 1, batch_size: int = 4,
                seed: int = 0, **train) -> RunConfig:
    """A RunConfig small enough for a CPU test (1 epoch per phase, 75 px)."""
    from common.config import override_epochs

    r = override_epochs(load_recipe(recipe), epochs)
    return RunConfig(
        backend=backend,
        recipe=r,
        data=DataConfig(source=str(data), image_size=image_size, val_fraction=0.2, test_fraction=0.3),
        model=ModelConfig(name=model, weights=weights),
        train=TrainConfig(seed=seed, batch_size=batch_size, throughput_steps=2, **train),
        pretrain=PretrainConfig(epochs=1, images_per_class=4, batch_size=8),
        run_dir=str(run_dir),
    )


def require_backend(name: str) -> None:
    reason = availability(name)
    if reason:
        pytest.skip(f"backend {name} unavailable: {reason}")



def epsilon_hat_adam(w: float, grads, lr: float, eps: float, wd: float = 0.0,
                     decoupled: bool = False) -> list[float]:
    """Keras 3's and TF1's Adam by hand, w after each step: lr_t = lr * sqrt(1 - b2^t) /
    (1 - b1^t), w -= lr_t * m / (sqrt(v) + eps); wd as L2 in the gradient, or AdamW's
    w *= 1 - lr * wd before the step."""
    m = v = 0.0
    out = []
    for t, g in enumerate(grads, 1):
        g = g + wd * w if wd and not decoupled else g
        w = w * (1 - lr * wd) if decoupled else w
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w -= lr * (1 - 0.999 ** t) ** 0.5 / (1 - 0.9 ** t) * m / (v ** 0.5 + eps)
        out.append(w)
    return out


__all__ = ["tiny_config", "require_backend", "epsilon_hat_adam", "dataclasses"]
