"""``bench throughput --sweep``: every backend, model, precision, mode and batch size in one
command, within a time budget, written as one JSON, one markdown table and one plot.

The parent (this package) imports no framework. It plans rows, most important first
(``planning``), runs each job (a (backend, model, precision, mode) with its rows) in its
own ``benchmarks.sweep_worker`` process and reads each row back as soon as the child
sends it, so a job stopped at the budget keeps what it measured (``execution``), and
writes the JSON, the markdown (``templates/sweep.j2``) and the plot (``output``):

* model step (docs/design.md, "Throughput protocol"): train and inference img/s
  (median, p10, p90) at batch 256, 128 and 64 with every layer training, the first
  (compiling) step, peak device memory; a batch that runs out of memory falls back to
  the next smaller one and the row says so;
* FLOPs per image, counted once per model and size with PyTorch's
  ``FlopCounterMode`` on the torchvision model (a training step = 3 x forward), and MFU
  against the device's peak dense FLOP/s for the precision that ran
  (``common.gpu_peaks``; an unknown device leaves MFU blank);
* end to end: real fine-tuning epochs (``two_phase`` phase 2, ``full``) over a
  generated folder of JPEG files through each backend's own input pipeline, beside
  the model step of the same phase and the pipeline alone, so that the stage that
  limits is a number.

Backends that cannot run on the machine (no TensorFlow on the lent GPU machines) are
rows that say why, never numbers. ``--smoke`` runs the same code on a CPU with tiny
sizes, injects an out-of-memory error at the largest batch and a device name for the
MFU arithmetic, and says loudly that it is not a result.
"""

from benchmarks.sweep import execution, output, planning
from benchmarks.sweep.execution import THREAD_VARIABLES, child_env, console_line, run_child, run_sweep
from benchmarks.sweep.output import limiting_stage, markdown, plot, targets, write_outputs
from benchmarks.sweep.planning import (BATCH_SIZES, E2E_PHASES, MODELS, MODES, NO_TENSORFLOW, SMOKE_DEVICE,
                                       Job, Settings, cores, default_out, plan, settings_from_args, tier)

__all__ = ["BATCH_SIZES", "E2E_PHASES", "Job", "MODELS", "MODES", "NO_TENSORFLOW", "SMOKE_DEVICE", "Settings",
           "THREAD_VARIABLES", "child_env", "console_line", "cores", "default_out", "execution", "limiting_stage",
           "markdown", "output", "plan", "planning", "plot", "run_child", "run_sweep", "settings_from_args",
           "targets", "tier", "write_outputs"]
