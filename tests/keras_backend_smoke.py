"""One Keras backend in a process of its own: ``python tests/keras_backend_smoke.py CONFIG.json OUT.json``.

``tests/test_keras.py`` runs this for ``keras-jax`` and ``keras-torch`` (Keras
reads ``KERAS_BACKEND`` once, at import, so they cannot share the test
process). It goes through the calls ``benchmarks.driver`` makes (build, the
head phase, one ``fit_phase`` epoch, predict, save, restore, the TensorBoard
scalars, the throughput measurement) and a few Keras-level checks of the same recipe steps on this
backend (the head param group, the bf16 dtype policy), and writes what the
parent checks as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from backends.base import WeightsRequest, get_backend
from benchmarks import driver
from common.config import RunConfig
from common.models import get_model


def main(config_file: str, out_file: str) -> None:
    config = RunConfig.from_dict(json.loads(Path(config_file).read_text()))
    run_dir = Path(config.run_dir)
    split = driver.prepare_split(config)
    backend = get_backend(config.backend)(config, run_dir)  # sets KERAS_BACKEND, imports Keras
    import keras

    from backends.keras.model import HEAD_LOGITS
    from backends.keras.recipe import with_param_groups

    backend.setup(split, config.data.image_size)
    backend.build(get_model(config.model.name), split.num_classes, WeightsRequest("none"), 0)
    head = backend.km.model.get_layer(HEAD_LOGITS)
    initial_head = head.get_weights()[0][:4, :].tolist()  # what seed 0 gives on this backend
    phase = config.recipe.phases[0]
    report = backend.apply_phase(phase, 0)
    frozen_bn = [layer for layer in backend.km.layers[:backend.km.num_base_layers]
                 if isinstance(layer, keras.layers.BatchNormalization)]
    moving = [keras.ops.convert_to_numpy(layer.moving_mean).copy() for layer in frozen_bn]

    fits = []
    real_fit = keras.Model.fit

    def recorded_fit(model, *args, **kwargs):
        fits.append({"initial_epoch": kwargs.get("initial_epoch"), "epochs": kwargs.get("epochs"),
                     "callbacks": [type(c).__name__ for c in kwargs.get("callbacks") or []]})
        return real_fit(model, *args, **kwargs)

    keras.Model.fit = recorded_fit
    before = backend.predict("val")
    ends = []
    backend.fit_phase(phase, 0, 0, lambda epoch, lr, stats: ends.append([epoch, lr, stats]))
    keras.Model.fit = real_fit
    frozen_bn_unchanged = all(np.array_equal(keras.ops.convert_to_numpy(layer.moving_mean), m)
                              for layer, m in zip(frozen_bn, moving))
    trained = backend.predict("val")
    checkpoint = backend.save(run_dir / "checkpoints" / "last")
    head.set_weights([np.zeros_like(w) for w in head.get_weights()])  # then restore undoes it
    backend.restore(run_dir / "checkpoints" / "last")
    restored = backend.predict("val")
    backend.log_scalars(1, {"val/loss": 1.0})

    # the timed throughput step: what train_on_batch is given and what its model updates
    timed_calls = []
    real_train_on_batch = keras.Model.train_on_batch

    def recorded_train_on_batch(model, x, y=None, *args, **kwargs):
        timed_calls.append({"x": f"{type(x).__module__}.{type(x).__name__}",
                            "metrics": [m.name for m in model.metrics if m.name != "loss"]})
        return real_train_on_batch(model, x, y, *args, **kwargs)

    keras.Model.train_on_batch = recorded_train_on_batch
    throughput = backend.throughput(config.train.batch_size, "fp32", 1, 0)
    keras.Model.train_on_batch = real_train_on_batch
    after_throughput = backend.predict("val")

    # the head param group through update_step, on this backend
    trunk, top = (keras.Variable(np.ones(3, np.float32), name=n) for n in ("trunk", "top"))
    opt = with_param_groups(keras.optimizers.SGD)(learning_rate=0.01, head_variables=[top],
                                                  head_lr_multiplier=10.0)
    opt.apply_gradients([(np.full(3, 0.5, np.float32), trunk), (np.full(3, 0.5, np.float32), top)])
    steps = [float(1 - keras.ops.convert_to_numpy(v)[0]) for v in (trunk, top)]
    builtin = type(keras.optimizers.SGD(learning_rate=0.01))  # a phase without param groups

    # --precision bf16 is the mixed_bfloat16 dtype policy
    dense = keras.layers.Dense(2, dtype="mixed_bfloat16")
    out = dense(np.ones((1, 3), np.float32))
    policy = {"compute": keras.backend.standardize_dtype(out.dtype),
              "variables": keras.backend.standardize_dtype(dense.kernel.dtype)}

    result = {"native": report["native"], "frameworks": backend.frameworks(),
              "device": backend.device(), "name": backend.name, "ends": ends, "fits": fits,
              "checkpoint": str(checkpoint), "before": before.tolist(), "trained": trained.tolist(),
              "restored": restored.tolist(), "initial_head": initial_head,
              "frozen_bn_layers": len(frozen_bn), "frozen_bn_unchanged": frozen_bn_unchanged,
              "param_group_steps": steps, "builtin_sgd": f"{builtin.__module__}.{builtin.__name__}",
              "bf16_policy": policy, "timed_calls": timed_calls,
              "throughput": {k: throughput.get(k) for k in ("timed_step", "timed")},
              "after_throughput": after_throughput.tolist(),
              "tensorflow_imported": "tensorflow" in sys.modules}
    backend.close()
    Path(out_file).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
