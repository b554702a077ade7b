"""Optimizer steps ``torch.optim`` does not ship, for the recipe's fidelity switches.

``fidelity.rmsprop = "aligned"``: RMSprop with epsilon inside the square root, as
Keras and TensorFlow compute it; ``fidelity.adam = "aligned"``: Adam and AdamW with the
bias correction folded into the step size, as Keras and TensorFlow compute them;
``fidelity.weight_decay = "aligned"``: decay on the kernels only, as slim's
``l2_regularizer`` (docs/differences.md). ``recipe.torch_optimizer`` chooses them through
``aligned_optimizer``.
"""

from __future__ import annotations

import math

import torch

from common.config import Fidelity, Phase


class _PerParameterStep(torch.optim.Optimizer):
    """``step`` as ``torch.optim`` writes it (the closure, no gradient tracking), calling the
    subclass's ``update(p, group, state)`` for every parameter of every group that has a
    gradient."""

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.update(p, group, self.state[p])
        return loss


class RMSpropEpsilonInside(_PerParameterStep):
    """RMSprop with epsilon inside the square root, ``g / sqrt(square_avg + eps)``, as Keras 3
    and TensorFlow's ``RMSPropOptimizer`` (slim) compute it; ``torch.optim.RMSprop`` divides by
    ``sqrt(square_avg) + eps``. The slot starts at 0 and the momentum buffer, the weight decay
    (``grad + wd * w``) and per-group hyperparameters are torch's. ``fidelity.rmsprop =
    "aligned"`` (docs/differences.md)."""

    def __init__(self, params, lr: float, alpha: float, eps: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "alpha": alpha, "eps": eps, "momentum": momentum,
                                  "weight_decay": weight_decay})

    def update(self, p: torch.Tensor, group: dict, state: dict) -> None:
        alpha, eps, m, wd = group["alpha"], group["eps"], group["momentum"], group["weight_decay"]
        grad = p.grad.add(p, alpha=wd) if wd else p.grad
        if not state:
            state["square_avg"] = torch.zeros_like(p)
            if m:
                state["momentum_buffer"] = torch.zeros_like(p)
        square_avg = state["square_avg"].mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        update = grad / (square_avg + eps).sqrt()
        if m:
            update = state["momentum_buffer"].mul_(m).add_(update)
        p.add_(update, alpha=-group["lr"])


class AdamEpsilonHat(_PerParameterStep):
    """Adam as Keras 3 and TensorFlow's ``AdamOptimizer`` (slim) compute it: the bias
    correction folded into the step size, ``lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)``,
    ``w -= lr_t * m / (sqrt(v) + eps)`` ("epsilon hat", Kingma and Ba's section 2 form);
    ``torch.optim.Adam`` divides ``m / (1 - b1^t)`` by ``sqrt(v) / sqrt(1 - b2^t) + eps``: the
    same step with epsilon times ``sqrt(1 - b2^t)`` (1/31.6 at step 1). Slots from 0.
    ``decoupled=False``: torch Adam's ``weight_decay``, ``grad + wd * w``; ``decoupled=True``:
    AdamW's, ``w *= 1 - lr * wd`` with each group's own ``lr`` before the step.
    ``fidelity.adam = "aligned"`` (docs/differences.md)."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-7, weight_decay: float = 0.0, decoupled: bool = False):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps,
                                  "weight_decay": weight_decay, "decoupled": decoupled})

    def update(self, p: torch.Tensor, group: dict, state: dict) -> None:
        lr, (b1, b2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        grad = p.grad.add(p, alpha=wd) if wd and not group["decoupled"] else p.grad
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p)
            state["exp_avg_sq"] = torch.zeros_like(p)
        state["step"] += 1
        t = state["step"]
        if wd and group["decoupled"]:
            p.mul_(1 - lr * wd)  # AdamW: decay with this group's lr, then the Adam step
        m = state["exp_avg"].lerp_(grad, 1 - b1)  # m += (g - m) * (1 - b1), as Keras
        v = state["exp_avg_sq"].lerp_(grad * grad, 1 - b2)
        lr_t = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        p.sub_(m * lr_t / (v.sqrt() + eps))


def aligned_optimizer(phase: Phase, groups: list[dict],
                      fidelity: Fidelity) -> torch.optim.Optimizer | None:
    """The optimizer an aligned switch puts in ``torch.optim``'s place for ``phase`` over
    ``groups`` (``rmsprop``: ``RMSpropEpsilonInside``; ``adam``: ``AdamEpsilonHat`` for Adam
    and AdamW), or None: torch's own."""
    lr, eps, wd = phase.learning_rate, phase.epsilon, phase.weight_decay
    if phase.optimizer == "rmsprop" and fidelity.aligned("rmsprop"):
        return RMSpropEpsilonInside(groups, lr=lr, alpha=phase.rmsprop_rho, eps=eps,
                                    momentum=phase.effective_momentum, weight_decay=wd)
    if phase.optimizer in ("adam", "adamw") and fidelity.aligned("adam"):
        return AdamEpsilonHat(groups, lr=lr, betas=(0.9, 0.999), eps=eps, weight_decay=wd,
                              decoupled=phase.optimizer == "adamw")
    return None


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
