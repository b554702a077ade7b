"""Synthetic domains, dataset loading, splits and decoding (no framework)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from common import synthetic
from common.data import DataError, load_dataset, load_image, split_dataset


def _tree_hash(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.png")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def test_synthetic_generation_is_byte_identical_and_cached(tmp_path):
    spec = synthetic.SyntheticSpec("shapes", 2, image_size=48, seed=3)
    a = synthetic.generate(spec, root=tmp_path / "a", progress=False)
    b = synthetic.generate(spec, root=tmp_path / "b", progress=False)
    assert _tree_hash(a) == _tree_hash(b)
    assert len(list(a.rglob("*.png"))) == 2 * len(synthetic.SHAPES_CLASSES)
    mtime = (a / "circle" / "circle_0000.png").stat().st_mtime_ns
    assert synthetic.generate(spec, root=tmp_path / "a", progress=False) == a
    assert (a / "circle" / "circle_0000.png").stat().st_mtime_ns == mtime
    other = synthetic.generate(synthetic.SyntheticSpec("shapes", 2, image_size=48, seed=4),
                               root=tmp_path / "a", progress=False)
    assert other != a and _tree_hash(other) != _tree_hash(a)


def test_domains_share_square():
    assert set(synthetic.SHAPES_CLASSES) & set(synthetic.QUADS_CLASSES) == {"square"}


def test_split_is_deterministic_stratified_and_disjoint(tiny_quads):
    ds = load_dataset(tiny_quads)
    s1, s2 = split_dataset(ds, seed=0), split_dataset(ds, seed=0)
    assert s1.to_dict() == s2.to_dict() and s1.digest() == s2.digest()
    assert split_dataset(ds, seed=1).digest() != s1.digest()
    for name in ("train", "val", "test"):
        assert set(s1.counts()[name]) == set(ds.classes)  # every class in every subset
    paths = [s.path for n in ("train", "val", "test") for s in s1.subset(n)]
    assert len(paths) == len(set(paths)) == len(ds.samples)
    assert s1.counts()["train"] == {c: 4 for c in ds.classes}  # 6 per class: 4 / 1 / 1
    assert split_dataset(ds, 0, 0.2, 0.3).counts()["train"] == {c: 3 for c in ds.classes}


def _folder(root, layout: dict[str, int]):
    """Images under ``root/<relative class folder>`` (``{"train/a": 3, ...}``), 8 px each."""
    for rel, n in layout.items():
        (root / rel).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i, len(rel), 0)).save(root / rel / f"{i}.png")
    return root


def test_default_split_keeps_80_percent_of_a_users_images_for_training(tmp_path):
    ds = load_dataset(_folder(tmp_path, {"a": 10, "b": 20}))
    counts = {n: sum(c.values()) for n, c in split_dataset(ds, 0).counts().items()}
    assert counts == {"train": 24, "val": 3, "test": 3}
    assert split_dataset(ds, 0).given == ()


def test_folder_with_train_and_val_is_used_as_given_and_test_is_cut_from_train(tmp_path):
    # torchvision's tutorial layout (hymenoptera_data): train/ and val/, no test/
    ds = load_dataset(_folder(tmp_path, {"train/ants": 10, "train/bees": 10,
                                         "val/ants": 3, "val/bees": 4}))
    assert ds.classes == ("ants", "bees")  # not two classes named train and val
    split = split_dataset(ds, 0)
    assert split.given == ("train", "val")
    assert all("/val/" in s.path for s in split.val) and len(split.val) == 7
    assert all("/train/" in s.path for s in split.test) and len(split.test) == 2
    assert len(split_dataset(ds, 0, test_fraction=0.3).test) == 6  # the missing subset's fraction
    with pytest.raises(DataError, match=r"already split into train/ val/ folders, used as given; "
                                        r"--val-fraction would be ignored: drop it"):
        split_dataset(ds, 0, val_fraction=0.2)


def test_fractions_for_a_presplit_folder_are_refused_in_one_line(tmp_path):
    ds = load_dataset(_folder(tmp_path, {f"{n}/{c}": 2 for n in ("train", "val", "test")
                                         for c in "ab"}))
    split = split_dataset(ds, 0)
    assert split.given == ("train", "val", "test")
    assert {n: len(split.subset(n)) for n in ("train", "val", "test")} == {"train": 4, "val": 4,
                                                                          "test": 4}
    assert split_dataset(ds, 7).digest() == split.digest()  # the split seed cuts nothing here
    with pytest.raises(DataError) as err:
        split_dataset(ds, 0, 0.1, 0.2)
    assert "--val-fraction and --test-fraction would be ignored: drop them" in str(err.value)
    assert "\n" not in str(err.value)


def test_presplit_folders_and_meta_file(tmp_path, tiny_quads):
    for sub in ("train", "test"):
        for cls in ("a", "b"):
            d = tmp_path / "pre" / sub / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8), (i, 0, 0)).save(d / f"{i}.png")
    split = split_dataset(load_dataset(tmp_path / "pre"), seed=0)
    assert len(split.test) == 6 and len(split.val) == 2 and len(split.train) == 4

    files = sorted(tiny_quads.rglob("*.png"))
    meta = tmp_path / "meta.txt"
    meta.write_text("\n".join(f"{p.parent.name}|{p}" for p in files))
    cmap = tmp_path / "classes.json"
    names = sorted({p.parent.name for p in files})
    cmap.write_text(json.dumps({"id2cls": {str(i): c for i, c in enumerate(names)},
                                "cls2id": {c: i for i, c in enumerate(names)}}))
    ds = load_dataset(meta, cmap)
    assert ds.classes == tuple(names) and len(ds.samples) == len(files)
    assert split_dataset(ds, 0).counts() == split_dataset(load_dataset(tiny_quads), 0).counts()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "I;16", "CMYK", "1"])
def test_every_pil_mode_loads_as_rgb(tmp_path, mode):
    img = Image.new("RGB", (20, 10), (200, 100, 50))
    if mode == "I;16":
        img = Image.fromarray((np.arange(200).reshape(10, 20) * 300).astype(np.uint16))
    else:
        img = img.convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    arr = load_image(path, 16)
    assert arr.shape == (16, 16, 3) and arr.dtype == np.uint8


def test_transparent_pixels_become_white(tmp_path):
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(tmp_path / "t.png")
    assert (load_image(tmp_path / "t.png", 4) == 255).all()


def test_bad_dataset_paths_fail_with_one_line(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "f.jpg").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        load_dataset(tmp_path / "f.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "one" / "a").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "one" / "a" / "x.png")
    with pytest.raises(DataError, match="at least 2"):
        split_dataset(load_dataset(tmp_path / "one"), 0)


def test_presplit_synthetic_target_keeps_its_folders(tmp_path):
    spec = synthetic.SyntheticSpec("quads", 6, image_size=32, presplit=(2, 1, 3))
    root = synthetic.generate(spec, root=tmp_path, progress=False)
    split = split_dataset(load_dataset(root), seed=5)
    assert {n: sum(c.values()) for n, c in split.counts().items()} == {"train": 10, "val": 5, "test": 15}
    assert all("/train/" in s.path for s in split.train)
    with pytest.raises(ValueError, match="adding up to images_per_class"):
        synthetic.SyntheticSpec("quads", 6, presplit=(2, 2, 3))
    assert synthetic.DEFAULT_TARGET.presplit == (10, 10, 80)


def test_default_test_split_bounds_the_accuracy_interval_to_5_points():
    """The worst-case (accuracy 50 %) 95 % interval of a test accuracy on the default split:
    normal approximation and the Wilson interval the report shows, both at most +/- 5 points."""
    from benchmarks.stats import wilson_interval

    n = synthetic.DEFAULT_TARGET.presplit[2] * len(synthetic.DEFAULT_TARGET.classes)
    assert 1.96 * (0.25 / n) ** 0.5 <= 0.05
    low, high = wilson_interval(n // 2, n)
    assert high - low <= 0.10
