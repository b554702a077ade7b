"""``bench data``: the synthetic domains, a dataset's inspection, and the common
split as TFRecords, written by the backend that declares a TFRecord writer
(``BackendInfo.tfrecord_export``, reached through the registry)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from backends.base import availability, backend_info, backend_names
from benchmarks.commands.shared import (UsageError, add_split_options, check_class_map,
                                        nonnegative, out_path, parse_backends, positive,
                                        writable_dir)
from common import synthetic
from common.config import MAX_IMAGE_SIZE, DataConfig, RunConfig, load_recipe, validate_split_options
from common.paths import kind_of


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="dataset tools")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    syn = dsub.add_parser("synthetic", help="generate the synthetic domains and print stats")
    syn.add_argument("--domain", choices=("shapes", "quads", "both"), default="both")
    syn.add_argument("--images-per-class", type=positive)
    syn.add_argument("--seed", type=int, default=0)
    ins = dsub.add_parser("inspect", help="classes, counts per split, modes, sizes, problems")
    ins.add_argument("path", help="image folder or label|path meta file")
    ins.add_argument("--class-map")
    add_split_options(ins)
    ins.add_argument("--seed", type=nonnegative, dest="split_seed", default=argparse.SUPPRESS,
                     help=argparse.SUPPRESS)  # the flag's earlier name
    tfr = dsub.add_parser("export-tfrecord", help="write the common split as slim TFRecords")
    tfr.add_argument("--backend", default="slim",
                     help="the backend whose TFRecord writer writes them (default slim, the one "
                          "that has one)")
    tfr.add_argument("--data", default="synthetic")
    tfr.add_argument("--class-map")
    tfr.add_argument("--out", type=out_path, required=True)
    tfr.add_argument("--image-size", type=positive)


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
        check_class_map(args.class_map, args.path)

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
        check_class_map(args.class_map, args.data)
        if args.image_size is not None and args.image_size > MAX_IMAGE_SIZE:
            raise UsageError(f"--image-size {args.image_size}: at most {MAX_IMAGE_SIZE} px")
        data = DataConfig(source="synthetic" if args.data == "synthetic" else str(Path(args.data).resolve()),
                          class_map=args.class_map)
        # every check before TensorFlow is imported: errors come before its log noise
        split = prepare_split(RunConfig(backend=info.name, recipe=load_recipe("head"), data=data))
        out = writable_dir(args.out)
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


HANDLERS = {"data": cmd_data}
