"""The measured one-step effect in docs/differences.md, written from a ``bench parity
--train`` report, never typed.

``python -m benchmarks.differences_rows REPORT.json [--docs docs/differences.md]`` replaces
the text between ``<!-- train-parity:SWITCH -->`` and ``<!-- /train-parity -->`` in every
row that carries those markers with what the report measured in native mode after one step
for that fidelity switch: for each pair whose native difference the switch explains, the
largest relative difference of a block after one step with that switch alone native and
every other one aligned (its own effect; and which block, trained tensors or moving
statistics), and the case it was measured in.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from benchmarks.parity import MOVING, PARAMS

MARKER = re.compile(r"<!-- train-parity:(\w+) -->(.*?)<!-- /train-parity -->")
DOCS = Path(__file__).resolve().parent.parent / "docs" / "differences.md"


def one_step_effect(report: dict, switch: str) -> str:
    """The one-step native effect of ``switch`` in ``report``, as one cell's text."""
    parts = []
    for case, r in report["cases"].items():
        for pair, switches in r["explained_by"].items():
            if switch not in switches:
                continue
            # the switch's own effect: the run with it alone native (every other aligned)
            runs = r["fidelity"].get(f"{switch} native", r["fidelity"]["native"])
            steps = runs[pair]["steps"]
            first = steps.get("1", steps.get(1))  # JSON keys are strings
            block, kind, cell = max(((b, k, c) for b, cells in first.items()
                                     for k, c in cells.items() if k in (PARAMS, MOVING)),
                                    key=lambda x: x[2]["rel"])
            parts.append(f"{pair} {cell['rel']:.1e} ({block} {kind}, `{case}`)")
    where = (f"`{report.get('command') or 'bench parity --train'}`, {report['image_size']} px, "
             f"weights {report['weights']['digest'][:8]}")
    if not parts:
        return f"measured one step, native ({where}): no pair's difference explained by it"
    return f"measured one step, native ({where}), relative: " + "; ".join(parts)


def rewrite(text: str, report: dict) -> str:
    return MARKER.sub(lambda m: f"<!-- train-parity:{m.group(1)} -->"
                                f"{one_step_effect(report, m.group(1))}<!-- /train-parity -->", text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.differences_rows")
    p.add_argument("report", type=Path, help="train_parity.json of bench parity --train")
    p.add_argument("--docs", type=Path, default=DOCS)
    args = p.parse_args(argv)
    report = json.loads(args.report.read_text(encoding="utf-8"))
    args.docs.write_text(rewrite(args.docs.read_text(encoding="utf-8"), report), encoding="utf-8")
    print(f"written: {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
