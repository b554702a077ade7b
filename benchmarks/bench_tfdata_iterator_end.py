"""Benchmark: what releasing an exhausted ``tf.data`` iterator costs, with tf.data's autotuner
on (TensorFlow's default) and off (``backends.tf_data.without_autotuner``, what Keras' and
slim's pipelines use).

The pipeline has the backends' shape: ``map`` of a ``tf.numpy_function`` (a 75 px RGB
float32 image per element) with ``num_parallel_calls=AUTOTUNE``, ``deterministic=True``,
``batch``, ``prefetch(AUTOTUNE)``. Each pass builds the dataset (as each Keras
``predict`` does), and a consumer reads every batch, sleeping a model step's seconds
after each (0.05 s is about a 16-image InceptionV3 inference step at 75 px on a 2-core
CPU, 0.2 s a training step), then drops the iterator, as slim does when it
re-initialises its iterator for validation and Keras at the end of a ``predict``. The
release is timed, and so is the whole pass. Whether a release waits depends on how long
the pass took, so each of several step times gets ``--rounds`` passes per setting, the
settings alternating; means and maxima. docs/measurements.md, "Releasing a tf.data
iterator", quotes it.

    python -m benchmarks.bench_tfdata_iterator_end [--images 50] [--batch-size 16]
        [--step-seconds 0.05,0.1,0.15,0.2,0.25,0.3] [--rounds 12]

Prints a markdown table; exits 0 (a measurement, no target).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def pipeline(images: int, batch_size: int, autotuner: bool):
    import numpy as np
    import tensorflow as tf

    from backends.tf_data import without_autotuner

    def image(i):
        return np.full((75, 75, 3), np.float32(i), np.float32)

    ds = tf.data.Dataset.range(images).map(
        lambda i: tf.numpy_function(image, [i], tf.float32),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    return ds if autotuner else without_autotuner(ds)


def one_pass(images: int, batch_size: int, autotuner: bool,
             step_seconds: float) -> tuple[float, float]:
    """(seconds of the whole pass, seconds to release the exhausted iterator)."""
    start = time.perf_counter()
    iterator = iter(pipeline(images, batch_size, autotuner))
    for _ in iterator:
        time.sleep(step_seconds)
    released = time.perf_counter()
    del iterator
    end = time.perf_counter()
    return end - start, end - released


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_tfdata_iterator_end",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--step-seconds", default="0.05,0.1,0.15,0.2,0.25,0.3",
                        help="comma list: seconds the consumer spends per batch")
    parser.add_argument("--rounds", type=int, default=12, help="passes per setting and step time")
    args = parser.parse_args(argv)
    import tensorflow as tf

    from benchmarks.parity import machine

    steps = [float(x) for x in args.step_seconds.split(",")]
    settings = {"autotuner on (TensorFlow's default)": True, "autotuner off (the backends')": False}
    times = {(label, step): [] for label in settings for step in steps}
    for step in steps:
        for _ in range(args.rounds):  # alternating, so that drift of the machine hits both
            for label, on in settings.items():
                times[label, step].append(one_pass(args.images, args.batch_size, on, step))
    m = machine()
    print(f"TensorFlow {tf.__version__}; {args.images} images in batches of {args.batch_size}; "
          f"{m['cpu']}, {m['cores']} cores. Seconds, {args.rounds} passes per setting and "
          f"step time, alternating:\n")
    print("| setting | step | release: mean | release: max | releases over 0.1 s | "
          "whole pass: median |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for (label, step), rows in times.items():
        releases = [r for _, r in rows]
        print(f"| {label} | {step:.2f} s | {statistics.mean(releases):.3f} | "
              f"{max(releases):.3f} | {sum(r > 0.1 for r in releases)} of {len(rows)} | "
              f"{statistics.median(p for p, _ in rows):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
