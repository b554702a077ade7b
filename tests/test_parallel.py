"""More than one device (issue 14): each framework's own data-parallel engine, same semantics.

The equivalence tests: with BN frozen and the same global batch, a 2-worker run and a
1-worker run start from the same weights and end one epoch with the same weights
(max abs diff <= 1e-5), in the default selection (CI): PyTorch with 2 gloo processes
under torchrun (ResNet-18 at 32 px); keras-jax on 2 XLA host devices, Keras on TensorFlow
with MirroredStrategy and slim with 2 clones, both on 2 logical CPUs (VGG16 at 32 px, one
child process per framework: ``tests/parallel_equivalence.py``). The error tests: one
line each, exit 2 where the flags are wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backends.base import availability, backend_info
from benchmarks import cli, runner
from common import synthetic
from common.config import ConfigError, TrainConfig, validate_parallel
from conftest import REPO, require_backend, tiny_config

EQUIVALENCE_TOLERANCE = 1e-5

HEAD_SGD = """
name = "ddp_head"
init = "random"
[[phase]]
name = "head"
train = "head"
optimizer = "momentum"
learning_rate = 0.05
bn = "frozen"
epochs = 1
"""


@pytest.fixture(scope="module")
def even_quads(tmp_path_factory) -> Path:
    """5 classes x (4 train / 1 val / 2 test): 20 training images, whole global batches of 4;
    5 validation images, which 2 ranks cannot share evenly (the gather drops the padding)."""
    root = tmp_path_factory.mktemp("even-quads")
    return synthetic.generate(synthetic.SyntheticSpec("quads", 7, image_size=40, seed=3,
                                                      presplit=(4, 1, 2)), root=root, progress=False)


def _bench(*argv) -> int:
    return cli.main([str(a) for a in argv])


def _ddp_config(data: Path, recipe: Path, run_dir: Path, devices: int):
    config = tiny_config("pytorch", str(recipe), data, run_dir, model="resnet18", image_size=32,
                         batch_size=4, devices=devices)
    # the split as given (train/ val/ test/ folders); one timed step: the epoch is the point
    return dataclasses.replace(config, data=dataclasses.replace(config.data, val_fraction=None,
                                                                test_fraction=None),
                               train=dataclasses.replace(config.train, throughput_steps=1))


def _on_one_core(fn, *args):
    """``fn(*args)`` in this process, pinned to one core as each gloo worker is (the backend
    takes a thread per core it may use; two spinning threads on a loaded machine are slow)."""
    cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if not cores:
        return fn(*args)
    os.sched_setaffinity(0, {min(cores)})
    try:
        return fn(*args)
    finally:
        os.sched_setaffinity(0, cores)


def test_pytorch_ddp_on_two_gloo_processes_ends_the_epoch_with_one_process_weights(
        even_quads, tmp_path):
    require_backend("pytorch")
    import torch

    from benchmarks import driver

    recipe = tmp_path / "ddp_head.toml"
    recipe.write_text(HEAD_SGD)
    one = _on_one_core(driver.run, _ddp_config(even_quads, recipe, tmp_path / "one", 1))
    assert one["status"] == "ok", one.get("error")
    config = _ddp_config(even_quads, recipe, tmp_path / "two", 2)
    two = runner.run_child(runner.PlannedRun("two", config))  # torchrun, 2 gloo workers
    assert two["status"] == "ok", two.get("error")
    states = [torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True)["model"]
              for d in ("one", "two")]
    assert states[0].keys() == states[1].keys()
    diff = max(float((states[0][k].double() - states[1][k].double()).abs().max()) for k in states[0])
    print(f"pytorch DDP 2 gloo processes vs 1 process: max abs diff {diff:.3g}")
    assert diff <= EQUIVALENCE_TOLERANCE
    # the record: global batch split evenly, LR unchanged, the engine that ran
    assert "parallel" not in one
    p = two["parallel"]
    assert (p["workers"], p["global_batch"], p["per_device_batch"]) == (2, 4, 2)
    assert p["process_group"] == "gloo" and "global batch" in p["rule"]
    # the whole training split once per epoch (20 images), metrics on every val/test image once
    assert two["curves"][0]["images_seen"] == one["curves"][0]["images_seen"] == 20
    for subset in ("val", "test"):
        assert two[subset]["count"] == one[subset]["count"] == {"val": 5, "test": 10}[subset]
        assert two[subset]["confusion"] == one[subset]["confusion"]
        assert abs(two[subset]["loss"] - one[subset]["loss"]) < 1e-4
    # rank 0 alone writes: one TensorBoard event file, each epoch line logged once
    run_dir = tmp_path / "two"
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert (run_dir / "log.txt").read_text().count("epoch 1 (head 1/1)") == 1


def test_a_global_batch_that_does_not_split_evenly_is_one_line():
    with pytest.raises(ConfigError, match=r"global batch and must split evenly over the 4 devices"):
        validate_parallel(TrainConfig(batch_size=6, devices=2, nnodes=2, rdzv_endpoint="h:1"))
    with pytest.raises(ConfigError, match="needs --rdzv-endpoint HOST:PORT"):
        validate_parallel(TrainConfig(batch_size=4, devices=2, nnodes=2))


@pytest.mark.parametrize("backend,message", [
    ("keras-torch", "Keras 3 has no data-parallel path on the torch backend")])
def test_a_backend_without_a_data_parallel_path_is_refused_in_one_line(backend, message, tiny_quads,
                                                                       tmp_path, capsys):
    code = _bench("run", "--backend", backend, "--recipe", "head", "--data", tiny_quads,
                  "--devices", 2, "--out", tmp_path / "out")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith(f"bench: error: {message}")


def test_the_launcher_command_is_torchrun_for_pytorch_and_plain_otherwise(tiny_quads, tmp_path):
    def command(backend, **train):
        return runner.worker_command(tiny_config(backend, "head", tiny_quads, tmp_path / "r", **train),
                                     Path("c.json"))
    assert command("pytorch")[1:] == ["-m", "benchmarks.run_worker", "c.json"]
    assert command("pytorch", devices=2, batch_size=4)[1:] == [
        "-m", "torch.distributed.run", "--nproc-per-node=2", "--standalone", "--max-restarts=0",
        "-m", "benchmarks.run_worker", "c.json"]
    multi = command("pytorch", devices=2, nnodes=2, node_rank=1, rdzv_endpoint="10.0.0.1:29400",
                    batch_size=8)
    assert multi[3:9] == ["--nproc-per-node=2", "--nnodes=2", "--node-rank=1", "--rdzv-backend=c10d",
                          "--rdzv-endpoint=10.0.0.1:29400", "--rdzv-id=r"]


def test_a_run_on_n_devices_sets_its_backend_environment_and_the_parallel_one():
    """What ``bench run`` (the runner), ``bench throughput --devices`` and the equivalence
    tests set before the framework starts: jax's host devices appended to XLA_FLAGS;
    TensorFlow's oneDNN kernels off on several replicas, whatever the user's environment says."""
    jax = backend_info("keras-jax")
    assert jax.process_environment(1, {"XLA_FLAGS": "--a"}) == {"KERAS_BACKEND": "jax"}
    assert jax.process_environment(2, {"XLA_FLAGS": "--a"}) == {
        "KERAS_BACKEND": "jax", "XLA_FLAGS": "--a --xla_force_host_platform_device_count=2"}
    intel = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    assert backend_info("keras").process_environment(1, intel) == {"KERAS_BACKEND": "tensorflow"}
    assert backend_info("keras").process_environment(2, intel) == {
        "KERAS_BACKEND": "tensorflow", "TF_ENABLE_ONEDNN_OPTS": "0"}
    assert backend_info("slim").process_environment(1, intel) == {}
    assert backend_info("slim").process_environment(2, intel) == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert backend_info("pytorch").process_environment(4, intel) == {}


ONEDNN_EMPTY_BATCH = """
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
conv = tf.function(lambda x: tf.nn.conv2d(tf.nn.conv2d(x, tf.ones([3, 3, 3, 8]), 1, "SAME"),
                                          tf.ones([3, 3, 8, 8]), 1, "SAME"))
