"""VGG16, the model added to prove that the house is easy to extend (issue 10).

* adding it took one entry in ``common/models.py`` and one entry per backend catalog (plus
  the small net function the torch and slim catalogs name): nothing else in the code
  names it;
* its blocks end where each framework's block ends (the max pool), and its backbone is
  the same 13 convolutions in all three, without the original classifier (fc6 .. fc8);
* its weights convert exactly in every backend and the three compute the same numbers within 1e-4
  (``bench parity`` at 32 px, in this process);
* what differs between the frameworks' VGG16 (slim's fc layers are convolutions, the
  flatten order before fc6) concerns only the original classifier, which the suite's
  model does not have (docs/differences.md).

* its source pretraining on ``shapes`` learns, at the learning rate its ``ModelSpec``
  gives (``pretrain_learning_rate``), which the driver hands every backend.

The contract tests run for VGG16 too (``tests/test_backend_contract.py``, at 32 px).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from conftest import require_backend

from backends import base
from backends.base import backend_info
from benchmarks import conversion, driver
from benchmarks.parity import run_parity
from common import canonical
from common.config import ModelConfig, PretrainConfig, RunConfig, load_recipe
from common.models import get_model

SPEC = get_model("vgg16")
BACKENDS = ("pytorch", "keras", "slim")
ROOT = Path(__file__).resolve().parent.parent
CONVS_PER_BLOCK = (2, 2, 3, 3, 3)
# the 13 convolutions of keras.applications.VGG16(include_top=False): kernels and biases
BACKBONE_PARAMETERS = 14_714_688


def test_vgg16_is_one_common_entry_and_one_entry_per_backend():
    """Nothing in the code names VGG16 but its ``ModelSpec``, its entry in each backend's
    catalog and the net function that the pytorch and slim catalogs name (docs/adding-a-model.md "How to
    add a model"): no if-chain, no side table."""
    allowed = {"common/models.py", "backends/pytorch/catalog.py", "backends/pytorch/model.py",
               "backends/keras/catalog.py", "backends/slim/catalog.py", "backends/slim/model.py"}
    naming = {str(p.relative_to(ROOT)) for folder in ("common", "backends", "benchmarks")
              for p in (ROOT / folder).rglob("*.py")
              if re.search(r"vgg_?16", p.read_text(encoding="utf-8"), re.IGNORECASE)}
    assert naming == allowed
    assert [backend_info(b).entry("vgg16").constructor for b in BACKENDS] == [
        "backends.pytorch.model:vgg16", "keras.applications:VGG16", "backends.slim.model:vgg_16"]
    layers = [layer.name for layer in SPEC.layers]
    assert len(layers) == len(set(layers)) == sum(CONVS_PER_BLOCK) == 13
    for b in BACKENDS:
        table = backend_info(b).entry("vgg16").canonical
        assert list(table) == layers and len(set(table.values())) == 13, b
    assert canonical.backbone_parameter_count("vgg16") == BACKBONE_PARAMETERS


def test_vgg16_imagenet_entries_are_the_frameworks_own():
    """Each catalog's ImageNet entry is the file its framework's own mechanism fetches, with
    the normalisation those weights expect: torchvision's enum (mean/std), Keras'
    ``vgg16.preprocess_input`` ("caffe": BGR, mean subtracted) and ``*_notop.h5`` with its
    md5, slim's ``vgg_16.ckpt`` in ``vgg_16_2016_08_28.tar.gz`` (vgg_preprocessing: RGB,
    mean subtracted)."""
    for b in ("pytorch", "keras"):
        require_backend(b)
    import importlib
    import inspect

    import keras
    from torchvision.models import VGG16_Weights

    from backends.pytorch.weights import imagenet_weights_enum
    from common.preprocess import get_normalisation

    torch_entry = backend_info("pytorch").entry("vgg16")
    member = imagenet_weights_enum("vgg16", torch_entry)
    assert member is VGG16_Weights.IMAGENET1K_V1
    assert member.url.endswith("/" + torch_entry.imagenet.file)
    transforms = member.transforms()
    norm = get_normalisation(torch_entry.imagenet.preprocessing)
    assert (tuple(transforms.mean), tuple(transforms.std)) == (norm.mean, norm.std)

    keras_entry = backend_info("keras").entry("vgg16").imagenet
    keras_vgg16 = importlib.import_module("keras.src.applications.vgg16")
    assert keras_entry.url == keras_vgg16.WEIGHTS_PATH_NO_TOP
    source = inspect.getsource(keras_vgg16)
    assert keras_entry.url.endswith("/" + keras_entry.file) and keras_entry.file_hash in source
    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.float32)
    np.testing.assert_allclose(
        get_normalisation(keras_entry.preprocessing).apply(pixels),
        keras.applications.vgg16.preprocess_input(pixels.copy()), atol=1e-4)

    slim_entry = backend_info("slim").entry("vgg16").imagenet
    assert (slim_entry.file, slim_entry.archive, slim_entry.preprocessing) == (
        "vgg_16.ckpt", "vgg_16_2016_08_28.tar.gz", "vgg")
    assert slim_entry.url.endswith("/" + slim_entry.archive)
    assert get_normalisation("vgg").mean == (123.68, 116.78, 103.94)  # slim's _R/_G/_B_MEAN


