"""benchmarks/photo_folder.py: a pre-split folder of real photos whose test crops share no
pixel with the training crops."""

import hashlib

import numpy as np
import pytest

pytest.importorskip("skimage")

from benchmarks import photo_folder  # noqa: E402


def test_training_crops_come_from_the_top_and_test_crops_from_the_bottom_right():
    h, w = 300, 400
    image = np.zeros((h, w, 3), np.uint8)
    image[200:, :200] = 100          # the validation region
    image[200:, 200:] = 255          # the test region
    rng = np.random.default_rng(0)
    train = photo_folder.crops(image, photo_folder.REGIONS["train"], 20, 32, rng)
    val = photo_folder.crops(image, photo_folder.REGIONS["val"], 20, 32, rng)
    test = photo_folder.crops(image, photo_folder.REGIONS["test"], 20, 32, rng)
    assert all(c.max() == 0 for c in train)
    assert all(c.min() == 100 and c.max() == 100 for c in val)
    assert all(c.min() == 255 for c in test)


def _digest(root):
    return hashlib.sha256(b"".join(p.relative_to(root).as_posix().encode() + p.read_bytes()
                                   for p in sorted(root.rglob("*.png")))).hexdigest()


def test_the_folder_is_presplit_per_class_and_depends_only_on_its_arguments(tmp_path, capsys):
    args = ["--train", "2", "--val", "1", "--test", "1", "--size", "24"]
    assert photo_folder.main([str(tmp_path / "a"), *args]) == 0
    assert photo_folder.main([str(tmp_path / "b"), *args]) == 0
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        classes = sorted(p.name for p in (tmp_path / "a" / split).iterdir())
        assert classes == sorted(photo_folder.PHOTOS)
        assert all(len(list((tmp_path / "a" / split / c).glob("*.png"))) == n for c in classes)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert photo_folder.main([str(tmp_path / "c"), *args, "--seed", "1"]) == 0
    assert _digest(tmp_path / "c") != _digest(tmp_path / "a")


def test_a_non_empty_folder_or_a_bad_count_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    assert photo_folder.main([str(tmp_path / "x")]) == 2
    assert photo_folder.main([str(tmp_path / "y"), "--test", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "not an empty folder" in err[0] and "--test 0" in err[1]
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine" and not (tmp_path / "y").exists()
