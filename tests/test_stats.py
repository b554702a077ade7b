"""Seed statistics on hand-made numbers (benchmarks.stats): exact means and sample stds from the
table of runs, framework verdicts across seeds (paired t-test, Holm), Wilson intervals, transfer gain,
status counts, order. No framework."""

from __future__ import annotations

import math

import pytest
from scipy.stats import t as student_t

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
    r = result("pytorch", "linear_probe", 0, None)
    del r["throughput"]
    r["test"]["loss"] = float("nan")  # a NaN accuracy is refused by the result schema itself
    (row,) = aggregate([r, result("pytorch", "linear_probe", 1, None)])
    assert row["status"] == "ok" and row["n_ok"] == 2
    assert (row["test_top1_mean"], row["test_top1_n"]) == (None, 0)
    assert (row["test_loss_mean"], row["test_loss_n"]) == (0.5, 1)
    assert row["train_images_per_second_n"] == 1 and row["wall_seconds_mean"] == 100.0
    assert stats.finite(float("inf")) is None and stats.finite(True) is None and stats.finite(3) == 3.0


def test_top5_is_blanked_for_five_classes_or_fewer():
    few, many = result("pytorch", "head", 0, 0.5), result("keras", "head", 0, 0.5)
    few["data"], many["data"] = {"num_classes": 5}, {"num_classes": 6}
    df = stats.runs_frame([few, many])
    assert df.set_index("backend").test_top5.to_dict() == pytest.approx({"pytorch": float("nan"), "keras": 1.0},
                                                                        nan_ok=True)


def test_holm_by_hand_on_known_p_values():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> non-decreasing: 0.06 for the last
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert stats.holm([0.02]) == pytest.approx([0.02]) and stats.holm([]) == []


def test_wilson_interval_by_hand():
    z = 1.959963984540054  # the 97.5 % normal quantile

    def by_hand(k: int, n: int) -> tuple[float, float]:
        centre, half = (k + z * z / 2) / (n + z * z), z / (n + z * z) * math.sqrt(k * (n - k) / n + z * z / 4)
        return centre - half, centre + half

    for k, n in ((7, 10), (0, 80), (80, 80), (312, 400)):
        assert stats.wilson_interval(k, n) == pytest.approx(by_hand(k, n), abs=1e-12)
    low, high = stats.wilson_interval(10, 10)
    assert low == pytest.approx(10 / (10 + z * z)) and high == 1.0  # a width at 100 %, unlike a bootstrap


def test_accuracy_intervals_are_wilson_from_the_stored_predictions():
    r = result("pytorch", "head", 0, 0.75)
    r["test"].update(predictions=[0, 1, 1, 0], labels=[0, 1, 1, 1])
    old = result("keras", "head", 0, 0.5)  # no predictions stored: no interval
    rows = stats.records(stats.accuracy_intervals(stats.runs_frame([r, old])))
    assert (rows[0]["right"], rows[0]["n"]) == (3, 4)
    assert (rows[0]["low"], rows[0]["high"]) == pytest.approx(stats.wilson_interval(3, 4))
    assert (rows[1]["low"], rows[1]["high"], rows[1]["n"]) == (None, None, None)


def three_seeds(top1: dict[str, list[float]], recipe: str = "head", seeds=(0, 1, 2)) -> list[dict]:
    return [result(backend, recipe, seed, value) for backend, values in top1.items()
            for seed, value in zip(seeds, values)]


