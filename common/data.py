"""Datasets, deterministic splits and image decoding shared by every backend.

Two input formats:

* an ImageFolder root: ``ROOT/<class>/<image>``, or ``ROOT/{train,val,test}/<class>/``
  when the user already split the data;
* a meta file of ``label|path`` lines plus a class-map JSON
  ``{"id2cls": {...}, "cls2id": {...}}`` (the Stanford40 seed's format).

``split_dataset`` makes the stratified train/val/test split from a seed; the
split (and its hash, recorded in every result) is identical for every backend
because it is computed here, before any framework is imported.

``load_image`` is the single decoder: PIL, EXIF orientation applied, every
mode converted to RGB (alpha composited on white), resized to a square.
Backends call it from their native pipelines and do the rest natively.
It and ``common.verify`` read a file only through ``read_image_file``: a
regular file (never a FIFO or a device), in chunks, at most
``MAX_IMAGE_BYTES``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
SPLIT_NAMES = ("train", "val", "test")
# a user's folder that is not already split: 80 % train, 10 % val, 10 % test per class
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_TEST_FRACTION = 0.1


class DataError(ValueError):
    """Unusable dataset input; ``str(err)`` is one line for the user."""


# ------------------------------------------------------------------ reading a file

# The largest image file read (a 2 GB sparse .png is refused by its size, before a byte
# of it is read): far above any photograph, below what would exhaust memory.
MAX_IMAGE_BYTES = 256 * 2 ** 20
READ_CHUNK_BYTES = 2 ** 20


class FileRefused(DataError):
    """A file that is not read: not a regular file, or larger than the limit."""


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:,.1f} MiB"


def _refuse_unless_regular(st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"not a regular file ({_file_kind(st.st_mode)}); only regular files "
                          f"are read")
    if st.st_size > limit:
        raise FileRefused(f"the file is {_mib(st.st_size)}, over the {_mib(limit)} limit for one "
                          f"image; not read")


def read_image_file(path: str | Path, limit: int = MAX_IMAGE_BYTES) -> tuple[bytes, str]:
    """The bytes of the file at ``path`` and their sha256, read in chunks. Only a regular
    file of at most ``limit`` bytes is read: anything else raises ``FileRefused`` (one line
    saying what was refused) before its content is read, so ``/dev/zero`` or a FIFO never
    hangs or fills memory. ``OSError`` when it cannot be opened. The one reader of image
    files for ``bench data inspect``, ``bench run`` (parent and worker) and ``bench predict``."""
    _refuse_unless_regular(os.stat(path), limit)  # before open(): opening a FIFO blocks
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    with open(fd, "rb", closefd=True) as f:
        _refuse_unless_regular(os.fstat(fd), limit)  # what was opened, if it changed since
        digest, chunks, total = hashlib.sha256(), [], 0
        while chunk := f.read(READ_CHUNK_BYTES):
            total += len(chunk)
            if total > limit:  # it grew while being read
                raise FileRefused(f"the file grew past the {_mib(limit)} limit for one image "
                                  f"while being read; not read")
            digest.update(chunk)
            chunks.append(chunk)
    return b"".join(chunks), digest.hexdigest()


def open_image(path: str | Path) -> Image.Image:
    """``PIL.Image.open`` of the file's bytes, read by ``read_image_file``."""
    return Image.open(io.BytesIO(read_image_file(path)[0]))


@dataclass(frozen=True)
class Sample:
    path: str
    label: int


@dataclass
class Dataset:
    classes: tuple[str, ...]
    samples: list[Sample]
    root: str
    # pre-made split from train/val/test subfolders, else None
    presplit: dict[str, list[Sample]] | None = None

    def presplit_subsets(self) -> list[str]:
        """The subsets the folder already holds (``train``, ``val``, ``test``), else []."""
        return [n for n in SPLIT_NAMES if self.presplit and self.presplit.get(n)]


