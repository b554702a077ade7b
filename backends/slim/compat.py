"""The one place where the slim backend works around a packaging gap.

``tf_slim.batch_norm`` builds ``tf.compat.v1.layers.BatchNormalization``,
which TensorFlow 2.21 lazy-loads from ``tf_keras.legacy_tf_layers.normalization``
(``tensorflow/python/layers/normalization.py``). tf-keras 2.21 ships that
package only as ``tf_keras.src.legacy_tf_layers``, so every slim network with
BatchNorm fails at graph-construction time with::

    ModuleNotFoundError: No module named 'tf_keras.legacy_tf_layers'

``install()`` aliases the missing public module names to the ``src`` modules
(only when the public import really is missing, so a fixed tf-keras is used
as is) and must run before ``tf_slim`` builds a batch_norm. Every module of
this backend imports ``tf_slim`` through ``compat.slim`` for that reason.
``tests/test_slim.py::test_tf_keras_legacy_layers_alias`` fails if this
regresses.

``identity_hashing()`` speeds up graph building: TF2 makes every
``Variable.__hash__`` check whether it runs eagerly (tensor equality), and the
tf_keras legacy layers behind ``slim.batch_norm`` put every global variable in
a set once per weight they create. In graph mode the check always answers "no",
so TF1's identity hashing (``tf.compat.v1.disable_tensor_equality``) changes
nothing but the time: building an InceptionV3 tower goes from ~4.9 to ~4.1 s
(first) and ~3.8 to ~2.2 s (reused variables) of CPU here.

A second gap is avoided rather than patched: ``tf_slim.data.tfexample_decoder.Image``
calls ``control_flow_ops.case``, which TF 2.21 removed; ``backends/slim/tfrecord.py``
decodes images with an ``ItemHandlerCallback`` instead.
"""

from __future__ import annotations

import contextlib
import importlib
import sys

import tensorflow as tf
from tensorflow.python.framework import tensor as _tensor  # the flag has no public getter

# The public names TF's lazy loader asks for -> where tf-keras 2.21 keeps them.
ALIASES = {
    "tf_keras.legacy_tf_layers": "tf_keras.src.legacy_tf_layers",
    "tf_keras.legacy_tf_layers.normalization": "tf_keras.src.legacy_tf_layers.normalization",
}


def _importable(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except ModuleNotFoundError:
        return False


def install() -> dict[str, str]:
    """Alias the missing ``tf_keras.legacy_tf_layers`` modules; return what was aliased."""
    if "tf_keras.legacy_tf_layers" in sys.modules or _importable("tf_keras.legacy_tf_layers"):
        return {}
    # Alias every name at once: importing the submodule through an aliased parent
    # would load a second copy of it (two BatchNormalization classes).
    for public, private in ALIASES.items():
        sys.modules[public] = importlib.import_module(private)
    return dict(ALIASES)


@contextlib.contextmanager
def identity_hashing():
    """TF1's identity hashing of tensors and variables while a graph is built; the
    process's setting (TF2: tensor equality) is restored afterwards."""
    previous = _tensor.Tensor._USE_EQUALITY
    tf.compat.v1.disable_tensor_equality()
    try:
        yield
    finally:
        if previous:
            tf.compat.v1.enable_tensor_equality()


ALIASED = install()

import tf_slim as slim  # noqa: E402  (after the alias, on purpose)

__all__ = ["ALIASED", "ALIASES", "identity_hashing", "install", "slim"]
