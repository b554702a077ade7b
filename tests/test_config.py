"""Recipes and run configuration: loading, validation errors, overrides."""

from __future__ import annotations

import pytest

from common.config import (ConfigError, RunConfig, available_recipes, load_recipe, override_epochs,
                           parse_recipe, validate_run)
from common.models import get_model
from common.schedule import learning_rate_at


def test_every_shipped_recipe_loads():
    assert set(available_recipes()) >= {"two_phase", "head", "partial", "full", "linear_probe", "scratch"}
    for name in available_recipes():
        assert load_recipe(name).name == name


def test_two_phase_is_the_keras_seed():
    r = load_recipe("two_phase")
    head, top = r.phases
    assert (head.train, head.optimizer) == ("head", "rmsprop")
    assert (top.train, top.top_blocks, top.optimizer, top.learning_rate, top.effective_momentum) == \
        ("top", 2, "sgd", 1e-4, 0.9)
    assert top.trainable_blocks(get_model("inception_v3")) == ("Mixed_7b", "Mixed_7c")
    assert r.head_hidden_units == 1024


def test_partial_is_resnet_layer4_and_full_has_head_multiplier():
    assert load_recipe("partial").phases[0].trainable_blocks(get_model("resnet50")) == ("layer4",)
    assert load_recipe("full").phases[0].head_lr_multiplier == 10.0
    assert load_recipe("scratch").init == "random"


def _recipe(**phase):
    return {"name": "x", "phase": [{"train": "head", **phase}]}


@pytest.mark.parametrize("phase, fragment", [
    ({"optimiser": "sgd"}, "unknown key 'optimiser'"),
    ({"optimizer": "lamb"}, "optimizer = 'lamb' is invalid; allowed: sgd, momentum, rmsprop, adam, adamw"),
    ({"learning_rate": -1}, "learning_rate = -1.0 is invalid; must be > 0"),
    ({"epochs": 0}, "epochs = 0 is invalid"),
    ({"bn": "off"}, "bn = 'off' is invalid; allowed: frozen, train"),
    ({"epochs": "3"}, "epochs = '3' is invalid; expected int"),
    ({"train": "top"}, "top_blocks = 0 is invalid"),
])
def test_bad_phase_values_fail_with_one_line_naming_key_and_value(phase, fragment):
    with pytest.raises(ConfigError) as err:
        parse_recipe(_recipe(**phase), "r.toml")
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg and msg.startswith("r.toml phase 1")


def test_unknown_top_level_key_and_missing_phases():
    with pytest.raises(ConfigError, match="unknown key 'phases'"):
        parse_recipe({"name": "x", "phases": []}, "r.toml")
    with pytest.raises(ConfigError, match=r"needs at least one \[\[phase\]\]"):
        parse_recipe({"name": "x"}, "r.toml")


