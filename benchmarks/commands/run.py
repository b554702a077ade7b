"""``bench run``: its flags, the validated ``RunConfig`` of each (backend, recipe, seed)
(``build_configs``, every check in the parent before anything is written), the claim of
the run directory, the sweep (``benchmarks.runner``) and its summary and report."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path

from backends import native
from backends.base import (availability, backend_info, backends_with_model, unsupported_model,
                           unsupported_parallel)
from benchmarks.commands.report import print_summary
from benchmarks.commands.shared import (OneLineParser, UsageError, add_split_options, check_class_map,
                                        claim_sweep, name_list, nonnegative, out_path,
                                        parse_backends, positive, refuse_foreign_files,
                                        refuse_if_claimed, seed_list, workers_type, writable_dir)
from common.config import (FIDELITY_SETTINGS, PRECISIONS, DataConfig, ModelConfig, Recipe, RunConfig,
                           TrainConfig, load_recipe, override_epochs, parse_fidelity, validate_run)
from common.models import MODELS
from common.parallel import cuda_visible, device_problem, usable_cores
from common.paths import kind_of
from common.preprocess import PRESETS
from common.results import run_name

DEFAULT_RECIPES = ("two_phase", "scratch")
RESUME_OPTIONS = ("resume", "no_report")
log = logging.getLogger(__name__)


def add_parser(sub) -> argparse.ArgumentParser:
    run = sub.add_parser("run", help="train and evaluate (backend x recipe x seed), then report")
    run.add_argument("--backend", default="all",
                     help="pytorch, keras (= keras-tensorflow), keras-jax, keras-torch, slim, all "
                          "(pytorch, keras, slim), or a comma list (default: all)")
    run.add_argument("--recipe", type=name_list, metavar="NAME|PATH,...",
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
    run.add_argument("--epochs", type=positive, help="override the epochs of every phase")
    run.add_argument("--batch-size", type=positive, default=16)
    run.add_argument("--image-size", type=positive,
                     help="square input size (default: 64 or the model minimum for synthetic data, "
                          "the model's native size otherwise)")
    run.add_argument("--seeds", type=seed_list, default=[0], help="comma list, e.g. 0,1,2")
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
    add_split_options(run)
    run.add_argument("--workers", type=workers_type, default=0, metavar="N",
                     help="image-decoding workers: PyTorch DataLoader num_workers (default 0: in "
                          "the training process), tf.data num_parallel_calls (0: AUTOTUNE)")
    par = run.add_argument_group(
        "more than one device", "data parallel on each framework's own engine; --batch-size is "
        "the global batch, split evenly, the learning rate unchanged (docs/devices.md)")
    par.add_argument("--devices", "--nproc-per-node", dest="devices", type=positive, default=1,
                     metavar="N", help="devices per node (PyTorch: processes under torchrun, "
                                       "NCCL on CUDA, gloo on CPU; slim: --num_clones)")
    par.add_argument("--nnodes", type=positive, default=1, metavar="N",
                     help="nodes (PyTorch only; torchrun's --nnodes)")
    par.add_argument("--node-rank", type=nonnegative, default=0, metavar="R",
                     help="this node's rank (torchrun's --node-rank)")
    par.add_argument("--rdzv-endpoint", default="", metavar="HOST:PORT",
                     help="torchrun's rendezvous endpoint, the same on every node")
    par.add_argument("--rdzv-timeout", type=positive, default=900, metavar="SECONDS",
                     help="how long a node waits for the others at the rendezvous (default 900)")
    par.add_argument("--sync-bn", action="store_true",
                     help="PyTorch: SyncBatchNorm (batch statistics over every device) in "
                          "phases with bn = \"train\"")
    run.add_argument("--out", type=out_path, help="run directory (default: results/<timestamp>)")
    run.add_argument("--resume", type=Path, metavar="RUN_DIR",
                     help="finish the missing runs of an earlier sweep")
    run.add_argument("--no-report", action="store_true", help="skip writing report.md/html")
    return run


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
    check_class_map(args.class_map, args.data)
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
    parser = OneLineParser(prog="bench")
    run = add_parser(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    dests = [a.dest for a in run._actions if a.option_strings and a.dest not in ("help",)]
    unset = object()  # not a string: argparse would run a string default through `type`
    run.set_defaults(**{d: unset for d in dests})
    given = parser.parse_args(argv)
    options = {a.dest: a.option_strings[-1] for a in run._actions if a.option_strings}
    return [options[d] for d in dests if d not in RESUME_OPTIONS and getattr(given, d) is not unset]


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
        writable_dir(run_dir)
        claim = claim_sweep(run_dir, "--resume")
        runs = runner.read_plan(run_dir)
    else:
        run_dir = args.out or Path("results") / time.strftime("%Y%m%d-%H%M%S")
        if args.out and (args.out / runner.SWEEP_FILE).is_file():
            refuse_if_claimed(args.out, "--out")
            raise UsageError(f"--out {str(args.out)!r} already holds a sweep; continue it with "
                             f"--resume {args.out} or choose a new --out")
        configs = build_configs(args, run_dir)  # validates before anything is written
        refuse_foreign_files(run_dir)
        _check_data(configs[0])
        offline = missing_imagenet_weights(configs)  # before any run starts: no framework
        if offline:
            raise UsageError(offline)
        writable_dir(run_dir)
        claim = claim_sweep(run_dir, "--out")  # atomic: a second bench run on it stops here
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
        print_summary(run_dir, results, write=not args.no_report)
    return 1 if any(r["status"] == "failed" for r in results) else 0


HANDLERS = {"run": cmd_run}
