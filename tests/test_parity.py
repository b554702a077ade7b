"""Parity: the same weights and images give the same numbers in every backend.

* ``bench parity`` at 75 px: every canonical block and the logits within 1e-4 for every
  pair of backends (computed in this process, which holds every framework; the command
  itself, one child process per backend, is the slow test, ``pytest -m slow``);
* the two places where torchvision's Inception3 differs from Keras' and slim's, and the
  suite's alignment of each (docs/differences.md);
* pixel parity: every backend's eval-mode input for the same file is the same array,
  over golden images that exercise the decoder (alpha, CMYK, EXIF, 16 bit, too small).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import require_backend

from backends.base import BackendError
from benchmarks.parity import golden_batch, run_parity
from common import canonical
from common.data import Sample, Split, load_image
from common.models import get_model
from common.preprocess import get_normalisation

SPEC = get_model("inception_v3")


def test_bench_parity_at_75px_every_block_of_every_pair_within_1e_4(tmp_path):
    for b in ("pytorch", "keras", "slim"):
        require_backend(b)
    report = run_parity("inception_v3", 75, tmp_path, weights="random", in_process=True)
    assert report["backends"] == ["pytorch", "keras", "slim"] and report["alignment"] == "suite"
    assert list(report["max_abs_diff"]) == ["pytorch-keras", "pytorch-slim", "keras-slim"]
    for pair, blocks in report["max_abs_diff"].items():
        assert list(blocks) == [*SPEC.blocks, "logits"]
        assert max(blocks.values()) <= 1e-4, (pair, blocks)
    assert report["ok"] and report["logits_max_abs_diff"] <= 1e-4
    assert report["shapes"]["Mixed_7c"] == [5, 1, 1, 2048] and report["shapes"]["logits"] == [5, 5]
    assert min(report["magnitude"].values()) > 0.1  # real signal, not zeros compared with zeros
    assert json.loads((tmp_path / "parity.json").read_text())["weights"]["digest"] == \
        report["weights"]["digest"]
    assert "| Mixed_5b |" in (tmp_path / "parity.md").read_text()


@pytest.mark.slow
def test_bench_parity_command_runs_each_backend_in_a_child_and_names_command_and_machine(tmp_path,
                                                                                         capsys):
    """``bench parity``: one child process per backend; the report names its command and
    the machine. With torchvision's own Inception3 (``--alignment native``) the logits
    differ far beyond the target (the branch pooling counts its padding), and the command
    exits 1. Slow (a framework import per child): ``pytest -m slow tests/test_parity.py``."""
    for b in ("pytorch", "slim"):
        require_backend(b)
    from benchmarks import cli

    argv = ["parity", "--model", "inception_v3", "--backend", "pytorch,slim", "--alignment",
            "native", "--out", str(tmp_path)]
    assert cli.main(argv) == 1
    assert "NOT within the target" in capsys.readouterr().out
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["command"] == "bench " + " ".join(argv)
    assert report["processes"] == "one child process per backend" and not report["ok"]
    assert report["max_abs_diff"]["pytorch-slim"]["logits"] > 1e-2
    assert report["max_abs_diff"]["pytorch-slim"]["stem"] <= 1e-4  # the stem has no branch pooling
    assert report["machine"]["cores"] and "torch" in report["machine"]["versions"]
    assert f"Command: `bench {' '.join(argv)}`" in (tmp_path / "parity.md").read_text()


def test_bench_parity_refuses_resnet50_and_a_size_below_the_minimum_in_one_line(capsys):
    from benchmarks import cli

    assert cli.main(["parity", "--model", "resnet50"]) == 2
    assert capsys.readouterr().err.startswith("bench: error: resnet50 is not one architecture")
    assert cli.main(["parity", "--model", "inception_v3", "--image-size", "64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "below inception_v3's minimum 75 px" in err


# ------------------------------------------------------------ torch alignment

@pytest.fixture(scope="module")
def torch_inception():
    """``{aligned: model}``: the suite's aligned torch InceptionV3 and torchvision's own, in
    eval mode (weights left at PyTorch's layer defaults: these tests look at structure)."""
    require_backend("pytorch")
    from backends.pytorch.catalog import MODELS
    from backends.pytorch.recipe import build_model

    return {aligned: build_model(SPEC, MODELS["inception_v3"], 5, aligned=aligned,
                                 init_weights=False).eval() for aligned in (True, False)}


def test_torch_branch_pool_excludes_the_padding_like_tensorflow_same_pooling(torch_inception):
    """torchvision's F.avg_pool2d counts the zero padding (a corner of a constant map
    averages to 4/9 of it); Keras and slim SAME pooling do not. The aligned model matches TF."""
    import torch

    pooled = {}
    for aligned in (True, False):
        net = torch_inception[aligned]
        for block in ("Mixed_5b", "Mixed_6b", "Mixed_7b"):
            module = getattr(net, block)
            handle = module.branch_pool.register_forward_pre_hook(
                lambda m, args, key=(aligned, block): pooled.__setitem__(key, args[0]))
            with torch.inference_mode():
                module(torch.ones(1, module.branch_pool.conv.in_channels, 5, 5))
            handle.remove()
    for block in ("Mixed_5b", "Mixed_6b", "Mixed_7b"):
        assert torch.all(pooled[True, block] == 1)
        assert float(pooled[False, block][0, 0, 0, 0]) == pytest.approx(4 / 9)
        assert float(pooled[False, block][0, 0, 2, 2]) == 1


def test_torch_batchnorm_gamma_is_fixed_at_one_so_counts_match_keras_and_slim(torch_inception):
    """Keras and slim InceptionV3 BatchNorm has no gamma (scale=False); torchvision's has.
    The aligned model's gamma is a constant 1 (not a parameter): its backbone has the
    canonical (Keras, slim) trainable count, and a state with another gamma is refused."""
    import torch
    from torch import nn

    from backends.pytorch.catalog import MODELS
    from backends.pytorch.weights import restore_excluding_head

    counts = {}
    for aligned in (True, False):
        net = torch_inception[aligned]
        bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
        assert len(bns) == 94 and {m.eps for m in bns} == {1e-3}  # as Keras' and slim's
        params = {id(p) for p in net.parameters()}
        assert all((id(m.weight) in params) is not aligned for m in bns)
        counts[aligned] = sum(p.numel() for n, p in net.named_parameters() if not n.startswith("fc."))
    assert counts[True] == canonical.backbone_parameter_count("inception_v3") == 21_768_352
    assert counts[False] - counts[True] == sum(l.kernel[-1] for l in SPEC.layers)
    aligned = torch_inception[True]
    assert all(torch.all(m.weight == 1) for m in aligned.modules() if isinstance(m, nn.BatchNorm2d))
    state = {k: v.clone() for k, v in torch_inception[False].state_dict().items()}
    state["Conv2d_4a_3x3.bn.weight"][0] = 0.5
    with pytest.raises(BackendError, match=r"Conv2d_4a_3x3.bn.weight \(a BatchNorm gamma\) is not 1"):
        restore_excluding_head(aligned, MODELS["inception_v3"], state, "a torchvision state")


def test_a_finished_runs_torch_model_is_rebuilt_as_it_ran(tiny_quads, tmp_path):
    """A run from torchvision's ImageNet weights trains torchvision's own Inception3; bench
    eval / predict / export rebuild a run with no weights and restore its checkpoint, and
    get that same model back from the run's config (a suite-made run: the aligned one)."""
    require_backend("pytorch")
    from backends.base import WeightsRequest, get_backend
    from benchmarks import driver
    from conftest import tiny_config

    for weights, aligned in (("imagenet", False), ("source", True)):
        config = tiny_config("pytorch", "head", tiny_quads, tmp_path / weights, weights=weights)
        b = get_backend("pytorch")(config, tmp_path / weights)
        try:
            b.setup(driver.prepare_split(config), 75)
            b.build(SPEC, 5, WeightsRequest("none"), 0)
            gamma = b.model.Mixed_5b.branch_pool.bn.weight
            assert (gamma in set(b.model.parameters())) is not aligned
        finally:
            b.close()


# ------------------------------------------------------------ pixel parity

@pytest.fixture(scope="module")
def golden_images(tmp_path_factory) -> list[str]:
    """An RGBA icon, a CMYK JPEG, an EXIF-rotated JPEG, a 16-bit PNG, one below 75 px."""
    d = tmp_path_factory.mktemp("golden")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (90, 120, 3), np.uint8)
    alpha = np.zeros((64, 64), np.uint8)
    alpha[8:56, 8:56], alpha[20:44, 20:44] = 128, 255
    icon = np.dstack([rng.integers(0, 256, (64, 64, 3), np.uint8), alpha])
    Image.fromarray(icon, "RGBA").save(d / "icon_rgba.png")
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(d / "exif_rotated.jpg", exif=exif, quality=95)
    deep = (rng.integers(0, 65536, (80, 80))).astype(np.uint16)
    Image.fromarray(deep).save(d / "gray16.png")  # uint16: mode I;16
    Image.fromarray(rgb[:30, :40]).save(d / "small.png")
    files = [str(d / n) for n in ("icon_rgba.png", "cmyk.jpg", "exif_rotated.jpg", "gray16.png",
                                  "small.png")]
    with Image.open(files[3]) as im:
        assert im.mode.startswith("I;16")
    return files