@dataclass
class Split:
    classes: tuple[str, ...]
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    root: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)     # unreadable: (path, why)
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # dropped copies: (path, why)
    given: tuple[str, ...] = ()  # subsets taken as given from train/ val/ test/ folders

    def subset(self, name: str) -> list[Sample]:
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown subset {name!r}; choose one of {SPLIT_NAMES}")
        return getattr(self, name)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def digest(self) -> str:
        """Hash of the classes and of every (subset, relative path, label)."""
        h = hashlib.sha256()
        h.update(json.dumps(self.classes).encode())
        for name in SPLIT_NAMES:
            for s in self.subset(name):
                rel = os.fsencode(_relative(s.path, self.root))  # a name need not be UTF-8
                h.update(f"{name}|".encode() + rel + f"|{s.label}\n".encode())
        return h.hexdigest()[:16]

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: {self.classes[k]: v for k, v in sorted(Counter(s.label for s in self.subset(name)).items())}
                for name in SPLIT_NAMES}

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "classes": list(self.classes),
            "digest": self.digest(),
            **{name: [[_relative(s.path, self.root), s.label] for s in self.subset(name)]
               for name in SPLIT_NAMES},
            "skipped": [list(x) for x in self.skipped],
            "duplicates": [list(x) for x in self.duplicates],
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def read(cls, path: Path) -> "Split":
        """The split ``write`` saved (a run's ``split.json``), paths joined to its root."""
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        root = d["root"]

        def samples(name: str) -> list[Sample]:
            return [Sample(str(Path(root) / rel), int(label)) for rel, label in d[name]]

        return cls(tuple(d["classes"]), samples("train"), samples("val"), samples("test"), root,
                   [tuple(x) for x in d.get("skipped", [])],
                   [tuple(x) for x in d.get("duplicates", [])])


def _relative(path: str, root: str) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _is_image_file(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _class_dirs(root: Path) -> list[Path]:
    return sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                  key=lambda d: d.name)


def _folder_samples(root: Path, classes: list[str]) -> list[Sample]:
    samples = []
    for idx, cls in enumerate(classes):
        d = root / cls
        if not d.is_dir():
            continue
        for f in sorted(d.rglob("*")):
            if _is_image_file(f) and not any(part.startswith(".") for part in f.relative_to(d).parts):
                samples.append(Sample(str(f), idx))
    return samples


def is_presplit(subfolders: set[str]) -> bool:
    """Whether a folder with these subfolders is already split: ``train/`` beside ``val/``
    or ``test/`` (torchvision's ImageFolder tutorials ship ``train/`` + ``val/``). Other
    subfolders beside them are not read."""
    return "train" in subfolders and bool(subfolders & {"val", "test"})


