"""Model-step timing in a TF1 session (docs/design.md, "Throughput protocol").

The step timed is the one PyTorch and Keras time (``common.timing.timed_step``): the
batch is made once and held in two non-trainable variables on the model's device, a
train step is one ``session.run`` of the phase's train op (forward, backward, update, its
``UPDATE_OPS``; no metric, no ``feed_dict``), an inference step one ``session.run`` of
the eval tower's logits (every batch_norm with ``is_training=False``). ``session.run``
returns only when the fetched values are computed, so it is its own device
synchronisation.

Those steps run on a copy (``step_graph``): the trained graph is exported as a
MetaGraph (slim's idiom for moving a graph) and imported into a graph of its own with
the iterator's ``get_next()`` outputs mapped to the batch variables (``input_map``), and
every variable of the copy starts from the trained session's values. The trained graph
gains no op (graph-level random seeds give later ops their op seeds by position, so an
op added there could change later training), and the trained session's variables and
optimizer slots are never written: timing leaves the model as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from common.timing import measure_steps, timed_step

__all__ = ["StepGraph", "model_step_throughput", "step_graph", "timed_step"]

v1 = tf.compat.v1


@dataclass
class StepGraph:
    """The copy the timed steps run in: its session and the two steps' fetches."""

    session: object
    train: tf.Tensor      # the phase's train op (evaluates to the loss after the update)
    infer: tf.Tensor      # the eval tower's logits

    def close(self) -> None:
        self.session.close()


def device_batch(batch_size: int, image_size: int, num_classes: int, seed: int):
    """The timed batch on the host (NHWC images uniform in [-1, 1], labels in
    ``range(num_classes)``), made once; ``step_graph`` places it on the device."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (batch_size, image_size, image_size, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, batch_size).astype(np.int64)
    return images, labels


def step_graph(session, *, images: tf.Tensor, labels: tf.Tensor, train_op: tf.Tensor,
               logits: tf.Tensor, batch: tuple[np.ndarray, np.ndarray], device: str | None,
               config=None) -> StepGraph:
    """``session``'s graph copied into a new graph and session, ``images`` and ``labels``
    (the iterator's outputs) replaced by ``batch`` held in variables on ``device`` (None:
    TensorFlow's placement, the GPU when there is one), every variable set to its value in
    ``session``. ``train_op`` and ``logits`` are the copy's fetches."""
    source = session.graph
    with source.as_default():  # a MetaGraph is exported from a graph, not in eager mode
        meta = v1.train.export_meta_graph(graph=source, clear_devices=False)
    trained = {v.name: v for v in source.get_collection(v1.GraphKeys.GLOBAL_VARIABLES)
               + source.get_collection(v1.GraphKeys.LOCAL_VARIABLES)}
    graph = tf.Graph()
    with graph.as_default():
        fills = {}
        with tf.device(device), v1.name_scope("timed_batch"):
            held = []
            for name, value in zip(("images", "labels"), batch):
                fill = v1.placeholder(tf.as_dtype(value.dtype), value.shape, name=f"{name}_value")
                # collections=[]: not a model variable, never saved; filled once, below
                variable = v1.Variable(fill, trainable=False, collections=[], name=name,
                                       use_resource=True)
                fills[fill] = value
                held.append(variable)
            mapped = {images.name: held[0].read_value(), labels.name: held[1].read_value()}
        v1.train.import_meta_graph(meta, clear_devices=False, input_map=mapped)
        variables = v1.global_variables() + v1.local_variables()
        missing = sorted(set(trained) ^ {v.name for v in variables})
        if missing:
            raise RuntimeError(f"the copied graph's variables differ from the trained graph's: "
                               f"{missing[:3]}")
        values = session.run([trained[v.name] for v in variables])
        setters = []
        for variable, value in zip(variables, values):
            fill = v1.placeholder(variable.dtype.base_dtype, value.shape)
            setters.append(variable.assign(fill, read_value=False))
            fills[fill] = value
        copy = v1.Session(graph=graph, config=config)
        copy.run([v.initializer for v in held] + setters, fills)
        return StepGraph(copy, graph.get_tensor_by_name(train_op.name),
                         graph.get_tensor_by_name(logits.name))


def model_step_throughput(steps_graph: StepGraph, *, batch_size: int, steps: int, warmup: int,
                          kinds=("train", "infer")) -> dict:
    """``common.timing.measure_steps`` for the train op and the inference logits (``kinds``)."""
    def synchronised():  # session.run has already waited for the device
        return None

    fetches = {"train": steps_graph.train, "infer": steps_graph.infer}
    run = steps_graph.session.run
    return {kind: measure_steps(lambda fetch=fetches[kind]: run(fetch), synchronised,
                                batch_size=batch_size, steps=steps, warmup=warmup)
            for kind in kinds}