try:
    print(_pywrap_util_port.IsMklEnabled(), tuple(conv(tf.zeros([0, 8, 8, 3])).shape))
except tf.errors.InvalidArgumentError as e:
    print(_pywrap_util_port.IsMklEnabled(), e.message.splitlines()[0])
"""


@pytest.mark.parametrize("onednn", ["1", "0"])
def test_onednn_conv2d_on_an_empty_batch_is_why_replicated_tensorflow_runs_turn_it_off(onednn):
    """The defect ``backends.base.TENSORFLOW_REPLICAS`` works around, in TensorFlow alone: a
    replica's empty share of a short batch through two convolutions. With oneDNN (on by
    default on AVX-512 CPUs) the first convolution returns its input, so the second sees 3
    channels; TensorFlow's own kernels give the empty [0, 8, 8, 8]. When this test fails
    with oneDNN on, TensorFlow fixed it: the override (and its row in docs/differences.md) can go."""
    require_backend("slim")
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", ONEDNN_EMPTY_BATCH], env=env, text=True,
                         capture_output=True, check=True).stdout.strip().splitlines()[-1]
    mkl, _, what = out.partition(" ")
    if onednn == "1" and mkl != "True":
        pytest.skip("this TensorFlow build has no oneDNN kernels")
    if onednn == "1":
        assert what.endswith("input depth must be evenly divisible by filter depth: 3 vs 8")
    else:
        assert what == "(0, 8, 8, 8)"


def test_more_processes_than_cores_fail_in_one_line(tiny_quads, tmp_path):
    require_backend("pytorch")
    config = tiny_config("pytorch", "head", tiny_quads, tmp_path / "r", model="resnet18",
                         image_size=32, devices=64, batch_size=64)
    from backends.base import BackendError
    from backends.pytorch import parallel

    with pytest.raises(BackendError, match=r"--devices 64: no CUDA device here.*use at most"):
        with pytest.MonkeyPatch.context() as m:
            m.setenv("LOCAL_RANK", "0")
            parallel.init_process_group(config.train)


def test_torchrun_flags_reach_the_run_config(tiny_quads, tmp_path):
    args = cli.get_args_parser().parse_args([
        "run", "--backend", "pytorch", "--recipe", "head", "--data", str(tiny_quads),
        "--batch-size", "8", "--nproc-per-node", "2", "--nnodes", "2", "--node-rank", "1",
        "--rdzv-endpoint", "10.0.0.1:29400", "--rdzv-timeout", "30"])
    [config] = cli.build_configs(args, tmp_path / "out")
    t = config.train
    assert (t.devices, t.nnodes, t.node_rank, t.rdzv_endpoint, t.rdzv_timeout) == \
        (2, 2, 1, "10.0.0.1:29400", 30)


def test_a_rendezvous_that_times_out_is_one_line_naming_the_address(tiny_quads, tmp_path):
    require_backend("pytorch")
    import socket

    with socket.socket() as s:  # a free port: nobody else joins there
        s.bind(("127.0.0.1", 0))
        endpoint = f"127.0.0.1:{s.getsockname()[1]}"
    config = tiny_config("pytorch", "head", tiny_quads, tmp_path / "r", model="resnet18",
                         batch_size=2, nnodes=2, rdzv_endpoint=endpoint, rdzv_timeout=2)
    result = runner.run_child(runner.PlannedRun("r", config))
    assert result["status"] == "failed"
    assert result["error"].startswith(f"the rendezvous at {endpoint} timed out after 2 s waiting "
                                      f"for 2 node(s)")


def test_sync_bn_without_cuda_is_refused_in_one_line(tiny_quads, tmp_path):
    require_backend("pytorch")
    import torch

    from backends.base import BackendError
    from backends.pytorch import parallel

    if torch.cuda.is_available():
        pytest.skip("SyncBatchNorm runs on CUDA here")
    train = TrainConfig(batch_size=4, devices=1, sync_bn=True)
    with pytest.raises(BackendError, match="--sync-bn: torch.nn.SyncBatchNorm runs on CUDA devices only"):
        with pytest.MonkeyPatch.context() as m:
            m.setenv("LOCAL_RANK", "0")
            parallel.init_process_group(train)


# one child process per framework (tests/parallel_equivalence.py), side by side; TensorFlow's
# twice, with the user's TF_ENABLE_ONEDNN_OPTS on (Intel's and AMD Zen 4's default) and off:
# (backends, TF_ENABLE_ONEDNN_OPTS in the parent's environment or None to leave it as it is)
FRAMEWORK_PROCESSES = ((("keras-jax",), None), (("keras", "slim"), "1"), (("keras", "slim"), "0"))
EQUIVALENCE_TEST = "test_two_devices_end_the_epoch_with_one_device_weights"
EQUIVALENCE_CASES = [("keras-jax", None), ("keras", "1"), ("keras", "0"), ("slim", "1"),
                     ("slim", "0")]


@pytest.fixture(scope="module")
def equivalence_runs(request, even_quads, tmp_path_factory) -> dict:
    """For each selected, available backend of ``FRAMEWORK_PROCESSES``: VGG16 at 32 px,
    the head trained one epoch (5 global batches of 4) on 2 devices, then on 1, from the
    same seed, in its framework's process with the environment ``bench run`` gives a run
    on 2 devices. Returns (backend, oneDNN setting) -> (process, its log, output folder); the
    processes run on."""
    selected = {(item.callspec.params["backend"], item.callspec.params["onednn"])
                for item in request.session.items
                if getattr(item, "originalname", "") == EQUIVALENCE_TEST}
    runs = {}
    for backends, onednn in FRAMEWORK_PROCESSES:
        backends = [b for b in backends if (b, onednn) in selected and not availability(b)]
        if not backends:
            continue
        out = tmp_path_factory.mktemp("equivalence-" + "-".join(backends) + f"-onednn{onednn}")
        (out / "ddp_head.toml").write_text(HEAD_SGD)
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        if onednn is not None:  # the user's setting, before bench's environment recipe
            env["TF_ENABLE_ONEDNN_OPTS"] = onednn
        files = []
        for backend in backends:
            config = tiny_config(backend, str(out / "ddp_head.toml"), even_quads, out / backend,
                                 model="vgg16", image_size=32, batch_size=4, devices=2)
            config = dataclasses.replace(
                config, data=dataclasses.replace(config.data, val_fraction=None, test_fraction=None))
            files.append(out / f"{backend}.config.json")
            files[-1].write_text(json.dumps(config.to_dict()))
            env.update(backend_info(backend).process_environment(2, env))
        log = open(out / "log.txt", "w")
        proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "parallel_equivalence.py"),
                                 str(out), *map(str, files)],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
        runs.update({(b, onednn): (proc, log, out) for b in backends})
    yield runs
    for proc, log, _ in runs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


@pytest.mark.parametrize(("backend", "onednn"), EQUIVALENCE_CASES)
def test_two_devices_end_the_epoch_with_one_device_weights(backend, onednn, equivalence_runs):
    """keras-jax: keras.distribution.DataParallel over 2 host devices (XLA_FLAGS, in the
    environment bench run gives the process); keras (TensorFlow): MirroredStrategy over 2
    logical CPUs; slim: 2 clones (--num_clones) on 2 logical CPUs. BN frozen (VGG16 has
    none), the same global batch of 4, one epoch of the head with momentum SGD. The 5
    validation images end in a batch of 1: one replica's share is empty. TensorFlow's runs
    start from a user environment with oneDNN forced on and off (``onednn``)."""
    require_backend(backend)
    proc, _, out = equivalence_runs[(backend, onednn)]
    code = proc.wait()
    text = (out / "log.txt").read_text(errors="replace")
    assert code == 0, text[-3000:]
    print("".join(line for line in text.splitlines(True) if line.startswith(f"{backend} on ")))
    arrays = dict(np.load(out / f"{backend}.npz"))
    two, one = json.loads((out / f"{backend}.json").read_text())
    names = sorted(k[len("d1/after/"):] for k in arrays if k.startswith("d1/after/"))
    assert names and names == sorted(k[len("d2/after/"):] for k in arrays if k.startswith("d2/after/"))

    def largest(a: str, b: str) -> float:
        return max(float(np.max(np.abs(arrays[f"{a}/{k}"].astype(np.float64) - arrays[f"{b}/{k}"])))
                   for k in names)
    assert largest("d1/before", "d2/before") == 0.0  # the same weights at the start
    diff, moved = largest("d1/after", "d2/after"), largest("d1/after", "d1/before")
    print(f"{backend} 2 devices vs 1: max abs diff {diff:.3g} (the epoch moved the head by {moved:.3g})")
    assert diff <= EQUIVALENCE_TOLERANCE
    # a wrong average (a sum, one device's half of the batch lost) moves the head by a
    # fraction of what the epoch moved it: far more than the tolerance
    assert moved >= 1000 * EQUIVALENCE_TOLERANCE
    # predictions on every validation image once (5 in batches of 4: jax pads the last)
    assert arrays["d2/val_logits"].shape == arrays["d1/val_logits"].shape == (5, 5)
    assert np.max(np.abs(arrays["d2/val_logits"] - arrays["d1/val_logits"])) <= 1e-4
    assert two["images"] == one["images"] == [20]  # the training split once, global batches of 4
    p = two["parallel"]
    assert (p["global_batch"], p["per_device_batch"], len(p["devices_used"])) == (4, 2, 2)
    assert p["engine"].startswith({"keras-jax": "keras.distribution.DataParallel",
                                   "keras": "tf.distribute.MirroredStrategy",
                                   "slim": "slim clones"}[backend])
    assert "global batch" in p["rule"]
    if onednn is not None:  # oneDNN off on several replicas, whatever the user said, and recorded
        assert p["environment"]["TF_ENABLE_ONEDNN_OPTS"]["value"] == "0"
        assert "empty batch" in p["environment"]["TF_ENABLE_ONEDNN_OPTS"]["reason"]
    if backend == "slim":  # model_deploy's clones, recorded with the slim flag name
        assert p["num_clones"] == 2
        assert "--num_clones=2" in two["native"]["train_image_classifier_flags"]


def _h5_arrays(path: Path) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, np.asarray(obj))
                     if isinstance(obj, h5py.Dataset) else None)
    return out


def _ckpt_arrays(prefix: Path) -> dict:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if not k.startswith("phase")}  # model variables, not the optimizer's slots


@pytest.mark.slow  # two InceptionV3 runs per backend: 2 to 6 min each on this CPU
@pytest.mark.parametrize("backend", ["keras-jax", "keras", "slim"])
def test_inception_v3_with_frozen_bn_on_two_devices_ends_the_epoch_with_one_device_weights(
        backend, even_quads, tmp_path):
    """What the fast test above does not cover: a model with BatchNorm layers (InceptionV3
    at 75 px; VGG16 has none), frozen in every replica, and the whole ``bench run`` path
    (the runner's environment, a worker per run, checkpoints, result.json with the
    ``parallel`` record, validation and test metrics) on 2 devices vs 1."""
    require_backend(backend)
    recipe = tmp_path / "ddp_head.toml"
    recipe.write_text(HEAD_SGD)
    results = {}
    for n in (1, 2):
        config = tiny_config(backend, str(recipe), even_quads, tmp_path / f"d{n}", image_size=75,
                             batch_size=4, devices=n)
        config = dataclasses.replace(
            config, data=dataclasses.replace(config.data, val_fraction=None, test_fraction=None),
            train=dataclasses.replace(config.train, throughput_steps=1))
        results[n] = runner.run_child(runner.PlannedRun(f"d{n}", config))
        assert results[n]["status"] == "ok", results[n].get("error")
    if backend == "slim":
        a, b = (_ckpt_arrays(tmp_path / f"d{n}" / "checkpoints" / "last.ckpt") for n in (1, 2))
    else:
        a, b = (_h5_arrays(tmp_path / f"d{n}" / "checkpoints" / "last.weights.h5") for n in (1, 2))
    assert a.keys() == b.keys()
    diff = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k]))) for k in a if a[k].size)
    print(f"{backend} 2 devices vs 1: max abs diff {diff:.3g}")
    assert diff <= EQUIVALENCE_TOLERANCE
    p = results[2]["parallel"]
    assert (p["global_batch"], p["per_device_batch"], len(p["devices_used"])) == (4, 2, 2)
    assert p["engine"].startswith({"keras-jax": "keras.distribution.DataParallel",
                                   "keras": "tf.distribute.MirroredStrategy",
                                   "slim": "slim clones"}[backend])
    if backend == "slim":  # recorded with the slim flag name
        assert "--num_clones=2" in results[2]["phases"][0]["native"]["train_image_classifier_flags"]
    for subset in ("val", "test"):
        assert results[2][subset]["count"] == results[1][subset]["count"]
        assert abs(results[2][subset]["loss"] - results[1][subset]["loss"]) < 1e-4


def test_scaling_efficiency_is_img_s_at_n_over_n_times_img_s_at_one(tmp_path):
    from benchmarks.throughput import scaling_rows

    def row(backend, n, ips):
        return {"status": "ok", "backend": backend, "devices": n, "device": {"kind": "cpu"},
                "train": {"images_per_second": ips}}
    rows = scaling_rows([row("pytorch", 1, 10.0), row("pytorch", 2, 15.0), row("keras-jax", 2, 8.0),
                         {"status": "failed", "backend": "keras", "devices": 1}])
    assert [(r["backend"], r["devices"], r["scaling_efficiency"]) for r in rows] == [
        ("pytorch", 1, 1.0), ("pytorch", 2, 0.75), ("keras-jax", 2, None)]
    from benchmarks.throughput import write_scaling_plot

    png = write_scaling_plot(rows, tmp_path / "scaling.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # two child processes, one of them torchrun's two workers: about 30-60 s here
def test_bench_throughput_devices_measures_pytorch_on_one_and_two_processes(tmp_path, capsys):
    require_backend("pytorch")
    out = tmp_path / "tp.json"
    code = _bench("throughput", "--backend", "pytorch", "--model", "resnet18", "--image-size", 32,
                  "--batch-size", 4, "--steps", 1, "--warmup", 0, "--devices", "1,2", "--out", out)
    printed = capsys.readouterr().out
    assert code == 0, printed
    rows = json.loads(out.read_text())["scaling"]
    assert [(r["backend"], r["devices"]) for r in rows] == [("pytorch", 1), ("pytorch", 2)]
    assert rows[0]["scaling_efficiency"] == 1.0 and rows[1]["scaling_efficiency"] > 0
    assert "2 device(s)" in printed and "says nothing about scaling" in printed
    assert out.with_suffix(".png").is_file()
    with pytest.raises(SystemExit):
        cli.get_args_parser().parse_args(["throughput", "--devices", "1,1"])
    assert _bench("throughput", "--backend", "pytorch", "--batch-size", 3, "--devices", "2") == 2


def test_keras_on_two_devices_converts_the_source_weights_outside_its_process(even_quads, tmp_path):
    """A Keras run on 2 logical CPUs whose source model must first be converted to Keras: the
    conversion (and any pretraining) runs in a child process, since converting in the run's
    own process would start TensorFlow's runtime before MirroredStrategy could split the CPU
    ("TensorFlow sees 1 device(s)"). With oneDNN forced on, as on an AVX-512 CPU."""
    require_backend("keras")
    require_backend("pytorch")  # the source backend: pretrained in pytorch, then converted
    config = tiny_config("keras", "head", even_quads, tmp_path / "r", model="vgg16",
                         image_size=32, batch_size=4, devices=2, weights="source")
    config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, val_fraction=None, test_fraction=None))
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
        result = runner.run_child(runner.PlannedRun("r", config))
    assert result["status"] == "ok", result.get("error")
    assert result["weights"]["source_backend"] == "pytorch" and result["weights"]["digest"]
    assert result["parallel"]["environment"]["TF_ENABLE_ONEDNN_OPTS"]["value"] == "0"
    assert len(result["parallel"]["devices_used"]) == 2
