"""Model-step throughput on in-memory batches (``common.timing`` protocol), PyTorch style.

PyTorch idiom: eager steps, ``torch.cuda.synchronize()`` before the clock
stops (CUDA kernels are asynchronous; on the CPU a step has finished when it
returns), the training loop's own ``autocast`` for bf16 (the model is ``channels_last``
throughout), ``torch.inference_mode`` for the inference step as in prediction, and
``torch.cuda.max_memory_allocated`` for peak device memory. The train step is the applied
phase's: its optimizer, its ``requires_grad`` parameters, its BatchNorm modes.
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn

from common.timing import measure_steps, timed_step

from .recipe import autocast, compute_loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# torch >= 2.5 exports the error at the top level; torch.cuda's name is older
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError


def is_out_of_memory(error: BaseException) -> bool:
    """The CUDA caching allocator's error (or a host allocation that failed), also when
    torch.compile wraps it in a compiler error (its cause or context)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (OUT_OF_MEMORY, MemoryError)) or "CUDA out of memory" in str(error):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def release_memory() -> None:
    """What a failed step held goes back to the device: Python references first, then the
    caching allocator's unused blocks."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def tf32_settings() -> dict:
    """Whether fp32 convolutions and matrix products may run as TF32 on tensor cores:
    ``torch.backends.cudnn.allow_tf32`` (on by default) and
    ``torch.backends.cuda.matmul.allow_tf32`` (off by default)."""
    return {"cudnn_conv": bool(torch.backends.cudnn.allow_tf32),
            "cuda_matmul": bool(torch.backends.cuda.matmul.allow_tf32)}


def forward_flops(model: nn.Module, image_size: int, device: torch.device) -> int:
    """FLOPs of one eval-mode forward pass of one image (FlopCounterMode's count: convolutions
    and matrix products, 2 per multiply-add); the model's mode is restored."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    x = torch.randn(1, 3, image_size, image_size, device=device).contiguous(
        memory_format=torch.channels_last)
    try:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def measure_throughput(model: nn.Module, optimizer: torch.optim.Optimizer, set_modes, *,
                       device: torch.device, num_classes: int, image_size: int, batch_size: int,
                       precision: str, steps: int, warmup: int, seed: int = 0,
                       kinds: tuple[str, ...] = ("train", "infer"),
                       compiled: nn.Module | None = None) -> dict:
    """Train (forward + loss + backward + step) and inference step timings (``kinds``).

    ``compiled``: ``torch.compile(model)``, the module the steps call instead of ``model``
    (its parameters are the model's). The model and optimizer state are restored
    afterwards, so measuring never changes the trained model.
    """
    net = compiled if compiled is not None else model
    # The state is parked in a temporary file rather than in RAM: two extra copies of the
    # model and its momentum buffers held in memory slowed the timed CPU steps by ~3%.
    parked = tempfile.TemporaryFile()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, parked)
    was_training = model.training
    g = torch.Generator().manual_seed(seed)
    # made and moved to the device once, before the clock starts: no step copies a host batch.
    # NCHW shape in channels_last memory (NHWC, TF's layout), as the backend's model is
    images = torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    criterion = nn.CrossEntropyLoss()

    def train_step():
        # gradients freed before the forward pass: lower peak memory than zeroing after it
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss, _ = compute_loss(net(images), labels, criterion)
        loss.backward()
        optimizer.step()

    @torch.inference_mode()
    def infer_step():
        with autocast(device, precision):
            net(images)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    out = {}
    try:
        if "train" in kinds:
            set_modes()
            out["train"] = measure_steps(train_step, lambda: synchronize(device),
                                         batch_size=batch_size, steps=steps, warmup=warmup)
            # what the timed step trained: the parameters a gradient reached, the optimizer
            stepped = [p for p in model.parameters() if p.grad is not None]
            out["timed"] = {"optimizer": type(optimizer).__name__, "trainable_tensors": len(stepped),
                            "trainable_params": sum(p.numel() for p in stepped), "metrics": []}
        if "infer" in kinds:
            model.eval()
            out["infer"] = measure_steps(infer_step, lambda: synchronize(device),
                                         batch_size=batch_size, steps=steps, warmup=warmup)
    finally:
        parked.seek(0)
        state = torch.load(parked, weights_only=True)
        parked.close()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        model.train(was_training)
        optimizer.zero_grad(set_to_none=True)
    return {
        **out,
        "precision": precision,
        "mode": "torch.compile" if compiled is not None else "eager",
        "tf32": tf32_settings() if device.type == "cuda" else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "image_size": image_size,
        "layout": "NCHW shape, channels_last memory",
        "timed_step": timed_step(batch_size),
    }
