"""``benchmarks/bench_sweep_overhead.py`` on synthetic ``result.json`` files (issue 23): the
model-step floor, the ratio, where the rest went, and the exit status against ``--target``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_sweep_overhead as overhead
from common.results import base_result


def synthetic_result(backend: str, epoch_seconds: float, *, train_ips: float = 10.0,
                     infer_ips: float = 50.0) -> dict:
    """A two-phase run: 100 images trained and 50 validated per phase (floor 2 x (10 + 1) s at
    10 / 50 img/s), each epoch ``epoch_seconds`` long, 20 test images, 3 s of start-up."""
    r = base_result(backend, "two_phase", 0, "inception_v3", {})
    spans, t = [{"name": "startup", "start": 0.0, "end": 3.0}], 3.0

    def add(name, seconds, **detail):
        nonlocal t
        spans.append({"name": name, "start": t, "end": t + seconds, **detail})
        t += seconds

    add("data", 0.5)
    add("framework_import", 2.0)
    add("setup", 0.25)
    add("build", 0.25)
    windows = []
    for phase in (0, 1):
        start = t
        add("apply_phase", 1.0, phase=phase)
        add("epoch", epoch_seconds, phase=phase, epoch=1, images=100)
        add("predict", 1.0, subset="val", images=50)
        add("checkpoint", 0.5, file="best")
        windows.append({"name": "phase", "start": start, "end": t, "index": phase,
                        "phase_name": ["head", "top2"][phase], "epochs": 1})
    add("restore", 0.5, file="best")
    add("predict", 1.0, subset="val", images=50)
    add("predict", 0.4, subset="test", images=20)
    add("throughput", 4.0)
    t += 1.0  # not in any span
    r.update(status="ok", throughput={"train": {"images_per_second": train_ips},
                                      "infer": {"images_per_second": infer_ips},
                                      "lock": {"wait_seconds": 1.5, "held_seconds": 2.0}},
             times={"total_seconds": t - 3.0, "started_at": 1.7e9, "spans": spans,
                    "windows": windows, "ended": t})
    return r


def write_sweep(root: Path, *results: dict) -> Path:
    for r in results:
        d = root / f"{r['backend']}-{r['recipe']}-s{r['seed']}"
        d.mkdir(parents=True)
        (d / "result.json").write_text(json.dumps(r))
    return root


def test_floor_ratio_and_where_the_rest_went():
    a = overhead.analyse(synthetic_result("pytorch", epoch_seconds=12.0))
    # floor: 200 images at 10 img/s + (100 validated + 50 + 20 evaluated) at 50 img/s
    assert a["floor"] == pytest.approx(20.0 + 170 / 50)
    assert a["wall"] == pytest.approx(3 + 0.5 + 2 + 0.5 + 2 * (1 + 12 + 1 + 0.5) + 0.5 + 1.4 + 4 + 1)
    assert a["ratio"] == pytest.approx(a["wall"] / a["floor"])
    head, top2 = a["phases"]
    assert (head["trained"], head["validated"]) == (100, 50)
    assert head["floor"] == pytest.approx(11.0)
    assert head["wall"] == pytest.approx(14.5) and head["ratio"] == pytest.approx(14.5 / 11)
    rest = a["rest"]
    assert rest["training passes beyond the floor"] == pytest.approx(24.0 - 20.0)
    assert rest["evaluation beyond the floor"] == pytest.approx(3.4 - 170 / 50)
    assert rest["start-up"] == 3.0 and rest["checkpoints"] == pytest.approx(1.0)
    assert rest["apply_phase (compile)"] == 2.0 and rest["throughput measurement"] == 4.0
    assert rest["of which throughput lock wait"] == 1.5
    assert rest["not in a span"] == pytest.approx(1.0)
    # the floor plus every line but the "of which" adds up to the wall
    parts = sum(v for k, v in rest.items() if not k.startswith("of which"))
    assert a["floor"] + parts == pytest.approx(a["wall"])


def test_a_phases_first_epoch_excess_is_what_its_first_epoch_took_beyond_the_later_ones():
    """A phase of three epochs whose first training pass took 10 s and the others 2 s, and
    whose first validation took 3 s and the others 1 s: its first epoch's excess is 8 + 2 s,
    its ratio without it is printed beside the ratio, and a phase that missed the target only
    because of it is named as within the target without it; a one-epoch phase has none. Its
    one-time build is that excess and its 1 s apply_phase, and its ratio without the build is
    printed too."""
    spans = [{"name": "apply_phase", "start": 0.0, "end": 1.0}]
    t = 1.0
    for train, val in ((10.0, 3.0), (2.0, 1.0), (2.0, 1.0)):
        spans += [{"name": "epoch", "start": t, "end": t + train, "images": 100},
                  {"name": "predict", "start": t + train, "end": t + train + val, "images": 50}]
        t += train + val
    assert overhead.first_epoch_excess(spans) == pytest.approx(8.0 + 2.0)
    assert overhead.first_epoch_excess(spans[:3]) is None  # one epoch: nothing to compare
    r = synthetic_result("keras", epoch_seconds=2.0, train_ips=30.0, infer_ips=75.0)
    r["times"]["spans"] = [s for s in r["times"]["spans"] if s["name"] != "epoch"] + [
        {**s, "start": s["start"] + 1e4, "end": s["end"] + 1e4} for s in spans]
    r["times"]["windows"] = [{"name": "phase", "start": 1e4, "end": 1e4 + t, "index": 0,
                              "phase_name": "head", "epochs": 3}]
    r["times"]["ended"] = 1e4 + t
    a = overhead.analyse(r)
    (head,) = a["phases"]
    assert t == 20.0 and head["floor"] == pytest.approx(300 / 30 + 150 / 75)  # 12 s
    assert head["ratio"] == pytest.approx(20 / 12)
    assert head["first_epoch_excess"] == pytest.approx(10.0)
    assert head["ratio_without_first_excess"] == pytest.approx(10 / 12)
    summary = overhead.summarise([r])
    assert summary["missed"] == [("keras-two_phase-s0", "head", pytest.approx(20 / 12))]
    assert summary["missed_without_first_excess"] == [
        ("keras-two_phase-s0", "head", pytest.approx(10 / 12))]
    # without the whole one-time build: the excess and the 1 s apply_phase
    assert head["apply_phase"] == pytest.approx(1.0)
    assert head["one_time_build"] == pytest.approx(11.0)
    assert head["ratio_without_one_time_build"] == pytest.approx(9 / 12)
    assert summary["missed_without_one_time_build"] == [
        ("keras-two_phase-s0", "head", pytest.approx(9 / 12))]
    md = " ".join(overhead.text(summary).split())
    assert "head 20.0 s / 12.0 s = 1.67x (first epoch +10.0 s, apply_phase 1.0 s)" in md
    assert "without it: keras-two_phase-s0 head 0.83x. Every one within 1.5x without it." in md
    assert ("Without their whole one-time build (apply_phase, where slim builds the phase's "
            "training graph, and the first epoch's excess): keras-two_phase-s0 head 0.75x. "
            "Every one within 1.5x without it.") in md
    # a phase above the target even without its build is named as such
    md = " ".join(overhead.text(overhead.summarise([r], target=0.7)).split())
    assert ("first epoch's excess): keras-two_phase-s0 head 0.75x. Still above 0.7x without it "
            "(or one epoch long): keras-two_phase-s0 head.") in md


def test_the_exit_status_says_whether_every_phase_met_the_target(tmp_path, capsys):
    fast = write_sweep(tmp_path / "fast", synthetic_result("pytorch", 12.0),
                       synthetic_result("keras", 10.5))
    assert overhead.main([str(fast)]) == 0
    out = capsys.readouterr().out
    assert "pytorch-two_phase-s0" in out and "keras-two_phase-s0" in out and "| total |" in out
    assert "Every training phase within 1.5x its floor." in out
    slow = write_sweep(tmp_path / "slow", synthetic_result("pytorch", 12.0),
                       synthetic_result("keras", 30.0))
    assert overhead.main([str(slow)]) == 1
    out = capsys.readouterr().out
    assert "Target missed" in out and "keras-two_phase-s0 head" in out
    assert overhead.main([str(slow), "--target", "3"]) == 0


def test_runs_without_timestamps_are_listed_and_an_empty_sweep_is_an_error(tmp_path, capsys):
    old = synthetic_result("slim", 12.0)
    old["times"] = {"total_seconds": 40.0}
    failed = base_result("keras", "scratch", 0, "inception_v3", {})
    failed.update(status="failed", error="boom")
    assert overhead.main([str(write_sweep(tmp_path / "a", old, failed))]) == 2
    assert "no finished run with timestamps" in capsys.readouterr().err
    assert overhead.main([str(write_sweep(tmp_path / "b", old, synthetic_result("pytorch", 12.0)))]) == 0
    out = capsys.readouterr().out
    assert "| slim-two_phase-s0 | no timestamps |" in out


def _default(r: dict, seed: int = 0, pretrained: float = 0.0) -> dict:
    """``r`` as a run of the default sweep (InceptionV3 at 75 px, synthetic 5-class target)."""
    r = json.loads(json.dumps(r))
    r.update(seed=seed, data={"image_size": 75, "source": "synthetic", "num_classes": 5})
    r["times"]["source_pretrain_seconds"] = pretrained
    return r


def test_the_default_sweep_is_held_to_its_wall_time_target(tmp_path, capsys):
    """Cached 5 min, cold (a run pretrained the source) 10 min, three seeds cached 12 min; another
    sweep only against --sweep-target; a missed sweep target exits 1 like a missed phase."""
    fast = synthetic_result("pytorch", 10.0)  # every phase within 1.5x
    assert overhead.default_sweep_target([_default(fast)]) == ("cached", 300.0)
    assert overhead.default_sweep_target([_default(fast, pretrained=200.0)]) == ("cold", 600.0)
    assert overhead.default_sweep_target([_default(fast, s) for s in (0, 1, 2)]) == (
        "three seeds, cached", 720.0)
    assert overhead.default_sweep_target([fast]) is None  # not the default data
    other = _default(fast)
    other["recipe"] = "head"
    assert overhead.default_sweep_target([other]) is None
    sweep = write_sweep(tmp_path / "s", _default(fast))
    assert overhead.main([str(sweep)]) == 0  # the run spans 37.9 s
    out = capsys.readouterr().out
    assert "Sweep target (cached): 0 min 38 s against 5 min 0 s: **met**." in out
    assert overhead.main([str(sweep), "--sweep-target", "0.5"]) == 1
    assert "Sweep target (given): 0 min 38 s against 0 min 30 s: **missed**." in capsys.readouterr().out
    assert overhead.main([str(write_sweep(tmp_path / "o", fast))]) == 0
    assert "Sweep target" not in capsys.readouterr().out
