"""TF-Slim backend: ``tf_slim.nets`` in a TF1 graph, trained the way slim's
``train_image_classifier.py`` does (arg_scope, trainable_scopes ->
variables_to_train, UPDATE_OPS, checkpoint_exclude_scopes).

This package's import is light (no TensorFlow): ``INFO`` describes the backend
for the registry; ``backend.SlimBackend`` is reached through
``backends.base.get_backend``. ``backends.slim.compat`` installs the tf-keras
import alias that tf_slim 1.1 needs on TF 2.21.
"""

from backends.base import TENSORFLOW_REPLICAS, BackendInfo

INFO = BackendInfo(
    name="slim",
    backend_class="backends.slim.backend:SlimBackend",
    requires=("tensorflow", "tf_slim", "tf_keras"),
    install_hint="pip install 'transfer-bench[slim]'",
    checkpoint_suffix=".ckpt",
    catalog="backends.slim.catalog",
    converter="backends.slim.convert",
    fetcher="backends.slim.weights:fetch_imagenet",
    export_formats=("savedmodel", "frozen_graph"),  # export.py
    color="#3a9e5f",
    description="tf_slim.nets in a TF1 graph; trainable_scopes + variables_to_train; .ckpt",
    data_parallel="slim clones (model_deploy, train_image_classifier.py --num_clones)",  # parallel.py
    parallel_overrides=TENSORFLOW_REPLICAS,  # oneDNN off: backends/base.py
)
