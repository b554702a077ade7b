"""``bench predict --imagenet``: the 1000 ImageNet classes of real photos, in every backend.

For a model whose ImageNet weights are the same tensors in every backend
(``ModelSpec.shared_imagenet``: EfficientNet-Lite0), each photo is decoded and
normalised once by the common data layer (``common.data.load_image``, the
weights' own normalisation), the weights are converted once to canonical
tensors (cached, as ``--weights imagenet`` does) and every backend computes
the logits of the model holding them, eval mode, fp32, in a child process of
its own (``benchmarks.weights_worker outputs``, the code of ``bench parity``).
The probabilities are a softmax (scipy) here, the class names come from
timm's bundled ImageNet synset files (``timm/data/_info``: the 1000 WordNet
ids in class order and their lemmas), read without importing timm.

An image is a file path or ``skimage:NAME``, one of scikit-image's bundled
photos (``skimage.data.chelsea``, ``coffee``, ``astronaut``, ``rocket``...).
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.special import softmax

from backends.base import BackendError
from benchmarks import conversion
from benchmarks.parity import parity_backends, shared_imagenet_file
from common import canonical
from common.data import load_image
from common.models import get_model
from common.preprocess import get_normalisation

SKIMAGE = "skimage:"
DEFAULT_IMAGES = ("skimage:chelsea", "skimage:coffee")
# the largest probability difference between two backends that the command accepts
TARGET_PROBABILITY_MAX_ABS = 1e-4


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in class order: timm's ``imagenet_synsets.txt`` (WordNet
    ids) mapped through ``imagenet_synset_to_lemma.txt`` (``n02124075`` -> ``Egyptian cat``)."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise BackendError("the ImageNet class names come from timm's bundled synset files: "
                           "pip install -e '.[lite0]' (or pip install timm)")
    info = Path(list(spec.submodule_search_locations)[0]) / "data" / "_info"
    ids = (info / "imagenet_synsets.txt").read_text(encoding="utf-8").split()
    lemmas = dict(line.split("\t", 1) for line in
                  (info / "imagenet_synset_to_lemma.txt").read_text(encoding="utf-8").splitlines()
                  if "\t" in line)
    if len(ids) != 1000:
        raise BackendError(f"{info / 'imagenet_synsets.txt'} has {len(ids)} classes, not 1000")
    return [lemmas[i].strip() for i in ids]


def check_images(images: list[str]) -> None:
    """One line for an image that is neither a file nor one of scikit-image's photos."""
    for image in images:
        if image.startswith(SKIMAGE):
            name = image[len(SKIMAGE):]
            if importlib.util.find_spec("skimage") is None:
                raise BackendError(f"{image}: scikit-image is not installed (pip install -e "
                                   f"'.[lite0]')")
            import skimage.data

            if not callable(getattr(skimage.data, name, None)):
                raise BackendError(f"{image}: scikit-image has no photo {name!r} (e.g. chelsea, "
                                   f"coffee, astronaut, rocket)")
        elif not Path(image).is_file():
            raise BackendError(f"image {image!r} does not exist; pass a file or skimage:NAME "
                               f"(skimage:chelsea)")


def load_images(images: list[str], size: int, preprocessing: str) -> np.ndarray:
    """``[N, size, size, 3]`` float32: each image decoded by ``common.data.load_image``
    (scikit-image's photos written to a PNG first) and normalised."""
    norm = get_normalisation(preprocessing)
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
        for i, image in enumerate(images):
            path = Path(image)
            if image.startswith(SKIMAGE):
                import skimage.data

                path = Path(tmp) / f"{i}.png"
                Image.fromarray(getattr(skimage.data, image[len(SKIMAGE):])()).convert("RGB").save(path)
            out.append(norm.apply(load_image(path, size)))
    return np.stack(out).astype(np.float32)


def predict_imagenet(model: str, images: list[str], *, backends: list[str] | None = None,
                     image_size: int | None = None, top_k: int = 5,
                     in_process: bool = False) -> dict:
    """Every backend's ImageNet probabilities for ``images``: ``{"images", "backends",
    "top": {backend: [[(class index, name, probability), ...] per image]}, "max_abs_diff"
    (the largest probability difference between two backends), "digest", ...}``.
    ``in_process``: compute every backend here (a caller that holds every framework)."""
    spec = get_model(model)
    wheel = shared_imagenet_file(model)
    size = image_size or spec.default_size
    names, skipped = parity_backends(model, backends)
    if not names:
        raise BackendError(f"no backend here converts {model}: "
                           f"{'; '.join(f'{k}: {v}' for k, v in skipped.items())}")
    check_images(images)
    classes = imagenet_class_names()
    batch = load_images(images, size, spec.shared_imagenet.preprocessing)
    npz, meta = conversion.canonical_of_path(model, spec.shared_imagenet.reader, wheel,
                                             in_process=in_process)
    logits = {}
    if in_process:
        from benchmarks.parity import backend_block_outputs

        tensors, _ = canonical.load(npz)
        logits = {b: backend_block_outputs(b, model, tensors, batch)["logits"] for b in names}
    else:
        with tempfile.TemporaryDirectory(prefix="bench-predict-") as tmp:
            np.savez(Path(tmp) / "images.npz", images=batch)
            for b in names:
                out = Path(tmp) / f"{b}.npz"
                conversion.run_weights_worker(["outputs", "--backend", b, "--model", model,
                                               "--weights", npz, "--images",
                                               Path(tmp) / "images.npz", "--output", out])
                with np.load(out) as f:
                    logits[b] = f["logits"]
    probabilities = {b: softmax(v.astype(np.float64), axis=1) for b, v in logits.items()}
    top = {b: [[(int(c), classes[c], float(p[c])) for c in np.argsort(-p)[:top_k]] for p in probs]
           for b, probs in probabilities.items()}
    diff = max((float(np.max(np.abs(probabilities[a] - probabilities[b])))
                for a in names for b in names if a < b), default=0.0)
    return {"model": model, "images": list(images), "image_size": size, "backends": names,
            "skipped": skipped, "digest": meta["digest"], "weights": str(wheel),
            "top": top, "max_abs_diff": diff, "target": TARGET_PROBABILITY_MAX_ABS,
            "ok": diff <= TARGET_PROBABILITY_MAX_ABS}


def predict_imagenet_text(record: dict) -> str:
    """Per image, the top classes and each backend's probability of them."""
    names = record["backends"]
    lines = [f"{record['model']} ImageNet weights (digest {record['digest'][:16]}, the same "
             f"tensors in {', '.join(names)}), {record['image_size']} px"]
    for i, image in enumerate(record["images"]):
        lines += ["", f"{image}:", f"  {'class':<40} " + " ".join(f"{b:>10}" for b in names)]
        for index, name, _ in record["top"][names[0]][i]:
            cells = []
            for b in names:
                found = {c: p for c, _, p in record["top"][b][i]}
                cells.append(f"{found[index]:>10.4f}" if index in found else f"{'-':>10}")
            lines.append(f"  {f'{index} {name}'[:40]:<40} " + " ".join(cells))
    verdict = "within" if record["ok"] else "NOT within"
    lines += ["", f"largest probability difference between two backends: "
                  f"{record['max_abs_diff']:.1e}, {verdict} {record['target']:g}"]
    for name, why in record["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    return "\n".join(lines)
