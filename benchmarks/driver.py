"""One (backend, recipe, seed) run, the same for every backend.

``run(config)`` is what the child process of ``bench run`` executes: prepare
the common split, resolve the weights (pretraining the backbone on the
``shapes`` domain when ``--weights source`` has no cached checkpoint), then
for each phase ask the backend to express it natively and drive the epochs:
learning rate from ``common.schedule``, validation metrics from
``common.metrics``, best-on-val and last checkpoints in the backend's native
format, a ``state.json`` that ``--resume`` continues from. Backends are reached
only through the registry.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import time
import traceback
from pathlib import Path

import numpy as np

from backends import native
from backends.base import Backend, BackendError, WeightsRequest, backend_info, get_backend
from benchmarks import conversion
from common import canonical, parallel, synthetic
from common.config import Phase, PretrainConfig, RunConfig, validate_run
from common.data import DataError, Split, drops_last_batch, load_dataset, split_dataset
from common.linear import fit_linear_probe
from common.locks import claim_directory
from common.metrics import classification_metrics
from common.models import get_model
from common.parallel import is_main_process
from common.paths import cache_root, disk_full_message, is_disk_full
from common.preprocess import get_preset
from common.results import SchemaError, base_result, write_json_atomic, write_result
from common.timing import peak_rss_bytes

STATE_FILE = "state.json"
log = logging.getLogger(__name__)

# What "train img/s" times in a linear-probe run, whose head is fitted by scikit-learn
# outside the framework: the framework's head-only step (frozen backbone), the same in
# every backend. Every other run times its last phase.
LINEAR_PROBE_THROUGHPUT_PHASE = Phase(name="head (throughput)", train="head", optimizer="sgd",
                                      learning_rate=1e-3, augment=False)


def throughput_phase_record(phase: Phase, spec) -> dict:
    """What a train img/s figure measured: which blocks trained, with which optimizer."""
    record = {"name": phase.name, "train": phase.train,
              "trainable_blocks": list(phase.trainable_blocks(spec)) + ["head"],
              "optimizer": phase.optimizer, "bn": phase.bn}
    chosen = native.selection(phase, spec.name)
    if chosen is not None:  # named in one framework's terms: its canonical reading
        record["trainable_blocks"] = chosen.describe()["canonical_blocks"]
        record["native_selection"] = chosen.describe()
    return record


def default_image_size(config: RunConfig) -> int:
    """``--image-size`` or, by default, the model's minimum for synthetic data
    (CPU-sized) and the model's native size for user data."""
    spec = get_model(config.model.name)
    if config.data.image_size:
        return config.data.image_size
    if config.data.source == "synthetic":
        return max(spec.min_size, 64)
    return spec.default_size


def prepare_split(config: RunConfig) -> Split:
    """The common split for ``config.data`` (generating the synthetic target if needed).

    Unreadable files are skipped (listed in ``split.skipped``) or fail the run
    with ``--strict``; copies of one file are kept once (``split.duplicates``);
    images smaller than the model's minimum are reported.
    """
    d = config.data
    if d.source == "synthetic":
        root = synthetic.generate(synthetic.DEFAULT_TARGET, progress=False)
        ds = load_dataset(root)
    else:
        ds = load_dataset(d.source, d.class_map)
    from common import verify  # local: keeps the import light for `bench list`

    infos = verify.scan(ds)
    ds, skipped, duplicates = verify.usable_dataset(ds, strict=d.strict, infos=infos)
    small = verify.smaller_than(infos, get_model(config.model.name).min_size)
    if small:
        log.warning(f"warning: {len(small)} image(s) are smaller than {config.model.name}'s minimum "
                    f"{get_model(config.model.name).min_size} px and will be upscaled "
                    f"(e.g. {small[0].path})")
    if duplicates:
        log.warning(f"warning: {len(duplicates)} duplicate file(s) kept once, so that no image is "
                    f"in two subsets (e.g. {duplicates[0][0]}: {duplicates[0][1]})")
    split = split_dataset(ds, d.split_seed, d.val_fraction, d.test_fraction)
    split.skipped, split.duplicates = skipped, duplicates
    return split


