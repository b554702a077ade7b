"""Peak dense FLOP/s of the accelerators the throughput sweep may meet, and MFU.

Model FLOPs utilisation (MFU) = achieved model FLOP/s / the device's peak
dense FLOP/s for the precision that ran (PaLM's definition: the model's own
FLOPs, no recomputation counted). The peaks are the vendor datasheets'
figures; NVIDIA lists tensor-core rates "with sparsity", and the dense rate
used here is half of that. A device whose name matches no row has no peak:
its MFU is left blank, never guessed.

Framework-free (``common``): the sweep's parent process and its tests use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TERA = 1e12


@dataclass(frozen=True)
class DevicePeaks:
    """Dense peak FLOP/s of one device for each precision the sweep labels."""

    name: str            # the device as the datasheet names it
    pattern: str         # regular expression on the framework's device name
    bf16: float          # bf16 tensor cores, dense
    tf32: float          # TF32 tensor cores (fp32 tensors), dense
    fp32: float          # fp32 without tensor cores
    source: str          # the datasheet the figures come from

    def flops(self, precision: str) -> float:
        return {"bf16": self.bf16, "tf32": self.tf32, "fp32": self.fp32}[precision]


H100_SOURCE = ("NVIDIA H100 Tensor Core GPU datasheet: SXM FP32 67 TFLOPS, TF32 989 and BF16 "
               "1,979 TFLOPS with sparsity; PCIe 51, 756, 1,513; NVL 60, 835, 1,671 (dense: half)")
H200_SOURCE = ("NVIDIA H200 Tensor Core GPU datasheet: SXM FP32 67 TFLOPS, TF32 989 and BF16 "
               "1,979 TFLOPS with sparsity; NVL 60, 835, 1,671 (dense: half)")
A100_SOURCE = ("NVIDIA A100 Tensor Core GPU datasheet: FP32 19.5 TFLOPS, TF32 156 and BF16 312 "
               "TFLOPS dense (312 and 624 with sparsity), SXM and PCIe alike")
L4_SOURCE = ("NVIDIA L4 datasheet: FP32 30.3 TFLOPS, TF32 120 and BF16 242 TFLOPS with sparsity "
             "(dense: half)")
L40S_SOURCE = ("NVIDIA L40S datasheet: FP32 91.6 TFLOPS, TF32 366 and BF16 733 TFLOPS with "
               "sparsity (dense: half)")
A10_SOURCE = ("NVIDIA A10 datasheet: FP32 31.2 TFLOPS, TF32 62.5 and BF16 125 TFLOPS dense "
              "(125 and 250 with sparsity)")

# Most specific first: "H100 NVL" and "H100 PCIe" before the SXM board, which CUDA names
# "NVIDIA H100 80GB HBM3"; word boundaries keep "GH200" from matching "H200" and "A100"
# from matching "A10". A plain "H100" with no form factor matches none: it is not guessed.
PEAKS: tuple[DevicePeaks, ...] = (
    DevicePeaks("H100 NVL", r"\bH100\b.*\bNVL\b", 835.5 * TERA, 417.5 * TERA, 60 * TERA, H100_SOURCE),
    DevicePeaks("H100 PCIe", r"\bH100\b.*\bPCIe\b", 756.5 * TERA, 378 * TERA, 51 * TERA, H100_SOURCE),
    DevicePeaks("H100 SXM", r"\bH100\b.*\b(HBM3|SXM\d?)\b", 989.5 * TERA, 494.5 * TERA, 67 * TERA,
                H100_SOURCE),
    DevicePeaks("H200 NVL", r"\bH200\b.*\bNVL\b", 835.5 * TERA, 417.5 * TERA, 60 * TERA, H200_SOURCE),
    DevicePeaks("H200 SXM", r"\bH200\b", 989.5 * TERA, 494.5 * TERA, 67 * TERA, H200_SOURCE),
    DevicePeaks("A100", r"\bA100\b", 312 * TERA, 156 * TERA, 19.5 * TERA, A100_SOURCE),
    DevicePeaks("L40S", r"\bL40S\b", 366.5 * TERA, 183 * TERA, 91.6 * TERA, L40S_SOURCE),
    DevicePeaks("L4", r"\bL4\b", 121 * TERA, 60 * TERA, 30.3 * TERA, L4_SOURCE),
    DevicePeaks("A10", r"\bA10\b", 125 * TERA, 62.5 * TERA, 31.2 * TERA, A10_SOURCE),
)


def device_peaks(device_name: str | None) -> DevicePeaks | None:
    """The table row of ``device_name`` (as ``torch.cuda.get_device_name`` or jax's
    ``device_kind`` spell it), or None for a device the table does not hold."""
    if not device_name:
        return None
    for row in PEAKS:
        if re.search(row.pattern, device_name, flags=re.IGNORECASE):
            return row
    return None


def peak_precision(precision: str, tf32: bool) -> str:
    """Which peak an ``fp32`` or ``bf16`` step is held to: bf16 tensor cores, TF32 tensor
    cores when fp32 convolutions may run as TF32, plain fp32 otherwise."""
    if precision == "bf16":
        return "bf16"
    return "tf32" if tf32 else "fp32"


def precision_label(precision: str, tf32: bool) -> str:
    """What a row says ran: ``bf16``, ``fp32`` or ``fp32 (TF32)``."""
    return "fp32 (TF32)" if precision == "fp32" and tf32 else precision


def mfu(images_per_second: float | None, flops_per_image: float | None,
        peak_flops: float | None) -> float | None:
    """Model FLOP/s achieved over the peak (0..1), None when any input is unknown."""
    if not images_per_second or not flops_per_image or not peak_flops:
        return None
    return images_per_second * flops_per_image / peak_flops
