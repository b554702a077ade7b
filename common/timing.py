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

import time
from typing import Callable

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


def measure_steps(step: Callable[[], object], sync: Callable[[], object], *, batch_size: int,
                  steps: int, warmup: int = 2, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time ``steps`` calls of ``step`` after one first call and ``warmup`` discarded calls."""
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
    for _ in range(steps):
        t0 = clock()
        step()
        sync()
        times.append(clock() - t0)
    result = summarise_steps(times, batch_size)
    result["first_step_seconds"] = first
    result["warmup_steps"] = warmup
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
