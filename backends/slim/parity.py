"""``bench parity`` in TF-Slim: every canonical block's output for a batch, eval mode, fp32.

TF-Slim idiom: the net's ``end_points`` dict (``"MaxPool_5a_3x3"``,
``"Mixed_5b"``, ...) fetched in one ``session.run`` of the eval tower
(``is_training=False`` everywhere) whose variables ``convert.session_from_canonical``
set (the same mapping ``write_canonical`` saves; head included). A canonical
block's output is the end point named by its last scope in the catalog. NHWC already.
"""

from __future__ import annotations

import numpy as np

from common.models import get_model

from .catalog import MODELS
from .convert import session_from_canonical


def block_outputs(model: str, tensors: dict[str, np.ndarray], images: np.ndarray,
                  aligned: bool = True) -> dict[str, np.ndarray]:
    """``{block: [N, H, W, C], ..., "logits": [N, classes]}`` of the net holding the
    canonical ``tensors``, for NHWC float32 ``images``. (slim needs no alignment:
    ``aligned`` is accepted for symmetry.)"""
    spec, entry = get_model(model), MODELS[model]
    session, inputs, tower = session_from_canonical(model, tensors, images.shape[1])
    fetch = {block: tower.end_points[entry.blocks[block][-1].rsplit("/", 1)[-1]]
             for block in spec.blocks}
    fetch["logits"] = tower.logits
    try:
        return session.run(fetch, {inputs: images})
    finally:
        session.close()
