"""TF-Slim backend: ``tf_slim.nets`` in a TF1 graph, trained the way slim's
``train_image_classifier.py`` does (arg_scope, trainable_scopes ->
variables_to_train, UPDATE_OPS, checkpoint_exclude_scopes).

This package's import is light (no TensorFlow): ``INFO`` describes the backend
for the registry; ``backend.SlimBackend`` is reached through
``backends.base.get_backend``. ``backends.slim.compat`` installs the tf-keras
import alias that tf_slim 1.1 needs on TF 2.21.
"""

import re
from pathlib import Path

from backends.base import TENSORFLOW_REPLICAS, BackendInfo, Sweep, SweepMode


# A TF checkpoint is a prefix, not a file: NAME.index + NAME.data-*-of-*, or a folder whose
# "checkpoint" file names the latest prefix (tf.train.latest_checkpoint).

def is_checkpoint(path: Path) -> bool:
    """``path`` is a TF checkpoint prefix (``NAME.index`` beside it), one of its files, or a
    folder holding a ``checkpoint`` file."""
    name = path.name
    return (name.endswith(".index") or ".data-" in name or Path(str(path) + ".index").is_file()
            or (path.is_dir() and (path / "checkpoint").is_file()))


def is_complete(path: Path) -> bool:
    """The TF checkpoint at ``path`` can be restored: a folder, or a non-empty ``.index``."""
    index = Path(re.sub(r"\.(index|data-\d+-of-\d+)$", "", str(path)) + ".index")
    return path.is_dir() or (index.is_file() and index.stat().st_size > 0)


INFO = BackendInfo(
    name="slim",
    backend_class="backends.slim.backend:SlimBackend",
    requires=("tensorflow", "tf_slim", "tf_keras"),
    install_hint="pip install 'transfer-bench[slim]'",
    checkpoint_suffix=".ckpt",
    checkpoint_suffixes=(),  # ".ckpt" is a prefix: known by its files
    checkpoint_files="backends.slim",  # is_checkpoint / is_complete above
    catalog="backends.slim.catalog",
    converter="backends.slim.convert",
    parity="backends.slim.parity",
    source_order=2,
    native_key="trainable_scopes",  # --trainable_scopes: variable scopes (backends.native)
    distributions=("tensorflow", "tf-keras", "tf-slim"),
    bf16_refusal="slim has no bf16 (tf_slim layers have no mixed-precision policy)",
    fetcher="backends.slim.weights:fetch_imagenet",
    tfrecord_export="backends.slim.tfrecord:export_split",  # bench data export-tfrecord
    export_formats=("savedmodel", "frozen_graph"),  # export.py
    color="#3a9e5f",
    description="tf_slim.nets in a TF1 graph; trainable_scopes + variables_to_train; .ckpt",
    data_parallel="slim clones (model_deploy, train_image_classifier.py --num_clones)",  # parallel.py
    parallel_overrides=TENSORFLOW_REPLICAS,  # oneDNN off: backends/base.py
    sweep=Sweep(modes=(SweepMode("graph", order=5, train_seconds=8.0, infer_seconds=4.0),),
                start_seconds=25.0, e2e_phase_seconds=40.0),
)