def _eval_inputs(backend: str, split: Split, size: int) -> np.ndarray:
    """``backend``'s eval-mode input batch for ``split.test``, NHWC float32."""
    norm = get_normalisation(SPEC.preprocessing)
    if backend == "pytorch":
        from backends.pytorch.data import eval_loader, normalise

        return np.concatenate([normalise(x, norm).permute(0, 2, 3, 1).numpy()
                               for x, _ in eval_loader(split.test, size, 8)])
    if backend == "keras":
        from backends.keras.data import KerasData

        return np.concatenate([np.asarray(x) for x, _ in
                               KerasData(split, size, norm, 8, 0).eval("test")])
    import tensorflow as tf

    from backends.slim.data import build_pipelines

    graph = tf.Graph()
    with graph.as_default():
        pipes = build_pipelines(split, size, norm, 8)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(pipes.initializers["test"])
            return session.run(pipes.images)


def test_every_backend_feeds_the_same_array_for_the_same_file(golden_images):
    """Decoding is common.data.load_image (PIL, bilinear) for every backend; each backend
    normalises natively: the arrays agree with each other and with numpy to 1e-5."""
    for b in ("pytorch", "keras", "slim"):
        require_backend(b)
    size = SPEC.min_size
    samples = [Sample(p, 0) for p in golden_images]
    split = Split(classes=("golden", "other"), train=samples, val=samples, test=samples)
    norm = get_normalisation(SPEC.preprocessing)
    reference = np.stack([norm.apply(load_image(p, size)) for p in golden_images])
    inputs = {b: _eval_inputs(b, split, size) for b in ("pytorch", "keras", "slim")}
    for b, x in inputs.items():
        assert x.shape == (5, size, size, 3) and x.dtype == np.float32
        assert float(np.max(np.abs(x - reference))) <= 1e-5, b
    # what the decoder did is visible: alpha on white, EXIF applied, 16 bit scaled
    with Image.open(golden_images[2]) as im:
        upright = np.asarray(im.convert("RGB").transpose(Image.Transpose.ROTATE_270)
                             .resize((size, size), Image.Resampling.BILINEAR))
    assert np.array_equal(load_image(golden_images[2], size), upright)
    assert load_image(golden_images[0], size)[0, 0].tolist() == [255, 255, 255]


