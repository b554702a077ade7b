"""Child-process entry point for weights work in one framework (one ``result`` message out).

``python -m benchmarks.weights_worker COMMAND ...`` where COMMAND is

* ``read --backend B --model M --input NATIVE --output NPZ``: B's checkpoint -> canonical;
* ``write --backend B --model M --input NPZ --output NATIVE``: canonical -> B's checkpoint;
* ``outputs --backend B --model M --weights NPZ --images NPZ --output NPZ [--alignment A]``:
  ``bench parity``: B's model holding the canonical weights (``convert``'s mapping) and
  every canonical block's output for the images;
* ``train --backend B --model M --weights NPZ --batch NPZ --case JSON --output NPZ``:
  ``bench parity --train``: K steps of the case's phase in B from the canonical weights
  on the fixed batch, the loss of each and the canonical tensors after each K;
* ``pretrain --config CONFIG.json --image-size N --cache DIR``: pretrain the source
  model on ``shapes`` in the config's backend and export its canonical weights
  (``driver.pretrain_and_export_source``).

Log messages go to the parent as ``log`` messages (``benchmarks.child``; it logs them
again: pretraining shows its epochs); the answer is a ``result`` message
``{"status": "ok", ...}`` or an ``error`` message of one line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from backends.base import BackendError
from benchmarks import child
from common import canonical
from common.data import DataError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.weights_worker")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("read", "write"):
        c = sub.add_parser(name)
        c.add_argument("--backend", required=True)
        c.add_argument("--model", required=True)
        c.add_argument("--input", required=True)
        c.add_argument("--output", required=True)
    # outputs: every canonical block's output (bench parity); train: K steps of a case
    # (bench parity --train); both from one weights file
    o, r = sub.add_parser("outputs"), sub.add_parser("train")
    for c, inputs in ((o, ("--images",)), (r, ("--batch", "--case"))):
        for flag in ("--backend", "--model", "--weights", *inputs, "--output"):
            c.add_argument(flag, required=True)
    o.add_argument("--alignment", choices=("suite", "native"), default="suite")
    t = sub.add_parser("pretrain")
    t.add_argument("--config", required=True)
    t.add_argument("--image-size", type=int, required=True)
    t.add_argument("--cache", required=True)
    return p


def run(args: argparse.Namespace) -> dict:
    from benchmarks import conversion

    if args.command == "read":
        meta = conversion.to_canonical(args.backend, args.model, args.input, Path(args.output),
                                       in_process=True)
        return {"meta": meta}
    if args.command == "write":
        out = conversion.from_canonical(args.backend, args.model, Path(args.input), args.output,
                                        in_process=True)
        return {"output": str(out)}
    if args.command == "outputs":
        from benchmarks.parity import backend_block_outputs

        images = np.load(args.images)["images"]
        tensors, _ = canonical.load(Path(args.weights))
        outputs = backend_block_outputs(args.backend, args.model, tensors, images, args.alignment)
        np.savez(args.output, **{k: np.asarray(v, np.float32) for k, v in outputs.items()})
        return {"blocks": list(outputs)}
    if args.command == "train":
        from benchmarks.parity import backend_train_steps, save_train_steps
        from common.config import Fidelity, parse_phase

        case = json.loads(Path(args.case).read_text())
        phase = parse_phase({k: v for k, v in case["phase"].items() if v not in (None, [], ())},
                            args.case)
        with np.load(args.batch) as batch:
            images, labels = batch["images"], batch["labels"]
        tensors, _ = canonical.load(Path(args.weights))
        result = backend_train_steps(args.backend, args.model, tensors, images, labels, phase,
                                     Fidelity(**case["fidelity"]), case["steps"],
                                     case.get("dtype", "float32"))
        save_train_steps(Path(args.output), result)
        return {"loss": result["loss"]}
    if args.command == "pretrain":
        from benchmarks.driver import pretrain_and_export_source
        from common.config import RunConfig

        config = RunConfig.from_dict(json.loads(Path(args.config).read_text()))
        meta = pretrain_and_export_source(config, args.image_size, Path(args.cache))
        return {"meta": meta}
    raise ValueError(args.command)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    child.begin()  # a pretraining child must not outlive its run
    return child.serve(lambda: {"status": "ok", **run(args)},
                       failed=(BackendError, canonical.ConversionError, DataError))


if __name__ == "__main__":
    sys.exit(main())