# --------------------------------------------------------------- source weights

SOURCE_CACHE_VERSION = 2  # 2: one source model per sweep, converted to every backend


def pretrain_settings(config: RunConfig) -> PretrainConfig:
    """How this run's source model is pretrained: ``config.pretrain`` with the model's own
    learning rate (``ModelSpec.pretrain_learning_rate``) unless the config sets one. The
    cache key holds these resolved values, so a model whose rate is the old global 1e-3
    (InceptionV3) keeps its cache entry and digest."""
    p = config.pretrain
    if p.learning_rate is None:
        p = dataclasses.replace(p, learning_rate=get_model(config.model.name).pretrain_learning_rate)
    return p


def source_cache_dir(config: RunConfig, image_size: int, source_backend: str | None = None) -> Path:
    """The cache folder of the source model pretrained in ``source_backend`` (shared by
    every backend's runs that start from it); by default the one ``config``'s run starts
    from (``conversion.source_backend``)."""
    source_backend = source_backend or conversion.source_backend(config.model.name, config.backend)
    p = pretrain_settings(config)
    key = json.dumps({
        "backend": source_backend, "model": config.model.name, "size": image_size,
        "pretrain": dataclasses.asdict(p), "aux": config.model.aux_logits,
        "domain": dataclasses.replace(synthetic.DEFAULT_SOURCE,
                                      images_per_class=p.images_per_class).digest(),
        "alignment": conversion.alignment_record(source_backend, config.model.name, "source"),
        "version": SOURCE_CACHE_VERSION,
    }, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return (cache_root() / "weights" / "source" /
            f"{config.model.name}-{image_size}px-{source_backend}-{digest}")


def pretrain_source(config: RunConfig, image_size: int, cache: Path) -> dict:
    """Pretrain ``config.backend``'s model on ``shapes`` in this process (fp32, seed 0) and
    save it as ``cache/<backend>/source``; returns its record (checkpoint relative to ``cache``,
    the settings and the mean training loss of each epoch)."""
    p = pretrain_settings(config)
    spec = dataclasses.replace(synthetic.DEFAULT_SOURCE, images_per_class=p.images_per_class)
    root = synthetic.generate(spec, progress=False)
    split = split_dataset(load_dataset(root), seed=0, val_fraction=0.1, test_fraction=0.1)
    phase = Phase(name="pretrain", train="all", optimizer=p.optimizer, learning_rate=p.learning_rate,
                  epochs=p.epochs, schedule="cosine", augment=True, bn="train")
    # the cache key holds neither the recipe nor the precision: pretraining uses the simple
    # preset, no dropout and fp32 whatever the run's recipe says (a run labelled fp32 must
    # not start from a bf16-trained source)
    pre_config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, batch_size=p.batch_size, seed=0,
                                          precision="fp32", devices=1, nnodes=1, node_rank=0),
        recipe=dataclasses.replace(config.recipe, preprocessing="simple", dropout=0.0,
                                   checkpoint_exclude_scopes=()))
    log.info(f"pretraining {config.model.name} in {config.backend} on shapes "
             f"({len(split.train)} images, {p.epochs} epochs, {p.optimizer} {p.learning_rate:g}) "
             f"-> {cache}")
    losses: list[float] = []
    t0 = time.perf_counter()
    backend = get_backend(config.backend)(pre_config, cache / "train")
    try:
        backend.setup(split, image_size)
        backend.build(get_model(config.model.name), split.num_classes, WeightsRequest("none"), 0)
        backend.apply_phase(phase, 0)

        def pretrain_epoch_end(epoch: int, lr: float, stats: dict) -> None:
            losses.append(float(stats["loss"]))
            log.info(f"  pretrain epoch {epoch + 1}/{phase.epochs}: loss {stats['loss']:.3f} "
                     f"train top1 {stats['top1']:.3f}")

        backend.fit_phase(phase, 0, 0, pretrain_epoch_end)
        val = classification_metrics(backend.predict("val"), _labels(split, "val"), split.classes)
        ckpt = backend.save(cache / config.backend / "source")
    finally:
        backend.close()
    meta = {"checkpoint": Path(ckpt).relative_to(cache).as_posix(), "classes": list(split.classes),
            "val_top1": val["top1"], "seconds": time.perf_counter() - t0, "epochs": p.epochs,
            "split_digest": split.digest(), "images": len(split.train),
            "pretrained_in": config.backend, "optimizer": p.optimizer,
            "learning_rate": p.learning_rate, "losses": losses}
    log.info(f"  source model: val top1 {val['top1']:.3f} in {meta['seconds']:.0f}s")
    return meta


