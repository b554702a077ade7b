"""``bench recipe from-slim-flags``: a recipe TOML from the flags of a slim
``train_image_classifier.py`` command line (``benchmarks.slim_flags``)."""

from __future__ import annotations

import argparse

from benchmarks.commands.shared import UsageError, out_path, positive, writable_file


def add_parser(sub) -> None:
    rec = sub.add_parser("recipe", help="recipe tools")
    rsub = rec.add_subparsers(dest="recipe_command", required=True, metavar="RECIPE_COMMAND")
    fsf = rsub.add_parser("from-slim-flags", help="a recipe TOML from the flags of a slim "
                                                  "train_image_classifier.py command line")
    fsf.add_argument("flags", help="the flags, quoted as one argument or given as they are "
                                   "(--learning_rate=0.01 --optimizer=sgd ...)")
    fsf.add_argument("--name", default="slim_flags", help="the recipe's name (default slim_flags)")
    fsf.add_argument("--epochs", type=positive, default=1,
                     help="epochs of its phase (the script counts steps; default 1)")
    fsf.add_argument("--out", type=out_path, help="write the TOML here (default: print it)")


def cmd_recipe(args: argparse.Namespace) -> int:
    from benchmarks.slim_flags import from_slim_flags, recipe_toml

    command = from_slim_flags(args.flags, name=args.name, epochs=args.epochs)
    text = recipe_toml(command)
    if args.out is None:
        print(text, end="")
        return 0
    writable_file(args.out, "--out", f"{args.name}.toml")
    try:
        from common.results import write_text_atomic

        write_text_atomic(args.out, text)
    except OSError as err:
        raise UsageError(f"--out {str(args.out)!r} cannot be written ({err.strerror or err}); "
                         f"choose another --out") from None
    print(f"written: {args.out}; run it with: bench run --recipe {args.out} "
          f"{command.run_options_text()}".rstrip())
    return 0


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


HANDLERS = {"recipe": cmd_recipe}
