"""Seed statistics on hand-made numbers (benchmarks.stats): exact means and sample stds from the
table of runs, the within-spread pairs, transfer gain, status counts, order. No framework."""

from __future__ import annotations

import math

import pytest

from benchmarks import stats


def result(backend: str, recipe: str, seed: int, top1: float | None = None, *, status: str = "ok",
           wall: float | None = 100.0, train: float | None = 20.0, infer: float | None = 60.0,
           error: str | None = None) -> dict:
    """A minimal result.json as the driver writes it (only what stats reads)."""
    r = {"backend": backend, "recipe": recipe, "seed": seed, "status": status, "error": error}
    if status == "ok":
        r.update(test={"top1": top1, "top5": 1.0, "loss": 0.5},
                 times={"total_seconds": wall},
                 throughput={"train": {"images_per_second": train},
                             "infer": {"images_per_second": infer},
                             "end_to_end_train_images_per_second": None if train is None else train * 0.8})
    return r


def aggregate(results: list[dict]) -> list[dict]:
    return stats.records(stats.aggregate(stats.runs_frame(results)))


def test_aggregate_rows_means_sample_stds_and_counts():
    rows = aggregate([
        result("keras", "two_phase", 0, 0.80, wall=200.0, train=15.0, infer=50.0),
        result("keras", "two_phase", 1, 0.90, wall=220.0, train=17.0, infer=54.0),
        result("pytorch", "two_phase", 0, 0.85, wall=150.0),
        result("pytorch", "two_phase", 1, status="failed", error="RuntimeError: CUDA out of memory"),
        result("pytorch", "scratch", 0, 0.55),
        result("slim", "scratch", 0, status="skipped", error="tf_slim not installed"),
    ])
    assert [(r["recipe"], r["backend"]) for r in rows] == [
        ("two_phase", "pytorch"), ("two_phase", "keras"), ("scratch", "pytorch"), ("scratch", "slim")]
    keras = rows[1]
    assert keras["test_top1_mean"] == pytest.approx(0.85, abs=1e-12)
    assert keras["test_top1_std"] == pytest.approx(math.sqrt(0.005), abs=1e-12)  # ddof=1, not 0.05
    assert keras["wall_seconds_mean"] == pytest.approx(210.0)
    assert keras["wall_seconds_std"] == pytest.approx(math.sqrt(200.0))
    assert keras["train_images_per_second_mean"] == pytest.approx(16.0)
    assert keras["infer_images_per_second_std"] == pytest.approx(math.sqrt(8.0))
    assert keras["end_to_end_images_per_second_mean"] == pytest.approx(12.8)
    assert (keras["n"], keras["n_ok"], keras["seeds"], keras["status"]) == (2, 2, [0, 1], "ok")
    assert keras["vs_scratch_top1"] is None  # keras has no scratch run

    torch = rows[0]
    assert (torch["n"], torch["n_ok"], torch["n_failed"], torch["status"]) == (2, 1, 1, "ok 1/2")
    assert (torch["test_top1_mean"], torch["test_top1_std"], torch["test_top1_n"]) == (0.85, None, 1)
    assert torch["errors"] == ["seed 1: RuntimeError: CUDA out of memory"]
    assert torch["vs_scratch_top1"] == pytest.approx(0.30)
    assert rows[2]["vs_scratch_top1"] is None  # the control itself

    slim = rows[3]
    assert (slim["status"], slim["n_skipped"], slim["test_top1_mean"]) == ("skipped", 1, None)
    assert slim["errors"] == ["seed 0: tf_slim not installed"]


def test_missing_throughput_and_nan_are_left_out():
    r = result("pytorch", "linear_probe", 0, float("nan"))
    del r["throughput"]
    (row,) = aggregate([r, result("pytorch", "linear_probe", 1, None)])
    assert row["status"] == "ok" and row["n_ok"] == 2
    assert (row["test_top1_mean"], row["test_top1_n"]) == (None, 0)
    assert row["train_images_per_second_n"] == 1 and row["wall_seconds_mean"] == 100.0
    assert stats.finite(float("inf")) is None and stats.finite(True) is None and stats.finite(3) == 3.0


def test_top5_is_blanked_for_five_classes_or_fewer():
    few, many = result("pytorch", "head", 0, 0.5), result("keras", "head", 0, 0.5)
    few["data"], many["data"] = {"num_classes": 5}, {"num_classes": 6}
    df = stats.runs_frame([few, many])
    assert df.set_index("backend").test_top5.to_dict() == pytest.approx({"pytorch": float("nan"), "keras": 1.0},
                                                                        nan_ok=True)