def test_golden_batch_is_fixed_and_normalised():
    images, files = golden_batch("inception_v3", 75)
    again, _ = golden_batch("inception_v3", 75)
    assert images.shape == (5, 75, 75, 3) and np.array_equal(images, again)
    assert -1.0 <= images.min() < 0 < images.max() <= 1.0 and len(files) == 5


# ------------------------------------------------------------ bench parity --train

def test_bench_parity_train_head_case_agrees_in_every_pair_and_names_what_it_compares(tmp_path):
    """``bench parity --train`` at 75 px, the head case (momentum SGD, BatchNorm frozen):
    from one digest and one fixed batch, 1 and 3 steps in each backend's own phase machinery
    agree within 1e-5 relative in every pair, natively and aligned (no switch concerns the
    case); the loss of every step, per block trained tensors and moving statistics."""
    for b in ("pytorch", "keras", "slim"):
        require_backend(b)
    from benchmarks.parity import MOVING, PARAMS, run_train_parity

    report = run_train_parity("inception_v3", 75, tmp_path, cases=["head-momentum"],
                              in_process=True)
    case = report["cases"]["head-momentum"]
    assert case["switches"] == [] and list(case["fidelity"]) == ["native", "aligned"]
    assert case["aligned_is_native"]  # one run per backend serves both
    assert report["steps"] == [1, 3] and report["batch"]["augment"] is False
    for label in ("native", "aligned"):
        assert list(case["loss"][label]) == ["pytorch", "keras", "slim"]
        assert all(len(v) == 3 for v in case["loss"][label].values())
        for pair, c in case["fidelity"][label].items():
            assert c["max_rel"] <= 1e-5, (label, pair, c["max_rel"])
            assert set(c["steps"]) == {"1", "3"}
            head = c["steps"]["3"]["head"][PARAMS]
            assert head["scale"] > 0.01 and head["rel"] <= 1e-5
            assert c["steps"]["3"]["Mixed_7c"][MOVING]["max_abs"] == 0.0  # frozen: never moved
    losses = case["loss"]["native"]["pytorch"]
    assert losses[2] < losses[0]  # the steps trained
    assert case["explained_by"] == {"pytorch-keras": [], "pytorch-slim": [], "keras-slim": []}
    assert report["aligned_within_target"] == {"head-momentum": {"pytorch-keras": True,
                                                                 "pytorch-slim": True,
                                                                 "keras-slim": True}}
    md = (tmp_path / "train_parity.md").read_text()
    assert "## head-momentum" in md and "| native | pytorch-keras |" in md
    assert json.loads((tmp_path / "train_parity.json").read_text())["weights"]["digest"] == \
        report["weights"]["digest"]


def test_train_parity_compares_each_fidelity_as_its_runs_arrive_and_holds_few_runs(
        tmp_path, monkeypatch):
    """``run_train_parity`` compares a (case, fidelity)'s runs when its last backend's arrives
    and drops them (a case's aligned runs wait for its floor runs): with a stand-in step
    function, no more than two fidelities' runs (plus the one in hand) are alive when a run
    starts, where holding every run until the end kept all 36 here (and about 10 GB for the
    float64 report of every case at 75 px); the report still pairs every backend."""
    import weakref

    import benchmarks.parity as parity

    names = ["pytorch", "keras", "slim"]
    monkeypatch.setattr(parity, "check_parity_request", lambda *a: (names, {}))
    alive: list = []
    most = []

    def fake_steps(name, model, tensors, images, labels, phase, fidelity, steps, dtype):
        most.append(sum(r() is not None for r in alive))
        value = np.full(4, names.index(name) * 1e-3 + 1.0, np.float32)
        alive.append(weakref.ref(value))
        return {"loss": [1.0, 0.9, 0.8], "tensors": {k: {"head/kernel": value} for k in steps}}

    monkeypatch.setattr(parity, "backend_train_steps", fake_steps)
    cases = ["head-momentum", "top2-sgd-bn-train-wd", "all-adamw-wd-head-x10"]
    report = parity.run_train_parity("inception_v3", 75, tmp_path, cases=cases, in_process=True)
    assert len(alive) == 3 * (1 + 5 + 6)  # native only; 4 and 5 fidelities + the floor run
    assert max(most) <= 2 * len(names) + 1, most
    for case in cases:
        assert set(report["cases"][case]["fidelity"]["native"]) == {
            "pytorch-keras", "pytorch-slim", "keras-slim"}
    floor = report["cases"]["top2-sgd-bn-train-wd"]["fp32_floor"]
    assert set(floor) == set(names) and floor["slim"]["max_rel"] == 0.0
    assert report["cases"]["all-adamw-wd-head-x10"]["fidelity"]["aligned"]["pytorch-slim"][
        "max_rel"] == pytest.approx(2e-3 / 1.002, rel=1e-3)


def test_a_switch_explains_a_difference_that_comes_back_when_it_alone_is_native():
    from benchmarks.parity import case_fidelities, case_switches, explain
    from common.config import Phase

    phase = Phase(train="top", top_blocks=2, optimizer="rmsprop", bn="train", weight_decay=0.1)
    assert case_switches(phase) == ("bn_moving_variance", "rmsprop", "weight_decay")
    fidelities = case_fidelities(phase)
    assert list(fidelities) == ["native", "aligned", "bn_moving_variance native",
                                "rmsprop native", "weight_decay native"]
    assert list(case_fidelities(Phase(train="head", optimizer="momentum"))) == ["native"]
    # head_init, crop_sampler and head_dtype are set too, but no case builds a head (each
    # starts from the given tensors), crops (one fixed batch, no augmentation) or runs bf16
    assert fidelities["rmsprop native"].settings() == {
        "bn_moving_variance": "aligned", "rmsprop": "native", "weight_decay": "aligned",
        "head_init": "aligned", "crop_sampler": "aligned", "head_dtype": "aligned",
        "adam": "aligned"}
    assert case_switches(Phase(train="head", optimizer="sgd")) == ()
    assert case_switches(Phase(train="head", optimizer="adamw")) == ("adam",)

    def rel(value):
        return {"a-b": {"max_rel": value}, "a-c": {"max_rel": 1e-7}}

    case = {"native": rel(0.1), "aligned": rel(1e-6), "bn_moving_variance native": rel(0.1),
            "rmsprop native": rel(0.02), "weight_decay native": rel(5e-6)}
    assert explain(case) == {"a-b": ["bn_moving_variance", "rmsprop"], "a-c": []}