def test_framework_verdicts_are_paired_t_tests_over_seeds_holm_corrected_per_recipe():
    top1 = {"pytorch": [0.80, 0.82, 0.84], "keras": [0.70, 0.73, 0.75], "slim": [0.78, 0.86, 0.82]}
    other = {"pytorch": [0.5, 0.6, 0.7], "keras": [0.4, 0.5, 0.6]}  # a second recipe: its own correction
    tests = stats.framework_tests(stats.runs_frame(three_seeds(top1) + three_seeds(other, "two_phase")))
    rows = {(t["recipe"], t["a"], t["b"]): t for t in tests}
    assert list(rows) == [("head", "pytorch", "keras"), ("head", "pytorch", "slim"), ("head", "keras", "slim"),
                          ("two_phase", "pytorch", "keras")]

    def t_test(a: list[float], b: list[float]) -> float:  # by hand: t = mean(d) / (sd(d) / sqrt(n)), df = n - 1
        d = [x - y for x, y in zip(a, b)]
        t = sum(d) / 3 / (math.sqrt(sum((x - sum(d) / 3) ** 2 for x in d) / 2) / math.sqrt(3))
        return 2 * student_t.sf(abs(t), 2)

    p_pk, p_ks = t_test(top1["pytorch"], top1["keras"]), t_test(top1["keras"], top1["slim"])
    assert p_pk == pytest.approx(0.001273, abs=1e-6) and p_ks == pytest.approx(0.03734, abs=1e-5)
    pk, ps, ks = rows[("head", "pytorch", "keras")], rows[("head", "pytorch", "slim")], rows[("head", "keras", "slim")]
    assert (pk["p"], ks["p"], ps["p"]) == pytest.approx((p_pk, p_ks, 1.0), abs=1e-9)  # slim - pytorch: mean 0
    # Holm over the three pairs of `head`: 3 x the smallest, 2 x the next, 1 x the largest
    assert (pk["p_holm"], ks["p_holm"], ps["p_holm"]) == pytest.approx((3 * p_pk, 2 * p_ks, 1.0), abs=1e-9)
    assert (pk["verdict"], ks["verdict"], ps["verdict"]) == ("a", "same", "same")  # keras-slim: p < 0.05, Holm not
    assert pk["seeds"] == [0, 1, 2] and pk["mean_diff"] == pytest.approx(0.28 / 3)
    assert pk["diff_std"] == pytest.approx(math.sqrt(((0.1 - 0.28 / 3) ** 2 + 2 * (0.09 - 0.28 / 3) ** 2) / 2))
    # one pair on `two_phase`: no correction, and an identical difference on every seed
    tp = rows[("two_phase", "pytorch", "keras")]
    assert tp["p"] == tp["p_holm"] == 0.0 and tp["verdict"] == "a"
    assert "paired t-test" in stats.FRAMEWORK_TEST["test"] and "ttest_rel" in stats.FRAMEWORK_TEST["test"]
    assert stats.FRAMEWORK_TEST["correction"].startswith("Holm")


def test_no_framework_verdict_below_three_seeds_paired_by_seed():
    runs = (three_seeds({"pytorch": [0.9, 0.9, 0.9], "keras": [0.1, 0.1, 0.1]}, seeds=(0, 1, 2))
            + three_seeds({"slim": [0.5, 0.5, 0.5]}, seeds=(0, 1, 5))          # shares seeds 0 and 1 only
            + three_seeds({"pytorch": [0.9], "keras": [0.1]}, "scratch", seeds=(0,)))
    rows = {(t["recipe"], t["a"], t["b"]): t for t in stats.framework_tests(stats.runs_frame(runs))}
    assert rows[("head", "pytorch", "keras")]["verdict"] == "a"
    for key, n in ((("head", "pytorch", "slim"), 2), (("head", "keras", "slim"), 2),
                   (("scratch", "pytorch", "keras"), 1)):
        row = rows[key]
        assert (row["verdict"], row["p"], row["p_holm"], row["n"]) == (None, None, None, n)
        assert row["why"].endswith("a framework claim needs at least 3 seeds per backend")
    assert rows[("head", "pytorch", "slim")]["seeds"] == [0, 1]
    # Holm counts only the tested pair: p unchanged
    assert rows[("head", "pytorch", "keras")]["p_holm"] == rows[("head", "pytorch", "keras")]["p"]


def test_verdict_flips_match_rows_and_count_the_ones_judged_in_both():
    def rows(*verdicts):
        return [{"recipe": recipe, "a": "x", "b": "y", "verdict": v}
                for recipe, v in zip(("head", "full", "two_phase"), verdicts)]

    flips, compared = stats.verdict_flips(rows("a", "same", None), rows("same", "same", "b"), ("recipe", "a", "b"),
                                          "verdict")
    assert compared == 2  # two_phase: no verdict in A
    assert [(f["recipe"], f["A"]["verdict"], f["B"]["verdict"]) for f in flips] == [("head", "a", "same")]


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
    assert stats.framework_tests(df) == [] and stats.paired_tests(df) == []


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