def pretrain_and_export_source(config: RunConfig, image_size: int, cache: Path) -> dict:
    """``pretrain_source``, then (in the same process and framework) its canonical weights
    ``cache/canonical.npz`` and their digest, when the model converts."""
    meta = pretrain_source(config, image_size, cache)
    meta["source_backend"] = config.backend
    model = config.model.name
    if conversion.can_convert(config.backend, model):
        converted = conversion.to_canonical(config.backend, model, cache / meta["checkpoint"],
                                            cache / "canonical.npz", in_process=True)
        meta.update(digest=converted["digest"], canonical="canonical.npz",
                    dropped=converted.get("dropped", []))
    else:
        # no canonical form (ResNet-50: three architectures): the digest of this backend's
        # own tensors, which says "not the same weights" next to another backend's
        meta.update(digest=None, conversion=canonical.conversion_refusal(model) or
                    f"the {config.backend} backend does not convert {model}")
    return meta


def ensure_source_checkpoint(config: RunConfig, image_size: int) -> tuple[Path, dict]:
    """This run's native checkpoint of the sweep's source model, and its record.

    The source model is pretrained once, in ``conversion.source_backend`` (the first
    installed of pytorch, keras, slim; in this process when that is the run's backend,
    else in a child process), read into canonical weights (the digest), and written in
    the run's backend's format (in this process: it runs that framework). A model that
    does not convert (ResNet-50) is pretrained per backend, as its own source. The cache
    entry is claimed (``common.locks``) while it is built, so concurrent runs wait for one
    pretraining and one conversion per backend.
    """
    backend, model = config.backend, config.model.name
    source = conversion.source_backend(model, backend)
    cache = source_cache_dir(config, image_size, source)
    meta_file = cache / "source.json"
    with claim_directory(cache, wait=None):
        cached = meta_file.is_file()
        if cached:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        else:
            pre_config = dataclasses.replace(config, backend=source)
            if source == backend:
                meta = pretrain_and_export_source(pre_config, image_size, cache)
            else:
                log.info(f"pretraining the source model in {source} (a child process)")
                config_file = cache / "pretrain-config.json"
                write_json_atomic(config_file, pre_config.to_dict())
                meta = conversion.run_weights_worker(
                    ["pretrain", "--config", config_file, "--image-size", image_size,
                     "--cache", cache], progress=True)["meta"]
            write_json_atomic(meta_file, meta)
        if source == backend:
            native = cache / meta["checkpoint"]
        else:
            folder = cache / backend
            if not folder.is_dir():
                log.info(f"converting the {source} source model to {backend} "
                         f"(digest {meta['digest'][:12]})")
                conversion.write_native_atomically(backend, model, cache / meta["canonical"],
                                                   folder, "source", in_process=True)
            native = folder / f"source{backend_info(backend).checkpoint_suffix}"
    info = {**meta, "checkpoint": str(native), "cached": cached,
            "source_checkpoint": str(cache / meta["checkpoint"]),
            "converted_from": None if source == backend else str(cache / meta["checkpoint"])}
    return native, info


