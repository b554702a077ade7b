"""Preprocessing presets (``common.preprocess``): one spec, a native pipeline per backend.

Evaluation is finished in ``common`` (``Preset.eval_image``), so the eval arrays of
every backend are the same array; training augmentation is each framework's own, so
it is checked statistically: over many draws of an image whose pixels encode their
coordinates, the crop box recovered from every backend's output lies within the
preset's area and aspect bounds (CPU, 75 px, no model).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image

from conftest import require_backend

from common.config import ConfigError, parse_recipe
from common.data import Sample, Split
from common.preprocess import PRESETS, SLIM_COLOR_ORDERINGS, Normalisation, crop_source_size, get_preset

SIZE = 75
# pixels as they are: the pipelines' normalisation step becomes the identity
RAW = Normalisation("raw", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
W, H = 240, 180  # the coordinate image (decoded for training at a short side of 2 x 75)
DRAWS = 120


# ------------------------------------------------------------------- recipe keys

def test_preset_dropout_bn_and_native_keys_parse_and_fail_in_one_line():
    r = parse_recipe({"name": "x", "preprocessing": "inception", "dropout": 0.2,
                      "phase": [{"bn": "inference"}, {"trainable_scopes": "InceptionV3/Logits"}]})
    assert (r.preprocessing, r.dropout, r.phases[0].bn) == ("inception", 0.2, "inference")
    assert r.phases[1].train == "native" and r.phases[1].trainable_scopes == ("InceptionV3/Logits",)
    assert parse_recipe({"name": "x", "phase": [{}]}).preprocessing == "simple"  # today's default
    for raw, fragment in (
            ({"preprocessing": "vgg"}, "preprocessing = 'vgg' is invalid; allowed: simple, "
                                       "inception, torchvision"),
            ({"dropout": 1.0}, "dropout = 1.0 is invalid; must be in [0, 1)"),
            ({"phase": [{"bn": "eval"}]}, "bn = 'eval' is invalid; allowed: frozen, train, "
                                          "inference"),
            ({"phase": [{"modules": ["fc"], "unfreeze_from": 249}]}, "unfreeze_from and modules "
                                                                     "both say what trains"),
            ({"phase": [{"train": "top", "top_blocks": 2, "modules": ["fc"]}]},
             "train = 'top' is invalid; modules says what trains"),
            ({"phase": [{"train": "native"}]}, "name what trains with one of: trainable_scopes, "
                                               "unfreeze_from, modules"),
            ({"checkpoint_exclude_scopes": [1]}, "expected a list of block names")):
        with pytest.raises(ConfigError) as err:
            parse_recipe({"name": "x", "phase": [{}], **raw}, "r.toml")
        assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


# ------------------------------------------------------------------- images

@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("presets")
    rng = np.random.default_rng(0)
    files = {}
    for name, shape in (("wide.png", (90, 120, 3)), ("tall.png", (100, 64, 3)),
                        ("small.png", (40, 50, 3)), ("square.png", (80, 80, 3))):
        Image.fromarray(rng.integers(0, 256, shape, np.uint8)).save(d / name)
        files[name] = str(d / name)
    yy, xx = np.mgrid[0:300, 0:400]  # a smooth image, as photos mostly are
    smooth = np.stack([xx / 400 * 255, yy / 300 * 255, (xx + yy) / 700 * 255], -1)
    Image.fromarray(smooth.astype(np.uint8)).save(d / "smooth.png")
    files["smooth.png"] = str(d / "smooth.png")
    x, y = np.arange(W), np.arange(H)
    coords = np.stack([np.broadcast_to(np.round(x * 255 / (W - 1))[None, :], (H, W)),
                       np.broadcast_to(np.round(y * 255 / (H - 1))[:, None], (H, W)),
                       np.full((H, W), 128.0)], -1).astype(np.uint8)
    Image.fromarray(coords).save(d / "coords.png")
    files["coords"] = str(d / "coords.png")
    return files


def _split(paths: list[str]) -> Split:
    samples = [Sample(p, 0) for p in paths]
    return Split(classes=("a", "b"), train=samples, val=samples, test=samples)


def _torch(split: Split, preset, augment: bool) -> np.ndarray:
    from backends.pytorch import data

    ds = data.SplitDataset(split.train, SIZE, augment, seed=0, preset=preset)
    return np.stack([ds[i][0].permute(1, 2, 0).numpy().astype(np.float32) for i in range(len(ds))])


def _keras(split: Split, preset, augment: bool, tf_data: bool) -> np.ndarray:
    from backends.keras.data import KerasData

    data = KerasData(split, SIZE, RAW, 40, seed=0, preset=preset)
    data.use_tf_data = tf_data
    pipeline = data.train([1], True) if augment else data.eval("test")
    if tf_data:
        return np.concatenate([x for x, _ in pipeline.as_numpy_iterator()])
    if augment:
        pipeline.set_epoch(1)
    return np.concatenate([pipeline[i][0] for i in range(len(pipeline))])


def _slim(split: Split, preset, augment: bool) -> np.ndarray:
    import tensorflow as tf

    from backends.slim.data import build_pipelines

    graph = tf.Graph()
    with graph.as_default():
        pipes = build_pipelines(split, SIZE, RAW, 40, preset=preset)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(pipes.initializers["fit_augmented" if augment else "test"],
                        {pipes.epoch_seed: 7})
            out = []
            while True:
                try:
                    out.append(session.run(pipes.images))
                except tf.errors.OutOfRangeError:
                    return np.concatenate(out)


PIPELINES = {"pytorch": lambda s, p, a: _torch(s, p, a),
             "keras (tf.data)": lambda s, p, a: _keras(s, p, a, True),
             "keras (PyDataset)": lambda s, p, a: _keras(s, p, a, False),
             "slim": lambda s, p, a: _slim(s, p, a)}


def _require_all():
    for b in ("pytorch", "keras", "slim"):
        require_backend(b)


# ------------------------------------------------------------------- eval

@pytest.mark.parametrize("name", list(PRESETS))
def test_eval_images_are_the_same_array_in_every_backend(images, name):
    """Every backend's eval input is ``Preset.eval_image`` (decoded and cropped by PIL in
    common): bit-identical across PyTorch, Keras (tf.data and PyDataset) and slim."""
    _require_all()
    preset = get_preset(name)
    paths = [images[n] for n in ("wide.png", "tall.png", "small.png", "square.png")]
    expected = np.stack([preset.eval_image(p, SIZE) for p in paths]).astype(np.float32)
    for backend, pipeline in PIPELINES.items():
        got = pipeline(_split(paths), preset, False)
        assert got.shape == (4, SIZE, SIZE, 3), backend
        assert np.array_equal(got, expected), (backend, float(np.abs(got - expected).max()))


def test_eval_crops_follow_torchvision_and_slim(images):
    """``torchvision``: torchvision's own Resize(round(75 / 0.875)) + CenterCrop(75) on the
    PIL image, exactly. ``inception``: tf.image.central_crop's box exactly; its resize is
    PIL's bilinear, where slim's preprocess_for_eval uses TF1 resize_bilinear (no
    antialiasing, corner-aligned pixel centres): the measured difference is bounded."""
    _require_all()
    import tensorflow as tf
    from torchvision.transforms import v2

    with Image.open(images["wide.png"]) as im:
        pil = im.convert("RGB")
    reference = np.asarray(v2.Compose([v2.Resize(86), v2.CenterCrop(SIZE)])(pil))
    assert np.array_equal(get_preset("torchvision").eval_image(images["wide.png"], SIZE), reference)
    inception = get_preset("inception")
    square = np.asarray(Image.open(images["square.png"]).convert("RGB"))
    box = tf.image.central_crop(square, 0.875).numpy()  # 80 px -> rows/cols 5..74
    assert box.shape == (70, 70, 3)
    assert np.array_equal(inception.eval_image(images["square.png"], 70), box)  # no resize
    for name, mean, most in (("smooth.png", 0.006, 3 / 255), ("wide.png", 0.07, 0.35)):  # noise:
        with Image.open(images[name]) as im:                                       # the worst case
            pixels = np.asarray(im.convert("RGB"), np.float32) / 255.0
        slim_eval = tf.compat.v1.image.resize_bilinear(tf.image.central_crop(pixels, 0.875)[None],
                                                       [SIZE, SIZE], align_corners=False)[0].numpy()
        diff = np.abs(inception.eval_image(images[name], SIZE) / 255.0 - slim_eval)
        assert 0 < float(diff.mean()) < mean and float(diff.max()) < most, (name, diff.mean(), diff.max())


def test_eval_presets_decode_a_large_jpeg_like_their_references(tmp_path):
    """A 1600 x 1200 JPEG: ``torchvision``'s eval image is torchvision's reference (PIL's full
    decode, Resize, CenterCrop) exactly, and ``inception``'s is the central crop of the full
    decode; PIL's JPEG draft (a DCT downscale while decoding), which these presets used, moves
    pixels far more (measured on this image: up to 12/255 at 75 px, 16/255 at 299 px)."""
    require_backend("pytorch")
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1200, 0:1600]
    pixels = (np.stack([xx * 255 // 1599, yy * 255 // 1199, (xx + yy) % 256], -1)
              + rng.integers(-40, 40, (1200, 1600, 3)))
    path = tmp_path / "photo.jpg"
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    with Image.open(path) as im:
        full = im.convert("RGB")
    for size in (SIZE, 299):
        reference = np.asarray(v2.Compose([v2.Resize(round(size / 0.875)), v2.CenterCrop(size)])(full))
        assert np.array_equal(get_preset("torchvision").eval_image(path, size), reference), size
        box = full.crop((100, 75, 1500, 1125))  # tf.image.central_crop(0.875)'s box of 1600 x 1200
        expected = np.asarray(box.resize((size, size), Image.Resampling.BILINEAR))
        assert np.array_equal(get_preset("inception").eval_image(path, size), expected), size
    with Image.open(path) as im:
        im.draft("RGB", (86, 86))
        drafted = im.convert("RGB")
    old = np.asarray(v2.Compose([v2.Resize(86), v2.CenterCrop(SIZE)])(drafted)).astype(int)
    reference = np.asarray(v2.Compose([v2.Resize(86), v2.CenterCrop(SIZE)])(full)).astype(int)
    assert drafted.size == (200, 150) and np.abs(old - reference).max() > 5


# ------------------------------------------------------------------- train

def test_training_crops_come_from_the_image_shrunk_to_twice_the_size(tmp_path):
    """``inception`` and ``torchvision`` cut training crops from the image with its short side
    shrunk to 2 x size (unlike either reference, which crops the full image): a 640 x 427 photo
    becomes 224 x 150 at 75 px, so a crop of 10 % of its area is 58 source pixels a side, enlarged
    to 75; a 96 px image (the default synthetic data) is never shrunk at 75 px."""
    from benchmarks.bench_crop_source import sample_photos

    photo = sample_photos()[0]
    small = tmp_path / "small.png"
    pixels = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(small)
    for name in ("inception", "torchvision"):
        preset = get_preset(name)
        with Image.open(photo) as im:
            assert im.size == (640, 427)
        source = preset.train_source(str(photo), SIZE)
        assert source.shape == (150, 224, 3)
        assert round(np.sqrt(0.1 * 150 * 224)) == 58 < SIZE
        assert np.array_equal(preset.train_source(str(small), SIZE), pixels)



def _boxes(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop width and height as shares of the coordinate image, and the pixel aspect
    (width / height), recovered from the R (x) and G (y) ramps of each output."""
    n = pixels.shape[1]
    r, g = pixels[..., 0], pixels[..., 1]
    width = np.abs(r[:, :, -1].mean(1) - r[:, :, 0].mean(1)) / 255 * (W - 1) * n / (n - 1)
    height = np.abs(g[:, -1, :].mean(1) - g[:, 0, :].mean(1)) / 255 * (H - 1) * n / (n - 1)
    return width / W, height / H, width / height


