"""A ``train_image_classifier.py`` command line as a recipe and ``bench run`` options.

A slim user pastes the flags of the script (tensorflow/models research/slim) and
gets the same run: ``bench run --backend slim --slim-flags "..."`` or ``bench
recipe from-slim-flags "..."`` (a recipe TOML). Every flag is one of:

* a recipe key (``RECIPE_FLAGS``): what trains (``--trainable_scopes``, or every
  variable when it is absent, as the script does), what is not restored
  (``--checkpoint_exclude_scopes``, ``--ignore_missing_vars``), the optimizer and its
  hyperparameters, the learning rate and its decay, weight decay, label smoothing, the
  preprocessing;
* a run option (``RUN_FLAGS``): ``--model_name`` (``--model``), ``--batch_size``,
  ``--train_image_size`` (``--image-size``), ``--checkpoint_path`` (``--weights``),
  ``--num_preprocessing_threads`` (``--workers``);
* a flag with no effect on what is computed (``IGNORED_FLAGS``: logging, where the
  script writes);
* anything else: one line naming it (``SlimFlagsError``).

What the script does without a flag saying so is part of the same run: its flag
defaults (rmsprop, learning rate 0.01, exponential decay 0.94 every 2 epochs, weight
decay 4e-5, ``--opt_epsilon=1.0``...), every ``batch_norm`` in training mode with all
its update ops (``bn = "train"``), slim's ``inception_v3`` dropout (keep 0.8, so
``dropout = 0.2``) and its auxiliary head, ``inception_preprocessing`` for
``inception_v3`` as the script calls it (``fast_mode=True``: the ``inception`` preset,
``common/preprocess.py``). The steps the script counts (``--max_number_of_steps``) are
epochs here (``--epochs``).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field

from common.config import ConfigError, Recipe, parse_recipe

# slim's flag defaults (train_image_classifier.py) for the flags that change the run
DEFAULTS = {
    "optimizer": "rmsprop", "learning_rate": 0.01, "momentum": 0.9, "rmsprop_decay": 0.9,
    "rmsprop_momentum": 0.9, "opt_epsilon": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999,
    "weight_decay": 0.00004, "label_smoothing": 0.0, "learning_rate_decay_type": "exponential",
    "learning_rate_decay_factor": 0.94, "num_epochs_per_decay": 2.0,
    "model_name": "inception_v3", "batch_size": 32, "num_clones": 1,
}
RECIPE_FLAGS = ("trainable_scopes", "checkpoint_exclude_scopes", "ignore_missing_vars",
                "optimizer", "learning_rate", "momentum", "rmsprop_decay", "rmsprop_momentum",
                "opt_epsilon", "adam_beta1", "adam_beta2", "weight_decay", "label_smoothing",
                "learning_rate_decay_type", "learning_rate_decay_factor", "num_epochs_per_decay",
                "preprocessing_name")
RUN_FLAGS = {"model_name": "--model", "batch_size": "--batch-size",
             "train_image_size": "--image-size", "checkpoint_path": "--weights",
             "num_preprocessing_threads": "--workers", "num_clones": None}
IGNORED_FLAGS = ("train_dir", "log_every_n_steps", "save_summaries_secs", "save_interval_secs",
                 "num_readers", "dataset_name", "dataset_split_name")
BOOLEAN_FLAGS = ("ignore_missing_vars",)
# why the flags the suite does not take are refused (the rest: "not a flag of the script")
REFUSED = {
    "dataset_dir": "the suite reads image folders, not slim's TFRecord shards: pass --data",
    "max_number_of_steps": "the suite counts epochs, not steps: pass --epochs",
    "moving_average_decay": "the suite keeps no moving averages of the weights",
    "end_learning_rate": "the polynomial decay is not a schedule of the suite",
    "sync_replicas": "distributed training is not a slim flag the suite takes",
    "replicas_to_aggregate": "distributed training is not a slim flag the suite takes",
    "worker_replicas": "distributed training is not a slim flag the suite takes",
    "num_ps_tasks": "distributed training is not a slim flag the suite takes",
    "task": "distributed training is not a slim flag the suite takes",
    "master": "distributed training is not a slim flag the suite takes",
    "quantize_delay": "quantization-aware training is not in the suite",
    "labels_offset": "the suite's classes start at 0",
    "use_grayscale": "the suite's preprocessing presets are RGB",
    "clone_on_cpu": "the device is the backend's choice",
    **{name: "the suite's optimizers are sgd, momentum, rmsprop and adam" for name in (
        "adadelta_rho", "adagrad_initial_accumulator_value", "ftrl_learning_rate_power",
        "ftrl_initial_accumulator_value", "ftrl_l1", "ftrl_l2")},
}
# slim's preprocessing_factory: the preprocessing of a model, and the suite's preset of it
PRESET_OF_SLIM_PREPROCESSING = {"inception": "inception", "inception_v3": "inception"}
SUITE_MODEL_OF_SLIM = {"inception_v3": "inception_v3", "resnet_v1_50": "resnet50"}
SLIM_DROPOUT = {"inception_v3": 0.2}  # 1 - dropout_keep_prob of slim's net function
SLIM_IMAGE_SIZE = {"inception_v3": 299, "resnet_v1_50": 224}  # the nets' default_image_size
# slim's inception_v3 builds AuxLogits (pooled 5x5 after Mixed_6e) from 107 px up; below
# that the script's net cannot be built with it, and the suite runs without it
AUX_MIN_SIZE = 107


class SlimFlagsError(ConfigError):
    """A flag the suite cannot take; ``str(err)`` is one line."""


@dataclass
class SlimCommand:
    """What a pasted command line means here."""

    recipe: Recipe
    run_options: dict = field(default_factory=dict)  # bench run flag -> value
    ignored: list = field(default_factory=list)      # flags with no effect here

    def run_options_text(self) -> str:
        """The run options as ``bench run`` flags (a switch such as ``--aux-logits`` bare)."""
        return " ".join(flag if value is True else f"{flag} {shlex.quote(str(value))}"
                        for flag, value in self.run_options.items())


def parse_flags(text: str) -> dict[str, str | bool]:
    """``--name=value``, ``--name value``, ``--flag`` / ``--noflag`` (absl booleans)."""
    try:
        tokens = shlex.split(text)
    except ValueError as err:
        raise SlimFlagsError(f"--slim-flags: cannot split {text!r}: {err}") from None
    if tokens and tokens[0].endswith(("train_image_classifier.py", "python", "python3")):
        tokens = [t for t in tokens if not t.endswith(("train_image_classifier.py", "python",
                                                       "python3"))]
    flags: dict[str, str | bool] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or len(token) == 2:
            raise SlimFlagsError(f"--slim-flags: {token!r} is not a --flag (write the flags of "
                                 f"train_image_classifier.py, e.g. --learning_rate=0.01)")
        name, eq, value = token[2:].partition("=")
        if not eq:
            if name in BOOLEAN_FLAGS:
                value = True
            elif name.startswith("no") and name[2:] in BOOLEAN_FLAGS:
                name, value = name[2:], False
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                value, i = tokens[i + 1], i + 1
            else:
                raise SlimFlagsError(f"--slim-flags: --{name} has no value")
        if name in flags:
            raise SlimFlagsError(f"--slim-flags: --{name} is given twice")
        flags[name] = value
        i += 1
    known = set(RECIPE_FLAGS) | set(RUN_FLAGS) | set(IGNORED_FLAGS)
    for name in flags:
        if name in REFUSED:
            raise SlimFlagsError(f"--slim-flags: --{name} is not supported: {REFUSED[name]}")
        if name not in known:
            raise SlimFlagsError(f"--slim-flags: --{name} is not a train_image_classifier.py flag "
                                 f"the suite takes; it takes: "
                                 f"{', '.join('--' + n for n in (*RECIPE_FLAGS, *RUN_FLAGS))} "
                                 f"(and ignores {', '.join('--' + n for n in IGNORED_FLAGS)})")
    return flags


def _number(flags: dict, name: str, kind=float):
    value = flags.get(name, DEFAULTS.get(name))
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise SlimFlagsError(f"--slim-flags: --{name}={value!r} is not a "
                             f"{'number' if kind is float else 'whole number'}") from None
    return number


def _boolean(flags: dict, name: str) -> bool:
    value = flags.get(name, False)
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "1", "yes"):
        return True
    if str(value).lower() in ("false", "0", "no"):
        return False
    raise SlimFlagsError(f"--slim-flags: --{name}={value!r} is not true or false")


def _list(flags: dict, name: str) -> list[str]:
    return [s.strip() for s in str(flags.get(name, "")).split(",") if s.strip()]


def from_slim_flags(text: str, *, name: str = "slim_flags", epochs: int = 1) -> SlimCommand:
    """The recipe and run options of a ``train_image_classifier.py`` command line."""
    flags = parse_flags(text)
    slim_model = str(flags.get("model_name", DEFAULTS["model_name"]))
    if slim_model not in SUITE_MODEL_OF_SLIM:
        raise SlimFlagsError(f"--slim-flags: --model_name={slim_model} is not a model of the "
                             f"suite; it has: {', '.join(SUITE_MODEL_OF_SLIM)}")
    preprocessing_name = str(flags.get("preprocessing_name", slim_model))
    if preprocessing_name not in PRESET_OF_SLIM_PREPROCESSING:
        raise SlimFlagsError(f"--slim-flags: --preprocessing_name={preprocessing_name} (slim's "
                             f"preprocessing_factory) has no preset in the suite; it has "
                             f"inception_preprocessing: pass --preprocessing_name=inception")
    phase: dict = {"name": "train", "bn": "train", "augment": True, "epochs": epochs,
                   "learning_rate": _number(flags, "learning_rate"),
                   "weight_decay": _number(flags, "weight_decay"),
                   "label_smoothing": _number(flags, "label_smoothing")}
    scopes = _list(flags, "trainable_scopes")
    if scopes:
        phase["trainable_scopes"] = scopes
    else:  # the script trains every trainable variable without --trainable_scopes
        phase["train"] = "all"
    optimizer = str(flags.get("optimizer", DEFAULTS["optimizer"]))
    if optimizer == "sgd":
        phase.update(optimizer="sgd", momentum=0.0)
    elif optimizer == "momentum":
        phase.update(optimizer="momentum", momentum=_number(flags, "momentum"))
    elif optimizer == "rmsprop":
        phase.update(optimizer="rmsprop", rmsprop_rho=_number(flags, "rmsprop_decay"),
                     momentum=_number(flags, "rmsprop_momentum"),
                     epsilon=_number(flags, "opt_epsilon"))
    elif optimizer == "adam":
        betas = (_number(flags, "adam_beta1"), _number(flags, "adam_beta2"))
        if betas != (0.9, 0.999):
            raise SlimFlagsError(f"--slim-flags: --adam_beta1={betas[0]} --adam_beta2={betas[1]}: "
                                 f"the suite's Adam uses 0.9 and 0.999 in every framework")
        phase.update(optimizer="adam", epsilon=_number(flags, "opt_epsilon"))
    else:
        raise SlimFlagsError(f"--slim-flags: --optimizer={optimizer} is not supported; the suite "
                             f"takes sgd, momentum, rmsprop, adam")
    decay = str(flags.get("learning_rate_decay_type", DEFAULTS["learning_rate_decay_type"]))
    if decay == "exponential":
        per = _number(flags, "num_epochs_per_decay")
        if per != int(per) or per < 1:
            raise SlimFlagsError(f"--slim-flags: --num_epochs_per_decay={per:g}: the suite decays "
                                 f"every whole number of epochs (1, 2, ...)")
        phase.update(schedule="exponential", decay_rate=_number(flags, "learning_rate_decay_factor"),
                     decay_epochs=int(per))
    elif decay == "fixed":
        phase["schedule"] = "fixed"
    else:
        raise SlimFlagsError(f"--slim-flags: --learning_rate_decay_type={decay} is not supported; "
                             f"the suite takes fixed, exponential")
    raw = {"name": name, "description": f"train_image_classifier.py {text.strip()}",
           "preprocessing": PRESET_OF_SLIM_PREPROCESSING[preprocessing_name],
           "dropout": SLIM_DROPOUT.get(slim_model, 0.0), "phase": [phase]}
    exclude = _list(flags, "checkpoint_exclude_scopes")
    if exclude:
        raw["checkpoint_exclude_scopes"] = exclude
    if _boolean(flags, "ignore_missing_vars"):
        raw["ignore_missing_vars"] = True
    try:
        recipe = parse_recipe(raw, source="--slim-flags")
    except ConfigError as err:
        raise SlimFlagsError(str(err)) from None
    model = SUITE_MODEL_OF_SLIM[slim_model]
    run = {"--model": model, "--batch-size": int(_number(flags, "batch_size", int))}
    # the script's size: --train_image_size, else the net's default_image_size
    size = int(_number(flags, "train_image_size", int)) if "train_image_size" in flags else \
        SLIM_IMAGE_SIZE[slim_model]
    run["--image-size"] = size
    if "checkpoint_path" in flags:
        run["--weights"] = str(flags["checkpoint_path"])
    if "num_preprocessing_threads" in flags:
        run["--workers"] = int(_number(flags, "num_preprocessing_threads", int))
    if int(_number(flags, "num_clones", int)) != 1:
        raise SlimFlagsError("--slim-flags: --num_clones other than 1 is not supported here")
    if model == "inception_v3" and size >= AUX_MIN_SIZE:
        run["--aux-logits"] = True  # slim's inception_v3 builds AuxLogits; its loss weighs 0.4
    ignored = [f"--{n}" for n in flags if n in IGNORED_FLAGS]
    return SlimCommand(recipe, run, ignored)


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def recipe_toml(command: SlimCommand) -> str:
    """The recipe as a TOML file that ``load_recipe`` reads back to the same recipe, with the
    run options it cannot hold in a comment."""
    r = command.recipe
    lines = [f"# from train_image_classifier.py flags; run it with: bench run --recipe THIS.toml "
             f"{command.run_options_text()}".rstrip()]
    if command.ignored:
        lines.append(f"# ignored (no effect on what is computed): {' '.join(command.ignored)}")
    lines += [f"name = {_toml_value(r.name)}", f"description = {_toml_value(r.description)}",
              f"init = {_toml_value(r.init)}", f"preprocessing = {_toml_value(r.preprocessing)}",
              f"dropout = {_toml_value(r.dropout)}"]
    if r.checkpoint_exclude_scopes:
        lines.append(f"checkpoint_exclude_scopes = {_toml_value(list(r.checkpoint_exclude_scopes))}")
    if r.ignore_missing_vars:
        lines.append("ignore_missing_vars = true")
    for phase in r.phases:
        lines += ["", "[[phase]]"]
        defaults = type(phase)()
        for key, value in vars(phase).items():
            if key == "train" and value == "native":
                continue
            if value != getattr(defaults, key) or key in ("name", "optimizer", "learning_rate",
                                                          "epochs", "bn"):
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
