"""More than one device (issue 14): each framework's own data-parallel engine, same semantics.

The equivalence tests: with BN frozen and the same global batch, a 2-worker run and a
1-worker run start from the same weights and end one epoch with the same weights
(max abs diff <= 1e-5). On this CPU machine: PyTorch with 2 gloo processes under
torchrun. The error tests: one line each, exit 2 where the flags are wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import cli, runner
from common import synthetic
from common.config import ConfigError, TrainConfig, validate_parallel
from conftest import require_backend, tiny_config

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


def _run(out: Path, data: Path, recipe: Path, *flags) -> dict:
    code = _bench("run", "--backend", "pytorch", "--model", "resnet18", "--image-size", 32,
                  "--weights", "none", "--recipe", recipe, "--data", data, "--batch-size", 4,
                  "--no-report", "--out", out, *flags)
    result = json.loads((out / "pytorch-ddp_head-s0" / "result.json").read_text())
    assert code == 0, result.get("error")
    return result


def test_pytorch_ddp_on_two_gloo_processes_ends_the_epoch_with_one_process_weights(
        even_quads, tmp_path):
    require_backend("pytorch")
    import torch

    recipe = tmp_path / "ddp_head.toml"
    recipe.write_text(HEAD_SGD)
    one = _run(tmp_path / "one", even_quads, recipe)
    two = _run(tmp_path / "two", even_quads, recipe, "--nproc-per-node", 2)
    states = [torch.load(tmp_path / d / "pytorch-ddp_head-s0" / "checkpoints" / "last.pt",
                         weights_only=True)["model"] for d in ("one", "two")]
    assert states[0].keys() == states[1].keys()
    diff = max(float((states[0][k].double() - states[1][k].double()).abs().max()) for k in states[0])
    moved = float((states[0]["fc.weight"] - torch.load(
        tmp_path / "one" / "pytorch-ddp_head-s0" / "checkpoints" / "best.pt",
        weights_only=True)["model"]["fc.weight"]).abs().max())
    print(f"pytorch DDP 2 gloo processes vs 1 process: max abs diff {diff:.3g}")
    assert diff <= EQUIVALENCE_TOLERANCE
    assert moved == 0.0  # one epoch: best is last, the comparison is of the trained weights
    # the record: global batch split evenly, LR unchanged, the engine that ran
    assert "parallel" not in one
    p = two["parallel"]
    assert (p["workers"], p["global_batch"], p["per_device_batch"]) == (2, 4, 2)
    assert p["process_group"] == "gloo" and "global batch" in p["rule"]
    # the whole training split once per epoch (20 images), metrics on every val/test image once
    assert two["curves"][0]["images_seen"] == one["curves"][0]["images_seen"] == 20
    for subset in ("val", "test"):
        assert two[subset]["count"] == one[subset]["count"] == {"val": 5, "test": 10}[subset]
        assert two[subset]["top1"] == one[subset]["top1"]
        assert abs(two[subset]["loss"] - one[subset]["loss"]) < 1e-4
    # rank 0 alone writes: one TensorBoard event file, each epoch line logged once
    run_dir = tmp_path / "two" / "pytorch-ddp_head-s0"
    assert len(list((run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 1
    log = (run_dir / "log.txt").read_text()
    assert log.count("epoch 1 (head 1/1)") == 1 and "torch.distributed.run" not in log.split("\n")[0]


def test_a_global_batch_that_does_not_split_evenly_is_one_line():
    with pytest.raises(ConfigError, match=r"global batch and must split evenly over the 4 devices"):
        validate_parallel(TrainConfig(batch_size=6, devices=2, nnodes=2, rdzv_endpoint="h:1"))
    with pytest.raises(ConfigError, match="needs --rdzv-endpoint HOST:PORT"):
        validate_parallel(TrainConfig(batch_size=4, devices=2, nnodes=2))


def test_a_backend_without_a_data_parallel_path_is_refused_in_one_line(tiny_quads, tmp_path, capsys):
    code = _bench("run", "--backend", "keras-torch", "--recipe", "head", "--data", tiny_quads,
                  "--devices", 2, "--out", tmp_path / "out")
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("bench: error: Keras 3 has no data-parallel path on the torch backend")


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


def test_more_processes_than_cores_fail_in_one_line(tiny_quads, tmp_path):
    require_backend("pytorch")
    config = tiny_config("pytorch", "head", tiny_quads, tmp_path / "r", model="resnet18",
                         image_size=32, devices=64, batch_size=64)
    from backends.base import BackendError
    from backends.pytorch import parallel

    with pytest.raises(BackendError, match=r"--nproc-per-node 64: .*use at most"):
        with pytest.MonkeyPatch.context() as m:
            m.setenv("LOCAL_RANK", "0")
            parallel.init_process_group(config.train)