@pytest.fixture(scope="module")
def crops(images) -> dict:
    """(preset, pipeline) -> recovered (width share, height share, aspect) of DRAWS crops."""
    _require_all()
    split = _split([images["coords"]] * DRAWS)
    out = {}
    for name in PRESETS:
        preset = dataclasses.replace(get_preset(name), color=None)  # colours would hide the ramps
        for backend, pipeline in PIPELINES.items():
            pixels = pipeline(split, preset, True)
            assert pixels.shape == (DRAWS, SIZE, SIZE, 3), (name, backend)
            out[name, backend] = _boxes(pixels.astype(np.float64))
    return out


@pytest.mark.parametrize("name", list(PRESETS))
def test_train_crops_lie_within_the_preset_bounds_in_every_backend(crops, name):
    preset = get_preset(name)
    for backend in PIPELINES:
        w, h, aspect = crops[name, backend]
        area = w * h
        if preset.crop == "random_crop":  # a 75 px crop of the image squashed to 84 px
            share = SIZE / crop_source_size(SIZE)
            np.testing.assert_allclose(w, share, atol=0.02, err_msg=backend)
            np.testing.assert_allclose(h, share, atol=0.02, err_msg=backend)
            continue
        lo, hi = preset.effective_area
        assert area.min() >= lo - 0.03 and area.max() <= hi + 0.03, (backend, area.min(), area.max())
        a_lo, a_hi = preset.aspect
        assert aspect.min() >= a_lo - 0.06 and aspect.max() <= a_hi + 0.06, \
            (backend, aspect.min(), aspect.max())
        # random within the bounds: small and large crops, both aspect extremes
        assert area.min() < lo + 0.2 and area.max() > 0.75, (backend, area.min(), area.max())
        assert aspect.min() < a_lo + 0.1 and aspect.max() > a_hi - 0.1, backend


