"""``KerasBackend``: the recipe in Keras 3 (any of its backends; tensorflow by default).

Thin: it calls ``recipe`` (the keras.io guide's steps: new head, backbone-only
restore, ``layer.trainable`` + recompile, optimizers with a head param group,
one ``model.fit`` per phase with the schedule, ``predict``) and composes
``model`` (keras.applications + the recipe's head, canonical blocks as layer
index ranges), ``train`` (the driver's per-epoch work, progress and
TensorBoard as ``fit`` callbacks), ``describe`` (the phase's words in the
report), ``data`` (tf.data or a PyDataset over the common split), ``weights``
(``.weights.h5`` + a head JSON, ImageNet) and ``throughput``.

One class serves the three registry entries ``keras`` (on TensorFlow),
``keras-jax`` and ``keras-torch``: the runner sets ``KERAS_BACKEND`` from the
entry's ``environment`` before Keras is imported, and the instance takes the
entry's name.

How Keras differs, and what this backend does about it:

* BatchNorm in frozen layers. In Keras 3 a ``BatchNormalization`` layer with
  ``trainable=False`` always runs in inference mode, so freezing a block also
  freezes its BN statistics: ``bn = "frozen"`` is Keras' default. In Keras 2
  (the keras.io InceptionV3 seed's era, before TF 2.0's change) a frozen BN
  layer still normalised with batch statistics and updated its moving
  averages in ``fit``, so the seed's "freeze the first 249 layers" meant a
  different model in Keras 2 and 3. PyTorch separates the two (frozen
  parameters, ``eval()`` chosen separately), so the torch backend must call
  ``eval()`` on frozen modules to match. ``bn = "train"`` here keeps frozen
  BN layers trainable and freezes their gamma/beta variables instead.
* Keras reads ``trainable`` when it compiles: every phase recompiles.
* Optimizers take ``learning_rate=`` (``lr=`` raises in Keras 3) and have no
  param groups; ``recipe.with_param_groups`` gives the head its own LR.
* Keras has no auxiliary Inception head; ``aux_logits`` is reported as
  unavailable, not an error.
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
from pathlib import Path

import keras
import numpy as np

from backends.base import Backend, BackendError, WeightsRequest, backend_info
from common.config import Phase
from common.data import Split, batch_count
from common.models import ModelSpec
from common.parallel import is_parallel
from common.preprocess import get_normalisation, get_preset
from common.progress import Progress
from common.schedule import learning_rate_at

from . import convert as kconvert, export as export_lib, parallel as parallel_lib, recipe
from . import weights as kweights
from .data import KerasData
from .describe import describe_phase
from .model import build_model
from . import throughput as throughput_lib
from .throughput import POLICIES, device_info
from .train import (EventFile, ProgressCallback, fit_epochs, tensorboard_available,
                    tensorboard_callback)


def seed_without_tensorflow(seed: int) -> None:
    """``keras.utils.set_random_seed`` (python, numpy, the backend, Keras' global seed
    generator). On TensorFlow as is; on jax and torch with TensorFlow hidden from Keras:
    the function also imports and seeds TensorFlow whenever it is installed, for tf.data,
    which these runs do not use, and TensorFlow must not share their process (imported
    before torch it crashes it; the GPU machines have none)."""
    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    with _tensorflow_unimportable():  # Keras' lazy check then caches "not available"
        keras.utils.set_random_seed(seed)


@contextlib.contextmanager
def _tensorflow_unimportable():
    sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError meanwhile
    try:
        yield
    finally:
        del sys.modules["tensorflow"]


class KerasBackend(Backend):
    name = "keras"
    checkpoint_suffix = kweights.WEIGHTS_SUFFIX

    def __init__(self, config, run_dir):
        super().__init__(config, run_dir)
        info = backend_info(config.backend)
        wanted = info.environment.get("KERAS_BACKEND", keras.backend.backend())
        if wanted != keras.backend.backend():
            raise BackendError(f"{info.name} needs KERAS_BACKEND={wanted} before Keras is imported; "
                               f"this process has Keras on {keras.backend.backend()} (bench run "
                               f"starts each backend in its own process)")
        self.name = info.name  # keras, keras-jax or keras-torch
        # data parallel (parallel.py): the model, optimizer and compile live in this scope
        self._scope, self._parallel = None, {}
        if is_parallel(config.train):
            self._scope, self._parallel = parallel_lib.distribute(config.train)
            self._scope.__enter__()
        self.km = None
        self.data: KerasData | None = None
        self.optimizer = None
        self._applied = None  # the phase apply_phase expressed (a native one mapped by backends.native)
        self._writer = None
        self._previous_policy = None

    # -- environment -----------------------------------------------------
    def frameworks(self) -> dict[str, str]:
        backend = keras.backend.backend()
        versions = {"keras": keras.__version__, "keras_backend": backend}
        module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend])
        versions[backend] = module.__version__
        return versions

    def device(self) -> dict:
        return device_info()

    # -- data and model --------------------------------------------------
    def _setup(self, split: Split, image_size: int) -> None:
        seed_without_tensorflow(self.config.train.seed)  # python, numpy and the backend
        if self.config.train.precision != "fp32":
            # Keras fixes each layer's compute dtype when it is built: set the policy first.
            self._previous_policy = keras.config.dtype_policy()
            keras.config.set_dtype_policy(POLICIES[self.config.train.precision])
        norm = get_normalisation(self.preprocessing_name())
        # tf.data parallelism is AUTOTUNE; TF's op threads default to the machine's cores.
        multiple = parallel_lib.shard_multiple(self.config.train) if self._scope else 1
        self.data = KerasData(split, image_size, norm, self.config.train.batch_size,
                              self.config.train.seed, self.config.data.num_workers, multiple,
                              preset=get_preset(self.config.recipe.preprocessing),
                              common_sampler=self.config.recipe.fidelity.aligned("crop_sampler"))

    def _build(self, model: ModelSpec, num_classes: int, weights: WeightsRequest,
               head_hidden_units: int) -> None:
        base_weights, path = None, None
        if weights.kind == "imagenet":
            base_weights = kweights.imagenet_file(model.name, self.entry)
        elif weights.kind == "path":
            path = str(weights.path)
            if not Path(path).is_file():
                raise BackendError(f"weights file {path!r} does not exist")
            if not path.endswith(kweights.WEIGHTS_SUFFIX):
                if not path.endswith(".h5"):
                    raise BackendError(f"weights file {path!r}: the keras backend reads "
                                       f"*.weights.h5 (saved by it) or a keras.applications "
                                       f"*_notop.h5 file")
                base_weights, path = path, None  # a keras.applications-style no-top file
        if weights.reuse_head_rows and path is None:
            raise BackendError("reuse_head_rows needs a .weights.h5 checkpoint with a head")
        try:
            self.km = build_model(model, self.entry, num_classes, self.image_size, head_hidden_units,
                                  base_weights, dropout=self.config.recipe.dropout,
                                  unbiased_bn=self.config.recipe.fidelity.aligned("bn_moving_variance"),
                                  float32_head=self.config.recipe.fidelity.aligned("head_dtype"))
        except ValueError as err:
            raise BackendError(f"keras {model.name}: {str(err).splitlines()[0]}") from None
        head = self.aligned_head(head_hidden_units)
        if head is not None:  # fidelity head_init = "aligned": the common draw, not Dense's own
            kconvert.write_head(self.km, head)
        if path is not None:
            kweights.restore_backbone(self.km, path, self.image_size, weights.reuse_head_rows)

    def _apply_phase(self, phase: Phase, index: int) -> dict:
        recipe.set_trainable(self.km, phase)
        self.optimizer = recipe.compile_phase(self.km, phase, self.config.recipe.fidelity)
        self._applied = phase
        return describe_phase(self.km, phase, self.config.recipe.fidelity, self.data.pipeline,
                              self.config.model.aux_logits)

    def _set_learning_rate(self, learning_rate: float) -> None:
        self.optimizer.learning_rate = learning_rate  # the head's x multiplier is in the optimizer

    def _fit_phase(self, phase: Phase, first_epoch: int, global_epoch: int, on_epoch_end) -> None:
        """One ``model.fit`` for the rest of the phase. Keras numbers epochs across the run
        (0-based): Keras epoch ``k`` is epoch ``k - offset`` of the phase."""
        epochs = phase.epochs - first_epoch
        offset = global_epoch - first_epoch

        def phase_epoch_end(k: int, stats: dict) -> None:
            on_epoch_end(k - offset, learning_rate_at(phase, k - offset), stats)

        schedule = recipe.learning_rate_schedule(phase, offset)  # common.schedule's value
        tensorboard = tensorboard_callback(self.run_dir / "tensorboard" / phase.name)
        fit_epochs(self.km, self.data.train(range(global_epoch + 1, global_epoch + epochs + 1),
                                            phase.augment),
                   self.data.steps_per_epoch, global_epoch, global_epoch + epochs,
                   self.data.images_per_epoch, phase_epoch_end, callbacks=[schedule],
                   after=[tensorboard] if tensorboard else [])

    def _fit_epoch(self, phase: Phase, global_epoch: int) -> dict:
        """One epoch at the learning rate set last (the contract's single step of the loop)."""
        stats: dict = {}
        fit_epochs(self.km, self.data.train([global_epoch], phase.augment),
                   self.data.steps_per_epoch, global_epoch - 1, global_epoch,
                   self.data.images_per_epoch, lambda k, s: stats.update(s))
        return stats

    def _run_predict(self, model: keras.Model, subset: str, width: int) -> np.ndarray:
        samples = self.split.subset(subset)
        if not samples:
            return np.zeros((0, width), np.float32)
        with Progress(batch_count(len(samples), self.config.train.batch_size),
                      self.pass_name) as bar:
            out = recipe.predict(model, self.data.eval(subset), callbacks=[ProgressCallback(bar)])
        return np.asarray(out, np.float32)[:len(samples)]  # padding of a sharded last batch

    def _predict(self, subset: str) -> np.ndarray:
        # the uncompiled view of the same layers: compile() discards a model's traced predict
        # function, so predicting through the compiled model would trace it again every phase
        return self._run_predict(self.km.weights_view, subset, self.split.num_classes)

    def _extract_features(self, subset: str) -> np.ndarray:
        return self._run_predict(self.km.features, subset, self.km.spec.feature_dim)

    # -- checkpoints -----------------------------------------------------
    def _save(self, path: Path) -> Path:
        return kweights.save(self.km, self.optimizer, path)

    def _state_variables(self) -> list:
        """What ``save`` writes: the model's variables and the optimizer's (when built)."""
        optimizer = self.optimizer.variables if self.optimizer is not None and self.optimizer.built else []
        return [*self.km.weights_view.weights, *optimizer]

    def _hold(self) -> list[np.ndarray]:
        return [np.array(keras.ops.convert_to_numpy(v), copy=True) for v in self._state_variables()]

    def _save_held(self, held: list[np.ndarray], path: Path) -> Path:
        """``save`` of ``held``: assigned to the variables for the write, then the current
        values back (Keras writes a checkpoint from its variables)."""
        variables, current = self._state_variables(), self._hold()
        for v, value in zip(variables, held, strict=True):
            v.assign(value)
        try:
            return kweights.save(self.km, self.optimizer, path)
        finally:
            for v, value in zip(variables, current, strict=True):
                v.assign(value)

    def _restore(self, path: Path) -> None:
        kweights.restore(self.km, self.optimizer, path)

    def _trainable_names(self) -> list[str]:
        return [v.path for v in self.km.model.trainable_weights]

    def _snapshot(self, block: str) -> dict[str, np.ndarray]:
        return {v.path: np.array(keras.ops.convert_to_numpy(v), copy=True)
                for layer in self.km.block_layers(block) for v in layer.weights}

    # -- reporting -------------------------------------------------------
    def _throughput(self, batch_size: int, precision: str, steps: int, warmup: int,
                    kinds: tuple[str, ...], compile: bool) -> dict:
        return throughput_lib.measure_throughput(self.km, self._applied, batch_size, precision, steps,
                                                 warmup, seed=self.config.train.seed, kinds=kinds)

    def execution_mode(self) -> str:
        return throughput_lib.execution_mode()

    def is_out_of_memory(self, error: BaseException) -> bool:
        return throughput_lib.is_out_of_memory(error)

    def release_memory(self) -> None:
        throughput_lib.release_memory()

    def out_of_memory_error(self, message: str) -> BaseException:
        return throughput_lib.out_of_memory_error(message)

    def _time_input_pipeline(self, augment: bool) -> dict:
        """What ``fit`` reads, without the model: the ``tf.data`` stream of one epoch, or the
        ``PyDataset``'s batches made by as many threads as ``fit`` gives it (``workers``), in
        order; epoch 1 warms up, epoch 2 is timed."""
        return self.data.time_epoch(augment)

    def _bare_train_loop(self, batch_size: int, steps: int):
        """The harness-overhead baseline: ``train_on_batch`` in a plain loop, timed once."""
        model = self.km.train_model
        n = model.output_shape[-1]
        rng = np.random.default_rng(0)
        size = self.image_size
        x = rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32)
        y = np.eye(n, dtype=np.float32)[rng.integers(0, n, batch_size)]

        def run() -> float:
            t0 = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(x, y)
            return time.perf_counter() - t0
        return run

    def _export(self, fmt: str, directory: Path, golden: np.ndarray):
        return export_lib.export(self.km, fmt, directory, golden)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        log_dir = self.run_dir / "tensorboard" / "epochs"
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            if self._writer is None:
                self._writer = tf.summary.create_file_writer(str(log_dir))
            with self._writer.as_default():
                for key, value in scalars.items():
                    tf.summary.scalar(key, value, step=step)
            self._writer.flush()
        elif tensorboard_available():  # no TensorFlow in a jax or torch run
            if self._writer is None:
                self._writer = EventFile(log_dir)
            self._writer.scalars(step, scalars)

    def model_summary(self) -> str:
        lines = [f"keras {keras.__version__} ({keras.backend.backend()}), "
                 f"{self.entry.constructor}(include_top=False) + new head",
                 "canonical block -> layer indices (model.layers[i]):"]
        for block, indices in self.km.blocks.items():
            names = (self.km.layers[indices.start].name, self.km.layers[indices[-1]].name)
            lines.append(f"  {block:10s} {indices.start:4d}..{indices[-1]:<4d} {names[0]} .. {names[1]}")
        lines.append(f"  {'head':10s} {self.km.num_base_layers:4d}..{len(self.km.layers) - 1:<4d} "
                     f"{', '.join(layer.name for layer in self.km.layers[self.km.num_base_layers:])}")
        captured: list[str] = []
        self.km.model.summary(line_length=110, print_fn=lambda text, **_: captured.append(text))
        return "\n".join(lines + ["", *captured]) + "\n"

    def _parallel_details(self) -> dict:
        return self._parallel

    def close(self) -> None:
        if self._scope is not None:
            self._scope.__exit__(None, None, None)
            parallel_lib.undistribute()
            self._scope = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._previous_policy is not None:
            keras.config.set_dtype_policy(self._previous_policy)
            self._previous_policy = None
        self.km = self.optimizer = self.data = None
        gc.collect()
