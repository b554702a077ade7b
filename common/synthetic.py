"""The embedded default dataset: two synthetic domains, generated offline.

``shapes`` (the source domain) has many labelled images of ten geometric shape
classes on varied backgrounds (light or dark gradients with noise and
distractor strokes, the fill contrasting either way). ``quads`` (the target
domain) has a few labelled images of five kinds of quadrilateral under a
shifted palette (bluish striped backgrounds, saturated pastel fills), written
pre-split as ``train/`` (10 per class: "a few labelled images"), ``val/`` and
``test/`` (large enough to measure accuracy). ``square`` is in both, so the
reuse of a source classifier row for a shared label can be shown.

Generation is deterministic: every image is drawn from its own generator
seeded by ``(seed, class index, image index)``, so the same parameters give
byte-identical PNG files. A domain is written as an ImageFolder under
``<cache root>/synthetic/<domain>-<hash of the parameters>/`` (``common.paths``) and reused when that
folder is complete; user data goes through exactly the same loading code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from common.paths import cache_root

SHAPES_CLASSES = ("arrow", "circle", "cross", "diamond", "ellipse", "hexagon",
                  "pentagon", "square", "star", "triangle")
QUADS_CLASSES = ("kite", "parallelogram", "rectangle", "square", "trapezoid")
DOMAINS = {"shapes": SHAPES_CLASSES, "quads": QUADS_CLASSES}
GENERATOR_VERSION = 2
_COMPLETE = ".complete"


@dataclass(frozen=True)
class SyntheticSpec:
    domain: str
    images_per_class: int
    image_size: int = 96
    seed: int = 0
    # (train, val, test) images per class written as train/ val/ test/ folders;
    # None: one ImageFolder, split later by common.data.split_dataset
    presplit: tuple[int, int, int] | None = None

    def __post_init__(self):
        if self.domain not in DOMAINS:
            raise ValueError(f"unknown synthetic domain {self.domain!r}; choose one of: "
                             f"{', '.join(DOMAINS)}")
        if self.images_per_class < 1:
            raise ValueError(f"images_per_class = {self.images_per_class} must be >= 1")
        if self.image_size < 16:
            raise ValueError(f"image_size = {self.image_size} must be >= 16")
        if self.presplit is not None and (sum(self.presplit) != self.images_per_class
                                          or min(self.presplit) < 1):
            raise ValueError(f"presplit = {self.presplit} must be three counts >= 1 adding up to "
                             f"images_per_class = {self.images_per_class}")

    @property
    def classes(self) -> tuple[str, ...]:
        return DOMAINS[self.domain]

    def digest(self) -> str:
        payload = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


# Defaults of the embedded benchmark: a large source, a small target. The target's test
# split is large enough that the 95 % interval of a test accuracy is at most +/- 5 points
# (5 classes x 80 = 400 images: 1.96 * sqrt(0.5 * 0.5 / 400) = 4.9 points at worst);
# training stays "a few labelled images" (10 per class). Inference is cheap.
DEFAULT_SOURCE = SyntheticSpec("shapes", images_per_class=120)
DEFAULT_TARGET = SyntheticSpec("quads", images_per_class=100, presplit=(10, 10, 80))


# ------------------------------------------------------------------ geometry

def _regular(n: int, r: float, phase: float = 0.0) -> list[tuple[float, float]]:
    return [(r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n))
            for k in range(n)]


def _star(r: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        rad = r if k % 2 == 0 else r * 0.45
        a = -math.pi / 2 + math.pi * k / 5
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    return pts


def _cross(r: float) -> list[tuple[float, float]]:
    w = r * 0.35
    return [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r),
            (-w, w), (-r, w), (-r, -w), (-w, -w)]


def _arrow(r: float) -> list[tuple[float, float]]:
    return [(-r, -0.25 * r), (0.2 * r, -0.25 * r), (0.2 * r, -0.7 * r), (r, 0),
            (0.2 * r, 0.7 * r), (0.2 * r, 0.25 * r), (-r, 0.25 * r)]


def _quad(kind: str, r: float, rng: np.random.Generator) -> list[tuple[float, float]]:
    if kind == "square":
        return [(-r, -r), (r, -r), (r, r), (-r, r)]
    if kind == "rectangle":
        aspect = rng.uniform(1.7, 2.4)
        w, h = r, r / aspect
        return [(-w, -h), (w, -h), (w, h), (-w, h)]
    if kind == "parallelogram":
        h, s = r * 0.55, r * rng.uniform(0.45, 0.7)
        w = r - s / 2
        return [(-w - s / 2, h), (w - s / 2, h), (w + s / 2, -h), (-w + s / 2, -h)]
    if kind == "trapezoid":
        top = r * rng.uniform(0.3, 0.55)
        h = r * 0.7
        return [(-r, h), (r, h), (top, -h), (-top, -h)]
    if kind == "kite":
        return [(0, -r), (r * 0.6, -r * 0.35), (0, r), (-r * 0.6, -r * 0.35)]
    raise ValueError(kind)


def _rotate(pts, angle: float, cx: float, cy: float):
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


# ------------------------------------------------------------------ drawing

def _background(domain: str, size: int, rng: np.random.Generator, dark: bool) -> Image.Image:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    if domain == "shapes":
        # a light or dark two-colour gradient with soft noise
        lo, hi = (10, 100) if dark else (160, 255)
        c0, c1 = rng.uniform(lo, hi, 3), rng.uniform(lo, hi, 3)
        t = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None]
        t = (t - t.min()) / (np.ptp(t) + 1e-6)
        img = c0 * (1 - t) + c1 * t + rng.normal(0, 8, (size, size, 3))
    else:
        # the shifted palette: bluish and striped
        c0 = rng.uniform([10, 20, 50], [60, 70, 120])
        c1 = c0 + rng.uniform(15, 45, 3)
        freq = rng.uniform(6, 14)
        angle = rng.uniform(0, math.pi)
        stripes = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)))
        img = c0 * (1 - stripes[..., None]) + c1 * stripes[..., None] + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _fill_colour(domain: str, rng: np.random.Generator, dark_background: bool) -> tuple[int, int, int]:
    if domain == "shapes":
        lo, hi = (150, 255) if dark_background else (0, 110)
        return tuple(int(v) for v in rng.uniform(lo, hi, 3))  # contrasting either way
    hue = rng.integers(0, 3)
    base = rng.uniform(120, 200, 3)
    base[hue] = rng.uniform(220, 255)
    return tuple(int(v) for v in base)  # saturated pastel on dark blue


def draw_image(domain: str, label: str, size: int, rng: np.random.Generator,
               supersample: int = 2) -> Image.Image:
    """One image of class ``label`` in ``domain``, drawn at ``supersample`` x and downsampled."""
    big = size * supersample
    dark = bool(rng.random() < 0.5)
    img = _background(domain, big, rng, dark)
    draw = ImageDraw.Draw(img)
    if domain == "shapes":  # distractor strokes
        for _ in range(int(rng.integers(1, 4))):
            x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, big, 4))
            draw.line((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.uniform(120, 200, 3)),
                      width=int(rng.integers(1, 4)))
    r = big * rng.uniform(0.22, 0.36)
    cx, cy = (float(v) for v in rng.uniform(r * 1.05, big - r * 1.05, 2))
    colour = _fill_colour(domain, rng, dark)
    if domain == "quads":
        angle = rng.uniform(-0.25, 0.25)  # small tilt: a tilted square must stay a square
        pts = _rotate(_quad(label, r, rng), angle, cx, cy)
        draw.polygon(pts, fill=colour)
    elif label in ("circle", "ellipse"):
        ry = r if label == "circle" else r * rng.uniform(0.4, 0.6)
        angle = rng.uniform(0, math.pi)
        n = 64  # an ellipse as a rotated polygon
        pts = [(r * math.cos(2 * math.pi * k / n), ry * math.sin(2 * math.pi * k / n)) for k in range(n)]
        draw.polygon(_rotate(pts, angle, cx, cy), fill=colour)
    else:
        pts = {
            "square": lambda: [(-r * 0.8, -r * 0.8), (r * 0.8, -r * 0.8), (r * 0.8, r * 0.8), (-r * 0.8, r * 0.8)],
            "diamond": lambda: [(0, -r), (r * 0.6, 0), (0, r), (-r * 0.6, 0)],
            "triangle": lambda: _regular(3, r, -math.pi / 2),
            "pentagon": lambda: _regular(5, r, -math.pi / 2),
            "hexagon": lambda: _regular(6, r),
            "star": lambda: _star(r),
            "cross": lambda: _cross(r),
            "arrow": lambda: _arrow(r),
        }[label]()
        # a square or diamond turned far enough becomes the other: small tilts only
        angle = rng.uniform(-0.3, 0.3) if label in ("square", "diamond") else rng.uniform(0, 2 * math.pi)
        draw.polygon(_rotate(pts, angle, cx, cy), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.3, 1.2))))
    return img if big == size else img.resize((size, size), Image.Resampling.LANCZOS)


def _subset_of(spec: SyntheticSpec, index: int) -> str:
    """The pre-split folder of image ``index`` ('' when the domain is not pre-split)."""
    if spec.presplit is None:
        return ""
    train, val, _ = spec.presplit
    return "train" if index < train else "val" if index < train + val else "test"


def generate(spec: SyntheticSpec, root: Path | None = None, progress: bool = True) -> Path:
    """Write ``spec`` as an ImageFolder (cached by parameter hash); return its path."""
    out = (root or cache_root()) / "synthetic" / f"{spec.domain}-{spec.digest()}"
    return _cached_folder(out, lambda tmp: _write_domain(spec, tmp, progress))


def _cached_folder(out: Path, fill) -> Path:
    """``out``, written once: ``fill(tmp)`` writes a private partial folder beside it, which
    is then marked complete and renamed to ``out`` (when another process finished first,
    its folder stays and this one is removed). A complete ``out`` is returned as it is."""
    if (out / _COMPLETE).is_file():
        return out
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    (tmp / _COMPLETE).write_text("")
    if out.exists():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, out)
    return out


def _write_domain(spec: SyntheticSpec, tmp: Path, progress: bool) -> None:
    total = len(spec.classes) * spec.images_per_class
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"generating {spec.domain}", unit="img", leave=False)
    for ci, label in enumerate(spec.classes):
        for i in range(spec.images_per_class):
            folder = tmp / _subset_of(spec, i) / label
            folder.mkdir(parents=True, exist_ok=True)
            rng = np.random.default_rng([spec.seed, ci, i, GENERATOR_VERSION])
            draw_image(spec.domain, label, spec.image_size, rng).save(
                folder / f"{label}_{i:04d}.png", optimize=False)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    (tmp / "params.json").write_text(json.dumps({**asdict(spec), "version": GENERATOR_VERSION},
                                                indent=2, sort_keys=True))


# ------------------------------------------------------------------ JPEG files

JPEG_VERSION = 1


def _write_jpeg(task: tuple[str, int, str, int, int, int, int]) -> None:
    folder, seed, label, class_index, index, size, quality = task
    rng = np.random.default_rng([seed, class_index, index, JPEG_VERSION])
    # drawn at the final size (no supersampling): fast, and JPEG's own artefacts follow
    draw_image("shapes", label, size, rng, supersample=1).save(
        Path(folder) / label / f"{label}_{index:05d}.jpg", quality=quality)


def generate_jpeg_folder(images_per_class: int, size: int = 299, seed: int = 0,
                         workers: int | None = None, root: Path | None = None,
                         quality: int = 90) -> Path:
    """An ImageFolder of ``images_per_class`` JPEG files for each ``shapes`` class, for
    timing input pipelines on real files (decoding included); written by ``workers``
    processes (default: every core) and cached under ``<cache root>/synthetic/`` by its
    parameters, like the domains. Deterministic in ``seed``."""
    out = ((root or cache_root()) / "synthetic" /
           f"jpeg-shapes-{images_per_class}x{len(SHAPES_CLASSES)}-{size}px-q{quality}-s{seed}-v{JPEG_VERSION}")
    return _cached_folder(out, lambda tmp: _write_jpeg_folder(tmp, images_per_class, size, seed,
                                                              workers, quality))


def _write_jpeg_folder(tmp: Path, images_per_class: int, size: int, seed: int, workers: int | None,
                       quality: int) -> None:
    for label in SHAPES_CLASSES:
        (tmp / label).mkdir(parents=True)
    tasks = [(str(tmp), seed, label, ci, i, size, quality)
             for ci, label in enumerate(SHAPES_CLASSES) for i in range(images_per_class)]
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if workers > 1 and len(tasks) > 64:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn: the caller may hold a framework's threads, which a fork would copy half-way
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_write_jpeg, tasks, chunksize=max(1, len(tasks) // (workers * 4))))
    else:
        for task in tasks:
            _write_jpeg(task)
    (tmp / "params.json").write_text(json.dumps(
        {"images_per_class": images_per_class, "size": size, "seed": seed, "quality": quality,
         "classes": list(SHAPES_CLASSES), "version": JPEG_VERSION}, indent=2, sort_keys=True))


def domain_stats(path: Path) -> dict:
    """Classes and image counts of a generated domain (for ``bench data synthetic``)."""
    counts: dict[str, int] = {}
    for png in sorted(path.rglob("*.png")):
        counts[png.parent.name] = counts.get(png.parent.name, 0) + 1
    splits = sorted(d.name for d in path.iterdir() if d.name in ("train", "val", "test"))
    return {"path": str(path), "classes": len(counts), "images": sum(counts.values()),
            "per_class": counts, "presplit": splits}
