"""Native names as an escape hatch (``backends.native``, ``benchmarks.slim_flags``).

Framework-free: the names are checked against the backends' catalogs, mapped to
canonical blocks, and refused in one line by a backend they do not align for, in
``bench``'s own process before any run starts. What each backend then trains is in
its own test file (``test_slim.py``, ``test_keras.py``, ``test_pytorch.py``).
"""

from __future__ import annotations

import dataclasses

import pytest

from backends import native
from benchmarks import cli
from benchmarks.slim_flags import from_slim_flags
from common.config import ConfigError, load_recipe, parse_phase, parse_recipe
from common.models import MODELS

TOP2_SCOPES = ["InceptionV3/Mixed_7b", "InceptionV3/Mixed_7c", "InceptionV3/Logits"]
SPEC = MODELS["inception_v3"]


def _phase(**keys):
    return parse_phase(keys, "r.toml phase 1")


@pytest.mark.parametrize("keys, blocks", [
    ({"trainable_scopes": TOP2_SCOPES}, ("Mixed_7b", "Mixed_7c")),
    ({"modules": ["Mixed_7b", "Mixed_7c", "fc"]}, ("Mixed_7b", "Mixed_7c")),
    ({"unfreeze_from": 249}, ("Mixed_7b", "Mixed_7c")),  # the keras.io guide's cut
    ({"unfreeze_from": 280}, ("Mixed_7c",)),
    ({"unfreeze_from": 311}, ()),                        # the head only
    ({"trainable_scopes": ["InceptionV3"]}, None),       # the whole model
])
def test_exact_selections_run_everywhere_as_their_canonical_blocks(keys, blocks):
    phase = _phase(**keys)
    chosen = native.selection(phase, "inception_v3")
    blocks = SPEC.blocks if blocks is None else blocks
    assert chosen.exact and chosen.blocks == blocks and chosen.head
    for backend in ("pytorch", "keras", "keras-jax", "slim"):
        applied = native.phase_for(phase, backend, "inception_v3")
        if native.family(backend) == chosen.framework:
            assert applied is phase  # its own framework applies the names as written
        else:
            assert applied.native_key is None and applied.trainable_blocks(SPEC) == blocks
            assert applied.train == ("blocks" if blocks else "head")


@pytest.mark.parametrize("keys, owner, what", [
    ({"modules": ["Mixed_7c.branch_pool", "fc"]}, "pytorch", "parts of Mixed_7c"),
    ({"trainable_scopes": ["InceptionV3/Mixed_7c/Branch_3", "InceptionV3/Logits"]}, "slim",
     "parts of Mixed_7c"),
    ({"unfreeze_from": 260}, "keras", "parts of Mixed_7b"),
    ({"modules": ["Mixed_7c"]}, "pytorch", "the backbone without the head"),
])
def test_partial_selections_run_only_in_their_framework(keys, owner, what):
    phase = _phase(**keys)
    assert native.phase_for(phase, owner, "inception_v3") is phase
    for backend in {"pytorch", "keras", "slim"} - {owner}:
        with pytest.raises(ConfigError) as err:
            native.phase_for(phase, backend, "inception_v3", "r.toml phase 1")
        message = str(err.value)
        assert message.startswith("r.toml phase 1: ") and f"trains {what}" in message
        assert f"only the {owner} backend applies it" in message and "\n" not in message


@pytest.mark.parametrize("keys, model, fragment", [
    ({"trainable_scopes": ["Mixed_7c"]}, "inception_v3",
     "trainable_scopes names 'Mixed_7c', which is not a variable scope of slim inception_v3; "
     "its scopes are: InceptionV3/Conv2d_1a_3x3"),
    ({"modules": ["Mixed_7d"]}, "inception_v3",
     "modules names 'Mixed_7d', which is not a module of torchvision inception_v3; the "
     "modules of its blocks are: Conv2d_1a_3x3"),
    ({"unfreeze_from": 312}, "inception_v3",
     "unfreeze_from = 312 is not a layer index of Keras inception_v3: its backbone has layers "
     "0..310 (the head follows); its blocks start at stem 0, Mixed_5b 18"),
    ({"unfreeze_from": 143}, "resnet18", "names keras names, but the keras backend has no model "
                                         "'resnet18'"),
])
def test_unknown_native_names_are_one_line_naming_what_exists(keys, model, fragment):
    with pytest.raises(ConfigError) as err:
        native.selection(_phase(**keys), model, "r.toml phase 1")
    assert fragment in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_resnet50_keras_cut_maps_to_layer4():
    chosen = native.selection(_phase(unfreeze_from=143), "resnet50")
    assert chosen.exact and chosen.blocks == ("layer4",)


