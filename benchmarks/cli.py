"""``bench``: a thin command line over the library (torchvision references style).

Each subcommand parses its flags and calls plain functions that the tests
call directly. User errors (a bad recipe key, a missing data folder, an
unknown backend) print one line ``bench: error: ...`` and exit 2; finished
results are never touched by a failing command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from backends import native
from backends.base import (ALIASES, BackendError, availability, backend_info, backend_names,
                           backends_with_model, canonical_name, default_backends,
                           unknown_backend_message, unsupported_model, unsupported_parallel)
from benchmarks.console import configure_console
from benchmarks.runner import PlanError
from benchmarks.saved_run import BackendProcessFailed, SavedRunError
from common import synthetic
from common.canonical import ConversionError
from common.config import (FIDELITY_SETTINGS, MAX_IMAGE_SIZE, ConfigError, DataConfig, ModelConfig, PRECISIONS,
                           Recipe, RunConfig, TrainConfig, available_recipes, image_size_problem, load_recipe,
                           override_epochs, parse_fidelity, seed_problem, validate_run, validate_split_options)
from common.data import DataError
from common.models import MODELS, SMOKE_MODEL
from common.paths import cache_root
from common.preprocess import PRESETS
from common.parallel import cuda_visible, device_problem, usable_cores
from common.paths import kind_of, kind_problem, write_problem
from common.results import run_name

DEFAULT_RECIPES = ("two_phase", "scratch")
log = logging.getLogger(__name__)
EXIT_USAGE = 2


class UsageError(Exception):
    """A user error reported as one line with exit code 2."""


# ------------------------------------------------------------------ parsing

def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected integers like 0,1,2") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds: give at least one seed, e.g. 0,1,2")
    for seed in seeds:
        if seed_problem(seed):
            raise argparse.ArgumentTypeError(f"--seeds {text!r}: {seed_problem(seed)}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r} repeats {', '.join(map(str, repeated))}; each seed is one training "
            f"run, so give distinct seeds, e.g. 0,1,2")
    return seeds


def _int_at_least(minimum: int):
    """An argparse ``type``: an integer >= ``minimum``, else one line saying so."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{v} must be >= {minimum}")
        return v
    return parse


_positive, _nonnegative = _int_at_least(1), _int_at_least(0)


def _out_path(text: str) -> Path:
    """An argparse ``type`` for ``--out``/``--output``: a path, never the empty one (which
    would write into the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty; it would write into the current "
                                         f"folder: give a path")
    return Path(text)


def _device_counts(text: str) -> list[int]:
    try:
        counts = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--devices {text!r}: expected counts like 1,2,4") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"--devices {text!r}: give distinct counts >= 1, e.g. 1,2")
    return counts


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a fraction such as 0.1") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be in (0, 1), e.g. 0.1 for 10 %")
    return v


def _workers(text: str) -> int:
    from common.config import MAX_WORKERS

    v = _nonnegative(text)
    if v > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{v} must be at most {MAX_WORKERS}")
    return v


def _add_split_options(parser: argparse.ArgumentParser) -> None:
    """The split flags ``bench run`` and ``bench data inspect`` share."""
    parser.add_argument("--val-fraction", type=_fraction, metavar="F",
                        help="share of each class held out for validation (default 0.1; refused "
                             "for a folder that already has val/)")
    parser.add_argument("--test-fraction", type=_fraction, metavar="F",
                        help="share of each class held out for the test (default 0.1; refused "
                             "for a folder that already has test/)")
    parser.add_argument("--split-seed", type=_nonnegative, default=0, metavar="N",
                        help="seed of the train/val/test split (default 0; the same split for "
                             "every backend and every --seeds)")


def _names(text: str) -> list[str]:
    """A comma list (``two_phase,scratch``), the one list syntax of every option."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one name, e.g. two_phase,scratch")
    return names


class OneLineParser(argparse.ArgumentParser):
    """argparse with README's promise: a usage error is one ``bench: error: ...`` line
    (argparse prints the whole usage block), exit code 2, and a pointer to ``--help``."""

    def error(self, message: str):
        where = self.prog.removeprefix("bench").strip()
        self.exit(EXIT_USAGE, f"bench: error: {where + ': ' if where else ''}{message} "
                              f"(see '{self.prog} --help')\n")