def resolve_weights(config: RunConfig, split: Split, image_size: int) -> tuple[WeightsRequest, dict]:
    """The WeightsRequest for this run and a record of where the weights came from
    (``digest``, ``source_backend``, ``converted_from`` and ``alignment``)."""
    request, info = _resolve_weights(config, split, image_size)
    info["alignment"] = conversion.alignment_record(config.backend, config.model.name, info["kind"])
    info["ignore_missing_vars"] = config.ignore_missing_vars
    return request, info


def _resolve_weights(config: RunConfig, split: Split, image_size: int) -> tuple[WeightsRequest, dict]:
    weights = config.model.weights
    ignore = config.ignore_missing_vars
    if config.recipe.init == "random" or weights == "none":
        return WeightsRequest("none"), {"kind": "none", "digest": None}
    if weights == "imagenet":
        # each framework's own ImageNet file: not the same tensors, no canonical digest
        return (WeightsRequest("imagenet", ignore_missing_vars=ignore),
                {"kind": "imagenet", "digest": None, "source_backend": config.backend,
                 "conversion": f"{config.backend}'s own ImageNet file, not converted"})
    if weights == "source":
        ckpt, meta = ensure_source_checkpoint(config, image_size)
        rows = {}
        if config.train.reuse_head_rows:
            src = {c: i for i, c in enumerate(meta["classes"])}
            rows = {i: src[c] for i, c in enumerate(split.classes) if c in src}
        return (WeightsRequest("path", str(ckpt), rows, ignore_missing_vars=ignore),
                {"kind": "source", **meta, "reused_head_rows": rows})
    path = Path(weights)
    if not (path.exists() or Path(weights + ".index").exists()):  # a TF checkpoint is a prefix
        raise BackendError(f"weights file {weights!r} does not exist; pass --weights source, none, "
                           f"imagenet or the path of a native checkpoint")
    return path_weights(config, weights)


def path_weights(config: RunConfig, path: str) -> tuple[WeightsRequest, dict]:
    """``--weights PATH``: a native checkpoint of any backend (by ``conversion.detect_format``)
    or a canonical ``.npz``; another framework's is converted to this run's (cached)."""
    backend, model = config.backend, config.model.name
    ignore = config.ignore_missing_vars
    found = conversion.detect_format(path)
    info = {"kind": "path", "path": str(Path(path).resolve()), "format": found}
    if found == backend or found is None:  # this framework's own file: restored as it is
        digest, why = None, None
        if found is not None and conversion.can_convert(backend, model):
            digest = conversion.canonical_of_path(model, backend, path, in_process=True)[1]["digest"]
        elif found is None:
            why = "not a checkpoint format the suite converts (by its name)"
        else:
            why = canonical.conversion_refusal(model) or f"the {backend} backend does not convert {model}"
        return (WeightsRequest("path", path, ignore_missing_vars=ignore),
                {**info, "digest": digest, "source_backend": backend, "converted_from": None,
                 "checkpoint": path, "conversion": why})
    conversion.check_convertible(model, found, backend)
    log.info(f"converting {found} checkpoint {path} to {backend}")
    npz, meta = conversion.canonical_of_path(model, found, path, in_process=False)
    native = conversion.native_of_path(model, backend, npz, in_process=True)
    return (WeightsRequest("path", str(native), ignore_missing_vars=ignore),
            {**info, "digest": meta["digest"], "source_backend": found,
             "converted_from": str(Path(path).resolve()), "checkpoint": str(native),
             "dropped": meta.get("dropped", [])})


# --------------------------------------------------------------------- running

def _labels(split: Split, subset: str) -> np.ndarray:
    return np.asarray([s.label for s in split.subset(subset)], np.int64)


