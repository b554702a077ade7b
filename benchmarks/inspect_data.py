"""``bench data inspect PATH``: what a dataset holds and what is wrong with it.

Prints the classes, counts per split (the split every backend will use),
image modes and sizes, and the problems found: unreadable files (skipped at
training time), images below a model's minimum size (upscaled), classes too
small to split, duplicate files. Nothing is written. It refuses what ``bench
run`` refuses, through the same functions (``common.verify.usable_dataset``,
``common.data.split_dataset``): the report is printed, then the reason, and
the command exits 2.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from common.data import DataError, load_dataset, split_dataset
from common.models import MODELS
from common.verify import scan, smaller_than, usable_dataset


def inspect_dataset(path: str, class_map: str | None = None, seed: int = 0,
                    val_fraction: float | None = None,
                    test_fraction: float | None = None) -> tuple[str, str | None]:
    """A human-readable report of the dataset at ``path`` and, when ``bench run`` would refuse
    the data (with these split options), why (one line; None when it would train on it)."""
    ds = load_dataset(path, class_map)
    infos = scan(ds)
    try:
        good, skipped, duplicates = usable_dataset(ds, infos=infos)
        refused = None
    except DataError as err:
        good, skipped, duplicates, refused = ds, [(i.path, i.problem) for i in infos if i.problem], [], str(err)
    lines = [f"dataset: {ds.root}", f"classes: {len(ds.classes)}"]
    per_class = Counter(s.label for s in good.samples)
    for i, c in enumerate(ds.classes):
        lines.append(f"  {c}: {per_class.get(i, 0)} usable image(s)")
    ok = [i for i in infos if not i.problem]
    modes = Counter(i.mode for i in ok)
    lines.append(f"images: {len(infos)} files, {len(ok)} usable; modes: "
                 + ", ".join(f"{m} {n}" for m, n in modes.most_common()))
    if ok:
        w = np.array([i.width for i in ok])
        h = np.array([i.height for i in ok])
        lines.append(f"sizes: width {w.min()}..{w.max()} (median {int(np.median(w))}), "
                     f"height {h.min()}..{h.max()} (median {int(np.median(h))})")
    problems = [f"unreadable, skipped at training time: {p} ({why})" for p, why in skipped]
    problems += [f"kept once, so that no image is in two subsets: {p} ({why})" for p, why in duplicates]
    for spec in MODELS.values():
        small = smaller_than(ok, spec.min_size)
        if small:
            problems.append(f"{len(small)} image(s) below {spec.name}'s minimum {spec.min_size} px "
                            f"(upscaled), e.g. {Path(small[0].path).name}")
    if refused is None:
        try:
            split = split_dataset(good, seed, val_fraction, test_fraction)
            counts = split.counts()
            given = (f"; {' '.join(n + '/' for n in split.given)} used as given"
                     if split.given else "")
            lines.append(f"split (seed {seed}, digest {split.digest()}): "
                         + ", ".join(f"{n} {sum(counts[n].values())}" for n in ("train", "val", "test"))
                         + given)
        except DataError as err:
            refused = str(err)
    if refused:
        problems.append(f"bench run refuses this data: {refused}")
    lines.append("problems:" if problems else "problems: none")
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines), refused
