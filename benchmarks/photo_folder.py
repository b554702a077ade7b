"""A small user-style image folder cut from scikit-image's bundled photos, offline.

``python -m benchmarks.photo_folder DIR`` writes ``DIR/{train,val,test}/<class>/*.png``:
six classes, each one real photo or micrograph that ships inside scikit-image
(textures of brick, grass and gravel, the moon's surface, the Hubble deep field,
an immunohistochemistry slide). Every image is a random square crop, resized to
``--size`` pixels and maybe mirrored. Training crops come from the top two thirds
of each photo, validation and test crops from the bottom third (validation from
its left half, test from its right half), so the test never sees a pixel that
was trained on. The folder depends only on the arguments (``--seed``).

It is the folder the docs use to run ``--weights imagenet`` on data that is not
the suite's own synthetic shapes (docs/measurements.md); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# class name -> skimage.data function; all bundled with scikit-image (no pooch download)
PHOTOS = {
    "brick": "brick",
    "grass": "grass",
    "gravel": "gravel",
    "moon": "moon",
    "deep_field": "hubble_deep_field",
    "ihc_slide": "immunohistochemistry",
}

# (top, bottom, left, right) as fractions of the photo's height and width
REGIONS = {
    "train": (0.0, 2 / 3, 0.0, 1.0),
    "val": (2 / 3, 1.0, 0.0, 0.5),
    "test": (2 / 3, 1.0, 0.5, 1.0),
}


def photo(name: str) -> np.ndarray:
    """The bundled photo as an RGB uint8 array."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, PHOTOS[name])())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return image[:, :, :3].astype(np.uint8)


def crops(image: np.ndarray, region: tuple[float, float, float, float], count: int,
          size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``count`` random square crops of ``region``, each 40-90 % of the region's shorter
    side, resized to ``size`` and mirrored half of the time."""
    from PIL import Image

    h, w = image.shape[:2]
    top, bottom = int(region[0] * h), int(region[1] * h)
    left, right = int(region[2] * w), int(region[3] * w)
    side_max = min(bottom - top, right - left)
    out = []
    for _ in range(count):
        side = int(rng.uniform(0.4, 0.9) * side_max)
        y = int(rng.integers(top, bottom - side + 1))
        x = int(rng.integers(left, right - side + 1))
        crop = Image.fromarray(image[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        out.append(np.asarray(crop))
    return out


def write_folder(root: Path, counts: dict[str, int], size: int, seed: int) -> dict[str, int]:
    """Write the folder; returns images written per split."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    written = {split: 0 for split in counts}
    for name in PHOTOS:
        image = photo(name)
        for split, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, crop in enumerate(crops(image, REGIONS[split], count, size, rng)):
                Image.fromarray(crop).save(folder / f"{name}_{i:03d}.png")
                written[split] += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.photo_folder", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the folder to create (must not exist or be empty)")
    parser.add_argument("--train", type=int, default=30, help="training images per class (default 30)")
    parser.add_argument("--val", type=int, default=10, help="validation images per class (default 10)")
    parser.add_argument("--test", type=int, default=20, help="test images per class (default 20)")
    parser.add_argument("--size", type=int, default=128, help="side of every image in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for flag in ("train", "val", "test"):
        if getattr(args, flag) < 1:
            print(f"photo_folder: --{flag} {getattr(args, flag)}: need at least 1 image per class", file=sys.stderr)
            return 2
    if not 16 <= args.size <= 1024:
        print(f"photo_folder: --size {args.size}: give 16 to 1024 pixels", file=sys.stderr)
        return 2
    if args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir())):
        print(f"photo_folder: {args.out} exists and is not an empty folder; name a new one", file=sys.stderr)
        return 2
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        print("photo_folder: scikit-image is not installed; pip install 'transfer-bench[lite0]'", file=sys.stderr)
        return 2
    written = write_folder(args.out, {"train": args.train, "val": args.val, "test": args.test},
                           args.size, args.seed)
    print(f"{args.out}: {len(PHOTOS)} classes ({', '.join(PHOTOS)}); "
          + ", ".join(f"{n} {split}" for split, n in written.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
