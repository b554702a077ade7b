"""Reports from result files written by the real driver on the numpy fake backend.

One sweep per module (``benchmarks.driver.run`` in this process, about 3 s):
backends ``fake`` and ``fakeb`` (the same numpy backend under two names, so
they predict the same test images identically) x recipes head, two_phase,
scratch x seeds 0, 1 on ``tiny_quads`` (5 classes, 2 test images each), plus
one run on the 10-class ``shapes`` domain. Tests that need other values copy
the sweep and patch the result files as a later driver or an older one would
have written them.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from backends import base
from benchmarks import cli, driver, report, stats
from common import synthetic
from common.results import (SCHEMA_VERSION, Result, SchemaError, load_results, read_result, run_name,
                            write_result)
from conftest import tiny_config

BACKENDS, RECIPES, SEEDS = ("fake", "fakeb"), ("head", "two_phase", "scratch"), (0, 1)
PNG = '<img src="data:image/png;base64,'
SECTIONS = ["Conditions", "Starting weights", "Results", "Framework verdicts", "Trained models compared",
            "What transfer buys", "Throughput", "Per-class test accuracy", "Framework differences",
            "Failures and skipped runs", "Unreadable and older results", "What the numbers mean"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_quads, isolated_data_root) -> Path:
    """The real driver's result files (see the module docstring), read-only for the tests."""
    out = tmp_path_factory.mktemp("report") / "sweep"
    with pytest.MonkeyPatch.context() as mp:
        for name in BACKENDS:
            mp.setitem(base.REGISTRY, name, "fake_backend:FakeBackend")
        for b in BACKENDS:
            for recipe in RECIPES:
                for seed in SEEDS:
                    result = driver.run(tiny_config(b, recipe, tiny_quads, out / run_name(b, recipe, seed),
                                                    weights="source", seed=seed))
                    assert result["status"] == "ok", result.get("error")
        shapes = synthetic.generate(synthetic.SyntheticSpec("shapes", 4, image_size=80, seed=2),
                                    root=isolated_data_root, progress=False)
        result = driver.run(tiny_config("fake", "head", shapes, out.parent / "shapes" / "fake-head-s0"))
        assert result["status"] == "ok", result.get("error")
    return out


@pytest.fixture
def fakes(monkeypatch):
    for name in BACKENDS:
        monkeypatch.setitem(base.REGISTRY, name, "fake_backend:FakeBackend")


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("report.*", "summary.*", "checkpoints"))
    return dst


def edit(run_dir: Path, name: str, change) -> None:
    f = run_dir / name / "result.json"
    r = json.loads(f.read_text())
    change(r)
    f.write_text(json.dumps(r))


def section(md: str, title: str) -> str:
    """The markdown between ``## title`` and the next ``## `` heading."""
    start = md.index(f"## {title}\n")
    end = md.find("\n## ", start + 3)
    return md[start: end if end != -1 else None]


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table in ``text``: body rows as stripped cells."""
    out, current = [], None
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current = (current or []) + [[c.strip() for c in line.strip("|").split(" | ")]]
        elif current:
            out.append(current[2:])
            current = None
    return out


def add_seed(run_dir: Path, backend: str, recipe: str, seed: int, top1: float | None = None) -> None:
    """A run of another seed, copied from seed 0's (and its test top-1 set to ``top1``)."""
    src, dst = run_dir / run_name(backend, recipe, 0), run_dir / run_name(backend, recipe, seed)
    shutil.copytree(src, dst)
    edit(run_dir, dst.name, lambda r: r.update(seed=seed, name=dst.name))
    if top1 is not None:
        edit(run_dir, dst.name, lambda r: r["test"].update(top1=top1))


def three_seeds(run_dir: Path) -> dict:
    """``head`` and ``two_phase`` of ``run_dir`` with a third seed and set test top-1s (fake
    clearly above fakeb on ``head``, the same mean on ``two_phase``); returns them."""
    top1 = {("fake", "head"): (0.9, 0.8, 0.85), ("fakeb", "head"): (0.2, 0.3, 0.2),
            ("fake", "two_phase"): (0.5, 0.7, 0.6), ("fakeb", "two_phase"): (0.6, 0.6, 0.6)}
    for (backend, recipe), values in top1.items():
        for seed in SEEDS:
            edit(run_dir, run_name(backend, recipe, seed), lambda r: r["test"].update(top1=values[seed]))
        add_seed(run_dir, backend, recipe, 2, values[2])
    return top1


def md_report(run_dir: Path) -> str:
    return report.write_report(run_dir, plots=False)["md"].read_text()


def on_disk(run_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(run_dir.glob("*/result.json"))]


# ------------------------------------------------------------------ the report