def test_vgg16_blocks_end_at_their_max_pool_and_hold_the_13_convolutions():
    """Each framework's native names for block1..block5: torch ``features`` slices, Keras
    layer ranges, slim scopes; the backbone has no fc6 .. fc8 and the features are the
    512-d global average pool of block5."""
    for b in BACKENDS:
        require_backend(b)
    import keras
    import tensorflow as tf
    from torch import nn

    from backends.keras.model import build_model as keras_model
    from backends.pytorch.recipe import build_model as torch_model
    from backends.slim.model import build_tower

    entries = {b: backend_info(b).entry("vgg16") for b in BACKENDS}
    net = torch_model(SPEC, entries["pytorch"], 5)
    for block, convs in zip(SPEC.blocks, CONVS_PER_BLOCK):
        modules = [net.get_submodule(n) for n in entries["pytorch"].blocks[block]]
        assert isinstance(modules[-1], nn.MaxPool2d), block
        assert sum(isinstance(m, nn.Conv2d) for m in modules) == convs, block
    assert [type(m) for m in net.modules() if isinstance(m, nn.Linear)] == [nn.Linear]  # the head
    assert net.classifier.in_features == 512
    backbone = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("classifier."))
    assert backbone == BACKBONE_PARAMETERS

    km = keras_model(SPEC, entries["keras"], 5, 32)
    ranges = [km.blocks[block] for block in SPEC.blocks]
    assert [len(r) for r in ranges] == [4, 3, 4, 4, 4]  # block1 includes the InputLayer
    for block, r, convs in zip(SPEC.blocks, ranges, CONVS_PER_BLOCK):
        layers = [km.layers[i] for i in r]
        assert layers[-1].name == f"{block}_pool", block
        assert [l.name for l in layers if isinstance(l, keras.layers.Conv2D)] == [
            f"{block}_conv{k}" for k in range(1, convs + 1)]
    assert not any(isinstance(l, keras.layers.Flatten) for l in km.layers)
    assert km.features.output.shape[-1] == 512
    assert sum(int(np.prod(v.shape)) for l in km.layers[:km.num_base_layers]
               for v in l.trainable_weights) == BACKBONE_PARAMETERS

    graph = tf.Graph()
    with graph.as_default():
        images = tf.compat.v1.placeholder(tf.float32, [None, 32, 32, 3])
        tower = build_tower(SPEC, entries["slim"], images, 5, hidden_units=0, aux_logits=False,
                            weight_decay=tf.constant(0.0))
        variables = {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}
    assert sorted(tower.end_points) == [f"pool{b}" for b in range(1, 6)]
    assert tower.features.shape.as_list() == [None, 512]
    assert not any("fc6" in n or "BatchNorm" in n for n in variables)
    assert sum(int(np.prod(s)) for n, s in variables.items()
               if not n.startswith("vgg_16/Logits")) == BACKBONE_PARAMETERS
    assert variables["vgg_16/conv3/conv3_3/weights"] == [3, 3, 256, 256]


def test_vgg16_round_trip_is_exact_in_every_backend(tmp_path):
    """canonical -> each backend's checkpoint file -> canonical: bit-identical (a ``conv``
    layer: kernel and bias), with a hidden head."""
    weights = canonical.random_weights("vgg16", SPEC.feature_dim, 5, seed=1)
    rng = np.random.default_rng(2)
    weights = {**{k: v for k, v in weights.items() if not k.startswith("head/")},
               "head_hidden/kernel": rng.normal(size=(512, 16)).astype(np.float32),
               "head_hidden/bias": rng.normal(size=16).astype(np.float32),
               "head/kernel": rng.normal(size=(16, 5)).astype(np.float32),
               "head/bias": rng.normal(size=5).astype(np.float32)}
    for b in BACKENDS:
        require_backend(b)
        convert = conversion.converter(b)
        native = convert.write_canonical("vgg16", weights, tmp_path / b / "w")
        assert conversion.detect_format(native) == b
        back, meta = convert.read_canonical("vgg16", native)
        assert back.keys() == weights.keys() and meta["dropped"] == [], b
        assert all(np.array_equal(back[k], weights[k]) for k in weights), b