def test_recipe_from_path_and_bad_toml(tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('name = "mine"\n[[phase]]\ntrain = "all"\noptimizer = "adamw"\n')
    assert load_recipe(str(good)).phases[0].optimizer == "adamw"
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_recipe(str(bad))
    with pytest.raises(ConfigError, match="unknown recipe 'nope'"):
        load_recipe("nope")


def test_epochs_override_and_round_trip_through_dict():
    r = override_epochs(load_recipe("two_phase"), 2)
    assert [p.epochs for p in r.phases] == [2, 2]
    config = RunConfig(backend="pytorch", recipe=r)
    assert RunConfig.from_dict(config.to_dict()) == config


def test_validate_run_rejects_small_images_and_foreign_models():
    r = load_recipe("head")
    from common.config import DataConfig

    with pytest.raises(ConfigError, match="inception_v3 needs at least 75 px"):
        validate_run(RunConfig("pytorch", r, data=DataConfig(image_size=60)))
    from backends.base import unsupported_model

    assert unsupported_model("keras", "resnet18") == (
        "resnet18 has no keras model in this suite (available for: pytorch)")
    assert unsupported_model("pytorch", "resnet18") is None


def test_schedules():
    from common.config import Phase

    p = Phase(learning_rate=1.0, epochs=4, schedule="cosine", warmup_epochs=1)
    lrs = [learning_rate_at(p, e) for e in range(4)]
    assert lrs[0] == pytest.approx(0.5) and lrs[1] == pytest.approx(1.0)
    assert lrs[2] == pytest.approx(0.75) and lrs[3] == pytest.approx(0.25)
    e = Phase(learning_rate=1.0, epochs=3, schedule="exponential", decay_rate=0.5)
    assert [learning_rate_at(e, i) for i in range(3)] == [1.0, 0.5, 0.25]


# ------------------------------------------------------------ fidelity switches

def test_fidelity_is_native_by_default_and_aligned_by_one_key_or_per_switch():
    from common.config import FIDELITY_SWITCHES, recipe_from_dict

    assert load_recipe("two_phase").fidelity.settings() == {k: "native" for k in FIDELITY_SWITCHES}
    assert set(FIDELITY_SWITCHES) == {"bn_moving_variance", "rmsprop", "weight_decay", "head_init",
                                      "crop_sampler", "head_dtype", "adam"}
    every = parse_recipe({**_recipe(), "fidelity": "aligned"})
    assert every.fidelity.settings() == {k: "aligned" for k in FIDELITY_SWITCHES}
    assert every.fidelity.text() == "aligned"
    one = parse_recipe({**_recipe(), "fidelity": {"bn_moving_variance": "aligned"}})
    assert one.fidelity.settings() == {"bn_moving_variance": "aligned", "rmsprop": "native",
                                       "weight_decay": "native", "head_init": "native",
                                       "crop_sampler": "native", "head_dtype": "native",
                                       "adam": "native"}
    but = parse_recipe({**_recipe(), "fidelity": {"default": "aligned", "rmsprop": "native"}})
    assert but.fidelity.text() == ("bn_moving_variance=aligned, rmsprop=native, "
                                   "weight_decay=aligned, head_init=aligned, crop_sampler=aligned, "
                                   "head_dtype=aligned, adam=aligned")
    head = parse_recipe({**_recipe(), "fidelity": {"default": "aligned", "head_dtype": "native"}})
    assert (head.fidelity.head_dtype, head.fidelity.crop_sampler) == ("native", "aligned")
    adam = parse_recipe({**_recipe(), "fidelity": {"adam": "aligned"}})
    assert (adam.fidelity.adam, adam.fidelity.rmsprop) == ("aligned", "native")
    # the asdict form (config.json, sweep.json) reads back the same
    import dataclasses

    assert recipe_from_dict(dataclasses.asdict(but)).fidelity == but.fidelity


def test_fidelity_head_init_draw_is_glorot_uniform_from_the_seed_with_zero_biases():
    """common.canonical.aligned_head: what every backend writes into its head under
    head_init = "aligned" (docs/design.md, "Fidelity switches"); numpy only."""
    import numpy as np

    from common.canonical import aligned_head

    head = aligned_head(7, 2048, 5, 16)
    assert {k: v.shape for k, v in head.items()} == {
        "head_hidden/kernel": (2048, 16), "head_hidden/bias": (16,),
        "head/kernel": (16, 5), "head/bias": (5,)}
    assert all(v.dtype == np.float32 for v in head.values())
    for layer, (fan_in, fan_out) in (("head_hidden", (2048, 16)), ("head", (16, 5))):
        limit = np.sqrt(6 / (fan_in + fan_out))
        kernel = head[f"{layer}/kernel"]
        assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.9 * limit
        assert abs(kernel.std() - limit / np.sqrt(3)) < 0.05 * limit
        assert not head[f"{layer}/bias"].any()
    again = aligned_head(7, 2048, 5, 16)
    assert all(np.array_equal(head[k], again[k]) for k in head)
    other = aligned_head(8, 2048, 5, 16)
    assert not np.array_equal(head["head/kernel"], other["head/kernel"])
    assert list(aligned_head(7, 2048, 5)) == ["head/kernel", "head/bias"]


def test_bench_run_fidelity_sets_every_recipes_switches_and_refuses_other_words(tmp_path, capsys):
    from benchmarks import cli
    from common.config import FIDELITY_SWITCHES

    def configs(*argv):
        args = cli.get_args_parser().parse_args(["run", "--backend", "pytorch", *argv])
        args.argv = list(argv)
        return cli.build_configs(args, tmp_path)

    aligned = configs("--fidelity", "aligned", "--recipe", "two_phase,scratch")
    assert [c.recipe.fidelity.settings() for c in aligned] == [{k: "aligned" for k in FIDELITY_SWITCHES}] * 2
    assert [c.recipe.fidelity.head_dtype for c in aligned] == ["aligned"] * 2
    assert {c.recipe.fidelity.text() for c in configs("--recipe", "two_phase,scratch")} == {"native"}
    with pytest.raises(SystemExit) as exit_:
        cli.get_args_parser().parse_args(["run", "--fidelity", "exact"])
    assert exit_.value.code == 2 and "invalid choice: 'exact'" in capsys.readouterr().err


@pytest.mark.parametrize("value, fragment", [
    ("exact", "fidelity = 'exact' is invalid; allowed: native, aligned"),
    ({"bn_moving_variance": "yes"}, "fidelity.bn_moving_variance = 'yes' is invalid; allowed: native, aligned"),
    ({"bn_variance": "aligned"}, "unknown fidelity switch 'bn_variance'; allowed: default, bn_moving_variance"),
    ({"adam": "keras"}, "fidelity.adam = 'keras' is invalid; allowed: native, aligned"),
    (3, "fidelity = 3 is invalid; write fidelity = \"native\" or \"aligned\""),
])
def test_bad_fidelity_fails_in_one_line(value, fragment):
    with pytest.raises(ConfigError) as err:
        parse_recipe({**_recipe(), "fidelity": value}, "r.toml")
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).startswith("r.toml: ")