def test_report_has_every_section_table_and_plot(sweep, tmp_path):
    run_dir = copy_run(sweep, tmp_path / "run")
    paths = report.write_report(run_dir)
    assert paths == {"md": run_dir / "report.md", "html": run_dir / "report.html",
                     "csv": run_dir / "summary.csv", "json": run_dir / "summary.json"}
    md, page = paths["md"].read_text(), paths["html"].read_text()
    assert re.findall(r"^## (.+)$", md, re.M) == SECTIONS
    for title in SECTIONS:
        assert f'<h2 id="{re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")}">{title}</h2>' in page
        assert f'<a href="#{re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")}">' in page
    assert page.startswith("<!DOCTYPE html>") and page.count(PNG) == 7
    for title in ("Test top-1 per backend and recipe", "Validation top-1 per epoch",
                  "Validation top-1 per training images seen", "Throughput of the model step",
                  "Per-class test accuracy (mean", "Test confusion matrices", "Trainable parameters per phase"):
        assert f"<figcaption><strong>{title}" in page
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<script" not in page and "<link" not in page
    assert re.search(r"</strong> · inception_v3 · 75 px · batch \d+ · \w+ · cpu numpy · 2 seeds · split [0-9a-f]{8}"
                     r"</figcaption>", page)  # the conditions under every figure
    # one split, one model; fake and fakeb each pretrained their own source model
    assert [w.split(":")[1] for w in re.findall(r"^> \*\*WARNING: .*$", md, re.M)] == \
        [" DIFFERENT STARTING WEIGHTS on `head`", " DIFFERENT STARTING WEIGHTS on `two_phase`"]
    assert "### Environment and versions per backend" in section(md, "Conditions")
    assert "5: kite, parallelogram, rectangle, square, trapezoid" in section(md, "Conditions")


def test_results_table_numbers_are_the_seed_mean_and_sample_std_of_the_files(sweep):
    md = md_report(copy_run(sweep, sweep.parent / "numbers"))
    (rows,) = tables(section(md, "Results"))
    assert [(r[0].strip("`"), r[1]) for r in rows] == [(rec, b) for rec in RECIPES for b in BACKENDS]
    results = on_disk(sweep)
    for row in rows:
        top1 = [r["test"]["top1"] for r in results if (r["recipe"], r["backend"]) == (row[0].strip("`"), row[1])]
        assert row[2] == "0, 1"
        assert row[3] == f"{100 * np.mean(top1):.1f} ± {100 * np.std(top1, ddof=1):.1f}"
        assert row[-1] == "ok"
    scratch = {b: np.mean([r["test"]["top1"] for r in results if (r["backend"], r["recipe"]) == (b, "scratch")])
               for b in BACKENDS}
    head = next(r for r in rows if r[:2] == ["`head`", "fake"])
    mean = np.mean([r["test"]["top1"] for r in results if (r["backend"], r["recipe"]) == ("fake", "head")])
    assert head[4] == f"{100 * (mean - scratch['fake']):+.1f} pp"


FRAMEWORK_WORDS = ("reaches a higher test top-1", "no difference between the frameworks", "distinguishable from noise",
                   "higher</td>", "no difference shown")


def test_a_single_seed_report_makes_no_framework_verdict(sweep, tmp_path):
    run_dir = copy_run(sweep, tmp_path / "single")
    for extra in run_dir.glob("*-s1"):
        shutil.rmtree(extra)
    paths = report.write_report(run_dir, plots=False)
    md, page = paths["md"].read_text(), paths["html"].read_text()
    for text in (md, page):
        for words in FRAMEWORK_WORDS:
            assert words not in text.lower(), words
    verdicts = section(md, "Framework verdicts")
    assert "A claim about frameworks needs at least 3 seeds per backend" in verdicts
    assert "**No framework verdict in this report**: no pair of backends has 3 seeds finished on a recipe" in verdicts
    assert tables(verdicts) == []
    for recipe in RECIPES:
        assert (f"- `{recipe}`, fake vs fakeb: no framework verdict (1 seed finished in both; a framework claim needs "
                f"at least 3 seeds per backend); mean Δ top-1 (a − b) ") in verdicts
    assert "<strong>No framework verdict in this report</strong>" in page
    summary = json.loads(paths["json"].read_text())
    assert {v["verdict"] for v in summary["framework_verdicts"]} == {None}
    assert summary["framework_test"] == stats.FRAMEWORK_TEST and "within_spread" not in summary