def test_native_crop_samplers_differ_inside_the_same_bounds():
    """TensorFlow's sample_distorted_bounding_box draws an aspect, then the crop height
    uniformly (the area grows with its square), torchvision's RandomResizedCrop the area
    uniformly and the log-aspect: inside the same bounds, on a 200 x 150 image, TensorFlow's
    crops are smaller on average (4,000 boxes of each sampler, no pixels)."""
    _require_all()
    import tensorflow as tf
    import torch
    from torchvision.transforms import v2

    from backends.keras.data import sample_distorted_bounding_box

    n, height, width = 4000, 150, 200
    image = torch.zeros(3, height, width)
    means = {}
    for name in ("inception", "torchvision"):
        preset = get_preset(name)
        sampler = v2.RandomResizedCrop(SIZE, scale=preset.effective_area, ratio=preset.aspect)
        torch.manual_seed(0)
        boxes = [sampler.make_params([image]) for _ in range(n)]
        torch_area = np.array([b["height"] * b["width"] for b in boxes]) / (height * width)
        tf_boxes = tf.data.Dataset.range(n).map(lambda i: tf.image.stateless_sample_distorted_bounding_box(
            [height, width, 3], tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=tf.stack([i, 0]),
            min_object_covered=preset.min_object_covered, aspect_ratio_range=preset.aspect,
            area_range=preset.area, max_attempts=preset.max_attempts)[1])
        tf_area = np.array([int(b[0]) * int(b[1]) for b in tf_boxes.as_numpy_iterator()]) / (height * width)
        rng = np.random.default_rng(0)
        numpy_area = np.array([b[2] * b[3] for b in (sample_distorted_bounding_box(
            height, width, preset, rng) for _ in range(n))]) / (height * width)
        lo, hi = preset.effective_area
        for area in (torch_area, tf_area, numpy_area):
            assert lo - 0.01 <= area.min() and area.max() <= hi
        means[name] = {"torchvision": torch_area.mean(), "tf.image": tf_area.mean(),
                       "numpy (TensorFlow's algorithm)": numpy_area.mean()}
        assert abs(means[name]["tf.image"] - means[name]["numpy (TensorFlow's algorithm)"]) < 0.02
        assert means[name]["torchvision"] > means[name]["tf.image"] + 0.03, means
    assert 0.40 < means["torchvision"]["torchvision"] < 0.47 and \
        0.35 < means["torchvision"]["tf.image"] < 0.40, means