def test_vgg16_parity_at_32px_and_the_classifier_the_suite_replaces(tmp_path):
    """The frameworks' own VGG16 classifiers differ: slim's fc6 .. fc8 are convolutions (fc6
    a 7x7 VALID convolution of pool5), torchvision flattens NCHW pool5 (channel-major)
    before its fc6 ``Linear`` where Keras flattens NHWC (channel-minor), so fc6 weights
    would need permuting between them. The suite's VGG16 has no fc6 .. fc8 (features: the
    global average pool of block5), so with the same weights every block and the logits
    agree within 1e-4 for every pair."""
    for b in BACKENDS:
        require_backend(b)
    import tensorflow as tf
    import torch
    import torchvision
    from tf_slim.nets import vgg

    graph = tf.Graph()
    with graph.as_default():
        vgg.vgg_16(tf.compat.v1.placeholder(tf.float32, [1, 224, 224, 3]), num_classes=1000)
        shapes = {v.op.name: v.shape.as_list() for v in tf.compat.v1.global_variables()}
    assert shapes["vgg_16/fc6/weights"] == [7, 7, 512, 4096]
    assert shapes["vgg_16/fc8/weights"] == [1, 1, 4096, 1000]
    with torch.device("meta"):
        fc6 = torchvision.models.vgg16().classifier[0]
    assert (fc6.in_features, fc6.out_features) == (512 * 7 * 7, 4096)
    pool5 = np.arange(2 * 512 * 7 * 7, dtype=np.float32).reshape(2, 512, 7, 7)  # NCHW
    torch_flat = torch.flatten(torch.from_numpy(pool5), 1).numpy()
    keras_flat = pool5.transpose(0, 2, 3, 1).reshape(2, -1)  # Keras Flatten of NHWC
    assert not np.array_equal(torch_flat, keras_flat)
    assert np.array_equal(torch_flat, keras_flat.reshape(2, 7, 7, 512).transpose(0, 3, 1, 2)
                          .reshape(2, -1))

    report = run_parity("vgg16", 32, tmp_path, weights="random", in_process=True)
    assert report["backends"] == list(BACKENDS)
    for pair, blocks in report["max_abs_diff"].items():
        assert list(blocks) == [*SPEC.blocks, "logits"]
        assert max(blocks.values()) <= 1e-4, (pair, blocks)
    assert report["ok"] and report["shapes"]["block5"] == [5, 1, 1, 512]
    assert report["shapes"]["logits"] == [5, 5] and min(report["magnitude"].values()) > 0.1


def _pretrain_config(backend: str, model: str, **pretrain) -> RunConfig:
    return RunConfig(backend=backend, recipe=load_recipe("head"), model=ModelConfig(name=model),
                     pretrain=PretrainConfig(**pretrain))


def test_the_pretraining_learning_rate_is_the_models_and_every_backend_gets_it(tmp_path, monkeypatch):
    """``--weights source`` pretrains at ``ModelSpec.pretrain_learning_rate`` (VGG16 1e-4,
    InceptionV3 the old global 1e-3): the driver's one pretraining path gives the backend a
    phase with that rate (here the numpy backend; the three real ones read
    ``phase.learning_rate`` the same way) and records it. The cache key holds the resolved
    value, so InceptionV3's cached source model (its digest in docs/weights-and-parity.md) keeps its key."""
    assert (SPEC.pretrain_learning_rate, get_model("inception_v3").pretrain_learning_rate) == (1e-4, 1e-3)
    monkeypatch.setitem(base.REGISTRY, "fake", "fake_backend:FakeBackend")
    from fake_backend import FakeBackend
    seen = []
    original = FakeBackend._apply_phase
    monkeypatch.setattr(FakeBackend, "_apply_phase",
                        lambda self, phase, index: seen.append(phase.learning_rate) or
                        original(self, phase, index))
    for model, override in (("vgg16", None), ("inception_v3", None), ("vgg16", 3e-4)):
        config = _pretrain_config("fake", model, epochs=1, images_per_class=3, batch_size=8,
                                  learning_rate=override)
        meta = driver.pretrain_source(config, 32, tmp_path / f"{model}-{override}")
        expected = override or get_model(model).pretrain_learning_rate
        assert seen.pop() == meta["learning_rate"] == expected and len(meta["losses"]) == 1
    key = {m: {lr: driver.source_cache_dir(_pretrain_config("pytorch", m, learning_rate=lr),
                                           75, "pytorch").name for lr in (None, 1e-3, 1e-4)}
           for m in ("inception_v3", "vgg16")}
    assert key["inception_v3"][None] == key["inception_v3"][1e-3] != key["inception_v3"][1e-4]
    assert key["vgg16"][None] == key["vgg16"][1e-4] != key["vgg16"][1e-3]


def test_vgg16_source_pretraining_learns(tmp_path):
    """VGG16 (no BatchNorm) pretrained in PyTorch on ``shapes`` at its own rate takes the
    training loss below chance (ln 10 = 2.303 for 10 classes) and keeps lowering it; with
    the old global Adam 1e-3 it stayed at 2.303 (the first VGG16 run in docs/measurements.md). 32 px,
    3 images per class (24 train), 6 epochs of batch 4."""
    require_backend("pytorch")
    config = _pretrain_config("pytorch", "vgg16", epochs=6, images_per_class=3, batch_size=4)
    losses = driver.pretrain_source(config, 32, tmp_path)["losses"]
    assert len(losses) == 6
    assert losses[-1] < math.log(10) - 0.025, losses
    assert all(b < a for a, b in zip(losses[1:], losses[2:])), losses
