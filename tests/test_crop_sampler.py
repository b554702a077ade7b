"""The ``crop_sampler`` fidelity switch (``common.sampler``): with ``aligned`` every backend
reads the same first training batch (order, crops, flips, colour amounts drawn once in
``common``), with ``native`` each framework's own draws (CPU, 75 px, no model)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import require_backend

from common.data import Sample, Split
from common.preprocess import Normalisation, get_preset
from common.sampler import CropParams, draw_params, sample_order

SIZE = 75
BATCH = 8
SEED = 3
RAW = Normalisation("raw", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # pixels as they are
# the largest per-pixel difference (of 255) between two backends' first aligned batch:
# none for ``simple`` (integer crops and flips); resize and colour arithmetic for the
# resized crops (torch's, TensorFlow's and numpy's bilinear and HSV kernels; measured
# 4.6e-5 for ``torchvision``, 1.1e-4 for ``inception`` with its colours)
TOLERANCE = {"simple": 0.0, "torchvision": 1e-3, "inception": 1e-3}

@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Split:
    d = tmp_path_factory.mktemp("crop_sampler")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:120, 0:160]
    samples = []
    for i in range(12):  # smooth images of two sizes, each label its own index
        shape = (120, 160) if i % 2 else (100, 90)
        base = np.stack([xx / 160 * 255, yy / 120 * 255, (xx + yy) / 280 * 255], -1)
        image = np.clip(base[:shape[0], :shape[1]] * rng.uniform(0.5, 1.0) +
                        rng.uniform(0, 60, 3), 0, 255).astype(np.uint8)
        path = d / f"{i:02d}.png"
        Image.fromarray(image).save(path)
        samples.append(Sample(str(path), i))
    return Split(classes=tuple(f"c{i}" for i in range(12)), train=samples, val=samples,
                 test=samples)


def _torch(split, preset, common):
    from backends.pytorch import data

    loader = data.train_loader(split.train, SIZE, BATCH, augment=True, seed=SEED, preset=preset,
                               common_sampler=common)
    data.set_epoch(loader, 1)
    x, y = next(iter(loader))
    return x.permute(0, 2, 3, 1).numpy().astype(np.float32), y.numpy()


def _keras(split, preset, common, tf_data):
    from backends.keras.data import KerasData

    data = KerasData(split, SIZE, RAW, BATCH, seed=SEED, preset=preset, common_sampler=common)
    data.use_tf_data = tf_data
    pipeline = data.train([1], True)
    x, y = next(iter(pipeline.as_numpy_iterator())) if tf_data else pipeline[0]
    return np.asarray(x, np.float32), np.argmax(y, -1)


def _slim(split, preset, common):
    import tensorflow as tf

    from backends.slim.data import build_pipelines

    graph = tf.Graph()
    with graph.as_default():
        pipes = build_pipelines(split, SIZE, RAW, BATCH, preset=preset,
                                common_sampler_seed=SEED if common else None)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(pipes.initializers["fit_augmented"],
                        {pipes.epoch_seed: SEED * 100_003 + 1, pipes.epoch: 1})
            x, y = session.run([pipes.images, pipes.labels])
    return x.astype(np.float32), y


PIPELINES = {"pytorch": _torch,
             "keras (tf.data)": lambda s, p, c: _keras(s, p, c, True),
             "keras (PyDataset)": lambda s, p, c: _keras(s, p, c, False),
             "slim": _slim}


def first_batches(split, preset, common) -> dict:
    for b in ("pytorch", "keras", "slim"):
        require_backend(b)
    return {name: pipeline(split, preset, common) for name, pipeline in PIPELINES.items()}


@pytest.mark.parametrize("name", ["simple", "inception", "torchvision"])
def test_aligned_crop_sampler_gives_every_backend_the_same_first_batch(split, name):
    """The first training batch of epoch 1 (images after augmentation, before
    normalisation; ``inception`` with its colour distortion) and its labels, in every
    backend, against torch's."""
    batches = first_batches(split, get_preset(name), common=True)
    (ref_x, ref_y) = batches["pytorch"]
    expected = [split.train[i].label for i in sample_order(len(split.train), SEED, 1)[:BATCH]]
    for backend, (x, y) in batches.items():
        assert x.shape == (BATCH, SIZE, SIZE, 3), backend
        assert list(y) == expected, (backend, list(y))
        diff = np.abs(x - ref_x).max()
        assert diff <= TOLERANCE[name], (name, backend, diff)