def test_bench_run_refuses_a_bad_fidelity_with_exit_2_before_any_framework(tmp_path, capsys):
    import sys

    from benchmarks import cli

    recipe = tmp_path / "r.toml"
    recipe.write_text('name = "r"\n[fidelity]\nrmsprop = "close"\n[[phase]]\ntrain = "head"\n')
    before = set(sys.modules)
    assert cli.main(["run", "--backend", "pytorch", "--recipe", str(recipe), "--out",
                     str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench: error: ") and err.count("\n") == 1
    assert "fidelity.rmsprop = 'close' is invalid; allowed: native, aligned" in err
    assert not {"torch", "tensorflow", "keras"} & (set(sys.modules) - before)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------ one schema (common.schema)

def test_every_phase_and_recipe_field_is_validated_from_the_dataclass_itself():
    """The validator reads each field's type and choices from Phase and Recipe (no second
    table): every field refuses a wrong type in one line naming it, and the keys allowed are
    the fields themselves."""
    import dataclasses

    from common.config import RECIPE_KEYS, Phase, Recipe, parse_phase
    from common.schema import field_choices, field_kinds

    assert field_kinds(Phase)["momentum"] is float and field_kinds(Phase)["blocks"] is tuple
    assert field_choices(Phase)["optimizer"] == ("sgd", "momentum", "rmsprop", "adam", "adamw")
    for f in dataclasses.fields(Phase):
        with pytest.raises(ConfigError) as err:
            parse_phase({f.name: {"x": 1}}, "r.toml phase 1")
        assert str(err.value).startswith(f"r.toml phase 1: {f.name} = {{'x': 1}} is invalid; ")
    with pytest.raises(ConfigError, match="allowed keys: augment, blocks, bn, decay_epochs"):
        parse_phase({"lr": 1}, "p")
    assert set(RECIPE_KEYS) == {f.name for f in dataclasses.fields(Recipe)} - {"phases", "source"} | {"phase"}
    for key in set(RECIPE_KEYS) - {"phase", "fidelity"}:
        with pytest.raises(ConfigError) as err:
            parse_recipe({**_recipe(), key: {"x": 1}}, "r.toml")
        assert str(err.value).startswith(f"r.toml: {key} = {{'x': 1}} is invalid; ")


def test_a_choice_field_of_the_wrong_type_names_the_allowed_values():
    with pytest.raises(ConfigError, match=r"optimizer = 3 is invalid; allowed: sgd, momentum"):
        parse_recipe(_recipe(optimizer=3), "r.toml")
    with pytest.raises(ConfigError, match=r"r.toml: init = 1 is invalid; allowed: pretrained, random"):
        parse_recipe({**_recipe(), "init": 1}, "r.toml")


@pytest.mark.parametrize("part, key, value, fragment", [
    ("train", "batch_size", "16", "config train: batch_size = '16' is invalid; expected int"),
    ("train", "precision", "fp16", "config train: precision = 'fp16' is invalid; allowed: fp32, bf16"),
    ("data", "image_size", 1.5, "config data: image_size = 1.5 is invalid; expected int"),
    ("model", "aux_logits", "yes", "config model: aux_logits = 'yes' is invalid; expected bool"),
    ("pretrain", "epoch", 3, "config pretrain: unknown key 'epoch'; allowed keys: batch_size, epochs"),
    ("data", None, [1], "config data: [1] is not a table of keys"),
])
def test_a_run_config_read_back_is_checked_against_its_fields(part, key, value, fragment):
    """config.json / sweep.json are read through the same schema as a recipe: a wrong type
    in any part is one ConfigError naming the part and key, not a run that fails later."""
    d = RunConfig(backend="pytorch", recipe=load_recipe("head")).to_dict()
    if key is None:
        d[part] = value
    else:
        d[part][key] = value
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(d)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    d = RunConfig(backend="pytorch", recipe=load_recipe("head")).to_dict()
    d["data"]["val_fraction"], d["pretrain"]["learning_rate"] = 0.2, None
    assert RunConfig.from_dict(d).data.val_fraction == 0.2