def load_image_folder(root: str | Path) -> Dataset:
    """An ImageFolder dataset, with or without train/val/test subfolders."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {str(root)!r} does not exist; pass --data synthetic or an "
                        f"image folder with one subfolder per class")
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is a file, not a folder; pass a folder with one "
                        f"subfolder per class, or a label|path meta file with --class-map")
    root = root.resolve()
    subdirs = {d.name for d in _class_dirs(root)}
    if is_presplit(subdirs):
        parts = {name: root / name for name in SPLIT_NAMES if (root / name).is_dir()}
        classes = sorted({d.name for p in parts.values() for d in _class_dirs(p)})
        presplit = {name: _folder_samples(p, classes) for name, p in parts.items()}
        samples = [s for v in presplit.values() for s in v]
        ds = Dataset(tuple(classes), samples, str(root), presplit)
    else:
        classes = sorted(subdirs)
        ds = Dataset(tuple(classes), _folder_samples(root, classes), str(root))
    if not ds.classes:
        raise DataError(f"data path {str(root)!r} has no class subfolders; expected "
                        f"{root}/<class>/<image files>")
    return ds


def load_meta_file(meta: str | Path, class_map: str | Path) -> Dataset:
    """A dataset from ``label|path`` lines and a ``{id2cls, cls2id}`` class map."""
    meta, class_map = Path(meta), Path(class_map)
    for p, what in ((meta, "meta file"), (class_map, "class map")):
        if not p.is_file():
            raise DataError(f"{what} {str(p)!r} does not exist")
    classes = _classes_from_class_map(class_map)
    cls2id = {c: i for i, c in enumerate(classes)}
    samples = []
    base = meta.parent.resolve()
    try:
        lines = meta.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataError(f"meta file {str(meta)!r} is not UTF-8 text (byte {err.start}); save it "
                        f"as UTF-8 'label|path' lines") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "|" not in line:
            raise DataError(f"{meta}:{lineno}: expected 'label|path', got {line.strip()!r}")
        label, path = (x.strip() for x in line.split("|", 1))
        if label in cls2id:
            idx = cls2id[label]
        elif label.isdecimal() and int(label) < len(classes):
            idx = int(label)
        else:
            raise DataError(f"{meta}:{lineno}: label {label!r} is not in the class map "
                            f"{str(class_map)!r}")
        if not path or "\x00" in path:
            raise DataError(f"{meta}:{lineno}: expected 'label|path', got an empty or invalid path")
        p = Path(path)
        samples.append(Sample(str(p if p.is_absolute() else base / p), idx))
    return Dataset(classes, samples, str(base))


def _classes_from_class_map(class_map: Path) -> tuple[str, ...]:
    """Class names by id from ``{"id2cls": {"0": "a", ...}, "cls2id": {"a": 0, ...}}``
    (``cls2id`` is optional; when given it must be the inverse of ``id2cls``)."""
    where = f"class map {str(class_map)!r}"
    try:
        cmap = json.loads(class_map.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{where} is not JSON ({type(err).__name__}: {err}); expected "
                        f"{{\"id2cls\": {{\"0\": \"name\", ...}}}}") from None
    if not isinstance(cmap, dict) or not isinstance(cmap.get("id2cls"), dict):
        got = (f"a JSON {type(cmap).__name__}" if not isinstance(cmap, dict) else
               f"id2cls = {type(cmap.get('id2cls')).__name__}")
        raise DataError(f"{where} must be a JSON object with an 'id2cls' object mapping integer "
                        f"ids to names, got {got}")
    id2cls = {}
    for k, v in cmap["id2cls"].items():
        if not (k.strip().isdecimal() and isinstance(v, str) and v.strip()):
            raise DataError(f"{where}: id2cls entry {k!r}: {v!r} must map an integer id to a "
                            f"non-empty class name")
        id2cls[int(k)] = v
    if sorted(id2cls) != list(range(len(id2cls))):
        raise DataError(f"{where}: ids must be 0..{len(id2cls) - 1}")
    classes = tuple(id2cls[i] for i in range(len(id2cls)))
    if len(set(classes)) != len(classes):
        raise DataError(f"{where}: id2cls names a class twice")
    if "cls2id" in cmap:
        cls2id = cmap["cls2id"]
        expected = {c: i for i, c in enumerate(classes)}
        if not isinstance(cls2id, dict) or {str(c): v for c, v in cls2id.items()} != expected:
            raise DataError(f"{where}: cls2id contradicts id2cls (expected {expected}); fix one "
                            f"of them or drop cls2id")
    return classes


def load_dataset(source: str | Path, class_map: str | Path | None = None) -> Dataset:
    source = Path(source)
    if source.is_file() and class_map is not None:
        return load_meta_file(source, class_map)
    if source.is_dir() and class_map is not None:  # it would be ignored: the folders name the classes
        raise DataError(f"--class-map {str(class_map)!r} maps the labels of a label|path meta "
                        f"file, but {str(source)!r} is an image folder whose subfolders name its "
                        f"classes; drop --class-map")
    if source.is_file() and source.suffix.lower() in {".txt", ".csv", ".meta", ".lst"}:
        raise DataError(f"{str(source)!r} looks like a label|path meta file; pass its class map "
                        f"with --class-map CLASS_MAP.json")
    return load_image_folder(source)


def split_dataset(ds: Dataset, seed: int, val_fraction: float | None = None,
                  test_fraction: float | None = None) -> Split:
    """Stratified train/val/test split, the same for every backend.

    Per class, files are sorted, shuffled with ``random.Random(f"{seed}:{class}")``
    and cut so that val and test each get at least one image; a fraction left at
    ``None`` is the default (``DEFAULT_VAL_FRACTION``, ``DEFAULT_TEST_FRACTION``:
    80/10/10). A folder already split into ``train/`` ``val/`` ``test/`` is used as
    given; a subset it lacks is cut from ``train/`` with its fraction, and a fraction
    given for a subset it has is refused (it would be ignored).
    """
    counts = Counter(s.label for s in ds.samples)
    for idx, cls in enumerate(ds.classes):
        if counts.get(idx, 0) == 0:
            raise DataError(f"class {cls!r} in {ds.root!r} has no images; add images or remove "
                            f"the folder")
    if len(ds.classes) < 2:
        raise DataError(f"{ds.root!r} has {len(ds.classes)} class; a classifier needs at least 2 "
                        f"class subfolders")
    given = {"val": val_fraction, "test": test_fraction}
    if ds.presplit is not None:
        kept = [name for name in ("val", "test") if ds.presplit.get(name) and given[name] is not None]
        if kept:
            flags = " and ".join(f"--{name}-fraction" for name in kept)
            raise DataError(f"{ds.root!r} is already split into "
                            f"{' '.join(n + '/' for n in ds.presplit_subsets())} folders, "
                            f"used as given; {flags} would be ignored: drop "
                            f"{'them' if len(kept) > 1 else 'it'}")
    fractions = {"val": DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction,
                 "test": DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction}

    def cut(samples: list[Sample], names: tuple[str, ...]):
        out = {n: [] for n in ("train", *names)}
        for idx, cls in enumerate(ds.classes):
            items = sorted((s for s in samples if s.label == idx), key=lambda s: s.path)
            need = 1 + len(names)
            if len(items) < need:
                where = " in train/" if ds.presplit is not None else ""
                raise DataError(
                    f"class {cls!r} has {len(items)} image(s){where}; a train/{'/'.join(names)} "
                    f"split needs at least {need} per class"
                )
            random.Random(f"{seed}:{cls}").shuffle(items)
            start = 0
            for name in names:
                n = max(1, round(len(items) * fractions[name]))
                n = min(n, len(items) - start - (need - 1 - names.index(name)))
                out[name].extend(items[start:start + n])
                start += n
            out["train"].extend(items[start:])
        return out

    if ds.presplit is not None:
        parts = {name: list(v) for name, v in ds.presplit.items() if v}
        missing = tuple(name for name in ("val", "test") if name not in parts)
        trained = {s.label for s in parts.get("train", [])}
        untrained = [c for i, c in enumerate(ds.classes) if i not in trained]
        if untrained:  # it would be tested, never trained: a silently wrong accuracy
            where = " and ".join(f"{n}/" for n in ("val", "test") if n in ds.presplit_subsets())
            more = f" (and {len(untrained) - 1} more class(es))" if len(untrained) > 1 else ""
            raise DataError(f"{ds.root!r}: class {untrained[0]!r} has images in {where} but none "
                            f"in train/{more}; add its training images to train/{untrained[0]}/ "
                            f"or remove it from {where}")
        if missing:  # cut from train/ what the folder lacks
            parts.update(cut(parts.get("train", []), missing))
        return Split(ds.classes, parts.get("train", []), parts["val"], parts["test"], ds.root,
                     given=tuple(ds.presplit_subsets()))
    parts = cut(ds.samples, ("val", "test"))
    return Split(ds.classes, parts["train"], parts["val"], parts["test"], ds.root)


def drops_last_batch(num_images: int, batch_size: int) -> bool:
    """Whether a training epoch over ``num_images`` drops its last batch: when that batch
    would hold a single image. BatchNorm in training cannot normalise one image on 1x1
    features (PyTorch refuses it after a whole epoch; Keras and slim divide by a zero
    variance), so every backend drops it the same way; the image is in other epochs'
    batches, which are shuffled."""
    return num_images > batch_size and num_images % batch_size == 1


def batch_count(num_images: int, batch_size: int, training: bool = False) -> int:
    """Batches in one pass over ``num_images``: a training epoch drops a last batch of one
    (``drops_last_batch``), an evaluation pass keeps every image."""
    if training and drops_last_batch(num_images, batch_size):
        return num_images // batch_size
    return -(-num_images // batch_size)


# ------------------------------------------------------------------ decoding

def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: EXIF orientation applied, alpha on white."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = arr.max() if arr.size else 0.0
        if img.mode == "F" and top <= 1.0:
            hi = 1.0  # float images (TIFF, EXR-like) are usually in [0, 1]
        else:
            hi = 65535.0 if img.mode.startswith("I;16") or top > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, size: int) -> np.ndarray:
    """The image at ``path`` as uint8 RGB ``[size, size, 3]`` (bilinear resize)."""
    with open_image(path) as img:
        img.draft("RGB", (size, size))  # fast JPEG downscale where possible
        rgb = to_rgb(img)
        if rgb.size != (size, size):
            rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def load_image_fitting(path: str | Path, short_side: int) -> np.ndarray:
    """The image at ``path`` as uint8 RGB with its aspect ratio kept, downscaled (bilinear)
    so that its short side is at most ``short_side``; a smaller image keeps its size."""
    with open_image(path) as img:
        img.draft("RGB", (short_side, short_side))  # JPEG: the smallest scale >= the request
        rgb = to_rgb(img)
        w, h = rgb.size
        if min(w, h) > short_side:
            scale = short_side / min(w, h)
            size = (short_side, max(1, round(h * scale))) if w <= h else \
                (max(1, round(w * scale)), short_side)
            rgb = rgb.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def load_batch(samples: list[Sample], size: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, size, size, 3]`` uint8 and labels ``[N]`` int64."""
    images = np.stack([load_image(s.path, size) for s in samples]) if samples else \
        np.zeros((0, size, size, 3), np.uint8)
    return images, np.asarray([s.label for s in samples], np.int64)
