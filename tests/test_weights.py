"""Weights across frameworks: the canonical layout, each backend's conversion table, exact
round trips, one-line refusals, and one source model (one digest) for every backend.

Round trips run in this process (pytest holds every framework, torch imported first);
``bench weights convert`` and the sweep's source model go through child processes, as
they do for users.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from conftest import require_backend, tiny_config

from backends.base import backend_info
from benchmarks import cli, conversion, driver, report
from common import canonical
from common.config import PretrainConfig
from common.models import get_model

SPEC = get_model("inception_v3")
BACKENDS = ("pytorch", "keras", "slim")


@pytest.fixture(scope="module")
def weights():
    """Seeded canonical InceptionV3 weights with a 5-class head."""
    return canonical.random_weights("inception_v3", SPEC.feature_dim, 5, seed=3)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------ framework-free

def test_every_backend_table_maps_each_canonical_layer_once():
    names = [layer.name for layer in SPEC.layers]
    assert len(names) == len(set(names)) == 94
    for b in BACKENDS:
        table = backend_info(b).entry("inception_v3").canonical
        assert list(table) == names, b
        assert len(set(table.values())) == 94, b
    assert list(backend_info("keras").entry("inception_v3").canonical.values()) == list(range(94))
    slim = backend_info("slim").entry("inception_v3").canonical
    assert slim["Mixed_5c/branch5x5_2"] == "InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5"
    assert slim["Mixed_7b/branch3x3_2b"] == "InceptionV3/Mixed_7b/Branch_1/Conv2d_0b_3x1"
    assert slim["Mixed_7c/branch3x3_2b"] == "InceptionV3/Mixed_7c/Branch_1/Conv2d_0c_3x1"
    # Keras' trainable InceptionV3 backbone (no top): kernels + BN betas
    assert canonical.backbone_parameter_count("inception_v3") == 21_768_352


def test_digest_is_over_values_in_canonical_order(weights):
    d = canonical.digest("inception_v3", weights)
    assert d == canonical.digest("inception_v3", dict(reversed(list(weights.items()))))
    changed = dict(weights)
    changed["Mixed_7c/branch_pool/beta"] = weights["Mixed_7c/branch_pool/beta"].copy()
    changed["Mixed_7c/branch_pool/beta"][0] += 1e-6
    assert canonical.digest("inception_v3", changed) != d
    del changed["head/kernel"], changed["head/bias"]
    assert canonical.digest("inception_v3", changed) != d


def test_check_names_the_first_tensor_that_does_not_map(weights):
    bad = dict(weights)
    bad["Mixed_6a/branch3x3/kernel"] = bad["Mixed_6a/branch3x3/kernel"][:, :, :, :10]
    with pytest.raises(canonical.ConversionError, match=r"^canonical tensor Mixed_6a/branch3x3/kernel "
                                                        r"has shape \[3, 3, 288, 10\]"):
        canonical.check("inception_v3", bad, SPEC.feature_dim)


def test_detect_format_by_suffix_and_files(tmp_path):
    (tmp_path / "m.ckpt.index").write_text("")
    assert [conversion.detect_format(p) for p in (
        "a.pt", "a.weights.h5", tmp_path / "m.ckpt", tmp_path / "m.ckpt.index", "w.npz",
        "x.h5")] == ["pytorch", "keras", "slim", "slim", "canonical", None]


def test_resnet50_conversion_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "r.pt").write_bytes(b"")
    code = cli.main(["weights", "convert", "--model", "resnet50", "--from", "pytorch", "--to", "keras",
                     "--input", str(tmp_path / "r.pt"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("bench: error: resnet50 is not one")
    assert "v1.5" in err and "stride" in err


@pytest.mark.slow
def test_resnet50_is_three_architectures():
    """Why resnet50 does not convert: where each framework puts the stride of a stage.
    Slow (a ResNet-50 in each framework): ``pytest -m slow tests/test_weights.py``."""
    for b in BACKENDS:
        require_backend(b)
    import keras
    import tensorflow as tf
    import torchvision

    torch_net = torchvision.models.resnet50(weights=None)
    first = torch_net.layer2[0]  # v1.5: the 3x3 convolution strides
    assert (first.conv1.stride, first.conv2.stride, first.conv1.bias) == ((1, 1), (2, 2), None)
    keras_net = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(32, 32, 3))
    conv = keras_net.get_layer("conv3_block1_1_conv")  # v1: the first 1x1 strides, with a bias
    assert (conv.strides, conv.use_bias) == ((2, 2), True)
    from backends.slim.model import resnet_v1_50

    graph = tf.Graph()
    with graph.as_default():
        resnet_v1_50(tf.compat.v1.placeholder(tf.float32, [1, 32, 32, 3]), 5, 0, False, False)
    strides = {unit: graph.get_operation_by_name(
        f"resnet_v1_50/block1/{unit}/bottleneck_v1/conv2/Conv2D").get_attr("strides")
        for unit in ("unit_1", "unit_3")}  # slim: the *last* unit of a block strides
    assert strides == {"unit_1": [1, 1, 1, 1], "unit_3": [1, 2, 2, 1]}


# ------------------------------------------------------------ round trips

@pytest.fixture(scope="module")
def keras_model(weights):
    """The suite's Keras InceptionV3 holding ``weights`` (``convert.model_from_canonical``)."""
    require_backend("keras")
    from backends.keras import convert

    return convert.model_from_canonical("inception_v3", weights)