def test_three_seeds_give_holm_corrected_framework_verdicts_with_the_test_named(sweep, tmp_path):
    run_dir = copy_run(sweep, tmp_path / "verdicts")
    three_seeds(run_dir)
    md = md_report(run_dir)
    verdicts = section(md, "Framework verdicts")
    assert ("paired t-test over seeds of the per-seed test top-1 differences (scipy.stats.ttest_rel, two-sided), "
            "pairing runs by seed; Holm, over the pairs of backends of a recipe; level 0.05") in verdicts
    (rows,) = tables(verdicts)
    expected = stats.framework_tests(stats.runs_frame(on_disk(run_dir)))
    head = next(v for v in expected if v["recipe"] == "head")
    assert head["p_holm"] == head["p"] < 0.05  # one pair per recipe: Holm leaves it
    assert rows == [["`head`", "fake vs fakeb", "0, 1, 2", "85.0", "23.3", "+61.7 pp ± 10.4", f"{head['t']:.2f}",
                     f"{head['p']:.3f}", f"{head['p_holm']:.3f}", "fake higher"],
                    ["`two_phase`", "fake vs fakeb", "0, 1, 2", "60.0", "60.0", "+0.0 pp ± 10.0", "0.00", "1.000",
                     "1.000", "no difference shown"]]
    assert (f"- `head`, fake vs fakeb: **fake reaches a higher test top-1 than fakeb on this recipe**: mean Δ top-1 "
            f"(a − b) +61.7 pp over seeds 0, 1, 2, paired t-test p = {head['p']:.3f}, Holm p = {head['p_holm']:.3f} "
            f"(level 0.05)") in verdicts
    assert ("- `two_phase`, fake vs fakeb: **no difference between the frameworks shown** on this recipe: "
            "mean Δ top-1 (a − b) +0.0 pp over seeds 0, 1, 2") in verdicts
    assert "- `scratch`, fake vs fakeb: no framework verdict (2 seeds finished in both;" in verdicts
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [(v["recipe"], v["verdict"]) for v in summary["framework_verdicts"]] == [
        ("head", "a"), ("two_phase", "same"), ("scratch", None)]


def test_different_splits_sizes_and_parameter_counts_are_said(sweep, tmp_path):
    run_dir = copy_run(sweep, tmp_path / "splits")
    for name in (run_name("fakeb", rec, s) for rec in RECIPES for s in SEEDS):
        edit(run_dir, name, lambda r: r["data"].update(split_digest="0123456789abcdef", image_size=96))
        edit(run_dir, name, lambda r: r["phases"][-1].update(trainable_params=r["phases"][-1]["trainable_params"] + 100))
    edit(run_dir, "fakeb-head-s0", lambda r: r["phases"][0].update(trainable_blocks=["stem"]))
    md = md_report(run_dir)
    assert "> **WARNING: DIFFERENT DATA SPLITS: the runs used 2 different split digests, so their accuracies are " \
           "not comparable (" in md
    assert "> **WARNING: the image size differs between runs: 75, 96**" in md
    text = section(md, "Framework differences")
    assert re.search(r"Trainable parameter counts differ between backends by 100 \(\d+\.\d\d% of the largest\): "
                     r"fake [\d,]+, fakeb [\d,]+\. The canonical blocks are the same", text)
    assert "**The backends trained different canonical blocks**: check the phase." in text


def test_top5_is_hidden_for_five_classes_and_shown_for_ten(sweep):
    md = md_report(copy_run(sweep, sweep.parent / "five"))
    assert "top-5" not in section(md, "Results")
    shapes = md_report(sweep.parent / "shapes")
    header = next(ln for ln in section(shapes, "Results").splitlines() if ln.startswith("| recipe"))
    assert "test top-5 (%)" in header
    (r,) = on_disk(sweep.parent / "shapes")
    assert r["data"]["num_classes"] == 10
    assert f"| {100 * r['test']['top5']:.1f} |" in section(shapes, "Results")


def test_framework_differences_tables_come_from_the_phase_reports(sweep):
    md = md_report(copy_run(sweep, sweep.parent / "phases"))
    text = section(md, "Framework differences")
    assert "### `two_phase` phase 2 `top2`: train=top, sgd lr 0.0001, 1 epoch, BN frozen, augment on" in text
    (phase,) = [r["phases"][1] for r in on_disk(sweep) if r["backend"] == "fake" and r["recipe"] == "two_phase"][:1]
    rows = tables(text)[2]
    assert rows[0][:5] == ["fake", "stem", f"{phase['trainable_params']:,}", f"{phase['total_params']:,}",
                           str(phase["trainable_tensors"])]
    assert rows[0][5] == "**arrays**: " + ", ".join(phase["native"]["arrays"])


def test_summary_csv_and_json_hold_the_aggregates(sweep, tmp_path):
    paths = report.write_report(copy_run(sweep, tmp_path / "csv"), plots=False)
    with paths["csv"].open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == report.CSV_FIELDS and len(rows) == 6
    results = on_disk(sweep)
    row = next(r for r in rows if (r["backend"], r["recipe"]) == ("fakeb", "scratch"))
    top1 = [r["test"]["top1"] for r in results if (r["backend"], r["recipe"]) == ("fakeb", "scratch")]
    assert float(row["test_top1_mean"]) == pytest.approx(np.mean(top1), rel=1e-5)
    assert row["seeds"] == "0;1" and row["test_top5_mean"] == ""  # hidden: 5 classes
    summary = json.loads(paths["json"].read_text())
    assert len(summary["rows"]) == 6 and len(summary["paired_tests"]) == 6
    assert summary["conditions"]["digests"] == {results[0]["data"]["split_digest"]: [
        r.name for r in stats.runs_frame(results).result]}
    assert summary["unreadable"] == [] and summary["lacking"] == {}


