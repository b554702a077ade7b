"""The PyTorch backend: torchvision models, ``requires_grad`` + param groups, ``.pt`` state_dicts.

This package's import is light (no torch): ``INFO`` describes the backend for
the registry; ``backend.PyTorchBackend`` is reached through
``backends.base.get_backend``.
"""

from backends.base import BackendInfo, Sweep, SweepMode

INFO = BackendInfo(
    name="pytorch",
    backend_class="backends.pytorch.backend:PyTorchBackend",
    requires=("torch", "torchvision"),
    install_hint="pip install 'transfer-bench[torch]'",
    checkpoint_suffix=".pt",
    checkpoint_suffixes=(".pt", ".pth"),  # torch.save's file, either common name
    catalog="backends.pytorch.catalog",
    converter="backends.pytorch.convert",
    parity="backends.pytorch.parity",
    source_order=0,  # pretrains a sweep's shared source model when installed
    native_key="modules",  # module paths, as named_modules() gives them (backends.native)
    distributions=("torch", "torchvision"),
    fetcher="backends.pytorch.weights:fetch_imagenet",
    color="#e4572e",
    description="torchvision models; requires_grad + param groups; state_dict .pt",
    export_formats=("torchscript", "onnx"),  # export.py
    data_parallel="torch.distributed DistributedDataParallel under torchrun",  # parallel.py
    launcher="torch.distributed.run",  # torchrun: one process per device
    sweep=Sweep(modes=(SweepMode("eager", order=0, train_seconds=5.0, infer_seconds=3.0, tier=0),
                       SweepMode("torch.compile", order=2, train_seconds=90.0, infer_seconds=40.0,
                                 compiled=True)),
                start_seconds=10.0, e2e_phase_seconds=15.0, e2e_tier=2, counts_flops=True),
)
