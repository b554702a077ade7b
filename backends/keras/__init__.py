"""The Keras 3 backend: ``keras.applications`` models fine-tuned with ``layer.trainable``,
``compile`` and ``fit`` (``KERAS_BACKEND`` picks tensorflow, jax or torch; tensorflow
by default).

This package's import is light (no Keras): ``INFO`` describes the backend for
the registry; ``backend.KerasBackend`` is reached through
``backends.base.get_backend``.
"""

from backends.base import BackendInfo

INFO = BackendInfo(
    name="keras",
    backend_class="backends.keras.backend:KerasBackend",
    requires=("keras", "tensorflow"),
    install_hint="pip install 'transfer-bench[keras]'",
    checkpoint_suffix=".weights.h5",
    catalog="backends.keras.catalog",
    converter="backends.keras.convert",
    fetcher="backends.keras.weights:fetch_imagenet",
    environment={"KERAS_BACKEND": "tensorflow"},
    color="#2e86ab",
    description="keras.applications models; layer.trainable + compile; .weights.h5",
    export_formats=("keras", "savedmodel"),  # export.py
)
