"""Image verification before training (the cat/dog seed's ``verify_images``).

Every file of a dataset is opened and fully decoded once with the same
decoder the backends use (``common.data.to_rgb``). Corrupt, truncated and
non-image files are listed and skipped (or, with ``strict``, fail the run);
files with the same bytes (a path listed twice in a meta file, a copied
image) are kept once and listed, so no image can land in two subsets; the
surviving list is what gets split, so every backend sees the same files.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from common.data import SPLIT_NAMES, DataError, Dataset, FileRefused, Sample, read_image_file, to_rgb


@dataclass(frozen=True)
class ImageInfo:
    path: str
    mode: str = ""
    width: int = 0
    height: int = 0
    problem: str | None = None
    sha256: str = ""  # of the file's bytes: equal files are one image


def inspect_image(path: str) -> ImageInfo:
    """Mode and size of the image at ``path``, or why it is unusable."""
    try:
        data, digest = read_image_file(path)  # a regular file, in chunks, within the limit
    except FileRefused as err:
        return ImageInfo(path, problem=str(err))
    except OSError as err:
        return ImageInfo(path, problem=f"cannot read the file ({err.strerror or type(err).__name__})")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # e.g. corrupt EXIF: judged below
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                img.verify()  # structure and checksums (catches truncated PNGs)
            with Image.open(io.BytesIO(data)) as img:
                mode = img.mode
                rgb = to_rgb(img)
                rgb.load()  # full decode (truncated JPEG data raises here)
                return ImageInfo(path, mode, rgb.width, rgb.height, sha256=digest)
    except UnidentifiedImageError:
        return ImageInfo(path, problem="not an image file")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as err:
        return ImageInfo(path, problem=" ".join(f"corrupt image ({type(err).__name__}: {err})".split()))
    except (MemoryError, OverflowError, ZeroDivisionError, TypeError, IndexError, KeyError) as err:
        # a decoder plug-in tripping over hostile bytes: still only one bad file
        return ImageInfo(path, problem=" ".join(f"undecodable image ({type(err).__name__}: {err})".split()))


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


def deduplicated(ds: Dataset, infos: list[ImageInfo]) -> tuple[Dataset, list[tuple[str, str]]]:
    """``ds`` with each distinct file content once, and the ``(path, "same bytes as P")``
    list of what was dropped. The copy kept is the first in train, val, test order
    (pre-split data) and then by path, so a copy never moves an image into test."""
    subset_of = {}
    if ds.presplit is not None:
        for name in reversed(SPLIT_NAMES):
            for s in ds.presplit.get(name, []):
                subset_of[s.path] = SPLIT_NAMES.index(name)
    digest = {i.path: i.sha256 for i in infos if i.sha256}
    order = sorted(range(len(ds.samples)),
                   key=lambda k: (subset_of.get(ds.samples[k].path, 0), ds.samples[k].path, k))
    first: dict[str, Sample] = {}
    keep, dropped = set(), []
    for k in order:
        s = ds.samples[k]
        key = digest.get(s.path) or f"path:{s.path}"
        if key in first:
            same = first[key]
            why = "listed twice" if same.path == s.path else "same bytes as"
            labels = "" if same.label == s.label else \
                f" (labelled {ds.classes[s.label]!r} here, {ds.classes[same.label]!r} there)"
            dropped.append((s.path, f"duplicate: {why} {same.path}{labels}"))
        else:
            first[key] = s
            keep.add(k)
    if not dropped:
        return ds, []
    samples = [s for k, s in enumerate(ds.samples) if k in keep]
    presplit = None
    if ds.presplit is not None:
        kept_paths = {s.path for s in samples}
        presplit = {name: [s for s in v if s.path in kept_paths and
                           subset_of.get(s.path) == SPLIT_NAMES.index(name)]
                    for name, v in ds.presplit.items()}
    return replace(ds, samples=samples, presplit=presplit), sorted(dropped)


def usable_dataset(ds: Dataset, strict: bool = False, infos: list[ImageInfo] | None = None
                   ) -> tuple[Dataset, list[tuple[str, str]], list[tuple[str, str]]]:
    """``ds`` without unreadable files and duplicates: ``(dataset, skipped, duplicates)``,
    the lists as ``(path, reason)``. What ``bench run`` trains on and ``bench data
    inspect`` shows; a class left without images fails, naming its unreadable files."""
    infos = scan(ds) if infos is None else infos
    good, skipped = verified(ds, strict=strict, infos=infos)
    label_of = {s.path: s.label for s in ds.samples}
    readable = {s.label for s in good.samples}
    for idx, cls in enumerate(ds.classes):
        bad = [(p, why) for p, why in skipped if label_of.get(p) == idx]
        if idx not in readable and bad:
            raise DataError(f"class {cls!r} has no readable images: {len(bad)} file(s) are "
                            f"unusable, e.g. {bad[0][0]}: {bad[0][1]}; replace them or remove "
                            f"the class")
    good, duplicates = deduplicated(good, infos)
    for idx in sorted(readable - {s.label for s in good.samples}):
        copies = [(p, why) for p, why in duplicates if label_of.get(p) == idx]
        raise DataError(f"class {ds.classes[idx]!r} has no images of its own: its {len(copies)} "
                        f"file(s) have the bytes of other classes' files, e.g. {copies[0][0]}: "
                        f"{copies[0][1]}; an image can only have one label")
    return good, skipped, duplicates


def smaller_than(infos: list[ImageInfo], size: int) -> list[ImageInfo]:
    """Readable images with a side below ``size`` (they are upscaled)."""
    return [i for i in infos if not i.problem and min(i.width, i.height) < size]


# ------------------------------------------------------------------ cached files

def file_sha256(path: str | Path, chunk: int = 2 ** 20) -> str:
    """sha256 of the file's bytes, read in chunks (a checkpoint can be GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fingerprints(root: Path, names: list[str], known: dict | None = None) -> dict:
    """``{name: {size, mtime_ns, sha256}}`` of the files ``root/name``; a file whose size and
    mtime are those in ``known`` keeps its recorded hash (it is not read again)."""
    out = {}
    for name in names:
        st = (root / name).stat()
        old = (known or {}).get(name) or {}
        same = old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns
        out[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                     "sha256": old["sha256"] if same and old.get("sha256") else file_sha256(root / name)}
    return out


def changed_files(root: Path, recorded: dict) -> tuple[list[str], dict]:
    """The files of ``recorded`` (``fingerprints``' form) that are missing or whose bytes
    changed, each as ``"name: why"``, and the record refreshed: the fast path is the
    size and mtime; when either differs the file is hashed again, and a file rewritten
    with the same bytes keeps its place with its new mtime."""
    problems, fresh = [], {}
    for name, old in sorted(recorded.items()):
        path = root / name
        try:
            st = path.stat()
        except OSError:
            problems.append(f"{name}: missing")
            continue
        if st.st_size == old.get("size") and st.st_mtime_ns == old.get("mtime_ns"):
            fresh[name] = old
            continue
        digest = file_sha256(path)
        if digest != old.get("sha256"):
            problems.append(f"{name}: changed ({st.st_size} bytes, sha256 {digest[:12]}; "
                            f"made as {old.get('size')} bytes, sha256 {str(old.get('sha256'))[:12]})")
        fresh[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    return problems, fresh
