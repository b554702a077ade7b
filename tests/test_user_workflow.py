"""A user's own folder, end to end, as docs/your-data.md runs it: inspect,
run with ImageNet weights (and the offline line), eval, predict, export.

The ImageNet file is a fake cached in an isolated ``TORCH_HOME`` (a torchvision
ResNet-18 state_dict, the format torchvision's weight enum caches), so nothing
downloads. Bad input and the parts every backend shares run on the numpy fake
backend (``tests/fake_backend.py``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backends import base
from benchmarks import cli
from conftest import require_backend

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent


def bench(capsys, *argv) -> tuple[int, str, str]:
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(code: int, err: str, *fragments: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bench: error: "), (code, err)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def caches(tmp_path_factory):
    """Empty framework caches for this module (and every process it starts)."""
    root = tmp_path_factory.mktemp("caches")
    saved = {k: os.environ.get(k) for k in ("TORCH_HOME", "KERAS_HOME")}
    os.environ.update(TORCH_HOME=str(root / "torch"), KERAS_HOME=str(root / "keras"))
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def fake():
    """The numpy backend, registered here and in every process started from here."""
    saved = {k: os.environ.get(k) for k in (base.EXTRA_BACKENDS_ENV, "PYTHONPATH")}
    os.environ[base.EXTRA_BACKENDS_ENV] = "fake=fake_backend:FakeBackend"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(TESTS), saved["PYTHONPATH"] or ""])
    base.REGISTRY["fake"] = "fake_backend:FakeBackend"
    yield
    base.REGISTRY.pop("fake", None)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# ------------------------------------------------------------------ inspect and split flags

def test_inspect_shows_the_split_bench_run_will_use(tiny_quads, capsys):
    code, out, _ = bench(capsys, "data", "inspect", tiny_quads)
    assert code == 0 and "train 20, val 5, test 5" in out  # 6 per class: 80/10/10, at least 1
    code, out, _ = bench(capsys, "data", "inspect", tiny_quads, "--val-fraction", "0.3",
                         "--test-fraction", "0.2", "--split-seed", "3")
    assert code == 0 and "split (seed 3, " in out and "train 15, val 10, test 5" in out


@pytest.mark.parametrize("argv, fragment", [
    (["--val-fraction", "1.5"], "argument --val-fraction: 1.5 must be in (0, 1)"),
    (["--test-fraction", "ten"], "argument --test-fraction: 'ten' is not a number"),
    (["--val-fraction", "0.5", "--test-fraction", "0.45"], "must be < 0.9"),
    (["--split-seed", "-1"], "argument --split-seed: -1 must be >= 0"),
    (["--workers", "-2"], "argument --workers: -2 must be >= 0"),
    (["--workers", "1000"], "argument --workers: 1000 must be at most 256"),
])
def test_split_and_worker_flags_are_validated_in_one_line(tiny_quads, tmp_path, capsys, argv,
                                                          fragment):
    code, _, err = bench(capsys, "run", "--data", tiny_quads, "--weights", "source",
                         "--out", tmp_path / "out", *argv)
    one_line(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_a_split_folder_is_used_as_given_and_fractions_for_it_are_refused(tmp_path, capsys, fake):
    for si, (sub, n) in enumerate((("train", 4), ("val", 2), ("test", 2))):
        for ci, cls in enumerate(("cats", "dogs")):
            d = tmp_path / "photos" / sub / cls
            d.mkdir(parents=True)
            for i in range(n):  # every image distinct: copies would be kept once
                Image.new("RGB", (40, 40), (60 * i, 90 * ci, 70 * si)).save(d / f"{i}.png")
    code, _, err = bench(capsys, "run", "--backend", "fake", "--data", tmp_path / "photos",
                         "--test-fraction", "0.2", "--out", tmp_path / "out")
    one_line(code, err, "already split into train/ val/ test/ folders, used as given; "
                        "--test-fraction would be ignored: drop it")
    code, out, _ = bench(capsys, "run", "--backend", "fake", "--recipe", "head", "--data",
                         tmp_path / "photos", "--epochs", "1", "--out", tmp_path / "out",
                         "--no-report", "--workers", "2")
    assert code == 0 and "train 8 / val 4 / test 4" in out and "train/ val/ test/ used as given" in out
    config = json.loads((tmp_path / "out" / "fake-head-s0" / "config.json").read_text())
    assert config["data"]["num_workers"] == 2 and config["model"]["weights"] == "imagenet"


def test_workers_is_the_dataloaders_num_workers(tiny_quads, tmp_path):
    require_backend("pytorch")
    from backends.base import get_backend
    from benchmarks import driver
    from conftest import dataclasses, tiny_config

    config = tiny_config("pytorch", "head", tiny_quads, tmp_path, model="resnet18", image_size=32)
    config = dataclasses.replace(config, data=dataclasses.replace(config.data, num_workers=2))
    b = get_backend("pytorch")(config, tmp_path)
    split = driver.prepare_split(config)
    b.setup(split, 32)
    assert {loader.num_workers for loader in (*b.train_loaders.values(),
                                              *b.eval_loaders.values())} == {2}


def test_workers_is_the_tf_data_map_parallelism(tiny_quads):
    require_backend("keras")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import tensorflow as tf

    from backends.keras.data import KerasData
    from backends.slim.data import make_dataset
    from common.data import load_dataset, split_dataset
    from common.preprocess import get_normalisation

    split, norm = split_dataset(load_dataset(tiny_quads), 0), get_normalisation("inception")

    def parallel_calls(dataset) -> int:  # options <- prefetch <- batch <- map(num_parallel_calls)
        while not hasattr(dataset, "_num_parallel_calls"):
            dataset = dataset._input_dataset
        return int(tf.get_static_value(dataset._num_parallel_calls))

    assert parallel_calls(KerasData(split, 32, norm, 4, 0, num_workers=3).eval("test")) == 3
    assert parallel_calls(KerasData(split, 32, norm, 4, 0).eval("test")) == tf.data.AUTOTUNE
    with tf.Graph().as_default():
        assert parallel_calls(make_dataset(split.test, 32, norm, 4, num_workers=3)) == 3


def test_tf_data_pipelines_run_with_the_autotuner_off(tiny_quads):
    """Every dataset Keras (on TensorFlow) and slim read has tf.data's autotuner off
    (backends/tf_data.py: with it on, releasing an exhausted iterator can wait 0.45 s,
    ``python -m benchmarks.bench_tfdata_iterator_end``), and the same pixels."""
    require_backend("keras")
    require_backend("slim")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import numpy as np
    import tensorflow as tf

    from backends.keras.data import KerasData
    from backends.slim.data import make_dataset
    from common.data import load_dataset, split_dataset
    from common.preprocess import get_normalisation

    split, norm = split_dataset(load_dataset(tiny_quads), 0), get_normalisation("inception")
    keras_data = [KerasData(split, 32, norm, 4, 0, common_sampler=aligned)
                  for aligned in (False, True)]
    datasets = [d.train([1, 2], augment=True) for d in keras_data] + [keras_data[0].eval("val")]
    # slim's, built eagerly here (the backend builds them in its graph): an eager dataset's
    # options are known before it runs
    epoch_seed, epoch = tf.constant(3, tf.int64), tf.constant(1, tf.int64)
    datasets += [make_dataset(split.train, 32, norm, 4, augment=True, shuffle=True,
                              epoch_seed=epoch_seed, epoch=epoch, common_sampler_seed=seed)
                 for seed in (None, 0)] + [make_dataset(split.val, 32, norm, 4)]
    assert [ds.options().autotune.enabled for ds in datasets] == [False] * 6
    # the pixels do not depend on it: the autotuner turned back on reads the same batches
    on = tf.data.Options()
    on.autotune.enabled = True
    for ds in datasets:
        for (x, y), (x_on, y_on) in zip(ds, ds.with_options(on), strict=True):
            np.testing.assert_array_equal(x.numpy(), x_on.numpy())
            np.testing.assert_array_equal(y.numpy(), y_on.numpy())


def test_the_iterator_release_benchmark_times_both_settings(capsys):
    """``python -m benchmarks.bench_tfdata_iterator_end`` (docs/measurements.md, "Releasing
    a tf.data iterator"), tiny: a row per setting and step time, each pass counted."""
    require_backend("slim")
    from benchmarks import bench_tfdata_iterator_end as bench

    assert bench.main(["--images", "5", "--batch-size", "2", "--step-seconds", "0,0.01",
                       "--rounds", "2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| autotuner")]
    assert [r.split("|")[1:3] for r in rows] == [
        [f" autotuner {setting} ", f" {step} s "] for setting in
        ("on (TensorFlow's default)", "off (the backends')") for step in ("0.00", "0.01")]
    assert all("of 2 |" in r for r in rows)


# ------------------------------------------------------------------ ImageNet by default

def test_offline_imagenet_is_one_line_from_the_parent_before_any_run(tiny_quads, tmp_path, caches):
    """Every backend's line names its file, its cache path and the fetch command; the
    parent checks without importing a framework, and writes nothing."""
    script = (
        "import contextlib, io, json, sys\n"
        "from benchmarks import cli\n"
        "out = {}\n"
        "for backend in ('pytorch', 'keras', 'slim'):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        f"        code = cli.main(['run', '--backend', backend, '--data', {str(tiny_quads)!r},\n"
        f"                         '--out', {str(tmp_path / 'out')!r}])\n"
        "    out[backend] = [code, err.getvalue()]\n"
        "out['frameworks'] = sorted({'torch', 'tensorflow', 'keras'} & set(sys.modules))\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=str(REPO), env=dict(os.environ, PYTHONPATH=str(REPO)))
    answer = json.loads(proc.stdout.splitlines()[-1])
    assert answer.pop("frameworks") == []
    expected = {"pytorch": caches / "torch" / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth",
                "keras": caches / "keras" / "models" /
                "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                "slim": Path(os.environ["TRANSFER_BENCH_DATA"]) / "weights" / "imagenet" / "slim"}
    for backend, (code, err) in answer.items():
        if base.availability(backend):
            continue
        line = one_line(code, err, "ImageNet weights for", "are not cached",
                        str(expected[backend]),
                        f"bench weights fetch --backend {backend} --model inception_v3",
                        "--weights source")
        assert "Traceback" not in err, line
    assert not (tmp_path / "out").exists()


def test_weights_default_to_imagenet_for_user_data_and_source_for_synthetic(tiny_quads, tmp_path):
    parse = cli.get_args_parser().parse_args
    user = cli.build_configs(parse(["run", "--backend", "pytorch", "--data", str(tiny_quads)]),
                             tmp_path)
    synthetic = cli.build_configs(parse(["run", "--backend", "pytorch"]), tmp_path)
    offline = cli.build_configs(parse(["run", "--backend", "pytorch", "--data", str(tiny_quads),
                                       "--weights", "source"]), tmp_path)
    assert {c.model.weights for c in user} == {"imagenet"}
    assert {c.model.weights for c in synthetic} == {"source"}
    assert {c.model.weights for c in offline} == {"source"}
    assert cli.missing_imagenet_weights(offline) is None  # the explicit offline choice


# ------------------------------------------------------------------ run, eval, predict, export

@pytest.fixture(scope="module")
def user_run(tiny_quads, caches, tmp_path_factory):
    """``bench run`` on a user folder with no --weights: a PyTorch ResNet-18 run from the
    cached (fake) ImageNet file, 32 px, one epoch of the head recipe."""
    require_backend("pytorch")
    import torch
    import torchvision

    cached = caches / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), cached)
    out = tmp_path_factory.mktemp("results")
    code = cli.main(["run", "--backend", "pytorch", "--model", "resnet18", "--image-size", "32",
                     "--data", str(tiny_quads), "--recipe", "head", "--epochs", "1",
                     "--out", str(out), "--no-report"])
    assert code == 0
    return out / "pytorch-head-s0"


def test_a_run_on_user_data_starts_from_the_cached_imagenet_file(user_run):
    result = json.loads((user_run / "result.json").read_text())
    assert result["status"] == "ok"
    assert result["weights"]["kind"] == "imagenet" and result["weights"]["restore"]["restored"] > 0
    # the catalog's ImageNet entry decides the input normalisation (torchvision: mean/std)
    assert result["preprocessing"]["normalisation"] == "torch"
    assert {n: sum(c.values()) for n, c in result["data"]["counts"].items()} == {
        "train": 20, "val": 5, "test": 5}


def test_eval_reproduces_the_runs_test_metrics_and_writes_predictions(user_run, capsys):
    code, out, _ = bench(capsys, "eval", user_run)
    assert code == 0, out
    result = json.loads((user_run / "result.json").read_text())
    folder = user_run / "eval" / "best-test"
    record = json.loads((folder / "metrics.json").read_text())
    assert record["metrics"]["top1"] == result["test"]["top1"]
    assert record["metrics"]["confusion"] == result["test"]["confusion"]
    assert record["metrics"]["loss"] == pytest.approx(result["test"]["loss"], abs=1e-5)
    assert f"top-1 {100 * result['test']['top1']:.1f} %" in out and "top-5" not in out  # 5 classes
    with open(folder / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    classes = result["data"]["classes"]
    assert list(rows[0]) == ["path", "true_label", "predicted_label", *(f"p_{c}" for c in classes)]
    assert len(rows) == 5 and all(Path(r["path"]).is_file() for r in rows)
    probabilities = np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])
    np.testing.assert_allclose(probabilities.sum(1), 1, atol=1e-5)
    assert [classes[i] for i in probabilities.argmax(1)] == [r["predicted_label"] for r in rows]
    assert [classes.index(r["predicted_label"]) for r in rows] == result["test"]["predictions"]
    assert (folder / "confusion.csv").read_text().splitlines()[0] == \
        "true \\ predicted," + ",".join(classes)


def test_predict_prints_top_k_classes_of_each_image(user_run, capsys):
    with open(user_run / "eval" / "best-test" / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))  # written by the eval test; read back for the same images
    images = [rows[0]["path"], rows[1]["path"]]
    code, out, _ = bench(capsys, "predict", user_run / "checkpoints" / "best.pt", *images,
                         "--top-k", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "pytorch-head-s0 (pytorch, best checkpoint):"
    for i, row in enumerate(rows[:2]):
        block = lines[1 + 3 * i: 4 + 3 * i]
        assert block[0] == images[i]
        shown = [(line.split()[1], float(line.split()[0].rstrip("%")) / 100) for line in block[1:]]
        assert shown[0][0] == row["predicted_label"]
        for cls, p in shown:
            assert p == pytest.approx(float(row[f"p_{cls}"]), abs=1e-3)


@pytest.mark.slow  # bench export's CLI runs on the fake backend below; the formats in test_export
@pytest.mark.parametrize("fmt, file", [("torchscript", "model.torchscript.pt"), ("onnx", "model.onnx")])
def test_export_is_checked_against_the_native_logits(user_run, capsys, fmt, file):
    code, out, _ = bench(capsys, "export", user_run, "--format", fmt)
    assert code == 0, out
    record = json.loads((user_run / "export" / fmt / "export.json").read_text())
    assert Path(record["path"]) == user_run / "export" / fmt / file
    assert record["max_abs_diff"] <= 1e-4 and record["golden_images"] == 5
    assert record["input"]["layout"] == "NCHW" and record["normalisation"] == "torch"
    assert f"max abs diff {record['max_abs_diff']:.2g}" in out


# ------------------------------------------------------------------ any backend, bad input

@pytest.fixture(scope="module")
def fake_run(fake, tiny_quads, tmp_path_factory):
    out = tmp_path_factory.mktemp("fake-results")
    assert cli.main(["run", "--backend", "fake", "--recipe", "head", "--data", str(tiny_quads),
                     "--weights", "none", "--epochs", "2", "--out", str(out), "--no-report"]) == 0
    return out / "fake-head-s0"


def test_eval_on_a_folder_maps_its_classes_by_name(fake_run, tiny_quads, tmp_path, capsys):
    folder = tmp_path / "new photos"
    for cls in ("square", "kite"):  # a subset of the run's classes, in another order
        (folder / cls).mkdir(parents=True)
        for p in sorted((tiny_quads / cls).glob("*.png"))[:2]:
            (folder / cls / p.name).write_bytes(p.read_bytes())
    (folder / "kite" / "broken.png").write_bytes(b"not a png")
    code, out, _ = bench(capsys, "eval", fake_run, "--data", folder, "--checkpoint", "last")
    assert code == 0, out
    assert "on " + str(folder) in out and "skipped 1 unreadable file(s)" in out
    from benchmarks.saved_run import eval_folder_name

    assert eval_folder_name(str(folder)).startswith("new_photos-")
    with open(fake_run / "eval" / f"last-{eval_folder_name(str(folder))}" / "predictions.csv",
              newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((Path(r["path"]).parent.name, r["true_label"]) for r in rows) == \
        [("kite", "kite")] * 2 + [("square", "square")] * 2
    split = tmp_path / "split photos"  # a split folder: its test/ is evaluated
    for sub in ("train", "test"):
        (split / sub).mkdir(parents=True)
        (split / sub / "kite").symlink_to(folder / "kite")
    code, out, _ = bench(capsys, "eval", fake_run, "--data", split)
    assert code == 0 and ": 2 image(s), 5 classes" in out
    with open(fake_run / "eval" / f"best-{eval_folder_name(str(split))}" / "predictions.csv",
              newline="") as f:
        assert all("/test/kite/" in r["path"] for r in csv.DictReader(f))


def test_export_that_fails_its_check_is_an_error(fake_run, capsys, monkeypatch):
    code, out, _ = bench(capsys, "export", fake_run, "--format", "npz")
    assert code == 0 and "max abs diff 0" in out
    record = json.loads((fake_run / "export" / "npz" / "export.json").read_text())
    assert record["classes"] == json.loads((fake_run / "split.json").read_text())["classes"]
    assert record["golden_images"] == 5 and record["checkpoint"] == "best"
    monkeypatch.setenv("FAKE_EXPORT_OFFSET", "0.01")
    code, _, err = bench(capsys, "export", fake_run, "--format", "npz")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "differ from the native model's by 0.01" in lines[0]


def test_bad_input_after_training_is_one_line(fake_run, tiny_quads, tmp_path, capsys, monkeypatch):
    from common.config import load_recipe

    sweep = fake_run.parent
    image = next(tiny_quads.rglob("*.png"))
    (tmp_path / "notes.jpg").write_text("not an image")
    probe = tmp_path / "fake-linear_probe-s0"  # a finished linear-probe run: no checkpoint
    probe.mkdir()
    (probe / "result.json").write_bytes((fake_run / "result.json").read_bytes())
    config = json.loads((fake_run / "config.json").read_text())
    config["recipe"] = dataclasses.asdict(load_recipe("linear_probe"))
    (probe / "config.json").write_text(json.dumps(config))
    moved = tmp_path / "moved"  # a run whose data folder has gone
    shutil.copytree(fake_run, moved)
    split = json.loads((moved / "split.json").read_text())
    (moved / "split.json").write_text(json.dumps({**split, "root": str(tmp_path / "gone")}))
    cases = [
        (["eval", tmp_path / "nope"], "no such run"),
        (["eval", moved], "test image(s) of run", "are no longer there", "pass the data with --data"),
        (["export", moved, "--format", "npz"], "are no longer there"),
        (["eval", sweep], "(it is a sweep; its runs: fake-head-s0)"),
        (["eval", probe], "is a linear probe"),
        (["predict", fake_run, tmp_path / "notes.jpg"], "cannot be read: not an image file"),
        (["predict", fake_run, tmp_path], "is a folder"),
        (["predict", fake_run / "checkpoints" / "middle.pkl", image], "no fake checkpoint at"),
        (["export", fake_run, "--format", "onnx"], "--format 'onnx': the fake backend exports npz"),
        (["eval", fake_run, "--data", tmp_path / "missing"], "does not exist"),
    ]
    for argv, *fragments in cases:
        code, _, err = bench(capsys, *argv)
        one_line(code, err, *fragments)
    monkeypatch.setenv("FAKE_BACKEND_CRASH", "raise")
    assert cli.main(["run", "--backend", "fake", "--recipe", "head", "--data", str(tiny_quads),
                     "--weights", "none", "--epochs", "1", "--out", str(tmp_path / "failed"),
                     "--no-report"]) == 1
    code, _, err = bench(capsys, "eval", tmp_path / "failed" / "fake-head-s0")
    one_line(code, err, "failed (RuntimeError: fake backend exploded)",
             "only a finished run has a model to use")
