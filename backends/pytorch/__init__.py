"""The PyTorch backend (torchvision models, ``requires_grad`` + param groups, ``.pt`` state_dicts)."""

from .backend import PyTorchBackend

__all__ = ["PyTorchBackend"]