def test_within_spread_pairs():
    rows = stats.aggregate(stats.runs_frame([
        result("pytorch", "two_phase", 0, 0.80), result("pytorch", "two_phase", 1, 0.84),
        result("keras", "two_phase", 0, 0.81), result("keras", "two_phase", 1, 0.83),
        result("slim", "two_phase", 0, 0.60), result("slim", "two_phase", 1, 0.62),
        result("pytorch", "scratch", 0, 0.50), result("keras", "scratch", 0, 0.45),
    ]))
    pairs = {(s["recipe"], s["a"], s["b"]): s for s in stats.within_spread(rows)}
    assert set(pairs) == {("two_phase", "pytorch", "keras"), ("two_phase", "pytorch", "slim"),
                          ("two_phase", "keras", "slim"), ("scratch", "pytorch", "keras")}

    pk = pairs[("two_phase", "pytorch", "keras")]
    assert pk["within"] is True
    assert pk["diff"] == pytest.approx(0.0, abs=1e-12)
    assert pk["spread"] == pytest.approx(math.sqrt(0.0008) + math.sqrt(0.0002), abs=1e-12)

    ps = pairs[("two_phase", "pytorch", "slim")]
    assert ps["within"] is False
    assert ps["diff"] == pytest.approx(0.21)

    single = pairs[("scratch", "pytorch", "keras")]
    assert single["within"] is None and single["spread"] is None
    assert single["diff"] == pytest.approx(0.05)


def test_within_spread_equal_means_without_spread_are_within():
    rows = stats.aggregate(stats.runs_frame([result(b, "head", s, 0.75) for b in ("pytorch", "keras")
                                             for s in (0, 1)]))
    (pair,) = stats.within_spread(rows)
    assert pair["spread"] == 0.0 and pair["within"] is True


def test_transfer_gain_uses_the_best_transferred_recipe():
    rows = stats.aggregate(stats.runs_frame([
        result("pytorch", "head", 0, 0.70), result("pytorch", "two_phase", 0, 0.85),
        result("pytorch", "scratch", 0, 0.50), result("pytorch", "scratch", 1, 0.60),
        result("keras", "two_phase", 0, 0.80),                       # no control: left out
        result("slim", "scratch", 0, 0.40),                          # no transfer: left out
        result("slim", "full", 0, status="failed", error="OOM"),
    ]))
    (gain,) = stats.transfer_gain(rows)
    assert (gain["backend"], gain["best_recipe"]) == ("pytorch", "two_phase")
    assert gain["control"] == pytest.approx(0.55)
    assert gain["gain"] == pytest.approx(0.30)


def test_recipes_in_design_order_the_control_last_and_backends_in_registry_order():
    names = ["scratch", "two_phase", "custom", "linear_probe", "full", "head"]
    assert sorted(names, key=stats.recipe_sort_key) == [
        "linear_probe", "head", "full", "two_phase", "custom", "scratch"]
    assert stats.ordered_backends(["zeta", "slim", "pytorch", "keras", "alpha"]) == [
        "pytorch", "keras", "slim", "alpha", "zeta"]


def test_empty_results_give_empty_tables():
    df = stats.runs_frame([])
    assert len(df) == 0 and len(stats.aggregate(df)) == 0
    assert stats.within_spread(stats.aggregate(df)) == [] and stats.paired_tests(df) == []


def test_curve_mean_matches_epochs_across_seeds():
    def run(seed: int, vals: list[float | None]) -> dict:
        r = result("pytorch", "two_phase", seed, 0.8)
        r["curves"] = [{"phase": 0 if e < 2 else 1, "global_epoch": e + 1, "images_seen": 100 * (e + 1),
                        "val_top1": v} for e, v in enumerate(vals)]
        return r

    c = stats.curve_mean(stats.curves_frame(stats.runs_frame([run(0, [0.5, 0.6, 0.7]), run(1, [0.7, 0.8, None])])),
                         "images_seen")
    assert c.x.tolist() == [100.0, 200.0, 300.0]
    assert c["mean"].tolist() == pytest.approx([0.6, 0.7, 0.7])
    assert c["min"].tolist() == pytest.approx([0.5, 0.6, 0.7]) and c["max"].tolist() == pytest.approx([0.7, 0.8, 0.7])


def test_a_result_that_does_not_fit_the_schema_is_a_failed_row_saying_why():
    (row,) = aggregate([{**result("keras", "head", 0, 0.5), "test": [0.5]}])
    assert row["status"] == "failed"
    assert row["errors"] == ["seed 0: result does not fit the schema: result.test is a JSON array, expected an object"]
