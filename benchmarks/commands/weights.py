"""``bench weights``: where each backend's ImageNet weights go offline, their
download, and a native checkpoint of one backend converted to another's."""

from __future__ import annotations

import argparse

from benchmarks.commands.shared import UsageError, out_path, parse_backends, writable_file
from common.models import MODELS


def add_parser(sub) -> None:
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
    conv.add_argument("--output", required=True, type=out_path,
                      help="where to write (suffix added: .pt, .weights.h5, .ckpt prefix)")


def cmd_weights(args: argparse.Namespace) -> int:
    from benchmarks import weights_cli

    if args.weights_command == "where":
        print(weights_cli.where_table())
        return 0
    if args.weights_command == "convert":
        from benchmarks.conversion import convert_checkpoint

        if args.model not in MODELS:
            raise UsageError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
        writable_file(args.output, "--output", "converted")  # before either framework starts
        out = convert_checkpoint(args.model, args.source, args.target, args.input, args.output)
        dropped = f"; dropped (no canonical form): {len(out['dropped'])} tensor(s), e.g. " \
                  f"{out['dropped'][0]}" if out["dropped"] else ""
        print(f"{args.source} -> {args.target}: {out['output']} (digest {out['digest']}){dropped}")
        return 0
    parse_backends(args.backend)
    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    return weights_cli.fetch(args.backend, args.model)


HANDLERS = {"weights": cmd_weights}
