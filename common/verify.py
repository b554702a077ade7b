"""Image verification before training (the cat/dog seed's ``verify_images``).

Every file of a dataset is opened and fully decoded once with the same
decoder the backends use (``common.data.to_rgb``). Corrupt, truncated and
non-image files are listed and skipped (or, with ``strict``, fail the run);
the surviving list is what gets split, so every backend sees the same files.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

from PIL import Image, UnidentifiedImageError

from common.data import DataError, Dataset, to_rgb


def check_image(path: str) -> str | None:
    """Why the image at ``path`` is unusable, or None when it decodes to RGB."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.verify()  # structure and checksums (truncation in PNG)
            with Image.open(path) as img:
                rgb = to_rgb(img)
                rgb.load()  # full decode (truncated JPEG data raises here)
                if rgb.width < 1 or rgb.height < 1:
                    return "empty image"
    except UnidentifiedImageError:
        return "not an image file"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as err:
        return f"corrupt image ({type(err).__name__}: {err})".splitlines()[0]
    return None


def verified(ds: Dataset, strict: bool = False) -> tuple[Dataset, list[tuple[str, str]]]:
    """``ds`` without unusable files, and the ``(path, reason)`` list of what was skipped."""
    skipped = []
    bad = set()
    for s in ds.samples:
        reason = check_image(s.path)
        if reason:
            skipped.append((s.path, reason))
            bad.add(s.path)
    if skipped and strict:
        path, reason = skipped[0]
        raise DataError(f"{len(skipped)} unusable image(s) with --strict, first: {path}: {reason}; "
                        f"remove them or run without --strict to skip them")
    if not bad:
        return ds, skipped
    keep = [s for s in ds.samples if s.path not in bad]
    presplit = None
    if ds.presplit is not None:
        presplit = {k: [s for s in v if s.path not in bad] for k, v in ds.presplit.items()}
    return replace(ds, samples=keep, presplit=presplit), skipped
