"""Deployable PyTorch formats: TorchScript and ONNX, each loaded back by its own runtime.

PyTorch idiom: a deployable model is the ``nn.Module`` in ``eval()`` written as a
program that runs without this code — TorchScript (``torch.jit.trace``, loaded
with ``torch.jit.load``) or ONNX (``torch.onnx.export``, the ``torch.export``-based
exporter, run by ``onnxruntime``). Both take what the model takes: a normalised
float32 NCHW batch (``common.preprocess``; the suite's pipelines feed the same
tensor in ``channels_last`` memory), with a dynamic batch dimension, and return
logits. The export is made from a CPU copy of the model, and the native logits it
is checked against come from that copy, so the check compares formats, not devices.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from backends.base import BackendError

from . import INFO

FORMATS = INFO.export_formats  # ("torchscript", "onnx")


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    """The model for export: a float32 CPU copy in ``eval()`` (BN on moving statistics)."""
    return copy.deepcopy(model).float().cpu().eval()


def export(model: nn.Module, fmt: str, directory: Path,
           golden: np.ndarray) -> tuple[Path, np.ndarray, np.ndarray, dict]:
    """Write ``model`` as ``fmt`` under ``directory`` and run both on ``golden`` (NHWC)."""
    net = _cpu_eval_copy(model)
    x = torch.from_numpy(np.ascontiguousarray(golden.transpose(0, 3, 1, 2)))  # NHWC -> NCHW
    with torch.inference_mode():
        native = net(x).numpy()
    layout = {"layout": "NCHW", "shape": [None, *x.shape[1:]], "dtype": "float32",
              "name": "images", "output": "logits"}
    if fmt == "torchscript":
        path = directory / "model.torchscript.pt"
        with warnings.catch_warnings():  # torch 2.9+ marks torch.jit deprecated
            warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
            traced = torch.jit.trace(net, x)
            traced.save(str(path))
            loaded = torch.jit.load(str(path), map_location="cpu")
            with torch.inference_mode():
                exported = loaded(x).numpy()
        return path, exported, native, layout
    if fmt == "onnx":
        try:
            import onnxruntime
            import onnxscript  # noqa: F401  (torch.onnx's exporter needs it)
        except ImportError as err:
            raise BackendError(f"ONNX export needs {err.name}: pip install "
                               f"'transfer-bench[onnx]'") from None
        path = directory / "model.onnx"
        # the torch.export-based exporter (torch.onnx's default since 2.9), batch dynamic
        torch.onnx.export(net, (x,), str(path), input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim.DYNAMIC},), dynamo=True,
                          external_data=False, verbose=False)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        exported = session.run(["logits"], {"images": x.numpy()})[0]
        return path, exported, native, layout
    raise ValueError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