def test_terminal_summary_table(sweep):
    run = load_results(sweep)
    lines = report.summary_table(run.results).splitlines()
    assert lines[0].split()[:5] == ["backend", "recipe", "seeds", "test", "top1"]
    assert len(lines) == 2 + 6 and set(lines[1]) <= {"─", " "}
    row = next(ln for ln in lines if ln.split()[:2] == ["fakeb", "two_phase"])
    assert " ± " in row and " pp" in row and row.endswith("ok")
    assert report.summary_table([]) == "no results"


def test_html_escapes_text_from_results(sweep, tmp_path):
    run_dir = copy_run(sweep, tmp_path / "escape")
    edit(run_dir, "fake-head-s1", lambda r: r.update(status="failed", error='bad <script>alert("x")</script> & more'))
    paths = report.write_report(run_dir, plots=False)
    page = paths["html"].read_text()
    assert "<script>" not in page
    assert "bad &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; more" in page
    assert "| fake-head-s1 | failed | bad <script>" in paths["md"].read_text()


def test_backend_colours_come_from_the_descriptors_and_a_palette_for_plugins(fakes):
    colors = report.backend_colors(["pytorch", "keras", "fake", "fakeb"])
    assert colors["pytorch"] == base.backend_info("pytorch").color == "#e4572e"
    assert colors["keras"] == base.backend_info("keras").color
    assert colors["fake"] != colors["fakeb"] and "#777777" not in colors.values()
    assert stats.ordered_backends(["zeta", "fakeb", "slim", "fake", "pytorch"]) == [
        "pytorch", "slim", "fake", "fakeb", "zeta"]


# ------------------------------------------------------------ significance

def test_driver_stores_every_test_prediction_in_split_order(sweep):
    for r in on_disk(sweep):
        test = r["test"]
        assert len(test["predictions"]) == len(test["labels"]) == test["count"] == 10
        assert np.mean(np.asarray(test["predictions"]) == test["labels"]) == pytest.approx(test["top1"])
    split = json.loads((sweep / "fake-head-s0" / "split.json").read_text())
    assert json.loads((sweep / "fake-head-s0" / "result.json").read_text())["test"]["labels"] == [
        label for _, label in split["test"]]


def test_mcnemar_exact_p_value_by_hand():
    a = np.array([1] * 7 + [0] * 1 + [1] * 5 + [0] * 3, bool)  # 7 only a, 1 only b, 5 both, 3 neither
    b = np.array([0] * 7 + [1] * 1 + [1] * 5 + [0] * 3, bool)
    t = stats.mcnemar(a, b)
    # two-sided exact binomial on 8 discordant pairs: 2 * P(X <= 1), X ~ Bin(8, 1/2) = 2 * (1 + 8) / 256
    assert (t["only_a"], t["only_b"]) == (7, 1) and t["p"] == pytest.approx(18 / 256, abs=1e-12)
    assert stats.mcnemar(b, a)["p"] == pytest.approx(18 / 256, abs=1e-12)
    assert stats.mcnemar(a, a) == {"only_a": 0, "only_b": 0, "p": 1.0}
    ten = stats.mcnemar(np.ones(10, bool), np.zeros(10, bool))
    assert ten["p"] == pytest.approx(2 / 1024, abs=1e-12)


def test_mcnemar_speaks_of_two_trained_models_never_of_frameworks(sweep, tmp_path):
    run_dir = copy_run(sweep, tmp_path / "paired")

    def predict(right: int):
        def change(r):
            labels = r["test"]["labels"]
            r["test"]["predictions"] = [y if i < right else (y + 1) % 5 for i, y in enumerate(labels)]
            r["test"]["top1"] = right / len(labels)
        return change

    edit(run_dir, "fake-head-s0", predict(10))
    edit(run_dir, "fakeb-head-s0", predict(0))  # 10 discordant, all one way: p = 2 / 1024
    edit(run_dir, "fake-head-s1", predict(4))
    edit(run_dir, "fakeb-head-s1", predict(2))  # 2 discordant: p = 0.5
    md = md_report(run_dir)
    text = section(md, "Trained models compared")
    intervals, pairs = tables(text)
    assert ["`head`", "0", "fake vs fakeb", "+100.0 pp", "10", "0", "0.002"] in pairs
    assert ["`head`", "1", "fake vs fakeb", "+20.0 pp", "2", "0", "0.500"] in pairs
    assert ("`head` seed 0, fake vs fakeb: +100.0 pp; 10 images only fake got right, 0 only fakeb; McNemar "
            "p = 0.002: **these two trained models differ beyond test-set noise**: the fake run got more test images "
            "right (level 0.05; one run each, so nothing about the frameworks)") in text
    assert "`head` seed 1, fake vs fakeb: +20.0 pp; 2 images only fake got right, 0 only fakeb; McNemar p = 0.500: " \
           "**these two trained models are not told apart beyond test-set noise**" in text
    assert "They are not framework verdicts" in text and "Wilson everywhere" in text
    assert not [words for words in FRAMEWORK_WORDS if words in md.lower()]  # two seeds: no framework verdict
    # fake and fakeb are the same numpy backend: identical calls on every image elsewhere
    assert "`scratch` seed 0, fake vs fakeb: the same right/wrong call on every test image" in text
    assert ["`head`", "fake", "0", "100.0", "72.2–100.0"] in intervals  # Wilson, 10 of 10: not one point
    assert ["`head`", "fakeb", "0", "0.0", "0.0–27.8"] in intervals
    low, high = stats.wilson_interval(4, 10)
    assert ["`head`", "fake", "1", "40.0", f"{100 * low:.1f}–{100 * high:.1f}"] in intervals


