"""Around the recipe's phases (``recipe.py``): progress, per-epoch work and TensorBoard as
``fit`` callbacks, and the count of a phase's weights.

``recipe.py`` holds the Keras idiom itself (``layer.trainable`` + ``compile``, the
optimizer with a head param group, one ``model.fit`` per phase); this module gives its
``fit`` the callbacks the harness needs:

* the driver's per-epoch work (validation, checkpoints, ``state.json``) is a callback
  (``EpochEnd``), and so is the progress of each epoch (``EpochProgress``);
* a ``PyDataset`` (jax, torch) is moved to each epoch by ``SetEpoch``;
* TensorBoard is Keras' own callback on TensorFlow and the same epoch scalars through
  the ``tensorboard`` package on jax and torch (``EpochScalars``).

``set_trainable`` and ``compile_phase`` are the recipe's, named here too for the modules
that reach them through this one (``throughput.py``, ``parity.py``).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from common.progress import Progress

from . import recipe
from .model import KerasModel


def weight_count(variables) -> int:
    return int(sum(int(np.prod(v.shape)) for v in variables))


class ProgressCallback(keras.callbacks.Callback):
    """One ``common.progress`` unit per batch of ``fit`` or ``predict`` (Keras' own
    progress bar, ``verbose=1``, would print from the worker process, one line per update
    once its output is not a terminal)."""

    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)

    def on_predict_batch_end(self, batch, logs=None):
        self.bar.update(1)


class EpochProgress(keras.callbacks.Callback):
    """One ``common.progress`` pass per epoch of a ``fit``: "epoch N train", N the run's
    1-based epoch (Keras' epoch index + 1), as ``Backend.fit_epoch`` names it."""

    def __init__(self, batches: int):
        super().__init__()
        self.batches, self.bar = batches, None

    def on_epoch_begin(self, epoch, logs=None):
        self.bar = Progress(self.batches, f"epoch {epoch + 1} train")

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)

    def on_epoch_end(self, epoch, logs=None):
        self.bar.close()


class SetEpoch(keras.callbacks.Callback):
    """Moves a training ``PyDataset`` to each epoch as it begins, before any of its batches
    is read (``data.NumpyBatches.set_epoch``; Keras' epoch ``k`` is the run's ``k + 1``)."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch, logs=None):
        self.dataset.set_epoch(epoch + 1)

# ------------------------------------------------------------------ fit

class EpochEnd(keras.callbacks.Callback):
    """Hands each finished epoch to ``on_epoch_end(keras_epoch, stats)``: fit's loss and top-1,
    the images of the epoch and the seconds from ``on_epoch_begin`` to here."""

    def __init__(self, images: int, on_epoch_end: Callable[[int, dict], None]):
        super().__init__()
        self.images, self.on_epoch_end_fn, self._t0 = images, on_epoch_end, 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._t0
        self.on_epoch_end_fn(epoch, {"loss": float(logs["loss"]), "top1": float(logs["top1"]),
                                     "images": int(self.images), "seconds": seconds})


class EventFile:
    """Scalars in a TensorBoard event file, written with the ``tensorboard`` package's own
    record writer. Keras' ``TensorBoard`` callback imports ``tensorflow.summary`` on every
    Keras backend (and ``tensorboard.summary.Writer`` imports TensorFlow whenever it is
    installed), so the jax and torch runs write their events this way: they need no
    TensorFlow (the GPU machines have none)."""

    def __init__(self, log_dir: Path):
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event, self._summary = event_pb2.Event, summary_pb2.Summary
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._file = open(log_dir / name, "wb")
        self._records = RecordWriter(self._file)
        self._write(self._event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())
        self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = self._summary(value=[self._summary.Value(tag=k, simple_value=float(v))
                                       for k, v in values.items()])
        self._write(self._event(wall_time=time.time(), step=int(step), summary=summary))

    def close(self) -> None:
        self._file.close()


class EpochScalars(keras.callbacks.Callback):
    """The epoch scalars Keras' ``TensorBoard`` callback writes (``epoch_loss``,
    ``epoch_top1``, ``epoch_learning_rate`` under ``LOG_DIR/train``), without TensorFlow."""

    def __init__(self, log_dir: Path):
        super().__init__()
        self.log_dir = Path(log_dir)
        self._events: EventFile | None = None

    def on_epoch_end(self, epoch, logs=None):
        if self._events is None:
            self._events = EventFile(self.log_dir / "train")
        self._events.scalars(epoch, {f"epoch_{k}": v for k, v in (logs or {}).items()
                                     if np.ndim(v) == 0})

    def on_train_end(self, logs=None):
        if self._events is not None:
            self._events.close()
            self._events = None


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def tensorboard_callback(log_dir: Path) -> keras.callbacks.Callback | None:
    """Keras' ``TensorBoard`` callback on TensorFlow; the same epoch scalars through the
    ``tensorboard`` package on jax and torch; None when neither can write."""
    if keras.backend.backend() == "tensorflow":
        return keras.callbacks.TensorBoard(log_dir=str(log_dir), write_graph=False, profile_batch=0)
    return EpochScalars(log_dir) if tensorboard_available() else None


def fit_epochs(km: KerasModel, dataset, steps_per_epoch: int, initial_epoch: int, epochs: int,
               images: int, on_epoch_end: Callable[[int, dict], None], callbacks=(),
               after=()) -> None:
    """``recipe.fit`` over Keras' 0-based epochs ``initial_epoch .. epochs - 1`` (the run's
    epochs ``initial_epoch + 1 .. epochs``) of ``dataset`` (``KerasData.train`` of exactly
    those), calling ``on_epoch_end(epoch, stats)`` after each; ``callbacks`` run before
    that call in every hook, ``after`` after it."""
    if isinstance(dataset, keras.utils.PyDataset):  # one epoch, moved on by SetEpoch
        callbacks, steps_per_epoch = [SetEpoch(dataset), *callbacks], None
    recipe.fit(km, dataset, initial_epoch, epochs, steps_per_epoch,
               callbacks=[*callbacks, EpochProgress(steps_per_epoch or len(dataset)),
                          EpochEnd(images, on_epoch_end), *after])
