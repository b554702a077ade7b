"""The common split as slim-format TFRecords, and a reader for them.

The format of slim's ``datasets/download_and_convert_*.py`` +
``dataset_utils.image_to_tfexample``: one ``tf.train.Example`` per image
with ``image/encoded`` (here PNG, lossless), ``image/format``,
``image/class/label``, ``image/height``, ``image/width``, and a
``labels.txt`` of ``id:name`` lines (``dataset_utils.write_label_file``).
One file per subset: ``train-00000-of-00001.tfrecord``. Pixels come from
``common.data.load_image`` (the suite's only decoder), so a slim
``dataset_data_provider`` reading these files sees the same images as every
backend. ``read_tfrecords`` parses them back with slim's ``TFExampleDecoder``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from common.data import SPLIT_NAMES, Split, load_image, open_image, to_rgb

LABELS_FILE = "labels.txt"


def tfrecord_path(out_dir: Path, subset: str) -> Path:
    return Path(out_dir) / f"{subset}-00000-of-00001.tfrecord"


def pixels(path: str, image_size: int | None) -> np.ndarray:
    """uint8 RGB pixels: ``load_image`` at ``image_size``, or at the original size."""
    if image_size:
        return load_image(path, image_size)
    with open_image(path) as img:
        return np.asarray(to_rgb(img), dtype=np.uint8)  # same conversion, no resize


def image_to_tfexample(image: np.ndarray, label: int) -> tf.train.Example:
    """slim's ``dataset_utils.image_to_tfexample`` for a PNG-encoded uint8 image."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")

    def _bytes(v):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def _int64(v):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)]))

    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": _bytes(buffer.getvalue()),
        "image/format": _bytes(b"png"),
        "image/class/label": _int64(label),
        "image/height": _int64(image.shape[0]),
        "image/width": _int64(image.shape[1]),
    }))


def write_label_file(classes, out_dir: Path) -> Path:
    """slim's ``labels.txt``: one ``id:name`` line per class."""
    path = Path(out_dir) / LABELS_FILE
    path.write_text("".join(f"{i}:{name}\n" for i, name in enumerate(classes)), encoding="utf-8")
    return path


def read_label_file(out_dir: Path) -> dict[int, str]:
    lines = (Path(out_dir) / LABELS_FILE).read_text(encoding="utf-8").splitlines()
    return {int(i): name for i, name in (line.split(":", 1) for line in lines if line)}


def export_split(split: Split, out_dir: Path, image_size: int | None = None) -> dict:
    """Write ``split`` as one TFRecord file per subset plus ``labels.txt``; return paths and counts."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files, counts = {}, {}
    for subset in SPLIT_NAMES:
        path = tfrecord_path(out_dir, subset)
        samples = split.subset(subset)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for s in samples:
                writer.write(image_to_tfexample(pixels(s.path, image_size), s.label).SerializeToString())
        files[subset], counts[subset] = str(path), len(samples)
    return {"out_dir": str(out_dir), "files": files, "counts": counts,
            "labels_file": str(write_label_file(split.classes, out_dir)),
            "num_classes": split.num_classes, "image_size": image_size,
            "format": "slim tf.train.Example: image/encoded (png), image/format, "
                      "image/class/label, image/height, image/width"}


def example_decoder():
    """slim's decoder for these records (what a ``slim.dataset.Dataset`` would hold)."""
    from tf_slim.data import tfexample_decoder

    keys_to_features = {
        "image/encoded": tf.io.FixedLenFeature((), tf.string, default_value=""),
        "image/format": tf.io.FixedLenFeature((), tf.string, default_value="png"),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64, default_value=0),
    }
    # slim's tfexample_decoder.Image() calls control_flow_ops.case, which TF 2.21 no
    # longer has (see backends/slim/compat.py); the same decode as a callback handler:
    image = tfexample_decoder.ItemHandlerCallback(
        ["image/encoded", "image/format"],
        lambda keys: tf.io.decode_image(keys["image/encoded"], channels=3, expand_animations=False))
    items_to_handlers = {"image": image, "label": tfexample_decoder.Tensor("image/class/label")}
    return tfexample_decoder.TFExampleDecoder(keys_to_features, items_to_handlers)


def read_tfrecords(out_dir: Path, subset: str):
    """Decode ``subset``'s records: (uint8 images ``[N, H, W, 3]``, int64 labels ``[N]``).

    Runs slim's ``TFExampleDecoder`` in a private graph (it is TF1 code). Images of
    different sizes (an export without ``image_size``) come back as a list.
    """
    from backends.slim import compat  # noqa: F401  (tf_slim needs the alias first)

    path = tfrecord_path(out_dir, subset)
    if not path.is_file():
        raise FileNotFoundError(f"no TFRecord file {path}")
    graph = tf.Graph()
    with graph.as_default():
        decoder = example_decoder()
        dataset = tf.data.TFRecordDataset(str(path)).map(
            lambda record: tuple(decoder.decode(record, ["image", "label"])))
        image, label = tf.compat.v1.data.make_one_shot_iterator(dataset).get_next()
    images, labels = [], []
    with tf.compat.v1.Session(graph=graph) as session:
        while True:
            try:
                im, lb = session.run([image, label])
            except tf.errors.OutOfRangeError:
                break
            images.append(im)
            labels.append(lb)
    labels = np.asarray(labels, np.int64)
    if not images:
        return np.zeros((0, 0, 0, 3), np.uint8), labels
    if len({im.shape for im in images}) == 1:
        return np.stack(images), labels
    return images, labels