@pytest.fixture(scope="module")
def slim_session(weights):
    """A session of the slim InceptionV3 graph holding ``weights``."""
    require_backend("slim")
    from backends.slim import convert

    session, _, _ = convert.session_from_canonical("inception_v3", weights)
    yield session
    session.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_round_trip_is_exact(backend, weights, tmp_path, request):
    """canonical -> the backend's checkpoint file (through its model) -> canonical: bit-identical."""
    require_backend(backend)
    convert = conversion.converter(backend)
    if backend == "keras":
        native = convert.write_model(request.getfixturevalue("keras_model"), tmp_path / "w")
    elif backend == "slim":
        native = convert.write_session(request.getfixturevalue("slim_session"), tmp_path / "w")
    else:
        native = convert.write_canonical("inception_v3", weights, tmp_path / "w")
    assert conversion.detect_format(native) == backend
    back, meta = convert.read_canonical("inception_v3", native)
    assert _equal(weights, back) and meta["dropped"] == []


def test_torch_gamma_other_than_one_is_refused_naming_the_tensor(weights, tmp_path):
    require_backend("pytorch")
    import torch

    from backends.pytorch import convert

    file = convert.write_canonical("inception_v3", weights, tmp_path / "w")
    ckpt = torch.load(file, weights_only=True)
    ckpt["model"]["Mixed_6b.branch7x7_2.bn.weight"][3] = 1.5
    torch.save(ckpt, file)
    with pytest.raises(canonical.ConversionError) as err:
        convert.read_canonical("inception_v3", file)
    assert "Mixed_6b.branch7x7_2.bn.weight (a BatchNorm gamma) is not 1" in str(err.value)
    assert "\n" not in str(err.value)
    ckpt["model"]["Mixed_6b.branch7x7_2.bn.weight"][3] = 1.0
    ckpt["model"]["Mixed_5b.extra.weight"] = torch.zeros(3)
    torch.save(ckpt, file)
    with pytest.raises(canonical.ConversionError, match="Mixed_5b.extra.weight does not map"):
        convert.read_canonical("inception_v3", file)


def test_slim_checkpoint_that_does_not_map_names_the_first_tensor_in_one_line(tmp_path):
    require_backend("slim")
    import tensorflow as tf

    from backends.slim import convert

    def checkpoint(name: str, **variables) -> str:
        graph = tf.Graph()
        with graph.as_default():
            vs = [tf.compat.v1.get_variable(n, shape, initializer=tf.compat.v1.zeros_initializer())
                  for n, shape in variables.items()]
            with tf.compat.v1.Session(graph=graph) as session:
                session.run(tf.compat.v1.variables_initializer(vs))
                return tf.compat.v1.train.Saver(vs).save(session, str(tmp_path / name),
                                                         write_meta_graph=False)

    wrong = checkpoint("wrong.ckpt", **{"InceptionV3/Conv2d_1a_3x3/weights": [3, 3, 3, 16]})
    with pytest.raises(canonical.ConversionError) as err:
        convert.read_canonical("inception_v3", wrong)
    assert str(err.value) == (f"slim checkpoint {wrong!r}: InceptionV3/Conv2d_1a_3x3/weights has shape "
                              f"[3, 3, 3, 16], canonical Conv2d_1a_3x3/kernel needs [3, 3, 3, 32]")
    other = checkpoint("other.ckpt", **{"resnet_v1_50/conv1/weights": [7, 7, 3, 64]})
    with pytest.raises(canonical.ConversionError, match=r"has no InceptionV3/Conv2d_1a_3x3/weights "
                                                        r"\(canonical Conv2d_1a_3x3/kernel\)$"):
        convert.read_canonical("inception_v3", other)


