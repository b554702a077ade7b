"""The harness around the recipe's training loop (``recipe.py``), the PyTorch way.

``recipe.py`` says the recipe in PyTorch's words; this module keeps what a run
records of it: an epoch's mean loss, top-1, images, seconds and the dtype the
logits were computed in (read back once per epoch, not per step), the
predictions as float32 numpy, the optimizer with its words for the result
(``describe.py``), and the TensorBoard scalars. ``throughput.py`` and
``parity.py`` take the recipe's functions from here.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import torch
from torch import nn

from backends.base import BackendError
from common.config import Fidelity, Phase
from common.preprocess import Normalisation

from . import recipe
from .describe import optimizer_words


def make_optimizer(phase: Phase, groups: list[dict], fidelity: Fidelity = Fidelity()
                   ) -> tuple[torch.optim.Optimizer, str]:
    """``recipe.torch_optimizer`` and its one-line description (``describe.optimizer_words``):
    the pair ``parity.train_steps`` asks for."""
    return recipe.torch_optimizer(phase, groups, fidelity), optimizer_words(phase, fidelity)


def dtype_name(tensor: torch.Tensor) -> str:
    """``"bfloat16"``, ``"float32"``: the dtype a forward pass really computed in."""
    return str(tensor.dtype).removeprefix("torch.")


def fit_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, criterion: nn.Module,
              device: torch.device, norm: Normalisation, on_loss=None,
              precision: str = "fp32", desc: str = "") -> dict:
    """``recipe.train_one_epoch`` (modes already set): mean loss, top-1, images, seconds, and
    ``compute_dtype``, the dtype the logits were computed in (``bfloat16`` under autocast).

    Losses and hits stay on the device until the epoch ends (``on_loss`` then gets each
    step's loss, in order): reading a value back every step (``loss.item()``) would make
    the host wait for the device at each step, and the next batch's copy with it."""
    step_losses, hits, sizes, dtypes = [], [], [], []

    def on_step(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        dtypes.append(dtype_name(logits))
        step_losses.append(loss)
        hits.append((logits.argmax(1) == labels).sum())
        sizes.append(len(labels))

    t0 = time.perf_counter()
    try:
        recipe.train_one_epoch(model, loader, optimizer, criterion, device, norm, precision,
                               on_step, desc)
    except ValueError as err:
        if "Expected more than 1 value per channel" in str(err):
            # only a batch of one image has a single value per channel at 1x1 features
            raise BackendError(
                f"a training batch of 1 image reached a BatchNorm layer in train mode "
                f"on 1x1 features, which PyTorch cannot normalise; choose a --batch-size that "
                f"does not leave a last batch of 1 ({len(loader.dataset)} training images)"
            ) from None
        raise
    # one read back per epoch (it waits for the last step, so the clock stops after it)
    losses = torch.stack(step_losses).float().cpu().tolist() if step_losses else []
    correct = int(torch.stack(hits).sum()) if hits else 0
    seconds, seen = time.perf_counter() - t0, sum(sizes)
    if on_loss is not None:
        for value in losses:
            on_loss(value)
    total_loss = sum(value * n for value, n in zip(losses, sizes))
    return {"loss": total_loss / max(seen, 1), "top1": correct / max(seen, 1), "images": seen,
            "seconds": seconds, "compute_dtype": dtypes[-1] if dtypes else None}


def predict_batches(model: nn.Module, loader, device: torch.device, norm: Normalisation, fn=None,
                    precision: str = "fp32", desc: str = "") -> tuple:
    """``recipe.predict`` concatenated as float32 numpy, and the dtype the outputs were
    computed in (None, None: an empty loader)."""
    outputs = recipe.predict(model, loader, device, norm, fn, precision, desc)
    if not outputs:
        return None, None
    return torch.cat([out.float().cpu() for out in outputs]).numpy(), dtype_name(outputs[-1])


class ScalarWriter:
    """TensorBoard scalars in ``logdir`` (an ``events.out.tfevents.*`` file), opened lazily.

    Not ``torch.utils.tensorboard.SummaryWriter``: importing it imports TensorFlow
    whenever TensorFlow is installed (its embedding module resolves
    ``tensorboard.compat.tf``), which would add seconds and hundreds of MB to the
    PyTorch run's peak memory. This writes the same event records with
    tensorboard's TensorFlow-free record writer. No tensorboard: nothing is written.
    """

    def __init__(self, logdir: Path):
        self.logdir = Path(logdir)
        self._writer = None
        self._event = self._summary = None
        self._failed = False

    def _open(self) -> bool:
        if self._writer is not None or self._failed:
            return self._writer is not None
        try:
            from tensorboard.compat.proto import event_pb2, summary_pb2
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError:
            self._failed = True
            return False
        self.logdir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.0"
        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        self._writer = RecordWriter(open(self.logdir / name, "wb"))
        self._writer.write(self._event(wall_time=time.time(), file_version="brain.Event:2")
                           .SerializeToString())
        return True

    def add_scalars(self, step: int, scalars: dict[str, float]) -> None:
        if not self._open():
            return
        values = [self._summary.Value(tag=k, simple_value=float(v)) for k, v in scalars.items()
                  if v is not None]
        self._writer.write(self._event(wall_time=time.time(), step=int(step),
                                       summary=self._summary(value=values)).SerializeToString())
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
