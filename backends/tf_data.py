"""The ``tf.data`` options of the two pipelines that run on TensorFlow: Keras'
(``backends.keras.data``) and slim's (``backends.slim.data``).

tf.data's autotuner is off. With it on, releasing an exhausted iterator whose consumer was
slower than its pipeline (a model step per batch) can wait about 0.45 s for the
autotuner's background thread, depending on how long the pass took (9 of 12 releases
after passes of 0.8 s, a ``scratch`` epoch of the default sweep, none at the other
lengths measured): slim releases one each time it re-initialises its one iterator (from
the training epoch's to validation's and back), Keras at the end of each ``predict``.
``python -m benchmarks.bench_tfdata_iterator_end`` measures it, alone (docs/measurements.md,
"Releasing a tf.data iterator"). With the autotuner off an ``AUTOTUNE``
``num_parallel_calls`` is the machine's core count (at most 16), what the autotuner starts
from; the benchmark's passes take as long as with it on. The pipelines' output does not
depend on it: the maps are ``deterministic=True`` and their random ops stateless
(``test_tf_data_pipelines_run_with_the_autotuner_off`` reads the same batches either way).
"""

from __future__ import annotations

import tensorflow as tf


def without_autotuner(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` with tf.data's autotuner off (the module docstring says why)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
