"""``bench parity``: the same weights and images through every backend (per-block
differences), or with ``--train`` the same training steps (``benchmarks.parity``)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from benchmarks.commands.shared import UsageError, out_path, parse_backends, positive, writable_dir
from common.models import MODELS


def add_parser(sub) -> None:
    par = sub.add_parser("parity", help="same weights and images through every backend: max abs "
                                        "difference per canonical block")
    par.add_argument("--model", default="inception_v3")
    par.add_argument("--image-size", type=positive, help="default: the model's minimum (75 px)")
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
                          "(aligned, on the batch moved by one ulp); writes train_parity.json/.md. "
                          "Exit status 0 when every aligned pair of every case is within 1e-5 "
                          "relative after 3 steps (float32: or within the pair's measured fp32 "
                          "floor), else 1")
    par.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                     help="with --train: the dtype every backend builds and steps the model in "
                          "(default float32). float64 runs no fp32 floor and exits 0 only when "
                          "every aligned pair is within 1e-5; slim's moving statistics are not "
                          "compared in float64 (TensorFlow has no float64 fused batch norm)")
    par.add_argument("--cases", help="with --train: a comma list of cases (default: all): "
                                     "head-momentum, top2-rmsprop-bn-frozen, top2-sgd-bn-train-wd, "
                                     "all-adam-bn-inference, all-adamw-wd-head-x10, "
                                     "all-momentum-bn-train")
    par.add_argument("--out", type=out_path, help="directory for parity.json and parity.md "
                                              "(default: results/parity-<model>-<size>px-<alignment>; with "
                                              "--train: results/train-parity-<model>-<size>px-"
                                              "<dtype>)")


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
    if args.dtype != "float32":
        raise UsageError("--dtype goes with --train")
    check_parity_request(args.model, size, backends, args.weights)  # before anything is written
    out = args.out or Path("results") / f"parity-{args.model}-{size}px-{args.alignment}"
    writable_dir(out)
    report = run_parity(args.model, size, out, backends=backends, weights=args.weights,
                        alignment=args.alignment, seed=args.seed,
                        command=shlex.join(["bench", *args.argv]))
    print(markdown(report))
    print(f"written: {out / 'parity.json'}, {out / 'parity.md'}")
    return 0 if report["ok"] else 1


def _train_parity(args: argparse.Namespace, size: int, backends: list[str] | None) -> int:
    from benchmarks.parity import (TRAIN_CASES, run_train_parity, train_markdown,
                                   train_parity_passes)

    if args.weights != "random" or args.alignment != "suite":
        raise UsageError("--train starts from seeded random weights of the suite's aligned "
                         "models: drop --weights and --alignment")
    cases = [c.strip() for c in (args.cases or "").split(",") if c.strip()] or list(TRAIN_CASES)
    unknown = [c for c in cases if c not in TRAIN_CASES]
    if unknown:
        raise UsageError(f"--cases: unknown case {unknown[0]!r}; choose from: "
                         f"{', '.join(TRAIN_CASES)}")
    out = args.out or Path("results") / f"train-parity-{args.model}-{size}px-{args.dtype}"
    writable_dir(out)
    report = run_train_parity(args.model, size, out, backends=backends, cases=cases,
                              seed=args.seed, command=shlex.join(["bench", *args.argv]),
                              dtype=args.dtype)
    print(train_markdown(report))
    print(f"written: {out / 'train_parity.json'}, {out / 'train_parity.md'}")
    return 0 if train_parity_passes(report) else 1


HANDLERS = {"parity": cmd_parity}
