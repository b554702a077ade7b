"""What a PyTorch run's result says about a phase, in PyTorch's words.

``recipe.py`` sets a phase up (``requires_grad``, param groups, the optimizer);
``describe_phase`` reads back what it did: the trained blocks, the parameter
counts, and under ``native`` the modules, the param groups, the optimizer and
the BatchNorm mode, the report's "how each framework expressed it" rows.
"""

from __future__ import annotations

from torch import nn

from backends.base import ModelEntry
from backends.native import coverage
from common.config import Fidelity, Phase
from common.models import ModelSpec

from .model import block_modules

BN_MODES = {
    "frozen": "BatchNorm of frozen modules in eval()",
    "train": "every BatchNorm in train() (frozen modules update running stats too)",
    "inference": "every BatchNorm in eval() (running statistics used, never updated); "
                 "the affine parameters of trained modules keep requires_grad",
}


def optimizer_words(phase: Phase, fidelity: Fidelity = Fidelity()) -> str:
    """One line for the optimizer ``recipe.torch_optimizer`` builds for ``phase``."""
    m, wd, eps, rho = phase.effective_momentum, phase.weight_decay, phase.epsilon, phase.rmsprop_rho
    if phase.optimizer == "rmsprop" and fidelity.aligned("rmsprop"):
        words = (f"RMSpropEpsilonInside(alpha={rho}, eps={eps} inside the root, "
                 f"momentum={m}, weight_decay={wd})")
    elif phase.optimizer in ("adam", "adamw") and fidelity.aligned("adam"):
        decay = "decoupled" if phase.optimizer == "adamw" else "L2"
        words = (f"AdamEpsilonHat(betas=(0.9, 0.999), eps={eps} on sqrt(v), lr bias-corrected, "
                 f"weight_decay={wd} {decay})")
    else:
        words = {
            "sgd": f"torch.optim.SGD(momentum={m}, weight_decay={wd})",
            "momentum": f"torch.optim.SGD(momentum={m}, weight_decay={wd})",
            "rmsprop": f"torch.optim.RMSprop(alpha={rho}, eps={eps}, momentum={m}, weight_decay={wd})",
            "adam": f"torch.optim.Adam(betas=(0.9, 0.999), eps={eps}, weight_decay={wd})",
            "adamw": f"torch.optim.AdamW(betas=(0.9, 0.999), eps={eps}, weight_decay={wd})",
        }[phase.optimizer]
    if wd and fidelity.aligned("weight_decay"):
        words += " on conv/linear kernels only"
    return words


def describe_phase(model: nn.Module, spec: ModelSpec, entry: ModelEntry, phase: Phase,
                   trainable: dict[str, nn.Module], groups: list[dict],
                   fidelity: Fidelity = Fidelity()) -> dict:
    """What ``Backend.apply_phase`` returns for ``phase`` once the recipe has frozen ``model``
    but ``trainable`` and built the optimizer over ``groups`` (``recipe.param_groups``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    blocks, partial = list(phase.trainable_blocks(spec)), {}
    if phase.modules:  # a native selection: what its modules cover, block by block
        counts = {}
        for block in spec.blocks:
            block_params = [p for m in block_modules(model, entry, block).values()
                            for p in m.parameters()]
            counts[block] = (sum(p.numel() for p in block_params if p.requires_grad),
                             sum(p.numel() for p in block_params))
        blocks, partial = coverage(counts)
    return {
        "trainable_blocks": blocks,
        **({"partially_trained_blocks": partial} if partial else {}),
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "trainable_tensors": len(params),
        "native": {
            "modules": list(trainable),
            "param_groups": [{"name": g["name"], "lr_multiplier": g["lr_multiplier"],
                              "params": sum(p.numel() for p in g["params"])} for g in groups],
            "optimizer": optimizer_words(phase, fidelity),
            "bn": BN_MODES[phase.bn],
        },
    }