@pytest.mark.parametrize("name", ["simple", "inception"])
def test_native_crop_samplers_give_the_backends_different_batches(split, name):
    batches = first_batches(split, get_preset(name), common=False)
    ref_x, ref_y = batches["pytorch"]
    for backend in ("keras (tf.data)", "slim"):
        x, y = batches[backend]
        assert list(y) != list(ref_y) or np.abs(x - ref_x).max() > 10, backend
    assert list(batches["slim"][1]) != list(batches["pytorch"][1])


def test_common_order_and_params_depend_on_the_seed_epoch_and_index_only():
    preset = get_preset("inception")
    a = [draw_params(preset, 150, 200, SIZE, 0, 1, i) for i in range(20)]
    assert a == [draw_params(preset, 150, 200, SIZE, 0, 1, i) for i in range(20)]
    assert a != [draw_params(preset, 150, 200, SIZE, 1, 1, i) for i in range(20)]
    assert a != [draw_params(preset, 150, 200, SIZE, 0, 2, i) for i in range(20)]
    assert len(set(a)) == 20 and {p.flip for p in a} == {False, True}
    assert all(isinstance(p, CropParams) and 0 < p.height <= 150 and 0 < p.width <= 200 and
               p.top + p.height <= 150 and p.left + p.width <= 200 for p in a)
    np.testing.assert_array_equal(sample_order(30, 0, 1), sample_order(30, 0, 1))
    assert list(sample_order(30, 0, 1)) != list(sample_order(30, 1, 1))
    assert list(sample_order(30, 0, 1)) != list(sample_order(30, 0, 2))
    assert sorted(sample_order(30, 5, 4)) == list(range(30))
    simple = [draw_params(get_preset("simple"), 84, 84, SIZE, 0, 1, i) for i in range(40)]
    assert {(p.height, p.width) for p in simple} == {(SIZE, SIZE)}
    assert len({(p.top, p.left) for p in simple}) > 10


def test_common_samplers_follow_the_presets_bounds():
    """``random_resized_crop`` is torchvision's algorithm, ``distorted_bounding_box``
    TensorFlow's: over 2,000 boxes of a 150 x 200 image every box within the preset's
    area and aspect bounds, and TensorFlow's crops smaller on average (as natively)."""
    means = {}
    for name in ("inception", "torchvision"):
        preset = dataclasses.replace(get_preset(name), color=None)
        boxes = [draw_params(preset, 150, 200, SIZE, 0, 1, i) for i in range(2000)]
        area = np.array([p.height * p.width for p in boxes]) / (150 * 200)
        aspect = np.array([p.width / p.height for p in boxes])
        lo, hi = preset.effective_area
        assert area.min() >= lo - 0.01 and area.max() <= hi, (name, area.min(), area.max())
        assert aspect.min() >= preset.aspect[0] - 0.05 and aspect.max() <= preset.aspect[1] + 0.05
        means[name] = area.mean()
    torchvision_bounds_tf_algorithm = [
        draw_params(dataclasses.replace(get_preset("torchvision"), crop="distorted_bounding_box"),
                    150, 200, SIZE, 0, 1, i) for i in range(2000)]
    tf_mean = np.mean([p.height * p.width for p in torchvision_bounds_tf_algorithm]) / (150 * 200)
    assert means["torchvision"] > tf_mean + 0.03, (means, tf_mean)


def test_the_common_order_is_the_order_keras_drew_natively():
    """Keras' native pipeline already drew its order with numpy from (seed, epoch): the
    aligned order is that one, so Keras' batches keep their order under ``aligned``."""
    require_backend("keras")
    from backends.keras.data import epoch_order

    for seed, epoch in ((0, 1), (7, 3)):
        np.testing.assert_array_equal(epoch_order(40, seed, epoch)[0], sample_order(40, seed, epoch))


def test_aligned_keras_stream_of_two_epochs_keeps_static_shapes_and_each_epochs_order(split):
    """One ``fit`` reads one ``tf.data`` stream of its epochs (``flat_map``): aligned, its
    images keep their static shape (``fit`` needs it) and epoch 2 starts with the common
    order of epoch 2."""
    require_backend("keras")
    from backends.keras.data import KerasData

    data = KerasData(split, SIZE, RAW, BATCH, seed=SEED, preset=get_preset("inception"),
                     common_sampler=True)
    stream = data.train([1, 2], True)
    assert tuple(stream.element_spec[0].shape) == (None, SIZE, SIZE, 3)
    batches = [np.argmax(y, -1) for _, y in stream.as_numpy_iterator()]
    assert len(batches) == 4  # 8 + 4 images an epoch
    order = sample_order(len(split.train), SEED, 2)
    assert list(batches[2]) == [split.train[i].label for i in order[:BATCH]]
