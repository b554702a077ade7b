"""Typed run configuration: data, model, recipe (a list of phases), training, output.

A recipe is a TOML file (``benchmarks/recipes/*.toml``)::

    name = "two_phase"
    description = "..."
    init = "pretrained"          # or "random" (the scratch control)
    head_hidden_units = 1024     # 0: a single linear layer as the new head

    preprocessing = "simple"     # simple | inception | torchvision (common.preprocess)
    dropout = 0.0                # before the classifier, in training only (0: none)

    [[phase]]
    name = "head"
    train = "head"               # head | top | blocks | all | linear | native
    optimizer = "rmsprop"
    learning_rate = 1e-3
    epochs = 3
    bn = "frozen"                # frozen | train | inference
    augment = true               # the preset's training augmentation (false: eval images)

What trains can also be said in one framework's own names (``train = "native"``,
implied by the key): slim ``trainable_scopes = ["InceptionV3/Mixed_7c", ...]``, Keras
``unfreeze_from = 249`` (a layer index: ``model.layers[249:]`` train), PyTorch
``modules = ["Mixed_7c", "fc"]``; the recipe may add slim's
``checkpoint_exclude_scopes`` and ``ignore_missing_vars``. ``backends.native``
checks the names against the model and maps them to canonical blocks.

Every value is validated; a bad one raises ``ConfigError`` whose message is one
line naming the key, the value and what is allowed. The dataclasses below are the schema:
the validator reads each field's type and choices from them (``common.schema``), and adds
only the rules a type cannot say (ranges, which keys go together).

Optimizers mean the same in every backend (hyperparameters are explicit, so
no framework default leaks in):

* ``sgd``: SGD with ``momentum`` (default 0: plain SGD);
* ``momentum``: SGD with ``momentum`` (default 0.9; slim's name for it);
* ``rmsprop``: decay ``rmsprop_rho`` (0.9), ``momentum`` (0), ``epsilon`` (1e-7);
* ``adam`` / ``adamw``: betas 0.9/0.999, ``epsilon``; ``adamw`` decouples
  ``weight_decay``, the others add it as an L2 penalty.

Where the frameworks compute a training step differently, each difference is a named
switch (``FIDELITY_SWITCHES``), set for the whole recipe::

    fidelity = "aligned"          # every switch; "native" (the default): each framework's own

    [fidelity]                    # or per switch, over a default
    default = "native"
    bn_moving_variance = "aligned"

The switches belong to the recipe, not to a phase: a Keras model's BatchNormalization
layers are chosen when the model is built, before the first phase (docs/design.md,
"Fidelity switches").
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.data import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION
from common.models import MODELS
from common.preprocess import PRESETS
from common.schema import field_choices, field_kinds, nullable_fields

TRAIN_MODES = ("head", "top", "blocks", "all", "linear", "native")
# the phase keys that say what trains in one framework's own names (backends.native); which
# backend each belongs to is that backend's ``BackendInfo.native_key``
NATIVE_KEYS = ("trainable_scopes", "unfreeze_from", "modules")
# the list fields that mirror a slim flag also take its comma-separated value ("A/B,A/C")
NAME_LISTS = ("trainable_scopes", "modules", "checkpoint_exclude_scopes")
OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam", "adamw")
SCHEDULES = ("fixed", "exponential", "cosine")
# frozen: BN of frozen blocks in inference mode; train: every BN in training mode;
# inference: every BN in inference mode (Keras' base_model(x, training=False)), betas still train
BN_MODES = ("frozen", "train", "inference")
INITS = ("pretrained", "random")
PRECISIONS = ("fp32", "bf16")
FIDELITY_SETTINGS = ("native", "aligned")
# switch -> what its ``aligned`` setting makes every framework compute (docs/differences.md)
FIDELITY_SWITCHES = {
    "bn_moving_variance": "a training BatchNorm updates its moving variance with the unbiased "
                          "batch variance, n/(n-1) x the biased one (torch, slim; Keras applies it too)",
    "rmsprop": "RMSprop divides by sqrt(mean square + epsilon), its mean-square slot starting "
               "at 0 (Keras; torch moves epsilon inside the root, slim starts the slot at 0)",
    "weight_decay": "weight decay reaches conv and dense kernels only, as grad + wd * w (slim's "
                    "l2_regularizer; torch and Keras leave biases and BatchNorm betas undecayed)",
    "head_init": "the new head starts from one draw made in common with numpy from the run's "
                 "seed (Glorot-uniform kernels, zero biases), written into every framework's "
                 "head through the canonical weight layout",
    "crop_sampler": "the epoch's sample order and every training crop box, flip and colour amount "
                    "are drawn once with numpy (common.sampler) and applied by every backend",
    "head_dtype": "under bf16 the new head, its hidden layer too, computes in fp32 on the bf16 "
                  "backbone's features (Keras' logits Dense; torch runs the head outside "
                  "autocast, Keras makes a hidden Dense float32 too)",
    "adam": "Adam and AdamW fold the bias correction into the step size, lr * sqrt(1 - b2^t) / "
            "(1 - b1^t) * m / (sqrt(v) + epsilon) (Keras and TF's form; torch adds epsilon to "
            "its bias-corrected root)",
}
MAX_EPOCHS = 10_000
MAX_HIDDEN_UNITS = 65_536
# a seed is what every framework's generator takes: numpy's and torch's accept 0..2**32-1
MAX_SEED = 2 ** 32 - 1
# the largest --image-size (a 1024 px InceptionV3 batch of 16 already needs ~20 GB to train)
MAX_IMAGE_SIZE = 1024
# the largest float32 (every backend computes in float32 or bfloat16): a recipe value above
# it overflows to inf in the framework
FLOAT32_MAX = 3.4028234663852886e38

RECIPE_DIR = Path(__file__).resolve().parent.parent / "benchmarks" / "recipes"
# a recipe name is part of every run folder's name (<backend>-<recipe>-s<seed>), a phase
# name of the run's paths (Keras' tensorboard/<phase>/): the same plain, path-safe names
RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
PHASE_NAME = RECIPE_NAME


class ConfigError(ValueError):
    """A bad configuration value; ``str(err)`` is one line for the user."""


def _fail(where: str, key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{where}: {key} = {value!r} is invalid; {allowed}")


def seed_problem(seed: Any) -> str | None:
    """Why ``seed`` is not a seed every framework takes (an integer in [0, MAX_SEED]), or
    None. ``bench run --seeds`` and ``validate_run`` (the parent and the run's process)
    both ask here."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        return f"a seed must be an integer in [0, {MAX_SEED}] (2**32 - 1), got {seed!r:.40}"
    return None


def image_size_problem(size: int, model: str) -> str | None:
    """Why ``size`` px is not an input size for ``model`` (below its minimum or above
    ``MAX_IMAGE_SIZE``), or None; every command with ``--image-size`` asks here."""
    spec = MODELS[model]
    if size < spec.min_size:
        return f"{spec.name} needs at least {spec.min_size} px"
    if size > MAX_IMAGE_SIZE:
        return f"at most {MAX_IMAGE_SIZE} px (one batch would not fit in memory; docs/running.md)"
    return None


def _one_of(default: str, allowed: tuple[str, ...]) -> Any:
    """A field that takes one of ``allowed`` (its validator names them when it does not)."""
    return field(default=default, metadata={"choices": allowed})


@dataclass(frozen=True)
class Phase:
    """One training phase: what trains, with which optimizer and schedule."""

    name: str = "train"
    train: str = _one_of("head", TRAIN_MODES)
    top_blocks: int = 0
    blocks: tuple[str, ...] = ()
    optimizer: str = _one_of("adam", OPTIMIZERS)
    learning_rate: float = 1e-3
    head_lr_multiplier: float = 1.0
    momentum: float | None = None
    rmsprop_rho: float = 0.9
    epsilon: float = 1e-7
    weight_decay: float = 0.0
    schedule: str = _one_of("fixed", SCHEDULES)
    warmup_epochs: int = 0
    decay_rate: float = 0.94
    decay_epochs: int = 1          # exponential: the rate applies every decay_epochs (staircase)
    epochs: int = 1
    bn: str = _one_of("frozen", BN_MODES)
    augment: bool = True
    label_smoothing: float = 0.0
    # train = "native": what trains in one framework's names (NATIVE_KEYS; one per phase)
    trainable_scopes: tuple[str, ...] = ()
    unfreeze_from: int | None = None
    modules: tuple[str, ...] = ()

    @property
    def effective_momentum(self) -> float:
        """``momentum`` or its default: 0.9 for ``momentum``, 0 for ``sgd``/``rmsprop``."""
        if self.momentum is not None:
            return self.momentum
        return 0.9 if self.optimizer == "momentum" else 0.0

    @property
    def native_key(self) -> str | None:
        """The native selection key this phase uses (``NATIVE_KEYS``), or None."""
        for key in NATIVE_KEYS:
            if getattr(self, key) not in ((), None):
                return key
        return None

    def trainable_blocks(self, model) -> tuple[str, ...]:
        """Canonical backbone blocks this phase trains (the head always trains); a native
        selection is mapped by ``backends.native``, not here: ``()``."""
        if self.train == "all":
            return model.blocks
        if self.train == "top":
            return model.top_blocks(self.top_blocks)
        if self.train == "blocks":
            return tuple(b for b in model.blocks if b in self.blocks)
        return ()


def float64_hyperparameters(phase: Phase) -> Phase:
    """``phase`` with its momentum (and RMSprop's rho and epsilon) as numpy float64 numbers, for
    a float64 model in TensorFlow (``bench parity --train --dtype float64``): TensorFlow makes a
    Python float a float32 tensor before it casts it to a variable's dtype (TF1's optimizers;
    Keras' ``ops.cast``), so a float64 momentum step used 0.89999998 for 0.9. A numpy float64 is
    still a ``float``, stays float64 there, and casts to the same float32 in a float32 model."""
    numbers = {"momentum": np.float64(phase.effective_momentum)}
    if phase.optimizer == "rmsprop":
        numbers.update(rmsprop_rho=np.float64(phase.rmsprop_rho), epsilon=np.float64(phase.epsilon))
    return dataclasses.replace(phase, **numbers)


@dataclass(frozen=True)
class Fidelity:
    """Each ``FIDELITY_SWITCHES`` entry: ``native`` (each framework's own step, the default)
    or ``aligned`` (every framework computes the same thing)."""

    bn_moving_variance: str = "native"
    rmsprop: str = "native"
    weight_decay: str = "native"
    head_init: str = "native"
    crop_sampler: str = "native"
    head_dtype: str = "native"
    adam: str = "native"

    def aligned(self, switch: str) -> bool:
        return getattr(self, switch) == "aligned"

    def settings(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in FIDELITY_SWITCHES}

    def text(self) -> str:
        """``"native"``, ``"aligned"``, or ``"bn_moving_variance=aligned, rmsprop=native, ..."``."""
        values = set(self.settings().values())
        if len(values) == 1:
            return values.pop()
        return ", ".join(f"{k}={v}" for k, v in self.settings().items())


assert tuple(f.name for f in dataclasses.fields(Fidelity)) == tuple(FIDELITY_SWITCHES)


@dataclass(frozen=True)
class Recipe:
    name: str
    phases: tuple[Phase, ...]
    description: str = ""
    init: str = _one_of("pretrained", INITS)
    head_hidden_units: int = 0
    source: str = ""
    preprocessing: str = _one_of("simple", tuple(PRESETS))
    dropout: float = 0.0              # before the classifier, training only
    # slim's flags, applied by slim (backends.native says what other backends do with them)
    checkpoint_exclude_scopes: tuple[str, ...] = ()
    ignore_missing_vars: bool = False
    fidelity: Fidelity = field(default_factory=Fidelity)

    @property
    def is_linear_probe(self) -> bool:
        return any(p.train == "linear" for p in self.phases)


# a recipe file's keys: the Recipe's own fields, its phases as [[phase]] tables, no source
RECIPE_KEYS = tuple(sorted(set(field_kinds(Recipe)) - {"phases", "source"} | {"phase"}))


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"      # "synthetic" or a path (folder or meta file)
    class_map: str | None = None   # class-map JSON for a meta file
    image_size: int | None = None  # None: the model table's default for synthetic
    # None: common.data's default (80/10/10); refused for a subset a folder already holds
    val_fraction: float | None = None
    test_fraction: float | None = None
    split_seed: int = 0
    # image-decoding workers: torch DataLoader num_workers (0: in the training process),
    # tf.data num_parallel_calls (0: AUTOTUNE)
    num_workers: int = 0
    strict: bool = False


@dataclass(frozen=True)
class ModelConfig:
    name: str = "inception_v3"
    weights: str = "source"        # source | none | imagenet | PATH
    aux_logits: bool = False
    # slim's --ignore_missing_vars: restore what matches, keep the initial values of
    # backbone variables the checkpoint lacks or holds in another shape (else: an error)
    ignore_missing_vars: bool = False


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    batch_size: int = 16
    precision: str = _one_of("fp32", PRECISIONS)
    throughput_steps: int = 5
    reuse_head_rows: bool = False
    # data parallel (common.parallel): devices per node (PyTorch: processes, --nproc-per-node),
    # nodes, and torchrun's rendezvous for several nodes; batch_size is the GLOBAL batch
    devices: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""
    rdzv_timeout: int = 900
    sync_bn: bool = False


@dataclass(frozen=True)
class PretrainConfig:
    """How ``--weights source`` pretrains a backbone on the ``shapes`` domain."""

    epochs: int = 12
    optimizer: str = "adam"
    # None: the model's own (``ModelSpec.pretrain_learning_rate``); a number overrides it
    learning_rate: float | None = None
    batch_size: int = 16
    images_per_class: int = 120


@dataclass(frozen=True)
class RunConfig:
    backend: str
    recipe: Recipe
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    run_dir: str = "results/run"

    @property
    def ignore_missing_vars(self) -> bool:
        """``--ignore-missing-vars`` or the recipe's ``ignore_missing_vars``."""
        return self.model.ignore_missing_vars or self.recipe.ignore_missing_vars

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """The config ``to_dict`` wrote (``sweep.json``, ``config.json``), its recipe validated
        like a recipe file and every part's values against its fields' types; a malformed
        one raises ``ConfigError``, ``KeyError`` or ``TypeError``."""
        parts = {k: field_kinds(cls)[k] for k in ("data", "model", "train", "pretrain")}
        return cls(
            backend=d["backend"],
            recipe=recipe_from_dict(d["recipe"]),
            **{k: part(**_typed_values(part, d[k], f"config {k}")) for k, part in parts.items()},
            run_dir=d["run_dir"],
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# ---------------------------------------------------------------- validation


def _check_type(where: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2 ** 63 else math.inf
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        _fail(where, key, value, "expected a finite number")
    if kind is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            _fail(where, key, value, "expected a list of block names")
        return tuple(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        _fail(where, key, value, f"expected {kind.__name__}")
    return value


def _choice(where: str, key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        _fail(where, key, value, f"allowed: {', '.join(allowed)}")


def _names(where: str, key: str, value: Any) -> tuple[str, ...]:
    """A list of names, or slim's comma-separated flag value (``"A/B,A/C"``)."""
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    names = _check_type(where, key, value, tuple)
    if any(not n.strip() for n in names):
        _fail(where, key, list(names), "names must not be empty")
    return names


def _typed_values(cls: type, raw: dict, where: str) -> dict:
    """``raw``'s values checked against the field types and choices of the dataclass ``cls``
    (read from the class itself, ``common.schema``); an unknown key is refused,
    naming the allowed ones. ``None`` passes where the field's type allows it."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {raw!r:.40} is not a table of keys")
    kinds, nullable, choices = field_kinds(cls), nullable_fields(cls), field_choices(cls)
    values = {}
    for key, value in raw.items():
        if key not in kinds:
            raise ConfigError(
                f"{where}: unknown key {key!r}; allowed keys: {', '.join(sorted(kinds))}"
            )
        if value is None and key in nullable:
            values[key] = None
        elif key in choices:
            _choice(where, key, value, choices[key])
            values[key] = value
        elif key in NAME_LISTS:
            values[key] = _names(where, key, value)
        else:
            values[key] = _check_type(where, key, value, kinds[key])
    return values


def parse_phase(raw: dict, where: str) -> Phase:
    values = _typed_values(Phase, raw, where)
    native = [k for k in NATIVE_KEYS if values.get(k) not in ((), None)]
    if len(native) > 1:
        raise ConfigError(f"{where}: {' and '.join(native)} both say what trains; give one "
                          f"(each names what trains in one framework's own names)")
    if native:
        if values.get("train", "native") != "native":
            _fail(where, "train", values["train"], f'{native[0]} says what trains: leave train '
                                                   f'out (or write train = "native")')
        for key in ("top_blocks", "blocks"):
            if values.get(key):
                _fail(where, key, values[key], f"{native[0]} says what trains; drop {key}")
        values["train"] = "native"
    elif values.get("train") == "native":
        _fail(where, "train", "native", f"name what trains with one of: {', '.join(NATIVE_KEYS)}")
    phase = Phase(**values)
    if not PHASE_NAME.fullmatch(phase.name):
        _fail(where, "name", phase.name, "a phase name names folders of the run (its "
                                         "TensorBoard logs): use letters, digits, '_', '-' and "
                                         "'.', starting with a letter or digit (at most 64)")
    if phase.learning_rate <= 0:
        _fail(where, "learning_rate", phase.learning_rate, "must be > 0")
    if phase.head_lr_multiplier <= 0:
        _fail(where, "head_lr_multiplier", phase.head_lr_multiplier, "must be > 0")
    for key in ("learning_rate", "epsilon", "weight_decay"):
        if getattr(phase, key) > FLOAT32_MAX:
            _fail(where, key, getattr(phase, key), f"must be at most {FLOAT32_MAX:.4g}, the "
                                                   f"largest float32 (it would be inf)")
    if phase.learning_rate * phase.head_lr_multiplier > FLOAT32_MAX:
        _fail(where, "head_lr_multiplier", phase.head_lr_multiplier,
              f"learning_rate x head_lr_multiplier must be at most {FLOAT32_MAX:.4g}, the "
              f"largest float32 (it would be inf)")
    if not 1 <= phase.epochs <= MAX_EPOCHS:
        _fail(where, "epochs", phase.epochs, f"must be in [1, {MAX_EPOCHS}]")
    if not 0 <= phase.top_blocks <= 1000:
        _fail(where, "top_blocks", phase.top_blocks, "must be in [0, 1000]")
    if phase.momentum is not None and not 0 <= phase.momentum < 1:
        _fail(where, "momentum", phase.momentum, "must be in [0, 1)")
    if not 0 < phase.rmsprop_rho < 1:
        _fail(where, "rmsprop_rho", phase.rmsprop_rho, "must be in (0, 1)")
    if phase.epsilon <= 0:
        _fail(where, "epsilon", phase.epsilon, "must be > 0")
    if phase.weight_decay < 0:
        _fail(where, "weight_decay", phase.weight_decay, "must be >= 0")
    if not 0 <= phase.label_smoothing < 1:
        _fail(where, "label_smoothing", phase.label_smoothing, "must be in [0, 1)")
    if not 0 < phase.decay_rate <= 1:
        _fail(where, "decay_rate", phase.decay_rate, "must be in (0, 1]")
    if not 1 <= phase.decay_epochs <= MAX_EPOCHS:
        _fail(where, "decay_epochs", phase.decay_epochs, f"must be in [1, {MAX_EPOCHS}]")
    if not 0 <= phase.warmup_epochs < phase.epochs:
        _fail(where, "warmup_epochs", phase.warmup_epochs, f"must be in [0, epochs={phase.epochs})")
    if phase.train == "top" and phase.top_blocks < 1:
        _fail(where, "top_blocks", phase.top_blocks, 'must be >= 1 when train = "top"')
    if phase.train == "blocks" and not phase.blocks:
        _fail(where, "blocks", phase.blocks, 'name at least one block when train = "blocks"')
    if phase.unfreeze_from is not None and not 0 <= phase.unfreeze_from <= 100_000:
        _fail(where, "unfreeze_from", phase.unfreeze_from, "must be a layer index >= 0")
    return phase


def parse_fidelity(value: Any, where: str) -> Fidelity:
    """``fidelity = "native" | "aligned"``, or a ``[fidelity]`` table of ``default`` and
    per-switch settings (``FIDELITY_SWITCHES``)."""
    if isinstance(value, str):
        value = {"default": value}
    if not isinstance(value, dict):
        _fail(where, "fidelity", value, f'write fidelity = "native" or "aligned", or a [fidelity] '
                                        f'table of default and {", ".join(FIDELITY_SWITCHES)}')
    for key, setting in value.items():
        if key != "default" and key not in FIDELITY_SWITCHES:
            raise ConfigError(f"{where}: unknown fidelity switch {key!r}; allowed: default, "
                              f"{', '.join(FIDELITY_SWITCHES)}")
        _choice(where, f"fidelity.{key}" if key != "default" else "fidelity", setting,
                FIDELITY_SETTINGS)
    default = value.get("default", "native")
    return Fidelity(**{k: value.get(k, default) for k in FIDELITY_SWITCHES})


def parse_recipe(raw: dict, source: str = "<recipe>") -> Recipe:
    for key in raw:
        if key not in RECIPE_KEYS:
            raise ConfigError(
                f"{source}: unknown key {key!r}; allowed keys: {', '.join(RECIPE_KEYS)}"
            )
    if "name" not in raw:
        raise ConfigError(f"{source}: missing key 'name'")
    values = _typed_values(Recipe, {k: v for k, v in raw.items() if k not in ("phase", "fidelity")},
                           source)
    if not RECIPE_NAME.fullmatch(values["name"]):
        _fail(source, "name", values["name"], "a recipe name names run folders: use letters, "
              "digits, '_', '-' and '.', starting with a letter or digit (at most 64)")
    phases_raw = raw.get("phase")
    if not isinstance(phases_raw, list) or not phases_raw:
        raise ConfigError(f"{source}: needs at least one [[phase]] table")
    for i, p in enumerate(phases_raw):
        if not isinstance(p, dict):
            raise ConfigError(f"{source}: phase {i + 1} is {p!r:.40}, not a table; write each "
                              f"phase as a [[phase]] table of keys")
    phases = tuple(
        parse_phase(p, f"{source} phase {i + 1}") for i, p in enumerate(phases_raw)
    )
    hidden = values.get("head_hidden_units", 0)
    if not 0 <= hidden <= MAX_HIDDEN_UNITS:
        _fail(source, "head_hidden_units", hidden, f"must be in [0, {MAX_HIDDEN_UNITS}]")
    if any(p.train == "linear" for p in phases) and len(phases) != 1:
        raise ConfigError(f"{source}: a train = \"linear\" phase must be the only phase")
    dropout = values.get("dropout", 0.0)
    if not 0 <= dropout < 1:
        _fail(source, "dropout", dropout, "must be in [0, 1): the share of features dropped "
                                          "before the classifier in training")
    fidelity = parse_fidelity(raw.get("fidelity", "native"), source)
    return Recipe(**values, phases=phases, source=source, fidelity=fidelity)


def recipe_from_dict(d: dict) -> Recipe:
    """A ``Recipe`` from its ``dataclasses.asdict`` form, validated like a TOML recipe."""
    if not isinstance(d, dict) or not isinstance(d.get("phases"), (list, tuple)):
        raise ConfigError(f"recipe {d!r:.60}: expected an object with a list of phases")
    raw = {"name": d.get("name"), "description": d.get("description", ""),
           "init": d.get("init", "pretrained"), "head_hidden_units": d.get("head_hidden_units", 0),
           "phase": [{k: v for k, v in p.items() if v is not None and v != [] and v != ()}
                     if isinstance(p, dict) else p for p in d["phases"]]}
    for key in ("preprocessing", "dropout", "checkpoint_exclude_scopes", "ignore_missing_vars",
                "fidelity"):
        if key in d:
            raw[key] = d[key]
    source = d.get("source") or str(d.get("name"))
    return dataclasses.replace(parse_recipe(raw, source=source), source=source)


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def load_recipe(name_or_path: str) -> Recipe:
    """A recipe by name (``benchmarks/recipes/NAME.toml``) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPE_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(
                f"unknown recipe {name_or_path!r}; choose one of: "
                f"{', '.join(available_recipes())} or give a path to a .toml file"
            )
    elif not path.is_file():
        raise ConfigError(f"recipe file {str(path)!r} does not exist")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start}); save the recipe as "
                          f"UTF-8 TOML") from None
    except OSError as err:
        raise ConfigError(f"recipe file {str(path)!r} cannot be read ({err.strerror})") from None
    return parse_recipe(raw, source=str(path.name if path.parent == RECIPE_DIR else path))


def override_epochs(recipe: Recipe, epochs: int) -> Recipe:
    """The recipe with every phase set to ``epochs`` (the ``--epochs`` flag)."""
    if not 1 <= epochs <= MAX_EPOCHS:
        _fail("--epochs", "epochs", epochs, f"must be in [1, {MAX_EPOCHS}]")
    phases = tuple(
        dataclasses.replace(p, epochs=epochs, warmup_epochs=min(p.warmup_epochs, epochs - 1))
        for p in recipe.phases
    )
    return dataclasses.replace(recipe, phases=phases)


def validate_run(config: RunConfig) -> None:
    """Cross-field checks that need the model table (whether the backend has the model is
    the backend's own answer: ``backends.base.unsupported_model``)."""
    _choice("run", "precision", config.train.precision, PRECISIONS)
    if config.model.name not in MODELS:
        _fail("run", "model", config.model.name, f"allowed: {', '.join(sorted(MODELS))}")
    spec = MODELS[config.model.name]
    size = config.data.image_size
    if size is not None and image_size_problem(size, spec.name):
        _fail("run", "image_size", size, image_size_problem(size, spec.name))
    if seed_problem(config.train.seed):
        _fail("run", "seed", config.train.seed, seed_problem(config.train.seed))
    if config.train.batch_size < 1:
        _fail("run", "batch_size", config.train.batch_size, "must be >= 1")
    validate_parallel(config.train)
    for i, phase in enumerate(config.recipe.phases):
        unknown = [b for b in phase.blocks if b not in spec.blocks]
        if unknown:
            _fail(f"{config.recipe.source} phase {i + 1}", "blocks", list(phase.blocks),
                  f"{spec.name} blocks are: {', '.join(spec.blocks)}")
        if phase.train == "top" and phase.top_blocks > len(spec.blocks):
            _fail(f"{config.recipe.source} phase {i + 1}", "top_blocks", phase.top_blocks,
                  f"{spec.name} has {len(spec.blocks)} blocks")
    validate_split_options(config.data.val_fraction, config.data.test_fraction,
                           config.data.split_seed, config.data.num_workers)


MAX_WORKERS = 256
MAX_DEVICES = 1024


def validate_parallel(train: TrainConfig) -> None:
    """One-line ``ConfigError`` for a device or node count out of range, a multi-node run
    without a rendezvous endpoint, or a global batch that does not split evenly."""
    for key in ("devices", "nnodes"):
        value = getattr(train, key)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DEVICES:
            _fail("run", key, value, f"must be an integer in [1, {MAX_DEVICES}]")
    if not 0 <= train.node_rank < train.nnodes:
        _fail("run", "node_rank", train.node_rank, f"must be in [0, nnodes={train.nnodes})")
    if train.nnodes > 1 and not re.fullmatch(r"[^:\s]+:\d+", train.rdzv_endpoint or ""):
        _fail("run", "rdzv_endpoint", train.rdzv_endpoint,
              "a run on several nodes needs --rdzv-endpoint HOST:PORT (the same on every node)")
    if train.rdzv_timeout < 1:
        _fail("run", "rdzv_timeout", train.rdzv_timeout, "must be >= 1 second")
    workers = train.devices * train.nnodes
    if train.batch_size % workers:
        _fail("run", "batch_size", train.batch_size,
              f"--batch-size is the global batch and must split evenly over the {workers} "
              f"devices ({train.nnodes} node(s) x {train.devices}); use a multiple of {workers}")


def validate_split_options(val_fraction: float | None, test_fraction: float | None,
                           split_seed: int = 0, num_workers: int = 0) -> None:
    """One-line ``ConfigError`` for a fraction outside (0, 1), fractions that leave less than
    10 % for training, a negative split seed or a worker count outside [0, MAX_WORKERS]."""
    fractions = {"val_fraction": val_fraction, "test_fraction": test_fraction}
    for key, v in fractions.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not 0 < v < 1):
            _fail("data", key, v, "must be a number in (0, 1), e.g. 0.1")
    held_out = (DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction) + \
        (DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction)
    if held_out >= 0.9:
        _fail("data", "val_fraction + test_fraction", round(held_out, 6),
              "must be < 0.9 so that training keeps at least 10 % of each class")
    if seed_problem(split_seed):
        _fail("data", "split_seed", split_seed, seed_problem(split_seed))
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) \
            or not 0 <= num_workers <= MAX_WORKERS:
        _fail("data", "num_workers", num_workers, f"must be an integer in [0, {MAX_WORKERS}]")
