"""``bench weights where`` and ``bench weights fetch``.

``where`` is framework-free (``common.imagenet``). ``fetch`` uses each
framework's own download mechanism — torchvision weight enums, the
``keras.applications`` constructor, the slim archive — so the file lands in
exactly the cache that ``--weights imagenet`` reads.
"""

from __future__ import annotations

import sys
import tarfile
import urllib.request

from common.imagenet import DOWNLOAD_URLS, SLIM_CHECKPOINTS, expected_file, offline_message, where_rows


def where_table() -> str:
    rows = where_rows()
    w_b = max(len(r["backend"]) for r in rows)
    w_m = max(len(r["model"]) for r in rows)
    lines = [f"{'backend':{w_b}s}  {'model':{w_m}s}  present  path"]
    for r in rows:
        lines.append(f"{r['backend']:{w_b}s}  {r['model']:{w_m}s}  {'yes' if r['present'] else 'no ':7s}  "
                     f"{r['path']}")
    lines.append("")
    lines.append("Offline: copy each file to the path shown (slim: extract the .ckpt files from the "
                 "official .tar.gz there), or pass --weights PATH.")
    return "\n".join(lines)


def _fetch_pytorch(model: str) -> None:
    import torchvision.models as tvm

    enum = {"inception_v3": tvm.Inception_V3_Weights, "resnet50": tvm.ResNet50_Weights,
            "resnet18": tvm.ResNet18_Weights}[model]
    enum.IMAGENET1K_V1.get_state_dict(progress=True)


def _fetch_keras(model: str) -> None:
    import keras

    ctor = {"inception_v3": keras.applications.InceptionV3, "resnet50": keras.applications.ResNet50}[model]
    ctor(include_top=False, weights="imagenet")


def _fetch_slim(model: str) -> None:
    target = expected_file("slim", model)
    target.parent.mkdir(parents=True, exist_ok=True)
    archive = target.parent / DOWNLOAD_URLS[("slim", model)].rsplit("/", 1)[1]
    urllib.request.urlretrieve(DOWNLOAD_URLS[("slim", model)], archive)
    with tarfile.open(archive) as tar:
        tar.extractall(target.parent, filter="data")
    if not any(target.parent.glob(SLIM_CHECKPOINTS[model] + "*")):
        raise OSError(f"{archive.name} did not contain {SLIM_CHECKPOINTS[model]}")


def fetch(backend: str, model: str) -> int:
    """Download ImageNet weights for ``backend``/``model`` into its cache; 0 on success."""
    if (backend, model) not in DOWNLOAD_URLS:
        print(f"bench: error: no ImageNet weights known for {backend} {model}", file=sys.stderr)
        return 2
    fetcher = {"pytorch": _fetch_pytorch, "keras": _fetch_keras, "slim": _fetch_slim}[backend]
    try:
        fetcher(model)
    except Exception as err:  # URLError, keras' download Exception, a bad archive...
        first = (str(err).splitlines() or [""])[0][:200]
        print(f"bench: error: download failed ({type(err).__name__}: {first}); "
              f"{offline_message(backend, model)}", file=sys.stderr)
        return 1
    print(f"{backend} {model}: ImageNet weights at {expected_file(backend, model)}")
    return 0
