"""Throughput the Keras way: ``train_on_batch`` / ``predict_on_batch`` on a device batch.

Keras idioms shown here: the compiled train function of the current phase is
the unit timed (one optimizer step on the phase's trainable weights, compiled
without ``metrics=`` so no metric is updated), the batch is a backend tensor
made once (``keras.ops.convert_to_tensor``: on the device, never copied again),
mixed precision is a global dtype policy (``mixed_bfloat16``) that must be set
*before* the layers are built, and both calls return host values (the loss as
a float, the logits as numpy), which is the device synchronisation (no
explicit ``cuda.synchronize``).
"""

from __future__ import annotations

import tempfile

import keras
import numpy as np

from common.config import Phase
from common.timing import measure_steps, timed_step
from common.results import cpu_name

from .model import KerasModel, build_model
from .recipe import compile_phase, set_trainable
from .train import weight_count

POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}


def device_info() -> dict:
    """The accelerator Keras' backend will use."""
    backend = keras.backend.backend()
    kind, name = "cpu", cpu_name()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            kind, name = "gpu", details.get("device_name", gpus[0].name)
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            kind, name = "gpu", torch.cuda.get_device_name(0)
    elif backend == "jax":
        import jax

        dev = jax.devices()[0]
        if dev.platform != "cpu":
            kind, name = "gpu", dev.device_kind
    return {"kind": kind, "name": name, "keras_backend": backend}


def _reset_peak_memory() -> None:
    backend = keras.backend.backend()
    if device_info()["kind"] != "gpu":
        return
    if backend == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
    elif backend == "torch":
        import torch

        torch.cuda.reset_peak_memory_stats()


