"""Learning-rate schedules as pure functions of the epoch (bit_hyperrule style).

Every backend sets the value returned here at the start of each epoch, so the
effective schedule is the same in all frameworks whatever their scheduler
APIs look like.
"""

from __future__ import annotations

import math

from common.config import Phase


def learning_rate_at(phase: Phase, epoch: int) -> float:
    """Base learning rate for 0-based ``epoch`` of ``phase`` (linear warm-up first)."""
    if not 0 <= epoch < phase.epochs:
        raise ValueError(f"epoch {epoch} outside 0..{phase.epochs - 1}")
    lr = phase.learning_rate
    if epoch < phase.warmup_epochs:
        return lr * (epoch + 1) / (phase.warmup_epochs + 1)
    e = epoch - phase.warmup_epochs
    n = phase.epochs - phase.warmup_epochs
    if phase.schedule == "fixed":
        return lr
    if phase.schedule == "exponential":
        # staircase, as slim's exponential_decay(staircase=True) with num_epochs_per_decay
        return lr * phase.decay_rate ** (e // phase.decay_epochs)
    if phase.schedule == "cosine":
        return lr * 0.5 * (1 + math.cos(math.pi * e / n))
    raise ValueError(f"unknown schedule {phase.schedule!r}")
