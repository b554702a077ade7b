"""Benchmark: what cutting training crops from an image shrunk to 2 x size changes.

The ``inception`` and ``torchvision`` presets cut their training crops from the image as
``common.data.load_image_fitting`` decodes it: its short side shrunk to ``2 x size`` when larger
(``Preset.train_source``). Neither reference does that: torchvision's ``RandomResizedCrop`` and
slim's ``distorted_bounding_box_crop`` cut the crop from the full decoded image. This measures the
difference for the same crop box, cut from the shrunk source and from the full image and both
resized to ``size`` with PIL's bilinear (so only the source differs; the shrunk source is
``load_image_fitting``'s, JPEG draft included), on real photos: scikit-learn's two sample photos
(640 x 427 JPEGs) unless paths are given. docs/differences.md quotes its output at 75 px.

    python -m benchmarks.bench_crop_source [--size 75] [IMAGE ...]

Prints a markdown table per crop area share (square crops at nine positions on a 3 x 3 grid):
the crop's side in source pixels (full, shrunk), whether the shrunk source has fewer pixels than
the output (the crop is enlarged where the reference shrinks it), and the mean and max absolute
pixel difference over the two images and nine positions (in 1/255).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from PIL import Image

from common.data import load_image_fitting, open_image, to_rgb

AREAS = (0.05, 0.08, 0.1, 0.25, 0.5, 1.0)  # crop area / image area; 0.05 and 0.08: the presets' lower bounds
GRID = (0.0, 0.5, 1.0)                     # where the crop sits: left/centre/right, top/centre/bottom


def sample_photos() -> list[Path]:
    """scikit-learn's sample photos (``sklearn.datasets.load_sample_images``), as files."""
    import sklearn.datasets

    folder = Path(sklearn.datasets.__file__).parent / "images"
    return sorted(folder.glob("*.jpg"))


def crop_pair(full: Image.Image, source: Image.Image, box: tuple[float, float, float, float],
              size: int) -> tuple[np.ndarray, np.ndarray]:
    """The crop ``box`` (full-image coordinates) resized to ``size``, cut from the full image and
    from the shrunk source (the box scaled to it)."""
    sx, sy = source.size[0] / full.size[0], source.size[1] / full.size[1]
    scaled = (box[0] * sx, box[1] * sy, min(box[2] * sx, source.size[0]), min(box[3] * sy, source.size[1]))
    a = full.resize((size, size), Image.Resampling.BILINEAR, box=box)
    b = source.resize((size, size), Image.Resampling.BILINEAR, box=scaled)
    return np.asarray(a, np.int32), np.asarray(b, np.int32)


def measure(paths: list[Path], size: int) -> list[dict]:
    rows = []
    for area in AREAS:
        diffs, sides = [], []
        for path in paths:
            with open_image(path) as img:
                full = to_rgb(img)
            source = Image.fromarray(load_image_fitting(path, 2 * size))
            w, h = full.size
            side = min(math.sqrt(area * w * h), w, h)
            for fx in GRID:
                for fy in GRID:
                    left, top = fx * (w - side), fy * (h - side)
                    a, b = crop_pair(full, source, (left, top, left + side, top + side), size)
                    diffs.append(np.abs(a - b))
            sides.append((side, side * source.size[1] / h))
        d = np.stack(diffs)
        full_side, shrunk_side = np.mean(sides, axis=0)
        rows.append({"area": area, "full_side": full_side, "shrunk_side": shrunk_side,
                     "enlarged": bool(shrunk_side < size), "mean": float(d.mean()), "max": int(d.max())})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", type=Path, help="default: scikit-learn's sample photos")
    parser.add_argument("--size", type=int, default=75)
    args = parser.parse_args(argv)
    paths = args.images or sample_photos()
    shapes = []
    for p in paths:
        with open_image(p) as img:
            shapes.append(f"{p.name} {img.size[0]} x {img.size[1]}")
    print(f"Training crops at {args.size} px from the full image vs from the image shrunk to a short side "
          f"of {2 * args.size} ({'; '.join(shapes)}); square crops, 9 positions each, PIL bilinear.\n")
    print("| crop area | crop side, full (px) | crop side, shrunk (px) | enlarged from the shrunk source "
          "| mean abs diff (/255) | max abs diff (/255) |")
    print("|---:|---:|---:|---|---:|---:|")
    for r in measure(paths, args.size):
        print(f"| {r['area']:g} | {r['full_side']:.0f} | {r['shrunk_side']:.0f} | "
              f"{'yes' if r['enlarged'] else 'no'} | {r['mean']:.2f} | {r['max']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