def get_args_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="bench",
        description="Fine-tune pretrained image classifiers with PyTorch, Keras 3 and TF-Slim "
                    "from one recipe and compare them.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="train and evaluate (backend x recipe x seed), then report")
    run.add_argument("--backend", default="all",
                     help="pytorch, keras (= keras-tensorflow), keras-jax, keras-torch, slim, all "
                          "(pytorch, keras, slim), or a comma list (default: all)")
    run.add_argument("--recipe", type=_names, metavar="NAME|PATH,...",
                     help=f"comma list of recipes by name or .toml path "
                          f"(default: {','.join(DEFAULT_RECIPES)})")
    run.add_argument("--slim-flags", metavar="FLAGS",
                     help="the flags of a slim train_image_classifier.py command line, run as "
                          "that script would (instead of --recipe; see 'bench recipe "
                          "from-slim-flags')")
    run.add_argument("--preprocessing", choices=tuple(PRESETS),
                     help="the preprocessing preset of every recipe (default: each recipe's, "
                          "simple unless it says otherwise)")
    run.add_argument("--fidelity", choices=FIDELITY_SETTINGS,
                     help="the training-step fidelity of every recipe: native (each framework's "
                          "own behaviour) or aligned (every switch set so the frameworks compute "
                          "the same step; docs/recipes.md) (default: each recipe's, native unless "
                          "it says otherwise)")
    run.add_argument("--model", default="inception_v3", help=f"one of: {', '.join(MODELS)}")
    run.add_argument("--data", default="synthetic",
                     help="'synthetic' (embedded default) or an image folder / label|path meta file")
    run.add_argument("--class-map", help="class-map JSON {id2cls, cls2id} for a meta file")
    run.add_argument("--weights",
                     help="imagenet (each framework's own; the default with --data PATH), source "
                          "(pretrain on synthetic shapes, cached: the default for synthetic data "
                          "and the offline choice), none, or PATH")
    run.add_argument("--epochs", type=_positive, help="override the epochs of every phase")
    run.add_argument("--batch-size", type=_positive, default=16)
    run.add_argument("--image-size", type=_positive,
                     help="square input size (default: 64 or the model minimum for synthetic data, "
                          "the model's native size otherwise)")
    run.add_argument("--seeds", type=_seeds, default=[0], help="comma list, e.g. 0,1,2")
    run.add_argument("--precision", choices=PRECISIONS, default="fp32")
    run.add_argument("--aux-logits", action="store_true",
                     help="train InceptionV3's auxiliary head (PyTorch and slim; weight 0.4)")
    run.add_argument("--ignore-missing-vars", action="store_true",
                     help="restore what fits from the weights and keep the initial values of "
                          "backbone variables the checkpoint lacks or has in another shape "
                          "(slim's --ignore_missing_vars; without it that is an error)")
    run.add_argument("--reuse-head-rows", action="store_true",
                     help="initialise head rows of classes shared with the source from its head")
    run.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping")
    _add_split_options(run)
    run.add_argument("--workers", type=_workers, default=0, metavar="N",
                     help="image-decoding workers: PyTorch DataLoader num_workers (default 0: in "
                          "the training process), tf.data num_parallel_calls (0: AUTOTUNE)")
    par = run.add_argument_group(
        "more than one device", "data parallel on each framework's own engine; --batch-size is "
        "the global batch, split evenly, the learning rate unchanged (docs/devices.md)")
    par.add_argument("--devices", "--nproc-per-node", dest="devices", type=_positive, default=1,
                     metavar="N", help="devices per node (PyTorch: processes under torchrun, "
                                       "NCCL on CUDA, gloo on CPU; slim: --num_clones)")
    par.add_argument("--nnodes", type=_positive, default=1, metavar="N",
                     help="nodes (PyTorch only; torchrun's --nnodes)")
    par.add_argument("--node-rank", type=_nonnegative, default=0, metavar="R",
                     help="this node's rank (torchrun's --node-rank)")
    par.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT",
                     help="torchrun's rendezvous endpoint, the same on every node")
    par.add_argument("--rdzv-timeout", type=_positive, default=900, metavar="SECONDS",
                     help="how long a node waits for the others at the rendezvous (default 900)")
    par.add_argument("--sync-bn", action="store_true",
                     help="PyTorch: SyncBatchNorm (batch statistics over every device) in "
                          "phases with bn = \"train\"")
    run.add_argument("--out", type=_out_path, help="run directory (default: results/<timestamp>)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="finish the missing runs of an earlier sweep")
    run.add_argument("--no-report", action="store_true", help="skip writing report.md/html")
    p.run_parser = run  # for resume_conflicts(): which run options a command line gives

    sub.add_parser("list", help="backends (with availability), models, recipes")

    rec = sub.add_parser("recipe", help="recipe tools")
    rsub = rec.add_subparsers(dest="recipe_command", required=True, metavar="RECIPE_COMMAND")
    fsf = rsub.add_parser("from-slim-flags", help="a recipe TOML from the flags of a slim "
                                                  "train_image_classifier.py command line")
    fsf.add_argument("flags", help="the flags, quoted as one argument or given as they are "
                                   "(--learning_rate=0.01 --optimizer=sgd ...)")
    fsf.add_argument("--name", default="slim_flags", help="the recipe's name (default slim_flags)")
    fsf.add_argument("--epochs", type=_positive, default=1,
                     help="epochs of its phase (the script counts steps; default 1)")
    fsf.add_argument("--out", type=_out_path, help="write the TOML here (default: print it)")

    data = sub.add_parser("data", help="dataset tools")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    syn = dsub.add_parser("synthetic", help="generate the synthetic domains and print stats")
    syn.add_argument("--domain", choices=("shapes", "quads", "both"), default="both")
    syn.add_argument("--images-per-class", type=_positive)
    syn.add_argument("--seed", type=int, default=0)
    ins = dsub.add_parser("inspect", help="classes, counts per split, modes, sizes, problems")
    ins.add_argument("path", help="image folder or label|path meta file")
    ins.add_argument("--class-map")
    _add_split_options(ins)
    ins.add_argument("--seed", type=_nonnegative, dest="split_seed", default=argparse.SUPPRESS,
                     help=argparse.SUPPRESS)  # the flag's earlier name
    tfr = dsub.add_parser("export-tfrecord", help="write the common split as slim TFRecords")
    tfr.add_argument("--backend", default="slim",
                     help="the backend whose TFRecord writer writes them (default slim, the one "
                          "that has one)")
    tfr.add_argument("--data", default="synthetic")
    tfr.add_argument("--class-map")
    tfr.add_argument("--out", type=_out_path, required=True)
    tfr.add_argument("--image-size", type=_positive)

    tp = sub.add_parser("throughput", help="model-step train/infer img/s (throughput protocol); "
                                           "--sweep: every backend, model, precision and batch")
    tp.add_argument("--backend", help="one backend (default pytorch); with --sweep a comma list "
                                      "(default: every backend the sweep runs)")
    tp.add_argument("--model", help="one model (default inception_v3); with --sweep a comma list "
                                    "(default: every model of the suite's table)")
    tp.add_argument("--batch-size", type=_positive, help="default 32")
    tp.add_argument("--image-size", type=_positive)
    tp.add_argument("--precision", help=f"one of {', '.join(PRECISIONS)} (default fp32); with "
                                        f"--sweep a comma list (default: both)")
    tp.add_argument("--steps", type=_positive)
    tp.add_argument("--warmup", type=_nonnegative)
    tp.add_argument("--devices", type=_device_counts, default=[1], metavar="N,...",
                    help="device counts to measure, e.g. 1,2 (--batch-size is the global batch); "
                         "prints img/s and scaling efficiency per count")
    tp.add_argument("--out", type=_out_path, help="write the JSON result here; with --sweep the folder "
                                             "of throughput.json, .md and .png")
    tp.add_argument("--sweep", action="store_true",
                    help="every backend x model x precision x mode x batch size (256/128/64) "
                         "and real epochs over JPEG files, within --budget-seconds")
    tp.add_argument("--smoke", action="store_true",
                    help="with --sweep: the same code on a CPU with tiny sizes (the smallest "
                         f"model, {SMOKE_MODEL}, at its minimum size, "
                         "fp32, unless --model/--precision say otherwise), an injected "
                         "out-of-memory error and device name (never a result)")
    tp.add_argument("--budget-seconds", type=_positive, help="with --sweep: finish within this "
                                                             "(default 420; --smoke 1800)")
    tp.add_argument("--mode", help="with --sweep: a comma list of eager, torch.compile, XLA, "
                                   "tf.function, graph (default: all)")
    tp.add_argument("--no-end-to-end", action="store_true",
                    help="with --sweep: model steps only, no epochs over JPEG files")

    rep = sub.add_parser("report", help="(re)build report.md/html and summary.csv from a run directory")
    rep.add_argument("run_dir", type=Path)
    cmp_ = sub.add_parser("compare", help="two run directories side by side, with the verdicts that flipped")
    cmp_.add_argument("run_a", type=Path)
    cmp_.add_argument("run_b", type=Path)

    ev = sub.add_parser("eval", help="evaluate a finished run's checkpoint on its test split or a "
                                     "folder: metrics, confusion matrix, predictions CSV")
    ev.add_argument("run", metavar="RUN", help="a run folder: RUN_DIR/<backend>-<recipe>-s<seed>")
    ev.add_argument("--data", help="image folder (one subfolder per class, named as the run's "
                                   "classes) or label|path meta file; default: the run's test split")
    ev.add_argument("--class-map", help="class-map JSON for a meta file")
    ev.add_argument("--checkpoint", choices=("best", "last"), default="best",
                    help="best on validation (default) or the last epoch's")
    pr = sub.add_parser("predict", help="class probabilities of images from a run's checkpoint")
    pr.add_argument("target", metavar="CHECKPOINT_OR_RUN", nargs="?",
                    help="a run folder or a checkpoint file in its checkpoints/ (with --imagenet: "
                         "an image)")
    pr.add_argument("images", nargs="*", metavar="IMAGE")
    pr.add_argument("--imagenet", action="store_true",
                    help="the 1000 ImageNet classes of the images (files or skimage:NAME; default "
                         "skimage:chelsea skimage:coffee) from --model's ImageNet weights shared by "
                         "every backend, in every backend")
    pr.add_argument("--model", default=None, help="with --imagenet: a model with ImageNet weights "
                                                  "shared by every backend (default "
                                                  "efficientnet_lite0)")
    pr.add_argument("--backend", default="all", help="with --imagenet: all, or a comma list")
    pr.add_argument("--image-size", type=_positive, help="with --imagenet: default the model's "
                                                         "native size (224 px)")
    pr.add_argument("--checkpoint", choices=("best", "last"), default="best",
                    help="for a run folder: which checkpoint (default best)")
    pr.add_argument("--top-k", type=_positive, default=5, help="classes shown per image (default 5)")
    ex = sub.add_parser("export", help="write a run's model in its framework's deployable format, "
                                       "checked against the native logits")
    ex.add_argument("run", metavar="RUN", help="a run folder: RUN_DIR/<backend>-<recipe>-s<seed>")
    ex.add_argument("--format", required=True,
                    help="pytorch: torchscript, onnx; keras: keras, savedmodel; "
                         "slim: savedmodel, frozen_graph")
    ex.add_argument("--checkpoint", choices=("best", "last"), default="best")
    ex.add_argument("--out", type=_out_path, help="folder for the export (default RUN/export/FORMAT)")

    w = sub.add_parser("weights", help="ImageNet weights (where they go offline, fetch); convert "
                                       "checkpoints between backends")
    wsub = w.add_subparsers(dest="weights_command", required=True, metavar="WEIGHTS_COMMAND")
    wsub.add_parser("where", help="per backend and model: file name, cache path, present?")
    fetch = wsub.add_parser("fetch", help="download into the framework's own cache (needs network)")
    fetch.add_argument("--backend", required=True)
    fetch.add_argument("--model", required=True)
    conv = wsub.add_parser("convert", help="a native checkpoint of one backend -> another's, "
                                           "exactly, through canonical weights")
    conv.add_argument("--model", default="inception_v3")
    conv.add_argument("--from", dest="source", required=True, metavar="BACKEND",
                      help="pytorch, keras, slim or canonical (a .npz)")
    conv.add_argument("--to", dest="target", required=True, metavar="BACKEND",
                      help="pytorch, keras, slim or canonical (a .npz)")
    conv.add_argument("--input", required=True, help=".pt, .weights.h5, TF checkpoint prefix, .npz")
    conv.add_argument("--output", required=True, type=_out_path,
                      help="where to write (suffix added: .pt, .weights.h5, .ckpt prefix)")

    exp = sub.add_parser("explain", help="a recipe's steps in the three frameworks' own code, side "
                                         "by side (markdown and HTML)")
    exp.add_argument("recipe", nargs="?", default="two_phase",
                     help="a built-in recipe name or a recipe TOML file (default: two_phase)")
    exp.add_argument("--out", type=Path, default=Path("results") / "explain",
                     help="folder for explain-<recipe>.md and .html (default: results/explain)")

    par = sub.add_parser("parity", help="same weights and images through every backend: max abs "
                                        "difference per canonical block")
    par.add_argument("--model", default="inception_v3")
    par.add_argument("--image-size", type=_positive, help="default: the model's minimum (75 px)")
    par.add_argument("--backend", default="all", help="all, or a comma list of at least two")
    par.add_argument("--weights", default="random",
                     help="random (seeded canonical weights), imagenet (a model's ImageNet weights "
                          "shared by every backend: efficientnet_lite0) or a checkpoint of any "
                          "backend")
    par.add_argument("--alignment", choices=("suite", "native"), default="suite",
                     help="suite: the aligned models of suite-made weights (default); native: each "
                          "framework's own model, to measure what the alignment changes")
    par.add_argument("--seed", type=int, default=0)
    par.add_argument("--train", action="store_true",
                     help="compare training steps instead: K = 1 and 3 steps of each case's phase "
                          "from the same weights on one fixed batch, each fidelity (native, "
                          "aligned, each switch aligned alone) and each backend's fp32 floor "
                          "(aligned, on the batch moved by one ulp); writes train_parity.json/.md")
    par.add_argument("--cases", help="with --train: a comma list of cases (default: all): "
                                     "head-momentum, top2-rmsprop-bn-frozen, top2-sgd-bn-train-wd, "
                                     "all-adam-bn-inference, all-adamw-wd-head-x10, "
                                     "all-momentum-bn-train")
    par.add_argument("--out", type=_out_path, help="directory for parity.json and parity.md "
                                              "(default: results/parity-<model>-<size>px-<alignment>)")
    return p


# ----------------------------------------------------------------- commands

def parse_backends(text: str) -> list[str]:
    """Registry names for ``--backend``: ``all`` is one entry per framework (keras-jax and
    keras-torch only when named); an alias (keras-tensorflow) is its entry, listed once."""
    if text == "all":
        return default_backends()
    names: list[str] = []
    for b in filter(None, (b.strip() for b in text.split(","))):
        if canonical_name(b) not in backend_names():
            raise UsageError(unknown_backend_message(b))
        if canonical_name(b) not in names:
            names.append(canonical_name(b))
    return names


def default_weights(data: str) -> str:
    """``--weights`` when not given: each framework's ImageNet weights for a user's data,
    the cached shapes-pretrained backbone (``source``) for the synthetic default."""
    return "source" if data == "synthetic" else "imagenet"


def missing_imagenet_weights(configs: list[RunConfig]) -> str | None:
    """The offline line (``BackendInfo.offline_message``) for the first run that needs
    ImageNet weights its backend has not cached, or None; checked in the parent, before
    any run starts, without importing a framework."""
    for config in configs:
        if (config.model.weights != "imagenet" or config.recipe.init == "random"
                or availability(config.backend) or unsupported_model(config.backend,
                                                                     config.model.name)):
            continue
        info = backend_info(config.backend)
        if info.catalog and not info.imagenet_present(config.model.name):  # a plug-in without
            # a catalog loads its own weights
            return info.offline_message(config.model.name)
    return None


def build_configs(args: argparse.Namespace, out: Path) -> list[RunConfig]:
    """One validated RunConfig per (backend, recipe, seed) from ``bench run`` flags."""
    slim_recipe = None
    if getattr(args, "slim_flags", None) is not None:  # sets its run options on args first
        if args.recipe:
            raise UsageError("--slim-flags is the recipe: drop --recipe, or write the flags as a "
                             "recipe with 'bench recipe from-slim-flags' and pass it to --recipe")
        slim_recipe = slim_flags_recipe(args)
    backends = parse_backends(args.backend)
    data_kind = kind_of(args.data) if args.data != "synthetic" else "a folder"
    if data_kind not in ("a folder", "a file"):
        raise UsageError(f"--data {args.data!r} {'is ' + data_kind if data_kind else 'does not exist'}"
                         f"; pass 'synthetic' or an image folder with one subfolder per class")
    if args.data != "synthetic" and Path(args.data).is_dir():
        data_dir, out_dir = Path(args.data).resolve(), out.resolve()
        if out_dir == data_dir or data_dir in out_dir.parents:
            raise UsageError(f"--out {str(out)!r} is inside --data {args.data!r}: run folders would "
                             f"become classes of the dataset; choose an --out outside the data")
    _check_class_map(args.class_map, args.data)
    weights = default_weights(args.data) if args.weights is None else args.weights
    if weights not in ("source", "none", "imagenet"):
        from benchmarks.conversion import checkpoint_problem

        if kind_of(weights) is None and kind_of(weights + ".index") is None:  # a TF prefix
            raise UsageError(f"--weights {weights!r} is neither source, none, imagenet nor an "
                             f"existing path")
        problem = checkpoint_problem(weights)  # the run's process asks the same (driver)
        if problem:
            raise UsageError(f"--weights {weights!r} {problem}; pass --weights source, none, "
                             f"imagenet or the path of a native checkpoint")
        weights = str(Path(weights).resolve())  # absolute: --resume works from anywhere
    if slim_recipe is not None:
        recipes = [slim_recipe]
    else:
        recipes = [load_recipe(r) for r in (args.recipe or DEFAULT_RECIPES)]
    if args.epochs:
        recipes = [override_epochs(r, args.epochs) for r in recipes]
    if args.preprocessing:
        recipes = [dataclasses.replace(r, preprocessing=args.preprocessing) for r in recipes]
    if args.fidelity:
        recipes = [dataclasses.replace(r, fidelity=parse_fidelity(args.fidelity, "--fidelity"))
                   for r in recipes]
    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    supported = {b: unsupported_model(b, args.model) is None for b in backends}
    if not any(supported.values()):
        raise UsageError(f"model {args.model!r} exists only for: "
                         f"{', '.join(backends_with_model(args.model)) or 'no backend'}")
    if args.reuse_head_rows:
        if weights != "source":
            raise UsageError("--reuse-head-rows copies rows of the source classifier; it needs "
                             "--weights source (the synthetic shapes classifier)")
        hidden = [r.name for r in recipes if r.head_hidden_units]
        if hidden:
            raise UsageError(f"--reuse-head-rows needs a linear head, but {', '.join(hidden)} "
                             f"has head_hidden_units > 0; use e.g. --recipe head")
    for backend in backends:
        refusal = supported[backend] and unsupported_parallel(backend, args.devices, args.nnodes)
        if refusal:
            raise UsageError(refusal)
    # the rule each backend's parallel.py applies when its framework starts, checked here
    # first from the environment (the parent imports no framework to ask about CUDA)
    problem = device_problem(args.devices, args.sync_bn and args.devices * args.nnodes > 1,
                             cuda=cuda_visible(), cores=usable_cores())
    if problem:
        raise UsageError(problem)
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise UsageError(f"--recipe names must be unique, got {', '.join(names)}")
    data = DataConfig(source=str(Path(args.data).resolve()) if args.data != "synthetic" else "synthetic",
                      class_map=str(Path(args.class_map).resolve()) if args.class_map else None,
                      image_size=args.image_size, strict=args.strict,
                      val_fraction=args.val_fraction, test_fraction=args.test_fraction,
                      split_seed=args.split_seed, num_workers=args.workers)
    configs = []
    for backend in backends:
        for recipe in recipes:
            for seed in args.seeds:
                config = RunConfig(
                    backend=backend, recipe=recipe, data=data,
                    model=ModelConfig(name=args.model, weights=weights, aux_logits=args.aux_logits,
                                      ignore_missing_vars=args.ignore_missing_vars),
                    train=TrainConfig(seed=seed, batch_size=args.batch_size, precision=args.precision,
                                      reuse_head_rows=args.reuse_head_rows, devices=args.devices,
                                      nnodes=args.nnodes, node_rank=args.node_rank,
                                      rdzv_endpoint=args.rdzv_endpoint,
                                      rdzv_timeout=args.rdzv_timeout, sync_bn=args.sync_bn),
                    run_dir=str(out / run_name(backend, recipe.name, seed)))
                if supported[backend]:  # else (resnet18 in Keras) the run is recorded as skipped
                    validate_run(config)
                    native.check_recipe(recipe, backend, args.model)
                configs.append(config)
    return configs


def slim_flags_recipe(args: argparse.Namespace) -> Recipe:
    """``--slim-flags``: the recipe of the command line; its run options (model, batch size,
    image size, weights, workers, aux head) set on ``args``, where a different value given on
    the ``bench`` command line is one line naming both."""
    from benchmarks.slim_flags import from_slim_flags

    command = from_slim_flags(args.slim_flags)
    given = {a.partition("=")[0] for a in getattr(args, "argv", [])}
    for flag, value in command.run_options.items():
        dest = flag.lstrip("-").replace("-", "_")
        if flag in given and getattr(args, dest) != value:
            raise UsageError(f"{flag} {getattr(args, dest)} and --slim-flags (which means {flag} "
                             f"{value}) disagree; give it in one place")
        setattr(args, dest, value)
    for flag in command.ignored:
        log.info(f"--slim-flags: {flag} ignored (no effect on what is computed)")
    return command.recipe


def _check_class_map(class_map: str | None, data: str | None) -> None:
    """``--class-map``: a file, and given only with a label|path meta file (one line if not)."""
    if not class_map:
        return
    problem = kind_problem(class_map, "file")
    if problem:
        raise UsageError(f"--class-map {class_map!r} {problem}; give the class-map JSON file "
                         f"of a label|path meta file")
    if data is None:
        raise UsageError("--class-map maps the labels of a label|path meta file: give that "
                         "file with --data, or drop --class-map")
    if data == "synthetic" or kind_of(data) == "a folder":
        what = "the synthetic dataset" if data == "synthetic" else "an image folder"
        raise UsageError(f"--class-map maps the labels of a label|path meta file, but --data "
                         f"{data!r} is {what} whose subfolders name its classes; drop --class-map")


def _writable_file(path: Path, flag: str, example: str) -> Path:
    """``path`` can be written as a file: it is not a folder (or another special file) and
    its folder is writable (created if missing); one line naming the flag if not. Checked
    before any work, so no result is lost to the write."""
    kind = kind_of(path)
    if kind not in (None, "a file"):
        raise UsageError(f"{flag} {str(path)!r} is {kind}, not a file; give a file name, e.g. "
                         f"{str(Path(path) / example)!r}")
    problem = write_problem(path.parent)
    if problem:
        raise UsageError(f"{flag} {str(path)!r} cannot be written ({problem}); choose another "
                         f"{flag}")
    return path


def _writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{time.time_ns()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"output directory {str(path)!r} is not writable ({err.strerror}); "
                         f"choose another with --out") from None
    return path


def _check_data(config: RunConfig) -> None:
    """Load, verify and split the data once in the parent: bad data fails here, with exit 2."""
    from benchmarks.driver import prepare_split

    split = prepare_split(config)
    note = f", {len(split.skipped)} unreadable file(s) will be skipped" if split.skipped else ""
    if split.duplicates:
        note += f", {len(split.duplicates)} duplicate file(s) kept once"
    if split.given:
        note += f"; {' '.join(n + '/' for n in split.given)} used as given"
    log.info(f"data: {split.num_classes} classes, train {len(split.train)} / val {len(split.val)} / "
             f"test {len(split.test)}, split {split.digest()}{note}")
    for path, why in (split.skipped + split.duplicates)[:10]:
        log.info(f"  skipped {path}: {why}")


def resume_conflicts(argv: list[str]) -> list[str]:
    """The ``bench run`` options in ``argv`` that ``--resume`` cannot honour (it finishes the
    sweep exactly as its ``sweep.json`` planned it)."""
    parser = get_args_parser()
    run = parser.run_parser
    dests = [a.dest for a in run._actions if a.option_strings and a.dest not in ("help",)]
    unset = object()  # not a string: argparse would run a string default through `type`
    run.set_defaults(**{d: unset for d in dests})
    given = parser.parse_args(argv)
    options = {a.dest: a.option_strings[-1] for a in run._actions if a.option_strings}
    return [options[d] for d in dests if d not in RESUME_OPTIONS and getattr(given, d) is not unset]


RESUME_OPTIONS = ("resume", "no_report")


def _refuse_foreign_files(run_dir: Path) -> None:
    """A new sweep writes report.md, summary.csv and its run folders into ``--out``: a folder
    that already holds other files (and no sweep.json) is refused, never overwritten. An
    empty folder, or one holding only another bench run's claim, is fine."""
    from common.locks import LOCK_FILE

    if kind_of(run_dir) != "a folder":
        return  # missing (made later) or a file (_writable_dir says so)
    try:
        names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    except OSError as err:
        raise UsageError(f"--out {str(run_dir)!r} cannot be listed ({err.strerror}); choose "
                         f"another --out") from None
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise UsageError(f"--out {str(run_dir)!r} already holds files ({shown}) and no sweep: "
                         f"bench run would write report.md, summary.csv and run folders among "
                         f"them; choose a new or empty --out")


def _in_use(run_dir: Path, flag: str, pid: int | None) -> UsageError:
    return UsageError(f"{flag} {str(run_dir)!r} is in use by another bench run (PID {pid or '?'}); "
                      f"wait for it to finish, or choose another --out")


def _refuse_if_claimed(run_dir: Path, flag: str) -> None:
    from common.locks import live_holder

    pid = live_holder(run_dir)
    if pid is not None:
        raise _in_use(run_dir, flag, pid)


def _claim_sweep(run_dir: Path, flag: str):
    """Claim the sweep's directory for this process (``common.locks``): atomic, so of two
    ``bench run`` on one directory the second stops here, naming the first."""
    from common.locks import DirectoryBusy, claim_directory

    try:
        return claim_directory(run_dir)
    except DirectoryBusy as busy:
        raise _in_use(run_dir, flag, busy.pid) from None
    except OSError as err:
        raise UsageError(f"output directory {str(run_dir)!r} is not writable ({err.strerror}); "
                         f"choose another with --out") from None


def cmd_run(args: argparse.Namespace) -> int:
    from benchmarks import runner

    if args.resume:
        run_dir = args.resume
        conflicts = resume_conflicts(args.argv)
        if conflicts:
            raise UsageError(f"--resume finishes {str(run_dir)!r} as its {runner.SWEEP_FILE} "
                             f"planned it; {', '.join(conflicts)} cannot change it: drop "
                             f"{'them' if len(conflicts) > 1 else 'it'}, or start a new sweep "
                             f"with --out")
        if not (run_dir / runner.SWEEP_FILE).is_file():
            raise UsageError(f"--resume {str(run_dir)!r} has no {runner.SWEEP_FILE}; "
                             f"give the directory of an earlier 'bench run'")
        planned = runner.read_plan(run_dir)  # a malformed plan fails before anything is claimed
        offline = missing_imagenet_weights([r.config for r in planned if not runner.finished(r)])
        if offline:
            raise UsageError(offline)
        _writable_dir(run_dir)
        claim = _claim_sweep(run_dir, "--resume")
        runs = runner.read_plan(run_dir)
    else:
        run_dir = args.out or Path("results") / time.strftime("%Y%m%d-%H%M%S")
        if args.out and (args.out / runner.SWEEP_FILE).is_file():
            _refuse_if_claimed(args.out, "--out")
            raise UsageError(f"--out {str(args.out)!r} already holds a sweep; continue it with "
                             f"--resume {args.out} or choose a new --out")
        configs = build_configs(args, run_dir)  # validates before anything is written
        _refuse_foreign_files(run_dir)
        _check_data(configs[0])
        offline = missing_imagenet_weights(configs)  # before any run starts: no framework
        if offline:
            raise UsageError(offline)
        _writable_dir(run_dir)
        claim = _claim_sweep(run_dir, "--out")  # atomic: a second bench run on it stops here
        if (run_dir / runner.SWEEP_FILE).is_file():  # one finished while this one validated
            claim.release()
            raise UsageError(f"--out {str(run_dir)!r} already holds a sweep; continue it with "
                             f"--resume {run_dir} or choose a new --out")
        runs = runner.plan(configs)
        runner.write_plan(run_dir, runs, args.argv)
    with claim:
        log.info(f"run directory: {run_dir} ({len(runs)} run(s))")
        try:
            results = runner.run_sweep(runs, resume=bool(args.resume))
        except KeyboardInterrupt:
            print(f"\ninterrupted: finished results are kept in {run_dir}; "
                  f"continue with: bench run --resume {run_dir}", file=sys.stderr)
            return 130
        _print_summary(run_dir, results, write=not args.no_report)
    return 1 if any(r["status"] == "failed" for r in results) else 0


def _write_report(run_dir: Path) -> str:
    """Write the report of ``run_dir`` and return the line naming its files; a folder it
    cannot write (read-only, immutable, a report file that is a folder, a full disk) is a
    ``UsageError`` naming why, raised before or instead of a traceback."""
    from benchmarks import report
    from common.paths import disk_full_message, is_disk_full

    problem = report.report_write_problem(run_dir)
    if problem:
        raise UsageError(f"report not written: {problem}")
    try:
        paths = report.write_report(run_dir)
    except OSError as err:  # the results are kept; only the report is missing
        why = disk_full_message(err.filename or run_dir) if is_disk_full(err) else \
            f"{err.filename or run_dir}: {err.strerror or err}"
        raise UsageError(f"report not written: {why}") from None
    return "report: " + ", ".join(str(p) for p in paths.values())


def _print_summary(run_dir: Path, results: list[dict], write: bool) -> None:
    """The summary table after a sweep and its report; a report that cannot be written is
    one line on stderr (the results are kept; ``bench report`` rebuilds it)."""
    from benchmarks import report
    from common.results import read_results

    print()
    print(report.summary_table(results))
    if write and read_results(run_dir):
        try:
            print("\n" + _write_report(run_dir))
        except UsageError as err:
            print(f"\n{err}; rebuild it with: bench report {run_dir}", file=sys.stderr)


def cmd_recipe(args: argparse.Namespace) -> int:
    from benchmarks.slim_flags import from_slim_flags, recipe_toml

    command = from_slim_flags(args.flags, name=args.name, epochs=args.epochs)
    text = recipe_toml(command)
    if args.out is None:
        print(text, end="")
        return 0
    _writable_file(args.out, "--out", f"{args.name}.toml")
    try:
        from common.results import write_text_atomic

        write_text_atomic(args.out, text)
    except OSError as err:
        raise UsageError(f"--out {str(args.out)!r} cannot be written ({err.strerror or err}); "
                         f"choose another --out") from None
    print(f"written: {args.out}; run it with: bench run --recipe {args.out} "
          f"{command.run_options_text()}".rstrip())
    return 0


def cmd_list(_args: argparse.Namespace) -> int:
    print("backends (--backend all: " + ", ".join(default_backends()) + "):")
    for name in backend_names():
        reason = availability(name)
        aliases = [a for a, target in ALIASES.items() if target == name]
        label = name + (f" (also {', '.join(aliases)})" if aliases else "")
        print(f"  {label:30s} {'available' if reason is None else 'unavailable: ' + reason}")
    print("models:")
    for m in MODELS.values():
        print(f"  {m.name:13s} default {m.default_size}px, min {m.min_size}px, "
              f"blocks {', '.join(m.blocks)}; backends: {', '.join(backends_with_model(m.name))}")
    print("recipes:")
    for r in available_recipes():
        recipe = load_recipe(r)
        print(f"  {r:13s} {recipe.description}")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    if args.data_command == "synthetic":
        domains = ("shapes", "quads") if args.domain == "both" else (args.domain,)
        for d in domains:
            default = synthetic.DEFAULT_SOURCE if d == "shapes" else synthetic.DEFAULT_TARGET
            spec = dataclasses.replace(default, seed=args.seed,
                                       images_per_class=args.images_per_class or default.images_per_class)
            t0 = time.perf_counter()
            path = synthetic.generate(spec)
            stats = synthetic.domain_stats(path)
            print(f"{d}: {stats['images']} images, {stats['classes']} classes "
                  f"({', '.join(f'{k} {v}' for k, v in stats['per_class'].items())}) in {path} "
                  f"[{time.perf_counter() - t0:.1f}s]")
        return 0
    if args.data_command == "inspect":
        from benchmarks.inspect_data import inspect_dataset

        validate_split_options(args.val_fraction, args.test_fraction, args.split_seed)
        _check_class_map(args.class_map, args.path)

        report, refused = inspect_dataset(args.path, args.class_map, seed=args.split_seed,
                                          val_fraction=args.val_fraction,
                                          test_fraction=args.test_fraction)
        print(report)
        if refused:
            raise UsageError(refused)  # the same reason, and exit code, as bench run
        return 0
    if args.data_command == "export-tfrecord":
        info = tfrecord_backend(args.backend)
        reason = availability(info.name)
        if reason:
            raise UsageError(f"export-tfrecord needs the {info.name} backend: {reason}")
        from benchmarks.driver import prepare_split

        if args.data != "synthetic" and kind_of(args.data) not in ("a folder", "a file"):
            raise UsageError(f"--data {args.data!r} "
                             f"{'is ' + kind_of(args.data) if kind_of(args.data) else 'does not exist'}")
        _check_class_map(args.class_map, args.data)
        if args.image_size is not None and args.image_size > MAX_IMAGE_SIZE:
            raise UsageError(f"--image-size {args.image_size}: at most {MAX_IMAGE_SIZE} px")
        data = DataConfig(source="synthetic" if args.data == "synthetic" else str(Path(args.data).resolve()),
                          class_map=args.class_map)
        # every check before TensorFlow is imported: errors come before its log noise
        split = prepare_split(RunConfig(backend=info.name, recipe=load_recipe("head"), data=data))
        out = _writable_dir(args.out)
        written = info.export_tfrecords(split, out, args.image_size)  # through the registry
        print(json.dumps(written, indent=2, default=str))
        return 0
    raise UsageError(f"unknown data command {args.data_command!r}")


def tfrecord_backend(text: str):
    """The ``BackendInfo`` of ``--backend`` for ``bench data export-tfrecord``: one backend
    that declares a TFRecord writer (``tfrecord_export``), else one line naming those that do."""
    names = parse_backends(text)
    writers = [n for n in backend_names() if backend_info(n).tfrecord_export]
    if len(names) != 1:
        raise UsageError(f"--backend {text!r}: export-tfrecord writes with one backend; choose "
                         f"one of: {', '.join(writers) or 'none'}")
    info = backend_info(names[0])
    if not info.tfrecord_export:
        raise UsageError(f"--backend {names[0]!r} writes no TFRecords (its BackendInfo declares no "
                         f"tfrecord_export); choose one of: {', '.join(writers) or 'none'}")
    return info


def _comma_list(option: str, text: str | None, allowed, what: str) -> list[str]:
    """``--option a,b`` checked against ``allowed`` (one line naming them when not)."""
    if text is None:
        return []
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        if item not in allowed:
            raise UsageError(f"{option} {item!r}: unknown {what}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def cmd_sweep(args: argparse.Namespace) -> int:
    """``bench throughput --sweep``: ``benchmarks.sweep`` (one JSON, markdown and plot)."""
    from benchmarks import sweep

    for flag, given in (("--batch-size", args.batch_size), ("--image-size", args.image_size),
                        ("--devices", args.devices != [1])):
        if given:
            raise UsageError(f"{flag} is for one measurement; --sweep measures batch sizes "
                             f"{', '.join(map(str, sweep.BATCH_SIZES))} at each model's own size "
                             f"on one device")
    sweep_backends = list(dict.fromkeys(b for b, _ in sweep.MODES))
    args.backend = [canonical_name(b) for b in _comma_list("--backend", args.backend, [
        *sweep_backends, *ALIASES], "backend for --sweep")] if args.backend else None
    args.model = _comma_list("--model", args.model, list(MODELS), "model")
    args.precision_list = _comma_list("--precision", args.precision, PRECISIONS, "precision")
    args.mode = _comma_list("--mode", args.mode, list(dict.fromkeys(m for _, m in sweep.MODES)),
                            "mode")
    args.steps_given, args.warmup_given = args.steps is not None, args.warmup is not None
    settings = sweep.settings_from_args(args, args.argv)
    out = _writable_dir(args.out or sweep.default_out(settings))
    record = sweep.run_sweep(settings, out)
    measured = [r for r in record["rows"] + record["end_to_end"] if r.get("status") == "ok"]
    failed = [r for r in record["rows"] + record["end_to_end"] if r.get("status") == "failed"]
    print(f"{len(measured)} rows measured, {len(failed)} failed, "
          f"{sum(r.get('status') == 'not run' for r in record['rows'] + record['end_to_end'])} not run "
          f"in {record['elapsed_seconds']:.0f} s"
          + (" (CPU SMOKE TEST: not a result)" if settings.smoke else ""))
    print(f"written: {out / 'throughput.json'}, {out / 'throughput.md'}, {out / 'throughput.png'}")
    return 1 if failed else 0


def cmd_throughput(args: argparse.Namespace) -> int:
    from benchmarks.throughput import measure_in_child

    if args.sweep:
        return cmd_sweep(args)
    for flag, given in (("--smoke", args.smoke), ("--budget-seconds", args.budget_seconds),
                        ("--mode", args.mode), ("--no-end-to-end", args.no_end_to_end)):
        if given:
            raise UsageError(f"{flag} belongs to --sweep; add --sweep or leave it out")
    args.backend = args.backend or "pytorch"
    args.model = args.model or "inception_v3"
    args.precision = args.precision or "fp32"
    if args.precision not in PRECISIONS:
        raise UsageError(f"--precision {args.precision!r}: choose one of {', '.join(PRECISIONS)}")
    args.batch_size = args.batch_size or 32
    args.steps = 10 if args.steps is None else args.steps
    args.warmup = 2 if args.warmup is None else args.warmup
    backends = parse_backends(args.backend)
    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    spec = MODELS[args.model]
    if args.image_size is not None and image_size_problem(args.image_size, spec.name):
        raise UsageError(f"--image-size {args.image_size}: "
                         f"{image_size_problem(args.image_size, spec.name)}")
    lacking = [b for b in backends if availability(b) is None and unsupported_model(b, args.model)]
    if lacking and len(lacking) == len(backends):
        raise UsageError(unsupported_model(lacking[0], args.model))
    for n in args.devices:
        if args.batch_size % n:
            raise UsageError(f"--batch-size {args.batch_size} is the global batch and must split "
                             f"evenly over --devices {n}; use a multiple of {n}")
        for b in backends:
            refusal = availability(b) is None and unsupported_parallel(b, n)
            if refusal:
                raise UsageError(refusal)
        problem = device_problem(n, False, cuda=cuda_visible(), cores=usable_cores())
        if problem:
            raise UsageError(problem)
    if args.out:  # before measuring: a measurement is never lost to its --out
        _writable_file(args.out, "--out", "throughput.json")
        _writable_file(args.out.with_suffix(".png"), "--out (its plot)", "throughput.png")
    rows = []
    for b in backends:
        reason = availability(b) or unsupported_model(b, args.model)
        if reason:
            print(f"{b}: skipped ({reason})")
            continue
        for n in args.devices:
            result = measure_in_child(b, args.model, args.batch_size, args.image_size,
                                      args.precision, args.steps, args.warmup, devices=n)
            rows.append(result)
            if result.get("status") != "ok":
                print(f"{b}: failed on {n} device(s) ({result.get('error')})")
                continue
            on = f" x{n} devices" if len(args.devices) > 1 else ""
            for kind in ("train", "infer"):
                t = result[kind]
                print(f"{b:8s} {args.model} {kind:5s} {result['precision']:4s} batch {args.batch_size}{on}: "
                      f"{t['images_per_second']:8.1f} img/s (p10 {t['images_per_second_p10']:.1f}, "
                      f"p90 {t['images_per_second_p90']:.1f}; first step {t['first_step_seconds']:.2f}s) "
                      f"on {result['device'].get('name', result['device'].get('kind'))}")
    scaling = []
    if len(args.devices) > 1:
        from benchmarks.throughput import scaling_rows

        scaling = scaling_rows(rows)
        for s in scaling:
            eff = "—" if s["scaling_efficiency"] is None else f"{s['scaling_efficiency']:.2f}"
            cpu = " (CPU: devices share its cores; says nothing about scaling)" \
                if s["device"] == "cpu" else ""
            print(f"{s['backend']:8s} {s['devices']} device(s): {s['train_images_per_second']:8.1f} "
                  f"train img/s, scaling efficiency {eff}{cpu}")
    if args.out:
        from common.results import write_json_atomic

        record = {"command": "bench " + " ".join(args.argv), "results": rows, "scaling": scaling}
        try:
            write_json_atomic(args.out, record)
            if scaling:
                from benchmarks.throughput import write_scaling_plot

                print(f"scaling plot: {write_scaling_plot(scaling, args.out.with_suffix('.png'))}")
        except OSError as err:  # it changed while measuring: the result goes to stdout instead
            print(json.dumps(record, indent=2, default=str))
            raise UsageError(f"--out {str(args.out)!r} could not be written after measuring "
                             f"({err.strerror or err}); the result is printed above as JSON") from None
    return 1 if any(r.get("status") != "ok" for r in rows) else 0


def _readable_results(run_dir: Path):
    """The results of ``run_dir`` (``common.results.RunResults``); one-line error when none is readable."""
    from common.results import load_results

    if not run_dir.is_dir():
        raise UsageError(f"run directory {str(run_dir)!r} does not exist")
    run = load_results(run_dir)
    if not run.results:
        why = "; ".join(f"{u.path}: {u.reason}" for u in run.unreadable[:3])
        raise UsageError(f"{str(run_dir)!r} has no {'readable ' * bool(why)}*/result.json"
                         + (f" ({len(run.unreadable)} unreadable: {why})" if why else "")
                         + "; give a 'bench run' directory")
    return run


def cmd_report(args: argparse.Namespace) -> int:
    from benchmarks import report

    run = _readable_results(args.run_dir)
    problem = report.report_write_problem(args.run_dir)  # before the table: one line, exit 2
    if problem:
        raise UsageError(f"report not written: {problem}; bench report writes "
                         f"{', '.join(report.REPORT_FILES)} into the run directory")
    _print_summary(args.run_dir, run.results, write=False)
    print("\n" + _write_report(args.run_dir))
    for line in report.unreadable_lines(run):
        print(line)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from benchmarks import report

    for d in (args.run_a, args.run_b):
        _readable_results(d)
    print(report.compare(args.run_a, args.run_b))
    return 0


def cmd_weights(args: argparse.Namespace) -> int:
    from benchmarks import weights_cli

    if args.weights_command == "where":
        print(weights_cli.where_table())
        return 0
    if args.weights_command == "convert":
        from benchmarks.conversion import convert_checkpoint

        if args.model not in MODELS:
            raise UsageError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
        _writable_file(args.output, "--output", "converted")  # before either framework starts
        out = convert_checkpoint(args.model, args.source, args.target, args.input, args.output)
        dropped = f"; dropped (no canonical form): {len(out['dropped'])} tensor(s), e.g. " \
                  f"{out['dropped'][0]}" if out["dropped"] else ""
        print(f"{args.source} -> {args.target}: {out['output']} (digest {out['digest']}){dropped}")
        return 0
    parse_backends(args.backend)
    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    return weights_cli.fetch(args.backend, args.model)


def cmd_eval(args: argparse.Namespace) -> int:
    from benchmarks import saved_run

    _check_class_map(args.class_map, args.data)
    run = saved_run.open_run(args.run)
    print(saved_run.eval_text(saved_run.evaluate(run, args.checkpoint, args.data, args.class_map)))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from benchmarks import saved_run

    if args.imagenet:
        return cmd_predict_imagenet(args)
    if args.target is None or not args.images:
        raise UsageError("bench predict needs a run folder (or checkpoint) and at least one "
                         "image, or --imagenet")
    for flag, value in (("--model", args.model), ("--image-size", args.image_size)):
        if value is not None:
            raise UsageError(f"{flag} is for --imagenet; a run's model and size are its own")
    run, checkpoint = saved_run.open_target(args.target, args.checkpoint)
    predictions = saved_run.predict(run, checkpoint, args.images, args.top_k)
    print(saved_run.predict_text(run, checkpoint, predictions))
    return 0


def cmd_predict_imagenet(args: argparse.Namespace) -> int:
    from benchmarks.imagenet_predict import (DEFAULT_IMAGES, check_images, predict_imagenet,
                                             predict_imagenet_text)
    from benchmarks.parity import shared_imagenet_file

    # the first model whose ImageNet weights are shared by every backend (EfficientNet-Lite0)
    model = args.model or next((n for n, m in MODELS.items() if m.shared_imagenet), "")
    if model not in MODELS:
        raise UsageError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
    images = [i for i in (args.target, *args.images) if i is not None] or list(DEFAULT_IMAGES)
    backends = None if args.backend == "all" else parse_backends(args.backend)
    shared_imagenet_file(model)  # checked before any framework starts
    check_images(images)
    record = predict_imagenet(model, images, backends=backends, image_size=args.image_size,
                              top_k=args.top_k)
    print(predict_imagenet_text(record))
    return 0 if record["ok"] else 1


def cmd_export(args: argparse.Namespace) -> int:
    from benchmarks import saved_run

    run = saved_run.open_run(args.run)
    out = _writable_dir(args.out) if args.out else None
    print(saved_run.export_text(saved_run.export(run, args.format, args.checkpoint, out)))
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from benchmarks.explain import ExplainError, render

    recipe = load_recipe(args.recipe)
    try:
        markdown, html = render(recipe)  # every region read before anything is written
    except ExplainError as err:
        raise UsageError(f"bench explain: {err}") from None
    _writable_dir(args.out)
    md_path, html_path = args.out / f"explain-{recipe.name}.md", args.out / f"explain-{recipe.name}.html"
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(html, encoding="utf-8")
    print(f"written: {md_path}, {html_path}")
    return 0


def cmd_parity(args: argparse.Namespace) -> int:
    from benchmarks.parity import check_parity_request, markdown, run_parity

    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    size = args.image_size or MODELS[args.model].min_size
    backends = None if args.backend == "all" else parse_backends(args.backend)
    if args.train:
        check_parity_request(args.model, size, backends)  # before anything is written
        return _train_parity(args, size, backends)
    if args.cases:
        raise UsageError("--cases goes with --train")
    check_parity_request(args.model, size, backends, args.weights)  # before anything is written
    out = args.out or Path("results") / f"parity-{args.model}-{size}px-{args.alignment}"
    _writable_dir(out)
    report = run_parity(args.model, size, out, backends=backends, weights=args.weights,
                        alignment=args.alignment, seed=args.seed,
                        command=shlex.join(["bench", *args.argv]))
    print(markdown(report))
    print(f"written: {out / 'parity.json'}, {out / 'parity.md'}")
    return 0 if report["ok"] else 1


def _train_parity(args: argparse.Namespace, size: int, backends: list[str] | None) -> int:
    from benchmarks.parity import TRAIN_CASES, run_train_parity, train_markdown

    if args.weights != "random" or args.alignment != "suite":
        raise UsageError("--train starts from seeded random weights of the suite's aligned "
                         "models: drop --weights and --alignment")
    cases = [c.strip() for c in (args.cases or "").split(",") if c.strip()] or list(TRAIN_CASES)
    unknown = [c for c in cases if c not in TRAIN_CASES]
    if unknown:
        raise UsageError(f"--cases: unknown case {unknown[0]!r}; choose from: "
                         f"{', '.join(TRAIN_CASES)}")
    out = args.out or Path("results") / f"train-parity-{args.model}-{size}px"
    _writable_dir(out)
    report = run_train_parity(args.model, size, out, backends=backends, cases=cases,
                              seed=args.seed, command=shlex.join(["bench", *args.argv]))
    print(train_markdown(report))
    print(f"written: {out / 'train_parity.json'}, {out / 'train_parity.md'}")
    return 0 if all(all(p.values()) for p in report["aligned_within_target"].values()) else 1


COMMANDS = {"run": cmd_run, "list": cmd_list, "recipe": cmd_recipe, "data": cmd_data, "throughput": cmd_throughput,
            "report": cmd_report, "compare": cmd_compare, "eval": cmd_eval,
            "predict": cmd_predict, "export": cmd_export, "weights": cmd_weights,
            "parity": cmd_parity, "explain": cmd_explain}


SLIM_FLAGS_OWN_OPTIONS = ("--name", "--epochs", "--out")


def slim_flags_argv(argv: list[str]) -> list[str]:
    """``bench recipe from-slim-flags`` takes the script's flags as one quoted argument or
    as they are (``--learning_rate=0.01``, which argparse would read as an option of its
    own): every argument that is not one of its own options (``SLIM_FLAGS_OWN_OPTIONS``,
    ``--help``) is a flag, joined in order into the one positional argument after ``--``."""
    if argv[:2] != ["recipe", "from-slim-flags"]:
        return argv
    own, flags, rest = [], [], iter(argv[2:])
    for a in rest:
        if a in ("-h", "--help"):
            own.append(a)
        elif a.split("=", 1)[0] in SLIM_FLAGS_OWN_OPTIONS:
            own.append(a)
            if "=" not in a:
                own.append(next(rest, ""))
        elif a != "--":
            flags.append(a)
    return [*argv[:2], *own, *(["--", " ".join(flags)] if flags else [])]


def main(argv: list[str] | None = None) -> int:
    configure_console()
    # matplotlib's font cache and config live with the suite's other caches, not in $HOME
    # (docs/design.md: everything generated or cached lives under the cache root)
    os.environ.setdefault("MPLCONFIGDIR", str(cache_root() / "matplotlib"))
    argv = sys.argv[1:] if argv is None else list(argv)
    args = get_args_parser().parse_args(slim_flags_argv(argv))
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError, DataError, BackendError, PlanError, SavedRunError,
            ConversionError) as err:
        message = " ".join(str(err).split())  # one line, whatever the message held
        print(f"bench: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except BackendProcessFailed as err:  # not bad input: an export that fails its check, a crash
        print(f"bench: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
