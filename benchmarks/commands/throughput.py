"""``bench throughput``: model-step img/s of one backend and model on one or more
device counts (``benchmarks.throughput``), or with ``--sweep`` every backend, model,
precision and batch size (``benchmarks.sweep``)."""

from __future__ import annotations

import argparse
import json

from backends.base import ALIASES, availability, canonical_name, unsupported_model, unsupported_parallel
from benchmarks.commands.shared import (UsageError, comma_list, device_counts, nonnegative, out_path,
                                        parse_backends, positive, writable_dir, writable_file)
from common.config import PRECISIONS, image_size_problem
from common.models import MODELS, SMOKE_MODEL
from common.parallel import cuda_visible, device_problem, usable_cores


def add_parser(sub) -> None:
    tp = sub.add_parser("throughput", help="model-step train/infer img/s (throughput protocol); "
                                           "--sweep: every backend, model, precision and batch")
    tp.add_argument("--backend", help="one backend (default pytorch); with --sweep a comma list "
                                      "(default: every backend the sweep runs)")
    tp.add_argument("--model", help="one model (default inception_v3); with --sweep a comma list "
                                    "(default: every model of the suite's table)")
    tp.add_argument("--batch-size", type=positive, help="default 32")
    tp.add_argument("--image-size", type=positive)
    tp.add_argument("--precision", help=f"one of {', '.join(PRECISIONS)} (default fp32); with "
                                        f"--sweep a comma list (default: both)")
    tp.add_argument("--steps", type=positive)
    tp.add_argument("--warmup", type=nonnegative)
    tp.add_argument("--devices", type=device_counts, default=[1], metavar="N,...",
                    help="device counts to measure, e.g. 1,2 (--batch-size is the global batch); "
                         "prints img/s and scaling efficiency per count")
    tp.add_argument("--out", type=out_path, help="write the JSON result here; with --sweep the folder "
                                             "of throughput.json, .md and .png")
    tp.add_argument("--sweep", action="store_true",
                    help="every backend x model x precision x mode x batch size (256/128/64) "
                         "and real epochs over JPEG files, within --budget-seconds")
    tp.add_argument("--smoke", action="store_true",
                    help="with --sweep: the same code on a CPU with tiny sizes (the smallest "
                         f"model, {SMOKE_MODEL}, at its minimum size, "
                         "fp32, unless --model/--precision say otherwise), an injected "
                         "out-of-memory error and device name (never a result)")
    tp.add_argument("--budget-seconds", type=positive, help="with --sweep: finish within this "
                                                             "(default 420; --smoke 1800)")
    tp.add_argument("--mode", help="with --sweep: a comma list of eager, torch.compile, XLA, "
                                   "tf.function, graph (default: all)")
    tp.add_argument("--no-end-to-end", action="store_true",
                    help="with --sweep: model steps only, no epochs over JPEG files")


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
    args.backend = [canonical_name(b) for b in comma_list("--backend", args.backend, [
        *sweep_backends, *ALIASES], "backend for --sweep")] if args.backend else None
    args.model = comma_list("--model", args.model, list(MODELS), "model")
    args.precision_list = comma_list("--precision", args.precision, PRECISIONS, "precision")
    args.mode = comma_list("--mode", args.mode, list(dict.fromkeys(m for _, m in sweep.MODES)),
                            "mode")
    args.steps_given, args.warmup_given = args.steps is not None, args.warmup is not None
    settings = sweep.settings_from_args(args, args.argv)
    out = writable_dir(args.out or sweep.default_out(settings))
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
        writable_file(args.out, "--out", "throughput.json")
        writable_file(args.out.with_suffix(".png"), "--out (its plot)", "throughput.png")
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


HANDLERS = {"throughput": cmd_throughput}
