"""``bench parity`` in PyTorch: every canonical block's output for a batch, eval mode, fp32.

PyTorch idiom: ``register_forward_hook`` on the last module of each
canonical block captures its output during one forward pass of the model that
``convert.model_from_canonical`` builds (the same mapping ``write_canonical``
saves; head included), in ``eval()`` under ``torch.inference_mode()``. Outputs are NCHW; they are returned NHWC (the
canonical layout) so that the frameworks compare element by element.
"""

from __future__ import annotations

import numpy as np
import torch

from common.models import get_model

from .catalog import MODELS
from .convert import model_from_canonical


def block_outputs(model: str, tensors: dict[str, np.ndarray], images: np.ndarray,
                  aligned: bool = True) -> dict[str, np.ndarray]:
    """``{block: [N, H, W, C], ..., "logits": [N, classes]}`` of the model holding the
    canonical ``tensors``, for NHWC float32 ``images``."""
    spec, entry = get_model(model), MODELS[model]
    net = model_from_canonical(model, tensors, aligned=aligned)
    captured: dict[str, torch.Tensor] = {}
    handles = [net.get_submodule(entry.blocks[block][-1]).register_forward_hook(
        lambda module, args, output, block=block: captured.__setitem__(block, output))
        for block in spec.blocks]
    try:
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # NHWC -> NCHW
            logits = net(x)
    finally:
        for h in handles:
            h.remove()
    out = {block: captured[block].permute(0, 2, 3, 1).numpy() for block in spec.blocks}
    out["logits"] = logits.numpy()
    return out


def train_steps(model: str, tensors: dict[str, np.ndarray], images: np.ndarray,
                labels: np.ndarray, phase, fidelity, steps=(1, 3), dtype: str = "float32") -> dict:
    """``bench parity --train`` in PyTorch: the suite's own phase machinery (``recipe.py``:
    ``requires_grad``, ``train()``/``eval()`` per BatchNorm, param groups, the optimizer) on
    the model holding ``tensors``, ``max(steps)`` steps on one fixed batch (NHWC ``images``,
    int ``labels``), in ``dtype`` (``float64``: ``.double()`` model and batch).
    ``{"loss": [per step, before its update], "tensors": {k: canonical tensors after step
    k}}`` (tensors rounded to float32, the canonical format)."""
    from torch import nn

    from . import recipe, train
    from .convert import canonical_from_state

    spec, entry = get_model(model), MODELS[model]
    torch.manual_seed(0)
    net = model_from_canonical(model, tensors).to(getattr(torch, dtype))
    trainable = recipe.trainable_modules(net, spec, entry, phase)
    recipe.freeze_all_but(net, trainable)
    recipe.set_train_modes(net, trainable, phase.bn)
    optimizer, _ = train.make_optimizer(phase, recipe.param_groups(net, entry, phase), fidelity)
    criterion = nn.CrossEntropyLoss(label_smoothing=phase.label_smoothing)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype))  # NHWC -> NCHW
    y = torch.from_numpy(np.asarray(labels, np.int64))
    losses, after = [], {}
    for k in range(1, max(steps) + 1):
        optimizer.zero_grad(set_to_none=True)
        loss, _ = recipe.compute_loss(net(x), y, criterion)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if k in steps:
            after[k] = canonical_from_state(model, net.state_dict())[0]
    return {"loss": losses, "tensors": after}