def _metrics(logits: np.ndarray, split: Split, subset: str) -> dict:
    """``common.metrics`` of ``subset``; the test subset also keeps every image's predicted
    and true class index (split order), for paired comparisons between backends."""
    labels = _labels(split, subset)
    metrics = classification_metrics(logits, labels, split.classes)
    if subset == "test":
        metrics.update(predictions=np.asarray(logits).argmax(axis=1).tolist(), labels=labels.tolist())
    return metrics


def _evaluate(backend: Backend, split: Split, subset: str) -> dict:
    return _metrics(backend.predict(subset), split, subset)


def _load_state(run_dir: Path) -> dict | None:
    f = run_dir / STATE_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError:
        return None


def _write_phase_text(run_dir: Path, index: int, report: dict) -> None:
    """Append how the backend expressed this phase to ``phases.txt`` (for people, not parsing)."""
    lines = [f"phase {index + 1} '{report['name']}': {report['trainable_params']:,} of "
             f"{report['total_params']:,} parameters trainable in {report['trainable_tensors']} tensors; "
             f"blocks: {', '.join(report['trainable_blocks']) or 'head only'}"]
    lines += [f"    {key}: {value}" for key, value in report.get("native", {}).items()]
    if not is_main_process():
        return
    with open(run_dir / "phases.txt", "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def train_phases(backend: Backend, config: RunConfig, split: Split, run_dir: Path,
                 earlier_attempts: list[float] = (), started: float | None = None) -> dict:
    """Run every phase with per-epoch validation, checkpoints and resume. ``state.json``
    also keeps the wall seconds of each attempt (``earlier_attempts`` + this one, which
    began at ``started``), so that a resumed run reports its whole wall time."""
    started = time.perf_counter() if started is None else started
    recipe = config.recipe
    state = _load_state(run_dir) or {"done": [], "curves": [], "best": None, "phases": []}
    done = {tuple(x) for x in state["done"]}
    ckpt_last, ckpt_best = run_dir / "checkpoints" / "last", run_dir / "checkpoints" / "best"
    images_seen = state["curves"][-1]["images_seen"] if state["curves"] else 0
    global_epoch = len(state["curves"])
    resuming = bool(done)  # an interrupted run: the last checkpoint holds model + optimizer

    def epoch_end(pi: int, phase: Phase, epoch: int, lr: float, stats: dict) -> None:
        """Validation, best/last checkpoints and state.json after each epoch (every backend)."""
        nonlocal global_epoch, images_seen
        val = _evaluate(backend, split, "val")
        global_epoch += 1
        images_seen += stats["images"]
        point = {"phase": pi, "phase_name": phase.name, "epoch": epoch + 1,
                 "global_epoch": global_epoch, "images_seen": images_seen, "lr": lr,
                 "train_loss": stats["loss"], "train_top1": stats["top1"],
                 "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                 "seconds": stats["seconds"],
                 "images_per_second": stats["images"] / max(stats["seconds"], 1e-9)}
        state["curves"].append(point)
        backend.log_scalars(global_epoch, {"val/top1": val["top1"], "val/loss": val["loss"],
                                           "train/loss": stats["loss"], "train/top1": stats["top1"],
                                           "lr": lr})
        best = state["best"]
        if best is None or (val["top1"], -val["loss"]) > (best["val_top1"], -best["val_loss"]):
            backend.save(ckpt_best)
            state["best"] = {"global_epoch": global_epoch, "val_top1": val["top1"],
                             "val_loss": val["loss"]}
        backend.save(ckpt_last)
        done.add((pi, epoch))
        state["done"] = sorted(done)
        state["attempt_seconds"] = [*earlier_attempts, time.perf_counter() - started]
        if is_main_process():  # every rank holds the same state; rank 0 writes it
            write_json_atomic(run_dir / STATE_FILE, state)
        log.info(f"  epoch {global_epoch} ({phase.name} {epoch + 1}/{phase.epochs}) lr {lr:.2e}: "
            f"loss {stats['loss']:.3f} train {stats['top1']:.3f} val {val['top1']:.3f} "
            f"({point['images_per_second']:.1f} img/s)")

    for pi, phase in enumerate(recipe.phases):
        if all((pi, e) in done for e in range(phase.epochs)):
            continue
        report = backend.apply_phase(phase, pi)
        report.update(name=phase.name, train=phase.train, optimizer=phase.optimizer,
                      learning_rate=phase.learning_rate, head_lr_multiplier=phase.head_lr_multiplier,
                      epochs=phase.epochs, bn=phase.bn, augment=phase.augment)
        state["phases"] = [p for p in state["phases"] if p.get("index") != pi] + [{"index": pi, **report}]
        _write_phase_text(run_dir, pi, report)
        log.info(f"phase {pi + 1}/{len(recipe.phases)} '{phase.name}': {report['trainable_params']:,} of "
            f"{report['total_params']:,} parameters trainable ({', '.join(report['trainable_blocks']) or 'head only'})")
        if resuming:
            backend.restore(ckpt_last)
            log.info(f"resumed from {ckpt_last} after {len(done)} epoch(s)")
            resuming = False
        # epochs finish in order, so the missing ones are the end of the phase
        first_epoch = min(e for e in range(phase.epochs) if (pi, e) not in done)
        backend.fit_phase(phase, first_epoch, global_epoch, functools.partial(epoch_end, pi, phase))
    backend.restore(ckpt_best)
    return state


