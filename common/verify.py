"""Image verification before training (the cat/dog seed's ``verify_images``).

Every file of a dataset is opened and fully decoded once with the same
decoder the backends use (``common.data.to_rgb``). Corrupt, truncated and
non-image files are listed and skipped (or, with ``strict``, fail the run);
the surviving list is what gets split, so every backend sees the same files.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

from PIL import Image, UnidentifiedImageError

from common.data import DataError, Dataset, to_rgb


@dataclass(frozen=True)
class ImageInfo:
    path: str
    mode: str = ""
    width: int = 0
    height: int = 0
    problem: str | None = None


def inspect_image(path: str) -> ImageInfo:
    """Mode and size of the image at ``path``, or why it is unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.verify()  # structure and checksums (catches truncated PNGs)
            with Image.open(path) as img:
                mode = img.mode
                rgb = to_rgb(img)
                rgb.load()  # full decode (truncated JPEG data raises here)
                return ImageInfo(path, mode, rgb.width, rgb.height)
    except UnidentifiedImageError:
        return ImageInfo(path, problem="not an image file")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as err:
        return ImageInfo(path, problem=f"corrupt image ({type(err).__name__}: {err})".splitlines()[0])


def scan(ds: Dataset) -> list[ImageInfo]:
    return [inspect_image(s.path) for s in ds.samples]


def verified(ds: Dataset, strict: bool = False, infos: list[ImageInfo] | None = None
             ) -> tuple[Dataset, list[tuple[str, str]]]:
    """``ds`` without unusable files, and the ``(path, reason)`` list of what was skipped."""
    infos = scan(ds) if infos is None else infos
    skipped = [(i.path, i.problem) for i in infos if i.problem]
    if skipped and strict:
        path, reason = skipped[0]
        raise DataError(f"{len(skipped)} unusable image(s) with --strict, first: {path}: {reason}; "
                        f"remove them or run without --strict to skip them")
    if not skipped:
        return ds, skipped
    bad = {p for p, _ in skipped}
    keep = [s for s in ds.samples if s.path not in bad]
    presplit = None
    if ds.presplit is not None:
        presplit = {k: [s for s in v if s.path not in bad] for k, v in ds.presplit.items()}
    return replace(ds, samples=keep, presplit=presplit), skipped


def smaller_than(infos: list[ImageInfo], size: int) -> list[ImageInfo]:
    """Readable images with a side below ``size`` (they are upscaled)."""
    return [i for i in infos if not i.problem and min(i.width, i.height) < size]
