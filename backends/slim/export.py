"""Deployable TF-Slim formats: a SavedModel (TF1 builder) and a frozen GraphDef.

TF1 idiom: a serving graph is built apart from the training graph — an
``images`` placeholder, the net with every ``batch_norm`` at ``is_training=False``
and an ``identity`` named ``logits`` — and filled with the trained variables'
values. ``savedmodel`` is ``tf.compat.v1.saved_model.Builder`` with a
``predict`` signature (tag ``serve``), loaded back with
``tf.compat.v1.saved_model.loader.load``; ``frozen_graph`` is
``convert_variables_to_constants`` written as one ``.pb`` GraphDef, loaded back
with ``tf.import_graph_def`` (the ``freeze_graph.py`` route of the slim
README). Both take a normalised float32 NHWC batch (``common.preprocess``)
with a dynamic batch dimension and return logits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import tensorflow as tf

from backends.base import BackendError, ModelEntry
from common.models import ModelSpec

from . import INFO
from . import model as slim_model
from .compat import identity_hashing

FORMATS = INFO.export_formats  # ("savedmodel", "frozen_graph")
INPUT, OUTPUT = "images", "logits"


def serving_graph(spec: ModelSpec, entry: ModelEntry, num_classes: int, hidden_units: int,
                  image_size: int, values: dict[str, np.ndarray]):
    """(graph, session, images placeholder, logits) of the inference net filled with
    ``values`` (variable op name -> value); no auxiliary head, no regularizers."""
    graph = tf.Graph()
    with graph.as_default(), identity_hashing():
        images = tf.compat.v1.placeholder(tf.float32, [None, image_size, image_size, 3], INPUT)
        tower = slim_model.build_tower(spec, entry, images, num_classes, hidden_units=hidden_units,
                                       aux_logits=False, weight_decay=0.0, training_blocks=())
        logits = tf.identity(tower.logits, name=OUTPUT)
        variables = tf.compat.v1.global_variables()
        missing = [v.op.name for v in variables if v.op.name not in values]
        if missing:
            raise BackendError(f"the serving graph has {len(missing)} variable(s) the trained "
                               f"model lacks, e.g. {missing[0]}")
        session = tf.compat.v1.Session(graph=graph)
        # every initializer in one run, each fed its trained value instead of its random init
        session.run([v.initializer for v in variables],
                    {v.initial_value: values[v.op.name] for v in variables})
    return graph, session, images, logits


def export(values: dict[str, np.ndarray], native: np.ndarray, spec: ModelSpec, entry: ModelEntry,
           num_classes: int, hidden_units: int, fmt: str, directory: Path,
           golden: np.ndarray) -> tuple[Path, np.ndarray, np.ndarray, dict]:
    """Write the model holding ``values`` as ``fmt`` under ``directory``; run the written
    model on ``golden`` (NHWC) to compare with ``native`` (the training graph's eval tower)."""
    size = golden.shape[1]
    layout = {"layout": "NHWC", "shape": [None, size, size, 3], "dtype": "float32",
              "name": INPUT, "output": OUTPUT}
    graph, session, images, logits = serving_graph(spec, entry, num_classes, hidden_units, size,
                                                   values)
    with session:
        if fmt == "savedmodel":
            path = directory / "saved_model"
            if path.exists():
                shutil.rmtree(path)  # the builder refuses an existing directory
            with graph.as_default():
                builder = tf.compat.v1.saved_model.Builder(str(path))
                signature = tf.compat.v1.saved_model.predict_signature_def(
                    inputs={INPUT: images}, outputs={OUTPUT: logits})
                builder.add_meta_graph_and_variables(
                    session, [tf.compat.v1.saved_model.tag_constants.SERVING],
                    signature_def_map={"serving_default": signature}, strip_default_attrs=True)
                builder.save()
            return path, _run_saved_model(path, golden), native, {**layout,
                                                                  "signature": "serving_default"}
        if fmt == "frozen_graph":
            path = directory / "frozen_graph.pb"
            with graph.as_default():
                frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                    session, graph.as_graph_def(), [OUTPUT])
            path.write_bytes(frozen.SerializeToString())
            return path, _run_frozen_graph(path, golden), native, {
                **layout, "tensors": f"{INPUT}:0 -> {OUTPUT}:0"}
    raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")


def _run_saved_model(path: Path, golden: np.ndarray) -> np.ndarray:
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta = tf.compat.v1.saved_model.loader.load(
            session, [tf.compat.v1.saved_model.tag_constants.SERVING], str(path))
        signature = meta.signature_def["serving_default"]
        return session.run(signature.outputs[OUTPUT].name,
                           {signature.inputs[INPUT].name: golden})


def _run_frozen_graph(path: Path, golden: np.ndarray) -> np.ndarray:
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(path.read_bytes())
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            return session.run(f"{OUTPUT}:0", {f"{INPUT}:0": golden})