def linear_probe(backend: Backend, config: RunConfig, split: Split, weights_info: dict,
                 image_size: int) -> dict:
    """Features computed once and cached on disk; a scikit-learn logistic-regression head,
    its L2 strength chosen on the validation split (``common.linear``)."""
    key = json.dumps({"backend": config.backend, "model": config.model.name, "size": image_size,
                      "weights": {k: weights_info.get(k) for k in ("kind", "checkpoint", "path")},
                      "split": split.digest()}, sort_keys=True)
    cache = cache_root() / "features" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    t0 = time.perf_counter()
    if cache.is_file():
        feats = dict(np.load(cache))
        log.info(f"linear probe: features from cache {cache}")
        cached = True
    else:
        feats = {s: backend.extract_features(s) for s in ("train", "val", "test")}
        cached = False
        tmp = cache.with_suffix(f".tmp{os.getpid()}.npz")
        try:
            if is_main_process():  # every rank holds the gathered features; rank 0 caches them
                cache.parent.mkdir(parents=True, exist_ok=True)
                np.savez(tmp, **feats)
                os.replace(tmp, cache)
        except OSError as err:  # a read-only or full cache: the probe goes on without it
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            log.warning(f"warning: features not cached ({err.strerror or err}: {cache.parent}); "
                        f"the probe goes on")
    feature_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    probe = fit_linear_probe(feats["train"], _labels(split, "train"), feats["val"],
                             _labels(split, "val"), split.num_classes, seed=config.train.seed)
    fit_seconds = time.perf_counter() - t1
    log.info(f"linear probe: C = {probe.C:g} (L2 {1 / probe.C:g}) chosen on {len(split.val)} "
             f"validation images over {len(probe.search)} values")
    metrics = {s: _metrics(probe.logits(feats[s]), split, s) for s in ("val", "test")}
    phase = config.recipe.phases[0]
    point = {"phase": 0, "phase_name": phase.name, "epoch": 1, "global_epoch": 1,
             "images_seen": len(split.train), "lr": None, "train_loss": None, "train_top1": None,
             "val_loss": metrics["val"]["loss"], "val_top1": metrics["val"]["top1"],
             "val_top5": metrics["val"]["top5"], "seconds": feature_seconds + fit_seconds,
             "images_per_second": None}
    return {"metrics": metrics, "curves": [point], "feature_cache": str(cache), "cached": cached,
            "feature_seconds": feature_seconds, "fit_seconds": fit_seconds,
            "probe": probe.describe(),
            "phases": [{"index": 0, "name": phase.name, "train": "linear", "trainable_blocks": [],
                        "trainable_params": probe.num_parameters,
                        "total_params": None, "trainable_tensors": 2,
                        "native": {"features": "backend.extract_features (cached .npz)",
                                   "head": f"sklearn LogisticRegression(C={probe.C:g}, "
                                           f"solver='lbfgs') on standardised features"}}]}


