"""The throughput protocol, framework-free (docs/design.md, "Throughput protocol").

A backend hands ``measure_steps`` a ``step`` callable that runs one training or
inference step and a ``sync`` callable that waits for the device
(``torch.cuda.synchronize``, ``block_until_ready``, or nothing where
``session.run`` already returned). The first call is timed on its own
(compilation, graph building, cuDNN autotuning), the next ``warmup`` calls are
discarded, and every following step is timed separately, with the device
synchronised before the clock stops. images/s = batch / median step time.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


def summarise_steps(step_seconds, batch_size: int) -> dict:
    """Median, p10, p90 of per-step times and the images/s they imply."""
    t = np.asarray(step_seconds, np.float64)
    if t.size == 0:
        raise ValueError("no timed steps")
    median = float(np.median(t))
    p10, p90 = (float(v) for v in np.percentile(t, [10, 90]))
    return {
        "steps": int(t.size),
        "batch_size": int(batch_size),
        "step_seconds_median": median,
        "step_seconds_p10": p10,
        "step_seconds_p90": p90,
        "images_per_second": batch_size / median,
        # faster steps give more images/s: p10 of time is p90 of speed
        "images_per_second_p10": batch_size / p90,
        "images_per_second_p90": batch_size / p10,
        "step_seconds": [float(v) for v in t],
    }


# The machine-wide throughput lock: every process's timed steps hold it, so that no two
# runs' timed steps ever overlap (runs side by side, two sweeps, a sweep and `bench
# throughput`); the first step and the warm-up do not hold it. By default it is a flock on
# the system's temporary directory itself: nothing is created or written, and every bench
# process on the machine meets there (``bench`` passes its own path to its children, whose
# TMPDIR is a folder of their run).
def timed_step(batch_size: int) -> str:
    """What every backend's throughput times, in the same words (``throughput.timed_step``):
    the batch is made and placed on the device once, before the first step; a train step is
    one optimizer step of the applied phase (its trainable weights, loss and optimizer) with
    no metric; an infer step is one forward pass of the same batch in inference mode."""
    return (f"one optimizer step on a device-resident batch of {int(batch_size)}, no metric; "
            f"infer: one inference-mode forward pass of that batch")


THROUGHPUT_LOCK_ENV = "TRANSFER_BENCH_THROUGHPUT_LOCK"


def system_temporary_directory() -> Path:
    """The directory ``tempfile.gettempdir()`` chooses, found without its first-call probe (a
    file it creates and removes to test each candidate: a write outside ``--out``)."""
    if tempfile.tempdir is not None:
        return Path(tempfile.tempdir)
    candidates = [os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")]
    for d in [*filter(None, candidates), "/tmp", "/var/tmp", "/usr/tmp", os.getcwd()]:
        if os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return Path(os.path.abspath(d))
    return Path(os.getcwd())


def throughput_lock_path() -> Path:
    """``$TRANSFER_BENCH_THROUGHPUT_LOCK``, by default the system's temporary directory (one per
    machine; a directory is locked as it is, a file path is created if missing)."""
    return Path(os.environ.get(THROUGHPUT_LOCK_ENV) or system_temporary_directory())


def _open_lock(path: Path) -> int:
    if path.is_dir():  # read-only: a flock needs no write access and leaves nothing behind
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)


@contextlib.contextmanager
def throughput_lock() -> Iterator[dict]:
    """Hold the machine-wide throughput lock (``fcntl.flock``, exclusive; released by the
    kernel however the holder exits). Yields the record filled in on release:
    ``wait_seconds`` (until it was acquired), ``acquired_at`` and ``released_at`` (Unix
    seconds) and ``held_seconds``; ``{"lock": None}`` where there is no flock."""
    record: dict = {"path": str(throughput_lock_path())}
    try:
        import fcntl
    except ImportError:  # not a POSIX system: timed without the lock, and the record says so
        record.update(lock=None, wait_seconds=0.0)
        yield record
        return
    from common.parallel import is_main_process  # here: timing stays a light import

    if not is_main_process():
        # a rank of a multi-process run (torchrun): its timed steps meet rank 0's in every
        # all-reduce, so rank 0's hold covers them; ranks waiting on each other's lock while
        # their collectives wait on each other would deadlock
        record.update(lock="held by rank 0", wait_seconds=0.0)
        yield record
        return
    fd = _open_lock(throughput_lock_path())
    try:
        t0 = time.time()
        fcntl.flock(fd, fcntl.LOCK_EX)
        record["acquired_at"] = time.time()
        record["wait_seconds"] = record["acquired_at"] - t0
        try:
            yield record
        finally:
            record["released_at"] = time.time()
            record["held_seconds"] = record["released_at"] - record["acquired_at"]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ``bench run``'s per-run measurement stops early once its step times agree (the driver
# sets this around ``Backend.throughput``): after at least EARLY_STOP_MIN_STEPS timed
# steps, when (p90 - p10) / median of the steps so far is at most the spread
EARLY_STOP_MIN_STEPS = 3
_early_stop: dict = {"spread": None}


@contextlib.contextmanager
def early_stop(spread: float | None) -> Iterator[None]:
    """Within this block, ``measure_steps`` stops once ``(p90 - p10) / median <= spread``
    after ``EARLY_STOP_MIN_STEPS`` timed steps (None: always every requested step)."""
    before = _early_stop["spread"]
    _early_stop["spread"] = spread
    try:
        yield
    finally:
        _early_stop["spread"] = before


def _tight(times: list[float], spread: float | None) -> bool:
    if spread is None or len(times) < EARLY_STOP_MIN_STEPS:
        return False
    p10, median, p90 = np.percentile(times, [10, 50, 90])
    return (p90 - p10) <= spread * median


def measure_steps(step: Callable[[], object], sync: Callable[[], object], *, batch_size: int,
                  steps: int, warmup: int = 2, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time ``steps`` calls of ``step`` after one first call and ``warmup`` discarded calls,
    the timed calls under the machine-wide ``throughput_lock`` (recorded as ``lock``); inside
    ``early_stop(spread)``, fewer once their times agree within ``spread``."""
    if steps < 1:
        raise ValueError(f"steps = {steps} must be >= 1")
    t0 = clock()
    step()
    sync()
    first = clock() - t0
    for _ in range(warmup):
        step()
    sync()
    times = []
    spread = _early_stop["spread"]
    with throughput_lock() as lock:
        for _ in range(steps):
            t0 = clock()
            step()
            sync()
            times.append(clock() - t0)
            if _tight(times, spread):
                break
    result = summarise_steps(times, batch_size)
    result["first_step_seconds"] = first
    result["warmup_steps"] = warmup
    result["requested_steps"] = steps
    if spread is not None:
        result["early_stop"] = {"spread": spread, "min_steps": EARLY_STOP_MIN_STEPS,
                                "stopped_early": len(times) < steps}
    result["lock"] = lock
    return result


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux/macOS), 0 where unknown."""
    try:
        import resource
        import sys

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return 0


# ------------------------------------------------------------------ where a run's time goes

def process_start_time() -> float:
    """When this process started (Unix seconds; Linux: ``/proc``, to the clock tick), so
    that interpreter start-up and imports count; elsewhere when this module was imported."""
    try:
        ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in open("/proc/stat")
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return _IMPORTED_AT


_IMPORTED_AT = time.time()


# the span names the driver and the Backend base record (docs/design.md, "Where a run's time
# goes"); a span that starts while another is open is recorded with ``"in": <outer name>``
# and is part of the outer one's time, so the outermost spans add up without overlap
SPAN_NAMES = ("startup", "data", "source_weights", "framework_import", "setup", "build",
              "apply_phase", "restore", "epoch", "predict", "features", "checkpoint",
              "linear_probe_fit", "throughput")


class Timeline:
    """Wall-clock spans of one run, in seconds since ``origin`` (by default the start of
    this process): ``{"name", "start", "end", ...detail}``, appended as each span ends.

    The driver and ``backends.base.Backend`` record the same names (``SPAN_NAMES``) for
    every backend. A span opened inside another carries ``"in": <outer name>``; the
    outermost spans never overlap, so their durations add up to the time they account
    for, and the rest of the run's wall time is what no span covers."""

    def __init__(self, origin: float | None = None):
        self.origin = process_start_time() if origin is None else origin
        self.spans: list[dict] = []
        # stretches that hold spans (a training phase: its apply_phase, epochs, validation
        # and checkpoints), kept apart from the spans so that those still add up
        self.windows: list[dict] = []
        self._stack: list[str] = []

    def now(self) -> float:
        return time.time() - self.origin

    def add(self, name: str, start: float, end: float, **detail) -> dict:
        if self._stack:
            detail.setdefault("in", self._stack[-1])
        span = {"name": name, "start": round(start, 6), "end": round(end, 6), **detail}
        self.spans.append(span)
        return span

    @contextlib.contextmanager
    def span(self, name: str, **detail) -> Iterator[dict]:
        """Record the ``with`` body as span ``name``; items put in the yielded dict are
        added to the span's detail."""
        extra: dict = {}
        start = self.now()
        self._stack.append(name)
        try:
            yield extra
        finally:
            self._stack.pop()
            self.add(name, start, self.now(), **detail, **extra)

    def window(self, name: str, start: float, end: float, **detail) -> None:
        self.windows.append({"name": name, "start": round(start, 6), "end": round(end, 6),
                             **detail})

    def record(self) -> dict:
        """For result.json ``times``: the origin (Unix seconds), the spans and the windows."""
        return {"started_at": self.origin, "spans": list(self.spans),
                "windows": list(self.windows)}
