"""The PyTorch backend: torchvision models, ``requires_grad`` + param groups, ``.pt`` state_dicts.

This package's import is light (no torch): ``INFO`` describes the backend for
the registry; ``backend.PyTorchBackend`` is reached through
``backends.base.get_backend``.
"""

from backends.base import BackendInfo

INFO = BackendInfo(
    name="pytorch",
    backend_class="backends.pytorch.backend:PyTorchBackend",
    requires=("torch", "torchvision"),
    install_hint="pip install 'transfer-bench[torch]'",
    checkpoint_suffix=".pt",
    catalog="backends.pytorch.catalog",
    converter="backends.pytorch.convert",
    fetcher="backends.pytorch.weights:fetch_imagenet",
    color="#e4572e",
    description="torchvision models; requires_grad + param groups; state_dict .pt",
    export_formats=("torchscript", "onnx"),  # export.py
    data_parallel="torch.distributed DistributedDataParallel under torchrun",  # parallel.py
    launcher="torch.distributed.run",  # torchrun: one process per device
)
