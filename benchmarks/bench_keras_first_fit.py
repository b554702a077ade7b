"""Benchmark: what Keras (on TensorFlow) pays once per compiled phase, outside the suite.

A ``keras.applications.InceptionV3`` (no top, pooled, a 5-class ``Dense``; every layer
training, momentum SGD) is compiled, its optimizer's slots built (as
``backends/keras/recipe.compile_phase`` does), and fed one in-memory batch through
``tf.data``: the first ``fit`` of one step (TensorFlow traces the train step, builds and
optimises its graph, then runs it) against a second ``fit`` of four steps, and the first
``predict`` against a second. Once with TensorFlow's graph optimiser (grappler) as it is,
once with it off (``disable_meta_optimizer``), each in a process of its own (the setting
must precede TensorFlow's runtime), in alternating rounds; medians. docs/measurements.md,
"Where a sweep's time goes", quotes it: the first-epoch excess of a Keras phase is this cost.

    python -m benchmarks.bench_keras_first_fit [--image-size 75] [--batch-size 16] [--rounds 3]

Prints a markdown table; exits 0 (a measurement, no target).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

SETTINGS = {"graph optimiser on (TensorFlow's default)": "default",
            "graph optimiser off (disable_meta_optimizer)": "off"}


def measure(setting: str, image_size: int, batch_size: int) -> dict:
    """In this process (which then holds TensorFlow): the four timings, in seconds."""
    import numpy as np
    import tensorflow as tf

    if setting == "off":
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    import keras

    keras.utils.set_random_seed(0)
    base = keras.applications.InceptionV3(include_top=False, weights=None,
                                          input_shape=(image_size, image_size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(base.output)
    model = keras.Model(base.input, keras.layers.Dense(5)(pooled))
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    model.compile(optimizer, keras.losses.CategoricalCrossentropy(from_logits=True))
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, image_size, image_size, 3), np.float32)
    y = np.eye(5, dtype=np.float32)[np.arange(batch_size) % 5]
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).repeat()

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    return {"first_fit_1_step": timed(lambda: model.fit(data, steps_per_epoch=1, epochs=1, verbose=0)),
            "next_fit_4_steps": timed(lambda: model.fit(data, steps_per_epoch=4, epochs=1, verbose=0)),
            "first_predict": timed(lambda: model.predict(x, verbose=0)),
            "next_predict": timed(lambda: model.predict(x, verbose=0))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_keras_first_fit",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=75)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="processes per setting (medians)")
    parser.add_argument("--child", choices=sorted(SETTINGS.values()), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.image_size, args.batch_size)))
        return 0
    from benchmarks.parity import machine

    rounds: dict[str, list[dict]] = {setting: [] for setting in SETTINGS.values()}
    for _ in range(args.rounds):  # alternating, so that drift of the machine hits both
        for setting in SETTINGS.values():
            out = subprocess.run([sys.executable, "-m", "benchmarks.bench_keras_first_fit",
                                  "--child", setting, "--image-size", str(args.image_size),
                                  "--batch-size", str(args.batch_size)],
                                 check=True, capture_output=True, text=True)
            rounds[setting].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for label, setting in SETTINGS.items():
        t = {k: statistics.median(r[k] for r in rounds[setting]) for k in rounds[setting][0]}
        rows.append(f"| {label} | {t['first_fit_1_step']:.2f} | {t['next_fit_4_steps']:.2f} | "
                    f"{t['first_predict']:.2f} | {t['next_predict']:.2f} |")
    m = machine()
    print(f"Keras {m['versions'].get('keras')} on TensorFlow {m['versions'].get('tensorflow')}, "
          f"InceptionV3 at {args.image_size} px, batch {args.batch_size}, every layer training; "
          f"{m['cpu']}, {m['cores']} cores. Seconds, medians of {args.rounds} alternating "
          f"rounds (a process each):\n")
    print("| setting | first fit (1 step) | next fit (4 steps) | first predict | next predict |")
    print("| --- | ---: | ---: | ---: | ---: |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
