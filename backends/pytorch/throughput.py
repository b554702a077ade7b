"""Model-step throughput on in-memory batches (``common.timing`` protocol), PyTorch style.

PyTorch idiom: eager steps, ``torch.cuda.synchronize()`` before the clock
stops (CUDA kernels are asynchronous; on the CPU a step has finished when it
returns), ``torch.autocast`` for bf16 (the model is ``channels_last`` throughout), and
``torch.cuda.max_memory_allocated`` for peak device memory.
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn

from common.timing import measure_steps

from .train import compute_loss


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_throughput(model: nn.Module, optimizer: torch.optim.Optimizer, set_modes, *,
                       device: torch.device, num_classes: int, image_size: int, batch_size: int,
                       precision: str, steps: int, warmup: int, seed: int = 0) -> dict:
    """Train (forward + loss + backward + step) and inference step timings.

    The model and optimizer state are restored afterwards, so measuring never
    changes the trained model.
    """
    # The state is parked in a temporary file rather than in RAM: two extra copies of the
    # model and its momentum buffers held in memory slowed the timed CPU steps by ~3%.
    parked = tempfile.TemporaryFile()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, parked)
    was_training = model.training
    g = torch.Generator().manual_seed(seed)
    # NCHW shape in channels_last memory (NHWC, TF's layout), as the backend's model is
    images = torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g).to(device)
    bf16 = precision == "bf16"
    criterion = nn.CrossEntropyLoss()

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def train_step():
        # gradients freed before the forward pass: lower peak memory than zeroing after it
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss, _ = compute_loss(model(images), labels, criterion)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def infer_step():
        with autocast():
            model(images)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        set_modes()
        train = measure_steps(train_step, lambda: synchronize(device), batch_size=batch_size,
                              steps=steps, warmup=warmup)
        model.eval()
        infer = measure_steps(infer_step, lambda: synchronize(device), batch_size=batch_size,
                              steps=steps, warmup=warmup)
    finally:
        parked.seek(0)
        state = torch.load(parked, weights_only=True)
        parked.close()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        model.train(was_training)
        optimizer.zero_grad(set_to_none=True)
    return {
        "precision": precision,
        "train": train,
        "infer": infer,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "image_size": image_size,
        "layout": "NCHW shape, channels_last memory",
    }
