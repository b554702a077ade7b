"""The Backend interface and the registry of backends (imported lazily).

A backend is one framework's way of doing the recipe: it builds the model
with its head replaced, expresses each phase natively (which parameters
train, which optimizer and learning rates, which BatchNorm mode), runs its
own input pipeline over the common split and saves checkpoints in its own
format. Everything else — the epoch loop, best-on-val checkpointing, resume,
metrics, linear-probe heads, result files — lives in ``benchmarks.driver`` and
is therefore identical for every backend.

The registry maps names to ``"module:Class"`` strings so that ``bench run
--backend keras`` never imports torch, and ``bench list`` can report a
missing framework without importing any.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from common.config import Phase, RunConfig
from common.data import Split
from common.models import ModelSpec


@dataclass(frozen=True)
class WeightsRequest:
    """What to initialise the backbone from.

    ``kind``: ``none`` (random init), ``imagenet`` (the framework's own
    mechanism), or ``path`` (a native checkpoint: the cached source-pretrained
    one or a user's file). The head is never restored from a checkpoint; rows
    listed in ``reuse_head_rows`` (target class index -> source class index)
    are copied from the checkpoint's linear head.
    """

    kind: str = "none"
    path: str | None = None
    reuse_head_rows: dict[int, int] = field(default_factory=dict)


class BackendError(RuntimeError):
    """A user-facing failure inside a backend (one line, no traceback needed)."""


class Backend(abc.ABC):
    """One framework's implementation of the recipe (see module docstring).

    Lifecycle, driven by ``benchmarks.driver``::

        b = Backend(config, run_dir)
        b.setup(split, image_size)            # seeds, threads, input pipelines
        b.build(num_classes, weights, head_hidden_units)
        for phase in recipe.phases:
            report = b.apply_phase(phase, index)
            for epoch in range(phase.epochs):
                b.set_learning_rate(lr)       # common.schedule decides the value
                b.fit_epoch(...); logits = b.predict("val"); b.save(...)
        b.predict("test"); b.throughput(...); b.close()
    """

    name: ClassVar[str]
    #: the framework's checkpoint file suffix (".pt", ".weights.h5", ".ckpt")
    checkpoint_suffix: ClassVar[str]

    def __init__(self, config: RunConfig, run_dir: Path):
        self.config = config
        self.run_dir = Path(run_dir)

    # -- environment -----------------------------------------------------
    @abc.abstractmethod
    def frameworks(self) -> dict[str, str]:
        """Package versions that matter for this backend."""

    @abc.abstractmethod
    def device(self) -> dict:
        """``{"kind": "cpu"|"cuda"|..., "name": ..., ...}`` of the device used."""

    # -- data and model --------------------------------------------------
    @abc.abstractmethod
    def setup(self, split: Split, image_size: int) -> None:
        """Seed the framework (``config.train.seed``) and build the input pipelines."""

    @abc.abstractmethod
    def build(self, model: ModelSpec, num_classes: int, weights: WeightsRequest,
              head_hidden_units: int = 0) -> None:
        """Build ``model`` with a new head of ``num_classes`` and load ``weights``."""

    @abc.abstractmethod
    def apply_phase(self, phase: Phase, index: int) -> dict:
        """Freeze/unfreeze, set BN mode and make the optimizer for ``phase``.

        Returns the phase report: ``trainable_blocks`` (canonical),
        ``trainable_params``, ``total_params``, ``trainable_tensors`` and
        ``native`` (how the framework expressed it: module names and param
        groups / layer index range and optimizer / scopes and flags).
        """

    @abc.abstractmethod
    def set_learning_rate(self, learning_rate: float) -> None:
        """Base LR for the next epoch (the head gets ``x head_lr_multiplier``)."""

    @abc.abstractmethod
    def fit_epoch(self, phase: Phase, global_epoch: int) -> dict:
        """One pass over the training split: ``{"loss", "top1", "images", "seconds"}``."""

    @abc.abstractmethod
    def predict(self, subset: str) -> np.ndarray:
        """Logits ``[N, num_classes]`` for ``split.<subset>`` in split order (eval mode)."""

    @abc.abstractmethod
    def extract_features(self, subset: str) -> np.ndarray:
        """Pooled backbone features ``[N, feature_dim]`` in split order (eval mode)."""

    # -- checkpoints -----------------------------------------------------
    @abc.abstractmethod
    def save(self, path: Path) -> Path:
        """Save model (and optimizer) state natively at ``path`` (no suffix); return the file."""

    @abc.abstractmethod
    def restore(self, path: Path) -> None:
        """Restore everything saved by ``save`` (for resume and best-on-val)."""

    @abc.abstractmethod
    def trainable_names(self) -> list[str]:
        """Native names of the tensors the current phase trains (keys as in ``snapshot``)."""

    @abc.abstractmethod
    def snapshot(self, block: str) -> dict[str, np.ndarray]:
        """Copies of every tensor of canonical ``block`` (``"head"`` included), keyed by
        native name: weights and non-trainable state such as BN moving statistics."""

    # -- reporting -------------------------------------------------------
    @abc.abstractmethod
    def throughput(self, batch_size: int, precision: str, steps: int, warmup: int) -> dict:
        """Model-step train/infer timing on in-memory batches (``common.timing``)."""

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Write scalars to TensorBoard natively (default: nothing)."""

    def model_summary(self) -> str:
        """Human-readable model summary saved in the run directory."""
        return ""

    def close(self) -> None:
        """Release sessions, writers and memory."""


# ------------------------------------------------------------------ registry

REGISTRY: dict[str, str] = {
    "pytorch": "backends.pytorch.backend:PyTorchBackend",
    "keras": "backends.keras.backend:KerasBackend",
    "slim": "backends.slim.backend:SlimBackend",
}

# Extra backends (a plug-in, or the tests' numpy backend) as
# TRANSFER_BENCH_BACKENDS="name=package.module:Class,...". The variable is
# inherited by the per-run child processes.
EXTRA_BACKENDS_ENV = "TRANSFER_BENCH_BACKENDS"
for _entry in filter(None, os.environ.get(EXTRA_BACKENDS_ENV, "").split(",")):
    _name, _, _target = _entry.partition("=")
    if _name and ":" in _target:
        REGISTRY[_name.strip()] = _target.strip()

_REQUIRES = {
    "pytorch": (("torch", "torchvision"), "pip install 'transfer-bench[torch]'"),
    "keras": (("keras", "tensorflow"), "pip install 'transfer-bench[keras]'"),
    "slim": (("tensorflow", "tf_slim", "tf_keras"), "pip install 'transfer-bench[slim]'"),
}


def backend_names() -> list[str]:
    return list(REGISTRY)


def unknown_backend_message(name: str) -> str:
    return f"unknown backend {name!r}; choose one of: {', '.join(REGISTRY)}, all"


def availability(name: str) -> str | None:
    """Reason ``name`` cannot run here (without importing its framework), or None."""
    if name not in REGISTRY:
        return unknown_backend_message(name)
    modules, hint = _REQUIRES.get(name, ((), ""))
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        return f"{', '.join(missing)} not installed; {hint}"
    module = REGISTRY[name].split(":")[0]
    if importlib.util.find_spec(module) is None:
        return f"backend module {module} is missing from this installation"
    return None


def get_backend(name: str) -> type[Backend]:
    """The backend class (imports its framework)."""
    if name not in REGISTRY:
        raise BackendError(unknown_backend_message(name))
    reason = availability(name)
    if reason:
        raise BackendError(f"backend {name!r} is not available: {reason}")
    module, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module), cls)
