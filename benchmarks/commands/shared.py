"""What every ``bench`` command shares: ``UsageError`` (one line, exit 2), the
one-line argparse parser, the argument types, the checks of flags several commands
take (``--backend``, ``--class-map``, an output file or folder) and the claim of a
run directory (``common.locks``)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from backends.base import backend_names, canonical_name, default_backends, unknown_backend_message
from common.config import seed_problem
from common.paths import kind_of, kind_problem, write_problem

EXIT_USAGE = 2


class UsageError(Exception):
    """A user error reported as one line with exit code 2."""


# ------------------------------------------------------------------ argument types

def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: expected integers like 0,1,2") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds: give at least one seed, e.g. 0,1,2")
    for seed in seeds:
        if seed_problem(seed):
            raise argparse.ArgumentTypeError(f"--seeds {text!r}: {seed_problem(seed)}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise argparse.ArgumentTypeError(
            f"--seeds {text!r} repeats {', '.join(map(str, repeated))}; each seed is one training "
            f"run, so give distinct seeds, e.g. 0,1,2")
    return seeds


def int_at_least(minimum: int):
    """An argparse ``type``: an integer >= ``minimum``, else one line saying so."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"{v} must be >= {minimum}")
        return v
    return parse


positive, nonnegative = int_at_least(1), int_at_least(0)


def out_path(text: str) -> Path:
    """An argparse ``type`` for ``--out``/``--output``: a path, never the empty one (which
    would write into the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty; it would write into the current "
                                         f"folder: give a path")
    return Path(text)


def device_counts(text: str) -> list[int]:
    try:
        counts = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--devices {text!r}: expected counts like 1,2,4") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise argparse.ArgumentTypeError(f"--devices {text!r}: give distinct counts >= 1, e.g. 1,2")
    return counts


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; give a fraction such as 0.1") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be in (0, 1), e.g. 0.1 for 10 %")
    return v


def workers_type(text: str) -> int:
    from common.config import MAX_WORKERS

    v = nonnegative(text)
    if v > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"{v} must be at most {MAX_WORKERS}")
    return v


def add_split_options(parser: argparse.ArgumentParser) -> None:
    """The split flags ``bench run`` and ``bench data inspect`` share."""
    parser.add_argument("--val-fraction", type=fraction, metavar="F",
                        help="share of each class held out for validation (default 0.1; refused "
                             "for a folder that already has val/)")
    parser.add_argument("--test-fraction", type=fraction, metavar="F",
                        help="share of each class held out for the test (default 0.1; refused "
                             "for a folder that already has test/)")
    parser.add_argument("--split-seed", type=nonnegative, default=0, metavar="N",
                        help="seed of the train/val/test split (default 0; the same split for "
                             "every backend and every --seeds)")


def name_list(text: str) -> list[str]:
    """A comma list (``two_phase,scratch``), the one list syntax of every option."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least one name, e.g. two_phase,scratch")
    return names


def comma_list(option: str, text: str | None, allowed, what: str) -> list[str]:
    """``--option a,b`` checked against ``allowed`` (one line naming them when not)."""
    if text is None:
        return []
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        if item not in allowed:
            raise UsageError(f"{option} {item!r}: unknown {what}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(items))


class OneLineParser(argparse.ArgumentParser):
    """argparse with README's promise: a usage error is one ``bench: error: ...`` line
    (argparse prints the whole usage block), exit code 2, and a pointer to ``--help``."""

    def error(self, message: str):
        where = self.prog.removeprefix("bench").strip()
        self.exit(EXIT_USAGE, f"bench: error: {where + ': ' if where else ''}{message} "
                              f"(see '{self.prog} --help')\n")


# ------------------------------------------------------------------ checks

def parse_backends(text: str) -> list[str]:
    """Registry names for ``--backend``: ``all`` is one entry per framework (keras-jax and
    keras-torch only when named); an alias (keras-tensorflow) is its entry, listed once."""
    if text == "all":
        return default_backends()
    names: list[str] = []
    for b in filter(None, (b.strip() for b in text.split(","))):
        if canonical_name(b) not in backend_names():
            raise UsageError(unknown_backend_message(b))
        if canonical_name(b) not in names:
            names.append(canonical_name(b))
    return names


def check_class_map(class_map: str | None, data: str | None) -> None:
    """``--class-map``: a file, and given only with a label|path meta file (one line if not)."""
    if not class_map:
        return
    problem = kind_problem(class_map, "file")
    if problem:
        raise UsageError(f"--class-map {class_map!r} {problem}; give the class-map JSON file "
                         f"of a label|path meta file")
    if data is None:
        raise UsageError("--class-map maps the labels of a label|path meta file: give that "
                         "file with --data, or drop --class-map")
    if data == "synthetic" or kind_of(data) == "a folder":
        what = "the synthetic dataset" if data == "synthetic" else "an image folder"
        raise UsageError(f"--class-map maps the labels of a label|path meta file, but --data "
                         f"{data!r} is {what} whose subfolders name its classes; drop --class-map")


def writable_file(path: Path, flag: str, example: str) -> Path:
    """``path`` can be written as a file: it is not a folder (or another special file) and
    its folder is writable (created if missing); one line naming the flag if not. Checked
    before any work, so no result is lost to the write."""
    kind = kind_of(path)
    if kind not in (None, "a file"):
        raise UsageError(f"{flag} {str(path)!r} is {kind}, not a file; give a file name, e.g. "
                         f"{str(Path(path) / example)!r}")
    problem = write_problem(path.parent)
    if problem:
        raise UsageError(f"{flag} {str(path)!r} cannot be written ({problem}); choose another "
                         f"{flag}")
    return path


def writable_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{time.time_ns()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"output directory {str(path)!r} is not writable ({err.strerror}); "
                         f"choose another with --out") from None
    return path


# ------------------------------------------------------------------ claims of a run directory

def refuse_foreign_files(run_dir: Path) -> None:
    """A new sweep writes report.md, summary.csv and its run folders into ``--out``: a folder
    that already holds other files (and no sweep.json) is refused, never overwritten. An
    empty folder, or one holding only another bench run's claim, is fine."""
    from common.locks import LOCK_FILE

    if kind_of(run_dir) != "a folder":
        return  # missing (made later) or a file (writable_dir says so)
    try:
        names = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_FILE)
    except OSError as err:
        raise UsageError(f"--out {str(run_dir)!r} cannot be listed ({err.strerror}); choose "
                         f"another --out") from None
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise UsageError(f"--out {str(run_dir)!r} already holds files ({shown}) and no sweep: "
                         f"bench run would write report.md, summary.csv and run folders among "
                         f"them; choose a new or empty --out")


def in_use(run_dir: Path, flag: str, pid: int | None) -> UsageError:
    return UsageError(f"{flag} {str(run_dir)!r} is in use by another bench run (PID {pid or '?'}); "
                      f"wait for it to finish, or choose another --out")


def refuse_if_claimed(run_dir: Path, flag: str) -> None:
    from common.locks import live_holder

    pid = live_holder(run_dir)
    if pid is not None:
        raise in_use(run_dir, flag, pid)


def claim_sweep(run_dir: Path, flag: str):
    """Claim the sweep's directory for this process (``common.locks``): atomic, so of two
    ``bench run`` on one directory the second stops here, naming the first."""
    from common.locks import DirectoryBusy, claim_directory

    try:
        return claim_directory(run_dir)
    except DirectoryBusy as busy:
        raise in_use(run_dir, flag, busy.pid) from None
    except OSError as err:
        raise UsageError(f"output directory {str(run_dir)!r} is not writable ({err.strerror}); "
                         f"choose another with --out") from None
