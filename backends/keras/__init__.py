"""The Keras 3 backend: ``keras.applications`` models fine-tuned with ``layer.trainable``,
``compile`` and ``fit`` (``KERAS_BACKEND`` picks tensorflow, jax or torch; tensorflow
by default). ``backend.KerasBackend`` is reached through ``backends.base.get_backend``."""