def test_inception_preset_is_slims_default_fast_mode_in_every_backend():
    """``inception`` is slim's preprocess_for_train with fast_mode=True (what train_image_classifier.py
    runs): slim's crop bounds, and distort_color's one fast-mode ordering, brightness then saturation.
    Neither op turns the hue, so over many draws no backend's colour path moves any pixel's hue
    (fast_mode=False's hue and contrast ops would, by up to 0.2 of the circle)."""
    _require_all()
    import tensorflow as tf
    import torch

    from backends import tf_image
    from backends.keras.data import numpy_distort_color, rgb_to_hsv
    from backends.pytorch.data import distort_color as torch_distort_color

    preset = get_preset("inception")
    assert preset.color.orderings == (("brightness", "saturation"),)
    assert (preset.color.brightness, preset.color.saturation) == (32 / 255, (0.5, 1.5))
    assert (preset.crop, preset.area, preset.aspect, preset.min_object_covered, preset.max_attempts) == (
        "distorted_bounding_box", (0.05, 1.0), (0.75, 1.33), 0.1, 100)
    assert "fast_mode=True" in preset.describe()["description"]
    # four colours of distinct hue, far enough from 0 and 1 that no op clips
    x = np.tile(np.array([[[0.55, 0.50, 0.45], [0.45, 0.55, 0.50], [0.50, 0.45, 0.55], [0.53, 0.45, 0.49]]],
                         np.float32), (4, 2, 1))
    hue = rgb_to_hsv(x)[..., 0]

    def turned(y: np.ndarray) -> float:
        d = np.abs(rgb_to_hsv(np.clip(y, 0, 1).astype(np.float32))[..., 0] - hue)
        return float(np.minimum(d, 1 - d).max())

    generator, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    u8 = torch.from_numpy(np.round(x * 255).astype(np.uint8)).permute(2, 0, 1)
    hue8 = rgb_to_hsv(u8.permute(1, 2, 0).numpy().astype(np.float32) / 255)[..., 0]
    for draw in range(20):
        assert turned(numpy_distort_color(x.copy(), preset.color, rng)) < 1e-4
        assert turned(tf_image.distort_color(tf.constant(x), preset.color, tf.constant([draw, 7], tf.int64))
                      .numpy()) < 1e-4
        y = torch_distort_color(u8, preset.color, generator).permute(1, 2, 0).numpy() / 255
        d = np.abs(rgb_to_hsv(np.clip(y, 0, 1).astype(np.float32))[..., 0] - hue8)
        assert float(np.minimum(d, 1 - d).max()) < 1e-4
    slow = dataclasses.replace(preset.color, orderings=SLIM_COLOR_ORDERINGS)  # what the preset did before
    assert max(turned(numpy_distort_color(x.copy(), slow, rng)) for _ in range(20)) > 0.01


