"""``bench parity`` in Keras: every canonical block's output for a batch, inference mode, fp32.

Keras idiom: a second functional ``keras.Model`` on the same layers whose
outputs are the last layer of each canonical block (``model.block_ranges``) and
the logits, called with ``training=False`` on the model that
``convert.model_from_canonical`` builds (the same mapping ``write_canonical``
saves; head included). Keras is NHWC already.
"""

from __future__ import annotations

import keras
import numpy as np

from .convert import model_from_canonical


def block_outputs(model: str, tensors: dict[str, np.ndarray], images: np.ndarray,
                  aligned: bool = True) -> dict[str, np.ndarray]:
    """``{block: [N, H, W, C], ..., "logits": [N, classes]}`` of the model holding the
    canonical ``tensors``, for NHWC float32 ``images``. (Keras needs no alignment:
    ``aligned`` is accepted for symmetry.)"""
    km = model_from_canonical(model, tensors, images.shape[1])
    blocks = list(km.spec.blocks)
    ends = [km.layers[km.blocks[b].stop - 1].output for b in blocks]
    probe = keras.Model(km.model.input, [*ends, km.model.output])
    values = probe(images, training=False)
    return {name: np.asarray(keras.ops.convert_to_numpy(v)) for name, v in
            zip([*blocks, "logits"], values)}
