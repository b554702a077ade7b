"""``bench eval``, ``bench predict`` and ``bench export``: a finished run's checkpoint
in a process of its backend (``benchmarks.saved_run``); ``bench predict --imagenet``:
ImageNet classes from weights every backend shares."""

from __future__ import annotations

import argparse

from benchmarks.commands.shared import (UsageError, check_class_map, out_path, parse_backends,
                                        positive, writable_dir)
from common.models import MODELS


def add_parser(sub) -> None:
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
    pr.add_argument("--image-size", type=positive, help="with --imagenet: default the model's "
                                                         "native size (224 px)")
    pr.add_argument("--checkpoint", choices=("best", "last"), default="best",
                    help="for a run folder: which checkpoint (default best)")
    pr.add_argument("--top-k", type=positive, default=5, help="classes shown per image (default 5)")
    ex = sub.add_parser("export", help="write a run's model in its framework's deployable format, "
                                       "checked against the native logits")
    ex.add_argument("run", metavar="RUN", help="a run folder: RUN_DIR/<backend>-<recipe>-s<seed>")
    ex.add_argument("--format", required=True,
                    help="pytorch: torchscript, onnx; keras: keras, savedmodel; "
                         "slim: savedmodel, frozen_graph")
    ex.add_argument("--checkpoint", choices=("best", "last"), default="best")
    ex.add_argument("--out", type=out_path, help="folder for the export (default RUN/export/FORMAT)")


def cmd_eval(args: argparse.Namespace) -> int:
    from benchmarks import saved_run

    check_class_map(args.class_map, args.data)
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
    out = writable_dir(args.out) if args.out else None
    print(saved_run.export_text(saved_run.export(run, args.format, args.checkpoint, out)))
    return 0


HANDLERS = {"eval": cmd_eval, "predict": cmd_predict, "export": cmd_export}