def test_colour_distortion_ops_per_framework(images):
    """slim's distort_color ops on one image: Keras' numpy PyDataset computes tf.image's
    formulas (HSV saturation and hue, contrast around each channel's mean) to 1e-5;
    torchvision's saturation and contrast blend with the grayscale image instead."""
    _require_all()
    import tensorflow as tf
    import torch
    from torchvision.transforms.v2 import functional as F

    from backends.keras.data import hsv_to_rgb, rgb_to_hsv

    # a colourful image: its channels have different means
    x = (np.random.default_rng(1).uniform(0, 1, (40, 50, 3)) * [1.0, 0.5, 0.2]).astype(np.float32)
    chw = torch.from_numpy(x).permute(2, 0, 1)
    hsv = rgb_to_hsv(x)
    np.testing.assert_allclose(hsv, tf.image.rgb_to_hsv(x).numpy(), atol=1e-5)
    np.testing.assert_allclose(hsv_to_rgb(hsv), x, atol=1e-5)
    saturated = hsv.copy()
    saturated[..., 1] = np.clip(saturated[..., 1] * 1.4, 0, 1)
    tf_sat = tf.image.adjust_saturation(x, 1.4).numpy()
    np.testing.assert_allclose(hsv_to_rgb(saturated), tf_sat, atol=1e-5)
    shifted = hsv.copy()
    shifted[..., 0] = np.mod(shifted[..., 0] + 0.15, 1.0)
    tf_hue = tf.image.adjust_hue(x, 0.15).numpy()
    np.testing.assert_allclose(hsv_to_rgb(shifted), tf_hue, atol=1e-5)
    mean = x.mean((0, 1), keepdims=True)
    tf_contrast = tf.image.adjust_contrast(x, 1.4).numpy()
    np.testing.assert_allclose((x - mean) * 1.4 + mean, tf_contrast, atol=1e-5)
    torch_ops = {"saturation": (F.adjust_saturation(chw, 1.4), tf_sat),
                 "hue": (F.adjust_hue(chw, 0.15), tf_hue),
                 "contrast": (F.adjust_contrast(chw, 1.4), np.clip(tf_contrast, 0, 1))}
    diffs = {k: float(np.abs(t.permute(1, 2, 0).numpy() - ref).max())
             for k, (t, ref) in torch_ops.items()}
    assert diffs["hue"] < 1e-4, diffs  # both rotate the HSV hue
    assert diffs["saturation"] > 0.05 and diffs["contrast"] > 0.05, diffs