def peak_memory_bytes() -> int | None:
    """Peak accelerator memory since the last reset, None on CPU."""
    backend = keras.backend.backend()
    if device_info()["kind"] != "gpu":
        return None
    if backend == "tensorflow":
        import tensorflow as tf

        return int(tf.config.experimental.get_memory_info("GPU:0")["peak"])
    if backend == "torch":
        import torch

        return int(torch.cuda.max_memory_allocated())
    import jax

    return int((jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use", 0)) or None


def model_for_precision(km: KerasModel, phase: Phase, precision: str) -> KerasModel:
    """``km`` itself, or a copy built under ``precision``'s dtype policy with the same
    weights and phase (Keras fixes a layer's compute dtype when it is built)."""
    policy = POLICIES[precision]
    if km.layers[1].dtype_policy.name == policy:
        return km
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        copy = build_model(km.spec, km.entry, km.model.output_shape[-1], km.model.input_shape[1],
                           km.head_hidden_units, dropout=km.dropout)
    finally:
        keras.config.set_dtype_policy(previous)
    copy.model.set_weights(km.model.get_weights())
    set_trainable(copy, phase)
    compile_phase(copy, phase)
    return copy


def is_out_of_memory(error: BaseException) -> bool:
    """The backend's out-of-memory error: TensorFlow's ``ResourceExhaustedError``, XLA's
    ``RESOURCE_EXHAUSTED`` status on jax (a ``JaxRuntimeError``), torch's ``OutOfMemoryError``;
    also as the cause or context of another error (Keras re-raises some)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if _is_out_of_memory(error):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return isinstance(error, tf.errors.ResourceExhaustedError)
    if backend == "torch":
        import torch

        return isinstance(error, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError))
    if backend == "jax":
        import jax

        return isinstance(error, jax.errors.JaxRuntimeError) and "RESOURCE_EXHAUSTED" in str(error)
    return False


def out_of_memory_error(message: str) -> BaseException:
    """An instance of the error ``is_out_of_memory`` recognises, for the backend in use."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.errors.ResourceExhaustedError(None, None, message)
    if backend == "torch":
        import torch

        return getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)(message)
    import jax

    return jax.errors.JaxRuntimeError(f"RESOURCE_EXHAUSTED: {message}")


def release_memory() -> None:
    """Drop Keras' traced functions and Python references; torch also empties its cache
    (jax and TensorFlow free buffers as their arrays are collected)."""
    import gc

    gc.collect()
    if keras.backend.backend() == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def fp32_execution() -> str | None:
    """Whether fp32 convolutions may run as TF32 on this accelerator (None on a CPU)."""
    if device_info()["kind"] != "gpu":
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        on = tf.config.experimental.tensor_float_32_execution_enabled()
        return f"tf.config tensor_float_32_execution {'on' if on else 'off'}"
    if backend == "torch":
        import torch

        return (f"torch cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
                f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}")
    import jax

    precision = getattr(jax.config, "jax_default_matmul_precision", None)
    return (f"jax_default_matmul_precision={precision}" if precision else
            "jax_default_matmul_precision unset: XLA may use TF32 for fp32 dots and convolutions")


def uses_tf32() -> bool:
    """Whether fp32 convolutions may run as TF32 here (the peak an fp32 row is held to)."""
    text = fp32_execution()
    if text is None:
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return text.endswith("on")
    if backend == "torch":
        import torch

        return bool(torch.backends.cudnn.allow_tf32)
    import jax

    # unset: JAX's documented default, TF32 on recent GPUs ("Matmul precision")
    return getattr(jax.config, "jax_default_matmul_precision", None) in (
        None, "default", "fastest", "tensorfloat32")


def timed_train_model(km: KerasModel) -> keras.Model:
    """The model the timed train step calls: ``km.train_model``'s layers (the same variables)
    in a functional wrapper compiled with the same optimizer and loss and no metric (the
    phase's compile updates a top-1 accuracy every step). The trained model keeps its own
    compile (its metric, its traced train function)."""
    inputs = keras.Input(shape=km.train_model.input_shape[1:])
    wrapper = keras.Model(inputs, km.train_model(inputs), name="timed_train_step")
    wrapper.compile(optimizer=km.train_model.optimizer, loss=km.train_model.loss)  # no metrics=
    return wrapper


def _variables(model: keras.Model, optimizer) -> list:
    return [*model.weights, *optimizer.variables]


def _park(variables) -> tempfile.TemporaryFile:
    # in a temporary file rather than in RAM, as the PyTorch backend parks its state
    parked = tempfile.TemporaryFile()
    np.savez(parked, *(keras.ops.convert_to_numpy(v) for v in variables))
    return parked


def _unpark(parked, variables) -> None:
    parked.seek(0)
    with np.load(parked) as saved:
        for i, v in enumerate(variables):
            v.assign(saved[f"arr_{i}"])
    parked.close()


def measure_throughput(km: KerasModel, phase: Phase, batch_size: int, precision: str,
                       steps: int, warmup: int, seed: int = 0,
                       kinds: tuple[str, ...] = ("train", "infer")) -> dict:
    """The common protocol (``common.timing.measure_steps``) for one train and one infer step
    (``kinds``): ``train_on_batch`` of ``timed_train_model`` (no metric) and
    ``predict_on_batch``, both on backend tensors made on the device once. The weights and
    optimizer state are restored afterwards, so measuring never changes the trained model."""
    model = model_for_precision(km, phase, precision)
    size = km.model.input_shape[1]
    n = km.model.output_shape[-1]
    rng = np.random.default_rng(seed)
    # backend tensors on Keras' device (tf.Tensor, jax.Array, torch.Tensor), made once: no
    # step copies a host batch (a numpy batch would be converted and copied every step)
    x = keras.ops.convert_to_tensor(
        rng.uniform(-1, 1, size=(batch_size, size, size, 3)).astype(np.float32))
    y = keras.ops.convert_to_tensor(np.eye(n, dtype=np.float32)[rng.integers(0, n, size=batch_size)])
    _reset_peak_memory()

    def sync():
        """train_on_batch returns the loss as a Python float, predict_on_batch a numpy array:
        the step has finished on the device when either returns."""

    optimizer = model.train_model.optimizer
    variables = _variables(model.model, optimizer)
    parked = _park(variables)
    out = {}
    try:
        if "train" in kinds:
            step_model = timed_train_model(model)
            out["train"] = measure_steps(lambda: step_model.train_on_batch(x, y), sync,
                                         batch_size=batch_size, steps=steps, warmup=warmup)
            stepped = step_model.trainable_weights
            out["timed"] = {"optimizer": type(optimizer).__name__,
                            "trainable_tensors": len(stepped), "trainable_params": weight_count(stepped),
                            "metrics": [m.name for m in step_model.metrics if m.name != "loss"]}
        if "infer" in kinds:
            out["infer"] = measure_steps(lambda: model.model.predict_on_batch(x), sync,
                                         batch_size=batch_size, steps=steps, warmup=warmup)
    finally:
        _unpark(parked, variables)
    return {**out, "precision": precision, "dtype_policy": POLICIES[precision],
            "peak_memory_bytes": peak_memory_bytes(), "device": device_info(),
            "mode": execution_mode(), "fp32_execution": fp32_execution(), "tf32": uses_tf32(),
            "timed_step": timed_step(batch_size),
            "step": "train_on_batch of the phase's layers compiled without metrics / "
                    "predict_on_batch, on backend tensors (compiled, current phase)"}


def execution_mode() -> str:
    """How Keras runs a step on this backend: ``compile(jit_compile="auto")`` is XLA on jax,
    a ``tf.function`` on TensorFlow (XLA only with a GPU), eager on torch."""
    backend = keras.backend.backend()
    if backend == "jax":
        return "XLA"
    if backend == "tensorflow":
        return "tf.function + XLA" if device_info()["kind"] == "gpu" else "tf.function"
    return "eager"
