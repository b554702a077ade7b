"""Optimizer steps ``torch.optim`` does not ship, for the recipe's fidelity switches.

``fidelity.rmsprop = "aligned"``: RMSprop with epsilon inside the square root, as
Keras and TensorFlow compute it; ``fidelity.weight_decay = "aligned"``: decay on the
kernels only, as slim's ``l2_regularizer`` (docs/differences.md). ``recipe.torch_optimizer``
chooses them.
"""

from __future__ import annotations

import torch


class RMSpropEpsilonInside(torch.optim.Optimizer):
    """RMSprop with epsilon inside the square root, ``g / sqrt(square_avg + eps)``, as Keras 3
    and TensorFlow's ``RMSPropOptimizer`` (slim) compute it; ``torch.optim.RMSprop`` divides by
    ``sqrt(square_avg) + eps``. The slot starts at 0 and the momentum buffer, the weight decay
    (``grad + wd * w``) and per-group hyperparameters are torch's. ``fidelity.rmsprop =
    "aligned"`` (docs/differences.md)."""

    def __init__(self, params, lr: float, alpha: float, eps: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum,
                                  "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            alpha, eps, m, wd = group["alpha"], group["eps"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=wd) if wd else p.grad
                state = self.state[p]
                if not state:
                    state["square_avg"] = torch.zeros_like(p)
                    if m:
                        state["momentum_buffer"] = torch.zeros_like(p)
                square_avg = state["square_avg"].mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
                update = grad / (square_avg + eps).sqrt()
                if m:
                    update = state["momentum_buffer"].mul_(m).add_(update)
                p.add_(update, alpha=-group["lr"])
        return loss


def kernels_only_decay(groups: list[dict], weight_decay: float) -> list[dict]:
    """Each group split in two: its kernels (conv and linear weights, ``ndim > 1``) with
    ``weight_decay``, the rest (biases, BatchNorm betas and gammas) with none, slim's
    ``l2_regularizer`` set (``fidelity.weight_decay = "aligned"``)."""
    out = []
    for g in groups:
        kernels = [p for p in g["params"] if p.ndim > 1]
        rest = [p for p in g["params"] if p.ndim <= 1]
        out.append({**g, "params": kernels, "weight_decay": weight_decay})
        out.append({**g, "params": rest, "name": f"{g['name']}_no_decay", "weight_decay": 0.0})
    return out