def test_keras_and_slim_models_have_the_canonical_backbone(keras_model, slim_session):
    """Same trainable count as torch's aligned model (test_parity), BN epsilon 1e-3."""
    import keras

    base = keras_model.layers[:keras_model.num_base_layers]
    assert sum(int(np.prod(v.shape)) for l in base for v in l.trainable_weights) == \
        canonical.backbone_parameter_count("inception_v3")
    assert {l.epsilon for l in base if isinstance(l, keras.layers.BatchNormalization)} == {1e-3}
    graph = slim_session.graph
    variables = [v for v in graph.get_collection("trainable_variables")
                 if not v.op.name.startswith("InceptionV3/Logits")]
    assert sum(int(np.prod(v.shape.as_list())) for v in variables) == \
        canonical.backbone_parameter_count("inception_v3")
    eps = {op.get_attr("epsilon") for op in graph.get_operations() if op.type == "FusedBatchNormV3"}
    assert eps and all(abs(e - 1e-3) < 1e-9 for e in eps)


def test_bench_weights_convert_checks_its_input_and_prints_the_digest(weights, tmp_path, capsys):
    """The command's own checks, before any framework starts: the input's format (by its
    name) must be the --from backend's, and it must exist; canonical -> canonical needs no
    framework and prints the digest. (Through the frameworks' child processes:
    test_bench_weights_convert_goes_round_the_three_frameworks_exactly, -m slow.)"""
    canonical.save(tmp_path / "w.npz", "inception_v3", weights, {})
    code = cli.main(["weights", "convert", "--from", "canonical", "--to", "canonical", "--input",
                     str(tmp_path / "w.npz"), "--output", str(tmp_path / "copy.npz")])
    out = capsys.readouterr().out
    assert code == 0 and f"(digest {canonical.digest('inception_v3', weights)})" in out, out
    assert _equal(weights, canonical.load(tmp_path / "copy.npz")[0])
    (tmp_path / "a.pt").write_bytes(b"")
    for argv, message in (
            (["--from", "keras", "--to", "slim", "--input", str(tmp_path / "a.pt")],
             "is a pytorch checkpoint (by its name), not keras; pass --from pytorch"),
            (["--from", "pytorch", "--to", "slim", "--input", str(tmp_path / "none.pt")],
             "is not a checkpoint"),
            (["--from", "pytorch", "--to", "tensorflow", "--input", str(tmp_path / "a.pt")],
             "unknown backend 'tensorflow'")):
        code = cli.main(["weights", "convert", *argv, "--output", str(tmp_path / "x")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not list(tmp_path.glob("x*"))


@pytest.mark.slow
def test_bench_weights_convert_goes_round_the_three_frameworks_exactly(weights, tmp_path, capsys):
    """pytorch -> keras -> slim -> pytorch with ``bench weights convert``, each side in its own
    child process: every step prints the same digest and the last file holds the first
    file's tensors. Slow (six children): ``pytest -m slow tests/test_weights.py``."""
    for b in BACKENDS:
        require_backend(b)
    from backends.pytorch import convert as torch_convert

    path = str(torch_convert.write_canonical("inception_v3", weights, tmp_path / "start"))
    digest = canonical.digest("inception_v3", weights)
    for source, target in (("pytorch", "keras"), ("keras", "slim"), ("slim", "pytorch")):
        code = cli.main(["weights", "convert", "--from", source, "--to", target, "--input", path,
                         "--output", str(tmp_path / target)])
        out = capsys.readouterr().out
        assert code == 0 and f"(digest {digest})" in out, out
        path = out.split(": ", 1)[1].split(" (digest")[0]
        assert conversion.detect_format(path) == target
    back, _ = torch_convert.read_canonical("inception_v3", path)
    assert _equal(weights, back)


# ------------------------------------------------------------ one source model

def _source_config(backend: str, data, run_dir, recipe: str = "linear_probe"):
    config = tiny_config(backend, recipe, data, run_dir, weights="source")
    return dataclasses.replace(config, pretrain=PretrainConfig(epochs=1, images_per_class=3,
                                                               batch_size=8))


def test_every_backend_starts_from_the_one_source_model(tiny_quads, tmp_path, monkeypatch):
    """A sweep's order: the pytorch run pretrains the source model (pytorch is the first
    installed) and exports its canonical weights, the keras run converts them; both record
    the one digest. --weights PATH takes another backend's file (converted, cached) or this
    backend's own (as it is). (result.json and the report on these records:
    test_report.py on the driver's own files, and the slow test below.)"""
    for b in ("pytorch", "keras"):
        require_backend(b)
    monkeypatch.setenv("TRANSFER_BENCH_DATA", str(tmp_path / "cache"))  # nothing cached yet
    infos = {}
    for b in ("pytorch", "keras"):
        config = _source_config(b, tiny_quads, tmp_path / b, recipe="head")
        request, infos[b] = driver.resolve_weights(config, driver.prepare_split(config), 75)
        assert conversion.detect_format(request.path) == b
    digest = infos["pytorch"]["digest"]
    assert isinstance(digest, str) and len(digest) == 64 and infos["keras"]["digest"] == digest
    assert {info["source_backend"] for info in infos.values()} == {"pytorch"}
    assert infos["pytorch"]["converted_from"] is None
    assert infos["keras"]["converted_from"] == infos["pytorch"]["checkpoint"]
    assert [infos[b]["cached"] for b in ("pytorch", "keras")] == [False, True]
    assert infos["pytorch"]["alignment"] == {
        "mode": "suite", "changes": list(backend_info("pytorch").entry("inception_v3").alignment)}
    assert len(infos["pytorch"]["alignment"]["changes"]) == 2
    assert infos["keras"]["alignment"] == {"mode": "suite", "changes": []}
    cache = conversion.Path(infos["pytorch"]["checkpoint"]).parent.parent
    meta = json.loads((cache / "source.json").read_text())
    assert meta["digest"] == digest and not meta["checkpoint"].startswith("/")
    # --weights PATH: another format is converted (cached), this backend's own is used as is
    for path, converted in ((cache / "canonical.npz", True), (infos["pytorch"]["checkpoint"], False)):
        config = tiny_config("pytorch", "head", tiny_quads, tmp_path / "path", weights=str(path))
        request, info = driver.resolve_weights(config, driver.prepare_split(config), 75)
        assert info["digest"] == digest and conversion.detect_format(request.path) == "pytorch"
        assert info["converted_from"] == (str(path) if converted else None)
        assert (request.path != str(path)) is converted


@pytest.mark.slow
def test_a_sweep_records_one_digest_and_the_report_says_so(tiny_quads, tmp_path, monkeypatch):
    """Real runs: a keras run with nothing cached has the source model pretrained in pytorch
    (the first installed) in a child process and converts it; the pytorch run finds it.
    Both result.json files hold the one digest and the report prints it once. Slow (two
    real runs and a pytorch child): ``pytest -m slow tests/test_weights.py``."""
    for b in ("pytorch", "keras"):
        require_backend(b)
    monkeypatch.setenv("TRANSFER_BENCH_DATA", str(tmp_path / "cache"))
    sweep = tmp_path / "sweep"
    for b in ("keras", "pytorch"):
        result = driver.run(_source_config(b, tiny_quads, sweep / f"{b}-linear_probe-s0"))
        assert result["status"] == "ok", result.get("error")
    infos = {b: json.loads((sweep / f"{b}-linear_probe-s0" / "result.json").read_text())["weights"]
             for b in ("pytorch", "keras")}
    digest = infos["pytorch"]["digest"]
    assert isinstance(digest, str) and infos["keras"]["digest"] == digest
    assert infos["keras"]["pretrained_in"] == infos["pytorch"]["source_backend"] == "pytorch"
    assert [infos[b]["cached"] for b in ("keras", "pytorch")] == [False, True]
    assert conversion.detect_format(infos["keras"]["checkpoint"]) == "keras"
    md = report.write_report(sweep, plots=False)["md"].read_text()
    assert (f"- `linear_probe`: every backend started from the same weights, digest `{digest}` "
            f"(source, from pytorch)") in md
    assert "WARNING" not in md
