"""The Keras 3 backend: ``keras.applications`` models fine-tuned with ``layer.trainable``,
``compile`` and one ``fit`` per phase, on each of Keras' own backends.

Keras 3 runs on TensorFlow, jax or torch, chosen by ``KERAS_BACKEND`` before
Keras is first imported, so each is a registry entry of its own, run in its
own process: ``keras`` (TensorFlow, Keras' default; ``keras-tensorflow`` is an
alias of it), ``keras-jax`` and ``keras-torch``. They share this package and
``backend.KerasBackend``; only the descriptor differs.

This package's import is light (no Keras): the ``INFO`` descriptors describe
the backends for the registry; ``backend.KerasBackend`` is reached through
``backends.base.get_backend``.
"""

from backends.base import TENSORFLOW_REPLICAS, BackendInfo, Sweep, SweepMode

_COMMON = dict(
    backend_class="backends.keras.backend:KerasBackend",
    checkpoint_suffix=".weights.h5",
    catalog="backends.keras.catalog",
    converter="backends.keras.convert",
    parity="backends.keras.parity",
    native_key="unfreeze_from",  # a layer index: model.layers[i:] train (backends.native)
    fetcher="backends.keras.weights:fetch_imagenet",
)

INFO = BackendInfo(
    name="keras",
    requires=("keras", "tensorflow"),
    install_hint="pip install 'transfer-bench[keras]'",
    environment={"KERAS_BACKEND": "tensorflow"},
    color="#2e86ab",
    description="Keras 3 on TensorFlow: keras.applications; layer.trainable + compile; "
                "tf.data; .weights.h5",
    export_formats=("keras", "savedmodel"),  # export.py
    data_parallel="tf.distribute.MirroredStrategy",  # parallel.py
    parallel_overrides=TENSORFLOW_REPLICAS,  # oneDNN off: backends/base.py
    source_order=1,  # pretrains a sweep's shared source model when PyTorch is not installed
    distributions=("keras", "tensorflow"),
    sweep=Sweep(modes=(SweepMode("tf.function", order=4, train_seconds=50.0, infer_seconds=20.0,
                                 compiled=True),),
                start_seconds=20.0, e2e_phase_seconds=60.0),
    **_COMMON,
)

INFO_JAX = BackendInfo(
    name="keras-jax",
    requires=("keras", "jax"),
    install_hint="pip install 'transfer-bench[keras-jax]' (jax[cpu]; on a GPU add jax[cuda12])",
    environment={"KERAS_BACKEND": "jax"},
    color="#7b4fb8",
    description="Keras 3 on jax: the keras backend's code, XLA-compiled steps, PyDataset input",
    export_formats=("keras",),  # a SavedModel needs TensorFlow
    in_all=False,
    data_parallel="keras.distribution.DataParallel",  # parallel.py
    # on a CPU, jax shows N devices only when told before it starts (harmless on a GPU)
    parallel_environment={"XLA_FLAGS": "--xla_force_host_platform_device_count={devices}"},
    distributions=("keras", "jax"),
    sweep=Sweep(modes=(SweepMode("XLA", order=1, train_seconds=50.0, infer_seconds=20.0,
                                 compiled=True, tier=1),),
                start_seconds=15.0, e2e_phase_seconds=60.0),
    **_COMMON,
)

INFO_TORCH = BackendInfo(
    name="keras-torch",
    requires=("keras", "torch"),
    install_hint="pip install 'transfer-bench[keras-torch]'",
    environment={"KERAS_BACKEND": "torch"},
    color="#f29e4c",
    description="Keras 3 on torch: the keras backend's code, eager torch steps, PyDataset input",
    export_formats=("keras",),  # a SavedModel needs TensorFlow
    in_all=False,
    # keras.distribution (DataParallel) is implemented for the jax backend only, and Keras
    # has no tf.distribute on torch: no data-parallel fit on this backend
    parallel_refusal="Keras 3 has no data-parallel path on the torch backend (keras.distribution "
                     "runs on jax only); use --backend keras-jax or pytorch for several devices",
    distributions=("keras", "torch"),
    sweep=Sweep(modes=(SweepMode("eager", order=3, train_seconds=5.0, infer_seconds=3.0),),
                start_seconds=15.0, e2e_phase_seconds=40.0),
    **_COMMON,
)