def test_checkpoint_exclude_scopes_beyond_the_head_are_slim_only():
    head = parse_recipe({"name": "x", "phase": [{}],
                         "checkpoint_exclude_scopes": "InceptionV3/Logits,InceptionV3/AuxLogits"})
    for backend in ("pytorch", "keras", "slim"):
        native.check_recipe(head, backend, "inception_v3")  # what every backend does anyway
    more = dataclasses.replace(head, checkpoint_exclude_scopes=(
        "InceptionV3/Logits", "InceptionV3/Mixed_7c"), source="r.toml")
    native.check_recipe(more, "slim", "inception_v3")
    with pytest.raises(ConfigError, match=r"^r\.toml: checkpoint_exclude_scopes = InceptionV3/Logits,"
                                          r"InceptionV3/Mixed_7c leaves InceptionV3/Mixed_7c "
                                          r"unrestored; the pytorch backend never restores the "
                                          r"head"):
        native.check_recipe(more, "pytorch", "inception_v3")


def _run_args(*argv):
    args = cli.get_args_parser().parse_args(["run", *argv])
    args.argv = list(argv)
    return args


def test_bench_run_checks_native_names_before_anything_is_written(tmp_path, capsys):
    recipe = tmp_path / "branch.toml"
    recipe.write_text('name = "branch"\n[[phase]]\nmodules = ["Mixed_7c.branch_pool", "fc"]\n')
    out = tmp_path / "out"
    assert cli.main(["run", "--backend", "pytorch,slim", "--recipe", str(recipe),
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench: error: ") and "\n" not in err
    assert "trains parts of Mixed_7c" in err and "only the pytorch backend applies it" in err
    assert not out.exists()
    configs = cli.build_configs(_run_args("--backend", "pytorch", "--recipe", str(recipe)), out)
    assert configs[0].recipe.phases[0].modules == ("Mixed_7c.branch_pool", "fc")


def test_bench_run_slim_flags_is_the_recipe_and_its_run_options(tiny_quads, tmp_path):
    flags = ("--trainable_scopes=InceptionV3/Mixed_7c,InceptionV3/Logits --learning_rate=0.02 "
             "--batch_size=8 --train_image_size=80 --train_dir=/tmp/x")
    [config] = cli.build_configs(_run_args("--backend", "slim", "--slim-flags", flags,
                                           "--data", str(tiny_quads)), tmp_path)
    assert config.recipe == from_slim_flags(flags).recipe
    assert (config.train.batch_size, config.data.image_size, config.model.aux_logits) == (8, 80, False)
    assert config.recipe.phases[0].trainable_scopes == ("InceptionV3/Mixed_7c", "InceptionV3/Logits")
    for extra, fragment in ((["--batch-size", "4"], "--batch-size 4 and --slim-flags (which means "
                                                    "--batch-size 8) disagree"),
                            (["--recipe", "head"], "--slim-flags is the recipe: drop --recipe")):
        with pytest.raises(cli.UsageError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
            cli.build_configs(_run_args("--backend", "slim", "--slim-flags", flags, *extra), tmp_path)
    # the preset flag replaces every recipe's
    configs = cli.build_configs(_run_args("--backend", "pytorch", "--preprocessing", "torchvision",
                                          "--recipe", "head,scratch"), tmp_path)
    assert {c.recipe.preprocessing for c in configs} == {"torchvision"}


def test_recipe_from_slim_flags_writes_a_toml_that_reads_back(tmp_path, capsys):
    flags = ("--trainable_scopes=InceptionV3/Mixed_7b,InceptionV3/Mixed_7c,InceptionV3/Logits "
             "--checkpoint_exclude_scopes=InceptionV3/Logits,InceptionV3/AuxLogits "
             "--optimizer=momentum --momentum=0.9 --learning_rate=0.0001 --ignore_missing_vars "
             "--log_every_n_steps=10")
    out = tmp_path / "from_slim.toml"
    assert cli.main(["recipe", "from-slim-flags", flags, "--out", str(out), "--epochs", "2",
                     "--name", "top2_slim"]) == 0
    said = capsys.readouterr().out
    assert f"bench run --recipe {out} --model inception_v3 --batch-size 32 --image-size 299 " \
           f"--aux-logits" in said
    expected = from_slim_flags(flags, name="top2_slim", epochs=2).recipe
    assert load_recipe(str(out)) == dataclasses.replace(expected, source=str(out))
    assert "# ignored (no effect on what is computed): --log_every_n_steps" in out.read_text()
    assert cli.main(["recipe", "from-slim-flags", "--optimizer=ftrl --learning_rate=0.1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("bench: error: --slim-flags: --optimizer=ftrl is not supported; the suite "
                   "takes sgd, momentum, rmsprop, adam")


def test_vgg16_native_names_are_module_paths_and_layer_indices():
    """torchvision keeps VGG16's blocks as slices of one Sequential: ``features`` covers every
    block, ``features.24`` .. ``.30`` (with the head, ``classifier``) is block5; Keras'
    ``model.layers[15:]`` is block5 too."""
    everything = native.selection(_phase(modules=["features", "classifier"]), "vgg16")
    assert everything.exact and everything.blocks == MODELS["vgg16"].blocks
    block5 = [f"features.{i}" for i in range(24, 31)] + ["classifier"]
    assert native.selection(_phase(modules=block5), "vgg16").blocks == ("block5",)
    part = native.selection(_phase(modules=["features.28", "classifier"]), "vgg16")
    assert not part.exact and part.partial == {"block5": ("features.28",)}
    assert native.phase_for(_phase(unfreeze_from=15), "slim", "vgg16").blocks == ("block5",)