# ------------------------------------------------------------ weights digest

def test_one_digest_line_when_every_backend_started_from_the_same_weights(sweep, tmp_path):
    run_dir = copy_run(sweep, tmp_path / "same")
    for name in (run_name(b, rec, s) for b in BACKENDS for rec in ("head", "two_phase") for s in SEEDS):
        edit(run_dir, name, lambda r: r["weights"].update(digest="ab" * 32, source_backend="fake"))
    md = md_report(run_dir)
    text = section(md, "Starting weights")
    assert f"- `head`: every backend started from the same weights, digest `{'ab' * 32}` (source, from fake)" in text
    assert "- `scratch`: random initialisation in every backend" in text
    assert "WARNING" not in md


def test_different_digests_are_a_loud_warning_naming_backends_kind_and_source(sweep, tmp_path):
    run_dir = copy_run(sweep, tmp_path / "differ")
    for s in SEEDS:
        edit(run_dir, f"fake-head-s{s}", lambda r: r["weights"].update(digest="aa" * 32, source_backend="fake"))
        edit(run_dir, f"fakeb-head-s{s}", lambda r: r["weights"].update(digest="bb" * 32, source_backend="fakeb"))
        edit(run_dir, f"fake-two_phase-s{s}", lambda r: r["weights"].update(digest="cc" * 32))
    md = report.write_report(run_dir, plots=False)["md"].read_text()
    warning = ("> **WARNING: DIFFERENT STARTING WEIGHTS on `head`: the backends did not start from the same weights, "
               "so their accuracies compare starting points as well as frameworks (fake: `aaaaaaaaaaaaaaaa` (source, "
               "from fake); fakeb: `bbbbbbbbbbbbbbbb` (source, from fakeb))**")
    assert md.startswith("# ") and warning in md.split("## Conditions")[0]
    assert "DIFFERENT STARTING WEIGHTS on `head`" in section(md, "Starting weights")
    # fakeb's two_phase runs keep what the driver wrote: no digest, fakeb's own source model
    assert ("> **WARNING: DIFFERENT STARTING WEIGHTS on `two_phase`: the backends did not start from the same "
            "weights, so their accuracies compare starting points as well as frameworks (fake: `cccccccccccccccc` "
            "(source, from fake); fakeb: no digest (source, from fakeb: the fakeb backend does not convert "
            "inception_v3))**") in md.split("## Conditions")[0]
    page = (run_dir / "report.html").read_text()
    assert '<div class="warn">WARNING: DIFFERENT STARTING WEIGHTS on <code>head</code>' in page


def test_backends_that_each_pretrained_their_own_source_are_a_loud_warning_saying_why(sweep):
    """The driver's own result files: fake and fakeb have no conversion table, so each
    pretrained its own source model and recorded no digest, and why."""
    weights = json.loads((sweep / "fakeb-head-s0" / "result.json").read_text())["weights"]
    assert weights["digest"] is None and weights["source_backend"] == "fakeb"
    assert weights["conversion"] == "the fakeb backend does not convert inception_v3"
    assert weights["alignment"] == {"mode": "suite", "changes": []} and weights["converted_from"] is None
    md = md_report(copy_run(sweep, sweep.parent / "nodigest"))
    warning = ("> **WARNING: DIFFERENT STARTING WEIGHTS on `head`: the backends did not start from the same "
               "weights, so their accuracies compare starting points as well as frameworks (fake: no digest "
               "(source, from fake: the fake backend does not convert inception_v3); fakeb: no digest (source, "
               "from fakeb: the fakeb backend does not convert inception_v3))**")
    assert warning in md.split("## Conditions")[0]
    assert "- `scratch`: random initialisation in every backend" in section(md, "Starting weights")


def test_one_backend_without_a_digest_says_so(sweep, tmp_path):
    run_dir = copy_run(sweep, tmp_path / "one")
    for p in run_dir.glob("fakeb-*"):
        shutil.rmtree(p)
    md = md_report(run_dir)
    assert "- `head`: no digest recorded for fake" in section(md, "Starting weights")
    assert "WARNING" not in md


# ------------------------------------------------- unreadable and older results

