"""The TF-Slim backend: the recipe as ``train_image_classifier.py`` would run it.

One private ``tf.Graph`` and ``tf.compat.v1.Session`` per backend object
(eager execution stays on for the rest of the process; everything here is
built inside ``with self.graph.as_default()``). The graph holds the
tf.data pipelines (``data.py``), an eval tower and one train tower per BN
configuration (``model.py``), one train op per phase (``train.py``) and
the Savers (``weights.py``). The recipe itself, in slim's words, is
``recipe.py``: this adapter calls it and keeps the towers, clones and caches;
``describe.py`` says what a phase reports.

BatchNorm in frozen blocks, the slim way and the suite's way:

* slim's ``batch_norm`` has no per-layer mode switch: ``is_training`` is a
  Python bool of the graph. With ``True`` it normalises with batch
  statistics and adds two moving-average ops to ``UPDATE_OPS``; with
  ``False`` it uses the moving statistics and creates no update op. Whether a
  variable *trains* is a separate matter (``--trainable_scopes`` ->
  ``variables_to_train``).
* ``train_image_classifier.py`` builds the whole net with ``is_training=True``
  and runs every ``UPDATE_OPS`` op, so the moving statistics of frozen scopes
  keep drifting towards the new data (Keras 3 and PyTorch ``eval()`` do not).
* Here, a train tower is built with ``is_training`` chosen *per scope*
  (``recipe.scoped_batch_norm``): ``phase.bn = "frozen"`` -> True only in the
  blocks that train (and the head), so frozen scopes normalise with their
  moving statistics and have no update op; ``phase.bn = "train"`` -> True
  everywhere and every update op runs. The train op runs exactly that
  tower's ``UPDATE_OPS`` (counted in the phase report).

Precision: fp32 only; ``bf16`` is refused in ``setup`` (slim layers have no
mixed-precision policy in TF1 graph mode).
"""

from __future__ import annotations

import importlib.metadata
import random
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from backends.base import Backend, BackendError, WeightsRequest
from backends.slim import convert as slim_convert
from backends.slim import data as slim_data
from backends.slim import export as slim_export
from backends.slim import model as slim_model
from backends.slim import parallel as slim_parallel
from backends.slim import recipe
from backends.slim import throughput as slim_throughput
from backends.slim import train as slim_train
from backends.slim import weights as slim_weights
from backends.slim.compat import identity_hashing
from backends.slim.describe import describe_phase, optimizer_description
from common.config import Phase
from common.models import HEAD, ModelSpec
from common.parallel import is_parallel
from common.data import batch_count
from common.preprocess import get_normalisation, get_preset
from common.progress import Progress
from common.results import cpu_name

