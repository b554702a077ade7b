"""``bench throughput``: the model-step protocol for one backend in its own process.

Builds the model with random weights (weights do not change the speed),
trains every layer (the most expensive and most comparable phase) and times
train and inference steps on an in-memory batch via the backend's
``throughput``, which applies ``common.timing.measure_steps``.

Run directly: ``python -m benchmarks.throughput BACKEND MODEL BATCH SIZE PRECISION STEPS WARMUP
DEVICES`` answers with one ``result`` message (``benchmarks.child``).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from pathlib import Path

from backends.base import WeightsRequest, backend_info, get_backend
from benchmarks import child
from benchmarks.driver import throughput_phase_record
from common.config import Phase, Recipe, RunConfig, DataConfig, ModelConfig, TrainConfig
from common.data import Sample, Split
from common.models import get_model
from common.parallel import is_main_process

ALL_LAYERS = Phase(name="all", train="all", optimizer="momentum", learning_rate=1e-3, bn="train",
                   augment=False)


def measure(backend: str, model: str, batch_size: int, image_size: int | None,
            precision: str, steps: int, warmup: int, devices: int = 1,
            workdir: Path | None = None) -> dict:
    """Throughput of ``backend``/``model`` (imports that framework); on ``devices`` devices,
    ``batch_size`` is the global batch (``common.parallel``) and img/s counts all of them.
    ``workdir``: the backend's scratch run folder (default: a temporary one)."""
    spec = get_model(model)
    size = image_size or spec.default_size
    with contextlib.nullcontext(str(workdir)) if workdir else \
            tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        config = RunConfig(backend=backend, recipe=Recipe(name="throughput", phases=(ALL_LAYERS,)),
                           data=DataConfig(source="synthetic", image_size=size),
                           model=ModelConfig(name=model, weights="none"),
                           train=TrainConfig(batch_size=batch_size, precision=precision,
                                             devices=devices),
                           run_dir=tmp)
        # the protocol uses in-memory batches; the split only names the classes
        empty = Split(classes=tuple(f"c{i}" for i in range(10)), train=[Sample("-", 0)], val=[], test=[])
        b = get_backend(backend)(config, Path(tmp))
        try:
            b.setup(empty, size)
            b.build(spec, 10, WeightsRequest("none"), 0)
            b.apply_phase(ALL_LAYERS, 0)
            result = b.throughput(batch_size, precision, steps, warmup)
            result.update(status="ok", backend=backend, model=model, image_size=size, devices=devices,
                          versions=b.frameworks(), device=b.device(),
                          phase=throughput_phase_record(ALL_LAYERS, spec))
            return result
        finally:
            b.close()


def measure_in_child(backend: str, model: str, batch_size: int, image_size: int | None,
                     precision: str, steps: int, warmup: int, devices: int = 1) -> dict:
    """``measure`` in a fresh interpreter (frameworks never share a process); on several
    devices under the backend's launcher (torchrun) and parallel environment, as ``bench run``."""
    info = backend_info(backend)
    launcher = []
    if devices > 1 and info.launcher:
        launcher = ["-m", info.launcher, "--standalone", f"--nproc-per-node={devices}",
                    "--max-restarts=0"]
    result = child.run_json_child("benchmarks.throughput", [backend, model, batch_size,
                                                            image_size or 0, precision, steps,
                                                            warmup, devices],
                                  launcher=launcher, backend=backend, devices=devices)
    result.setdefault("backend", backend)
    result.setdefault("model", model)
    result.setdefault("devices", devices)
    return result


def scaling_rows(results: list[dict]) -> list[dict]:
    """Per backend and device count: train img/s and the scaling efficiency, img/s at N
    over N x img/s at 1 (None without a 1-device measurement)."""
    ok = [r for r in results if r.get("status") == "ok"]
    one = {r["backend"]: r["train"]["images_per_second"] for r in ok if r["devices"] == 1}
    rows = []
    for r in ok:
        ips, n = r["train"]["images_per_second"], r["devices"]
        base = one.get(r["backend"])
        rows.append({"backend": r["backend"], "devices": n, "train_images_per_second": ips,
                     "scaling_efficiency": ips / (n * base) if base else None,
                     "device": r["device"].get("kind")})
    return rows


def write_scaling_plot(rows: list[dict], path: Path) -> Path:
    """``bench throughput --devices``: the ``scaling_rows`` as a PNG at ``path``, train img/s and
    scaling efficiency against the device count, a line per backend, drawn like the report's
    plots. Measured on a CPU, the figure says so: its devices share its cores."""
    import matplotlib

    from benchmarks.report import STYLE, backend_colors, figure_grid, png_bytes

    colors = backend_colors(dict.fromkeys(r["backend"] for r in rows))
    with matplotlib.rc_context(STYLE):
        fig, axes = figure_grid(2, 2, 3.8, 3.0)
        for ax, key in zip(axes, ("train_images_per_second", "scaling_efficiency")):
            for backend, color in colors.items():
                mine = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["devices"])
                ax.plot([r["devices"] for r in mine], [float("nan") if r[key] is None else r[key]
                                                       for r in mine], "o-", color=color)
            ax.set(xlabel="devices", xticks=sorted({r["devices"] for r in rows}))
        axes[0].set(title="train images/s")
        axes[1].set(title="scaling efficiency: img/s at N / (N x img/s at 1)", ylim=(0, 1.15))
        if any(r["device"] == "cpu" for r in rows):
            fig.supxlabel("measured on a CPU: its devices share its cores, so this says nothing "
                          "about scaling", fontsize=8.5, color="#b03a2e")
        path.write_bytes(png_bytes(fig, colors))
    return path


def main(argv: list[str]) -> int:
    backend, model, batch, size, precision, steps, warmup, devices = argv
    child.begin()  # a killed bench takes this process and its temporary folder along

    def work() -> dict:
        workdir = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
        try:
            result = measure(backend, model, int(batch), int(size) or None, precision,
                             int(steps), int(warmup), int(devices), workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        result.pop("step_seconds", None)
        return result

    return child.serve(work, answer=is_main_process())  # under torchrun, rank 0 answers


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