def test_unreadable_results_are_listed_never_dropped(sweep, tmp_path, fakes, capsys, monkeypatch):
    run_dir = copy_run(sweep, tmp_path / "broken")
    good = (run_dir / "fake-head-s0" / "result.json").read_text()
    (run_dir / "fake-head-s0" / "result.json").write_text(good[: len(good) // 2])  # truncated mid-write
    (run_dir / "empty-list").mkdir()
    (run_dir / "empty-list" / "result.json").write_text("[]")
    (run_dir / "no-keys").mkdir()
    (run_dir / "no-keys" / "result.json").write_text('{"status": "ok", "backend": "fake"}')
    run = load_results(run_dir)
    assert len(run.results) == 11
    reasons = {Path(u.path).parent.name: u.reason for u in run.unreadable}
    assert reasons["fake-head-s0"].startswith("not valid JSON, truncated or corrupt (")
    assert reasons["empty-list"] == "a JSON array, not a result object"
    assert reasons["no-keys"] == "lacks the required keys schema_version, error, recipe, seed, model, config, " \
                                 "versions, device"
    md = md_report(run_dir)
    assert "> **WARNING: 3 result file(s) could not be read and are left out" in md
    listed = tables(section(md, "Unreadable and older results"))[0]
    assert sorted((Path(f.strip("`")).parent.name, why) for f, why in listed) == sorted(reasons.items())
    assert "11 result files" in md and "3 unreadable" in md

    monkeypatch.setattr(report, "make_figures", lambda df: {})
    capsys.readouterr()
    assert cli.main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    for name, why in reasons.items():
        assert f"unreadable result, left out: {run_dir / name / 'result.json'}: {why}" in out
    assert cli.main(["compare", str(sweep), str(run_dir)]) == 0
    assert "## Unreadable and older results in B" in capsys.readouterr().out


def test_a_directory_of_only_unreadable_results_is_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "result.json").write_text("[]")
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bench: error:") and "no readable */result.json (1 unreadable" in err[0]
    assert "Traceback" not in err[0]


def test_a_schema_1_result_is_read_and_its_missing_fields_are_named(sweep, tmp_path, fakes, capsys, monkeypatch):
    run_dir = copy_run(sweep, tmp_path / "old")

    def schema_1(r):
        r["schema_version"] = 1
        del r["test"]["predictions"], r["test"]["labels"], r["preprocessing"], r["throughput"]["phase"]

    edit(run_dir, "fakeb-two_phase-s1", schema_1)
    old = read_result(run_dir / "fakeb-two_phase-s1" / "result.json")
    assert old.schema_version == 1 < SCHEMA_VERSION
    assert old.lacks == ["preprocessing", "test.predictions", "test.labels", "throughput.phase"]
    md = md_report(run_dir)
    (table,) = tables(section(md, "Unreadable and older results"))[-1:]
    assert table == [["fakeb-two_phase-s1", "1", "preprocessing, test.predictions, test.labels, throughput.phase"]]
    text = section(md, "Trained models compared")
    intervals, pairs = tables(text)
    assert next(r for r in intervals if r[:3] == ["`two_phase`", "fakeb", "1"])[4] == "not available"
    assert next(r for r in pairs if r[:3] == ["`two_phase`", "1", "fake vs fakeb"])[-1] == "not available"
    assert ("`two_phase` seed 1, fake vs fakeb: not available (no per-image predictions stored: an older result "
            "file)") in text
    monkeypatch.setattr(report, "make_figures", lambda df: {})
    assert cli.main(["report", str(run_dir)]) == 0
    assert ("older result (schema 1), shown without preprocessing, test.predictions, test.labels, throughput.phase: "
            f"{run_dir / 'fakeb-two_phase-s1' / 'result.json'}") in capsys.readouterr().out


# ------------------------------------------------------------------ the schema

def test_schema_keeps_unknown_keys_and_names_a_field_of_the_wrong_type(sweep, tmp_path):
    raw = json.loads((sweep / "fake-head-s0" / "result.json").read_text())
    raw["weights"].update(digest="ab" * 32, source_backend="fake", fetched_by={"tool": "keras"})
    raw["throughput"]["phase"]["variant"] = "jax"
    raw["times"]["attempts"] = [{"total_seconds": 1.5}]
    raw["keras_backend"] = "jax"
    r = Result.parse(raw)
    assert r.weights.digest == "ab" * 32 and r.weights.extra["fetched_by"] == {"tool": "keras"}
    assert r.times.extra == {"attempts": [{"total_seconds": 1.5}]} and r.extra["keras_backend"] == "jax"
    write_result(tmp_path / "result.json", r)
    again = json.loads((tmp_path / "result.json").read_text())
    assert again == raw
    raw["test"]["top1"] = "0.5"
    with pytest.raises(SchemaError, match=r"^result\.test\.top1 is a JSON string, expected a number$"):
        Result.parse(raw)


def test_compare_lists_every_condition_that_changes_the_meaning_of_a_delta(sweep, tmp_path, fakes):
    assert "None: same split, model, weights" in report.compare(sweep, sweep)
    other = copy_run(sweep, tmp_path / "other")

    def change(r):
        r["data"]["split_digest"] = "0123456789abcdef"
        r["model"] = "resnet50"
        r["weights"].update(kind="imagenet", digest="ef" * 32)
        r["config"]["recipe"]["phases"][0]["epochs"] = 9
        r["data"]["image_size"] = 299
        r["config"]["train"]["batch_size"] = 64
        r["throughput"]["precision"] = "bf16"
        r["versions"]["numpy"] = "9.9.9"
        r["device"] = {"kind": "cuda", "name": "H100"}

    for name in (run_name(b, rec, s) for b in BACKENDS for rec in RECIPES for s in SEEDS):
        edit(other, name, change)
    text = report.compare(sweep, other)
    differences = section(text, "Conditions that differ")
    for key in ("split digest", "model", "initial weights", "weights digest", "recipe phases / epochs", "image size",
                "batch size", "precision", "framework versions", "device"):
        assert f"- **{key}**: A " in differences, key
    assert ("- **recipe phases / epochs**: A head: head (head, adam, lr 0.001, 1 ep); two_phase: head (head, rmsprop, "
            "lr 0.001, 1 ep) + top2 (top, sgd, lr 0.0001, 1 ep);") in differences
    assert "| B head: head (head, adam, lr 0.001, 9 ep);" in differences
    assert "- **device**: A fake: cpu numpy; fakeb: cpu numpy | B fake: cuda H100; fakeb: cuda H100" in differences
    assert "> **WARNING: the runs differ in split digest**" in text.split("## Results")[0]
    rows = tables(section(text, "Results"))[0]
    assert len(rows) == 6 and all(r[4] == "+0.0 pp" for r in rows)


def test_compare_lists_every_framework_verdict_and_mcnemar_statement_that_flipped(sweep, tmp_path, fakes):
    def sweep_with(name: str, fakeb_head: tuple, fakeb_right: int) -> Path:
        run_dir = copy_run(sweep, tmp_path / name)
        for backend, values in (("fake", (0.9, 0.8, 0.85)), ("fakeb", fakeb_head)):
            for seed in SEEDS:
                edit(run_dir, run_name(backend, "head", seed), lambda r: r["test"].update(top1=values[seed]))
            add_seed(run_dir, backend, "head", 2, values[2])
        for backend, right in (("fake", 10), ("fakeb", fakeb_right)):
            edit(run_dir, run_name(backend, "head", 0), lambda r: r["test"].update(
                predictions=[y if i < right else (y + 1) % 5 for i, y in enumerate(r["test"]["labels"])]))
        return run_dir

    a = sweep_with("A", (0.2, 0.3, 0.2), 0)      # fake higher across seeds; seed 0 runs told apart
    b = sweep_with("B", (0.9, 0.8, 0.85), 10)    # the same accuracies; seed 0 runs identical
    text = section(report.compare(a, b), "Verdicts that flipped")
    assert ("**framework verdicts**: 1 of 1 judged in both A and B flipped:\n\n- `head`, fake vs fakeb: A **fake "
            "higher (mean Δ +61.7 pp, Holm p = 0.009)** | B **no difference shown (mean Δ +0.0 pp, Holm p = 1.000)**"
            ) in text
    assert ("**per-run McNemar statements**: 1 of 7 judged in both A and B flipped:\n\n- `head` seed 0, fake vs "
            "fakeb: A **fake run right more often (Δ +70.0 pp, McNemar p = 0.002)** | B **not told apart (Δ +0.0 pp, "
            "McNemar p = 1.000)**") in text
    same = section(report.compare(a, a), "Verdicts that flipped")
    assert "**framework verdicts**: none of 1 judged in both A and B flipped." in same
    assert "**per-run McNemar statements**: none of 7 judged in both A and B flipped." in same
    assert "**framework verdicts**: none to compare (no pairs of backends on a recipe judged in both A and B, each " \
           "needs 3 seeds per backend)." in section(report.compare(sweep, sweep), "Verdicts that flipped")


def test_only_failures_and_an_empty_directory(tmp_path, tiny_quads, fakes, monkeypatch):
    monkeypatch.setenv("FAKE_BACKEND_CRASH", "raise")
    driver.run(tiny_config("fake", "head", tiny_quads, tmp_path / "failed" / "fake-head-s0"))
    paths = report.write_report(tmp_path / "failed")
    md, page = paths["md"].read_text(), paths["html"].read_text()
    (row,) = tables(section(md, "Results"))[0]
    assert row[:2] == ["`head`", "fake"] and row[-1] == "failed: RuntimeError: fake backend exploded"
    assert tables(section(md, "Failures and skipped runs"))[0] == [
        ["fake-head-s0", "failed", "RuntimeError: fake backend exploded"]]
    assert PNG not in page and "No finished run reported its phases." in md
    assert "fake backend exploded" in report.summary_table(load_results(tmp_path / "failed").results)
    (tmp_path / "empty").mkdir()
    md = report.write_report(tmp_path / "empty")["md"].read_text()
    assert "0 result files" in md and "No results." in md and re.findall(r"^## (.+)$", md, re.M) == SECTIONS


def test_result_json_records_every_fidelity_switch_and_the_report_shows_them(sweep, tmp_path):
    """result.json carries each training-step switch's setting (native by default); the report's
    Conditions name them, and runs with different settings are a warning."""
    from common.config import FIDELITY_SWITCHES

    for r in on_disk(sweep):
        assert r["fidelity"] == {k: "native" for k in FIDELITY_SWITCHES}
    run_dir = copy_run(sweep, tmp_path / "fidelity")
    md = md_report(run_dir)
    assert "| training-step fidelity | native |" in section(md, "Conditions")
    assert "fidelity differs" not in md
    edit(run_dir, "fake-head-s0",
         lambda r: r.update(fidelity={**r["fidelity"], "rmsprop": "aligned", "head_init": "aligned"}))
    edit(run_dir, "fake-head-s1", lambda r: r.pop("fidelity"))  # an older file: native
    md = md_report(run_dir)
    assert ("the training-step fidelity differs between runs: bn_moving_variance=native, rmsprop=aligned, "
            "weight_decay=native, head_init=aligned") in md.split("## Conditions")[0]


def test_the_report_says_what_each_backend_timed(sweep, tmp_path):
    """The throughput table's caption: what the timed step was (``throughput.timed_step``),
    one line per wording with its backends, and a warning when the backends timed different
    steps (their img/s do not compare)."""
    from common.timing import timed_step

    same = section(md_report(copy_run(sweep, tmp_path / "same")), "Throughput")
    assert f"Timed step (fake, fakeb): {timed_step(4)}." in same
    assert "timed different steps" not in same
    run_dir = copy_run(sweep, tmp_path / "differ")
    for name in (run_name("fakeb", rec, s) for rec in RECIPES for s in SEEDS):
        edit(run_dir, name, lambda r: r["throughput"].update(timed_step="a host batch, with a metric"))
    edit(run_dir, run_name("fake", "head", 0), lambda r: r["throughput"].pop("timed_step"))
    differ = section(md_report(run_dir), "Throughput")
    assert f"Timed step (fake): {timed_step(4)}." in differ
    assert "Timed step (fakeb): a host batch, with a metric." in differ
    assert "Timed step (fake): not recorded (a result from before `throughput.timed_step`)." in differ
    assert "**The backends timed different steps**: their img/s do not compare." in differ


def test_the_verdicts_say_which_backend_differences_survive_alignment(sweep, tmp_path):
    """With every switch aligned and three seeds, the report names the pairs whose framework
    difference survives alignment (or says none does); native runs point to --fidelity aligned;
    one seed aligned says that the question needs three."""
    from common.config import FIDELITY_SWITCHES

    aligned = {k: "aligned" for k in FIDELITY_SWITCHES}
    run_dir = copy_run(sweep, tmp_path / "aligned")
    for f in run_dir.glob("*/result.json"):
        edit(run_dir, f.parent.name, lambda r: r.update(fidelity=aligned))
    verdicts = section(md_report(run_dir), "Framework verdicts")
    assert "whether a difference survives alignment needs `--seeds 0,1,2`" in verdicts
    top1 = three_seeds(run_dir)
    verdicts = section(md_report(run_dir), "Framework verdicts")
    head = next(v for v in stats.framework_tests(stats.runs_frame(on_disk(run_dir))) if v["recipe"] == "head")
    assert (f"**Backend differences that survive alignment**: `head`, fake higher than fakeb "
            f"(Holm p = {head['p_holm']:.3f}). Every run had every training-step switch aligned ("
            + ", ".join(f"`{k}`" for k in FIDELITY_SWITCHES) + ")") in verdicts
    # head and scratch step with Adam: fidelity.adam aligns it too, no recipe is left out
    assert "`adam`" in verdicts and "no switch aligns" not in verdicts
    assert "up to each framework's floating-point rounding (`bench parity --train`)." in verdicts
    for seed in (0, 1, 2):  # the same accuracies: no difference left
        edit(run_dir, run_name("fakeb", "head", seed), lambda r: r["test"].update(top1=top1["fake", "head"][seed]))
    verdicts = section(md_report(run_dir), "Framework verdicts")
    assert "**No backend difference survives alignment** in these runs" in verdicts
    assert "survive alignment**:" not in verdicts
    native = section(md_report(copy_run(sweep, tmp_path / "native")), "Framework verdicts")
    assert "the same command with `--fidelity aligned` shows which differences survive alignment" in native
    edit(run_dir, run_name("fake", "head", 0), lambda r: r.update(fidelity={**aligned, "rmsprop": "native"}))
    assert "The runs differ in training-step fidelity" in section(md_report(run_dir), "Framework verdicts")
    # an aligned sweep from before the adam switch (no "adam" in result.json) stepped Adam natively
    before = copy_run(sweep, tmp_path / "before-adam")
    for f in before.glob("*/result.json"):
        edit(before, f.parent.name, lambda r: r.update(fidelity={k: v for k, v in aligned.items() if k != "adam"}))
    assert "every training-step switch aligned" not in section(md_report(before), "Framework verdicts")