class SlimBackend(Backend):
    name = "slim"
    checkpoint_suffix = slim_weights.SUFFIX

    def __init__(self, config, run_dir):
        super().__init__(config, run_dir)
        self.graph: tf.Graph | None = None
        self.session: tf.compat.v1.Session | None = None
        self.step: slim_train.TrainOp | None = None
        self.applied_phase: Phase | None = None   # the phase self.step trains
        self.variables_to_train: list = []
        self._train_towers: dict[tuple, slim_model.Tower] = {}
        # one device per clone (--num_clones, parallel.py), split off before TensorFlow starts
        self.clone_devices: list[str] = (slim_parallel.clone_devices(config.train.devices)
                                         if is_parallel(config.train) else [])
        self._saver = slim_weights.CheckpointSaver()
        self._writer = None
        self._lr_value = 0.0
        # dtypes the logits were computed in, per path (precision_used reports them)
        self._computed: dict[str, set[str]] = {"train": set(), "eval": set()}

    # -- environment -----------------------------------------------------
    def frameworks(self) -> dict[str, str]:
        import tf_keras

        return {"tensorflow": tf.__version__, "tf_slim": importlib.metadata.version("tf-slim"),
                "tf_keras": tf_keras.__version__}

    def device(self) -> dict:
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return {"kind": "gpu", "name": details.get("device_name", gpus[0].name),
                    "count": len(gpus)}
        return {"kind": "cpu", "name": cpu_name()}

    # -- data and model --------------------------------------------------
    def _setup(self, split, image_size: int) -> None:
        if self.config.train.precision != "fp32":
            raise BackendError(f"the slim backend runs fp32 only (precision "
                               f"{self.config.train.precision!r} is not supported by tf_slim "
                               f"graph mode); pass --precision fp32")
        seed = self.config.train.seed
        random.seed(seed)
        np.random.seed(seed)
        self.graph = tf.Graph()
        norm = get_normalisation(self.preprocessing_name())
        common = self.config.recipe.fidelity.aligned("crop_sampler")
        with self.graph.as_default():
            tf.compat.v1.set_random_seed(seed)  # graph-level seed: op seeds follow build order
            self.pipes = slim_data.build_pipelines(split, image_size, norm,
                                                   self.config.train.batch_size,
                                                   self.config.data.num_workers,
                                                   get_preset(self.config.recipe.preprocessing),
                                                   common_sampler_seed=seed if common else None)
        config = tf.compat.v1.ConfigProto(allow_soft_placement=True)
        config.gpu_options.allow_growth = True
        self.session_config = config  # throughput's copy of the graph runs with it too
        self.session = tf.compat.v1.Session(graph=self.graph, config=config)

    def _build(self, model: ModelSpec, num_classes: int, weights: WeightsRequest,
               head_hidden_units: int) -> None:
        self.hidden = head_hidden_units
        self.aux = bool(self.config.model.aux_logits and self.entry.aux_head)
        if head_hidden_units > 0 and weights.reuse_head_rows:
            raise BackendError("reuse_head_rows needs a linear head (head_hidden_units = 0): "
                               "the new head's first layer has no class rows")
        ckpt = self._checkpoint_for(weights)
        with self.graph.as_default(), identity_hashing():
            # phase-dependent scalars; local variables: not in checkpoints
            self.learning_rate = _local_scalar("learning_rate", 0.0)
            self.weight_decay = _local_scalar("weight_decay", 0.0)
            # the eval tower creates every model variable: is_training=False everywhere
            self.eval_tower = self._tower((), dropout_training=False, reuse=False)
            self.model_variables = tf.compat.v1.global_variables()
            self.global_step = tf.compat.v1.train.get_or_create_global_step()
            self.session.run([tf.compat.v1.global_variables_initializer(),
                              tf.compat.v1.local_variables_initializer()])
            self._train_towers[self._tower_key((), False)] = self.eval_tower
            head = self.aligned_head(head_hidden_units)
            if head is not None:  # fidelity head_init = "aligned": the common draw, not xavier's
                slim_convert.write_head(model.name, self.session, self.model_variables, head)
            self.restore_report = self._load_weights(weights, ckpt)

    def _clones(self, training_scopes, key) -> list[tuple]:
        """One tower per clone device on its slice of the batch, sharing the variables
        (model_deploy's ``create_clones``), built once per BN configuration."""
        if ("clones", key) not in self._train_towers:
            clones = []
            slices = slim_parallel.split_batch(self.pipes.images, self.pipes.labels,
                                               len(self.clone_devices))
            for i, (device, (images, labels)) in enumerate(zip(self.clone_devices, slices)):
                with tf.device(device), tf.compat.v1.name_scope(f"clone_{i}"):
                    tower = slim_model.build_tower(
                        self.spec, self.entry, images, self.num_classes, hidden_units=self.hidden,
                        aux_logits=self.aux, weight_decay=self.weight_decay,
                        training_scopes=training_scopes, dropout=self.config.recipe.dropout,
                        dropout_training=True, reuse=True)
                clones.append((tower, labels))
            self._train_towers[("clones", key)] = clones
        return self._train_towers[("clones", key)]

    def _parallel_details(self) -> dict:
        return {"num_clones": len(self.clone_devices), "devices_used": self.clone_devices,
                "gradients": "model_deploy: each clone's loss / num_clones, summed; gradients "
                             "colocated with each clone's ops, applied once",
                "batch_split": "each batch split into num_clones consecutive slices",
                "batchnorm": "each clone's own slice; update ops of the first clone only"}

    def _tower(self, training_scopes, dropout_training: bool, reuse: bool) -> slim_model.Tower:
        return slim_model.build_tower(
            self.spec, self.entry, self.pipes.images, self.num_classes, hidden_units=self.hidden,
            aux_logits=self.aux, weight_decay=self.weight_decay, training_scopes=training_scopes,
            dropout=self.config.recipe.dropout, dropout_training=dropout_training, reuse=reuse)

    def _tower_key(self, training_scopes, dropout_training: bool) -> tuple:
        """What makes two towers differ (towers are shared per key): the scopes that hold a
        batch_norm in training mode, and whether dropout is active."""
        with_bn = [s for s in training_scopes
                   if slim_model.variables_in_scopes([v for v in self.model_variables
                                                      if slim_model.is_moving_statistic(v)], [s])]
        return tuple(sorted(with_bn)), dropout_training and self.config.recipe.dropout > 0

    def _checkpoint_for(self, weights: WeightsRequest) -> str | None:
        """The checkpoint to restore from (checked before the graph is built)."""
        if weights.kind == "none":
            return None
        if weights.kind == "imagenet":
            return slim_weights.imagenet_checkpoint(self.spec.name, self.entry)
        if weights.kind == "path":
            return slim_weights.resolve_checkpoint(weights.path)
        raise BackendError(f"unknown weights kind {weights.kind!r}; use none, imagenet or path")

    def _load_weights(self, weights: WeightsRequest, ckpt: str | None) -> dict:
        if ckpt is None:
            return {}
        exclude = self._exclude_scopes()
        report = slim_weights.restore_excluding(self.session, ckpt, self.model_variables, exclude,
                                                weights.ignore_missing_vars)
        if report["restored"] == 0:
            raise BackendError(f"checkpoint {ckpt!r} shares no variable with slim "
                               f"{self.spec.name}; is it a {self.entry.constructor} checkpoint?")
        if weights.reuse_head_rows:
            layer = self.entry.logits_layer
            w, b = (self._variable(f"{layer}/{n}") for n in ("weights", "biases"))
            report["reused_head_rows"] = slim_weights.copy_head_rows(
                self.session, ckpt, w, b, weights.reuse_head_rows)
        return {"kind": weights.kind, **report}

    def _exclude_scopes(self) -> tuple[str, ...]:
        """``--checkpoint_exclude_scopes``: the head's, and the recipe's own."""
        head = slim_model.checkpoint_exclude_scopes(self.entry)
        return (*head, *(s for s in self.config.recipe.checkpoint_exclude_scopes if s not in head))

    def _variable(self, name: str):
        for v in self.model_variables:
            if v.op.name == name:
                return v
        raise KeyError(name)

    # -- phases ------------------------------------------------------------
    def _apply_phase(self, phase: Phase, index: int) -> dict:
        spec, entry = self.spec, self.entry
        scopes = slim_model.trainable_scopes(spec, entry, phase, self.aux)
        trainable = recipe.get_variables_to_train(self.model_variables, scopes)
        empty = [s for s in scopes if not slim_model.variables_in_scopes(trainable, [s])]
        if phase.trainable_scopes and empty:  # slim's script would silently train nothing there
            nearby = slim_model.nearest_scopes(empty[0], self.model_variables)
            raise BackendError(f"trainable_scopes names {empty[0]!r}, which holds no trainable "
                               f"variable of slim {spec.name}; {nearby}")
        head_vars = slim_model.variables_in_scopes(trainable, slim_model.native_scopes(entry, HEAD, True))
        training_scopes = slim_model.bn_training_scopes(spec, entry, phase, scopes, self.aux)
        with self.graph.as_default(), identity_hashing():
            key = self._tower_key(training_scopes, True)
            if key not in self._train_towers:
                self._train_towers[key] = self._tower(training_scopes, dropout_training=True,
                                                      reuse=True)
            tower = self._train_towers[key]
            clones = self._clones(training_scopes, key) if self.clone_devices else None
            # a fresh variable scope per phase: its optimizer slots get their own names
            with tf.compat.v1.variable_scope(f"phase{index}"):
                step = slim_train.build_train_op(
                    tower, self.pipes.labels, self.num_classes, phase,
                    variables_to_train=trainable, trainable_scopes=scopes, head_variables=head_vars,
                    learning_rate=self.learning_rate, global_step=self.global_step,
                    name=f"phase{index}", clones=clones, fidelity=self.config.recipe.fidelity)
            # initialise only what this phase created (slots); model values are kept
            self.session.run(tf.compat.v1.variables_initializer(step.variables))
            self.weight_decay.load(0.0 if phase.optimizer == "adamw" else phase.weight_decay,
                                   self.session)
        self.step, self.variables_to_train, self.applied_phase = step, trainable, phase
        return describe_phase(self, phase, scopes, training_scopes, key[0])

    def _set_learning_rate(self, learning_rate: float) -> None:
        self._lr_value = float(learning_rate)
        with self.graph.as_default():  # Variable.load assigns eagerly outside a graph
            self.learning_rate.load(self._lr_value, self.session)

    def _fit_epoch(self, phase: Phase, global_epoch: int) -> dict:
        init = self.pipes.initializers["fit_augmented" if phase.augment else "fit"]
        feed = {self.pipes.epoch_seed: self.config.train.seed * 100_003 + global_epoch,
                self.pipes.epoch: global_epoch}
        writer = self._summary_writer()
        step_no = int(self.session.run(self.global_step))

        batches = batch_count(len(self.split.train), self.config.train.batch_size, training=True)
        bar = Progress(batches, self.pass_name)

        def on_step(loss):
            nonlocal step_no
            step_no += 1
            writer.add_summary(_summary({"step/loss": loss, "step/learning_rate": self._lr_value}),
                               step_no)
            bar.update(1)

        t0 = time.perf_counter()
        with bar:
            loss, top1, images = recipe.train_one_epoch(self.session, self.step, init, feed,
                                                        on_step)
        stats = {"loss": loss, "top1": top1, "images": images,
                 "seconds": time.perf_counter() - t0}
        self._computed["train"].add(self.step.compute_dtype)
        writer.add_summary(_summary({"epoch/train_loss": stats["loss"],
                                     "epoch/train_accuracy": stats["top1"],
                                     "epoch/learning_rate": self._lr_value}), global_epoch)
        writer.flush()
        return stats

    def _run_subset(self, subset: str, tensor) -> np.ndarray:
        batches = batch_count(len(self.split.subset(subset)), self.config.train.batch_size)
        with Progress(batches, self.pass_name) as bar:
            out = recipe.predict(self.session, self.pipes.initializers[subset], tensor,
                                 on_batch=lambda: bar.update(1))
        width = tensor.shape[-1]
        if out:
            self._computed["eval"].add(tensor.dtype.name)
        return np.concatenate(out) if out else np.zeros((0, width), np.float32)

    def _predict(self, subset: str) -> np.ndarray:
        return self._run_subset(subset, self.eval_tower.logits)

    def _extract_features(self, subset: str) -> np.ndarray:
        return self._run_subset(subset, self.eval_tower.features)

    # -- checkpoints -------------------------------------------------------
    def _save(self, path: Path) -> Path:
        with self.graph.as_default():
            return self._saver.save(self.session, tf.compat.v1.global_variables(), path)

    def _hold(self) -> tuple[list[str], list[np.ndarray]]:
        """What ``save`` writes (every global variable), copied out of the session: a fetched
        variable's array may share the variable's buffer, which the next step overwrites."""
        with self.graph.as_default():
            variables = tf.compat.v1.global_variables()
        return ([v.op.name for v in variables],
                [np.array(a, copy=True) for a in self.session.run(variables)])

    def _save_held(self, held: tuple[list[str], list[np.ndarray]], path: Path) -> Path:
        """``save`` of ``held``: the same checkpoint, written from the arrays; the session and
        its variables are not touched (``weights.CheckpointSaver.save_arrays``)."""
        names, arrays = held
        return self._saver.save_arrays(names, arrays, path)

    def _restore(self, path: Path) -> None:
        with self.graph.as_default():
            self._saver.restore(self.session, tf.compat.v1.global_variables(),
                                self.model_variables, path)

    def _trainable_names(self) -> list[str]:
        return [v.op.name for v in self.variables_to_train]

    def _snapshot(self, block: str) -> dict[str, np.ndarray]:
        scopes = slim_model.native_scopes(self.entry, block, self.aux)
        return slim_weights.snapshot(self.session,
                                     slim_model.variables_in_scopes(self.model_variables, scopes))

    # -- reporting ---------------------------------------------------------
    def execution_mode(self) -> str:
        return "graph"  # a TF1 session.run of the train op

    def is_out_of_memory(self, error: BaseException) -> bool:
        return isinstance(error, (tf.errors.ResourceExhaustedError, MemoryError))

    def out_of_memory_error(self, message: str) -> BaseException:
        return tf.errors.ResourceExhaustedError(None, None, message)

    def _throughput(self, batch_size: int, precision: str, steps: int, warmup: int,
                    kinds: tuple[str, ...], compile: bool) -> dict:
        if precision != "fp32":
            raise BackendError(f"the slim backend measures fp32 only (got {precision!r})")
        # the steps run in a copy of the graph on a batch held on the device (throughput.py):
        # the trained graph, its variables and optimizer slots stay as they were
        steps_graph = self._step_graph(batch_size)
        try:
            result = slim_throughput.model_step_throughput(
                steps_graph, batch_size=batch_size, steps=steps, warmup=warmup, kinds=kinds)
        finally:
            steps_graph.close()
        timed = {"optimizer": optimizer_description(self.step, self.applied_phase),
                 "trainable_tensors": len(self.step.trained),
                 "trainable_params": slim_model.param_count(self.step.trained), "metrics": []}
        return {"precision": _precision_label(self.step.compute_dtype), "timed": timed, **result,
                "timed_step": slim_throughput.timed_step(batch_size),
                "peak_memory_bytes": self._peak_memory(), "device": self.device(),
                "mode": self.execution_mode()}

    def _step_graph(self, batch_size: int) -> slim_throughput.StepGraph:
        """The applied phase's train op and the eval logits, copied with the trained values
        into a graph of their own that reads one batch held on the model's device (the
        first clone's with --devices)."""
        batch = slim_throughput.device_batch(batch_size, self.image_size, self.num_classes,
                                             self.config.train.seed)
        with identity_hashing():
            return slim_throughput.step_graph(
                self.session, images=self.pipes.images, labels=self.pipes.labels,
                train_op=self.step.train_op, logits=self.eval_tower.logits, batch=batch,
                device=self.clone_devices[0] if self.clone_devices else None,
                config=self.session_config)

    def _precision_used(self) -> dict:
        used = {path: "+".join(sorted(_precision_label(d) for d in dtypes)) or None
                for path, dtypes in self._computed.items()}
        return {**used, "how": "fp32 graph (tf_slim layers have no mixed-precision policy)"}

    def _bare_train_loop(self, batch_size: int, steps: int):
        """The harness-overhead baseline: ``session.run(train_op)`` in a plain loop, in the
        same copy on the same device batch that ``throughput`` times, timed once around all
        steps (the copy is made before the clock starts)."""
        steps_graph = self._step_graph(batch_size)

        def run() -> float:
            t0 = time.perf_counter()
            for _ in range(steps):
                steps_graph.session.run(steps_graph.train)
            return time.perf_counter() - t0
        return run

    def _export(self, fmt: str, directory: Path, golden: np.ndarray):
        # the eval tower reads the iterator's images; a feed replaces them with the batch
        native = self.session.run(self.eval_tower.logits, {self.pipes.images: golden})
        values = dict(zip((v.op.name for v in self.model_variables),
                          self.session.run(self.model_variables)))
        return slim_export.export(values, native, self.spec, self.entry, self.num_classes,
                                  self.hidden, fmt, directory, golden)

    def _peak_memory(self) -> int | None:
        if not tf.config.list_physical_devices("GPU"):
            return None  # CPU: the driver records the process peak RSS
        try:
            return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
        except (ValueError, RuntimeError):
            return None

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        writer = self._summary_writer()
        writer.add_summary(_summary(scalars), step)
        writer.flush()

    def _summary_writer(self):
        if self._writer is None:
            with self.graph.as_default():  # FileWriter refuses to start in eager mode
                self._writer = tf.compat.v1.summary.FileWriter(str(self.run_dir / "tensorboard"))
        return self._writer

    def model_summary(self) -> str:
        names = self.trainable_names() if self.phase is not None else ()
        text = slim_model.summary(self.spec, self.entry, self.model_variables, names)
        w = self.restore_report
        if w:
            text += (f"\nweights: {w['checkpoint']}: restored {w['restored']} variables, excluded "
                     f"{w['excluded']} (checkpoint_exclude_scopes), missing {len(w['missing'])}, "
                     f"shape mismatch {len(w['shape_mismatch'])}\n")
        return text

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self.session is not None:
            self.session.close()
            self.session = None


def _precision_label(dtype: str) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)


def _local_scalar(name: str, value: float) -> tf.Variable:
    return tf.compat.v1.Variable(value, trainable=False, name=name, dtype=tf.float32,
                                 collections=[tf.compat.v1.GraphKeys.LOCAL_VARIABLES])


def _summary(scalars: dict[str, float]) -> tf.compat.v1.Summary:
    return tf.compat.v1.Summary(value=[tf.compat.v1.Summary.Value(tag=k, simple_value=float(v))
                                       for k, v in scalars.items()])
