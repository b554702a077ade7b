"""Where each framework keeps ImageNet weights, computed without importing it.

``bench weights where`` prints these so that a user on an offline machine
knows exactly which file to place where; the backends look in the same
places before they try to download.

* PyTorch: ``torch.hub.get_dir()/checkpoints`` = ``$TORCH_HOME/hub/checkpoints``
  (``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``).
* Keras: ``$KERAS_HOME/models`` (``KERAS_HOME`` defaults to ``~/.keras``).
* TF-Slim has no cache of its own: the extracted ``*.ckpt`` goes in
  ``$TRANSFER_BENCH_DATA/weights/imagenet/slim`` (``./data`` by default), or
  is passed with ``--weights PATH``.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.models import MODELS

DOWNLOAD_URLS = {
    ("pytorch", "inception_v3"): "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
    ("pytorch", "resnet50"): "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    ("pytorch", "resnet18"): "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    ("keras", "inception_v3"): "https://storage.googleapis.com/tensorflow/keras-applications/"
                               "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ("keras", "resnet50"): "https://storage.googleapis.com/tensorflow/keras-applications/"
                           "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
    ("slim", "inception_v3"): "http://download.tensorflow.org/models/inception_v3_2016_08_28.tar.gz",
    ("slim", "resnet50"): "http://download.tensorflow.org/models/resnet_v1_50_2016_08_28.tar.gz",
}

# The checkpoint prefix inside each slim archive.
SLIM_CHECKPOINTS = {"inception_v3": "inception_v3.ckpt", "resnet50": "resnet_v1_50.ckpt"}


def torch_cache_dir() -> Path:
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints"


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", os.path.expanduser("~/.keras"))) / "models"


def slim_cache_dir() -> Path:
    from common.synthetic import data_root

    return data_root() / "weights" / "imagenet" / "slim"


def expected_file(backend: str, model: str) -> Path:
    """The file (or slim checkpoint prefix) that ``--weights imagenet`` loads."""
    if backend == "pytorch":
        return torch_cache_dir() / MODELS[model].imagenet_files["pytorch"]
    if backend == "keras":
        return keras_cache_dir() / MODELS[model].imagenet_files["keras"]
    if backend == "slim":
        return slim_cache_dir() / SLIM_CHECKPOINTS[model]
    raise ValueError(f"unknown backend {backend!r}")


def is_present(backend: str, model: str) -> bool:
    f = expected_file(backend, model)
    if backend == "slim":  # a TF checkpoint is a prefix: .index + .data-*
        return Path(str(f) + ".index").is_file() or f.is_file()
    return f.is_file()


def offline_message(backend: str, model: str) -> str:
    """One line telling an offline user which file to put where."""
    f = expected_file(backend, model)
    if backend == "slim":
        archive = MODELS[model].imagenet_files["slim"].split(" ")[0]
        return (f"ImageNet weights for slim {model} not found: extract {f.name} from {archive} "
                f"into {f.parent}/ (or pass --weights PATH/{f.name})")
    env = "TORCH_HOME" if backend == "pytorch" else "KERAS_HOME"
    return (f"ImageNet weights for {backend} {model} not found and could not be downloaded: "
            f"place {f.name} at {f} (directory set by {env}) or pass --weights PATH")


def where_rows() -> list[dict]:
    rows = []
    for model, spec in MODELS.items():
        for backend in spec.frameworks():
            rows.append({"backend": backend, "model": model, "file": expected_file(backend, model).name,
                         "path": str(expected_file(backend, model)), "present": is_present(backend, model),
                         "source": DOWNLOAD_URLS.get((backend, model), "")})
    return rows
