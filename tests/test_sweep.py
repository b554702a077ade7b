"""``bench throughput --sweep`` (benchmarks/sweep/, benchmarks/sweep_worker.py) on a CPU.

The smoke sweep runs the real children (FLOP count, model steps with an injected
out-of-memory error, end-to-end epochs over generated JPEG files) at tiny sizes; the
planner, the budget and the MFU arithmetic are checked without children. The smoke
sweep's model steps over every backend and mode run in the default selection; its
end-to-end rows over every backend are ``-m slow``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import threading

import numpy as np
import pytest

from benchmarks import cli, sweep
from common import gpu_peaks
from conftest import require_backend

NO_TF = "tensorflow, tf_slim, tf_keras not installed; pip install 'transfer-bench[slim]'"


def without_tensorflow(real):
    """``availability`` as on the lent GPU machines: no TensorFlow."""
    def availability(name: str):
        if name in ("keras", "keras-tensorflow", "slim"):
            return NO_TF
        return real(name)
    return availability


# ------------------------------------------------------------------ peaks and MFU

@pytest.mark.parametrize("name, row", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"),
    ("NVIDIA H100 NVL", "H100 NVL"), ("NVIDIA H200", "H200 SXM"), ("NVIDIA H200 NVL", "H200 NVL"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA L4", "L4"),
    ("NVIDIA GH200 480GB", None), ("NVIDIA H100", None), ("NVIDIA A10G", None), ("cpu", None), (None, None),
])
def test_peaks_by_device_name_and_unknown_devices_are_never_guessed(name, row):
    peaks = gpu_peaks.device_peaks(name)
    assert (peaks.name if peaks else None) == row


def test_mfu_is_model_flops_over_the_dense_peak_of_the_precision_that_ran():
    h100 = gpu_peaks.device_peaks("NVIDIA H100 80GB HBM3")
    assert (h100.bf16, h100.tf32, h100.fp32) == (989.5e12, 494.5e12, 67e12)  # datasheet / 2
    assert gpu_peaks.peak_precision("bf16", tf32=True) == "bf16"
    assert gpu_peaks.peak_precision("fp32", tf32=True) == "tf32"
    assert gpu_peaks.peak_precision("fp32", tf32=False) == "fp32"
    assert gpu_peaks.precision_label("fp32", True) == "fp32 (TF32)"
    assert gpu_peaks.mfu(2500.0, 3 * 5.7e9, h100.bf16) == pytest.approx(2500 * 17.1e9 / 989.5e12)
    assert gpu_peaks.mfu(2500.0, 17.1e9, None) is None and gpu_peaks.mfu(None, 1.0, 1.0) is None


# ------------------------------------------------------------------ plan and budget

def test_plan_runs_the_headline_rows_first_and_says_why_tensorflow_rows_do_not_run(monkeypatch):
    monkeypatch.setattr(sweep.planning, "availability", without_tensorflow(sweep.planning.availability))
    jobs, skipped = sweep.plan(sweep.Settings())
    keys = [(j.job, j.backend, j.mode, j.model, j.precision) for j in jobs]
    assert keys[:4] == [("model_step", "pytorch", "eager", "inception_v3", "bf16"),
                        ("model_step", "pytorch", "eager", "resnet50", "bf16"),
                        ("model_step", "keras-jax", "XLA", "inception_v3", "bf16"),
                        ("model_step", "keras-jax", "XLA", "resnet50", "bf16")]
    assert [f"{i.kind}@{i.batch}" for i in jobs[0].items][:2] == ["train@256", "infer@256"]
    assert [f"{i.kind}@{i.batch}" for i in jobs[2].items] == ["train@256", "infer@256"]
    # the end-to-end target runs in the PyTorch eager job of its key (no second start); a
    # compiled mode's end-to-end rows are a job of their own, later
    assert [j.key for j in jobs if j.e2e] == [("pytorch", "eager", "inception_v3", "bf16"),
                                              ("keras-torch", "eager", "inception_v3", "bf16")]
    assert ("end_to_end", "keras-jax", "XLA", "inception_v3", "bf16") in keys[4:]
    # FLOPs are counted by the first PyTorch job of each model: no process of their own
    counting = [j.model for j in jobs if j.count_flops]
    assert counting[:2] == ["inception_v3", "resnet50"] and set(counting) == set(sweep.MODELS)
    assert "flops" not in {j.job for j in jobs}
    # every model of the suite's table that a backend has (resnet18, vgg16...), after the
    # headline ones
    assert ("model_step", "pytorch", "eager", "resnet18", "bf16") in keys
    assert keys.index(("model_step", "pytorch", "eager", "resnet18", "bf16")) > keys.index(
        ("model_step", "pytorch", "torch.compile", "resnet50", "bf16"))
    # a compiled mode: one job per batch size (each compiles); eager: one job for all sizes
    compiled = [j for j in jobs if j.key == ("pytorch", "torch.compile", "inception_v3", "bf16")]
    assert [[i.batch for i in j.items] for j in compiled] == [[256, 256], [128, 128], [64, 64]]
    tf_rows = [r for r in skipped if r["backend"] in ("keras", "slim")]
    assert tf_rows and {r["reason"] for r in tf_rows} == {sweep.NO_TENSORFLOW}
    assert {r["table"] for r in tf_rows} == {"model_step", "end_to_end"}
    assert not any(j.backend in ("keras", "slim") for j in jobs)
    alone, _ = sweep.plan(sweep.Settings(backends=("keras-jax",), models=("resnet50",)))
    assert (alone[0].job, alone[0].model) == ("flops", "resnet50")  # no PyTorch job to count them


def _fake_runner(clock, seconds_per_job, killed_jobs=()):
    """Stands in for the child processes: every item measured at 100 img/s."""
    def runner(payload, deadline, on_record):
        clock[0] += seconds_per_job
        if payload["job"] == "flops":
            for m in payload["models"]:
                on_record({"event": "flops", "model": m["model"], "image_size": m["image_size"],
                           "forward_flops": 1e9})
        elif payload["job"] == "model_step":
            on_record({"event": "job", "device": {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3"},
                       "versions": {"torch": "x"}})
            if payload["count_flops"]:
                on_record({"event": "flops", "model": payload["model"],
                           "image_size": payload["image_size"], "forward_flops": 1e9})
            items = payload["items"][:1] if (payload["backend"], payload["mode"]) in killed_jobs \
                else payload["items"]
            for item in items:
                on_record({"event": "row", "kind": item["kind"], "batch_requested": item["batch"],
                           "batch": item["batch"], "status": "ok", "images_per_second": 100.0,
                           "images_per_second_p10": 90.0, "images_per_second_p90": 110.0,
                           "first_step_seconds": 1.0, "peak_memory_bytes": 2**30, "tf32": True,
                           "fell_back": None})
        killed = (payload["backend"], payload["mode"]) in killed_jobs
        return {"seconds": seconds_per_job, "returncode": -9 if killed else 0, "killed": killed,
                "stderr_tail": []}
    return runner


def test_budget_runs_jobs_in_order_and_the_rest_say_not_run(monkeypatch, tmp_path):
    monkeypatch.setattr(sweep.planning, "availability", without_tensorflow(sweep.planning.availability))
    clock = [1000.0]
    settings = sweep.Settings(models=("inception_v3",), precisions=("bf16",), e2e=False,
                              budget_seconds=140.0)
    record = sweep.run_sweep(settings, tmp_path, runner=_fake_runner(clock, 60.0, {("keras-jax", "XLA")}),
                             clock=lambda: clock[0])
    rows = {(r["backend"], r["mode"], r["kind"], r["batch_requested"]): r for r in record["rows"]}
    assert rows[("pytorch", "eager", "train", 256)]["status"] == "ok"
    # MFU of a train row: 100 img/s x 3 x 1 GFLOP over the H100's bf16 peak
    assert rows[("pytorch", "eager", "train", 256)]["mfu"] == pytest.approx(100 * 3e9 / 989.5e12)
    assert rows[("pytorch", "eager", "infer", 256)]["mfu"] == pytest.approx(100 * 1e9 / 989.5e12)
    # the keras-jax job was stopped at the budget after its first row
    assert rows[("keras-jax", "XLA", "train", 256)]["status"] == "ok"
    assert rows[("keras-jax", "XLA", "infer", 256)]["reason"] == "stopped at the time budget"
    late = rows[("pytorch", "torch.compile", "train", 256)]
    assert late["status"] == "not run" and late["reason"].startswith("time budget: ~100 s needed")
    assert rows[("keras", "tf.function", "train", 256)]["reason"] == sweep.NO_TENSORFLOW
    assert [j["backend"] for j in record["jobs"]] == ["pytorch", "keras-jax"]
    md = (tmp_path / "throughput.md").read_text()
    assert "no TensorFlow on this machine" in md and "stopped at the time budget" in md
    assert "CPU SMOKE" not in md
    assert json.loads((tmp_path / "throughput.json").read_text())["rows"]


def test_an_end_to_end_row_without_its_pipeline_timing_reads_as_a_dash(monkeypatch, tmp_path):
    """A job stopped before it timed its pipeline alone leaves its end-to-end row without
    ``decode``: the markdown says ``—`` in that column (the report's ``rate`` filter)."""
    monkeypatch.setattr(sweep.planning, "availability", without_tensorflow(sweep.planning.availability))
    clock = [1000.0]
    record = sweep.run_sweep(sweep.Settings(models=("inception_v3",), precisions=("bf16",), e2e=False,
                                            backends=("pytorch",), modes=("eager",)),
                             tmp_path, runner=_fake_runner(clock, 1.0), clock=lambda: clock[0])
    record["end_to_end"] = [{"table": "end_to_end", "backend": "pytorch", "mode": "eager",
                             "model": "inception_v3", "precision": "bf16", "batch": 128, "recipe": "full",
                             "phase": "full", "status": "ok", "end_to_end_images_per_second": 900.0,
                             "model_step_images_per_second": 1000.0, "ratio": 0.9,
                             "limiting_stage": "the model step (the input pipeline keeps up)"}]
    assert ("| pytorch | inception_v3 | bf16 | 128 | full / full | 900.0 | 1,000.0 | 90.0 % | — | "
            "the model step (the input pipeline keeps up) |") in sweep.markdown(record)


def test_smoke_jobs_run_side_by_side_and_report_in_plan_order(monkeypatch, tmp_path):
    """``Settings.processes`` > 1 (the CPU smoke: one per core): the first two jobs are in
    flight at once (a barrier both must reach), each child's threads are the cores divided
    among the processes, and the JSON is the one-at-a-time sweep's, row for row and job for
    job in plan order."""
    monkeypatch.setattr(sweep.planning, "availability", without_tensorflow(sweep.planning.availability))
    monkeypatch.setattr(sweep.planning, "cores", lambda: 4)
    settings = sweep.Settings(models=("inception_v3",), precisions=("bf16",), e2e=False,
                              budget_seconds=1e6)
    clock = [1000.0]
    alone = sweep.run_sweep(settings, tmp_path / "alone", runner=_fake_runner(clock, 1.0),
                            clock=lambda: clock[0])
    fake, both_started = _fake_runner(clock, 1.0), threading.Barrier(2, timeout=120)
    lock, threads = threading.Lock(), []

    def runner(payload, deadline, on_record):
        with lock:
            threads.append(payload.get("threads"))
            first_two = len(threads) <= 2
        if first_two:
            both_started.wait()  # raises BrokenBarrierError when the jobs run one at a time
        return fake(payload, deadline, on_record)

    record = sweep.run_sweep(dataclasses.replace(settings, processes=2), tmp_path / "side",
                             runner=runner, clock=lambda: clock[0])
    assert len(threads) == len(record["jobs"]) > 2 and set(threads) == {2}
    assert (record["settings"]["processes"], record["settings"]["threads_per_process"]) == (2, 2)
    assert record["rows"] == alone["rows"]
    assert [(j["backend"], j["mode"], j["items"]) for j in record["jobs"]] == \
        [(j["backend"], j["mode"], j["items"]) for j in alone["jobs"]]
    assert "2 jobs side by side, 2 CPU thread(s) each" in (tmp_path / "side" / "throughput.md").read_text()
    assert (alone["settings"]["processes"], alone["settings"]["threads_per_process"]) == (1, None)
    assert sweep.Settings().processes == 1 and sweep.Settings.for_smoke().processes == 4


def test_a_smoke_child_gets_its_share_of_the_threads(monkeypatch):
    """Side by side, each child's frameworks are capped at its share of the cores (torch and
    BLAS through OpenMP's variable, TensorFlow's intra-op pool, inductor's compile workers,
    jax's one-thread switch), a variable the user set is kept, and alone it gets no cap."""
    for name in (*sweep.THREAD_VARIABLES, "XLA_FLAGS"):
        monkeypatch.delenv(name, raising=False)
    assert not set(sweep.THREAD_VARIABLES) & set(sweep.child_env())
    env = sweep.child_env(1)
    assert {env[name] for name in sweep.THREAD_VARIABLES} == {"1"}
    assert env["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=false"
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    env = sweep.child_env(2)
    assert env["OMP_NUM_THREADS"] == "3" and env["TF_NUM_INTRAOP_THREADS"] == "2"
    assert env["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"  # jax's switch is for one
    assert sweep.child_env(1)["XLA_FLAGS"] == ("--xla_force_host_platform_device_count=2 "
                                               "--xla_cpu_multi_thread_eigen=false")


def test_limiting_stage_is_read_from_the_numbers():
    row = {"status": "ok", "model_step_images_per_second": 1000.0}
    assert "model step" in sweep.limiting_stage({**row, "ratio": 0.95, "decode": None})
    assert sweep.limiting_stage({**row, "ratio": 0.5, "decode": {"images_per_second": 600.0}}) \
        .startswith("the input pipeline: 600 img/s")
    assert sweep.limiting_stage({**row, "ratio": 0.5, "decode": {"images_per_second": 3000.0}}) \
        .startswith("the loop around the step")


@pytest.mark.parametrize("argv, fragment", [
    (["--sweep", "--batch-size", "8"], "--batch-size is for one measurement"),
    (["--smoke"], "--smoke belongs to --sweep"),
    (["--sweep", "--mode", "jit"], "--mode 'jit': unknown mode"),
    (["--sweep", "--precision", "fp16"], "--precision 'fp16': unknown precision"),
    (["--sweep", "--backend", "fake"], "--backend 'fake': unknown backend for --sweep"),
])
def test_sweep_option_errors_are_one_line(capsys, argv, fragment):
    assert cli.main(["throughput", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error:") and fragment in err and "\n" not in err


# ------------------------------------------------------------------ the smoke sweep

def test_smoke_sweep_runs_the_real_children_and_writes_json_markdown_and_plot(monkeypatch, tmp_path,
                                                                              capsys):
    """Real children on the CPU: the FLOP count, PyTorch model steps with an out-of-memory
    error injected at batch 4 (falls back to 2), end-to-end epochs over generated JPEG
    files with the pipeline timed alone, MFU against an injected device's peak, and the
    TensorFlow backends' rows as on the GPU machines."""
    require_backend("pytorch")
    monkeypatch.setattr(sweep.planning, "availability", without_tensorflow(sweep.planning.availability))
    out = tmp_path / "smoke"
    code = cli.main(["throughput", "--sweep", "--smoke", "--backend", "pytorch,keras,slim",
                     "--model", "resnet50", "--precision", "fp32", "--mode", "eager,tf.function,graph",
                     "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "CPU SMOKE TEST: not a result" in printed
    record = json.loads((out / "throughput.json").read_text())
    assert record["complete"] and record["smoke"]
    assert record["device"]["injected_for_mfu"] == sweep.SMOKE_DEVICE
    flops = record["flops"]["resnet50"]
    assert flops["image_size"] == 32 and flops["forward_flops_per_image"] > 0
    assert flops["train_flops_per_image"] == 3 * flops["forward_flops_per_image"]
    rows = {(r["backend"], r["kind"], r["batch_requested"]): r for r in record["rows"]}
    train4 = rows[("pytorch", "train", 4)]
    assert train4["status"] == "ok" and train4["batch"] == 2
    assert train4["fell_back"] == "fell back from 4: out of memory"
    assert rows[("pytorch", "train", 2)]["images_per_second"] == train4["images_per_second"]
    # fp32 on a CPU (no TF32): held to the injected H100's plain fp32 peak
    assert train4["peak_flops"] == 67e12 and train4["precision_label"] == "fp32"
    assert train4["mfu"] == pytest.approx(train4["images_per_second"] * train4["flops_per_image"] / 67e12)
    assert not math.isnan(train4["images_per_second_p10"])
    for backend in ("keras", "slim"):
        assert {r["reason"] for r in record["rows"] + record["end_to_end"]
                if r["backend"] == backend} == {sweep.NO_TENSORFLOW}
    e2e = [r for r in record["end_to_end"] if r["backend"] == "pytorch"]
    assert [(r["recipe"], r["phase"], r["status"]) for r in e2e] == [("two_phase", "top2", "ok"),
                                                                     ("full", "full", "ok")]
    for r in e2e:
        assert r["end_to_end_images_per_second"] > 0 and r["model_step_images_per_second"] > 0
        assert r["ratio"] == pytest.approx(r["end_to_end_images_per_second"]
                                           / r["model_step_images_per_second"])
        assert r["decode"]["images_per_second"] > 0 and "persistent worker" in r["decode"]["pipeline"]
        assert r["limiting_stage"] and [e["epoch"] for e in r["epochs"]] == [1, 2]
    assert record["settings"]["e2e_images"] == 10 and all(t["met"] is None for t in record["targets"])
    md = (out / "throughput.md").read_text()
    assert "CPU SMOKE TEST — NOT A RESULT" in md and "fell back from 4: out of memory" in md
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_persistent_workers_draw_each_epochs_augmentation(tiny_quads):
    """The DataLoader keeps its worker processes between epochs; the sampler sends the
    epoch with each index, so they draw the same crops and flips as the training process."""
    require_backend("pytorch")
    from backends.pytorch import data
    from common.data import load_image_folder

    samples = sorted(load_image_folder(tiny_quads).samples, key=lambda s: s.path)[:8]
    kept = data.train_loader(samples, 32, 4, augment=True, seed=0, num_workers=2)
    assert kept.persistent_workers
    in_process = data.train_loader(samples, 32, 4, augment=True, seed=0)
    for epoch in (1, 2):
        data.set_epoch(kept, epoch)
        data.set_epoch(in_process, epoch)
        for (a, la), (b, lb) in zip(kept, in_process):
            assert np.array_equal(a.numpy(), b.numpy()) and np.array_equal(la.numpy(), lb.numpy())


def test_smoke_sweep_over_every_backend_and_mode(tmp_path):
    """``bench throughput --sweep --smoke --no-end-to-end``: every backend and mode the sweep
    runs (PyTorch eager and torch.compile, Keras on jax (XLA), on torch and on TensorFlow, slim's
    TF1 graph), each in a process of its own, VGG16 at 32 px, with the FLOP count, the MFU
    arithmetic and the out-of-memory error injected at batch 4; every row is a measurement
    (img/s > 0) or says why it did not run, and the JSON, markdown and plot are written. The
    end-to-end rows: the test above (PyTorch) and ``-m slow`` below (every backend)."""
    out = tmp_path / "smoke"
    assert cli.main(["throughput", "--sweep", "--smoke", "--no-end-to-end", "--out", str(out)]) == 0
    record = json.loads((out / "throughput.json").read_text())
    assert record["complete"] and record["smoke"] and not record["end_to_end"]
    runnable = [m for m in sweep.MODES if sweep.planning.availability(m[0]) is None]
    for row in record["rows"]:
        if row["status"] == "ok":
            assert row["images_per_second"] > 0 and row["first_step_seconds"] > 0, row
        else:
            assert row["status"] == "not run" and row["reason"], row
            assert (row["backend"], row["mode"]) not in runnable, row
    ran = {(r["backend"], r["mode"]) for r in record["rows"] if r["status"] == "ok"}
    fell_back = {(r["backend"], r["mode"]) for r in record["rows"]
                 if r.get("fell_back") == "fell back from 4: out of memory"}
    assert set(runnable) == ran == fell_back
    # one process per (backend, mode): the smoke compiles each model once; one per core side by side
    assert sorted((j["backend"], j["mode"]) for j in record["jobs"] if j["job"] == "model_step") \
        == sorted(runnable)
    assert record["settings"]["processes"] == min(sweep.cores(), len(record["jobs"]))
    assert all(j["ready_seconds"] > 0 for j in record["jobs"])
    if sweep.planning.availability("pytorch") is None:
        flops = record["flops"]["vgg16"]
        assert flops["image_size"] == 32 and flops["forward_flops_per_image"] > 0
        assert all(r["mfu"] > 0 for r in record["rows"] if r["status"] == "ok")
    md = (out / "throughput.md").read_text()
    assert "CPU SMOKE TEST — NOT A RESULT" in md
    assert all(f"| {b} | {m} |" in md or f"{b} {m}" in md for b, m in runnable)
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_smoke_sweep_end_to_end_over_every_backend(tmp_path):
    """``bench throughput --sweep --smoke`` as it is, end-to-end rows included: both phases of
    every installed backend through its own pipeline over the generated JPEG files (minutes on
    a CPU). ``pytest -m slow tests/test_sweep.py``."""
    out = tmp_path / "smoke"
    assert cli.main(["throughput", "--sweep", "--smoke", "--out", str(out)]) == 0
    record = json.loads((out / "throughput.json").read_text())
    installed = {b for b, _ in sweep.MODES if sweep.planning.availability(b) is None}
    e2e = [r for r in record["end_to_end"] if r["status"] == "ok"]
    assert sorted((r["backend"], r["phase"]) for r in e2e) == sorted(
        (b, p) for b in installed for _, p in sweep.E2E_PHASES)
    for r in e2e:  # the pipeline alone: timed, or why not (slim does not time it alone)
        assert r["end_to_end_images_per_second"] > 0 and r["model_step_images_per_second"] > 0
        assert r["decode"]["images_per_second"] > 0 if r["decode"]["status"] == "ok" \
            else r["decode"]["status"] == "not run" and r["decode"]["reason"]
    assert {(r["backend"], r["mode"]) for r in record["rows"] if r["status"] == "ok"} == {
        m for m in sweep.MODES if m[0] in installed}