@pytest.mark.slow
def test_bench_parity_train_command_names_the_batchnorm_variance_switch(tmp_path, capsys):
    """``bench parity --train`` with a child process per backend and fidelity, the top-2 case
    with BatchNorm in training mode and weight decay: Keras' moving variance differs from
    torch's and slim's natively, and the difference is explained by bn_moving_variance
    (leaving it alone native brings it back); aligning every switch shrinks it. What remains
    aligned (the batch statistics of 5 images at 1x1 in Mixed_7b/7c) is reported beside each
    backend's fp32 floor, and the command exits 1 while any pair is beyond both 1e-5 and its
    floor. Slow: 15 framework processes."""
    for b in ("pytorch", "keras", "slim"):
        require_backend(b)
    from benchmarks import cli
    from benchmarks.parity import MOVING

    argv = ["parity", "--train", "--cases", "top2-sgd-bn-train-wd", "--out", str(tmp_path)]
    code = cli.main(argv)
    report = json.loads((tmp_path / "train_parity.json").read_text())
    assert report["command"] == "bench " + " ".join(argv)
    case = report["cases"]["top2-sgd-bn-train-wd"]
    assert case["switches"] == ["bn_moving_variance", "weight_decay"]
    assert "bn_moving_variance" in case["explained_by"]["pytorch-keras"]
    native = case["fidelity"]["native"]["pytorch-keras"]["steps"]["3"]["Mixed_7c"][MOVING]["rel"]
    aligned = case["fidelity"]["aligned"]["pytorch-keras"]["steps"]["3"]["Mixed_7c"][MOVING]["rel"]
    assert aligned < native / 5
    assert set(case["fp32_floor"]) == {"pytorch", "keras", "slim"}
    # fp32: the exit status follows each aligned pair's fp32 floor, not 1e-5 alone
    assert report["dtype"] == "float32"
    assert code == (0 if all(report["aligned_within_floor"]["top2-sgd-bn-train-wd"].values()) else 1)
    assert "## top2-sgd-bn-train-wd" in capsys.readouterr().out


def test_differences_rows_are_written_from_a_train_parity_report(tmp_path):
    """``python -m benchmarks.differences_rows REPORT`` fills each marked cell of the
    differences table with the report's one-step native effect of that switch."""
    from benchmarks import differences_rows

    cell = {"trained": {"max_abs": 1e-4, "scale": 1.0, "rel": 1e-4},
            "moving statistics": {"max_abs": 0.2, "scale": 2.0, "rel": 0.1}}
    report = {"command": "bench parity --train", "image_size": 75,
              "weights": {"digest": "e3e2c1af" + "0" * 56},
              "cases": {"top2-sgd-bn-train-wd": {"explained_by": {
                  "pytorch-keras": ["bn_moving_variance"], "pytorch-slim": []},
                  "fidelity": {"native": {"pytorch-keras": {"steps": {"1": {"Mixed_7c": cell}}},
                                          "pytorch-slim": {"steps": {"1": {"Mixed_7c": cell}}}}}}}}
    (tmp_path / "r.json").write_text(json.dumps(report))
    docs = tmp_path / "differences.md"
    docs.write_text("| BN | a <!-- train-parity:bn_moving_variance -->old<!-- /train-parity --> |\n"
                    "| RMSprop | <!-- train-parity:rmsprop --><!-- /train-parity --> |\n")
    assert differences_rows.main([str(tmp_path / "r.json"), "--docs", str(docs)]) == 0
    text = docs.read_text()
    assert ("<!-- train-parity:bn_moving_variance -->measured one step, native (`bench parity "
            "--train`, 75 px, weights e3e2c1af), relative: pytorch-keras 1.0e-01 (Mixed_7c moving "
            "statistics, `top2-sgd-bn-train-wd`)<!-- /train-parity -->") in text
    assert "<!-- train-parity:rmsprop -->measured one step, native" in text
    assert "no pair's difference explained by it<!-- /train-parity -->" in text
    assert differences_rows.rewrite(text, report) == text  # the same report: nothing changes