def test_result_records_the_preset_and_the_source_model_is_made_with_simple(
        tiny_quads, tmp_path, monkeypatch):
    """The driver with the numpy backend: ``result.json`` says which preset ran; the cached
    shapes-pretrained source model (its cache key holds no recipe) is made with ``simple``."""
    import fake_backend
    from backends import base
    from benchmarks import driver
    from common.paths import CACHE_ENV
    from conftest import tiny_config

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(base.EXTRA_BACKENDS_ENV, "fake=fake_backend:FakeBackend")
    monkeypatch.setitem(base.REGISTRY, "fake", "fake_backend:FakeBackend")
    seen, setup = [], fake_backend.FakeBackend._setup

    def recorded(self, split, size):
        seen.append((self.run_dir.name, self.config.recipe.preprocessing))
        return setup(self, split, size)

    monkeypatch.setattr(fake_backend.FakeBackend, "_setup", recorded)
    config = tiny_config("fake", "head", tiny_quads, tmp_path / "run", weights="source")
    config = dataclasses.replace(config, recipe=dataclasses.replace(config.recipe,
                                                                    preprocessing="inception"))
    result = driver.run(config)
    assert result["status"] == "ok", result.get("error")
    assert result["preprocessing"]["preset"] == "inception"
    assert (result["preprocessing"]["eval_crop"], result["preprocessing"]["eval_fraction"]) == \
        ("central_fraction", 0.875)
    assert seen == [("train", "simple"), ("run", "inception")]