def run(config: RunConfig) -> dict:
    """Run ``config`` end to end and return its result (also written to result.json)."""
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    result = base_result(config.backend, config.recipe.name, config.train.seed,
                         config.model.name, config.to_dict())
    t_start = time.perf_counter()
    earlier = _earlier_attempts(run_dir)
    backend = None
    try:
        validate_run(config)
        image_size = default_image_size(config)
        split = prepare_split(config)
        if is_main_process():
            split.write(run_dir / "split.json")
        result["data"] = {"source": config.data.source, "root": split.root,
                          "split_digest": split.digest(), "classes": list(split.classes),
                          "num_classes": split.num_classes, "image_size": image_size,
                          "counts": split.counts(), "skipped_files": len(split.skipped),
                          "skipped": [list(x) for x in split.skipped[:50]],
                          "duplicate_files": len(split.duplicates),
                          "duplicates": [list(x) for x in split.duplicates[:50]]}
        if split.skipped:
            log.info(f"skipped {len(split.skipped)} unreadable file(s); see split.json")
        bs = config.train.batch_size
        result["data"]["drops_last_batch"] = drops_last_batch(len(split.train), bs)
        if result["data"]["drops_last_batch"] and not config.recipe.is_linear_probe:
            log.info(f"each training epoch drops its last batch, of 1 image ({len(split.train)} "
                     f"training images, batch {bs}): BatchNorm cannot normalise a single image")
        t_pre = time.perf_counter()
        request, weights_info = resolve_weights(config, split, image_size)
        pretrain_seconds = time.perf_counter() - t_pre
        result["weights"] = weights_info
        backend = get_backend(config.backend)(config, run_dir)
        result["versions"].update(backend.frameworks())
        result["device"] = backend.device()
        backend.setup(split, image_size)
        spec = get_model(config.model.name)
        backend.build(spec, split.num_classes, request, config.recipe.head_hidden_units)
        if parallel.is_parallel(config.train):  # the global-batch rule and the engine that ran
            result["parallel"] = backend.parallel()
        if backend.restore_report:  # counts, and what ignore_missing_vars left at init
            result["weights"]["restore"] = backend.restore_report
        # every training-step switch's setting (common.config.FIDELITY_SWITCHES)
        result["fidelity"] = config.recipe.fidelity.settings()
        result["preprocessing"] = {"normalisation": backend.preprocessing_name(),
                                   **get_preset(config.recipe.preprocessing).describe()}
        summary = backend.model_summary()
        if summary and is_main_process():
            (run_dir / "model_summary.txt").write_text(summary, encoding="utf-8")
        t_train = time.perf_counter()
        if config.recipe.is_linear_probe:
            probe = linear_probe(backend, config, split, weights_info, image_size)
            result.update(curves=probe["curves"], phases=probe["phases"], val=probe["metrics"]["val"],
                          test=probe["metrics"]["test"],
                          best={"global_epoch": 1, "val_top1": probe["metrics"]["val"]["top1"]},
                          linear_probe={k: probe[k] for k in ("feature_cache", "cached",
                                                              "feature_seconds", "fit_seconds",
                                                              "probe")})
        else:
            state = train_phases(backend, config, split, run_dir, earlier, t_start)
            result.update(curves=state["curves"], best=state["best"],
                          phases=sorted(state["phases"], key=lambda p: p["index"]),
                          val=_evaluate(backend, split, "val"), test=_evaluate(backend, split, "test"))
        train_seconds = time.perf_counter() - t_train
        t_tp = time.perf_counter()
        if config.recipe.is_linear_probe:
            backend.apply_phase(LINEAR_PROBE_THROUGHPUT_PHASE, len(config.recipe.phases))
        elif backend.phase is None:  # a resumed run whose epochs had all finished
            backend.apply_phase(config.recipe.phases[-1], len(config.recipe.phases) - 1)
        result["throughput"] = backend.throughput(
            config.train.batch_size, config.train.precision, config.train.throughput_steps, warmup=2)
        result["throughput"]["phase"] = throughput_phase_record(backend.phase, spec)
        # what ran, observed by the backend in its fit and predict paths (not the request)
        result["precision"] = backend.precision_used()
        if config.recipe.is_linear_probe:
            result["precision"]["train"] = "fp64 (common.linear on the cached features)"
        epochs = [c for c in result["curves"] if c.get("images_per_second")]
        if epochs:
            result["throughput"]["end_to_end_train_images_per_second"] = epochs[-1]["images_per_second"]
        this_attempt = time.perf_counter() - t_start
        # a resumed run: its wall time is every attempt's (each up to its last checkpoint
        # or its failure), and says so
        result["times"] = {"total_seconds": this_attempt + sum(earlier),
                           "attempt_seconds": [*earlier, this_attempt],
                           "pretrain_seconds": pretrain_seconds, "train_seconds": train_seconds,
                           "throughput_seconds": time.perf_counter() - t_tp}
        if earlier:
            log.info(f"wall time {this_attempt + sum(earlier):.1f}s: this attempt {this_attempt:.1f}s "
                     f"+ {sum(earlier):.1f}s in {len(earlier)} earlier attempt(s)")
        result["peak_rss_bytes"] = peak_rss_bytes()
        result["status"] = "ok"
        log.info(f"test top1 {result['test']['top1']:.3f} top5 {result['test']['top5']:.3f}")
    except Exception as err:  # bad input or a framework crash: recorded, the sweep goes on
        if is_disk_full(err):
            message = disk_full_message(err.filename or run_dir)
        elif isinstance(err, (DataError, BackendError, canonical.ConversionError)):
            message = f"{err}"
        else:
            message = f"{type(err).__name__}: {err}"
        result["error"] = " ".join(message.split())
        result["traceback"] = traceback.format_exc()
    finally:
        if backend is not None:
            backend.close()
    if not is_main_process():  # rank 0 writes result.json (and records a failed attempt)
        return result
    if result["status"] != "ok":
        this_attempt = time.perf_counter() - t_start
        result.setdefault("times", {"total_seconds": this_attempt + sum(earlier),
                                    "attempt_seconds": [*earlier, this_attempt]})
        _record_attempt(run_dir, [*earlier, this_attempt])
    try:
        write_result(run_dir / "result.json", result)
    except SchemaError as err:  # a field of the wrong type: keep the numbers, say what is wrong
        result.update(status="failed", error=f"result.json does not fit the schema: {err}")
        write_json_atomic(run_dir / "result.json", result)
    return result


def _earlier_attempts(run_dir: Path) -> list[float]:
    """Wall seconds of the earlier attempts at this run (``state.json``), oldest first."""
    try:
        return [float(x) for x in (_load_state(run_dir) or {}).get("attempt_seconds", [])]
    except (TypeError, ValueError, AttributeError):
        return []


def _record_attempt(run_dir: Path, attempt_seconds: list[float]) -> None:
    """Keep a failed attempt's wall time in ``state.json`` for the run that resumes it."""
    state = _load_state(run_dir)
    if state is not None:
        state["attempt_seconds"] = attempt_seconds
        with contextlib.suppress(OSError):
            write_json_atomic(run_dir / STATE_FILE, state)