def test_bench_parity_train_refuses_an_unknown_case_and_cases_without_train_in_one_line(capsys,
                                                                                        tmp_path):
    import sys

    from benchmarks import cli

    before = set(sys.modules)
    out = tmp_path / "out"
    assert cli.main(["parity", "--train", "--cases", "head-lamb", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--cases: unknown case 'head-lamb'; choose from: head-momentum" in err
    assert cli.main(["parity", "--cases", "head-momentum", "--out", str(out)]) == 2
    assert "--cases goes with --train" in capsys.readouterr().err
    assert cli.main(["parity", "--train", "--weights", "x.pt", "--out", str(out)]) == 2
    assert "drop --weights and --alignment" in capsys.readouterr().err
    assert not out.exists() and not {"torch", "tensorflow"} & (set(sys.modules) - before)


def test_the_differences_rows_are_the_committed_train_parity_report():
    """docs/differences.md's measured cells are what ``benchmarks.differences_rows`` writes
    from the committed ``bench parity --train`` report (a typed or stale number fails)."""
    from benchmarks import differences_rows

    report = json.loads((differences_rows.DOCS.parent.parent / "benchmarks" / "results" / "parity"
                         / "train-inception_v3-75px" / "train_parity.json").read_text())
    text = differences_rows.DOCS.read_text()
    assert len(differences_rows.MARKER.findall(text)) == 3
    assert differences_rows.rewrite(text, report) == text
    aligned = report["cases"]["top2-rmsprop-bn-frozen"]["fidelity"]["aligned"]
    assert aligned["keras-slim"]["max_rel"] < 1e-4  # as docs/weights-and-parity.md says
    assert report["cases"]["top2-sgd-bn-train-wd"]["explained_by"]["pytorch-keras"] == \
        ["bn_moving_variance"]
    # what aligned leaves beyond 1e-5 is within each pair's fp32 floor (docs/weights-and-parity.md)
    for case in ("top2-sgd-bn-train-wd", "top2-rmsprop-bn-frozen"):
        r = report["cases"][case]
        assert set(r["fp32_floor"]) == {"pytorch", "keras", "slim"}
        assert report["aligned_within_floor"][case] == {p: True for p in r["pair_floor"]}
        assert not all(report["aligned_within_target"][case].values())


def test_ulp_perturbed_moves_every_value_by_exactly_one_ulp_up_or_down():
    """The fp32 floor's input: each value one ulp away from the golden one, both ways,
    the same draw for the same seed."""
    from benchmarks.parity import training_batch, ulp_perturbed

    images, _ = training_batch("inception_v3", 75)
    nudged = ulp_perturbed(images, 0)
    assert nudged.dtype == np.float32 and np.array_equal(nudged, ulp_perturbed(images, 0))
    up = nudged == np.nextafter(images, np.float32(np.inf))
    down = nudged == np.nextafter(images, np.float32(-np.inf))
    assert np.all(up | down) and 0.4 < up.mean() < 0.6
    assert not np.array_equal(nudged, ulp_perturbed(images, 1))


def test_a_case_with_a_switch_measures_each_backends_fp32_floor_and_the_verdict_uses_it():
    """A case with a switch runs once more per backend, every switch aligned, on the batch
    moved by one ulp; a pair's floor is the sum of its backends' floors, and the report tells
    a pair beyond the target but within that floor (rounding) from one beyond it."""
    from benchmarks.parity import (FLOOR, TRAIN_CASES, fp32_floor, pair_floors, train_markdown,
                                   train_runs)
    from common.config import Phase

    assert list(train_runs(Phase(train="head", optimizer="momentum"))) == ["native"]
    runs = train_runs(TRAIN_CASES["top2-rmsprop-bn-frozen"])
    assert list(runs)[-1] == FLOOR and runs[FLOOR] == runs["aligned"]

    def run(loss, head):
        return {"loss": [loss], "tensors": {1: {"head/kernel": np.array([head], np.float32)}}}

    by_label = {"aligned": {"a": run(1.0, 1.0), "b": run(1.0, 1.0)},
                FLOOR: {"a": run(1.0, 0.999), "b": run(1.0, 0.99999)}}
    floor = fp32_floor(by_label, SPEC)
    assert floor["a"]["max_rel"] == pytest.approx(1e-3, rel=1e-3)
    assert floor["b"]["max_rel"] == pytest.approx(1e-5, rel=1e-2)
    pairs = pair_floors(floor, ["a", "b"])
    assert pairs == {"a-b": pytest.approx(1.01e-3, rel=1e-2)}
    assert fp32_floor({"aligned": by_label["aligned"]}, SPEC) == {} and pair_floors({}, ["a"]) == {}

    def cell(rel):
        return {"loss_rel": [rel], "max_rel": rel,
                "steps": {"1": {"head": {"trained": {"max_abs": rel, "rel": rel}}}}}

    def case(aligned):
        return {"phase": {"train": "top", "top_blocks": 2, "optimizer": "rmsprop",
                          "learning_rate": 1e-3, "bn": "frozen", "weight_decay": 0.0,
                          "head_lr_multiplier": 1.0},
                "switches": ["rmsprop"], "fidelity": {"native": {"a-b": cell(0.1)},
                                                      "aligned": {"a-b": cell(aligned)}},
                "explained_by": {"a-b": ["rmsprop"]}, "fp32_floor": floor, "pair_floor": pairs}

    report = {"model": "inception_v3", "image_size": 75, "steps": [1], "batch": {"labels": [0]},
              "weights": {"kind": "random", "digest": "0" * 64}, "target_rel": 1e-5,
              "processes": "this process", "skipped": {},
              "cases": {"rounding": case(8e-4), "beyond": case(5e-3)}}
    md = train_markdown(report)
    assert ("fp32 floor, each backend against itself with every input value moved by one ulp "
            "(every switch aligned), max rel after 1 steps: a 1.00e-03, b 1.00e-05.") in md
    assert ("- a-b: native 1.00e-01 (explained by rmsprop); aligned 8.00e-04, NOT within the "
            "target, within the pair's fp32 floor (1.01e-03, the sum of its two backends' "
            "floors).") in md
    assert "aligned 5.00e-03, NOT within the target, NOT within the pair's fp32 floor" in md


# ------------------------------------------------------------ bench parity --train --dtype float64

def test_the_exit_rule_is_the_target_in_float64_and_the_pairs_fp32_floor_in_float32():
    """``bench parity --train`` exits 0 in float64 only when every aligned pair is within
    1e-5 (``aligned_within_target``); in float32 when every aligned pair is within max(1e-5,
    its measured fp32 floor) (``aligned_within_floor``), whatever the target alone says."""
    from benchmarks.parity import train_parity_passes

    def report(dtype, target, floor):
        return {"dtype": dtype,
                "aligned_within_target": {"c": {"a-b": True, "a-c": target}},
                "aligned_within_floor": {"c": {"a-b": True, "a-c": floor}}}

    assert train_parity_passes(report("float64", True, True))
    assert not train_parity_passes(report("float64", False, True))  # the floor does not count
    assert train_parity_passes(report("float32", False, True))      # rounding, within the floor
    assert not train_parity_passes(report("float32", False, False))
    assert not train_parity_passes({**report("float32", True, True),
                                    "aligned_within_floor": {"c": {"a-b": True},
                                                             "d": {"a-b": False}}})


def test_float64_runs_no_fp32_floor_and_a_backend_can_leave_its_moving_statistics_out():
    """In float64 a case has no ulp (floor) run; a backend naming ``not_compared`` moving
    statistics (slim in float64) has them left out of its pairs, and the markdown says what
    and why, with the dtype and the exit rule."""
    from benchmarks.parity import (FLOOR, MOVING, NO_FLOOR, PARAMS, TRAIN_CASES, compare_steps,
                                   train_markdown, train_runs)

    phase = TRAIN_CASES["top2-sgd-bn-train-wd"]
    assert FLOOR in train_runs(phase) and FLOOR not in train_runs(phase, "float64")
    assert list(train_runs(phase, "float64")) == ["native", "aligned", "bn_moving_variance native",
                                                  "weight_decay native"]

    def run(var, kernel, why=None):
        out = {"loss": [1.0], "tensors": {1: {
            "Mixed_7c/branch1x1/bn/moving_variance": np.array([var], np.float32),
            "Mixed_7c/branch1x1/kernel": np.array([kernel], np.float32)}}}
        return {**out, "not_compared": {MOVING: why}} if why else out

    a, b, c = run(1.0, 1.0), run(2.0, 1.0), run(3.0, 1.0, "no fused float64 batch norm")
    assert compare_steps(a, b, SPEC)["max_rel"] == pytest.approx(0.5)
    for x, y in ((a, c), (c, a)):
        cmp = compare_steps(x, y, SPEC)
        assert cmp["max_rel"] == 0.0 and MOVING not in cmp["steps"]["1"]["Mixed_7c"]
        assert PARAMS in cmp["steps"]["1"]["Mixed_7c"]

    def cell(rel):
        return {"loss_rel": [rel], "max_rel": rel,
                "steps": {"1": {"head": {"trained": {"max_abs": rel, "rel": rel}}}}}

    case = {"phase": {"train": "top", "top_blocks": 2, "optimizer": "sgd", "learning_rate": 1e-3,
                      "bn": "train", "weight_decay": 0.01, "head_lr_multiplier": 1.0},
            "switches": ["bn_moving_variance"],
            "fidelity": {"native": {"a-c": cell(0.1)}, "aligned": {"a-c": cell(2e-8)}},
            "explained_by": {"a-c": ["bn_moving_variance"]}, "fp32_floor": {}, "pair_floor": {},
            "not_compared": {"c": {MOVING: "no fused float64 batch norm"}}}
    md = train_markdown({"model": "inception_v3", "image_size": 75, "dtype": "float64",
                         "steps": [1], "batch": {"labels": [0]}, "target_rel": 1e-5,
                         "weights": {"kind": "random", "digest": "0" * 64},
                         "processes": "this process", "skipped": {}, "cases": {"x": case}})
    assert "no dropout, float64 (every backend builds and steps the model in float64" in md
    assert "Exit status 0 when every aligned pair is within the target." in md
    assert NO_FLOOR[1:] in md and "fp32 floor, each backend" not in md
    assert ("Not compared: c's moving statistics (left out of every pair with c): no fused "
            "float64 batch norm.") in md
    assert "aligned 2.00e-08, within the target." in md


def test_train_steps_carry_what_was_not_compared_through_the_child_process_file(tmp_path):
    from benchmarks.parity import MOVING, load_train_steps, save_train_steps

    tensors = {3: {"head/kernel": np.ones((2, 2), np.float32)}}
    save_train_steps(tmp_path / "a.npz", {"loss": [1.0, 0.5], "tensors": tensors,
                                          "not_compared": {MOVING: "why"}})
    save_train_steps(tmp_path / "b.npz", {"loss": [1.0], "tensors": tensors})
    a, b = load_train_steps(tmp_path / "a.npz"), load_train_steps(tmp_path / "b.npz")
    assert a["not_compared"] == {MOVING: "why"} and "not_compared" not in b
    assert a["loss"] == [1.0, 0.5] and list(a["tensors"]) == [3]
    assert np.array_equal(a["tensors"][3]["head/kernel"], tensors[3]["head/kernel"])


def test_bench_parity_refuses_dtype_without_train_and_an_unknown_dtype(capsys, tmp_path):
    import sys

    from benchmarks import cli

    before = set(sys.modules)
    out = tmp_path / "out"
    assert cli.main(["parity", "--dtype", "float64", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dtype goes with --train" in err
    with pytest.raises(SystemExit) as exc:
        cli.main(["parity", "--train", "--dtype", "float16", "--out", str(out)])
    assert exc.value.code == 2
    assert not out.exists() and not {"torch", "tensorflow"} & (set(sys.modules) - before)


def float64_steps(case: str):
    """``(fidelities, steps)`` for 3 float64 steps of ``case`` from the seeded random weights
    on the golden batch: ``steps(backend, fidelity label)`` runs them in this process."""
    from benchmarks.parity import TRAIN_CASES, backend_train_steps, case_fidelities, training_batch

    phase = TRAIN_CASES[case]
    fidelities = case_fidelities(phase)
    tensors = canonical.random_weights("inception_v3", SPEC.feature_dim, 5, 0)
    images, labels = training_batch("inception_v3", 75)

    def steps(name, label):
        return backend_train_steps(name, "inception_v3", tensors, images, labels, phase,
                                   fidelities[label], (1, 3), "float64")
    return fidelities, steps


def test_float64_bn_training_step_agrees_within_1e5_torch_keras_and_names_the_variance(tmp_path):
    """In float64, 3 steps of ``top2-sgd-bn-train-wd`` (BatchNorm training at 1x1 in
    Mixed_7b/7c, weight decay) with every switch aligned: PyTorch and Keras agree within 1e-5
    relative in the loss, every trained tensor and every moving statistic (in fp32 rounding
    alone moves them by 1e-2). Keras with only ``bn_moving_variance`` native keeps the trained
    tensors within 1e-5 and moves its moving variances away by the n/(n-1) correction. The
    CI part of the float64 check (three runs in this process); the three backends through
    ``run_train_parity`` are the slow test below."""
    for b in ("pytorch", "keras"):
        require_backend(b)
    from benchmarks.parity import MOVING, PARAMS, compare_steps

    _, steps = float64_steps("top2-sgd-bn-train-wd")
    torch_run = steps("pytorch", "aligned")
    aligned = compare_steps(torch_run, steps("keras", "aligned"), SPEC)
    assert aligned["max_rel"] <= 1e-5, aligned["max_rel"]
    assert aligned["steps"]["3"]["Mixed_7c"][MOVING]["scale"] > 0.1  # the statistics moved
    bn_native = compare_steps(torch_run, steps("keras", "bn_moving_variance native"), SPEC)
    moving = max(c[MOVING]["rel"] for c in bn_native["steps"]["3"].values() if MOVING in c)
    trained = max(c[PARAMS]["rel"] for c in bn_native["steps"]["3"].values() if PARAMS in c)
    assert moving > 1e-2 and trained <= 1e-5, (moving, trained)


@pytest.mark.slow
def test_float64_adam_step_agrees_within_1e5_torch_keras_once_the_adam_switch_is_aligned():
    """In float64, 3 Adam steps of ``all-adam-bn-inference`` (every layer, BatchNorm on moving
    statistics) with every switch aligned: PyTorch and Keras agree within 1e-5 relative in the
    loss and every trained tensor; with ``adam`` alone native (torch's own Adam, Keras' betas
    through float32) they differ by more than 1e-3 (the committed float64 report: 1.6e-2 in the
    head). Slow (three float64 InceptionV3 runs, 32 s of the suite): the formula tests of each
    backend are the CI check of the same switch
    (``test_aligned_adam_folds_the_bias_correction_into_the_step_size_for_adam_and_adamw``,
    ``test_keras_adam_is_the_aligned_formula_in_both_settings``,
    ``test_slim_adam_is_the_aligned_formula_in_both_settings``,
    ``test_aligned_adam_keeps_a_float64_models_betas_in_float64``)."""
    for b in ("pytorch", "keras"):
        require_backend(b)
    from benchmarks.parity import compare_steps

    fidelities, steps = float64_steps("all-adam-bn-inference")
    assert list(fidelities) == ["native", "aligned", "adam native"]
    keras_run = steps("keras", "aligned")
    aligned = compare_steps(steps("pytorch", "aligned"), keras_run, SPEC)
    assert aligned["max_rel"] <= 1e-5, aligned["max_rel"]
    native = compare_steps(steps("pytorch", "adam native"), keras_run, SPEC)
    assert native["max_rel"] > 1e-3, native["max_rel"]


@pytest.mark.slow
def test_float64_momentum_bn_training_step_agrees_within_1e5_keras_slim():
    """In float64, 3 steps of ``all-momentum-bn-train`` (every block trains, momentum, every
    BatchNorm training), every switch aligned: Keras and slim agree within 1e-5 relative in the
    loss and every trained tensor. Before slim's loss stayed float64 (TF1's
    ``softmax_cross_entropy`` cast it through float32) slim's stem differed by 2.3e-3. Slow:
    two float64 InceptionV3 runs; the formula tests cover the cause
    (``test_float64_cross_entropy_and_its_gradient_stay_float64``,
    ``test_float64_momentum_step_is_the_float64_formula_and_parity_gives_it_float64_numbers``)."""
    for b in ("keras", "slim"):
        require_backend(b)
    from benchmarks.parity import compare_steps

    _, steps = float64_steps("all-momentum-bn-train")
    runs = [steps(name, "aligned") for name in ("keras", "slim")]
    compared = compare_steps(*runs, SPEC)
    assert compared["max_rel"] <= 1e-5 and max(compared["loss_rel"]) <= 1e-5, compared["max_rel"]
    assert compared["steps"]["3"]["stem"]["trained"]["scale"] > 0.5  # the stem's kernels compared


@pytest.mark.slow
@pytest.mark.parametrize("image_size", [75, 299])
def test_bench_parity_train_float64_every_aligned_pair_within_1e5(tmp_path, image_size):
    """``run_train_parity(..., dtype="float64")`` of ``top2-sgd-bn-train-wd`` in the three
    backends, at 75 px (Mixed_7b/7c 1x1) and at the model's own 299 px (8x8): every aligned
    pair within 1e-5 relative after 3 steps (the exit rule passes), Keras' native moving
    variance explained by ``bn_moving_variance``, no floor run, and slim's moving statistics
    named as not compared (left out of its pairs). Slow: twelve model builds in this process
    (the committed report of every case at each size is pinned by the tests below)."""
    for b in ("pytorch", "keras", "slim"):
        require_backend(b)
    from benchmarks.parity import MOVING, run_train_parity, train_parity_passes

    report = run_train_parity("inception_v3", image_size, tmp_path,
                              cases=["top2-sgd-bn-train-wd"], in_process=True, dtype="float64")
    case = report["cases"]["top2-sgd-bn-train-wd"]
    assert report["dtype"] == "float64" and case["fp32_floor"] == {}
    assert report["aligned_within_target"]["top2-sgd-bn-train-wd"] == {
        "pytorch-keras": True, "pytorch-slim": True, "keras-slim": True}
    assert train_parity_passes(report)
    assert "bn_moving_variance" in case["explained_by"]["pytorch-keras"]
    assert list(case["not_compared"]) == ["slim"] and MOVING in case["not_compared"]["slim"]
    assert all(MOVING not in c for c in case["fidelity"]["aligned"]["pytorch-slim"]["steps"]["3"].values())
    assert any(MOVING in c for c in case["fidelity"]["aligned"]["pytorch-keras"]["steps"]["3"].values())
    assert "Not compared: slim's moving statistics" in (tmp_path / "train_parity.md").read_text()


def test_the_committed_float64_train_parity_report_is_within_1e5_aligned_in_every_case():
    """The committed ``bench parity --train --dtype float64`` report at 75 px, every case
    (docs/weights-and-parity.md quotes it): no fp32 floor, slim's moving statistics named as
    not compared where its batch norms train; with every switch aligned every pair of every
    case within 1e-5 after 3 steps, so the exit rule passes; each native difference beyond it
    explained by the switch the docs name (``adam`` for the Adam and AdamW cases, which the
    report from before that switch could not explain)."""
    from benchmarks.parity import TRAIN_CASES, train_parity_passes

    from pathlib import Path

    path = (Path(__file__).parent.parent / "benchmarks" / "results" / "parity"
            / "train-inception_v3-75px-float64" / "train_parity.json")
    report = json.loads(path.read_text())
    assert report["dtype"] == "float64" and report["image_size"] == 75
    assert "--dtype float64 --image-size 75" in report["command"] and "--cases" not in report["command"]
    assert set(report["cases"]) == set(TRAIN_CASES)
    assert train_parity_passes(report)
    cases = report["cases"]

    def aligned(case):
        return {pair: c["max_rel"] for pair, c in cases[case]["fidelity"]["aligned"].items()}

    def native(case, pair):
        return cases[case]["fidelity"]["native"][pair]["max_rel"]

    for case, r in cases.items():
        assert r["fp32_floor"] == {}
        assert list(r["not_compared"]) == ([] if case in ("head-momentum", "all-adam-bn-inference")
                                           else ["slim"]), case
        assert max(aligned(case).values()) < 1e-6, case
    for case in ("head-momentum", "top2-sgd-bn-train-wd", "top2-rmsprop-bn-frozen"):
        assert max(aligned(case).values()) < 4.3e-8, case
        assert "bn_moving_variance" in cases[case]["explained_by"]["pytorch-keras"] or case == "head-momentum"
    sgd = cases["top2-sgd-bn-train-wd"]
    assert sgd["explained_by"]["pytorch-slim"] == ["weight_decay"]
    assert native("top2-sgd-bn-train-wd", "pytorch-slim") == pytest.approx(3.0e-5, rel=0.02)
    assert cases["top2-rmsprop-bn-frozen"]["explained_by"]["keras-slim"] == ["rmsprop"]
    for case in ("all-adam-bn-inference", "all-adamw-wd-head-x10"):
        assert "adam" in cases[case]["switches"] and "adam native" in cases[case]["fidelity"]
        for pair in ("pytorch-keras", "pytorch-slim", "keras-slim"):
            assert native(case, pair) > 1e-3 and "adam" in cases[case]["explained_by"][pair], (case, pair)
    # slim's momentum step with BatchNorm training: within the target natively once slim's
    # float64 loss stays float64 (its 2.3e-3 before: TF1's float32 loss cast)
    momentum = cases["all-momentum-bn-train"]
    assert momentum["explained_by"]["pytorch-keras"] == ["bn_moving_variance"]
    for pair in ("pytorch-slim", "keras-slim"):
        assert native("all-momentum-bn-train", pair) < 1e-6 and momentum["explained_by"][pair] == []


def test_the_committed_299px_float64_train_parity_report_is_within_1e5_aligned_in_every_case():
    """The committed ``bench parity --train --dtype float64 --image-size 299`` report, every
    case, at the model's own size (Mixed_7b/7c 8x8, not 1x1; docs/weights-and-parity.md
    quotes it): with every switch aligned every pair of every case within 1e-5 after 3 steps
    (at most 8.5e-8), so the exit rule passes; natively each difference beyond it is named:
    ``bn_moving_variance`` for PyTorch-Keras wherever a BatchNorm trains, ``weight_decay``
    for slim's pairs in the SGD case, ``rmsprop`` and ``adam`` for every pair of theirs."""
    from pathlib import Path

    from benchmarks.parity import TRAIN_CASES, train_parity_passes

    path = (Path(__file__).parent.parent / "benchmarks" / "results" / "parity"
            / "train-inception_v3-299px-float64" / "train_parity.json")
    report = json.loads(path.read_text())
    assert report["dtype"] == "float64" and report["image_size"] == 299
    assert "--dtype float64 --image-size 299" in report["command"] and "--cases" not in report["command"]
    assert set(report["cases"]) == set(TRAIN_CASES) and train_parity_passes(report)
    cases = report["cases"]
    pairs = ("pytorch-keras", "pytorch-slim", "keras-slim")
    for case, r in cases.items():
        assert r["fp32_floor"] == {}
        assert max(c["max_rel"] for c in r["fidelity"]["aligned"].values()) < 1e-7, case
    for case in ("top2-sgd-bn-train-wd", "all-momentum-bn-train"):
        assert "bn_moving_variance" in cases[case]["explained_by"]["pytorch-keras"], case
    assert cases["top2-sgd-bn-train-wd"]["explained_by"]["pytorch-slim"] == ["weight_decay"]
    for case, switch in (("top2-rmsprop-bn-frozen", "rmsprop"), ("all-adam-bn-inference", "adam"),
                         ("all-adamw-wd-head-x10", "adam")):
        for pair in pairs:
            assert switch in cases[case]["explained_by"][pair], (case, pair)
    assert all(not explained for explained in cases["head-momentum"]["explained_by"].values())
